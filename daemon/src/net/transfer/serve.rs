//! The serving side of the transfer endpoint: accepting connections, the `Hello`
//! exchange, and answering each stream (chunks, indexes, interest links, tags,
//! preheats).

use std::fs::File;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use libp2p_identity::PeerId;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rand::RngCore as _;
use shoal_proto::wire::{self, Message, RejectReason};
use shoal_proto::Digest;
use tracing::Instrument as _;

use super::{
    agent, binding, read_message, remote_peer_id, write_message, PeerLink, Transfer, CLOSE_AUTH,
    CLOSE_PROTOCOL, HELLO_TIMEOUT, UPLOAD_PIECE,
};
use crate::net::NetError;

impl Transfer {
    pub(super) async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "incoming transfer connection failed");
                        return;
                    }
                };
                let addr = conn.remote_address();
                if let Err(e) = me.serve_connection(&conn).await {
                    tracing::warn!(peer_addr = %addr, error = %e, "dropping peer connection");
                }
            });
        }
    }

    async fn serve_connection(self: &Arc<Self>, conn: &Connection) -> Result<(), NetError> {
        let remote = remote_peer_id(conn)?;
        let span = tracing::info_span!("peer", peer = %remote, addr = %conn.remote_address());
        self.serve_authenticated(conn, remote)
            .instrument(span)
            .await
    }

    async fn serve_authenticated(
        self: &Arc<Self>,
        conn: &Connection,
        remote: PeerId,
    ) -> Result<(), NetError> {
        let binding = binding(conn)?;
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            let (send, mut recv) = conn
                .accept_bi()
                .await
                .map_err(|e| NetError::Connection(e.to_string()))?;
            Ok::<_, NetError>((send, read_message(&mut recv).await?))
        })
        .await
        .map_err(|_| NetError::Protocol("no Hello within 10 s".into()))?;
        let (mut send, msg) = match hello {
            Ok(v) => v,
            Err(e) => {
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad hello");
                return Err(e);
            }
        };
        let Message::Hello {
            nonce,
            proof,
            agent: their_agent,
        } = msg
        else {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"expected hello");
            return Err(NetError::Protocol("first message was not Hello".into()));
        };
        if proof != self.proof(&remote, &self.peer_id(), &nonce, &binding) {
            tracing::warn!(agent = %their_agent, "peer cannot prove the cluster secret; refused");
            conn.close(VarInt::from_u32(CLOSE_AUTH), b"cluster secret mismatch");
            return Err(NetError::Unauthenticated(remote.to_string()));
        }
        let mut my_nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut my_nonce);
        let reply = Message::Hello {
            nonce: my_nonce,
            proof: self.proof(&self.peer_id(), &remote, &my_nonce, &binding),
            agent: agent(),
        };
        write_message(&mut send, &reply).await?;
        let _ = send.finish();
        tracing::debug!(agent = %their_agent, "peer authenticated");
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(reason = %e, "peer connection closed");
                    return Ok(());
                }
            };
            // Each request on its own task: a chunk upload paced by the peer's download
            // must not hold up its other requests (interest links, other blobs' chunks,
            // index and tag requests) on the same connection.
            let (me, conn) = (self.clone(), conn.clone());
            tokio::spawn(
                async move {
                    let addr = conn.remote_address();
                    if let Err(e) = me.serve_stream(remote, addr, send, recv).await {
                        if matches!(e, NetError::Protocol(_)) {
                            tracing::warn!(error = %e, "dropping peer connection");
                            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed message");
                        } else {
                            tracing::debug!(error = %e, "request stream failed");
                        }
                    }
                }
                .in_current_span(),
            );
        }
    }

    async fn serve_stream(
        &self,
        remote: PeerId,
        addr: SocketAddr,
        mut send: SendStream,
        mut recv: RecvStream,
    ) -> Result<(), NetError> {
        let reply = match read_message(&mut recv).await? {
            Message::Request {
                digest,
                chunk,
                held,
            } => return self.serve_chunk(send, remote, digest, chunk, held).await,
            Message::HaveMap {
                digest,
                layout,
                bitfield,
            } => {
                let link = Box::new(PeerLink {
                    peer: remote,
                    addr,
                    layout,
                    bitfield,
                    send,
                    recv,
                });
                return self.serve_interest(digest, link).await;
            }
            Message::TagRequest { key } => match self.store.tag(&key) {
                // Only tags whose manifest this node can also serve.
                Ok(Some(t)) if self.store.get(&t.digest).ok().flatten().is_some() => Message::Tag {
                    key,
                    digest: t.digest,
                    resolved_at: t.resolved_at,
                    media_type: t.media_type,
                },
                _ => Message::Reject {
                    digest: Digest::from_sha256_bytes([0; 32]),
                    chunk: u32::MAX,
                    reason: RejectReason::NotPresent,
                },
            },
            Message::PreheatRequest { reference } => match self.preheater.get() {
                Some(p) => p.preheat(&reference),
                None => Message::PreheatStatus {
                    reference,
                    state: shoal_proto::control::PreheatState::Failed.code(),
                    done: 0,
                    total: 0,
                    message: "this node does not take preheat requests".into(),
                },
            },
            Message::IndexRequest { digest } => match self.store.get(&digest) {
                Ok(Some(record)) => Message::Index {
                    digest,
                    index: record.chunks,
                },
                _ => Message::Reject {
                    digest,
                    chunk: u32::MAX,
                    reason: RejectReason::NotPresent,
                },
            },
            other => {
                return Err(NetError::Protocol(format!(
                    "unexpected request {:?}",
                    std::mem::discriminant(&other)
                )))
            }
        };
        write_message(&mut send, &reply).await?;
        let _ = send.finish();
        Ok(())
    }

    async fn serve_interest(
        &self,
        digest: Digest,
        mut link: Box<PeerLink>,
    ) -> Result<(), NetError> {
        if let Some(local) = self.local.get() {
            if let Some((layout, bitfield)) = local.have_map(&digest) {
                let map = Message::HaveMap {
                    digest,
                    layout,
                    bitfield,
                };
                link.send(&map).await?;
                // The download may have ended in between: then answer as below.
                link = match local.attach(digest, link) {
                    Ok(()) => return Ok(()),
                    Err(link) => link,
                };
            }
        }
        let reply = match self.store.get(&digest) {
            Ok(Some(record)) => {
                let layout = record.chunks.layout;
                let mut bitfield = wire::bitfield::new(layout.count());
                for i in 0..layout.count() {
                    wire::bitfield::set(&mut bitfield, i);
                }
                Message::HaveMap {
                    digest,
                    layout: Some(layout),
                    bitfield,
                }
            }
            _ => Message::Reject {
                digest,
                chunk: u32::MAX,
                reason: RejectReason::NotPresent,
            },
        };
        link.send(&reply).await?;
        let _ = link.send.finish();
        Ok(())
    }

    async fn serve_chunk(
        &self,
        mut send: SendStream,
        requester: PeerId,
        digest: Digest,
        chunk: u32,
        held: u32,
    ) -> Result<(), NetError> {
        let reject = |reason| Message::Reject {
            digest,
            chunk,
            reason,
        };
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            write_message(&mut send, &reject(RejectReason::Busy)).await?;
            let _ = send.finish();
            return Ok(());
        }
        // Queue for a slot for a while: an immediate Busy makes requesters retry in a
        // tight loop; past the wait they are better off asking someone else. The queue
        // is ordered by how often this node has sent each chunk, then by how far behind
        // the requester is, and each requester takes at most its share (`slots`).
        let permit = self.uploads.acquire(requester, digest, chunk, held).await;
        let Some(_permit) = permit else {
            write_message(&mut send, &reject(RejectReason::Busy)).await?;
            let _ = send.finish();
            return Ok(());
        };
        let store = self.store.clone();
        let local = self.local.get().cloned();
        let source = tokio::task::spawn_blocking(move || -> Option<(Arc<File>, Range<u64>)> {
            let Some((record, file)) = store.open_blob(&digest).ok().flatten() else {
                return local?.chunk_source(&digest, chunk);
            };
            Some((Arc::new(file), record.chunks.layout.range(chunk)?))
        })
        .await
        .map_err(|e| NetError::Connection(e.to_string()))?;
        let Some((file, range)) = source else {
            write_message(&mut send, &reject(RejectReason::NotPresent)).await?;
            let _ = send.finish();
            return Ok(());
        };
        let len = (range.end - range.start) as u32;
        // Bulk data yields to have-maps and index answers on the same connection.
        let _ = send.set_priority(-1);
        write_message(&mut send, &Message::ChunkData { digest, chunk, len }).await?;
        // Stream the chunk in pieces: a whole-chunk buffer per upload is what would
        // dominate a seed's memory with many peers. The pieces are pooled buffers handed
        // to quinn without a copy (`write_chunk`); they return to the pool once the peer
        // has acknowledged them. `write_all` would copy each piece into a fresh
        // allocation, and at 256 KiB that is a fresh mapping (`crate::buffers`).
        let mut at = range.start;
        while at < range.end {
            let want = (range.end - at).min(UPLOAD_PIECE) as usize;
            let f = file.clone();
            let mut piece = self.upload_buffers.take(want);
            #[cfg(feature = "fault-injection")]
            let first_piece = at == range.start;
            let piece = tokio::task::spawn_blocking(move || {
                f.read_exact_at(&mut piece, at)?;
                #[cfg(feature = "fault-injection")]
                if first_piece {
                    fault::corrupt(&mut piece);
                }
                Ok::<_, std::io::Error>(piece)
            })
            .await
            .map_err(|e| NetError::Connection(e.to_string()))?
            .map_err(|e| NetError::Connection(format!("reading chunk {chunk}: {e}")))?;
            self.upload_rate.acquire(want as u64).await;
            send.write_chunk(piece.freeze())
                .await
                .map_err(|e| NetError::Connection(e.to_string()))?;
            at += want as u64;
        }
        let _ = send.finish();
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            // Shutting down: keep the slot until the peer has acknowledged the bytes, so
            // `drain` does not close the endpoint under them.
            let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
        }
        Ok(())
    }
}

/// Test-only misbehaviour, compiled in only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
mod fault {
    /// With `SHOAL_FAULT_CORRUPT_CHUNKS=1`, every served chunk has its first byte flipped.
    pub(super) fn corrupt(bytes: &mut [u8]) {
        if std::env::var_os("SHOAL_FAULT_CORRUPT_CHUNKS").is_some_and(|v| v == "1") {
            if let Some(b) = bytes.first_mut() {
                *b ^= 0xff;
            }
        }
    }
}
