//! The simulated world: every node runs the daemon's real
//! [`Scheduler`](shoal_daemon::swarm::scheduler::Scheduler) per blob, on a flow-level
//! network model advanced in fixed time steps.
//!
//! Layout: [`run`] here; `node` builds the nodes and their link graph; `step` advances
//! the world one step (schedulers, upload slots, bytes, messages); `network` shares the
//! links' capacity among flows; `uploads` keeps each node's upload slots; `trace`
//! prints `--trace` lines.
//!
//! Network model. Every node has an uplink and a downlink of `node_rate`, the origin an
//! uplink of `origin_rate`; a chunk transfer is a flow that starts one `latency` after
//! it is requested and gets, each step, the smaller of its sender's and its receiver's
//! equal share (no redistribution of unused share, so rates are slightly pessimistic).
//! Announcements and arrivals reach the other side one `latency` later. What the daemon's
//! driver and the transfer endpoint add around the scheduler is modelled too: the time
//! to find and link providers and the cold start's settle before a download starts,
//! links to at most `links` random providers per node (incoming links accepted, as in
//! the driver), the node-wide cap of `peer_cap` peer
//! requests in flight (excess requests wait) and each download's share of it (the
//! driver's `peer_requests_per_download`), `upload_slots` uploads per node with
//! requests refused (Busy) after waiting a little more than the interval at which the
//! uploader's slots free (or a fixed `upload_queue_wait`), a free slot going to the
//! waiting request for the chunk the node has uploaded least, then to the requester
//! furthest behind (`upload_order`), each requester taking at most its share of an
//! uploader's slots (`requester_share`: the slots over the requesters running or
//! waiting there), and a Tick every 500 ms (the driver ticks every 200 ms; ticks only
//! drive timeouts and grace periods).
//! Rates are approximately max-min fair (see [`allocate`](network::allocate)). With
//! `cut_through` (an exploration; the daemon does not do it) a node announces a chunk
//! from a peer at its first bytes and relays it no faster than it arrives
//! ([`Relays`](network::Relays)). Every layer starts at once unless `client_parallel`
//! gives the client's order (containerd pulls 3 blobs at a time; a layer a node has not
//! started yet is not linked for, as the daemon links only to a blob's providers). Not modelled: CPU (the emulation's 2 vCPUs saturate at 8
//! nodes), TCP/QUIC congestion dynamics, the DHT's discovery delay, manifest and config
//! fetches.

use std::time::Duration;

use shoal_daemon::swarm::scheduler::Config;
use shoal_proto::ChunkLayout;

mod network;
mod node;
mod step;
mod trace;
mod uploads;

use node::Node;
use step::World;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    /// Bytes per layer.
    pub layer_sizes: Vec<u64>,
    pub chunk_size: u32,
    /// Bytes per second, each way, per node.
    pub node_rate: f64,
    /// Bytes per second out of the origin.
    pub origin_rate: f64,
    pub latency: Duration,
    /// One extra node holds everything from the start (the warm scenario).
    pub warm: bool,
    pub links: usize,
    pub peer_cap: usize,
    /// Chunk uploads a node serves at once (`--max-uploads`); more requests wait.
    pub upload_slots: usize,
    /// How long a request waits for an upload slot before it is refused (Busy); `None`:
    /// the daemon's rule, which follows the interval at which the uploader's slots are
    /// handed to waiting requests (`shoal_daemon::net::transfer::QueueWait`).
    pub upload_queue_wait: Option<Duration>,
    pub upload_order: UploadOrder,
    /// A requester takes at most its share of an uploader's slots: the slots over the
    /// requesters running or waiting there (the daemon's rule since session 17).
    pub requester_share: bool,
    pub step: Duration,
    /// When every node gets its first view (see `startup` in `main.rs`).
    pub settle: Duration,
    pub seed: u64,
    pub config: Config,
    /// Each download's peer requests in flight, fixed (exploration); `None`: the
    /// daemon's share of the node-wide cap over the node's unfinished layers.
    pub download_peer_requests: Option<usize>,
    /// Give up after this much simulated time.
    pub limit: Duration,
    /// How nodes learn of downloaders beyond their links (`Event::Interested`).
    pub gossip: Gossip,
    /// Print a line of the swarm's state to stderr this often (simulated seconds).
    pub trace: Option<f64>,
    /// Layers each node pulls at once, in order, the next when one completes (a client
    /// such as containerd pulls 3 at a time); `None`: every layer from the start.
    pub client_parallel: Option<usize>,
    /// Relay chunks from peers while they arrive (`--cut-through`, exploration).
    pub cut_through: bool,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Seconds until each downloading node had every layer (`None`: did not finish).
    pub completion: Vec<Option<f64>>,
    pub origin_bytes: u64,
    pub peer_bytes: u64,
    /// Scheduler calls made (a measure of the simulation's work).
    pub scheduler_calls: u64,
}

/// How the interested set spreads (`--gossip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Gossip {
    /// As the daemon does: after scheduling, a node whose linked downloaders changed
    /// tells its links (`Message::Interested`): two hops of view.
    On,
    /// Each node knows only its own links.
    Off,
    /// Every second, every node is told the full set of downloading nodes: the upper
    /// bound any membership protocol could reach.
    Global,
}

/// Which waiting request an uploader admits to a free slot (`--upload-order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UploadOrder {
    /// First come, first served (the daemon before session 10).
    Fifo,
    /// The request for the chunk this node has uploaded the fewest times, then first
    /// come (the daemon before session 15).
    LeastServed,
    /// As `least-served` on a node that holds the whole model (a seed), FIFO elsewhere.
    SeedLeastServed,
    /// As `least-served`, ties going to the requester that held the fewest chunks of the
    /// blob when it asked, then first come (the daemon's `net::transfer` upload slots;
    /// its `Request` carries the count).
    LeastServedThenBehind,
}

/// Runs one scenario.
pub fn run(p: &Params) -> Outcome {
    let layouts = p
        .layer_sizes
        .iter()
        .map(|&s| ChunkLayout::for_blob(s, p.chunk_size))
        .collect();
    let mut world = World::new(p, layouts);
    while world.running() {
        world.step();
    }
    world.into_outcome()
}

/// Bytes in `chunk` of a layer (0 past its end).
fn chunk_bytes(layout: &ChunkLayout, chunk: u32) -> u64 {
    layout.range(chunk).map_or(0, |r| r.end - r.start)
}

/// A layer's rendezvous salt (the daemon uses the digest's first bytes).
fn layer_salt(seed: u64, layer: usize) -> u64 {
    (seed ^ 0x5EED).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ layer as u64
}
