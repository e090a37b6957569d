//! How much the node's peers may send it before it reads: one receive budget for the
//! node, split among the connections it downloads over.
//!
//! Each peer's congestion controller (Cubic) grows its sending window until packets are
//! lost, so with per-connection windows the peers together fill whatever queue sits in
//! front of the node's downlink: 7 peers × 8 MiB against a 1.5 MB switch or `tbf`
//! queue. The origin's TCP flow to the same node then loses packets to that queue and
//! slows, and a cold rollout is only as fast as the origin. QUIC flow control bounds the
//! bytes in flight per connection; giving each connection `budget / connections` bounds
//! them for the node, whatever the number of peers.
//!
//! The budget is the configured floor (`--receive-budget`) or [`BUDGET_COVERS`] of what
//! the node has been receiving, whichever is larger ([`sized`]). A slow link never
//! leaves the floor (200 Mbit/s is 0.5 MB per 20 ms); a fast one grows the budget as
//! its rate climbs, so that a reader that is late by a few milliseconds (a busy CPU)
//! does not stall its senders.
//!
//! While the budget limits the rate, the rate is the budget per round trip, so the
//! budget grows exactly while round trips (queueing included) stay under
//! [`BUDGET_COVERS`]: a queue that builds up past 20 ms stops the growth. It also means
//! that a link with a longer round trip (a WAN) never grows past the floor, and needs
//! `--receive-budget` of at least rate × round trip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The default floor of the node-wide budget (`--receive-budget`). 8 emulated nodes
/// at 200 Mbit/s, medians: a 2 MiB floor took cold starts from 1.265x T_limit (8 MiB
/// per connection) to 1.18x and warm ones from 1.285x to 1.20x, the origin's TCP
/// retransmitting 0.3-1.1 % of its segments instead of 1.8-3.0 %. 1 MiB, over eleven
/// rounds alternating with 2 MiB: cold 1.17x, warm 1.19x, the origin losing nothing
/// (0-0.04 %), and a 10 Gbit/s link as fast; 4 MiB let the origin's losses back
/// (benches/RESULTS.md, session 23).
pub const DEFAULT_RECEIVE_BUDGET: u64 = 1 << 20;

/// The least window a connection gets: with many peers (a node links up to 32 per
/// blob) a share must still carry a chunk request's first bytes in one round trip.
pub const MIN_RECEIVE_WINDOW: u64 = 128 << 10;

/// How much of the node's recent receive rate the budget covers.
pub const BUDGET_COVERS: Duration = Duration::from_millis(20);

/// The most the budget grows to (10 Gbit/s for 27 ms): what the peers may make the
/// node buffer.
pub const MAX_RECEIVE_BUDGET: u64 = 32 << 20;

/// How often the receive rate is sampled and the budget resized.
pub const RESIZE_EVERY: Duration = Duration::from_millis(100);

/// The budget for a node that received `bytes` from peers in the last `elapsed`.
pub fn sized(floor: u64, bytes: u64, elapsed: Duration) -> u64 {
    let elapsed = elapsed.as_micros().max(1);
    let covered = u128::from(bytes) * BUDGET_COVERS.as_micros() / elapsed;
    let covered = u64::try_from(covered).unwrap_or(u64::MAX);
    floor.max(covered.min(MAX_RECEIVE_BUDGET))
}

/// The node's current budget and what it has received, shared by its connections.
#[derive(Debug)]
pub struct ReceiveBudget {
    floor: u64,
    current: AtomicU64,
    received: AtomicU64,
}

impl ReceiveBudget {
    /// A budget that starts at, and never falls below, `floor`.
    pub fn new(floor: u64) -> Self {
        ReceiveBudget {
            floor,
            current: AtomicU64::new(floor),
            received: AtomicU64::new(0),
        }
    }

    /// The budget now.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Counts bytes a peer delivered.
    pub fn count(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes peers have delivered since the node started.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Resizes the budget for `bytes` received in `elapsed`; true when it changed by
    /// more than an eighth (the connections' windows are then worth resetting).
    pub fn resize(&self, bytes: u64, elapsed: Duration) -> bool {
        let next = sized(self.floor, bytes, elapsed);
        let now = self.current();
        if next.abs_diff(now) > now / 8 || (next == self.floor && now != self.floor) {
            self.current.store(next, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

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
    fn a_slow_link_keeps_the_floor_and_a_fast_one_grows_the_budget() {
        let floor = 2 << 20;
        let tenth = Duration::from_millis(100);
        // 200 Mbit/s: 2.5 MB per 100 ms, 0.5 MB per 20 ms.
        assert_eq!(sized(floor, 2_500_000, tenth), floor);
        // 10 Gbit/s: 125 MB per 100 ms, 25 MB per 20 ms.
        assert_eq!(sized(floor, 125_000_000, tenth), 25_000_000);
        assert_eq!(sized(floor, 1 << 40, tenth), MAX_RECEIVE_BUDGET);
        assert_eq!(sized(floor, 1 << 20, Duration::ZERO), MAX_RECEIVE_BUDGET);
        // A floor above the cap is still the floor.
        assert_eq!(sized(64 << 20, 1 << 40, tenth), 64 << 20);
    }

    #[test]
    fn the_budget_moves_on_real_changes_and_returns_to_the_floor() {
        let floor = 2 << 20;
        let budget = ReceiveBudget::new(floor);
        let tenth = Duration::from_millis(100);
        assert!(!budget.resize(2_500_000, tenth));
        assert_eq!(budget.current(), floor);
        assert!(budget.resize(100_000_000, tenth));
        assert_eq!(budget.current(), 20_000_000);
        // Within an eighth: the windows are left alone.
        assert!(!budget.resize(105_000_000, tenth));
        assert_eq!(budget.current(), 20_000_000);
        // Idle: back to the floor.
        assert!(budget.resize(0, tenth));
        assert_eq!(budget.current(), floor);
        budget.count(3);
        budget.count(4);
        assert_eq!(budget.received(), 7);
    }

    #[test]
    fn a_share_never_falls_below_the_minimum() {
        assert_eq!(share(2 << 20, 32), MIN_RECEIVE_WINDOW);
        assert_eq!(share(64 << 10, 1), MIN_RECEIVE_WINDOW);
    }
}
