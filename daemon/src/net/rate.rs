//! A byte-rate limit shared by all transfers in one direction.
//!
//! Each caller reserves its bytes on a virtual timeline that advances by `bytes / rate`
//! per reservation and starts when that slot comes, so the average rate over any busy
//! period stays at or below the limit without a background refill task.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A bytes-per-second limit; a rate of 0 means unlimited.
pub struct RateLimit {
    bytes_per_sec: u64,
    next_free: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec` (0: none).
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec,
            next_free: Mutex::new(None),
        }
    }

    /// Waits until `bytes` may be sent or received.
    pub async fn acquire(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reservations_are_spaced_by_their_cost() {
        let limit = RateLimit::new(1000);
        let t0 = Instant::now();
        limit.acquire(500).await; // starts at once
        assert_eq!(t0.elapsed(), Duration::ZERO);
        limit.acquire(500).await; // after the first 500 bytes' half second
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        limit.acquire(1).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_is_unlimited() {
        let limit = RateLimit::new(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            limit.acquire(1 << 30).await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}
