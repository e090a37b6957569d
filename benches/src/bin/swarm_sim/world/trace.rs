//! `--trace`: one line of the swarm's state every so many simulated seconds.

use shoal_daemon::swarm::scheduler::Scheduler;
use shoal_proto::ChunkLayout;

use super::network::{slot_of, Endpoint, Flow};
use super::{Node, Outcome};

/// How full the links are at one step, for `--trace`: shares of capacity.
pub(super) struct LinkUsage {
    origin_up: f64,
    /// The warm scenario's seed.
    seed_up: Option<f64>,
    /// Share of the model's chunks the seed has sent at least once.
    seed_sent: Option<f64>,
    /// Share of the model's chunks before the first one the seed has not sent, per layer.
    seed_sent_prefix: Option<f64>,
    /// Uploads the seed began of chunks it had sent before.
    seed_repeats: Option<u32>,
    /// Mean over the downloading nodes.
    nodes_up: f64,
    nodes_down: f64,
}

impl LinkUsage {
    pub(super) fn measure(
        flows: &[Flow],
        rates: &[f64],
        caps: &[f64],
        node_rate: f64,
        seed_node: Option<usize>,
        served: &[Vec<Vec<u32>>],
    ) -> LinkUsage {
        let total_nodes = caps.len() - 1;
        let mut up = vec![0.0; caps.len()];
        let mut down = vec![0.0; total_nodes];
        for (f, r) in flows.iter().zip(rates) {
            up[slot_of(f.src, total_nodes)] += r;
            down[f.dst] += r;
        }
        let downloaders: Vec<usize> = (0..total_nodes).filter(|&i| Some(i) != seed_node).collect();
        let mean = |v: &[f64]| {
            downloaders.iter().map(|&i| v[i]).sum::<f64>()
                / (downloaders.len().max(1) as f64 * node_rate)
        };
        LinkUsage {
            origin_up: up[total_nodes] / caps[total_nodes],
            seed_up: seed_node.map(|s| up[s] / caps[s]),
            seed_sent: seed_node.map(|s| {
                let sent = served[s].iter().flatten().filter(|c| **c > 0).count();
                sent as f64 / served[s].iter().map(Vec::len).sum::<usize>().max(1) as f64
            }),
            seed_sent_prefix: seed_node.map(|s| {
                let prefix: usize = served[s]
                    .iter()
                    .map(|layer| layer.iter().take_while(|c| **c > 0).count())
                    .sum();
                prefix as f64 / served[s].iter().map(Vec::len).sum::<usize>().max(1) as f64
            }),
            seed_repeats: seed_node.map(|s| {
                served[s]
                    .iter()
                    .flatten()
                    .map(|c| c.saturating_sub(1))
                    .sum()
            }),
            nodes_up: mean(&up),
            nodes_down: mean(&down),
        }
    }
}

/// One line of `--trace`: how far the swarm is and where its requests are.
pub(super) fn trace_line(
    t: f64,
    nodes: &[Node],
    flows: &[Flow],
    out: &Outcome,
    layouts: &[ChunkLayout],
    usage: &LinkUsage,
) {
    let model: u64 = layouts.iter().map(|l| l.size).sum();
    let chunks: usize = layouts.iter().map(|l| l.count() as usize).sum();
    let held = chunks_counted(nodes, layouts, Scheduler::present);
    // What a local client can already stream: the chunks before each download's
    // in-order cursor.
    let in_order = chunks_counted(nodes, layouts, Scheduler::cursor);
    let origin_flows = flows.iter().filter(|f| f.src == Endpoint::Origin).count();
    let mut origin_receivers: Vec<usize> = flows
        .iter()
        .filter(|f| f.src == Endpoint::Origin)
        .map(|f| f.dst)
        .collect();
    origin_receivers.sort_unstable();
    origin_receivers.dedup();
    let peer_active = flows
        .iter()
        .filter(|f| f.src != Endpoint::Origin && f.admitted)
        .count();
    let peer_queued = flows
        .iter()
        .filter(|f| f.src != Endpoint::Origin && !f.admitted)
        .count();
    let mut uploaders: Vec<Endpoint> = flows
        .iter()
        .filter(|f| f.src != Endpoint::Origin && f.admitted)
        .map(|f| f.src)
        .collect();
    uploaders.sort_unstable_by_key(|e| slot_of(*e, nodes.len()));
    uploaders.dedup();
    let stalled_uploaders = (0..nodes.len())
        .filter(|&i| {
            uploaders
                .binary_search_by_key(&i, |e| slot_of(*e, nodes.len()))
                .is_err()
        })
        .filter(|&i| {
            nodes[i]
                .links
                .iter()
                .any(|&l| lacks_a_chunk_of(nodes, layouts, l, i))
        })
        .count();
    let idle = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| n.finished_at.is_none() && !flows.iter().any(|f| f.dst == *i))
        .count();
    let seed_up = usage
        .seed_up
        .map_or(String::new(), |u| format!("  seed up {:3.0}%", 100.0 * u));
    let seed_up = match usage.seed_sent {
        Some(sent) => format!(
            "{seed_up} (sent {:5.1}% of chunks, {:5.1}% in order, {} repeats)",
            100.0 * sent,
            100.0 * usage.seed_sent_prefix.unwrap_or(0.0),
            usage.seed_repeats.unwrap_or(0)
        ),
        None => seed_up,
    };
    eprintln!(
        "t {t:7.1}  done {:4}/{}  held {:5.1}% (in order {:5.1}%)  origin {:6.3}x  origin flows {:4} (to {:4} nodes)  peer flows {:5} + {:5} queued  idle nodes {:4}  uploading nodes {:4} (not uploading with chunks a link lacks: {:4})  use: origin {:3.0}%{seed_up}  nodes up {:3.0}% down {:3.0}%",
        nodes.iter().filter(|n| n.finished_at.is_some()).count(),
        nodes.len(),
        100.0 * held as f64 / (chunks * nodes.len()).max(1) as f64,
        100.0 * in_order as f64 / (chunks * nodes.len()).max(1) as f64,
        out.origin_bytes as f64 / model.max(1) as f64,
        origin_flows,
        origin_receivers.len(),
        peer_active,
        peer_queued,
        idle,
        uploaders.len(),
        stalled_uploaders,
        100.0 * usage.origin_up,
        100.0 * usage.nodes_up,
        100.0 * usage.nodes_down,
    );
}

/// Chunks summed over every node's downloads: `count` of each running one, all of a
/// finished one (or the seed's).
fn chunks_counted(
    nodes: &[Node],
    layouts: &[ChunkLayout],
    count: impl Fn(&Scheduler) -> u32,
) -> usize {
    nodes
        .iter()
        .map(|n| {
            n.scheds
                .iter()
                .zip(&n.done)
                .zip(layouts)
                .map(|((s, done), l)| match s {
                    Some(s) if !done => count(s) as usize,
                    _ => l.count() as usize,
                })
                .sum::<usize>()
        })
        .sum()
}

/// Whether node `l` still needs a chunk that node `i` holds: an uploader with such a
/// link and no upload running is capacity the requesters leave unused.
fn lacks_a_chunk_of(nodes: &[Node], layouts: &[ChunkLayout], l: usize, i: usize) -> bool {
    let Some(needy) = nodes.get(l) else {
        return false; // the warm seed, past the downloading nodes, lacks nothing
    };
    layouts.iter().enumerate().any(|(b, layout)| {
        needy.downloads(b)
            && (0..layout.count()).any(|c| nodes[i].holds(b, c) && !needy.holds(b, c))
    })
}
