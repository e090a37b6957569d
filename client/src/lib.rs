//! `shoal`: the command-line client of `shoald`, and a library for its control API.
//!
//! # Control API
//!
//! `shoald` serves HTTP+JSON on a unix socket (`--control-socket`, default
//! `<data-dir>/shoald.sock`, mode 0660) and, with `--control-addr`, on TCP; off
//! loopback every TCP request needs `Authorization: Bearer <cluster secret>`. Bodies are
//! the types in [`shoal_proto::control`]; every error is a non-2xx status with an
//! [`shoal_proto::control::ApiError`] body (`{"code": "NOT_FOUND", "message": "…"}`).
//!
//! | method and path | body → answer |
//! |---|---|
//! | `GET /v1/status` | → `Status`: node id, addresses, peers, store use/quota, running transfers, bytes from peers vs origin |
//! | `GET /v1/peers` | → `[Peer]` |
//! | `GET /v1/ls` | → `Listing`: tagged models (size, present, complete, pinned), blobs, partial downloads |
//! | `POST /v1/pin` | `PinRequest` → `PinReport`; fetches what is missing first |
//! | `POST /v1/unpin` | `PinRequest` → `PinReport` (blobs released) |
//! | `POST /v1/preheat` | `PreheatRequest` → `PreheatReport`; idempotent, post again to poll |
//! | `POST /v1/gc` | `GcRequest` → `GcReport` |
//! | `HEAD /v1/blobs/{digest}` | 200 if stored, 404 if not |
//! | `PUT /v1/blobs/{digest}?size=N&media_type=T` | raw bytes → `BlobStored`; 422 on a digest mismatch |
//! | `PUT /v1/tags` | `TagRequest` → 204; the manifest must be stored |
//!
//! Model bytes do not travel over the control API: `shoal pull` and `shoal export` read
//! them from the node's registry mirror (its address is in `Status`), exactly as
//! containerd does, so they use the node's store and the swarm.
//!
//! # Layout
//!
//! - [`api`]: the control API client ([`api::ControlClient`]), unix socket or TCP.
//! - [`registry`]: reading manifests and blobs through the mirror, platform selection.
//! - [`extract`]: turning layers into files (ModelPack, KitOps, Docker Model Runner,
//!   OMLMD, image tars), confined to the target directory, resumable.
//! - [`layout`]: OCI image layout export and import.
//! - [`containerd`]: `hosts.toml` editing for `shoal containerd-config`.
//! - [`error`]: errors and the CLI's exit codes.
//! - `main.rs` and `cli/`: the commands and how they print.
#![deny(missing_docs)]

pub mod api;
pub mod containerd;
pub mod error;
pub mod extract;
pub mod layout;
pub mod registry;
