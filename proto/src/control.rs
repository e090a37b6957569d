//! The control API's request and response bodies (HTTP+JSON between `shoal` and `shoald`).
//!
//! The endpoints, all under `/v1/`, are documented in the `shoal-client` crate, which is
//! the reference client. Every error is an [`ApiError`] body with a non-2xx status.

use crate::Digest;

/// The body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiError {
    /// Stable machine-readable kind.
    pub code: ErrorCode,
    /// One line for a human: what went wrong and what to do.
    pub message: String,
}

/// What kind of failure an [`ApiError`] is; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request is malformed (bad reference, bad digest, bad body).
    BadRequest,
    /// Missing or wrong bearer token on a TCP control address.
    Unauthorized,
    /// The reference, tag or blob does not exist (at the origin or here).
    NotFound,
    /// The origin registry could not be reached and no peer had the content.
    UpstreamUnreachable,
    /// The disk or the store quota is full.
    DiskFull,
    /// Content did not match its digest.
    DigestMismatch,
    /// A timeout elapsed.
    Timeout,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    /// The kind of failure a registry (or shoald's mirror) answer of `status` means.
    pub fn for_registry_status(status: u16) -> ErrorCode {
        match status {
            400 => ErrorCode::BadRequest,
            404 => ErrorCode::NotFound,
            502..=504 => ErrorCode::UpstreamUnreachable,
            507 => ErrorCode::DiskFull,
            _ => ErrorCode::Internal,
        }
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// This node's PeerId.
    pub node_id: String,
    /// shoald version.
    pub version: String,
    /// The registry-mirror HTTP address.
    pub mirror_addr: String,
    /// The peer chunk-transfer (QUIC) address, when the swarm is on.
    pub transfer_addr: Option<String>,
    /// libp2p listen addresses, when the swarm is on.
    pub p2p_addrs: Vec<String>,
    /// Peers currently known to discovery.
    pub peers: usize,
    /// Store bytes in use (committed and reserved).
    pub store_used: u64,
    /// Store quota in bytes (0: unlimited).
    pub store_quota: u64,
    /// Downloads running now.
    pub transfers: Vec<Transfer>,
    /// Blob bytes received from peers since start.
    pub bytes_from_peers: u64,
    /// Blob bytes received from origin registries since start.
    pub bytes_from_origin: u64,
    /// Bytes served to local clients since start.
    pub bytes_served: u64,
}

/// One running download.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    /// Blob.
    pub digest: Digest,
    /// Blob size, once known.
    pub size: Option<u64>,
    /// Bytes written so far.
    pub done: u64,
}

/// One entry of `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    /// The peer's PeerId.
    pub node_id: String,
    /// Its chunk-transfer address.
    pub transfer_addr: String,
}

/// `GET /v1/ls`: what the node holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    /// Tagged models and images this node has resolved or imported.
    pub models: Vec<Model>,
    /// Every committed blob.
    pub blobs: Vec<Blob>,
    /// Downloads interrupted or running, with how much is present.
    pub partial: Vec<PartialBlob>,
}

/// A tag the node knows, and how much of what it names is here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Model {
    /// `registry/repository:tag` (the registry as dialled, e.g. `registry-1.docker.io`).
    pub reference: String,
    /// Manifest (or index) digest.
    pub digest: Digest,
    /// Manifest media type.
    pub media_type: String,
    /// Bytes of every blob the manifest tree names (for an index, of the platforms held).
    pub size: u64,
    /// Bytes of those blobs present here.
    pub present: u64,
    /// True when every blob of the tree (of at least one platform) is here.
    pub complete: bool,
    /// Pinned with `shoal pin`.
    pub pinned: bool,
}

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Blob {
    /// Digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Media type, when known.
    pub media_type: Option<String>,
    /// Never evicted while set.
    pub pinned: bool,
    /// Unix seconds of the last read.
    pub last_used: u64,
}

/// A download that is not complete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartialBlob {
    /// Digest.
    pub digest: Digest,
    /// Full size.
    pub size: u64,
    /// Bytes present and verified by chunk.
    pub present: u64,
}

/// `POST /v1/pin` and `POST /v1/unpin`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinRequest {
    /// Image or model reference.
    pub reference: String,
}

/// What a pin or unpin changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinReport {
    /// The normalised reference.
    pub reference: String,
    /// Manifest digest it resolved to.
    pub digest: Digest,
    /// Blobs pinned (pin) or released (unpin; blobs another pin holds stay pinned).
    pub blobs: Vec<Digest>,
    /// Their total size.
    pub bytes: u64,
}

/// `POST /v1/preheat`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreheatRequest {
    /// Image or model reference.
    pub reference: String,
    /// Node ids to preheat; empty with `all` false: this node only.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Every node this one knows of, and itself.
    #[serde(default)]
    pub all: bool,
}

/// Progress of a preheat on each node. Posting the same request again is how a
/// client polls: a node already fetching the reference just reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreheatReport {
    /// The normalised reference.
    pub reference: String,
    /// One entry per node asked.
    pub nodes: Vec<NodePreheat>,
}

/// One node's preheat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodePreheat {
    /// PeerId.
    pub node_id: String,
    /// Where it stands.
    pub state: PreheatState,
    /// Bytes of the model present.
    pub done: u64,
    /// Bytes of the model (0 until its manifest is read).
    pub total: u64,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A preheat's state on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreheatState {
    /// Fetching.
    Running,
    /// Everything is in the node's store.
    Done,
    /// Gave up; see `error`.
    Failed,
    /// The node could not be asked.
    Unreachable,
}

impl PreheatState {
    /// The wire code (`PreheatStatus` message).
    pub fn code(self) -> u8 {
        match self {
            PreheatState::Running => 0,
            PreheatState::Done => 1,
            PreheatState::Failed => 2,
            PreheatState::Unreachable => 3,
        }
    }

    /// From the wire code.
    pub fn from_code(code: u8) -> Option<PreheatState> {
        Some(match code {
            0 => PreheatState::Running,
            1 => PreheatState::Done,
            2 => PreheatState::Failed,
            3 => PreheatState::Unreachable,
            _ => return None,
        })
    }

    /// True once nothing more will happen.
    pub fn is_final(self) -> bool {
        self != PreheatState::Running
    }
}

/// `POST /v1/gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcRequest {
    /// Report what would go, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Evict down to this many bytes instead of the quota.
    #[serde(default)]
    pub target: Option<u64>,
}

/// What a GC removed (or would remove).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Bytes in use before.
    pub used_before: u64,
    /// Bytes in use after (or that would be).
    pub used_after: u64,
    /// The byte target evicted down to.
    pub target: u64,
    /// Evicted blobs, least recently used first.
    pub evicted: Vec<Blob>,
}

/// `PUT /v1/tags`: record that a reference names a manifest held here (`shoal import`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagRequest {
    /// `registry/repository:tag`.
    pub reference: String,
    /// Manifest digest; the manifest must already be in the store.
    pub digest: Digest,
}

/// Answer to `PUT /v1/blobs/<digest>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobStored {
    /// Digest, verified.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// False when the blob was already present (the body was not needed).
    pub written: bool,
}
