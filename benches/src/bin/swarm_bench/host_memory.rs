//! Keeping the memory a scenario fills backed by the host while it is timed.
//!
//! On a virtual machine with free page reporting, memory the guest frees goes back to
//! the host, and touching it again costs host faults. On the machine the results were
//! measured on that is about 2 s of system time per GiB when the host is busy, and a page
//! freed for as little as 3 s costs it again (RESULTS.md, session 28). A scenario fills
//! about (nodes + 1) × the model with stores and buffers on two shared cores, so a run paid
//! between nothing and several seconds of its timed part for it, depending on how long
//! the machine had sat idle: a cost no real node pays for its own data.
//!
//! [`HotReserve`] writes that much memory before the scenario and holds it while the
//! daemons start; from the start of the timed part it frees one block each time the
//! machine's free memory falls by a block. The kernel hands out recently freed pages
//! first, so the scenario fills pages the host still backs. The time the write took is
//! reported: a slow one shows that the memory had gone back to the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Never hold more than this share of the machine's available memory.
const MAX_SHARE_OF_AVAILABLE: u64 = 2;

/// The unit written and freed: small enough to follow the scenario's demand closely.
const BLOCK: usize = 32 << 20;

/// How often the releasing thread reads the machine's free memory.
const POLL: Duration = Duration::from_millis(20);

/// How much to hold for a scenario: what its nodes' stores will hold, and as much again
/// as one store for the daemons' heaps and buffers, capped at half the available memory
/// so that holding it cannot push the machine into swap. Only what the scenario takes
/// is freed during it, so more costs only the time to write it.
pub fn reserve_size(nodes: usize, model_bytes: u64) -> u64 {
    let wanted = (nodes as u64 + 1).saturating_mul(model_bytes);
    match meminfo_bytes("MemAvailable:") {
        Some(available) => wanted.min(available / MAX_SHARE_OF_AVAILABLE),
        None => wanted,
    }
}

/// Written memory, held in blocks until [`HotReserve::release_on_demand`].
pub struct HotReserve {
    blocks: Vec<Vec<u8>>,
}

impl HotReserve {
    /// Writes `bytes` of fresh memory (rounded up to whole blocks); how long that took.
    pub fn fill(bytes: u64) -> (HotReserve, Duration) {
        let started = Instant::now();
        let count = usize::try_from(bytes.div_ceil(BLOCK as u64)).unwrap_or(0);
        // A non-zero fill writes every page; `vec![0; n]` would map zero pages untouched.
        let blocks = (0..count).map(|_| vec![1u8; BLOCK]).collect();
        (HotReserve { blocks }, started.elapsed())
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        (self.blocks.len() * BLOCK) as u64
    }

    /// Frees one block each time the machine's free memory falls by a block below what
    /// it is now; the rest goes when the returned [`Release`] is dropped.
    pub fn release_on_demand(self) -> Release {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let mut blocks = self.blocks;
            std::thread::spawn(move || {
                let Some(floor) = meminfo_bytes("MemFree:") else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) && !blocks.is_empty() {
                    release_below(&mut blocks, floor, |_| meminfo_bytes("MemFree:"));
                    std::thread::sleep(POLL);
                }
            })
        };
        Release {
            stop,
            thread: Some(thread),
        }
    }
}

/// Frees blocks while the free memory is a block or more below `floor`, the free memory
/// when the scenario started taking it: each freed block raises it again, so the blocks go
/// one per block the scenario took. `free_now` is told how many this call has freed.
/// Returns that number.
fn release_below<T>(
    blocks: &mut Vec<T>,
    floor: u64,
    mut free_now: impl FnMut(usize) -> Option<u64>,
) -> usize {
    let mut freed = 0;
    while !blocks.is_empty() {
        match free_now(freed) {
            Some(free) if free + BLOCK as u64 <= floor => {
                blocks.pop();
                freed += 1;
            }
            _ => break,
        }
    }
    freed
}

/// A reserve being freed as the scenario needs memory; dropping it frees the rest.
pub struct Release {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A byte count from /proc/meminfo (`MemFree:`, `MemAvailable:`).
fn meminfo_bytes(field: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, field)
}

/// A `Field:   1234 kB` line of a /proc file (meminfo, a process's status), in bytes.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_covers_every_store_but_not_the_whole_machine() {
        let model = 1 << 20;
        assert_eq!(reserve_size(3, model), 4 << 20);
        let available = meminfo_bytes("MemAvailable:").expect("/proc/meminfo has MemAvailable");
        assert!(reserve_size(1000, u64::MAX / 2000) <= available / 2);
    }

    /// A scenario that takes memory in bursts gets one block back per block it took, for
    /// as long as the reserve lasts.
    #[test]
    fn one_block_is_freed_per_block_taken() {
        let block = BLOCK as u64;
        let floor = 100 * block;
        let mut blocks = vec![(); 10];
        let mut taken = 0u64;
        let mut released = 0u64;
        for burst in [block / 2, block / 2, 3 * block, block + 1, 4 * block] {
            taken += burst;
            let freed = release_below(&mut blocks, floor, |freed_now| {
                Some(floor - taken + (released + freed_now as u64) * block)
            });
            released += freed as u64;
            assert_eq!(released, taken / block, "after taking {taken} bytes");
        }
        // 9.5 blocks taken so far; the reserve runs out at the tenth.
        taken += block;
        release_below(&mut blocks, floor, |freed_now| {
            Some(floor - taken + (released + freed_now as u64) * block)
        });
        assert!(blocks.is_empty());
    }

    /// A field of /proc/self/status, in bytes.
    fn status_bytes(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        kib_field(&status, field).expect("field present")
    }

    #[test]
    fn the_reserve_is_resident_until_released() {
        let resident_before = status_bytes("VmRSS:");
        let (reserve, _) = HotReserve::fill(3 * BLOCK as u64 - 1);
        assert_eq!(reserve.held(), 3 * BLOCK as u64);
        // Untouched (zero-mapped) pages would not count as resident.
        assert!(status_bytes("VmRSS:") >= resident_before + reserve.held() * 9 / 10);
        let release = reserve.release_on_demand();
        drop(release);
        assert!(status_bytes("VmRSS:") < resident_before + BLOCK as u64);
    }
}
