//! The chunk-transfer endpoint: QUIC (quinn) on its own UDP socket, tuned for LAN bulk
//! transfer, authenticated twice: TLS by PeerId, then the cluster-secret `Hello`.
//!
//! One bidirectional stream per request: the requester writes one frame
//! (`Request` or `IndexRequest`) and finishes its side; the server answers with
//! `ChunkData` followed by the raw chunk bytes, with `Index`, or with `Reject`. The
//! connection's first stream carries the `Hello` exchange (client first).
//!
//! A stream whose first frame is a `HaveMap` is an *interest link* instead: it stays
//! open for the duration of a download and both sides send `HaveMap` (full state) and
//! `Have` (one more chunk) frames on it. The server answers with its own `HaveMap` and
//! hands the link to its running download of that blob ([`LocalBlobs::attach`]); a
//! node with the blob complete answers with a full `HaveMap` and finishes.
//!
//! Here: the endpoint, its transport settings and connecting to a peer. `serve`
//! answers incoming connections and streams, `peer` is the requesting side of one
//! connection, `slots` and `queue_wait` queue uploads, `udp` binds the socket.

use std::fs::File;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use libp2p_identity::{Keypair, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rand::RngCore as _;
use shoal_proto::wire::{self, Message};
use shoal_proto::{ChunkLayout, Digest};

use self::slots::UploadSlots;
use super::rate::RateLimit;
use super::NetError;
use crate::buffers::BufferPool;
use crate::store::Store;

/// QUIC close codes, so the other side's logs say why.
const CLOSE_AUTH: u32 = 0x5341;
const CLOSE_PROTOCOL: u32 = 0x5350;

/// Bytes read and sent at a time when serving a chunk.
const UPLOAD_PIECE: u64 = 256 * 1024;

/// Idle chunk buffers kept for the next fetches: the node-wide peer requests in flight
/// (`swarm::tuning::MAX_PEER_REQUESTS`, 12) and a few more, at chunks of up to 1 MiB
/// (the default is 512 KiB).
const CHUNK_BUFFERS_RETAINED: usize = 16 << 20;
/// Idle upload pieces kept: what the default 8 upload slots have in flight at chunks of
/// up to 1 MiB, and as much again waiting for acknowledgement.
const UPLOAD_BUFFERS_RETAINED: usize = 16 << 20;

/// How long a new connection may take to present its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Label for the TLS keying-material export that binds the `Hello` proofs.
const EXPORTER_LABEL: &[u8] = b"shoal cluster proof v1";

/// Settings of the endpoint.
#[derive(Clone)]
pub struct TransferOptions {
    /// The cluster secret; empty means none (every node with an empty secret matches,
    /// which the daemon warns loudly about).
    pub secret: Vec<u8>,
    /// Chunk uploads served at once by this node.
    pub max_uploads: usize,
    /// Bytes per second served to peers (0: unlimited).
    pub max_upload_rate: u64,
    /// Bytes per second fetched from peers (0: unlimited).
    pub max_download_rate: u64,
    /// The least this node's peers may have in flight towards it at once, all
    /// connections together; more on a fast link ([`window`]).
    pub receive_budget: u64,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            secret: Vec::new(),
            max_uploads: 8,
            max_upload_rate: 0,
            max_download_rate: 0,
            receive_budget: window::DEFAULT_RECEIVE_BUDGET,
        }
    }
}

/// The node's blobs that are still downloading, as the transfer server sees them.
pub trait LocalBlobs: Send + Sync + 'static {
    /// Layout and have-map of a running download of `digest`, if one runs.
    fn have_map(&self, digest: &Digest) -> Option<(Option<ChunkLayout>, Vec<u8>)>;
    /// Where a present chunk of a running download can be read: file and byte range.
    fn chunk_source(&self, digest: &Digest, chunk: u32) -> Option<(Arc<File>, Range<u64>)>;
    /// Gives an interest link to the running download; hands it back if none runs.
    fn attach(&self, digest: Digest, link: Box<PeerLink>) -> Result<(), Box<PeerLink>>;
}

/// Answers peers' `PreheatRequest`s: starts the fetch if needed and says where it stands.
pub trait Preheater: Send + Sync + 'static {
    /// The `PreheatStatus` for `reference` (never blocks on the fetch itself).
    fn preheat(&self, reference: &str) -> Message;
}

/// The endpoint: serves chunks of committed blobs and connects to peers.
pub struct Transfer {
    endpoint: quinn::Endpoint,
    keypair: Keypair,
    options: TransferOptions,
    store: Arc<Store>,
    uploads: UploadSlots,
    upload_rate: RateLimit,
    download_rate: Arc<RateLimit>,
    receive_budget: Arc<window::ReceiveBudget>,
    chunk_buffers: BufferPool,
    upload_buffers: BufferPool,
    connections: std::sync::Mutex<std::collections::HashMap<PeerId, Dialing>>,
    local: std::sync::OnceLock<Arc<dyn LocalBlobs>>,
    preheater: std::sync::OnceLock<Arc<dyn Preheater>>,
    /// Set on shutdown: new chunk requests are refused, running uploads finish.
    draining: std::sync::atomic::AtomicBool,
    receive_drops: Option<udp::SocketDrops>,
}

/// A connection to one peer, set up once for every caller that wants it meanwhile.
type Dialing = Arc<tokio::sync::OnceCell<Result<Arc<PeerConnection>, String>>>;

/// Packets the receiver of a chunk may take before it must acknowledge (QUIC ACK
/// frequency extension, negotiated; quinn's default is every second packet). Each ACK
/// is a datagram both sides encrypt, send and process: 9-10 cut the daemons' CPU in
/// the emulated 8-node benchmark by 4-11 % over seven alternating pairs in two
/// sessions, while the cold-start time moved within its noise either way
/// (benches/RESULTS.md). A sender still gets an ACK within the peer's max_ack_delay
/// (25 ms), and loss or reordering is acknowledged at once.
const ACK_ELICITING_THRESHOLD: u32 = 10;

/// LAN bulk transfer: quinn's defaults (1.25 MB stream window) are sized for the
/// internet and cap a single stream far below a 10-25 Gbit/s link. A stream may take
/// 4 MiB, while the connection's `receive_window` (its share of the node's receive
/// budget, [`window::share`]) bounds what all its streams have in flight. The 8 MiB
/// send window bounds what a connection makes us buffer: a seed serving many peers holds
/// every upload's unacknowledged bytes in its send buffers (measured: 400 MiB RSS with
/// 64 MiB windows and 7 peers). A dead peer is noticed within the idle timeout
/// (keep-alives every 2 s keep live idle connections open), not after quinn's default 30 s.
fn transport(receive_window: u64) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(4 << 20))
        .receive_window(VarInt::from_u64(receive_window).unwrap_or(VarInt::MAX))
        .send_window(8 << 20)
        .max_concurrent_bidi_streams(VarInt::from_u32(64))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(8)) {
        t.max_idle_timeout(Some(idle));
    }
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

/// The PeerId in the certificate the other side presented.
fn remote_peer_id(conn: &Connection) -> Result<PeerId, NetError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| NetError::Protocol("peer presented no certificate".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| NetError::Protocol("empty certificate chain".into()))?;
    let cert = libp2p_tls::certificate::parse(first)
        .map_err(|e| NetError::Protocol(format!("bad libp2p certificate: {e}")))?;
    Ok(cert.peer_id())
}

fn binding(conn: &Connection) -> Result<[u8; 32], NetError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Setup("TLS keying material export failed".into()))?;
    Ok(out)
}

/// Reads one frame, refusing oversized lengths before reading the body.
pub(super) async fn read_message(recv: &mut RecvStream) -> Result<Message, NetError> {
    read_message_or_end(recv)
        .await?
        .ok_or_else(|| NetError::Connection("stream ended before a frame".into()))
}

/// Like [`read_message`], but `None` when the peer finished the stream between frames.
pub(super) async fn read_message_or_end(
    recv: &mut RecvStream,
) -> Result<Option<Message>, NetError> {
    let mut len = [0u8; wire::LENGTH_PREFIX];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(NetError::Connection(format!("reading frame length: {e}"))),
    }
    let len = u32::from_be_bytes(len);
    wire::check_length(len).map_err(|e| NetError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| NetError::Connection(format!("reading frame: {e}")))?;
    Message::decode_frame(&body)
        .map(Some)
        .map_err(|e| NetError::Protocol(e.to_string()))
}

pub(super) async fn write_message(send: &mut SendStream, msg: &Message) -> Result<(), NetError> {
    send.write_all(&msg.to_bytes())
        .await
        .map_err(|e| NetError::Connection(format!("writing frame: {e}")))
}

impl Transfer {
    /// Binds the endpoint and starts serving.
    pub fn bind(
        addr: SocketAddr,
        keypair: Keypair,
        options: TransferOptions,
        store: Arc<Store>,
    ) -> Result<Arc<Transfer>, NetError> {
        let tls = super::tls::server_config(&keypair)?;
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Setup(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // Peers only send requests and have-maps on the connections they open to us.
        server.transport_config(transport(window::MIN_RECEIVE_WINDOW));
        let socket = udp::bind(addr)?;
        let receive_drops = udp::SocketDrops::of(&socket);
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Io {
            context: format!("starting transfer endpoint {addr}"),
            source,
        })?;
        let uploads = UploadSlots::new(options.max_uploads);
        let transfer = Arc::new(Transfer {
            endpoint,
            keypair,
            options: options.clone(),
            store,
            uploads,
            upload_rate: RateLimit::new(options.max_upload_rate),
            download_rate: Arc::new(RateLimit::new(options.max_download_rate)),
            receive_budget: Arc::new(window::ReceiveBudget::new(options.receive_budget)),
            chunk_buffers: BufferPool::new(CHUNK_BUFFERS_RETAINED),
            upload_buffers: BufferPool::new(UPLOAD_BUFFERS_RETAINED),
            connections: Default::default(),
            local: std::sync::OnceLock::new(),
            preheater: std::sync::OnceLock::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            receive_drops,
        });
        let serving = transfer.clone();
        tokio::spawn(async move { serving.accept_loop().await });
        tokio::spawn(resize_receive_budget(Arc::downgrade(&transfer)));
        Ok(transfer)
    }

    /// Datagrams the kernel dropped at the endpoint's socket because its receive buffer
    /// was full, since it was bound (`None` where `/proc` does not say).
    pub fn receive_drops(&self) -> Option<u64> {
        self.receive_drops.and_then(|d| d.read())
    }

    /// What the node's peers may have in flight towards it now, all together.
    pub fn receive_budget(&self) -> u64 {
        self.receive_budget.current()
    }

    /// Lets peers see running downloads (set once, after the downloads registry exists).
    pub fn set_local_blobs(&self, local: Arc<dyn LocalBlobs>) {
        let _ = self.local.set(local);
    }

    /// Shutdown: refuses new chunk requests (peers ask someone else) and waits up to
    /// `within` for the uploads in flight to reach their peers, then closes the endpoint.
    pub async fn drain(&self, within: Duration) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.uploads.close();
        let in_flight = self.uploads.in_use();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for in-flight uploads to finish");
        }
        match tokio::time::timeout(within, self.uploads.idle()).await {
            Ok(_) => tracing::info!(in_flight, "uploads drained"),
            Err(_) => tracing::warn!(
                within_secs = within.as_secs(),
                "uploads still running at the drain deadline; closing"
            ),
        }
        self.endpoint.close(VarInt::from_u32(0), b"shutting down");
    }

    /// Lets peers ask this node to preheat (set once, by the control API).
    pub fn set_preheater(&self, preheater: Arc<dyn Preheater>) {
        let _ = self.preheater.set(preheater);
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.endpoint.local_addr().map_err(|source| NetError::Io {
            context: "transfer endpoint address".into(),
            source,
        })
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    fn proof(
        &self,
        sender: &PeerId,
        receiver: &PeerId,
        nonce: &[u8; 32],
        binding: &[u8; 32],
    ) -> [u8; 32] {
        wire::hello_proof(
            &self.options.secret,
            &sender.to_bytes(),
            &receiver.to_bytes(),
            nonce,
            binding,
        )
    }

    /// A live connection to `peer`, reusing the one other downloads opened: one
    /// connection per peer pair and direction, not one per blob (each costs a handshake
    /// and its own flow-control buffers). Callers that ask while it is being set up wait
    /// for that handshake rather than starting their own: a pull starts every layer at
    /// once, and each would otherwise handshake with every peer.
    pub async fn connection(
        &self,
        addr: SocketAddr,
        peer: PeerId,
    ) -> Result<Arc<PeerConnection>, NetError> {
        let (dialing, pruned) = {
            let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            let before = connections.len();
            connections.retain(|_, d| !matches!(d.get(), Some(Ok(c)) if c.is_closed()));
            let pruned = connections.len() < before;
            (connections.entry(peer).or_default().clone(), pruned)
        };
        let new_connection = dialing.get().is_none();
        let outcome = dialing
            .get_or_init(|| async {
                let window =
                    window::share(self.receive_budget.current(), self.downloading().len() + 1);
                self.connect_with_window(addr, Some(peer), window)
                    .await
                    .map(Arc::new)
                    .map_err(|e| match e {
                        NetError::Connect { message, .. } => message,
                        other => other.to_string(),
                    })
            })
            .await;
        match outcome {
            Ok(conn) => {
                // The shares change only with the set of connections (and the budget,
                // which its resizer re-shares).
                if pruned || new_connection {
                    self.share_receive_budget();
                }
                Ok(conn.clone())
            }
            Err(message) => {
                // Everyone waiting on this attempt shares its failure; the next caller
                // tries again.
                let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
                if connections
                    .get(&peer)
                    .is_some_and(|d| Arc::ptr_eq(d, &dialing))
                {
                    connections.remove(&peer);
                }
                Err(NetError::Connect {
                    addr,
                    message: message.clone(),
                })
            }
        }
    }

    /// The live connections this node downloads over.
    fn downloading(&self) -> Vec<Arc<PeerConnection>> {
        let connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections
            .values()
            .filter_map(|d| match d.get() {
                Some(Ok(c)) if !c.is_closed() => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    /// Gives each download connection its share of the receive budget, so that the
    /// peers together keep no more than the budget in flight towards this node however
    /// many of them it downloads from. A connection that closes frees its share at the
    /// next set-up.
    fn share_receive_budget(&self) {
        let live = self.downloading();
        let window = window::share(self.receive_budget.current(), live.len());
        let window = VarInt::from_u64(window).unwrap_or(VarInt::MAX);
        for c in &live {
            c.conn.set_receive_window(window);
        }
    }

    /// Connects to a peer; with `expected` set, TLS fails unless it is that PeerId. The
    /// connection may receive the whole receive budget at once (tools and tests);
    /// [`Transfer::connection`] shares it among the download connections instead.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<PeerId>,
    ) -> Result<PeerConnection, NetError> {
        self.connect_with_window(addr, expected, self.receive_budget.current())
            .await
    }

    async fn connect_with_window(
        &self,
        addr: SocketAddr,
        expected: Option<PeerId>,
        receive_window: u64,
    ) -> Result<PeerConnection, NetError> {
        let fail = |message: String| NetError::Connect { addr, message };
        let tls = super::tls::client_config(&self.keypair, expected)?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Setup(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport(receive_window));
        // libp2p-tls checks the PeerId in the certificate, not a host name.
        let conn = self
            .endpoint
            .connect_with(client, addr, "l")
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        let remote = remote_peer_id(&conn)?;
        let binding = binding(&conn)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
        let mut nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        let hello = Message::Hello {
            nonce,
            proof: self.proof(&self.peer_id(), &remote, &nonce, &binding),
            agent: agent(),
        };
        write_message(&mut send, &hello).await?;
        let reply = tokio::time::timeout(HELLO_TIMEOUT, read_message(&mut recv))
            .await
            .map_err(|_| NetError::Unauthenticated(remote.to_string()))?;
        match reply {
            Ok(Message::Hello { nonce, proof, .. })
                if proof == self.proof(&remote, &self.peer_id(), &nonce, &binding) =>
            {
                Ok(PeerConnection {
                    conn,
                    remote,
                    download_rate: self.download_rate.clone(),
                    receive_budget: self.receive_budget.clone(),
                    chunk_buffers: self.chunk_buffers.clone(),
                })
            }
            Ok(_) => {
                tracing::warn!(peer = %remote, %addr, "peer failed the cluster-secret proof; not using it");
                conn.close(VarInt::from_u32(CLOSE_AUTH), b"cluster secret mismatch");
                Err(NetError::Unauthenticated(remote.to_string()))
            }
            // The server closes the connection when our proof is wrong.
            Err(_) => Err(NetError::Unauthenticated(remote.to_string())),
        }
    }
}

/// Samples what the node receives from peers and resizes its receive budget, until the
/// endpoint is gone.
async fn resize_receive_budget(transfer: std::sync::Weak<Transfer>) {
    let mut tick = tokio::time::interval(window::RESIZE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (tokio::time::Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let Some(transfer) = transfer.upgrade() else {
            return;
        };
        let (now, received) = (
            tokio::time::Instant::now(),
            transfer.receive_budget.received(),
        );
        let resized = transfer
            .receive_budget
            .resize(received.saturating_sub(last.1), now - last.0);
        last = (now, received);
        if resized {
            tracing::debug!(
                budget = transfer.receive_budget.current(),
                "receive budget resized"
            );
            transfer.share_receive_budget();
        }
    }
}

fn agent() -> String {
    concat!("shoald/", env!("CARGO_PKG_VERSION")).to_owned()
}

mod peer;
mod queue_wait;
mod serve;
mod slots;
mod udp;
pub mod window;

pub use peer::{PeerConnection, PeerLink};
pub use queue_wait::{QueueWait, UPLOAD_QUEUE_WAIT};

#[cfg(test)]
mod tests;
