//! The daemon's settings for the swarm: the scheduler's configuration and the node-wide
//! limits the driver applies around it. The simulator (`benches/`) uses these too, so
//! what it measures is what `shoald` runs.

use std::time::Duration;

use super::scheduler;

/// Peer chunk requests in flight at once across all downloads of this node. Each holds a
/// chunk in memory until written, so this bounds memory (12 chunks: 6 MiB at the default
/// 512 KiB).
pub const MAX_PEER_REQUESTS: usize = 12;
/// Providers this node links to on its own initiative per download; peers that link
/// to it are accepted beyond that (they are interested nodes of a cold start).
pub const MAX_LINKED: usize = 32;
/// The scheduler's settings in the daemon. A dead peer's link closes within the QUIC
/// idle timeout (8 s), which removes it from the interested set at once; the grace
/// period is only for live peers that are slow to announce, and under a congested origin
/// (tens of nodes sharing it) a chunk can take many seconds. 8 MiB of origin ranges
/// per blob (`origin_requests_alone`) keep the origin link busy for a node downloading
/// alone; with others downloading too, 1 MiB worth (`shared_origin_requests`) keeps
/// chunks from all finishing late at once, which would delay passing them on to peers.
///
/// `chunk_size` is the store's; a blob too large for one index frame has larger chunks
/// (`ChunkLayout::for_blob`), and its download sets the origin counts again
/// (`with_origin_ranges`).
pub fn scheduler_config(chunk_size: u32) -> scheduler::Config {
    let config = scheduler::Config {
        assignment_grace: Duration::from_secs(30),
        // One request per peer at a time: chunks shared by many requesters then finish
        // one after another and are relayed early, instead of all arriving together late
        // (simulated, 8 nodes: warm 1.81x -> 1.45x T_limit, cold 1.78x -> 1.44x with
        // `shared_origin_requests` 1; emulated: benches/RESULTS.md).
        max_requests_per_peer: 1,
        // A download alone; the driver keeps it current ([`peer_requests_per_download`]).
        max_peer_requests: peer_requests_per_download(1),
        // A download alone; the driver sets it per download ([`origin_frontier`]).
        origin_frontier: origin_frontier(1),
        large_swarm: LARGE_SWARM,
        ..scheduler::Config::default()
    };
    with_origin_ranges(config, chunk_size)
}

/// `config` with its origin request counts for a blob cut into `chunk_size` chunks: both
/// are counted in bytes, so a blob with larger chunks keeps the same origin bytes in
/// flight.
pub fn with_origin_ranges(config: scheduler::Config, chunk_size: u32) -> scheduler::Config {
    scheduler::Config {
        max_origin_requests: origin_requests_alone(chunk_size),
        shared_origin_requests: shared_origin_requests(chunk_size),
        ..config
    }
}

/// Origin bytes a download alone keeps in flight. Origin ranges are one chunk each, and
/// behind a WAN round trip (and a registry's redirect to its CDN) each range waits
/// before its first byte; keeping the bytes in flight, not the count of ranges, fixed
/// keeps a lone node's origin throughput whatever the chunk size.
const ORIGIN_BYTES_ALONE: u64 = 8 * 1024 * 1024;

/// Origin bytes a download keeps in flight while other nodes download the blob too: one
/// range of the 1 MiB chunks this was tuned with. With one 512 KiB range per node the
/// origin's TCP flows stopped and started twice as often, and in the emulated 8-node
/// cold start its uplink ran at a median 0.92 of the link rate (18 runs) against 0.94
/// with 1 MiB chunks; two ranges brought it back to 0.94 (six runs; benches/RESULTS.md,
/// session 27). Simulated, which has no TCP, it is the same either way.
const ORIGIN_BYTES_SHARED: u64 = 1024 * 1024;

/// Origin ranges in flight for a download shared with other nodes
/// ([`scheduler::Config::shared_origin_requests`]): 1 MiB worth, from 1 to 4 ranges.
pub fn shared_origin_requests(chunk_size: u32) -> usize {
    ranges_worth(ORIGIN_BYTES_SHARED, chunk_size).clamp(1, 4)
}

/// Origin ranges in flight for a download alone ([`scheduler::Config::max_origin_requests`]):
/// 8 MiB worth, from 2 to 16 ranges.
pub fn origin_requests_alone(chunk_size: u32) -> usize {
    ranges_worth(ORIGIN_BYTES_ALONE, chunk_size).clamp(2, 16)
}

/// Origin ranges (one chunk each) that make `bytes`, rounded down.
fn ranges_worth(bytes: u64, chunk_size: u32) -> usize {
    usize::try_from(bytes / u64::from(chunk_size.max(1))).unwrap_or(usize::MAX)
}

/// Peer requests in flight for one download while `concurrent` swarm downloads run on
/// this node (it included): the node-wide [`MAX_PEER_REQUESTS`] shared out, rounded up
/// so the downloads together can fill it. A download that sends more than its share
/// has the excess wait for the node-wide cap with peer and chunk already chosen: when
/// a slot frees, the chunk may be held by faster or idler peers, and meanwhile no
/// other peer is asked for it. Simulated cold starts, 512 MiB in 4 layers (a share of
/// 3; benches/RESULTS.md): 33 nodes 1.29x -> 1.23x T_limit, 200 nodes 1.42x -> 1.33x,
/// 1000 nodes 1.61x -> 1.54x (warm: better at 100 and 200 nodes, 0.03-0.06 worse at
/// 33); a share of 2 (8 in all) was worse, 4 or 6 no better. The driver updates it as
/// downloads start and end.
pub fn peer_requests_per_download(concurrent: usize) -> usize {
    MAX_PEER_REQUESTS.div_ceil(concurrent.max(1))
}

/// Live interested nodes from which a download's origin frontier doubles
/// ([`scheduler::Config::large_swarm`]). Simulated cold starts, 512 MiB in 4 layers,
/// frontier 4 per layer against 8 (benches/RESULTS.md): 100 nodes 1.29x / 1.38x
/// T_limit, 200 nodes 1.31x / 1.40x, 500 nodes 1.45x / 1.43x, 1000 nodes 1.58x / 1.44x
/// (16: 1.63x, every chunk slow to arrive).
pub const LARGE_SWARM: usize = 400;

/// Total origin-frontier chunks over the node's downloads running at once
/// ([`origin_frontier`]). Simulated cold starts at 200 nodes, 512 MiB (benches/RESULTS.md,
/// session 15), a budget of 24 against 16: 2 layers 1.22x -> 1.17x T_limit, 4 layers
/// 1.23-1.24x -> 1.18x on three link graphs, 8 layers (3 each against 4) 1.21x ->
/// 1.20x; 8 to 100 nodes within 0.02 either way; 1000 nodes, 4 layers (12 per layer
/// against 8, doubled) 1.25-1.29x -> 1.27x on four link graphs; 4 layers at 400
/// nodes, undoubled, 1.36x -> 1.21x.
const ORIGIN_FRONTIER_BUDGET: u32 = 24;

/// The origin frontier of a download alone, and the most of any download: one layer's
/// frontier of 24 was better at 200 nodes (1.21x -> 1.17x) but worse at 8 (1.16x ->
/// 1.20x).
const MAX_ORIGIN_FRONTIER: u32 = 16;

/// The least origin frontier of one download, however many run at once.
const MIN_ORIGIN_FRONTIER: u32 = 3;

/// The origin frontier for a download while `concurrent` swarm downloads run on this
/// node (it included). Each download's owners keep about one origin range per frontier
/// chunk, and a range shares its owner's downlink with peer traffic, so it takes several
/// at once to fill the origin's uplink; too many and every chunk arrives late. What
/// counts is the total over the blobs pulled together. Simulated cold starts
/// (benches/RESULTS.md): 512 MiB in 4 layers, 33 nodes, 4 per layer 1.41x T_limit and
/// 8 per layer 1.47x (session 7's scheduler); 1 GB in one layer, 33 nodes, 4: 1.49x,
/// 16: 1.20x, 32: 1.26x, none: 1.32x; 5 GB in one layer, 8 nodes, 4: 1.32x, 16: 1.17x.
pub fn origin_frontier(concurrent: usize) -> u32 {
    let concurrent = u32::try_from(concurrent.max(1)).unwrap_or(u32::MAX);
    (ORIGIN_FRONTIER_BUDGET / concurrent).clamp(MIN_ORIGIN_FRONTIER, MAX_ORIGIN_FRONTIER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_requests_are_shared_out_over_concurrent_downloads() {
        let shares: Vec<usize> = (0..=6).map(peer_requests_per_download).collect();
        assert_eq!(shares, [12, 12, 6, 4, 3, 3, 2]);
        assert_eq!(peer_requests_per_download(100), 1);
        for n in 1..=20 {
            assert!(n * peer_requests_per_download(n) >= MAX_PEER_REQUESTS);
        }
    }

    #[test]
    fn the_frontier_budget_is_split_over_concurrent_downloads() {
        let frontiers: Vec<u32> = (0..=9).map(origin_frontier).collect();
        assert_eq!(frontiers, [16, 16, 12, 8, 6, 4, 4, 3, 3, 3]);
        assert_eq!(origin_frontier(usize::MAX), MIN_ORIGIN_FRONTIER);
    }

    #[test]
    fn a_lone_download_keeps_8_mib_of_origin_ranges_in_flight() {
        let mib = 1024 * 1024;
        assert_eq!(origin_requests_alone(4 * mib), 2);
        assert_eq!(origin_requests_alone(2 * mib), 4);
        assert_eq!(origin_requests_alone(mib), 8);
        assert_eq!(origin_requests_alone(64 * 1024), 16);
        assert_eq!(origin_requests_alone(64 * mib), 2);
    }

    #[test]
    fn a_shared_download_keeps_1_mib_of_origin_ranges_in_flight() {
        let kib = 1024;
        assert_eq!(shared_origin_requests(4096 * kib), 1);
        assert_eq!(shared_origin_requests(1024 * kib), 1);
        assert_eq!(shared_origin_requests(512 * kib), 2);
        assert_eq!(shared_origin_requests(256 * kib), 4);
        assert_eq!(shared_origin_requests(64 * kib), 4);
    }
}
