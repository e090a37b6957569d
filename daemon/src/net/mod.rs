//! Peer networking.
//!
//! - [`identity`]: the node's ed25519 keypair (its libp2p PeerId), created once and kept
//!   in the data directory, and the cluster secret.
//! - [`transfer`]: the chunk-transfer QUIC endpoint (quinn, its own UDP socket). Every
//!   connection is mutually TLS-authenticated by PeerId (libp2p-tls certificates) and
//!   then by a proof of the cluster secret bound to the TLS session; the messages are
//!   [`shoal_proto::wire`].
//! - [`tls`]: that endpoint's rustls configs (libp2p-tls certificates, AES-GCM first).
//!
//! - [`discovery`]: libp2p (Kademlia, identify, mDNS) to find which nodes hold or want
//!   a blob and where their transfer endpoints are.

pub mod discovery;
pub mod identity;
pub mod rate;
pub mod tls;
pub mod transfer;

/// Networking failures.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Reading or writing identity or secret files.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A key or secret file has unusable content.
    #[error("{0}")]
    BadKey(String),
    /// TLS or QUIC configuration could not be built.
    #[error("transport setup: {0}")]
    Setup(String),
    /// Connecting failed (unreachable, TLS refused, wrong PeerId).
    #[error("connecting to {addr}: {message}")]
    Connect {
        /// Peer address.
        addr: std::net::SocketAddr,
        /// Cause.
        message: String,
    },
    /// The connection or a stream broke.
    #[error("peer connection: {0}")]
    Connection(String),
    /// The peer could not prove the cluster secret (or refused ours).
    #[error("cluster secret mismatch with peer {0}")]
    Unauthenticated(String),
    /// The peer's bytes broke the protocol.
    #[error("peer protocol: {0}")]
    Protocol(String),
    /// The peer refused a request.
    #[error("peer rejected the request: {0:?}")]
    Rejected(shoal_proto::wire::RejectReason),
}
