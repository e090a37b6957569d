//! Integration tests: the real `shoald` binary against real components (docker-registry,
//! containerd, skopeo), started by the tests. See `common` for the harness.

mod common;

mod auth;
mod cli;
mod containerd_pull;
mod crash;
mod deploy;
mod mirror_protocol;
mod peers;
mod prefetch;
mod shared_download;
mod shoal_cli;
mod swarm;
