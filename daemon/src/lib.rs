//! shoald: the shoal node daemon.
//!
//! One `shoald` per node serves the node's container runtime as a registry mirror and
//! keeps a chunked, verified content store. See `../shared/DESIGN.md` and the README.
//!
//! # Layout
//!
//! Follow a request through the folders:
//!
//! - [`mirror`]: the OCI distribution (pull) HTTP endpoint containerd talks to. Path
//!   parsing and validation ([`mirror::path`]), Range ([`mirror::range`]), OCI error
//!   bodies ([`mirror::error`]), manifest and blob handlers.
//! - [`store`]: blobs on disk as fixed-size chunks, sha256-verified before commit,
//!   resumable partials, the sled index and its rebuild from the data files, LRU quota.
//! - [`swarm`]: getting what the store lacks. One shared download per digest that any
//!   number of local readers follow. Without peers it streams from the origin
//!   (`swarm/fetch.rs`); with them `swarm/driver.rs` runs the sans-IO
//!   [`swarm::scheduler`] over peer links (`swarm/links.rs`) and ranged origin GETs,
//!   with one writer thread per download (`swarm/writer.rs`); `swarm/partial.rs` lets
//!   peers read the chunks a running download already has.
//! - [`upstream`]: the origin registry client (auth, token flow, redirects, retries).
//! - [`net`]: peer networking: node identity, libp2p discovery ([`net::discovery`]:
//!   Kademlia, identify, mDNS), the authenticated QUIC chunk-transfer endpoint
//!   ([`net::transfer`], its TLS in [`net::tls`]) and bandwidth limits ([`net::rate`]).
//! - [`control`]: the control API the `shoal` CLI drives (unix socket, optional TCP):
//!   status, listings, pin, preheat (here and on peers), GC, import. Model-wide work
//!   walks a reference through this node's own mirror (`control/walk.rs`).
//! - [`config`], [`metrics`], [`daemon`]: flags/TOML/env, Prometheus, wiring.
//! - `buffers` (crate-private): the pooled chunk and piece buffers the transfer, swarm
//!   and mirror paths read into, so moving a chunk does not map fresh memory.
#![deny(missing_docs)]

mod buffers;
pub mod config;
pub mod control;
pub mod daemon;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod store;
pub mod swarm;
pub mod upstream;
