//! Wire types for shoal: content digests, repository names and chunk indexes.
//!
//! This crate does no I/O and pulls in no runtime, so every decoder in it can be
//! fuzzed and unit-tested in isolation. Everything here parses untrusted input
//! (HTTP paths, peer messages) and therefore returns errors, never panics.
//!
//! # Layout
//! - [`digest`]: `sha256:<hex>` OCI digests.
//! - [`name`]: OCI repository names, validated against the distribution spec grammar.
//! - [`chunk`]: chunk geometry (how a blob is cut into fixed-size chunks) and the
//!   per-chunk BLAKE3 chunk index.
//! - [`oci`]: image references (`registry/repo:tag@digest`), manifests, descriptors and
//!   platforms, for walking a model down to its blobs.
//! - [`size`]: `512MiB`-style byte sizes for flags and config files.
//! - [`control`]: the control API's JSON bodies (`shoal` ↔ `shoald`).
//! - [`wire`]: the peer protocol (framing, messages, versioning, security); its module
//!   docs are the protocol's specification.
#![deny(missing_docs)]

pub mod chunk;
pub mod control;
pub mod digest;
pub mod name;
pub mod oci;
pub mod size;
pub mod wire;

pub use chunk::{ChunkHash, ChunkIndex, ChunkLayout, DEFAULT_CHUNK_SIZE};
pub use digest::{Digest, DigestError};
pub use name::{validate_repository_name, NameError};
