//! Drives the [`super::scheduler`] for one blob with real peers and the origin.
//!
//! 1. Advertise interest (a partial provider) and look up providers of the blob.
//! 2. Link to each: an interest stream on an authenticated transfer connection, over
//!    which both sides send have-maps and have announcements.
//! 3. With nobody holding the blob yet, wait one settle period and look again, so nodes
//!    of a cold start see each other before any of them goes to the origin.
//! 4. Size the blob from a peer's layout (or a HEAD at the origin), get the chunk index
//!    from a complete peer, open the staging file and run the scheduler: chunk requests
//!    to peers and ranged GETs to the origin, each written (and checked against the
//!    index) by one writer thread (`writer.rs`), which also advances the in-order
//!    readable prefix.
//! 5. Commit: the store checks the sha256. A blob that fails it after taking unverified
//!    chunks from peers is reported as [`DownloadError::CorruptFromPeers`]; the caller
//!    aborts local readers and fetches it again from the origin alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use shoal_proto::wire::Message;
use shoal_proto::{ChunkIndex, ChunkLayout, Digest};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::Instrument as _;

use super::links::{self, LinkUpdate};
use super::partial::{PartialBlob, Partials};
use super::scheduler::{self, Action, Event, NodeId, Scheduler, Source};
use super::tuning::{origin_frontier, peer_requests_per_download, with_origin_ranges};
use super::writer::{spawn_writer, write, Fetched, WriteJob};
use super::{Context, DownloadError, Progress};
use crate::net::discovery::Discovery;
use crate::net::transfer::{PeerConnection, PeerLink, Transfer};
use crate::store::{Ingest, StoreError};
use crate::upstream::Target;

mod linking;

use linking::LinkedPeer;

/// How long nodes of a cold start wait at most to see each other before using the
/// origin (provider records and interest links travel in milliseconds on a LAN).
const SETTLE: Duration = Duration::from_millis(500);
/// How often the settle looks again; it ends once every known node is linked.
const SETTLE_POLL: Duration = Duration::from_millis(50);
/// Blobs this small are not worth a settle delay: N copies from the origin cost less.
const SETTLE_MIN_SIZE: u64 = 1 << 20;
/// How often providers are looked up again during a download (new nodes, and nodes
/// that started at the same moment, whose provider records were not out yet).
const REDISCOVER: Duration = Duration::from_millis(1500);
/// The first look again comes sooner: simultaneous starters matter most early.
const FIRST_REDISCOVER: Duration = Duration::from_millis(400);
/// Scheduler clock resolution (timeouts, grace periods).
const TICK: Duration = Duration::from_millis(200);
/// How often a download logs its progress at debug level.
const PROGRESS_LOG: Duration = Duration::from_secs(2);

/// The node's peer-to-peer side, shared by all downloads.
pub(crate) struct PeerSwarm {
    pub(crate) transfer: Arc<Transfer>,
    pub(crate) discovery: Arc<Discovery>,
    pub(crate) partials: Arc<Partials>,
    pub(crate) me: NodeId,
    pub(crate) config: scheduler::Config,
    /// See [`super::tuning::MAX_PEER_REQUESTS`].
    pub(crate) peer_requests: Arc<tokio::sync::Semaphore>,
}

enum Input {
    /// A new link with a connection usable for requests.
    Linked(Arc<PeerConnection>, PeerLink),
    Fetched {
        source: Source,
        chunk: u32,
        outcome: Fetched,
    },
}

struct Peer {
    conn: Arc<PeerConnection>,
    writers: Vec<mpsc::UnboundedSender<Message>>,
}

/// Removes the download from the registry peers see, however it ends.
struct Registered<'a>(&'a Partials, Digest);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(&self.1);
    }
}

pub(super) async fn run(
    ctx: &Arc<Context>,
    swarm: &Arc<PeerSwarm>,
    digest: Digest,
    target: &Target,
    client_auth: Option<HeaderValue>,
    tx: &Arc<watch::Sender<Progress>>,
) -> Result<(), DownloadError> {
    let span = tracing::info_span!("swarm_download", %digest, upstream = %target.host, repo = %target.repo);
    async move {
        if super::publish_committed(ctx, digest, tx)? {
            return Ok(());
        }
        let (partial, inbound) = swarm.partials.register(digest);
        let _registered = Registered(&swarm.partials, digest);
        swarm.discovery.provide(digest);
        let mut run = Run {
            ctx: ctx.clone(),
            swarm: swarm.clone(),
            digest,
            target: target.clone(),
            client_auth,
            tx: tx.clone(),
            partial,
            inbound,
            peers: HashMap::new(),
            banned: HashSet::new(),
            in_flight: HashMap::new(),
            from_peers_unverified: false,
            gossiped: Vec::new(),
        };
        let result = run.drive().await;
        if result.is_err() {
            swarm.discovery.stop_providing(digest);
        }
        result
    }
    .instrument(span)
    .await
}

struct Run {
    ctx: Arc<Context>,
    swarm: Arc<PeerSwarm>,
    digest: Digest,
    target: Target,
    client_auth: Option<HeaderValue>,
    tx: Arc<watch::Sender<Progress>>,
    partial: Arc<PartialBlob>,
    inbound: mpsc::UnboundedReceiver<Box<PeerLink>>,
    peers: HashMap<NodeId, Peer>,
    banned: HashSet<NodeId>,
    in_flight: HashMap<(Source, u32), AbortHandle>,
    /// Whether chunks came from peers without a chunk index to check them against.
    from_peers_unverified: bool,
    /// The linked downloaders last told to the peers (`Message::Interested`); empty
    /// until the scheduler has seen the first links.
    gossiped: Vec<NodeId>,
}

impl Run {
    async fn drive(&mut self) -> Result<(), DownloadError> {
        let started = Instant::now();
        let mut linked = self.link_new(HashSet::new()).await;
        let layout = self.layout(&linked).await?;
        let anyone_complete = linked.iter().any(|(_, link)| links::is_complete(link));
        if !anyone_complete
            && layout.size >= SETTLE_MIN_SIZE
            && !self.swarm.discovery.peers().await.is_empty()
        {
            let members = self.swarm.discovery.members().await;
            self.settle(&mut linked, &members).await;
        }
        self.link_inbound(&mut linked).await;

        let index = self.index(&linked, &layout).await;
        let store = self.ctx.store.clone();
        let digest = self.digest;
        let ingest =
            tokio::task::spawn_blocking(move || store.begin_ingest_as(digest, layout, None))
                .await
                .map_err(|e| DownloadError::Task(e.to_string()))??;
        let resumed = ingest.offset();
        let file = Arc::new(ingest.staging_file()?);
        self.partial.set_layout(layout, file.clone());
        // The blobs a client pulls together start within the settle of each other.
        let config = scheduler::Config {
            origin_frontier: origin_frontier(self.swarm.partials.count()),
            max_peer_requests: peer_requests_per_download(self.swarm.partials.count()),
            // The same origin bytes in flight when a huge blob's chunks are larger.
            ..with_origin_ranges(self.swarm.config.clone(), layout.chunk_size)
        };
        let mut sched = Scheduler::new(self.swarm.me, layout, index.is_some(), config)
            .with_salt(scheduler::salt_of(&digest));
        for chunk in ingest.present_chunks() {
            sched.mark_present(chunk);
            self.partial.set_present(chunk);
        }
        self.tx.send_modify(|p| {
            p.size = Some(layout.size);
            p.available = resumed;
            p.file = Some(file);
        });
        tracing::info!(
            size = layout.size,
            chunks = layout.count(),
            peers = linked.len(),
            indexed = index.is_some(),
            present = sched.present(),
            "swarm download starting"
        );

        let (writes, writer) = spawn_writer(ingest, self.partial.clone(), self.tx.clone());
        let (inputs_tx, mut inputs) = mpsc::unbounded_channel::<Input>();
        let (updates_tx, mut updates) = mpsc::unbounded_channel::<LinkUpdate>();
        let index = index.map(Arc::new);
        let now = || started.elapsed();

        let mut first = Vec::new();
        for (conn, link) in linked {
            first.extend(self.add_link(conn, link, &layout, &updates_tx));
        }
        let mut pending = sched.handle_batch(now(), first);
        let mut tick = tokio::time::interval(TICK);
        let mut progress = tokio::time::interval(PROGRESS_LOG);
        let mut rediscover =
            tokio::time::interval_at(tokio::time::Instant::now() + FIRST_REDISCOVER, REDISCOVER);
        loop {
            self.gossip(sched.linked_interested(now()));
            for action in std::mem::take(&mut pending) {
                match action {
                    Action::Request { source, chunk } => {
                        if let Err(event) =
                            self.request(source, chunk, &layout, &index, &writes, &inputs_tx)
                        {
                            pending.extend(sched.handle(now(), event));
                        }
                    }
                    Action::Cancel { source, chunk } => {
                        if let Some(h) = self.in_flight.remove(&(source, chunk)) {
                            h.abort();
                        }
                    }
                    Action::Ban { peer, .. } => {
                        tracing::warn!(peer = ?peer, "peer sent a chunk that fails the chunk index; banned");
                        self.banned.insert(peer);
                        self.peers.remove(&peer);
                    }
                    Action::Announce { chunk } => {
                        let have = Message::Have {
                            digest: self.digest,
                            chunk,
                        };
                        for p in self.peers.values_mut() {
                            p.writers.retain(|w| w.send(have.clone()).is_ok());
                        }
                    }
                    Action::Complete => {
                        for (_, h) in self.in_flight.drain() {
                            h.abort();
                        }
                        drop(writes);
                        return self.commit(writer, started, resumed).await;
                    }
                    Action::Abort { reason } => {
                        return Err(DownloadError::Swarm(reason));
                    }
                }
            }
            let event = tokio::select! {
                Some(input) = inputs.recv() => match input {
                    Input::Linked(conn, link) => {
                        let events = self.add_link(conn, link, &layout, &updates_tx);
                        pending.extend(sched.handle_batch(now(), events));
                        continue;
                    }
                    Input::Fetched { source, chunk, outcome } => {
                        self.in_flight.remove(&(source, chunk));
                        match outcome {
                            Fetched::Written => {
                                if let Source::Peer(_) = source {
                                    self.from_peers_unverified |= index.is_none();
                                }
                                Event::ChunkArrived { source, chunk, valid: true }
                            }
                            Fetched::Invalid => {
                                self.ctx.metrics.peer_bad_chunks.inc();
                                Event::ChunkArrived { source, chunk, valid: false }
                            }
                            Fetched::Failed(why) => {
                                tracing::debug!(?source, chunk, error = %why, "chunk request failed");
                                if let Source::Peer(p) = source {
                                    if self.peers.get(&p).is_some_and(|p| p.conn.is_closed()) {
                                        self.peers.remove(&p);
                                        pending.extend(sched.handle(now(), Event::PeerGone { peer: p }));
                                    }
                                }
                                Event::RequestFailed { source, chunk }
                            }
                            Fetched::Store(e) => return Err(e.into()),
                        }
                    }
                },
                Some(update) = updates.recv() => match update {
                    LinkUpdate::Map { peer, layout: theirs, bitfield } => {
                        match links::bitfield_event(peer, &layout, theirs, &bitfield) {
                            Some(e) if self.peers.contains_key(&peer) => e,
                            _ => continue,
                        }
                    }
                    LinkUpdate::Have { peer, chunk } => Event::PeerHave { peer, chunk },
                    LinkUpdate::Interested { peer, nodes } => {
                        self.ctx.metrics.interested_lists.inc();
                        Event::Interested { from: peer, nodes }
                    }
                    // Only a peer that ended while downloading is gone. Linked again
                    // (rediscovery), it reports what it holds now; a link that ended
                    // before its peer's last `Have` arrived left the peer owning chunks
                    // for the 30 s grace (emulated: a 16 KiB layer took 30 s).
                    LinkUpdate::Ended { peer } if sched.peer_complete(peer) == Some(false) => {
                        self.peers.remove(&peer);
                        Event::PeerGone { peer }
                    }
                    LinkUpdate::Ended { .. } => continue,
                    LinkUpdate::Closed { peer } => {
                        if self.peers.remove(&peer).is_none() {
                            continue;
                        }
                        Event::PeerGone { peer }
                    }
                },
                Some(link) = self.inbound.recv() => {
                    self.spawn_dial_back(link, &inputs_tx);
                    continue;
                }
                _ = rediscover.tick() => {
                    self.spawn_rediscover(&inputs_tx);
                    continue;
                }
                _ = progress.tick() => {
                    let st = sched.status(now());
                    tracing::debug!(
                        present = st.present,
                        in_order = sched.cursor(),
                        chunks = st.chunks,
                        peers = st.peers,
                        seeds = st.seeds,
                        interested = st.interested,
                        peer_requests = st.peer_requests,
                        origin_requests = st.origin_requests,
                        stalled = st.stalled,
                        "swarm download progress"
                    );
                    continue;
                }
                _ = tick.tick() => {
                    sched.set_max_peer_requests(peer_requests_per_download(
                        self.swarm.partials.count(),
                    ));
                    Event::Tick
                }
            };
            pending.extend(sched.handle(now(), event));
        }
    }

    /// Size and chunking: from a resumed partial, the peers, or the origin.
    async fn layout(&self, linked: &[LinkedPeer]) -> Result<ChunkLayout, DownloadError> {
        let offers: Vec<(ChunkLayout, bool)> = linked
            .iter()
            .filter_map(|(_, link)| Some((link.layout?, links::is_complete(link))))
            .collect();
        if let Some(partial) = self.ctx.store.partial_layout(&self.digest)? {
            if links::resume_in_partial_layout(partial, &offers) {
                return Ok(partial);
            }
            tracing::info!(
                digest = %self.digest,
                partial_chunk_size = partial.chunk_size,
                "dropping partial blob: complete peers hold it only in another chunk layout"
            );
        }
        if let Some(layout) = links::shared_layout(offers, self.ctx.store.chunk_size()) {
            return Ok(layout);
        }
        let size = self
            .ctx
            .upstream
            .blob_size(&self.target, &self.digest, self.client_auth.clone())
            .await?;
        Ok(self.ctx.store.new_blob_layout(size))
    }

    /// The chunk index, from the first complete peer that gives a consistent one.
    async fn index(&self, linked: &[LinkedPeer], layout: &ChunkLayout) -> Option<ChunkIndex> {
        for (conn, link) in linked.iter().filter(|(_, l)| links::is_complete(l)) {
            match conn.fetch_index(self.digest).await {
                Ok(index) if index.layout == *layout => return Some(index),
                Ok(_) => {
                    tracing::warn!(peer = %conn.remote, "peer's chunk index disagrees with its have-map")
                }
                Err(e) => {
                    tracing::debug!(peer = %link.peer, error = %e, "no chunk index from peer")
                }
            }
        }
        None
    }

    /// Starts one chunk request; `Err` is the event to feed back when it cannot start.
    fn request(
        &mut self,
        source: Source,
        chunk: u32,
        layout: &ChunkLayout,
        index: &Option<Arc<ChunkIndex>>,
        writes: &mpsc::Sender<WriteJob>,
        inputs: &mpsc::UnboundedSender<Input>,
    ) -> Result<(), Event> {
        let Some(range) = layout.range(chunk) else {
            return Err(Event::RequestFailed { source, chunk });
        };
        let expected = index
            .as_ref()
            .and_then(|i| i.hashes.get(chunk as usize).copied());
        let (digest, writes, inputs) = (self.digest, writes.clone(), inputs.clone());
        let len = (range.end - range.start) as u32;
        let handle = match source {
            Source::Peer(p) => {
                let Some(peer) = self.peers.get(&p) else {
                    return Err(Event::PeerGone { peer: p });
                };
                let conn = peer.conn.clone();
                let metrics = self.ctx.metrics.clone();
                let slots = self.swarm.peer_requests.clone();
                let partial = self.partial.clone();
                let task = async move {
                    let asked = tokio::time::Instant::now();
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return;
                    };
                    let held = partial.held();
                    let sent = tokio::time::Instant::now();
                    let outcome = match conn.fetch_chunk(digest, chunk, held, len).await {
                        Ok(bytes) if bytes.len() as u32 == len => {
                            metrics.peer_bytes.inc_by(bytes.len() as u64);
                            let arrived = tokio::time::Instant::now();
                            let outcome = write(&writes, chunk, bytes, expected).await;
                            // Where a chunk's time went, for reading a download's tail.
                            tracing::trace!(
                                peer = %conn.remote,
                                chunk,
                                slot_wait_ms = (sent - asked).as_millis() as u64,
                                transfer_ms = (arrived - sent).as_millis() as u64,
                                write_ms = arrived.elapsed().as_millis() as u64,
                                "chunk from a peer"
                            );
                            outcome
                        }
                        Ok(bytes) => {
                            Fetched::Failed(format!("peer sent {} of {len} bytes", bytes.len()))
                        }
                        Err(e) => Fetched::Failed(e.to_string()),
                    };
                    let _ = inputs.send(Input::Fetched {
                        source,
                        chunk,
                        outcome,
                    });
                };
                tokio::spawn(task.in_current_span())
            }
            Source::Origin => {
                let (ctx, target, auth) = (
                    self.ctx.clone(),
                    self.target.clone(),
                    self.client_auth.clone(),
                );
                let task = async move {
                    let outcome =
                        match links::fetch_origin_range(&ctx, &target, auth, digest, range).await {
                            // Not checked against a peer's chunk index: the origin is the
                            // authority, and the final sha256 decides.
                            Ok(bytes) => write(&writes, chunk, bytes, None).await,
                            Err(e) => Fetched::Failed(e.to_string()),
                        };
                    let _ = inputs.send(Input::Fetched {
                        source,
                        chunk,
                        outcome,
                    });
                };
                tokio::spawn(task.in_current_span())
            }
        };
        self.in_flight
            .insert((source, chunk), handle.abort_handle());
        Ok(())
    }

    async fn commit(
        &self,
        writer: tokio::task::JoinHandle<Result<Ingest, DownloadError>>,
        started: Instant,
        resumed: u64,
    ) -> Result<(), DownloadError> {
        match super::commit(writer, started, resumed).await {
            Err(DownloadError::Store(StoreError::DigestMismatch { .. }))
                if self.from_peers_unverified =>
            {
                Err(DownloadError::CorruptFromPeers(self.digest))
            }
            other => other,
        }
    }
}
