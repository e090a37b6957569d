//! The network model: flows between endpoints and the rates they get each step.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Node(usize),
    Origin,
}

pub(super) struct Flow {
    pub(super) src: Endpoint,
    pub(super) dst: usize,
    pub(super) blob: usize,
    pub(super) chunk: u32,
    /// Chunks of the blob the requester held when it asked (the daemon's `Request`
    /// carries the count).
    pub(super) held: u32,
    /// Seconds the request waits for an upload slot before it is refused Busy.
    pub(super) wait: f64,
    /// Waited at least one step for a slot (its admission is a freed slot handed over).
    pub(super) queued: bool,
    pub(super) remaining: f64,
    pub(super) starts: f64,
    /// Holds one of the sender's upload slots (the origin has no limit).
    pub(super) admitted: bool,
    /// Bytes per second at most, whatever the links allow (a cut-through relay's flow).
    pub(super) cap: f64,
}

pub(super) fn slot_of(e: Endpoint, total_nodes: usize) -> usize {
    match e {
        Endpoint::Node(n) => n,
        Endpoint::Origin => total_nodes,
    }
}

/// Approximately max-min fair rates for the active flows (`rates[k]` for `flows[k]`,
/// 0 for flows not started): a few rounds of water-filling, in which a link's capacity
/// left over by flows limited elsewhere goes to the flows it limits, then a scaling pass
/// so no link carries more than its capacity. TCP and QUIC flows sharing a bottleneck
/// end up near this; plain equal shares would waste the capacity slow flows leave.
pub(super) fn allocate(
    flows: &[Flow],
    t: f64,
    caps: &[f64],
    rates: &mut Vec<f64>,
    up_share: &mut [f64],
    down_share: &mut [f64],
    total_nodes: usize,
) {
    let down_cap = caps[0];
    let active = |f: &Flow| f.admitted && f.starts <= t;
    rates.clear();
    rates.resize(flows.len(), 0.0);
    let mut up_n = vec![0usize; up_share.len()];
    let mut down_n = vec![0usize; down_share.len()];
    for f in flows.iter().filter(|f| active(f)) {
        up_n[slot_of(f.src, total_nodes)] += 1;
        down_n[f.dst] += 1;
    }
    for (i, s) in up_share.iter_mut().enumerate() {
        *s = caps[i] / up_n[i].max(1) as f64;
    }
    for (i, s) in down_share.iter_mut().enumerate() {
        *s = down_cap / down_n[i].max(1) as f64;
    }
    let mut up_sum = vec![0.0; up_share.len()];
    let mut down_sum = vec![0.0; down_share.len()];
    // Each active flow gets the smaller of its two links' shares, and no more than its cap.
    let assign = |rates: &mut [f64], up_share: &[f64], down_share: &[f64]| {
        for (k, f) in flows.iter().enumerate().filter(|(_, f)| active(f)) {
            rates[k] = up_share[slot_of(f.src, total_nodes)]
                .min(down_share[f.dst])
                .min(f.cap);
        }
    };
    for _round in 0..4 {
        assign(rates, up_share, down_share);
        // A link's flows limited elsewhere keep their rate; the rest split what is left.
        up_sum.iter_mut().for_each(|x| *x = 0.0);
        down_sum.iter_mut().for_each(|x| *x = 0.0);
        up_n.iter_mut().for_each(|x| *x = 0);
        down_n.iter_mut().for_each(|x| *x = 0);
        for (k, f) in flows.iter().enumerate().filter(|(_, f)| active(f)) {
            let u = slot_of(f.src, total_nodes);
            if rates[k] < up_share[u] * 0.999 {
                up_sum[u] += rates[k];
            } else {
                up_n[u] += 1;
            }
            if rates[k] < down_share[f.dst] * 0.999 {
                down_sum[f.dst] += rates[k];
            } else {
                down_n[f.dst] += 1;
            }
        }
        for i in 0..up_share.len() {
            if up_n[i] > 0 {
                up_share[i] = ((caps[i] - up_sum[i]) / up_n[i] as f64).max(up_share[i]);
            }
        }
        for i in 0..down_share.len() {
            if down_n[i] > 0 {
                down_share[i] = ((down_cap - down_sum[i]) / down_n[i] as f64).max(down_share[i]);
            }
        }
    }
    assign(rates, up_share, down_share);
    // Never more than a link carries.
    up_sum.iter_mut().for_each(|x| *x = 0.0);
    down_sum.iter_mut().for_each(|x| *x = 0.0);
    for (k, f) in flows.iter().enumerate() {
        up_sum[slot_of(f.src, total_nodes)] += rates[k];
        down_sum[f.dst] += rates[k];
    }
    for (k, f) in flows.iter().enumerate() {
        let u = slot_of(f.src, total_nodes);
        let over = (up_sum[u] / caps[u]).max(down_sum[f.dst] / down_cap);
        if over > 1.0 {
            rates[k] /= over;
        }
    }
}

/// `--cut-through` (exploration): the chunks nodes are receiving from peers, so a node can
/// relay one before it is whole, never ahead of its own bytes.
#[derive(Default)]
pub(super) struct Relays {
    /// (node, blob, chunk) -> bytes received so far and the rate they arrive at; infinite
    /// bytes once whole.
    arriving: HashMap<(usize, usize, u32), (f64, f64)>,
}

impl Relays {
    /// The most flow `f` may carry per second: a relay sends a chunk it is still
    /// receiving no faster than it arrives, plus what it has buffered.
    pub(super) fn cap(&self, f: &Flow, size: f64, dt: f64) -> f64 {
        let Endpoint::Node(relay) = f.src else {
            return f64::INFINITY;
        };
        match self.arriving.get(&(relay, f.blob, f.chunk)) {
            Some(&(got, rate)) if got.is_finite() => {
                let sent = size - f.remaining;
                rate + (got - sent).max(0.0) / dt
            }
            _ => f64::INFINITY,
        }
    }

    /// Flow `f` just moved at `rate`: a relay's flow is held behind the relay's bytes, and
    /// the receiver's bytes are recorded. True on the chunk's first bytes at the receiver
    /// (when it announces the chunk).
    pub(super) fn progress(&mut self, f: &mut Flow, size: f64, rate: f64) -> bool {
        if let Endpoint::Node(relay) = f.src {
            if let Some(&(got, _)) = self.arriving.get(&(relay, f.blob, f.chunk)) {
                f.remaining = f.remaining.max(size - got);
            }
        }
        let mut first = false;
        let entry = self
            .arriving
            .entry((f.dst, f.blob, f.chunk))
            .or_insert_with(|| {
                first = true;
                (0.0, 0.0)
            });
        if entry.0.is_finite() {
            *entry = (entry.0.max(size - f.remaining.max(0.0)), rate);
        }
        first
    }

    /// Flow `f` delivered its whole chunk: relays of it are no longer held back (nor by
    /// an endgame duplicate still arriving).
    pub(super) fn complete(&mut self, f: &Flow) {
        self.arriving
            .insert((f.dst, f.blob, f.chunk), (f64::INFINITY, 0.0));
    }
}
