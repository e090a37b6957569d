//! The download scheduler for one blob: a sans-IO state machine.
//!
//! It decides which chunk to ask of which peer, when to go to the origin, and when to
//! give up on a peer. It does no I/O and reads no clock: the driver feeds it
//! [`Event`]s stamped with the current time and carries out the [`Action`]s it returns.
//! The daemon drives it with tokio; tests and the simulator drive the same code with
//! virtual time (the pattern of `quinn-proto`).
//!
//! Policy, in order of precedence when a request slot is free:
//! 1. **Streaming window**: the first missing chunks after the in-order cursor, so the
//!    local runtime gets bytes early.
//! 2. **Rarest first** among the chunks a peer has, ties broken by a per-node hash so
//!    nodes spread over different chunks.
//! 3. **Origin, only for what no peer has.** With other nodes downloading the same blob
//!    (a cold start), each chunk is assigned by rendezvous hashing over the live
//!    interested nodes; a node fetches from the origin only the chunks assigned to it
//!    and waits for the others to announce theirs. The interested set is this node's
//!    links plus the lists its linked peers send ([`Event::Interested`]), and the first
//!    origin request waits for those lists ([`Config::membership_wait`]), so that views
//!    agree and each chunk has about one owner. When an interested node falls
//!    silent for [`Config::assignment_grace`], it drops out of the hash and its chunks
//!    move to the others, so a dead node costs one grace period, not a stall.
//! 4. **Endgame**: once every missing chunk is in flight, idle peers duplicate the
//!    outstanding requests; the first copy wins and the others are cancelled.
//!
//! Peers are scored by observed throughput (EWMA). Faster peers are asked first and get
//! deeper pipelines. A request that times out is retried elsewhere and halves the
//! peer's score. A chunk that fails verification bans its sender for [`Config::ban_period`].

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use shoal_proto::{ChunkLayout, Digest};

/// Nodes taken from one peer's [`Event::Interested`] list at most.
pub const MAX_HEARD_INTERESTED: usize = 1024;

/// A node's identity as the scheduler sees it: 64 bits of a hash of its PeerId, equal on
/// every node, so rendezvous assignments agree cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// Derives the id from a PeerId's bytes.
    pub fn from_peer_bytes(bytes: &[u8]) -> NodeId {
        let h = blake3::hash(bytes);
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        NodeId(u64::from_le_bytes(b))
    }
}

/// Where a chunk is requested from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Another node.
    Peer(NodeId),
    /// The origin registry (by Range).
    Origin,
}

/// Tunables. Defaults suit a LAN with chunks of a few MiB.
#[derive(Debug, Clone)]
pub struct Config {
    /// Outstanding requests to the fastest peer (slower peers get proportionally fewer, at least 1).
    pub max_requests_per_peer: usize,
    /// Outstanding origin requests of this node when it downloads alone.
    pub max_origin_requests: usize,
    /// Outstanding origin requests when other nodes download the blob too (a cold
    /// start): the origin's uplink is shared, so each range is slow, and fewer at once
    /// means each finishes sooner and reaches the other nodes sooner (simulated: 8
    /// nodes 1.71x -> 1.44x T_limit going from 2 to 1).
    pub shared_origin_requests: usize,

    /// A peer request unanswered for this long is cancelled and retried elsewhere.
    /// Origin requests are exempt: with many nodes sharing the origin each range is
    /// slow but progressing, and cancelling it restarts it from zero (the simulator
    /// showed 33 nodes livelocking that way); the driver's per-read upstream timeout
    /// catches an origin that stopped sending.
    pub request_timeout: Duration,
    /// An interested node not heard from for this long loses its origin assignments.
    pub assignment_grace: Duration,
    /// In a cold start, the first origin request waits until every linked downloading
    /// peer has sent its [`Event::Interested`] list, or this long after the first event.
    /// Assignments made on a node's own links alone give each chunk about N/links
    /// owners, and an origin range once sent is not taken back (simulated: 100 nodes
    /// fetched 1.93x the model from the origin, 1.375x when the lists came just after).
    pub membership_wait: Duration,
    /// In a cold start, a node fetches an owned chunk from the origin only when it is
    /// among the lowest this many chunks that neither this node nor a linked peer holds.
    /// Owners across the swarm then fetch a few chunks at a time in order, each arriving
    /// early and spreading while the origin sends the next, rather than all of them
    /// sharing the origin and arriving together at the end. Chunks held nearby do not
    /// count: in a large swarm they arrive out of order from other neighbourhoods, and
    /// counting positions instead held owners back in waves (simulated 1000 nodes cold:
    /// 1.93x -> 1.76x T_limit). 0: no limit.
    pub origin_frontier: u32,
    /// How long a peer that sent bad bytes is ignored.
    pub ban_period: Duration,
    /// Chunks after the in-order cursor that take precedence over rarest-first.
    pub stream_window: u32,
    /// Sources per chunk at most in endgame.
    pub endgame_sources: usize,
    /// Origin failures in a row before the download is abandoned.
    pub max_origin_failures: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_requests_per_peer: 4,
            max_origin_requests: 4,
            shared_origin_requests: 1,
            request_timeout: Duration::from_secs(15),
            assignment_grace: Duration::from_secs(5),
            membership_wait: Duration::from_secs(1),
            origin_frontier: 0,
            ban_period: Duration::from_secs(600),
            stream_window: 2,
            endgame_sources: 2,
            max_origin_failures: 5,
        }
    }
}

/// What happened. Every event carries the current time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer is connected and has told which chunks it holds. `downloading` is true for
    /// a node that wants the blob too (a partial provider taking part in a cold start).
    PeerBitfield {
        /// The peer.
        peer: NodeId,
        /// `chunks[i]` when the peer holds chunk i.
        chunks: Vec<bool>,
        /// Whether the peer is itself still downloading.
        downloading: bool,
    },
    /// A peer announced one more chunk.
    PeerHave {
        /// The peer.
        peer: NodeId,
        /// The chunk.
        chunk: u32,
    },
    /// The peer disconnected or stopped providing.
    PeerGone {
        /// The peer.
        peer: NodeId,
    },
    /// A requested chunk arrived and was checked: `valid` is false when it failed
    /// verification against the chunk index.
    ChunkArrived {
        /// Who sent it.
        source: Source,
        /// The chunk.
        chunk: u32,
        /// Whether it verified.
        valid: bool,
    },
    /// A request failed (rejected, stream reset, origin error).
    RequestFailed {
        /// Who failed.
        source: Source,
        /// The chunk.
        chunk: u32,
    },
    /// The whole blob failed its sha256 after all chunks arrived: chunks that came from
    /// peers without index verification are suspect and are refetched from the origin.
    BlobCorrupt,
    /// A linked peer's own interested links (it and the nodes it is linked to that
    /// download the blob). They join this node's rendezvous assignment of origin chunks
    /// until that peer sends a newer list, goes away, or is silent for
    /// `assignment_grace`. With only its own links, each node of a large swarm sees a
    /// different interested set and chunks get many owners; two hops of view make the
    /// sets nearly agree. The daemon carries it in `Message::Interested`, sent whenever
    /// a node's [`Scheduler::linked_interested`] changes (the simulator does the same).
    Interested {
        /// The peer that sent the list.
        from: NodeId,
        /// Its interested links.
        nodes: Vec<NodeId>,
    },
    /// Nothing happened; time passed.
    Tick,
}

/// What the driver should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask a peer for a chunk.
    Request {
        /// Whom to ask.
        source: Source,
        /// The chunk.
        chunk: u32,
    },
    /// Abandon an outstanding request (timed out, or another copy won).
    Cancel {
        /// Whom it was sent to.
        source: Source,
        /// The chunk.
        chunk: u32,
    },
    /// Stop talking to a peer that sent bad bytes, until `until`.
    Ban {
        /// The peer.
        peer: NodeId,
        /// Virtual time the ban ends.
        until: Duration,
    },
    /// Announce to peers that this node now holds `chunk`.
    Announce {
        /// The chunk.
        chunk: u32,
    },
    /// Every chunk is present: verify the sha256 and commit.
    Complete,
    /// The blob cannot be completed (origin keeps failing, nobody has it).
    Abort {
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct PeerState {
    chunks: Vec<bool>,
    downloading: bool,
    /// Complete when this node first heard of it, and never heard of downloading: a seed
    /// whose uplink is shared out by rendezvous. A co-downloader that completes later is
    /// not, also when linked again after its links closed: by then most of its
    /// neighbours have finished too, and an owner chosen among this node's links may
    /// not be linked to it, so the chunk would wait for the stall net (simulated, 1000
    /// nodes cold: 800 nodes idle with 0.7 % of the model missing, for 30 s).
    seed: bool,
    /// Bytes per second, exponentially weighted; starts optimistic so new peers get tried.
    score: f64,
    last_heard: Duration,
    in_flight: usize,
}

impl PeerState {
    /// Heard from within `grace` of `now`: live for the interested set and its lists.
    fn heard_within(&self, now: Duration, grace: Duration) -> bool {
        now.saturating_sub(self.last_heard) < grace
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Missing,
    /// Present and checked against the chunk index (or fetched from the origin).
    Verified,
    /// Present from a peer without an index (cold start): trusted until the sha256 says otherwise.
    Unverified,
}

/// A snapshot of one download's state ([`Scheduler::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Chunks present.
    pub present: u32,
    /// Chunks in the blob.
    pub chunks: u32,
    /// Linked peers.
    pub peers: usize,
    /// Of those, seeds shared out by rendezvous.
    pub seeds: usize,
    /// Live interested nodes, this one and gossiped ones included.
    pub interested: usize,
    /// Peer requests outstanding.
    pub peer_requests: usize,
    /// Origin requests outstanding.
    pub origin_requests: usize,
    /// The stall net is fetching regardless of owners.
    pub stalled: bool,
}

/// The scheduler for one blob on one node.
pub struct Scheduler {
    me: NodeId,
    layout: ChunkLayout,
    config: Config,
    chunks: Vec<ChunkState>,
    /// Outstanding requests: chunk → (source, sent at).
    in_flight: BTreeMap<u32, Vec<(Source, Duration)>>,
    peers: HashMap<NodeId, PeerState>,
    banned: HashMap<NodeId, Duration>,
    /// Whether peers can be checked chunk by chunk (a chunk index is known).
    have_index: bool,
    /// After a failed sha256: everything from the origin, no more trust in peers.
    origin_only: bool,
    origin_in_flight: usize,
    origin_failures: u32,
    /// In-order cursor: all chunks before it are present.
    cursor: u32,
    present: u32,
    finished: bool,
    /// Origin chunks assigned by rendezvous over the interested nodes, gossip included.
    origin_owners: Ownership,
    /// Seed chunks assigned by rendezvous over the linked interested nodes only: a seed
    /// serves the nodes linked to it, and an owner two hops away could not fetch from it
    /// (simulated, 100 nodes warm: 2.66x T_limit this way, 3.76x over the gossiped set).
    seed_owners: Ownership,
    /// Each linked peer's interested links (gossip), its latest list.
    heard_interested: HashMap<NodeId, Vec<NodeId>>,
    /// Peers ever heard of as downloading, kept after they go: a co-downloader's links
    /// close when its download completes, and linked again it is still no seed.
    co_downloaders: HashSet<NodeId>,
    /// [`Scheduler::live_interested`] and the time until which it holds: merging up to
    /// 32 gossiped lists per batch was most of a 1000-node simulation's time. Cleared
    /// by every event that can change the set; time alone only shrinks it.
    interested_cache: Option<(Vec<NodeId>, Duration)>,
    /// Last time a chunk arrived (or the download started): the stall safety net.
    last_progress: Option<Duration>,
    /// Time of the first event.
    started: Option<Duration>,
    /// Mixed into the rendezvous weights ([`Scheduler::with_salt`]).
    salt: u64,
    actions: Vec<Action>,
}

impl Scheduler {
    /// A scheduler for a blob of `layout`. `have_index` says whether its chunk index is
    /// known (so peer chunks are verified one by one).
    pub fn new(me: NodeId, layout: ChunkLayout, have_index: bool, config: Config) -> Scheduler {
        let n = layout.count() as usize;
        Scheduler {
            me,
            layout,
            config,
            chunks: vec![ChunkState::Missing; n],
            in_flight: BTreeMap::new(),
            peers: HashMap::new(),
            banned: HashMap::new(),
            have_index,
            origin_only: false,
            origin_in_flight: 0,
            origin_failures: 0,
            cursor: 0,
            present: 0,
            finished: false,
            last_progress: None,
            started: None,
            origin_owners: Ownership::default(),
            seed_owners: Ownership::default(),
            heard_interested: HashMap::new(),
            co_downloaders: HashSet::new(),
            interested_cache: None,
            salt: 0,
            actions: Vec::new(),
        }
    }

    /// Mixes `salt` into the rendezvous assignment of chunks to owners. Every node must
    /// use the same salt for a blob (the daemon derives it from the digest). Without it,
    /// chunk i of every blob of a model has the same owner, so the owners of the first
    /// chunks fetch one range per layer at once while most nodes wait (simulated, 200
    /// nodes: 32 origin ranges to 8 nodes for the first 5 s).
    pub fn with_salt(mut self, salt: u64) -> Scheduler {
        self.salt = salt;
        self
    }

    /// Marks chunks already on disk (a resumed partial), before the first event.
    pub fn mark_present(&mut self, chunk: u32) {
        if let Some(ChunkState::Missing) = self.chunks.get(chunk as usize) {
            self.chunks[chunk as usize] = ChunkState::Verified;
            self.present += 1;
            self.advance_cursor();
        }
    }

    /// The chunk index became known (fetched from a complete peer).
    pub fn set_have_index(&mut self) {
        self.have_index = true;
    }

    /// Chunks present so far.
    pub fn present(&self) -> u32 {
        self.present
    }

    /// Whether chunk `i` is present.
    pub fn has_chunk(&self, i: u32) -> bool {
        self.chunks
            .get(i as usize)
            .is_some_and(|c| *c != ChunkState::Missing)
    }

    /// Chunks `0..cursor` are all present (what can be streamed in order).
    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    /// Whether a linked peer holds every chunk (`None`: not linked).
    pub fn peer_complete(&self, peer: NodeId) -> Option<bool> {
        self.peers.get(&peer).map(|st| st.chunks.iter().all(|&c| c))
    }

    /// Counters for a progress line: what the download waits on when it stalls.
    pub fn status(&mut self, now: Duration) -> Status {
        let interested = self.cached_interested(now).len();
        let seeds = self.peers.values().filter(|st| st.seed).count();
        let peer_requests = self
            .in_flight
            .values()
            .flatten()
            .filter(|(s, _)| *s != Source::Origin)
            .count();
        Status {
            present: self.present,
            chunks: self.chunks.len() as u32,
            peers: self.peers.len(),
            seeds,
            interested,
            peer_requests,
            origin_requests: self.origin_in_flight,
            stalled: self.stalled(now),
        }
    }

    /// Feeds one event at time `now` and returns what to do.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        self.handle_batch(now, [event])
    }

    /// Feeds several simultaneous events, then schedules once. Use it for the initial
    /// peer set: scheduling after each bitfield would send the origin requests for
    /// chunks that the next peer in the batch has, or assign chunks by rendezvous over
    /// a partial view of the interested nodes.
    pub fn handle_batch(
        &mut self,
        now: Duration,
        events: impl IntoIterator<Item = Event>,
    ) -> Vec<Action> {
        self.last_progress.get_or_insert(now);
        self.started.get_or_insert(now);
        for event in events {
            self.apply(now, event);
        }
        if !self.finished {
            self.expire(now);
            self.schedule(now);
        }
        std::mem::take(&mut self.actions)
    }

    fn apply(&mut self, now: Duration, event: Event) {
        match event {
            Event::PeerBitfield {
                peer,
                chunks,
                downloading,
            } => {
                if peer != self.me {
                    let mut chunks = chunks;
                    chunks.resize(self.chunks.len(), false);
                    if downloading {
                        self.co_downloaders.insert(peer);
                    }
                    let seed = !downloading && !self.co_downloaders.contains(&peer);
                    let st = self.peers.entry(peer).or_insert(PeerState {
                        chunks: Vec::new(),
                        downloading,
                        seed,
                        score: f64::INFINITY,
                        last_heard: now,
                        in_flight: 0,
                    });
                    st.chunks = chunks;
                    st.downloading = downloading;
                    st.last_heard = now;
                    self.interested_cache = None;
                }
            }
            Event::PeerHave { peer, chunk } => {
                let grace = self.config.assignment_grace;
                if let Some(st) = self.peers.get_mut(&peer) {
                    if let Some(c) = st.chunks.get_mut(chunk as usize) {
                        *c = true;
                    }
                    let was = (st.downloading, !st.heard_within(now, grace));
                    st.last_heard = now;
                    if st.chunks.iter().all(|&c| c) {
                        st.downloading = false;
                    }
                    // Back from silence, or done: the set changes.
                    if was.1 || was.0 != st.downloading {
                        self.interested_cache = None;
                    }
                }
            }
            Event::PeerGone { peer } => self.drop_peer(peer),
            Event::ChunkArrived {
                source,
                chunk,
                valid,
            } => self.on_arrival(now, source, chunk, valid),
            Event::RequestFailed { source, chunk } => {
                if self.remove_in_flight(chunk, source).is_some() {
                    match source {
                        Source::Origin => {
                            self.origin_failures += 1;
                            if self.origin_failures >= self.config.max_origin_failures {
                                self.abort(format!(
                                    "origin failed {} times in a row",
                                    self.origin_failures
                                ));
                            }
                        }
                        Source::Peer(p) => self.penalise(p),
                    }
                }
            }
            Event::BlobCorrupt => self.on_corrupt(),
            Event::Interested { from, mut nodes } => {
                if let Some(st) = self.peers.get_mut(&from) {
                    st.last_heard = now;
                    nodes.truncate(MAX_HEARD_INTERESTED);
                    self.heard_interested.insert(from, nodes);
                    self.interested_cache = None;
                }
            }
            Event::Tick => {}
        }
    }

    /// Halves a peer's score; an unmeasured (optimistic) peer drops to the back.
    fn penalise(&mut self, peer: NodeId) {
        if let Some(st) = self.peers.get_mut(&peer) {
            st.score = if st.score.is_finite() {
                st.score / 2.0
            } else {
                0.0
            };
        }
    }

    fn abort(&mut self, reason: String) {
        if !self.finished {
            self.finished = true;
            self.actions.push(Action::Abort { reason });
        }
    }

    fn drop_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
        self.heard_interested.remove(&peer);
        self.interested_cache = None;
        let chunks: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, v)| v.iter().any(|(s, _)| *s == Source::Peer(peer)))
            .map(|(c, _)| *c)
            .collect();
        for c in chunks {
            self.remove_in_flight(c, Source::Peer(peer));
        }
    }

    fn remove_in_flight(&mut self, chunk: u32, source: Source) -> Option<Duration> {
        let list = self.in_flight.get_mut(&chunk)?;
        let pos = list.iter().position(|(s, _)| *s == source)?;
        let (_, sent) = list.remove(pos);
        if list.is_empty() {
            self.in_flight.remove(&chunk);
        }
        self.release_slot(source);
        Some(sent)
    }

    fn on_arrival(&mut self, now: Duration, source: Source, chunk: u32, valid: bool) {
        let Some(sent) = self.remove_in_flight(chunk, source) else {
            return;
        };
        if !valid {
            if let Source::Peer(p) = source {
                let until = now + self.config.ban_period;
                self.banned.insert(p, until);
                self.drop_peer(p);
                self.actions.push(Action::Ban { peer: p, until });
            }
            return;
        }
        match source {
            Source::Origin => self.origin_failures = 0,
            Source::Peer(p) => {
                if let Some(st) = self.peers.get_mut(&p) {
                    let bytes = self.layout.range(chunk).map_or(0, |r| r.end - r.start) as f64;
                    let rate = bytes / (now.saturating_sub(sent)).as_secs_f64().max(1e-6);
                    st.score = if st.score.is_finite() {
                        0.7 * st.score + 0.3 * rate
                    } else {
                        rate
                    };
                    if !st.heard_within(now, self.config.assignment_grace) {
                        self.interested_cache = None;
                    }
                    st.last_heard = now;
                }
            }
        }
        if self.chunks[chunk as usize] != ChunkState::Missing {
            return; // an endgame duplicate that lost
        }
        self.last_progress = Some(now);
        let trusted = source == Source::Origin || self.have_index;
        self.chunks[chunk as usize] = if trusted {
            ChunkState::Verified
        } else {
            ChunkState::Unverified
        };
        self.present += 1;
        self.advance_cursor();
        self.actions.push(Action::Announce { chunk });
        if let Some(others) = self.in_flight.remove(&chunk) {
            for (s, _) in others {
                self.release_slot(s);
                self.actions.push(Action::Cancel { source: s, chunk });
            }
        }
        if self.present as usize == self.chunks.len() {
            self.finished = true;
            self.actions.push(Action::Complete);
        }
    }

    fn release_slot(&mut self, source: Source) {
        match source {
            Source::Origin => self.origin_in_flight = self.origin_in_flight.saturating_sub(1),
            Source::Peer(p) => {
                if let Some(st) = self.peers.get_mut(&p) {
                    st.in_flight = st.in_flight.saturating_sub(1);
                }
            }
        }
    }

    fn on_corrupt(&mut self) {
        self.finished = false;
        self.origin_only = true;
        for c in self.chunks.iter_mut() {
            if *c == ChunkState::Unverified {
                *c = ChunkState::Missing;
                self.present -= 1;
            }
        }
        self.cursor = 0;
        self.advance_cursor();
    }

    fn advance_cursor(&mut self) {
        while self
            .chunks
            .get(self.cursor as usize)
            .is_some_and(|c| *c != ChunkState::Missing)
        {
            self.cursor += 1;
        }
    }

    /// Cancels requests older than the timeout; the chunks become requestable again.
    fn expire(&mut self, now: Duration) {
        let timeout = self.config.request_timeout;
        let expired: Vec<(u32, Source)> = self
            .in_flight
            .iter()
            .flat_map(|(c, v)| {
                v.iter()
                    .filter(|(s, t)| *s != Source::Origin && now.saturating_sub(*t) >= timeout)
                    .map(move |(s, _)| (*c, *s))
            })
            .collect();
        for (chunk, source) in expired {
            self.remove_in_flight(chunk, source);
            self.actions.push(Action::Cancel { source, chunk });
            if let Source::Peer(p) = source {
                self.penalise(p);
            }
        }
        self.banned.retain(|_, until| *until > now);
    }

    /// [`Scheduler::live_interested`], recomputed only when an event or the passing of
    /// a grace period may have changed it.
    fn cached_interested(&mut self, now: Duration) -> Vec<NodeId> {
        if let Some((set, until)) = &self.interested_cache {
            if now < *until {
                debug_assert_eq!(*set, self.live_interested(now));
                return set.clone();
            }
        }
        let set = self.live_interested(now);
        let grace = self.config.assignment_grace;
        let peer_expiry = self
            .peers
            .values()
            .filter(|st| st.downloading && st.heard_within(now, grace))
            .map(|st| st.last_heard + grace);
        // A list lapses with its sender's liveness (every sender is a peer).
        let sender_expiry = self
            .heard_interested
            .keys()
            .filter_map(|from| self.peers.get(from))
            .filter(|st| st.heard_within(now, grace))
            .map(|st| st.last_heard + grace);
        let until = peer_expiry
            .chain(sender_expiry)
            .min()
            .unwrap_or(Duration::MAX);
        self.interested_cache = Some((set.clone(), until));
        set
    }

    /// Whether a list from `from` counts: it is linked and was heard from within the
    /// grace. Lists are sent only when they change, so a list's own age says nothing
    /// (when lists lapsed 30 s after they were sent, every large simulated cold start
    /// fell back to one-hop views half-way through and fetched chunks again).
    fn live_sender(&self, from: &NodeId, now: Duration) -> bool {
        self.peers
            .get(from)
            .is_some_and(|st| st.heard_within(now, self.config.assignment_grace))
    }

    /// The live interested nodes (this one included), sorted.
    fn live_interested(&self, now: Duration) -> Vec<NodeId> {
        let mut live: Vec<NodeId> = self.linked_interested(now);
        for (from, nodes) in &self.heard_interested {
            if self.live_sender(from, now) {
                // A linked peer this node knows to be complete is a seed, not a
                // co-downloader, whatever an older list says (as an owner it would
                // hold chunks nobody fetches until the grace runs out).
                live.extend(
                    nodes
                        .iter()
                        .copied()
                        .filter(|n| self.peers.get(n).is_none_or(|st| st.downloading)),
                );
            }
        }
        live.sort_unstable();
        live.dedup();
        live
    }

    /// This node and its linked peers that are downloading the blob and were heard from
    /// within the grace: what it tells its peers ([`Event::Interested`]).
    pub fn linked_interested(&self, now: Duration) -> Vec<NodeId> {
        let grace = self.config.assignment_grace;
        let mut live: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, st)| st.downloading && st.heard_within(now, grace))
            .map(|(id, _)| *id)
            .chain([self.me])
            .collect();
        live.sort_unstable();
        live
    }

    /// Per-node tie-break so nodes pick different chunks among equally rare ones.
    fn spread(&self, chunk: u32) -> u64 {
        (u64::from(chunk).wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.me.0
    }

    fn schedule(&mut self, now: Duration) {
        let missing: Vec<u32> = (0..self.chunks.len() as u32)
            .filter(|&c| self.chunks[c as usize] == ChunkState::Missing)
            .collect();
        if missing.is_empty() {
            return;
        }
        let interested = self.cached_interested(now);
        if !self.origin_only {
            self.schedule_peers(now, &missing, interested.len() > 1);
        }
        self.schedule_origin(now, &missing, interested);
    }

    fn schedule_peers(&mut self, now: Duration, missing: &[u32], shared: bool) {
        // Indexed by chunk: this runs on every event, for every missing chunk and peer,
        // and a hash map here was most of the cost at a thousand nodes (simulator).
        let mut availability = vec![0u32; self.chunks.len()];
        for st in self.peers.values() {
            for &c in missing {
                if st.chunks[c as usize] {
                    availability[c as usize] += 1;
                }
            }
        }
        // Fastest peers first; unmeasured ones (infinite score) are tried early.
        let mut order: Vec<NodeId> = self
            .peers
            .keys()
            .copied()
            .filter(|p| !self.banned.contains_key(p))
            .collect();
        order.sort_by(|a, b| {
            self.peers[b]
                .score
                .total_cmp(&self.peers[a].score)
                .then(a.cmp(b))
        });
        let best = order
            .iter()
            .map(|p| self.peers[p].score)
            .find(|s| s.is_finite())
            .unwrap_or(1.0)
            .max(1.0);
        let window_end = self.cursor.saturating_add(self.config.stream_window);
        // Seeds (peers complete when first heard of) are shared like the origin when
        // other nodes want the blob too: each chunk is taken from a seed by its
        // rendezvous owner only, and the others get it from the owner, so a seed's
        // uplink carries each chunk about once.
        let share_seeds = shared && !self.stalled(now);
        let owned = if share_seeds {
            let linked = self.linked_interested(now);
            self.seed_owners
                .update(linked, self.me, self.chunks.len(), self.salt)
                .to_vec()
        } else {
            Vec::new()
        };
        for peer in order {
            let from_seed = share_seeds && self.peers[&peer].seed;
            let depth = {
                let s = self.peers[&peer].score;
                let share = if s.is_finite() { s / best } else { 1.0 };
                ((self.config.max_requests_per_peer as f64 * share).round() as usize)
                    .clamp(1, self.config.max_requests_per_peer)
            };
            while self.peers[&peer].in_flight < depth {
                let candidates = missing.iter().copied().filter(|&c| {
                    self.peers[&peer].chunks[c as usize]
                        && !self.in_flight.contains_key(&c)
                        && (!from_seed || owned.get(c as usize).copied().unwrap_or(true))
                });
                // In the window: lowest index first. Past it: rarest, then spread.
                let pick = candidates.min_by_key(|&c| {
                    let in_window = c < window_end;
                    (
                        !in_window,
                        if in_window { c } else { 0 },
                        availability[c as usize],
                        self.spread(c),
                    )
                });
                let pick = pick.or_else(|| self.endgame_pick(peer, missing));
                let Some(chunk) = pick else { break };
                self.send(now, Source::Peer(peer), chunk);
            }
        }
    }

    /// In endgame (every missing chunk requested), a chunk this peer has and that is
    /// outstanding elsewhere, oldest request first.
    fn endgame_pick(&self, peer: NodeId, missing: &[u32]) -> Option<u32> {
        if missing.iter().any(|c| !self.in_flight.contains_key(c)) {
            return None;
        }
        let st = &self.peers[&peer];
        self.in_flight
            .iter()
            .filter(|(c, v)| {
                st.chunks[**c as usize]
                    && v.len() < self.config.endgame_sources
                    && v.iter().all(|(s, _)| *s != Source::Peer(peer))
            })
            .min_by_key(|(_, v)| v.iter().map(|(_, t)| *t).min())
            .map(|(c, _)| *c)
    }

    fn schedule_origin(&mut self, now: Duration, missing: &[u32], interested: Vec<NodeId>) {
        let everything = self.origin_only || self.stalled(now);
        let shared = interested.len() > 1;
        if shared && !everything && !self.membership_known(now) {
            return;
        }
        let mut held_by_peer = vec![false; self.chunks.len()];
        if !self.origin_only {
            for (p, st) in &self.peers {
                if self.banned.contains_key(p) {
                    continue;
                }
                for &c in missing {
                    held_by_peer[c as usize] |= st.chunks[c as usize];
                }
            }
        }
        let window_end = self.cursor.saturating_add(self.config.stream_window);
        let owned = if everything {
            Vec::new()
        } else {
            self.origin_owners
                .update(interested, self.me, self.chunks.len(), self.salt)
                .to_vec()
        };
        let frontier_end = if shared && !everything && self.config.origin_frontier > 0 {
            // Counted in chunks nobody linked holds, not in positions: chunks above the
            // frontier that came from elsewhere in the swarm do not narrow the window.
            missing
                .iter()
                .copied()
                .filter(|&c| !held_by_peer[c as usize])
                .nth(self.config.origin_frontier as usize)
                .unwrap_or(u32::MAX)
        } else {
            u32::MAX
        };
        let mut wanted: Vec<u32> = missing
            .iter()
            .copied()
            .filter(|&c| !self.in_flight.contains_key(&c) && !held_by_peer[c as usize])
            .filter(|&c| everything || owned.get(c as usize).copied().unwrap_or(false))
            .filter(|&c| c < frontier_end)
            .collect();
        // In order, window first: the origin is the source of last resort for streaming too.
        wanted.sort_by_key(|&c| (c >= window_end, c));
        let limit = if shared {
            self.config.shared_origin_requests.max(1)
        } else {
            self.config.max_origin_requests
        };
        for chunk in wanted {
            if self.origin_in_flight >= limit {
                break;
            }
            self.send(now, Source::Origin, chunk);
        }
    }

    /// Whether the interested set is as complete as it will get soon: every linked
    /// downloading peer has sent its list, or [`Config::membership_wait`] has passed.
    fn membership_known(&self, now: Duration) -> bool {
        let waited = self
            .started
            .is_some_and(|t| now.saturating_sub(t) >= self.config.membership_wait);
        waited
            || self
                .peers
                .iter()
                .filter(|(_, st)| st.downloading)
                .all(|(id, _)| self.heard_interested.contains_key(id))
    }

    /// Safety net: nothing outstanding and nothing arrived for a grace period means
    /// assignments evidently are not being served; fetch regardless of owner.
    fn stalled(&self, now: Duration) -> bool {
        self.in_flight.is_empty()
            && self
                .last_progress
                .is_some_and(|t| now.saturating_sub(t) >= self.config.assignment_grace)
    }

    fn send(&mut self, now: Duration, source: Source, chunk: u32) {
        self.in_flight.entry(chunk).or_default().push((source, now));
        match source {
            Source::Origin => self.origin_in_flight += 1,
            Source::Peer(p) => {
                if let Some(st) = self.peers.get_mut(&p) {
                    st.in_flight += 1;
                }
            }
        }
        self.actions.push(Action::Request { source, chunk });
    }
}

/// Which chunks this node owns by rendezvous hashing over a set of nodes, cached until
/// the set changes: it costs a hash per chunk and node.
#[derive(Debug, Default)]
struct Ownership {
    set: Vec<NodeId>,
    owned: Vec<bool>,
}

impl Ownership {
    fn update(&mut self, set: Vec<NodeId>, me: NodeId, chunks: usize, salt: u64) -> &[bool] {
        if self.set != set || self.owned.len() != chunks {
            self.owned = (0..chunks as u32)
                .map(|c| rendezvous_owner(&set, c, salt) == me)
                .collect();
            self.set = set;
        }
        &self.owned
    }
}

/// A blob's rendezvous salt for [`Scheduler::with_salt`]: the first 8 bytes of its
/// sha256, equal on every node.
pub fn salt_of(digest: &Digest) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Rendezvous (highest random weight) hashing: the node with the highest hash of
/// (node, salt, chunk) owns the chunk. When a node leaves, only its chunks move. The
/// weight is a splitmix64 mix, not a cryptographic hash: it only has to agree between
/// nodes, and every change of the interested set rehashes every chunk for every node
/// (blake3 here was 15 ms per change for a 5 GB blob and 65 nodes).
fn rendezvous_owner(nodes: &[NodeId], chunk: u32, salt: u64) -> NodeId {
    let key = splitmix64(salt.wrapping_add(u64::from(chunk).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    nodes
        .iter()
        .copied()
        .max_by_key(|&n| (splitmix64(n.0 ^ key), n))
        .unwrap_or(NodeId(0))
}

/// The finaliser of splitmix64: a cheap, well-mixed 64-bit permutation.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
