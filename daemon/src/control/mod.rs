//! The control API: HTTP+JSON for the `shoal` CLI, on a unix socket (file permissions
//! are the access control) and optionally on a TCP address (a bearer token, the cluster
//! secret, is required off loopback).
//!
//! Endpoints (bodies in [`shoal_proto::control`]; the client crate documents them for
//! users):
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/status` | node id, addresses, peers, store use, running transfers |
//! | `GET /v1/peers` | known peers |
//! | `GET /v1/ls` | tagged models, blobs, partial downloads |
//! | `POST /v1/pin`, `POST /v1/unpin` | pin (fetching what is missing) or unpin a reference |
//! | `POST /v1/preheat` | start or poll a preheat on this node and/or peers |
//! | `POST /v1/gc` | evict unpinned blobs down to the quota (or a target) |
//! | `HEAD/PUT /v1/blobs/<digest>` | has / store a blob (`shoal import`), verified |
//! | `PUT /v1/tags` | record a tag for a stored manifest (`shoal import`) |

mod import;
mod preheat;
mod walk;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use shoal_proto::control::{
    self as api, ApiError, ErrorCode, GcReport, GcRequest, Listing, NodePreheat, PinReport,
    PinRequest, PreheatReport, PreheatRequest, PreheatState,
};
use shoal_proto::oci::{Manifest, Platform, Reference};
use shoal_proto::Digest;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::net::discovery::Discovery;
use crate::net::transfer::Transfer;
use crate::store::{PinRecord, Store, StoreError};
use crate::swarm::Downloads;
use crate::upstream::Target;

pub(crate) use walk::Walker;

/// A control request that failed; rendered as an [`ApiError`] body.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Unknown reference, tag or blob.
    #[error("{0}")]
    NotFound(String),
    /// The origin could not be reached and no peer had it.
    #[error("{0}")]
    UpstreamUnreachable(String),
    /// Out of disk or quota.
    #[error("{0}")]
    DiskFull(String),
    /// Content did not match its digest.
    #[error("{0}")]
    DigestMismatch(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// The error of kind `code`, saying `message`.
    pub fn from_code(code: ErrorCode, message: String) -> ControlError {
        match code {
            ErrorCode::BadRequest => ControlError::BadRequest(message),
            ErrorCode::NotFound => ControlError::NotFound(message),
            ErrorCode::UpstreamUnreachable => ControlError::UpstreamUnreachable(message),
            ErrorCode::DiskFull => ControlError::DiskFull(message),
            ErrorCode::DigestMismatch => ControlError::DigestMismatch(message),
            ErrorCode::Unauthorized | ErrorCode::Timeout | ErrorCode::Internal => {
                ControlError::Internal(message)
            }
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            e if e.is_out_of_space() => ControlError::DiskFull(e.to_string()),
            e @ StoreError::DigestMismatch { .. } | e @ StoreError::SizeMismatch { .. } => {
                ControlError::DigestMismatch(e.to_string())
            }
            e => ControlError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ControlError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ControlError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ControlError::UpstreamUnreachable(_) => {
                (StatusCode::BAD_GATEWAY, ErrorCode::UpstreamUnreachable)
            }
            ControlError::DiskFull(_) => (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::DiskFull),
            ControlError::DigestMismatch(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::DigestMismatch)
            }
            ControlError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        let body = ApiError {
            code,
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// Everything the control API reaches into.
pub struct Control {
    pub(crate) store: Arc<Store>,
    pub(crate) downloads: Downloads,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) network: Option<(Arc<Transfer>, Arc<Discovery>)>,
    pub(crate) node_id: String,
    pub(crate) mirror_addr: std::net::SocketAddr,
    pub(crate) default_upstream: String,
    pub(crate) walker: Walker,
    pub(crate) preheats: Arc<preheat::Preheats>,
}

impl Control {
    /// Wires the control API to the daemon's parts, and lets peers ask for preheats.
    pub(crate) fn new(
        store: Arc<Store>,
        downloads: Downloads,
        metrics: Arc<Metrics>,
        network: Option<(Arc<Transfer>, Arc<Discovery>)>,
        node_id: String,
        mirror_addr: std::net::SocketAddr,
        default_upstream: String,
    ) -> Control {
        let walker = Walker::new(mirror_addr, store.clone());
        let preheats = Arc::new(preheat::Preheats::new(node_id.clone(), walker.clone()));
        if let Some((transfer, _)) = &network {
            transfer.set_preheater(preheats.clone());
        }
        Control {
            store,
            downloads,
            metrics,
            network,
            node_id,
            mirror_addr,
            default_upstream,
            walker,
            preheats,
        }
    }

    /// The store key of a reference's tag or digest, as the mirror keys tags.
    fn pin_key(&self, reference: &Reference) -> String {
        let target = Target::resolve(
            Some(&reference.registry),
            &self.default_upstream,
            &reference.repository,
        );
        match (&reference.tag, &reference.digest) {
            (_, Some(d)) => format!("{}/{}@{d}", target.host, target.repo),
            (Some(t), None) => target.tag_key(t),
            (None, None) => target.tag_key("latest"),
        }
    }
}

/// The router. `token`: the bearer token every request must carry (TCP listeners).
pub fn router(control: Arc<Control>, token: Option<String>) -> Router {
    let router = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/ls", get(ls))
        .route("/v1/pin", post(pin))
        .route("/v1/unpin", post(unpin))
        .route("/v1/preheat", post(preheat))
        .route("/v1/gc", post(gc))
        .route(
            "/v1/blobs/{digest}",
            axum::routing::head(import::has_blob).put(import::put_blob),
        )
        .route("/v1/tags", axum::routing::put(import::put_tag))
        .fallback(|| async {
            ControlError::NotFound("no such control endpoint; see `shoal --help`".into())
        })
        .layer(axum::middleware::from_fn(observe))
        .with_state(control);
    match token {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        )),
        None => router,
    }
}

async fn observe(req: Request, next: Next) -> Response {
    let span = tracing::info_span!("control", method = %req.method(), path = %req.uri().path());
    let resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), "control request"));
    resp
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    let body = ApiError {
        code: ErrorCode::Unauthorized,
        message: "this control address needs `Authorization: Bearer <cluster secret>` (shoal --token-file)".into(),
    };
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_reference(s: &str) -> Result<Reference, ControlError> {
    s.parse()
        .map_err(|e: shoal_proto::oci::ReferenceError| ControlError::BadRequest(e.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?
}

async fn status(State(c): State<Arc<Control>>) -> Result<Json<api::Status>, ControlError> {
    let (transfer_addr, p2p_addrs, peers) = match &c.network {
        Some((t, d)) => (
            t.local_addr().ok().map(|a| a.to_string()),
            d.listen_addrs()
                .await
                .iter()
                .map(|a| a.to_string())
                .collect(),
            d.peers().await.len(),
        ),
        None => (None, Vec::new(), 0),
    };
    let store = c.store.clone();
    let partial = blocking(move || Ok(store.partials()?)).await?;
    let transfers = c
        .downloads
        .active()
        .into_iter()
        .map(|(digest, size, available)| {
            let present = partial
                .iter()
                .find(|(d, _, _)| *d == digest)
                .map_or(0, |(_, _, p)| *p);
            api::Transfer {
                digest,
                size,
                done: available.max(present),
            }
        })
        .collect();
    Ok(Json(api::Status {
        node_id: c.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        mirror_addr: c.mirror_addr.to_string(),
        transfer_addr,
        p2p_addrs,
        peers,
        store_used: c.store.used_bytes(),
        store_quota: c.store.quota(),
        transfers,
        bytes_from_peers: c.metrics.peer_bytes.get(),
        bytes_from_origin: c.metrics.upstream_bytes.get(),
        bytes_served: c.metrics.served_bytes.get(),
    }))
}

async fn peers(State(c): State<Arc<Control>>) -> Json<Vec<api::Peer>> {
    let peers = match &c.network {
        Some((_, d)) => d
            .peers()
            .await
            .into_iter()
            .map(|p| api::Peer {
                node_id: p.peer.to_string(),
                transfer_addr: p.transfer.to_string(),
            })
            .collect(),
        None => Vec::new(),
    };
    Json(peers)
}

fn blob_info(store: &Store, record: &crate::store::BlobRecord) -> api::Blob {
    api::Blob {
        digest: record.digest,
        size: record.size(),
        media_type: record.media_type.clone(),
        pinned: record.pinned,
        last_used: store
            .last_access(&record.digest)
            .ok()
            .flatten()
            .unwrap_or(0),
    }
}

async fn ls(State(c): State<Arc<Control>>) -> Result<Json<Listing>, ControlError> {
    let store = c.store.clone();
    let listing = blocking(move || {
        let mut blobs: Vec<api::Blob> =
            store.list()?.iter().map(|r| blob_info(&store, r)).collect();
        blobs.sort_by_key(|b| std::cmp::Reverse(b.last_used));
        let pinned: std::collections::HashSet<String> =
            store.pins()?.into_iter().map(|(k, _)| k).collect();
        let mut models: Vec<api::Model> = store
            .tags()?
            .into_iter()
            .filter_map(|(key, tag)| {
                let (size, present, complete) = local_tree(&store, tag.digest)?;
                Some(api::Model {
                    pinned: pinned.contains(&key),
                    reference: key,
                    digest: tag.digest,
                    media_type: tag.media_type,
                    size,
                    present,
                    complete,
                })
            })
            .collect();
        models.sort_by(|a, b| a.reference.cmp(&b.reference));
        let partial = store
            .partials()?
            .into_iter()
            .map(|(digest, size, present)| api::PartialBlob {
                digest,
                size,
                present,
            })
            .collect();
        Ok(Listing {
            models,
            blobs,
            partial,
        })
    })
    .await?;
    Ok(Json(listing))
}

/// How much of a manifest tree is here: (bytes named, bytes present, complete).
/// For an index, the children present here count (a node holds its own platform).
/// `None` when the top manifest itself is not here.
fn local_tree(store: &Store, digest: Digest) -> Option<(u64, u64, bool)> {
    let read = |d: Digest| -> Option<Manifest> {
        let bytes = store.read_small(&d, 4 << 20).ok().flatten()?;
        serde_json::from_slice(&bytes).ok()
    };
    let top = read(digest)?;
    let manifests: Vec<Manifest> = if top.is_index("") {
        top.manifests
            .iter()
            .filter_map(|d| read(d.digest))
            .collect()
    } else {
        vec![top]
    };
    let (mut size, mut present, mut complete) = (0, 0, false);
    for m in &manifests {
        let mut whole = true;
        for blob in m.blobs() {
            size += blob.size;
            if store.get(&blob.digest).ok().flatten().is_some() {
                present += blob.size;
            } else {
                whole = false;
            }
        }
        complete |= whole;
    }
    Some((size, present, complete))
}

async fn pin(
    State(c): State<Arc<Control>>,
    Json(req): Json<PinRequest>,
) -> Result<Json<PinReport>, ControlError> {
    let reference = parse_reference(&req.reference)?;
    let tree = c.walker.resolve(&reference, &Platform::host()).await?;
    c.walker
        .fetch(&reference, &tree, &walk::WalkProgress::default())
        .await?;
    let key = c.pin_key(&reference);
    let record = PinRecord {
        digest: tree.digest,
        blobs: tree.all_digests(),
    };
    let store = c.store.clone();
    let (k, r) = (key.clone(), record.clone());
    blocking(move || Ok(store.pin(&k, &r)?)).await?;
    tracing::info!(reference = %key, blobs = record.blobs.len(), "pinned");
    Ok(Json(PinReport {
        reference: key,
        digest: tree.digest,
        bytes: tree.blob_bytes(),
        blobs: record.blobs,
    }))
}

async fn unpin(
    State(c): State<Arc<Control>>,
    Json(req): Json<PinRequest>,
) -> Result<Json<PinReport>, ControlError> {
    let reference = parse_reference(&req.reference)?;
    let key = c.pin_key(&reference);
    let store = c.store.clone();
    let k = key.clone();
    let released = blocking(move || {
        let Some((record, released)) = store.unpin(&k)? else {
            return Err(ControlError::NotFound(format!(
                "{k} is not pinned (see `shoal ls`)"
            )));
        };
        let bytes = released
            .iter()
            .filter_map(|d| store.get(d).ok().flatten())
            .map(|r| r.size())
            .sum();
        Ok((record.digest, released, bytes))
    })
    .await?;
    tracing::info!(reference = %key, "unpinned");
    Ok(Json(PinReport {
        reference: key,
        digest: released.0,
        blobs: released.1,
        bytes: released.2,
    }))
}

async fn preheat(
    State(c): State<Arc<Control>>,
    Json(req): Json<PreheatRequest>,
) -> Result<Json<PreheatReport>, ControlError> {
    let reference = parse_reference(&req.reference)?;
    let known = match &c.network {
        Some((_, d)) => d.peers().await,
        None => Vec::new(),
    };
    let targets: Vec<String> = if req.all {
        std::iter::once(c.node_id.clone())
            .chain(known.iter().map(|p| p.peer.to_string()))
            .collect()
    } else if req.nodes.is_empty() {
        vec![c.node_id.clone()]
    } else {
        req.nodes.clone()
    };
    let asks = targets.into_iter().map(|node| {
        let c = c.clone();
        let reference = reference.clone();
        let peer = known.iter().find(|p| p.peer.to_string() == node).cloned();
        async move {
            if node == c.node_id {
                return c.preheats.ensure(&reference);
            }
            let unreachable = |why: String| NodePreheat {
                node_id: node.clone(),
                state: PreheatState::Unreachable,
                done: 0,
                total: 0,
                error: Some(why),
            };
            let (Some(peer), Some((transfer, _))) = (peer, &c.network) else {
                return unreachable("not a known peer of this node (see `shoal peers`)".into());
            };
            let asked = async {
                let conn = transfer.connection(peer.transfer, peer.peer).await?;
                conn.preheat(&reference.to_string()).await
            };
            match tokio::time::timeout(std::time::Duration::from_secs(10), asked).await {
                Ok(Ok((state, done, total, message))) => NodePreheat {
                    node_id: node.clone(),
                    state: PreheatState::from_code(state).unwrap_or(PreheatState::Failed),
                    done,
                    total,
                    error: (!message.is_empty()).then_some(message),
                },
                Ok(Err(e)) => unreachable(e.to_string()),
                Err(_) => unreachable("no answer within 10 s".into()),
            }
        }
    });
    let nodes = futures::future::join_all(asks).await;
    Ok(Json(PreheatReport {
        reference: reference.to_string(),
        nodes,
    }))
}

async fn gc(
    State(c): State<Arc<Control>>,
    Json(req): Json<GcRequest>,
) -> Result<Json<GcReport>, ControlError> {
    let store = c.store.clone();
    let report = blocking(move || {
        let used_before = store.used_bytes();
        let target = match (req.target, store.quota()) {
            (Some(t), _) => t,
            (None, 0) => used_before,
            (None, quota) => quota,
        };
        let evicted: Vec<api::Blob> = store
            .gc(target, req.dry_run)?
            .into_iter()
            .map(|(record, last_used)| api::Blob {
                last_used,
                ..blob_info(&store, &record)
            })
            .collect();
        let freed: u64 = evicted.iter().map(|b| b.size).sum();
        Ok(GcReport {
            dry_run: req.dry_run,
            used_before,
            used_after: used_before.saturating_sub(freed),
            target,
            evicted,
        })
    })
    .await?;
    Ok(Json(report))
}
