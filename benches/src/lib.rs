//! shoal benchmarks. The benchmark programs live in `benches/`; see `benches/RESULTS.md`.
