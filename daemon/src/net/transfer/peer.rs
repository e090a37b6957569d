//! The requesting side of a transfer connection, and interest links.

use std::net::SocketAddr;
use std::sync::Arc;
#[cfg(any(test, feature = "fault-injection"))]
use std::time::Duration;

use bytes::Bytes;
use libp2p_identity::PeerId;
use quinn::{Connection, RecvStream, SendStream};
use shoal_proto::wire::Message;
use shoal_proto::{ChunkIndex, ChunkLayout, Digest};

use super::{read_message, read_message_or_end, write_message};
use crate::buffers::BufferPool;
use crate::net::rate::RateLimit;
use crate::net::NetError;

/// An open interest link to a peer about one blob (see the module docs).
pub struct PeerLink {
    /// The peer (authenticated).
    pub peer: PeerId,
    /// Its transfer endpoint (a quinn endpoint dials from its listening socket).
    pub addr: SocketAddr,
    /// Its layout and have-map as last sent.
    pub layout: Option<ChunkLayout>,
    /// Its bitfield as last sent.
    pub bitfield: Vec<u8>,
    /// Our half for `HaveMap`/`Have` frames.
    pub send: SendStream,
    /// Its `HaveMap`/`Have` frames.
    pub recv: RecvStream,
}

impl PeerLink {
    /// Sends one frame on the link.
    pub async fn send(&mut self, msg: &Message) -> Result<(), NetError> {
        write_message(&mut self.send, msg).await
    }

    /// The next frame from the peer; `None` once it finished its side.
    pub async fn next(recv: &mut RecvStream) -> Result<Option<Message>, NetError> {
        read_message_or_end(recv).await
    }
}

/// An authenticated connection to a peer.
pub struct PeerConnection {
    pub(super) conn: Connection,
    pub(super) download_rate: Arc<RateLimit>,
    /// Counts what the peer delivers, which sizes the node's receive budget.
    pub(super) receive_budget: Arc<super::window::ReceiveBudget>,
    /// Where fetched chunks are read into; they return once written to the store.
    pub(super) chunk_buffers: BufferPool,
    /// The peer's verified identity.
    pub remote: PeerId,
}

impl PeerConnection {
    async fn request(&self, msg: &Message) -> Result<(Message, RecvStream), NetError> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        write_message(&mut send, msg).await?;
        send.finish()
            .map_err(|e| NetError::Connection(e.to_string()))?;
        let reply = read_message(&mut recv).await?;
        Ok((reply, recv))
    }

    /// Fetches one chunk (at most `max_len` bytes). The caller verifies it. `held`: how
    /// many chunks of the blob this node holds, which orders a busy uploader's queue.
    pub async fn fetch_chunk(
        &self,
        digest: Digest,
        chunk: u32,
        held: u32,
        max_len: u32,
    ) -> Result<Bytes, NetError> {
        self.download_rate.acquire(u64::from(max_len)).await;
        let request = Message::Request {
            digest,
            chunk,
            held,
        };
        match self.request(&request).await? {
            (
                Message::ChunkData {
                    digest: d,
                    chunk: c,
                    len,
                },
                mut recv,
            ) if d == digest && c == chunk && len <= max_len => {
                let mut buf = self.chunk_buffers.take(len as usize);
                recv.read_exact(&mut buf)
                    .await
                    .map_err(|e| NetError::Connection(format!("reading chunk: {e}")))?;
                self.receive_budget.count(u64::from(len));
                Ok(buf.freeze())
            }
            (Message::Reject { reason, .. }, _) => Err(NetError::Rejected(reason)),
            (other, _) => Err(NetError::Protocol(format!(
                "unexpected answer to a chunk request: {other:?}"
            ))),
        }
    }

    /// Opens an interest link about `digest`, sending our layout and have-map.
    /// `Err(Rejected(NotPresent))` when the peer neither holds nor wants the blob.
    pub async fn subscribe(
        &self,
        digest: Digest,
        layout: Option<ChunkLayout>,
        bitfield: Vec<u8>,
    ) -> Result<PeerLink, NetError> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        let map = Message::HaveMap {
            digest,
            layout,
            bitfield,
        };
        write_message(&mut send, &map).await?;
        match read_message(&mut recv).await? {
            Message::HaveMap {
                digest: d,
                layout,
                bitfield,
            } if d == digest => Ok(PeerLink {
                peer: self.remote,
                addr: self.conn.remote_address(),
                layout,
                bitfield,
                send,
                recv,
            }),
            Message::Reject { reason, .. } => Err(NetError::Rejected(reason)),
            other => Err(NetError::Protocol(format!(
                "unexpected answer to a have-map: {other:?}"
            ))),
        }
    }

    /// The peer's last resolution of a tag: (digest, resolved at, media type).
    pub async fn resolve_tag(&self, key: &str) -> Result<(Digest, u64, String), NetError> {
        let request = Message::TagRequest {
            key: key.to_owned(),
        };
        match self.request(&request).await? {
            (
                Message::Tag {
                    key: k,
                    digest,
                    resolved_at,
                    media_type,
                },
                _,
            ) if k == key => Ok((digest, resolved_at, media_type)),
            (Message::Reject { reason, .. }, _) => Err(NetError::Rejected(reason)),
            (other, _) => Err(NetError::Protocol(format!(
                "unexpected answer to a tag request: {other:?}"
            ))),
        }
    }

    /// Asks the peer to preheat `reference`; its answer is a `PreheatStatus`:
    /// (state code, done, total, message).
    pub async fn preheat(&self, reference: &str) -> Result<(u8, u64, u64, String), NetError> {
        let request = Message::PreheatRequest {
            reference: reference.to_owned(),
        };
        match self.request(&request).await? {
            (
                Message::PreheatStatus {
                    reference: r,
                    state,
                    done,
                    total,
                    message,
                },
                _,
            ) if r == reference => Ok((state, done, total, message)),
            (other, _) => Err(NetError::Protocol(format!(
                "unexpected answer to a preheat request: {other:?}"
            ))),
        }
    }

    /// Whether the connection is closed (the peer went away).
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Fetches the chunk index of a blob the peer holds complete.
    pub async fn fetch_index(&self, digest: Digest) -> Result<ChunkIndex, NetError> {
        match self.request(&Message::IndexRequest { digest }).await? {
            (Message::Index { digest: d, index }, _) if d == digest && index.is_consistent() => {
                Ok(index)
            }
            (Message::Reject { reason, .. }, _) => Err(NetError::Rejected(reason)),
            (other, _) => Err(NetError::Protocol(format!(
                "unexpected answer to an index request: {other:?}"
            ))),
        }
    }

    /// Sends raw bytes on a new stream (tests of hostile peers; not in shipped builds).
    #[cfg(any(test, feature = "fault-injection"))]
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), NetError> {
        let (mut send, _recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        send.write_all(bytes)
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?;
        send.finish()
            .map_err(|e| NetError::Connection(e.to_string()))?;
        // Give the server a moment to read it before the stream is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.closed()).await;
        Ok(())
    }
}
