//! One step of the simulated world: schedulers act on their news, uploaders admit
//! waiting requests, the network moves bytes, and messages that have arrived are
//! delivered.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shoal_daemon::swarm::peer_requests_per_download;
use shoal_daemon::swarm::scheduler::{Action, Event, NodeId, Source};
use shoal_proto::ChunkLayout;

use super::network::{allocate, slot_of, Endpoint, Flow, Relays};
use super::node::{self, start_next_layer, Node};
use super::trace::{trace_line, LinkUsage};
use super::uploads::Uploaders;
use super::{chunk_bytes, Gossip, Outcome, Params};

/// Simulated seconds between Ticks.
const TICK: f64 = 0.5;

/// The state of one scenario as simulated time advances.
pub(super) struct World<'p> {
    p: &'p Params,
    layouts: Vec<ChunkLayout>,
    nodes: Vec<Node>,
    /// The downloading nodes, then the warm seed if there is one.
    total_nodes: usize,
    seed_node: Option<usize>,
    index: HashMap<NodeId, usize>,
    flows: Vec<Flow>,
    relays: Relays,
    mail: Mail,
    uploaders: Uploaders,
    /// Uplink capacities by slot (nodes, then the origin); downlinks are `node_rate`.
    caps: Vec<f64>,
    /// Per flow, its rate this step (scratch for [`allocate`], as are the shares).
    rates: Vec<f64>,
    up_share: Vec<f64>,
    down_share: Vec<f64>,
    out: Outcome,
    /// Simulated seconds.
    t: f64,
    next_tick: f64,
    next_gossip: f64,
    next_trace: f64,
}

impl<'p> World<'p> {
    /// The world at the end of the settle.
    pub(super) fn new(p: &'p Params, layouts: Vec<ChunkLayout>) -> World<'p> {
        let total_nodes = p.nodes + usize::from(p.warm);
        let ids: Vec<NodeId> = (0..total_nodes)
            .map(|i| NodeId::from_peer_bytes(&(i as u64 ^ p.seed.rotate_left(17)).to_le_bytes()))
            .collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let seed_node = p.warm.then_some(p.nodes);
        let nodes = node::build(p, &ids, &layouts, seed_node);
        let t = p.settle.as_secs_f64();
        let caps = (0..=total_nodes)
            .map(|i| {
                if i == total_nodes {
                    p.origin_rate
                } else {
                    p.node_rate
                }
            })
            .collect();
        World {
            p,
            uploaders: Uploaders::new(total_nodes, &layouts),
            layouts,
            nodes,
            total_nodes,
            seed_node,
            index,
            flows: Vec::new(),
            relays: Relays::default(),
            mail: Mail {
                latency: p.latency.as_secs_f64(),
                queue: BTreeMap::new(),
                seq: 0,
            },
            caps,
            rates: Vec::new(),
            up_share: vec![0.0; total_nodes + 1],
            down_share: vec![0.0; total_nodes],
            out: Outcome {
                completion: vec![None; p.nodes],
                origin_bytes: 0,
                peer_bytes: 0,
                scheduler_calls: 0,
            },
            t,
            next_tick: t + TICK,
            next_gossip: t,
            next_trace: t,
        }
    }

    /// Whether a downloading node has not finished and there is simulated time left.
    pub(super) fn running(&self) -> bool {
        self.t < self.p.limit.as_secs_f64()
            && self.nodes[..self.p.nodes]
                .iter()
                .any(|n| n.finished_at.is_none())
    }

    pub(super) fn into_outcome(self) -> Outcome {
        self.out
    }

    /// Advances the world by one step.
    pub(super) fn step(&mut self) {
        // 1. Schedulers with news act on it.
        let now = Duration::from_secs_f64(self.t);
        let tick = self.t >= self.next_tick;
        if tick {
            self.next_tick += TICK;
        }
        for i in 0..self.total_nodes {
            for b in 0..self.layouts.len() {
                self.schedule(i, b, now, tick);
            }
            let node = &mut self.nodes[i];
            if i < self.p.nodes && node.finished_at.is_none() && node.done.iter().all(|d| *d) {
                node.finished_at = Some(self.t);
                self.out.completion[i] = Some(self.t);
            }
        }
        if self.p.gossip == Gossip::Global && self.t >= self.next_gossip {
            self.next_gossip += 1.0;
            self.gossip_global();
        }
        // 2. Senders admit waiting requests to free upload slots; refuse the stale ones.
        self.refuse_stale(now);
        // 3. The network moves bytes for one step, at max-min fair rates.
        self.move_bytes();
        self.t += self.p.step.as_secs_f64();
        // 4. Messages that have arrived by now.
        self.mail.deliver(self.t, &mut self.nodes);
    }

    /// Node `i`'s scheduler for layer `b` handles its news (and the Tick), and its
    /// actions take effect.
    fn schedule(&mut self, i: usize, b: usize, now: Duration, tick: bool) {
        let p = self.p;
        let node = &mut self.nodes[i];
        if !node.started[b] {
            // Not linked for this layer yet: it gets a fresh view when it starts.
            node.inbox[b].clear();
            return;
        }
        if node.done[b] || (node.inbox[b].is_empty() && !tick) {
            return;
        }
        let mut events = std::mem::take(&mut node.inbox[b]);
        if tick {
            events.push(Event::Tick);
        }
        let downloading = (0..self.layouts.len())
            .filter(|&l| node.downloads(l))
            .count();
        let Some(s) = node.scheds[b].as_mut() else {
            return;
        };
        s.set_max_peer_requests(
            p.download_peer_requests
                .unwrap_or_else(|| peer_requests_per_download(downloading)),
        );
        self.out.scheduler_calls += 1;
        let actions = s.handle_batch(now, events);
        if p.gossip == Gossip::On {
            let list = s.linked_interested(now);
            if list != node.gossiped[b] {
                for &l in &node.links {
                    let event = Event::Interested {
                        from: node.id,
                        nodes: list.clone(),
                    };
                    self.mail.send(self.t, l, b, event);
                }
                node.gossiped[b] = list;
            }
        }
        for a in actions {
            self.act(i, b, a);
        }
        // Freed request slots go to waiting requests.
        while self.nodes[i].peer_in_flight < p.peer_cap {
            let Some((src, wb, chunk)) = self.nodes[i].waiting.pop_front() else {
                break;
            };
            self.nodes[i].peer_in_flight += 1;
            self.open_flow(Endpoint::Node(src), i, wb, chunk);
        }
    }

    /// Carries out one action of node `i`'s scheduler for layer `b`.
    fn act(&mut self, i: usize, b: usize, action: Action) {
        match action {
            Action::Request { source, chunk } => {
                let src = self.endpoint(source);
                if src != Endpoint::Origin {
                    let node = &mut self.nodes[i];
                    if node.peer_in_flight >= self.p.peer_cap {
                        node.waiting
                            .push_back((slot_of(src, self.total_nodes), b, chunk));
                        return;
                    }
                    node.peer_in_flight += 1;
                }
                self.open_flow(src, i, b, chunk);
            }
            Action::Cancel { source, chunk } => {
                let src = self.endpoint(source);
                let node = &mut self.nodes[i];
                if let Some(pos) = self
                    .flows
                    .iter()
                    .position(|f| f.dst == i && f.blob == b && f.chunk == chunk && f.src == src)
                {
                    self.flows.swap_remove(pos);
                    if src != Endpoint::Origin {
                        node.peer_in_flight -= 1;
                    }
                } else {
                    let slot = slot_of(src, self.total_nodes);
                    node.waiting
                        .retain(|&(s, wb, c)| !(s == slot && wb == b && c == chunk));
                }
            }
            Action::Announce { chunk } => self.announce(i, b, chunk),
            Action::Complete => {
                self.nodes[i].done[b] = true;
                if self.p.client_parallel.is_some() {
                    start_next_layer(&mut self.nodes, i, &self.layouts);
                }
            }
            Action::Abort { reason } => {
                eprintln!("node {i} layer {b} aborted: {reason}");
                self.nodes[i].done[b] = true;
            }
            Action::Ban { .. } => {}
        }
    }

    fn endpoint(&self, source: Source) -> Endpoint {
        match source {
            Source::Origin => Endpoint::Origin,
            Source::Peer(id) => Endpoint::Node(self.index[&id]),
        }
    }

    /// Node `dst` asks `src` for a chunk: the flow starts one latency from now, and a
    /// peer's request waits for an upload slot (the origin admits at once).
    fn open_flow(&mut self, src: Endpoint, dst: usize, blob: usize, chunk: u32) {
        let wait = match src {
            Endpoint::Node(n) => self.uploaders.queue_wait(self.p, n),
            Endpoint::Origin => f64::INFINITY,
        };
        self.flows.push(Flow {
            src,
            dst,
            blob,
            chunk,
            held: self.nodes[dst].held(blob),
            wait,
            queued: false,
            remaining: chunk_bytes(&self.layouts[blob], chunk) as f64,
            starts: self.t + self.mail.latency,
            admitted: src == Endpoint::Origin,
            cap: f64::INFINITY,
        });
    }

    /// Node `i` tells its links it has `chunk` of layer `b`.
    fn announce(&mut self, i: usize, b: usize, chunk: u32) {
        let me = self.nodes[i].id;
        for &l in &self.nodes[i].links {
            self.mail
                .send(self.t, l, b, Event::PeerHave { peer: me, chunk });
        }
    }

    /// `--gossip global`: every downloading node is told the full set of downloaders.
    fn gossip_global(&mut self) {
        for b in 0..self.layouts.len() {
            let global: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| n.downloads(b))
                .map(|n| n.id)
                .collect();
            for (i, node) in self.nodes.iter().enumerate() {
                let Some(&l) = node.links.first().filter(|_| node.downloads(b)) else {
                    continue;
                };
                let event = Event::Interested {
                    from: self.nodes[l].id,
                    nodes: global.clone(),
                };
                self.mail.send(self.t, i, b, event);
            }
        }
    }

    /// Uploaders admit waiting requests; those that waited too long are refused (Busy),
    /// which the requester learns one latency later.
    fn refuse_stale(&mut self, now: Duration) {
        let refused = self
            .uploaders
            .admit(self.p, &self.nodes, &mut self.flows, self.t, now);
        for f in refused {
            let Endpoint::Node(n) = f.src else { continue };
            self.nodes[f.dst].peer_in_flight -= 1;
            let event = Event::RequestFailed {
                source: Source::Peer(self.nodes[n].id),
                chunk: f.chunk,
            };
            self.mail.send(self.t, f.dst, f.blob, event);
        }
    }

    /// Every started flow moves its share of bytes for one step; finished chunks arrive
    /// at their receiver one latency after the step.
    fn move_bytes(&mut self) {
        let p = self.p;
        let (t, dt) = (self.t, p.step.as_secs_f64());
        if p.cut_through {
            for f in &mut self.flows {
                let size = chunk_bytes(&self.layouts[f.blob], f.chunk);
                f.cap = self.relays.cap(f, size as f64, dt);
            }
        }
        allocate(
            &self.flows,
            t,
            &self.caps,
            &mut self.rates,
            &mut self.up_share,
            &mut self.down_share,
            self.total_nodes,
        );
        if let Some(every) = p.trace.filter(|_| t >= self.next_trace) {
            self.next_trace += every;
            let usage = LinkUsage::measure(
                &self.flows,
                &self.rates,
                &self.caps,
                p.node_rate,
                self.seed_node,
                &self.uploaders.served,
            );
            let nodes = &self.nodes[..p.nodes];
            trace_line(t, nodes, &self.flows, &self.out, &self.layouts, &usage);
        }
        let mut k = 0;
        while k < self.flows.len() {
            let f = &mut self.flows[k];
            if !f.admitted || f.starts > t {
                k += 1;
                continue;
            }
            f.remaining -= self.rates[k] * dt;
            if p.cut_through && f.src != Endpoint::Origin {
                let size = chunk_bytes(&self.layouts[f.blob], f.chunk);
                if self.relays.progress(f, size as f64, self.rates[k]) {
                    // First bytes: tell the links now rather than when the chunk is whole.
                    let (dst, blob, chunk) = (f.dst, f.blob, f.chunk);
                    self.announce(dst, blob, chunk);
                }
            }
            let f = &self.flows[k];
            if f.remaining > 0.0 {
                k += 1;
                continue;
            }
            let f = self.flows.swap_remove(k);
            self.rates.swap_remove(k);
            if p.cut_through {
                self.relays.complete(&f);
            }
            let bytes = chunk_bytes(&self.layouts[f.blob], f.chunk);
            let source = match f.src {
                Endpoint::Origin => {
                    self.out.origin_bytes += bytes;
                    Source::Origin
                }
                Endpoint::Node(n) => {
                    self.out.peer_bytes += bytes;
                    self.nodes[f.dst].peer_in_flight -= 1;
                    Source::Peer(self.nodes[n].id)
                }
            };
            let event = Event::ChunkArrived {
                source,
                chunk: f.chunk,
                valid: true,
            };
            self.mail.send(t + dt, f.dst, f.blob, event);
        }
    }
}

/// Messages in flight: each reaches its node's inbox one latency after it is sent.
struct Mail {
    /// Seconds.
    latency: f64,
    /// By (arrival in ns, send order), so messages sent in one step keep their order.
    queue: BTreeMap<(u64, u64), (usize, usize, Event)>,
    seq: u64,
}

impl Mail {
    /// Sends `event` about layer `blob` to node `to` at simulated time `at`.
    fn send(&mut self, at: f64, to: usize, blob: usize, event: Event) {
        self.seq += 1;
        let arrives = ((at + self.latency) * 1e9) as u64;
        self.queue.insert((arrives, self.seq), (to, blob, event));
    }

    /// Moves every message that has arrived by `t` into its node's inbox.
    fn deliver(&mut self, t: f64, nodes: &mut [Node]) {
        let now_ns = (t * 1e9) as u64;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now_ns {
                break;
            }
            let (node, blob, event) = entry.remove();
            nodes[node].inbox[blob].push(event);
        }
    }
}
