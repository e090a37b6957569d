//! Touching the memory a scenario is about to use, before it is timed.
//!
//! On a virtual machine with free page reporting, memory that stays free for a minute or
//! two goes back to the host; touching it again costs host faults, about 2.5 s of system
//! time per 4 GiB on the machine the results were measured on (RESULTS.md, session 27).
//! A scenario touches about (nodes + 1) × the model in stores and page cache, so a run
//! started after an idle minute paid up to 1 s that a run started right after another
//! did not. Writing and freeing that much memory first makes the timed part independent
//! of how long the machine sat idle; the time the write took is reported, so a slow one
//! shows that the memory had gone back to the host.

use std::time::{Duration, Instant};

/// Never touch more than this share of the machine's available memory.
const MAX_SHARE_OF_AVAILABLE: u64 = 2;

/// How much to touch for a scenario: what the nodes' stores and the origin will hold,
/// capped at half the available memory so the write cannot push the machine into swap.
pub fn prefault_size(nodes: usize, model_bytes: u64) -> u64 {
    let wanted = (nodes as u64 + 1).saturating_mul(model_bytes);
    match available_bytes() {
        Some(available) => wanted.min(available / MAX_SHARE_OF_AVAILABLE),
        None => wanted,
    }
}

/// Writes `bytes` of fresh memory and frees it; returns how long the write took.
pub fn prefault(bytes: u64) -> Duration {
    let started = Instant::now();
    let Ok(len) = usize::try_from(bytes) else {
        return Duration::ZERO;
    };
    // A non-zero fill writes every page; `vec![0; n]` would map zero pages untouched.
    let touched = vec![1u8; len];
    std::hint::black_box(&touched);
    drop(touched);
    started.elapsed()
}

/// `MemAvailable` from /proc/meminfo.
fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
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
    fn size_covers_every_store_and_the_origin_but_not_the_whole_machine() {
        let model = 1 << 20;
        assert_eq!(prefault_size(3, model), 4 << 20);
        let available = available_bytes().expect("/proc/meminfo has MemAvailable");
        assert!(prefault_size(1000, u64::MAX / 2000) <= available / 2);
    }

    /// A field of /proc/self/status, in bytes.
    fn status_bytes(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("field present");
        kib * 1024
    }

    #[test]
    fn prefault_makes_every_page_resident() {
        let bytes = 64 << 20;
        let resident_before = status_bytes("VmRSS:");
        prefault(bytes);
        // Untouched (zero-mapped) pages would leave the high-water mark where it was.
        assert!(status_bytes("VmHWM:") >= resident_before + bytes * 9 / 10);
    }
}
