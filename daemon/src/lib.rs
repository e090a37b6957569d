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
//!   number of local readers follow. Today its only source is the origin; peers
//!   (issue 3) become a second source here.
//! - [`upstream`]: the origin registry client (auth, token flow, redirects, retries).
//! - [`net`]: peer networking: node identity, and the authenticated QUIC chunk-transfer
//!   endpoint (serving side and client; discovery and the swarm driver are not yet in).
//! - [`config`], [`metrics`], [`daemon`]: flags/TOML/env, Prometheus, wiring.
#![deny(missing_docs)]

pub mod config;
pub mod daemon;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod store;
pub mod swarm;
pub mod upstream;
