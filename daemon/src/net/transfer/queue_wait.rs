//! How long a chunk request waits for an upload slot before it is refused `Busy`: a
//! little more than the interval at which the node's busy slots free up, measured.
//! The simulator (`benches/`) keeps one [`QueueWait`] per uploader, so it waits as the
//! daemon does.

use std::ops::Sub;
use std::time::Duration;

/// How long a chunk request may wait for an upload slot before it is refused `Busy`,
/// until the slots have measured how often they free ([`QueueWait::wait`]).
/// Short: a request queued here holds one of the requester's slots and keeps its chunk
/// "in flight", so no idle peer that has the chunk is asked for it. Simulated cold
/// starts (benches/RESULTS.md) went from 1.74x to 1.41x T_limit at 33 nodes and from
/// 2.19x to 1.49x at 100 when 5 s became 200 ms; 500 ms was in between. 50 ms (about
/// the time one of 8 busy slots takes to free at 200 Mbit/s with 1 MiB chunks) brings
/// the 512 MiB model's starts down further (simulated, slots admitting the least
/// complete requester first: 100 nodes cold 1.25x -> 1.16x, warm 1.29x -> 1.22x;
/// 1000 nodes cold 1.25-1.29x over four link graphs, warm 1.23x). With uploads ordered
/// by the chunk's count alone it stretched a 5 GB layer's tail (1000 nodes 1.10x ->
/// 1.46x): nodes that fell behind stayed behind. With that order it is 1.07x.
pub const UPLOAD_QUEUE_WAIT: Duration = Duration::from_millis(50);

/// Bounds of the queue wait once it follows the measured release interval.
const BOUNDS: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(200));

/// The wait as a multiple of the release interval: a request waits for about the next
/// free slot and no longer.
const INTERVALS: f64 = 1.25;

/// The queue wait of one node's upload slots, from the interval at which a freed slot
/// is handed to a waiting request. A fixed 50 ms suits 200 Mbit/s links, where a slot
/// frees about every 42 ms; at 1 Gbit/s one frees every 8 ms, and simulated 100-node
/// cold starts took 1.38x T_limit with 50 ms, 1.25x with 10 ms and 1.27x with this rule
/// (200 Mbit/s: 1.17x, 1.18x with it; benches/RESULTS.md, session 15).
///
/// `T` is the clock: `tokio::time::Instant` in the daemon, virtual time in the
/// simulator.
#[derive(Debug, Clone, Copy)]
pub struct QueueWait<T> {
    /// When a freed slot last went to a waiting request; `None` since the queue last
    /// drained, so idle time between busy spells is never taken for an interval.
    last_handoff: Option<T>,
    /// Running average (weight 1/8) of the interval between hand-offs.
    release_interval: Option<Duration>,
}

impl<T> Default for QueueWait<T> {
    fn default() -> Self {
        QueueWait {
            last_handoff: None,
            release_interval: None,
        }
    }
}

impl<T: Copy + Sub<Output = Duration>> QueueWait<T> {
    /// A freed slot went to a waiting request at `now`.
    pub fn handed_off(&mut self, now: T) {
        if let Some(last) = self.last_handoff {
            let sample = now - last;
            self.release_interval = Some(match self.release_interval {
                None => sample,
                Some(a) => a.mul_f64(7.0 / 8.0) + sample.mul_f64(1.0 / 8.0),
            });
        }
        self.last_handoff = Some(now);
    }

    /// A slot was left free: nobody was waiting.
    pub fn drained(&mut self) {
        self.last_handoff = None;
    }

    /// How long a request queued now may wait for a slot.
    pub fn wait(&self) -> Duration {
        let (least, most) = BOUNDS;
        self.release_interval.map_or(UPLOAD_QUEUE_WAIT, |i| {
            i.mul_f64(INTERVALS).clamp(least, most)
        })
    }
}
