//! Peer-protocol encode/decode and reference parsing (criterion).
//!
//! ```sh
//! cargo bench -p shoal-benches --bench proto
//! ```
//!
//! The messages that matter for throughput: `ChunkData` headers and `Have`s (one per
//! chunk per peer), a `HaveMap` and an `Index` of a 5 GB blob (1192 chunks of 4 MiB: what
//! a node sends on every interest link and index request). Reference: copying the same
//! bytes (`memcpy`), reported alongside.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shoal_proto::oci::Reference;
use shoal_proto::wire::Message;
use shoal_proto::{ChunkHash, ChunkIndex, ChunkLayout, Digest};

fn digest(n: u8) -> Digest {
    Digest::from_sha256_bytes([n; 32])
}

fn samples() -> Vec<(&'static str, Message)> {
    let layout = ChunkLayout::new(5_000_000_000, 4 << 20);
    let count = layout.count() as usize;
    vec![
        (
            "chunk_data_header",
            Message::ChunkData {
                digest: digest(1),
                chunk: 7,
                len: 4 << 20,
            },
        ),
        (
            "have",
            Message::Have {
                digest: digest(2),
                chunk: 1000,
            },
        ),
        (
            "have_map_5GB",
            Message::HaveMap {
                digest: digest(3),
                layout: Some(layout),
                bitfield: vec![0b1010_1010; count.div_ceil(8)],
            },
        ),
        (
            "index_5GB",
            Message::Index {
                digest: digest(4),
                index: ChunkIndex {
                    layout,
                    hashes: (0..count).map(|i| ChunkHash([i as u8; 32])).collect(),
                },
            },
        ),
    ]
}

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    for (name, msg) in samples() {
        let bytes = msg.to_bytes();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &msg, |b, m| {
            let mut out = Vec::with_capacity(bytes.len());
            b.iter(|| {
                out.clear();
                black_box(m).encode(&mut out);
                black_box(out.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &bytes, |b, buf| {
            b.iter(|| Message::decode(black_box(buf)).map(|m| m.map(|(_, n)| n)))
        });
        group.bench_with_input(BenchmarkId::new("memcpy", name), &bytes, |b, buf| {
            let mut out = vec![0u8; buf.len()];
            b.iter(|| {
                out.copy_from_slice(black_box(buf));
                black_box(out[0])
            })
        });
    }
    group.finish();
}

fn references(c: &mut Criterion) {
    let d = format!("sha256:{}", "ab".repeat(32));
    let inputs = [
        ("short", "ubuntu".to_owned()),
        ("tagged", "ghcr.io/org/models/llama-3-70b:v1.2".to_owned()),
        ("digest", format!("registry.example.com:5000/a/b/c@{d}")),
    ];
    let mut group = c.benchmark_group("reference_parse");
    for (name, s) in &inputs {
        group.bench_with_input(BenchmarkId::from_parameter(name), s, |b, s| {
            b.iter(|| {
                black_box(s)
                    .parse::<Reference>()
                    .map(|r| r.repository.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, wire, references);
criterion_main!(benches);
