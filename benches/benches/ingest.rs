//! Ingest micro-benchmark: the store's one-pass ingest (sha256 of the blob + BLAKE3 per
//! chunk + write to the staging file) against sha256 alone, measured in the same run,
//! for a sweep of chunk sizes. Prints a markdown table of medians and ratios, then runs
//! the same comparison under criterion (64 MiB, sampled, with confidence intervals and
//! throughput; its reports go to the target directory's `criterion/ingest`).
//!
//! Run: `cargo bench -p shoal-benches --bench ingest` (env `SHOAL_BENCH_MIB`, default 512;
//! `SHOAL_BENCH_DIR`, default /dev/shm).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use sha2::{Digest as _, Sha256};
use shoal_daemon::store::Store;
use shoal_proto::Digest;

const PIECE: usize = 1 << 20; // what the network hands the writer at a time, roughly
const RUNS: usize = 5;
const CHUNK_SIZES_KIB: [u32; 6] = [256, 512, 1024, 2048, 4096, 16384];
/// The criterion pass's blob: 512 MiB per iteration would make its sampling take minutes.
const CRITERION_MIB: usize = 64;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    time_inner(|| {
        let t = Instant::now();
        f();
        t.elapsed()
    })
}

/// For closures that time their own measured part (and clean up outside it).
fn time_inner(mut f: impl FnMut() -> Duration) -> Duration {
    f(); // warm-up (page cache, allocator)
    median((0..RUNS).map(|_| f()).collect())
}

/// Begins an ingest and writes `data` in network-sized pieces.
fn ingest_all(store: &Arc<Store>, digest: Digest, data: &[u8]) -> shoal_daemon::store::Ingest {
    let mut ingest = store
        .begin_ingest(digest, data.len() as u64, None)
        .expect("ingest");
    for p in data.chunks(PIECE) {
        ingest.write(p).expect("write");
    }
    ingest
}

fn main() {
    // Cargo passes `--bench`; ignore arguments.
    let mib: usize = std::env::var("SHOAL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let data: Vec<u8> = (0..mib * PIECE)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7])
        .collect();
    let digest = Digest::from_sha256_bytes(Sha256::digest(&data).into());
    // tmpfs by default: the ingest target is about CPU cost, and a real disk adds its
    // writeback noise. Set SHOAL_BENCH_DIR to a disk path to include it.
    let bench_dir = std::env::var("SHOAL_BENCH_DIR").unwrap_or_else(|_| {
        if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            std::env::temp_dir().display().to_string()
        }
    });
    let gbps = |d: Duration| data.len() as f64 / d.as_secs_f64() / 1e9;

    let sha = time(|| {
        let mut h = Sha256::new();
        for p in data.chunks(PIECE) {
            h.update(p);
        }
        std::hint::black_box(h.finalize());
    });
    let blake = time(|| {
        for c in data.chunks(4 << 20) {
            std::hint::black_box(blake3::hash(c));
        }
    });

    println!("| case | median | GB/s | ratio to sha256 alone |");
    println!("|---|---|---|---|");
    println!(
        "| sha256 alone (reference) | {:.0} ms | {:.2} | 1.00 |",
        sha.as_secs_f64() * 1e3,
        gbps(sha)
    );
    println!(
        "| BLAKE3 alone, 4 MiB chunks | {:.0} ms | {:.2} | {:.2} |",
        blake.as_secs_f64() * 1e3,
        gbps(blake),
        blake.as_secs_f64() / sha.as_secs_f64()
    );
    for chunk_kib in CHUNK_SIZES_KIB {
        let dir = tempfile::tempdir_in(&bench_dir).expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), chunk_kib * 1024, 0).expect("store"));
        // Hash + write to the staging file (page cache), then the verified commit.
        let write_only = time_inner(|| {
            let t = Instant::now();
            let mut ingest = ingest_all(&store, digest, &data);
            let elapsed = t.elapsed();
            ingest.discard();
            elapsed
        });
        let with_commit = time_inner(|| {
            let t = Instant::now();
            let ingest = ingest_all(&store, digest, &data);
            ingest.commit().expect("commit");
            let elapsed = t.elapsed();
            // Remove it again so the next run ingests afresh.
            store.remove(&digest).expect("remove");
            elapsed
        });
        for (label, d) in [
            ("ingest (hash + write)", write_only),
            ("ingest + commit (fsync, rename)", with_commit),
        ] {
            println!(
                "| {label}, {chunk_kib} KiB chunks | {:.0} ms | {:.2} | {:.2} |",
                d.as_secs_f64() * 1e3,
                gbps(d),
                d.as_secs_f64() / sha.as_secs_f64()
            );
        }
    }
    println!("\n{mib} MiB blob, {PIECE} B writes, median of {RUNS} runs after one warm-up, store in {bench_dir}.\n");
    criterion_pass(
        &data[..(CRITERION_MIB * PIECE).min(data.len())],
        digest,
        &bench_dir,
    );
}

/// sha256 alone and the ingest at each chunk size in one criterion group, so the
/// reference and the candidates are sampled in the same run.
fn criterion_pass(data: &[u8], digest: Digest, bench_dir: &str) {
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("sha256 alone", |b| {
        b.iter(|| {
            let mut h = Sha256::new();
            for p in data.chunks(PIECE) {
                h.update(p);
            }
            std::hint::black_box(h.finalize())
        })
    });
    for chunk_kib in CHUNK_SIZES_KIB {
        let dir = tempfile::tempdir_in(bench_dir).expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), chunk_kib * 1024, 0).expect("store"));
        group.bench_with_input(
            BenchmarkId::new("hash + write, chunk KiB", chunk_kib),
            &chunk_kib,
            // Timed up to the last write, as in the table: deleting the staging file
            // afterwards (not part of an ingest, whose file is renamed into place) freed
            // 64 MiB of tmpfs pages in 9.3 ms here, a quarter of sha256's time.
            |b, _| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let mut ingest = ingest_all(&store, digest, data);
                        spent += t.elapsed();
                        ingest.discard();
                    }
                    spent
                })
            },
        );
    }
    group.finish();
    c.final_summary();
}
