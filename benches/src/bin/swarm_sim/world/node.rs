//! The simulated nodes: their per-layer schedulers and mailboxes, the link graph they
//! are joined by, and the client's order of layers.

use std::collections::VecDeque;

use shoal_daemon::swarm::scheduler::{Event, NodeId, Scheduler};
use shoal_proto::ChunkLayout;

use super::{layer_salt, Params};

pub(super) struct Node {
    pub(super) id: NodeId,
    pub(super) links: Vec<usize>,
    /// One scheduler per layer (`None` on the warm seed).
    pub(super) scheds: Vec<Option<Scheduler>>,
    pub(super) inbox: Vec<Vec<Event>>,
    /// Layers the node's client has asked for: only those are downloaded, and only
    /// nodes downloading or holding a layer are linked for it, as providers are.
    pub(super) started: Vec<bool>,
    pub(super) done: Vec<bool>,
    pub(super) finished_at: Option<f64>,
    pub(super) peer_in_flight: usize,
    /// Peer requests over the node-wide cap: (uploader slot, layer, chunk).
    pub(super) waiting: VecDeque<(usize, usize, u32)>,
    /// Per layer, the linked downloaders last told to the links.
    pub(super) gossiped: Vec<Vec<NodeId>>,
}

impl Node {
    /// Whether the node is downloading layer `b` now: its client asked, not yet done.
    pub(super) fn downloads(&self, b: usize) -> bool {
        self.started[b] && !self.done[b]
    }

    /// Whether the node holds chunk `c` of layer `b`: all of a layer it is done with, or
    /// all of the model on the seed (no scheduler).
    pub(super) fn holds(&self, b: usize, c: u32) -> bool {
        match self.scheds[b].as_ref().filter(|_| !self.done[b]) {
            Some(s) => s.has_chunk(c),
            None => true,
        }
    }

    /// Chunks of layer `b` the node has received (what its requests tell uploaders).
    pub(super) fn held(&self, b: usize) -> u32 {
        self.scheds[b].as_ref().map_or(0, |s| s.present())
    }
}

/// The scenario's nodes (the warm seed last, at `seed_node`), linked, each with its
/// first view of its links in its inbox: the state at the end of the settle.
pub(super) fn build(
    p: &Params,
    ids: &[NodeId],
    layouts: &[ChunkLayout],
    seed_node: Option<usize>,
) -> Vec<Node> {
    let mut adjacency = link_graph(p, ids.len(), seed_node);
    let mut nodes: Vec<Node> = (0..ids.len())
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
    nodes
}

/// Each node links to up to `links` random others and accepts those linking to it;
/// every node finds the seed (a provider of everything) when there is one.
fn link_graph(p: &Params, total_nodes: usize, seed_node: Option<usize>) -> Vec<Vec<usize>> {
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
    adjacency
}

/// The client asks node `i` for its next layer: it links to the nodes that hold or
/// download that layer (their state now), and those still downloading it learn of `i`.
/// Messages take effect on the next step, close enough to the one-latency delay.
pub(super) fn start_next_layer(nodes: &mut [Node], i: usize, layouts: &[ChunkLayout]) {
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
