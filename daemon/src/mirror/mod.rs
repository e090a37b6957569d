//! The registry-mirror HTTP endpoint (OCI distribution spec, pull side).
//!
//! containerd sends `GET/HEAD /v2/<name>/manifests/<ref>?ns=<registry>` and
//! `/v2/<name>/blobs/<digest>`; if the mirror answers an error it silently falls back
//! to the next host, so every answer here must be exact: status codes, headers and
//! OCI error bodies. Requests flow `mirror` → `store` (hit) or `swarm` (miss) → `upstream`.

mod blobs;
pub mod error;
mod manifests;
pub mod path;
pub mod prefetch;
pub mod range;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::header::{ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tracing::Instrument;

use crate::metrics::{Metrics, RequestLabels};
use crate::store::Store;
use crate::swarm::Downloads;
use crate::upstream::{Target, Upstream, UpstreamRequest};
use error::ApiError;
use path::Route;

/// `Docker-Content-Digest`.
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Everything a mirror request needs.
pub struct Mirror {
    /// Content store.
    pub store: Arc<Store>,
    /// Origin client.
    pub upstream: Arc<Upstream>,
    /// Running downloads.
    pub downloads: Downloads,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Upstream for requests without `?ns=`.
    pub default_upstream: String,
    /// How long a tag resolution is trusted.
    pub tag_ttl: Duration,
    /// Serve the last known tag digest when the upstream is down.
    pub stale_if_error: bool,
    /// Starts an image's other blobs when a pull of it begins. See `prefetch.rs`.
    pub prefetch: prefetch::Prefetch,
}

/// The HTTP router: `/v2/...`, `/metrics`, `/healthz`.
pub fn router(mirror: Arc<Mirror>) -> Router {
    ops_routes()
        .fallback(handle)
        .layer(axum::middleware::from_fn_with_state(
            mirror.clone(),
            observe,
        ))
        .with_state(mirror)
}

fn ops_routes() -> Router<Arc<Mirror>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
}

/// `/metrics` and `/healthz` alone, for `--metrics-addr`.
pub fn ops_router(mirror: Arc<Mirror>) -> Router {
    ops_routes().with_state(mirror)
}

async fn metrics(State(m): State<Arc<Mirror>>) -> Response {
    m.metrics
        .store_bytes
        .set(i64::try_from(m.store.used_bytes()).unwrap_or(i64::MAX));
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.metrics.encode(),
    )
        .into_response()
}

/// Route label carried from the handler to the metrics middleware.
#[derive(Clone, Copy)]
struct RouteLabel(&'static str);

/// One span, one log line and one metrics sample per request.
async fn observe(State(m): State<Arc<Mirror>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", %method, %path);
    let started = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map_or("other", |r| r.0);
    let status = resp.status();
    m.metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method: method.to_string(),
            status: status.as_u16(),
        })
        .inc();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::info!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request"
            );
        }
    });
    resp
}

async fn handle(State(m): State<Arc<Mirror>>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let route = path::parse(parts.uri.path());
    let label = route.as_ref().map_or("invalid", Route::label);
    let mut resp = match route {
        Ok(route) => dispatch(&m, &parts.method, route, parts.uri.query(), &parts.headers)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp.extensions_mut().insert(RouteLabel(label));
    resp
}

async fn dispatch(
    m: &Arc<Mirror>,
    method: &Method,
    route: Route,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if *method != Method::GET && *method != Method::HEAD || route == Route::Upload {
        return Err(pull_only(method));
    }
    let ns = query.and_then(|q| form_param(q, "ns"));
    if let Some(ns) = &ns {
        path::validate_ns(ns)?;
    }
    let target = |name: &str| Target::resolve(ns.as_deref(), &m.default_upstream, name);
    match route {
        Route::Base => Ok(([(CONTENT_TYPE, "application/json")], "{}").into_response()),
        Route::Manifest { name, reference } => {
            manifests::serve(m, method, &target(&name), reference, headers).await
        }
        Route::Blob { name, digest } => {
            blobs::serve(m, method, &target(&name), digest, headers).await
        }
        Route::Referrers { name, digest } => {
            passthrough(
                m,
                method,
                &target(&name),
                format!("referrers/{digest}"),
                without_ns(query),
                headers,
            )
            .await
        }
        Route::TagList { name } => {
            passthrough(
                m,
                method,
                &target(&name),
                "tags/list".into(),
                without_ns(query),
                headers,
            )
            .await
        }
        Route::Upload => Err(pull_only(method)),
    }
}

/// 405 for anything that would write: a mirror is pull-only.
fn pull_only(method: &Method) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        format!("shoald is a pull-only mirror; {method} is not supported"),
    );
    e.headers
        .push((ALLOW, HeaderValue::from_static("GET, HEAD")));
    e
}

/// The client's `Authorization`, forwarded upstream when present.
pub(crate) fn client_auth(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(AUTHORIZATION).cloned()
}

fn form_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn without_ns(query: Option<&str>) -> Option<String> {
    let q = query?;
    let kept: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(url::form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k != "ns"))
        .finish();
    (!kept.is_empty()).then_some(kept)
}

/// Forwards a read-only endpoint the store does not cache (referrers, tag lists).
async fn passthrough(
    m: &Mirror,
    method: &Method,
    target: &Target,
    path: String,
    query: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let mut fwd = HeaderMap::new();
    if let Some(a) = headers.get(ACCEPT) {
        fwd.insert(ACCEPT, a.clone());
    }
    let req = UpstreamRequest {
        method: method.clone(),
        target,
        path,
        query,
        headers: fwd,
        client_auth: client_auth(headers),
    };
    let resp = m
        .upstream
        .send(&req)
        .await
        .map_err(|e| ApiError::from_upstream(&e, "NAME_UNKNOWN"))?;
    let mut out = Response::builder().status(resp.status().as_u16());
    for name in [
        CONTENT_TYPE,
        http::header::CONTENT_LENGTH,
        http::header::LINK,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out = out.header(name, v.clone());
        }
    }
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(resp.bytes_stream())
    };
    out.body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}
