//! The I/O around the scheduler: finding and linking peers, fetching one chunk from a
//! peer or from the origin, and turning link frames into scheduler events.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{CONTENT_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use libp2p_identity::PeerId;
use shoal_proto::wire::{bitfield, Message};
use shoal_proto::{ChunkLayout, Digest};
use tokio::sync::mpsc;

use super::scheduler::{Event, NodeId};
use super::Context;
use crate::net::discovery::Provider;
use crate::net::transfer::{PeerConnection, PeerLink, Transfer};
use crate::net::NetError;
use crate::upstream::{Target, UpstreamError, UpstreamRequest};

/// How long connecting and subscribing to one peer may take (a busy peer's answer
/// queues behind the chunk data it is sending).
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

/// The scheduler's name for a peer.
pub(super) fn node_id(peer: &PeerId) -> NodeId {
    NodeId::from_peer_bytes(&peer.to_bytes())
}

/// Connects to a provider and opens an interest link about `digest`.
/// `Ok(None)` when the provider neither holds nor wants the blob (any more).
pub(super) async fn link_provider(
    transfer: &Transfer,
    provider: &Provider,
    digest: Digest,
    ours: (Option<ChunkLayout>, Vec<u8>),
) -> Result<Option<(Arc<PeerConnection>, PeerLink)>, NetError> {
    let attempt = async {
        let conn = transfer
            .connection(provider.transfer, provider.peer)
            .await?;
        match conn.subscribe(digest, ours.0, ours.1).await {
            Ok(link) => Ok(Some((conn, link))),
            Err(NetError::Rejected(_)) => Ok(None),
            Err(e) => Err(e),
        }
    };
    tokio::time::timeout(LINK_TIMEOUT, attempt)
        .await
        .map_err(|_| NetError::Connection(format!("peer {} did not answer", provider.peer)))?
}

/// The chunk layout to download a blob in, from the layouts linked peers hold it in
/// (with whether they hold all of it): a complete peer's first, then one in this node's
/// `chunk_size`, then any. Peers trade a blob only in one layout, so a node configured
/// with another chunk size than the fleet's (an upgrade that changed the default) takes
/// theirs rather than going to the origin alone. `None` without a well-formed offer.
pub(super) fn shared_layout(
    offers: impl IntoIterator<Item = (ChunkLayout, bool)>,
    chunk_size: u32,
) -> Option<ChunkLayout> {
    offers
        .into_iter()
        .filter(|(layout, _)| layout.is_well_formed())
        .max_by_key(|&(layout, complete)| {
            let ours = layout == ChunkLayout::for_blob(layout.size, chunk_size);
            (complete, ours)
        })
        .map(|(layout, _)| layout)
}

/// Whether to resume a partial blob in the layout it was recorded in, given the layouts
/// linked peers offer (with whether they hold all of it): yes, unless peers hold the
/// whole blob and none holds or downloads it in the partial's layout. Peers trade a
/// blob only in one layout, so resuming then would leave the origin alone to finish it
/// (and nothing, with the origin down); the partial's bytes are cheaper to fetch again
/// from the peers.
pub(super) fn resume_in_partial_layout(
    partial: ChunkLayout,
    offers: &[(ChunkLayout, bool)],
) -> bool {
    let shared = offers.iter().any(|&(layout, _)| layout == partial);
    let complete_elsewhere = offers
        .iter()
        .any(|&(layout, complete)| complete && layout != partial && layout.is_well_formed());
    shared || !complete_elsewhere
}

/// A peer's have-map as scheduler chunks, when its layout matches ours.
pub(super) fn bitfield_event(
    peer: NodeId,
    ours: &ChunkLayout,
    theirs: Option<ChunkLayout>,
    bits: &[u8],
) -> Option<Event> {
    let chunks: Vec<bool> = match theirs {
        None => vec![false; ours.count() as usize],
        Some(l) if l == *ours => (0..l.count()).map(|i| bitfield::get(bits, i)).collect(),
        Some(_) => return None, // another chunk size: not usable chunk by chunk
    };
    let downloading = !chunks.iter().all(|&c| c);
    Some(Event::PeerBitfield {
        peer,
        chunks,
        downloading,
    })
}

/// What a link's reader reports.
pub(super) enum LinkUpdate {
    /// The peer sent its full state again.
    Map {
        peer: NodeId,
        layout: Option<ChunkLayout>,
        bitfield: Vec<u8>,
    },
    /// The peer has one more chunk.
    Have { peer: NodeId, chunk: u32 },
    /// The peer's linked downloaders (`Message::Interested`).
    Interested { peer: NodeId, nodes: Vec<NodeId> },
    /// The link broke (the peer went away, or sent garbage).
    Closed { peer: NodeId },
    /// The peer finished its side cleanly: it will announce nothing more. A complete
    /// provider does so at once and stays a peer; a peer still downloading when its
    /// link ends has ended that download (done or failed) and must be dropped, or it
    /// keeps owning chunks it will never fetch.
    Ended { peer: NodeId },
}

/// Reads a link until it ends.
pub(super) fn spawn_reader(
    peer: NodeId,
    digest: Digest,
    mut recv: quinn::RecvStream,
    updates: mpsc::UnboundedSender<LinkUpdate>,
) {
    tokio::spawn(async move {
        loop {
            let update = match PeerLink::next(&mut recv).await {
                Ok(Some(Message::HaveMap {
                    digest: d,
                    layout,
                    bitfield,
                })) if d == digest => LinkUpdate::Map {
                    peer,
                    layout,
                    bitfield,
                },
                Ok(Some(Message::Have { digest: d, chunk })) if d == digest => {
                    LinkUpdate::Have { peer, chunk }
                }
                Ok(Some(Message::Interested { digest: d, nodes })) if d == digest => {
                    LinkUpdate::Interested {
                        peer,
                        nodes: nodes.into_iter().map(NodeId).collect(),
                    }
                }
                Ok(None) => {
                    let _ = updates.send(LinkUpdate::Ended { peer });
                    return;
                }
                Ok(Some(other)) => {
                    tracing::warn!(?other, "unexpected frame on an interest link; dropping it");
                    let _ = updates.send(LinkUpdate::Closed { peer });
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "interest link closed");
                    let _ = updates.send(LinkUpdate::Closed { peer });
                    return;
                }
            };
            if updates.send(update).is_err() {
                return; // the download is over
            }
        }
    });
}

/// Writes frames queued for a link; ends when the queue is dropped or the link breaks.
pub(super) fn spawn_writer(mut send: quinn::SendStream) -> mpsc::UnboundedSender<Message> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if send.write_all(&msg.to_bytes()).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    tx
}

/// Fetches bytes `range` of a blob from the origin with one ranged GET.
pub(super) async fn fetch_origin_range(
    ctx: &Context,
    target: &Target,
    client_auth: Option<HeaderValue>,
    digest: Digest,
    range: std::ops::Range<u64>,
) -> Result<Bytes, UpstreamError> {
    let protocol = |message: String| UpstreamError::Protocol {
        host: target.host.clone(),
        message,
    };
    let mut headers = HeaderMap::new();
    let value = format!("bytes={}-{}", range.start, range.end - 1);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(RANGE, v);
    }
    let req = UpstreamRequest {
        method: Method::GET,
        target,
        path: format!("blobs/{digest}"),
        query: None,
        headers,
        client_auth,
    };
    let resp = ctx.upstream.send(&req).await?;
    // An origin that ignores Range sends the whole blob: skip to the range.
    let mut skip = match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let cr = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !cr.starts_with(&format!("bytes {}-{}/", range.start, range.end - 1)) {
                return Err(protocol(format!("asked {value}, got Content-Range {cr:?}")));
            }
            0
        }
        StatusCode::OK => range.start,
        status => {
            return Err(UpstreamError::Status {
                host: target.host.clone(),
                status,
            })
        }
    };
    let want = (range.end - range.start) as usize;
    let mut out = ctx.range_buffers.take(want);
    let mut filled = 0;
    let mut body = resp.bytes_stream();
    while filled < want {
        let Some(piece) = body.next().await else {
            break;
        };
        let mut piece = piece.map_err(|e| UpstreamError::Unreachable {
            host: target.host.clone(),
            message: e.to_string(),
        })?;
        if skip > 0 {
            let n = (skip as usize).min(piece.len());
            skip -= n as u64;
            piece = piece.slice(n..);
        }
        let take = piece.len().min(want - filled);
        ctx.metrics.upstream_bytes.inc_by(take as u64);
        out[filled..filled + take].copy_from_slice(&piece[..take]);
        filled += take;
    }
    if filled != want {
        return Err(protocol(format!(
            "range {value} ended after {filled} bytes"
        )));
    }
    Ok(out.freeze())
}

pub(super) fn is_complete(link: &PeerLink) -> bool {
    link.layout.is_some_and(|l| {
        (0..l.count()).all(|i| shoal_proto::wire::bitfield::get(&link.bitfield, i))
    })
}

pub(super) async fn link_all(
    transfer: &Arc<Transfer>,
    providers: Vec<Provider>,
    known: HashSet<libp2p_identity::PeerId>,
    room: usize,
    digest: Digest,
    ours: (Option<ChunkLayout>, Vec<u8>),
) -> Vec<(Arc<PeerConnection>, PeerLink)> {
    let attempts = providers
        .into_iter()
        .filter(|p| !known.contains(&p.peer))
        .take(room)
        .map(|p| {
            let ours = ours.clone();
            async move {
                match link_provider(transfer, &p, digest, ours).await {
                    Ok(linked) => linked,
                    Err(e) => {
                        tracing::info!(peer = %p.peer, addr = %p.transfer, error = %e, "cannot use provider");
                        None
                    }
                }
            }
        });
    futures::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A peer linked to us: connect back to it to be able to send requests.
pub(super) async fn dial_back(
    transfer: &Transfer,
    link: Box<PeerLink>,
) -> Option<(Arc<PeerConnection>, PeerLink)> {
    match tokio::time::timeout(
        Duration::from_secs(3),
        transfer.connection(link.addr, link.peer),
    )
    .await
    {
        Ok(Ok(conn)) => Some((conn, *link)),
        Ok(Err(e)) => {
            tracing::info!(peer = %link.peer, error = %e, "cannot connect back to interested peer");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u32 = 1024 * 1024;
    const SIZE: u64 = 300 << 20;

    #[test]
    fn a_download_takes_a_complete_peers_layout_over_its_own_chunk_size() {
        let old = ChunkLayout::for_blob(SIZE, MIB);
        let ours = ChunkLayout::for_blob(SIZE, MIB / 2);
        // A seed filled before an upgrade, and a downloader in the new size.
        let offers = [(old, true), (ours, false)];
        assert_eq!(shared_layout(offers, MIB / 2), Some(old));
        assert_eq!(shared_layout(offers.into_iter().rev(), MIB / 2), Some(old));
    }

    #[test]
    fn among_equals_a_download_keeps_its_own_chunk_size() {
        let other = ChunkLayout::for_blob(SIZE, MIB);
        let ours = ChunkLayout::for_blob(SIZE, MIB / 2);
        for complete in [false, true] {
            let offers = [(other, complete), (ours, complete)];
            assert_eq!(shared_layout(offers, MIB / 2), Some(ours));
            assert_eq!(shared_layout(offers.into_iter().rev(), MIB / 2), Some(ours));
        }
        // Only another size on offer: joining it beats fetching alone.
        assert_eq!(shared_layout([(other, false)], MIB / 2), Some(other));
        assert_eq!(shared_layout([], MIB / 2), None);
    }

    #[test]
    fn a_partial_is_dropped_only_when_complete_peers_hold_the_blob_in_another_layout() {
        let partial = ChunkLayout::for_blob(SIZE, MIB);
        let other = ChunkLayout::for_blob(SIZE, MIB / 2);
        let tiny = ChunkLayout::new(SIZE, 4096);
        // Alone, or with peers that could still trade in the partial's layout: resume.
        assert!(resume_in_partial_layout(partial, &[]));
        assert!(resume_in_partial_layout(partial, &[(partial, false)]));
        assert!(resume_in_partial_layout(
            partial,
            &[(partial, true), (other, true)]
        ));
        assert!(resume_in_partial_layout(
            partial,
            &[(partial, false), (other, true)]
        ));
        // Other layouts, none complete: the origin finishes either way; keep the bytes.
        assert!(resume_in_partial_layout(partial, &[(other, false)]));
        // A malformed offer is no reason to drop anything.
        assert!(resume_in_partial_layout(partial, &[(tiny, true)]));
        // Only a complete peer in another layout: it alone can finish the blob.
        assert!(!resume_in_partial_layout(partial, &[(other, true)]));
        assert!(!resume_in_partial_layout(
            partial,
            &[(other, false), (other, true)]
        ));
    }

    #[test]
    fn a_layout_no_configuration_gives_is_never_taken() {
        let tiny = ChunkLayout::new(SIZE, 4096);
        let ours = ChunkLayout::for_blob(SIZE, MIB / 2);
        assert_eq!(shared_layout([(tiny, true)], MIB / 2), None);
        assert_eq!(
            shared_layout([(tiny, true), (ours, false)], MIB / 2),
            Some(ours)
        );
    }
}
