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
//!    nodes spread over different chunks. A shared seed's chunks go by index instead in
//!    a small swarm ([`Config::seeds_in_order_up_to`]).
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
//!    outstanding requests; the first copy wins and the others are cancelled. A seed
//!    shared by rendezvous is left out: its uplink is what a warm start waits for.
//!
//! Peers are scored by observed throughput (EWMA). Faster peers are asked first and get
//! deeper pipelines. A request that times out is retried elsewhere and halves the
//! peer's score. A chunk that fails verification bans its sender for [`Config::ban_period`].
//!
//! Layout: this file holds the state and the public API; `events.rs` applies events,
//! `policy.rs` decides what to request next, `membership.rs` keeps the interested set,
//! `rendezvous.rs` assigns chunks to owners; `tests/` drives them with virtual time.

mod events;
mod membership;
mod policy;
mod rendezvous;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use shoal_proto::ChunkLayout;

#[cfg(test)]
use rendezvous::rendezvous_owner;
pub use rendezvous::salt_of;
use rendezvous::Ownership;

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
    /// Outstanding peer requests of this download, over all its peers. The driver caps
    /// peer requests node-wide too, and a request the scheduler sends past that cap
    /// waits there for a slot with its peer and chunk already chosen.
    pub max_peer_requests: usize,
    /// Outstanding origin requests of this node when it downloads alone.
    pub max_origin_requests: usize,
    /// Outstanding origin requests when other nodes download the blob too (a cold
    /// start): the origin's uplink is shared, so each range is slow, and fewer at once
    /// means each finishes sooner and reaches the other nodes sooner (simulated: 8
    /// nodes 1.71x -> 1.44x T_limit going from 2 to 1, with 4 MiB chunks). The daemon
    /// sets 1 MiB worth (`swarm::tuning::shared_origin_requests`): two 512 KiB ranges.
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
    /// Live interested nodes (gossip included) from which the origin frontier doubles.
    /// The more nodes, the longer a chunk takes from its owner to the rest of an owner's
    /// neighbourhood, and the frontier waits for that: at a thousand nodes a frontier of
    /// 4 per blob kept 2-6 origin ranges running, the origin 65-72 % busy.
    /// `usize::MAX`: never.
    pub large_swarm: usize,
    /// How long a peer that sent bad bytes is ignored.
    pub ban_period: Duration,
    /// Chunks after the in-order cursor that take precedence over rarest-first.
    pub stream_window: u32,
    /// Linked downloaders (this node included) up to which an owner takes its share of
    /// a shared seed's chunks lowest index first, instead of rarest first in the
    /// per-node hash order. The local client reads a blob only up to its in-order
    /// prefix, so a warm swarm that fills blobs in hash order leaves most of each blob
    /// to be read, and sha256-hashed, in its last seconds. Emulated, 7 nodes pulling
    /// from one seed on one 2-core machine: 21 s in, the clients had read 0.43-0.56 of
    /// the model against 0.17-0.24, and the last node finished at 1.13-1.16x T_limit
    /// (median 1.145) against 1.17-1.21x (median 1.19; benches/RESULTS.md, session 24).
    /// Simulated, where reading costs nothing, index order at every size costs larger
    /// swarms: 33 nodes 1.15x -> 1.17x, 100 nodes 1.20x -> 1.22x, 200 nodes 1.19x ->
    /// 1.23x; up to 17 nodes it is within 0.02 either way.
    pub seeds_in_order_up_to: usize,
    /// Sources per chunk at most in endgame.
    pub endgame_sources: usize,
    /// Origin failures in a row before the download is abandoned.
    pub max_origin_failures: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_requests_per_peer: 4,
            max_peer_requests: usize::MAX,
            max_origin_requests: 4,
            shared_origin_requests: 1,
            request_timeout: Duration::from_secs(15),
            assignment_grace: Duration::from_secs(5),
            membership_wait: Duration::from_secs(1),
            origin_frontier: 0,
            large_swarm: usize::MAX,
            ban_period: Duration::from_secs(600),
            stream_window: 2,
            seeds_in_order_up_to: 16,
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
    /// How many of `chunks` are set: a peer's completeness is asked on every `Have`,
    /// and counting a 5 GB blob's bitfield each time was most of a simulation's time.
    held: u32,
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
    fn complete(&self) -> bool {
        self.held as usize == self.chunks.len()
    }

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
    /// Per chunk, how many entries of `peers` hold it, kept up to date by every event
    /// that changes a peer's chunks: recounting peers × chunks on every schedule was
    /// the simulator's largest cost with thousands of chunks.
    availability: Vec<u32>,
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
            availability: vec![0; n],
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

    /// Changes [`Config::max_peer_requests`]: the driver shares the node-wide cap out
    /// over the downloads running at the time. Requests already sent stay.
    pub fn set_max_peer_requests(&mut self, n: usize) {
        self.config.max_peer_requests = n.max(1);
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
        self.peers.get(&peer).map(PeerState::complete)
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
}
