//! Reusable byte buffers for the per-chunk paths.
//!
//! shoald maps every allocation of 256 KiB or more by itself (the `mallopt` in
//! `main.rs`, which keeps RSS low), so a fresh chunk buffer (512 KiB by default) is a
//! fresh mapping: 128 page faults on first touch and an `munmap` when dropped, for every
//! chunk received or uploaded and every piece streamed to a local client. Profiles of the emulated
//! benchmark put those faults and unmaps at a fifth of a receiving daemon's CPU
//! (benches/RESULTS.md, sessions 14, 16 and 19). A pool hands the same few buffers
//! round instead; a buffer frozen into [`Bytes`] comes back when its last clone drops.
//! A pool that lent nothing for a while gives its idle buffers back to the system
//! ([`release_idle`]), so an idle daemon does not sit on them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// A bounded set of free buffers. Cloning shares the set.
#[derive(Clone)]
pub(crate) struct BufferPool {
    shared: Arc<Shared>,
}

struct Shared {
    free: Mutex<Vec<Vec<u8>>>,
    /// Capacity the free buffers may hold together; a buffer returned beyond it is freed.
    retain_bytes: usize,
    /// Whether a buffer was lent since the last [`release_idle`].
    lent: AtomicBool,
}

/// Every pool of the process, for [`release_idle`].
static POOLS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Frees the idle buffers of every pool that lent none since the previous call; the
/// daemon calls it periodically. Returns the bytes freed.
pub(crate) fn release_idle() -> usize {
    let pools: Vec<Arc<Shared>> = {
        let mut all = POOLS.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|p| p.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    pools.iter().map(|p| p.release_if_idle()).sum()
}

impl BufferPool {
    /// A pool that keeps at most `retain_bytes` of idle buffers.
    pub(crate) fn new(retain_bytes: usize) -> BufferPool {
        let shared = Arc::new(Shared {
            free: Mutex::new(Vec::new()),
            retain_bytes,
            lent: AtomicBool::new(false),
        });
        POOLS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&shared));
        BufferPool { shared }
    }

    /// A buffer of exactly `len` bytes. A reused buffer keeps its previous contents (it
    /// is zeroed only where it grows): callers overwrite all of it before reading.
    pub(crate) fn take(&self, len: usize) -> PooledBuf {
        self.shared.lent.store(true, Ordering::Relaxed);
        let reused = {
            let mut free = self.shared.lock();
            free.iter()
                .rposition(|b| b.capacity() >= len)
                .map(|i| free.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(len));
        buf.resize(len, 0);
        PooledBuf {
            buf,
            pool: self.shared.clone(),
        }
    }

    #[cfg(test)]
    fn idle_bytes(&self) -> usize {
        self.shared.lock().iter().map(Vec::capacity).sum()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release_if_idle(&self) -> usize {
        if self.lent.swap(false, Ordering::Relaxed) {
            return 0;
        }
        let released: Vec<Vec<u8>> = std::mem::take(&mut *self.lock());
        released.iter().map(Vec::capacity).sum()
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.lock();
        let idle: usize = free.iter().map(Vec::capacity).sum();
        if idle + buf.capacity() <= self.retain_bytes {
            free.push(buf);
        }
    }
}

/// A buffer on loan from a [`BufferPool`]; it goes back when dropped.
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<Shared>,
}

impl PooledBuf {
    /// Read-only bytes backed by this buffer, which returns to the pool when the last
    /// clone of them drops.
    pub(crate) fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_buffer_returns_when_its_last_clone_drops_and_is_reused() {
        let pool = BufferPool::new(4 << 20);
        let mut buf = pool.take(1 << 20);
        buf[0] = 7;
        let first = buf.as_ptr();
        let bytes = buf.freeze();
        let clone = bytes.slice(0..10);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a clone still holds it");
        drop(clone);
        assert_eq!(pool.idle_bytes(), 1 << 20);
        let again = pool.take(1000);
        assert_eq!(again.as_ptr(), first, "the same memory is handed out again");
        assert_eq!(again.len(), 1000);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn a_buffer_too_small_is_left_in_the_pool_and_a_new_one_allocated() {
        let pool = BufferPool::new(4 << 20);
        drop(pool.take(100));
        let big = pool.take(2000);
        assert_eq!(big.len(), 2000);
        assert!(big.iter().all(|&b| b == 0), "fresh memory is zeroed");
        assert_eq!(pool.idle_bytes(), 100);
    }

    #[test]
    fn a_pool_releases_its_idle_buffers_only_after_a_period_without_lending() {
        let pool = BufferPool::new(4 << 20);
        drop(pool.take(1 << 20));
        assert_eq!(
            pool.shared.release_if_idle(),
            0,
            "it lent a buffer this period"
        );
        assert_eq!(pool.idle_bytes(), 1 << 20);
        assert_eq!(pool.shared.release_if_idle(), 1 << 20);
        assert_eq!(pool.idle_bytes(), 0);
        drop(pool.take(1000));
        assert_eq!(pool.shared.release_if_idle(), 0);
    }

    #[test]
    fn idle_buffers_beyond_the_limit_are_freed() {
        let pool = BufferPool::new(3 << 20);
        let held: Vec<_> = (0..5).map(|_| pool.take(1 << 20)).collect();
        drop(held);
        assert_eq!(pool.idle_bytes(), 3 << 20);
    }
}
