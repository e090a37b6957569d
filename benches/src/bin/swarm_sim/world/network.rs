//! The network model: flows between endpoints and the rates they get each step.

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
    pub(super) remaining: f64,
    pub(super) starts: f64,
    /// Holds one of the sender's upload slots (the origin has no limit).
    pub(super) admitted: bool,
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
    for _round in 0..4 {
        for (k, f) in flows.iter().enumerate() {
            if active(f) {
                rates[k] = up_share[slot_of(f.src, total_nodes)].min(down_share[f.dst]);
            }
        }
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
    for (k, f) in flows.iter().enumerate() {
        if active(f) {
            rates[k] = up_share[slot_of(f.src, total_nodes)].min(down_share[f.dst]);
        }
    }
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
