//! The simulated world: every node runs the daemon's real [`Scheduler`] per blob, on a
//! flow-level network model advanced in fixed time steps.
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
//! Rates are approximately max-min fair (see [`allocate`]). With `cut_through` (an
//! exploration; the daemon does not do it) a node announces a chunk from a peer at its
//! first bytes and relays it no faster than it arrives ([`Relays`]). Every layer starts at once
//! unless `client_parallel` gives the client's order (containerd pulls 3 blobs at a
//! time; a layer a node has not started yet is not linked for, as the daemon links only
//! to a blob's providers). Not modelled: CPU (the emulation's 2 vCPUs saturate at 8
//! nodes), TCP/QUIC congestion dynamics, the DHT's discovery delay, manifest and config
//! fetches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use shoal_daemon::swarm::peer_requests_per_download;
use shoal_daemon::swarm::scheduler::{Action, Config, Event, NodeId, Scheduler, Source};
use shoal_proto::ChunkLayout;

mod network;
mod trace;
mod uploads;

use network::{allocate, slot_of, Endpoint, Flow, Relays};
use trace::{trace_line, LinkUsage};
use uploads::Uploaders;

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

struct Node {
    id: NodeId,
    links: Vec<usize>,
    /// One scheduler per layer (`None` on the warm seed).
    scheds: Vec<Option<Scheduler>>,
    inbox: Vec<Vec<Event>>,
    /// Layers the node's client has asked for: only those are downloaded, and only
    /// nodes downloading or holding a layer are linked for it, as providers are.
    started: Vec<bool>,
    done: Vec<bool>,
    finished_at: Option<f64>,
    peer_in_flight: usize,
    waiting: VecDeque<(usize, usize, u32)>,
    /// Per layer, the linked downloaders last told to the links.
    gossiped: Vec<Vec<NodeId>>,
}

impl Node {
    /// Whether the node is downloading layer `b` now: its client asked, not yet done.
    fn downloads(&self, b: usize) -> bool {
        self.started[b] && !self.done[b]
    }

    /// Whether the node holds chunk `c` of layer `b`: all of a layer it is done with, or
    /// all of the model on the seed (no scheduler).
    fn holds(&self, b: usize, c: u32) -> bool {
        match self.scheds[b].as_ref().filter(|_| !self.done[b]) {
            Some(s) => s.has_chunk(c),
            None => true,
        }
    }

    /// Chunks of layer `b` the node has received (what its requests tell uploaders).
    fn held(&self, b: usize) -> u32 {
        self.scheds[b].as_ref().map_or(0, |s| s.present())
    }
}

/// Runs one scenario.
pub fn run(p: &Params) -> Outcome {
    let total_nodes = p.nodes + usize::from(p.warm);
    let ids: Vec<NodeId> = (0..total_nodes)
        .map(|i| NodeId::from_peer_bytes(&(i as u64 ^ p.seed.rotate_left(17)).to_le_bytes()))
        .collect();
    let index: HashMap<NodeId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let seed_node = p.warm.then_some(p.nodes);
    let layouts: Vec<ChunkLayout> = p
        .layer_sizes
        .iter()
        .map(|&s| ChunkLayout::for_blob(s, p.chunk_size))
        .collect();

    // Links: each node links to up to `links` random others and accepts those linking to
    // it; every node finds the seed (a provider of everything) when there is one.
    let mut rng = p.seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut adjacency: Vec<Vec<usize>> = vec![Vec::new(); total_nodes];
    for a in 0..p.nodes {
        let want = p.links.min(p.nodes - 1);
        let mut picked = 0;
        let mut tries = 0;
        while picked < want && tries < want * 20 {
            tries += 1;
            let b = (next() % p.nodes as u64) as usize;
            if b != a && !adjacency[a].contains(&b) {
                adjacency[a].push(b);
                adjacency[b].push(a);
                picked += 1;
            }
        }
        if let Some(s) = seed_node {
            adjacency[a].push(s);
            adjacency[s].push(a);
        }
    }

    let mut nodes: Vec<Node> = (0..total_nodes)
        .map(|i| Node {
            id: ids[i],
            links: std::mem::take(&mut adjacency[i]),
            scheds: layouts
                .iter()
                .enumerate()
                .map(|(layer, l)| {
                    (Some(i) != seed_node).then(|| {
                        Scheduler::new(ids[i], *l, false, p.config.clone())
                            .with_salt(layer_salt(p.seed, layer))
                    })
                })
                .collect(),
            inbox: vec![Vec::new(); layouts.len()],
            started: (0..layouts.len())
                .map(|b| Some(i) == seed_node || p.client_parallel.is_none_or(|n| b < n))
                .collect(),
            done: vec![Some(i) == seed_node; layouts.len()],
            finished_at: None,
            peer_in_flight: 0,
            waiting: VecDeque::new(),
            gossiped: vec![Vec::new(); layouts.len()],
        })
        .collect();

    // Everyone's first view, at the end of the settle: every link, with what it holds.
    for i in 0..p.nodes {
        for (b, layout) in layouts.iter().enumerate() {
            if !nodes[i].started[b] {
                continue;
            }
            let count = layout.count() as usize;
            let events: Vec<Event> = nodes[i]
                .links
                .iter()
                .filter(|&&l| nodes[l].started[b])
                .map(|&l| Event::PeerBitfield {
                    peer: ids[l],
                    chunks: vec![Some(l) == seed_node; count],
                    downloading: Some(l) != seed_node,
                })
                .collect();
            nodes[i].inbox[b] = events;
        }
    }

    let mut flows: Vec<Flow> = Vec::new();
    let mut relays = Relays::default();
    let mut delayed: BTreeMap<(u64, u64), (usize, usize, Event)> = BTreeMap::new();
    let mut seq = 0u64;
    let lat = p.latency.as_secs_f64();
    let dt = p.step.as_secs_f64();
    let mut out = Outcome {
        completion: vec![None; p.nodes],
        origin_bytes: 0,
        peer_bytes: 0,
        scheduler_calls: 0,
    };
    let mut t = p.settle.as_secs_f64();
    let mut next_tick = t + 0.5;
    let mut next_gossip = t;
    // Uplink capacities by slot (nodes, then the origin); downlinks are node_rate.
    let caps: Vec<f64> = (0..=total_nodes)
        .map(|i| {
            if i == total_nodes {
                p.origin_rate
            } else {
                p.node_rate
            }
        })
        .collect();
    let mut rates: Vec<f64> = Vec::new();
    let mut up_share = vec![0.0; total_nodes + 1];
    let mut down_share = vec![0.0; total_nodes];
    let slot = |e: Endpoint| slot_of(e, total_nodes);
    let mut next_trace = t;
    let mut uploaders = Uploaders::new(total_nodes, &layouts);

    while t < p.limit.as_secs_f64() && nodes[..p.nodes].iter().any(|n| n.finished_at.is_none()) {
        // 1. Schedulers with news act on it.
        let now = Duration::from_secs_f64(t);
        let tick = t >= next_tick;
        if tick {
            next_tick += 0.5;
        }
        // Indexes, not iterators: acting on node i's actions touches other nodes too.
        #[allow(clippy::needless_range_loop)]
        for i in 0..total_nodes {
            for b in 0..layouts.len() {
                if !nodes[i].started[b] {
                    // Not linked for this layer yet: it gets a fresh view when it starts.
                    nodes[i].inbox[b].clear();
                    continue;
                }
                if nodes[i].done[b] || (nodes[i].inbox[b].is_empty() && !tick) {
                    continue;
                }
                let mut events = std::mem::take(&mut nodes[i].inbox[b]);
                if tick {
                    events.push(Event::Tick);
                }
                let downloading = (0..layouts.len())
                    .filter(|&l| nodes[i].downloads(l))
                    .count();
                let Some(s) = nodes[i].scheds[b].as_mut() else {
                    continue;
                };
                s.set_max_peer_requests(
                    p.download_peer_requests
                        .unwrap_or_else(|| peer_requests_per_download(downloading)),
                );
                out.scheduler_calls += 1;
                let actions = s.handle_batch(now, events);
                if p.gossip == Gossip::On {
                    let list = s.linked_interested(now);
                    if list != nodes[i].gossiped[b] {
                        let at = ((t + lat) * 1e9) as u64;
                        for &l in &nodes[i].links {
                            seq += 1;
                            let event = Event::Interested {
                                from: nodes[i].id,
                                nodes: list.clone(),
                            };
                            delayed.insert((at, seq), (l, b, event));
                        }
                        nodes[i].gossiped[b] = list;
                    }
                }
                for a in actions {
                    match a {
                        Action::Request { source, chunk } => {
                            let src = match source {
                                Source::Origin => Endpoint::Origin,
                                Source::Peer(id) => Endpoint::Node(index[&id]),
                            };
                            if src != Endpoint::Origin && nodes[i].peer_in_flight >= p.peer_cap {
                                nodes[i].waiting.push_back((slot(src), b, chunk));
                                continue;
                            }
                            if src != Endpoint::Origin {
                                nodes[i].peer_in_flight += 1;
                            }
                            let bytes = chunk_bytes(&layouts[b], chunk);
                            let wait = match src {
                                Endpoint::Node(n) => uploaders.queue_wait(p, n),
                                Endpoint::Origin => f64::INFINITY,
                            };
                            flows.push(Flow {
                                src,
                                dst: i,
                                blob: b,
                                chunk,
                                held: nodes[i].held(b),
                                wait,
                                queued: false,
                                remaining: bytes as f64,
                                starts: t + lat,
                                admitted: src == Endpoint::Origin,
                                cap: f64::INFINITY,
                            });
                        }
                        Action::Cancel { source, chunk } => {
                            let src = match source {
                                Source::Origin => Endpoint::Origin,
                                Source::Peer(id) => Endpoint::Node(index[&id]),
                            };
                            if let Some(pos) = flows.iter().position(|f| {
                                f.dst == i && f.blob == b && f.chunk == chunk && f.src == src
                            }) {
                                flows.swap_remove(pos);
                                if src != Endpoint::Origin {
                                    nodes[i].peer_in_flight -= 1;
                                }
                            } else {
                                nodes[i].waiting.retain(|&(s, wb, c)| {
                                    !(s == slot(src) && wb == b && c == chunk)
                                });
                            }
                        }
                        Action::Announce { chunk } => {
                            let me = nodes[i].id;
                            for &l in &nodes[i].links {
                                seq += 1;
                                let at = ((t + lat) * 1e9) as u64;
                                delayed
                                    .insert((at, seq), (l, b, Event::PeerHave { peer: me, chunk }));
                            }
                        }
                        Action::Complete => {
                            nodes[i].done[b] = true;
                            if p.client_parallel.is_some() {
                                start_next_layer(&mut nodes, i, &layouts);
                            }
                        }
                        Action::Abort { reason } => {
                            eprintln!("node {i} layer {b} aborted: {reason}");
                            nodes[i].done[b] = true;
                        }
                        Action::Ban { .. } => {}
                    }
                }
                // Freed request slots go to waiting requests.
                while nodes[i].peer_in_flight < p.peer_cap {
                    let Some((src, wb, chunk)) = nodes[i].waiting.pop_front() else {
                        break;
                    };
                    nodes[i].peer_in_flight += 1;
                    let bytes = chunk_bytes(&layouts[wb], chunk);
                    flows.push(Flow {
                        src: Endpoint::Node(src),
                        dst: i,
                        blob: wb,
                        chunk,
                        held: nodes[i].held(wb),
                        wait: uploaders.queue_wait(p, src),
                        queued: false,
                        remaining: bytes as f64,
                        starts: t + lat,
                        admitted: false,
                        cap: f64::INFINITY,
                    });
                }
            }
            if i < p.nodes && nodes[i].finished_at.is_none() && nodes[i].done.iter().all(|d| *d) {
                nodes[i].finished_at = Some(t);
                out.completion[i] = Some(t);
            }
        }

        if p.gossip == Gossip::Global && t >= next_gossip {
            next_gossip += 1.0;
            for b in 0..layouts.len() {
                let global: Vec<NodeId> = nodes
                    .iter()
                    .filter(|n| n.downloads(b))
                    .map(|n| n.id)
                    .collect();
                for (i, node) in nodes.iter().enumerate() {
                    let Some(&l) = node.links.first().filter(|_| node.downloads(b)) else {
                        continue;
                    };
                    seq += 1;
                    let at = ((t + lat) * 1e9) as u64;
                    let event = Event::Interested {
                        from: nodes[l].id,
                        nodes: global.clone(),
                    };
                    delayed.insert((at, seq), (i, b, event));
                }
            }
        }
        // 2. Senders admit waiting requests to free upload slots; refuse the stale ones.
        for f in uploaders.admit(p, &nodes, &mut flows, t, now) {
            let Endpoint::Node(n) = f.src else { continue };
            nodes[f.dst].peer_in_flight -= 1;
            seq += 1;
            let at = ((t + lat) * 1e9) as u64;
            let source = Source::Peer(nodes[n].id);
            delayed.insert(
                (at, seq),
                (
                    f.dst,
                    f.blob,
                    Event::RequestFailed {
                        source,
                        chunk: f.chunk,
                    },
                ),
            );
        }
        // 3. The network moves bytes for one step, at max-min fair rates.
        if p.cut_through {
            for f in &mut flows {
                let size = chunk_bytes(&layouts[f.blob], f.chunk);
                f.cap = relays.cap(f, size as f64, dt);
            }
        }
        allocate(
            &flows,
            t,
            &caps,
            &mut rates,
            &mut up_share,
            &mut down_share,
            total_nodes,
        );
        if let Some(every) = p.trace.filter(|_| t >= next_trace) {
            next_trace += every;
            let usage = LinkUsage::measure(
                &flows,
                &rates,
                &caps,
                p.node_rate,
                seed_node,
                &uploaders.served,
            );
            trace_line(t, &nodes[..p.nodes], &flows, &out, &layouts, &usage);
        }
        let mut k = 0;
        while k < flows.len() {
            let f = &mut flows[k];
            if !f.admitted || f.starts > t {
                k += 1;
                continue;
            }
            f.remaining -= rates[k] * dt;
            if p.cut_through && f.src != Endpoint::Origin {
                let size = chunk_bytes(&layouts[f.blob], f.chunk);
                if relays.progress(f, size as f64, rates[k]) {
                    // First bytes: tell the links now rather than when the chunk is whole.
                    let me = nodes[f.dst].id;
                    for &l in &nodes[f.dst].links {
                        seq += 1;
                        let at = ((t + lat) * 1e9) as u64;
                        let event = Event::PeerHave {
                            peer: me,
                            chunk: f.chunk,
                        };
                        delayed.insert((at, seq), (l, f.blob, event));
                    }
                }
            }
            if f.remaining > 0.0 {
                k += 1;
                continue;
            }
            let f = flows.swap_remove(k);
            rates.swap_remove(k);
            if p.cut_through {
                relays.complete(&f);
            }
            let bytes = chunk_bytes(&layouts[f.blob], f.chunk);
            let source = match f.src {
                Endpoint::Origin => {
                    out.origin_bytes += bytes;
                    Source::Origin
                }
                Endpoint::Node(n) => {
                    out.peer_bytes += bytes;
                    nodes[f.dst].peer_in_flight -= 1;
                    Source::Peer(nodes[n].id)
                }
            };
            seq += 1;
            let at = ((t + dt + lat) * 1e9) as u64;
            delayed.insert(
                (at, seq),
                (
                    f.dst,
                    f.blob,
                    Event::ChunkArrived {
                        source,
                        chunk: f.chunk,
                        valid: true,
                    },
                ),
            );
        }
        t += dt;

        // 4. Messages that have arrived by now.
        let now_ns = (t * 1e9) as u64;
        while let Some(entry) = delayed.first_entry() {
            if entry.key().0 > now_ns {
                break;
            }
            let (node, blob, event) = entry.remove();
            nodes[node].inbox[blob].push(event);
        }
    }
    out
}

/// The client asks node `i` for its next layer: it links to the nodes that hold or
/// download that layer (their state now), and those still downloading it learn of `i`.
/// Messages take effect on the next step, close enough to the one-latency delay.
fn start_next_layer(nodes: &mut [Node], i: usize, layouts: &[ChunkLayout]) {
    let Some(b) = (0..layouts.len()).find(|&b| !nodes[i].started[b]) else {
        return;
    };
    nodes[i].started[b] = true;
    let count = layouts[b].count() as usize;
    let me = nodes[i].id;
    let links: Vec<usize> = nodes[i]
        .links
        .iter()
        .copied()
        .filter(|&l| nodes[l].started[b])
        .collect();
    let mut view = Vec::new();
    for l in links {
        let held: Vec<bool> = (0..count as u32).map(|c| nodes[l].holds(b, c)).collect();
        view.push(Event::PeerBitfield {
            peer: nodes[l].id,
            chunks: held,
            downloading: !nodes[l].done[b],
        });
        if !nodes[l].done[b] {
            nodes[l].inbox[b].push(Event::PeerBitfield {
                peer: me,
                chunks: vec![false; count],
                downloading: true,
            });
        }
    }
    nodes[i].inbox[b] = view;
}

/// Bytes in `chunk` of a layer (0 past its end).
fn chunk_bytes(layout: &ChunkLayout, chunk: u32) -> u64 {
    layout.range(chunk).map_or(0, |r| r.end - r.start)
}

/// A layer's rendezvous salt (the daemon uses the digest's first bytes).
fn layer_salt(seed: u64, layer: usize) -> u64 {
    (seed ^ 0x5EED).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ layer as u64
}
