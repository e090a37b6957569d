//! How much the node's peers may send it before it reads: one receive budget for the
//! node, split among the connections it downloads over.
//!
//! Each peer's congestion controller (Cubic) grows its sending window until packets are
//! lost, so with per-connection windows the peers together fill whatever queue sits in
//! front of the node's downlink: 7 peers × 8 MiB against a 1.5 MB switch or `tbf`
//! queue. The origin's TCP flow to the same node then loses packets to that queue and
//! slows, and a cold rollout is only as fast as the origin. QUIC flow control bounds the
//! bytes in flight per connection; giving each connection `budget / connections` bounds
//! them for the node, whatever the number of peers. A connection with the whole budget
//! still fills a fast link: 2 MiB per 0.5 ms round trip is 33 Gbit/s.

/// The default node-wide budget (`--receive-budget`). Measured against fixed windows
/// in benches/RESULTS.md (session 23).
pub const DEFAULT_RECEIVE_BUDGET: u64 = 2 << 20;

/// The least window a connection gets: with many peers (a node links up to 32 per
/// blob) a share must still carry a chunk request's first bytes in one round trip.
pub const MIN_RECEIVE_WINDOW: u64 = 128 << 10;

/// One connection's receive window when `connections` share `budget`.
pub fn share(budget: u64, connections: usize) -> u64 {
    let connections = u64::try_from(connections.max(1)).unwrap_or(u64::MAX);
    (budget / connections).max(MIN_RECEIVE_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_gets_the_whole_budget() {
        assert_eq!(share(2 << 20, 1), 2 << 20);
        assert_eq!(share(2 << 20, 0), 2 << 20);
    }

    #[test]
    fn connections_split_the_budget() {
        assert_eq!(share(2 << 20, 4), 512 << 10);
        assert_eq!(share(7 << 20, 7), 1 << 20);
    }

    #[test]
    fn a_share_never_falls_below_the_minimum() {
        assert_eq!(share(2 << 20, 32), MIN_RECEIVE_WINDOW);
        assert_eq!(share(64 << 10, 1), MIN_RECEIVE_WINDOW);
    }
}
