//! What peers can tell about manifests when the origin is unreachable: the newest
//! resolution of a tag some node has seen, and a manifest's bytes by digest. Tags from
//! peers are hints; the manifest they name is verified against its digest.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use shoal_proto::Digest;

use super::driver::PeerSwarm;
use super::Downloads;
use crate::net::discovery::Provider;
use crate::net::transfer::PeerConnection;

/// Peers asked at most per lookup.
const MAX_ASKED: usize = 8;
/// Time for connecting and answering, per peer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

async fn connect(swarm: &PeerSwarm, p: &Provider) -> Option<Arc<PeerConnection>> {
    let connecting = swarm.transfer.connection(p.transfer, p.peer);
    tokio::time::timeout(ASK_TIMEOUT, connecting)
        .await
        .ok()?
        .ok()
}

impl Downloads {
    /// The newest resolution of tag `key` among connected peers: (digest, resolved at,
    /// media type).
    pub async fn tag_from_peers(&self, key: &str) -> Option<(Digest, u64, String)> {
        let swarm = self.swarm.as_ref()?;
        let peers = swarm.discovery.peers().await;
        let asks = peers.iter().take(MAX_ASKED).map(|p| async move {
            let conn = connect(swarm, p).await?;
            let answer = tokio::time::timeout(ASK_TIMEOUT, conn.resolve_tag(key)).await;
            answer.ok()?.ok()
        });
        let best = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|(_, resolved_at, _)| *resolved_at);
        if let Some((digest, _, _)) = &best {
            tracing::info!(tag = key, %digest, "tag resolved by a peer (origin unreachable)");
        }
        best
    }

    /// A small blob (a manifest) of at most `max` bytes from a peer, verified.
    pub async fn small_blob_from_peers(&self, digest: Digest, max: u64) -> Option<Bytes> {
        let swarm = self.swarm.as_ref()?;
        let mut candidates = swarm.discovery.find_providers(digest).await;
        for p in swarm.discovery.peers().await {
            if !candidates.iter().any(|c| c.peer == p.peer) {
                candidates.push(p);
            }
        }
        for p in candidates.iter().take(MAX_ASKED) {
            let Some(conn) = connect(swarm, p).await else {
                continue;
            };
            let fetched = tokio::time::timeout(ASK_TIMEOUT, fetch_whole(&conn, digest, max)).await;
            if let Ok(Some(bytes)) = fetched {
                return Some(bytes);
            }
        }
        None
    }
}

async fn fetch_whole(conn: &PeerConnection, digest: Digest, max: u64) -> Option<Bytes> {
    let index = conn.fetch_index(digest).await.ok()?;
    let layout = index.layout;
    if layout.size > max {
        return None;
    }
    let mut body = BytesMut::with_capacity(layout.size as usize);
    for chunk in 0..layout.count() {
        let range = layout.range(chunk)?;
        let held = chunk; // in order: the chunks before this one
        let bytes = conn
            .fetch_chunk(digest, chunk, held, (range.end - range.start) as u32)
            .await
            .ok()?;
        body.extend_from_slice(&bytes);
    }
    let actual = Digest::from_sha256_bytes(Sha256::digest(&body).into());
    if actual != digest {
        tracing::warn!(peer = %conn.remote, %digest, %actual, "peer sent a manifest that fails its digest");
        return None;
    }
    Some(body.freeze())
}
