//! `GET/HEAD /v2/<name>/manifests/<tag|digest>`.
//!
//! By digest, manifests are immutable: served from the store, else fetched once,
//! verified and stored. A tag is resolved upstream with a HEAD and cached for
//! `--tag-ttl`; when the upstream is unreachable the last known digest is served
//! (stale-if-error) so pulls keep working offline.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest as _, Sha256};
use shoal_proto::Digest;

use super::error::ApiError;
use super::path::Reference;
use super::{client_auth, Mirror, DOCKER_CONTENT_DIGEST};
use crate::metrics::ContentKind;
use crate::store::{BlobRecord, TagRecord};
use crate::upstream::{Target, UpstreamError, UpstreamRequest};

/// Manifests larger than this are refused (distribution's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Sent upstream when the local client sent no `Accept`.
const DEFAULT_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

pub(super) async fn serve(
    m: &Arc<Mirror>,
    method: &Method,
    target: &Target,
    reference: Reference,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let accept = upstream_accept(headers.get(ACCEPT));
    let digest = match reference {
        Reference::Digest(d) => d,
        Reference::Tag(tag) => resolve_tag(m, target, &tag, &accept, headers).await?,
    };
    let (record, body) = match load(m, digest).await? {
        Some(found) => {
            m.metrics.lookup(ContentKind::Manifest, true);
            found
        }
        None => {
            m.metrics.lookup(ContentKind::Manifest, false);
            let fetched = match fetch(m, target, &digest.to_string(), &accept, headers).await {
                Ok(f) => f,
                Err(e) if e.status.is_server_error() => {
                    // The origin is unreachable: a peer may have it (verified by digest).
                    let Some(body) = m
                        .downloads
                        .small_blob_from_peers(digest, MAX_MANIFEST_BYTES as u64)
                        .await
                    else {
                        return Err(e);
                    };
                    Fetched {
                        digest,
                        media_type: sniff_media_type(&body),
                        body,
                    }
                }
                Err(e) => return Err(e),
            };
            if fetched.digest != digest {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "UNKNOWN",
                    format!(
                        "upstream {} returned a manifest hashing to {} for {digest}",
                        target.host, fetched.digest
                    ),
                ));
            }
            store(m, fetched).await?
        }
    };
    let media_type = record
        .media_type
        .clone()
        .unwrap_or_else(|| sniff_media_type(&body));
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, media_type)
        .header(CONTENT_LENGTH, body.len())
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(ETAG, format!("\"{digest}\""));
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        super::prefetch::manifest_served(m, target, digest, &body);
        m.metrics.served_bytes.inc_by(body.len() as u64);
        Body::from(body)
    };
    builder
        .body(body)
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// The `Accept` to send upstream. A client that names no manifest type (none, `*/*`,
/// `application/json`) accepts them all; saying so explicitly matters because
/// distribution answers a bare `*/*` with 404 for OCI manifests (schema1 fallback).
fn upstream_accept(client: Option<&HeaderValue>) -> HeaderValue {
    match client {
        Some(v) if v.to_str().is_ok_and(|s| s.contains("application/vnd.")) => v.clone(),
        _ => HeaderValue::from_static(DEFAULT_ACCEPT),
    }
}

/// Whether the client's `Accept` allows `media_type`.
fn accepts(accept: &HeaderValue, media_type: &str) -> bool {
    accept.to_str().map_or(true, |a| {
        a.split(',')
            .map(|t| t.split(';').next().unwrap_or("").trim())
            .any(|t| t == media_type || t == "*/*")
    })
}

async fn resolve_tag(
    m: &Arc<Mirror>,
    target: &Target,
    tag: &str,
    accept: &HeaderValue,
    headers: &HeaderMap,
) -> Result<Digest, ApiError> {
    let key = target.tag_key(tag);
    let cached = m.store.tag(&key).map_err(|e| ApiError::from_store(&e))?;
    let now = crate::store::now_secs();
    if let Some(c) = &cached {
        let fresh = now.saturating_sub(c.resolved_at) < m.tag_ttl.as_secs();
        if fresh
            && accepts(accept, &c.media_type)
            && m.store.get(&c.digest).ok().flatten().is_some()
        {
            return Ok(c.digest);
        }
    }
    let req = manifest_request(Method::HEAD, target, tag, accept, headers);
    let resolved = match m.upstream.send(&req).await {
        Ok(resp) if resp.status() == StatusCode::OK => {
            let digest = resp
                .headers()
                .get(DOCKER_CONTENT_DIGEST)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            match digest {
                Some(d) => {
                    let media_type = content_type(resp.headers()).unwrap_or_default();
                    let size = resp
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    Ok((d, media_type, size))
                }
                // No digest header: fetch by tag and hash it ourselves.
                None => {
                    let fetched = fetch(m, target, tag, accept, headers).await?;
                    let out = (
                        fetched.digest,
                        fetched.media_type.clone(),
                        fetched.body.len() as u64,
                    );
                    store(m, fetched).await?;
                    Ok(out)
                }
            }
        }
        Ok(resp) => Err(UpstreamError::Status {
            host: target.host.clone(),
            status: resp.status(),
        }),
        Err(e) => Err(e),
    };
    match resolved {
        Ok((digest, media_type, size)) => {
            let record = TagRecord {
                digest,
                media_type,
                size,
                resolved_at: now,
            };
            m.store
                .put_tag(&key, &record)
                .map_err(|e| ApiError::from_store(&e))?;
            Ok(digest)
        }
        Err(e) if e.is_unavailable() && m.stale_if_error => {
            let stale = cached.filter(|c| m.store.get(&c.digest).ok().flatten().is_some());
            match stale {
                Some(c) => {
                    tracing::warn!(tag = %key, digest = %c.digest, age_secs = now.saturating_sub(c.resolved_at), error = %e, "upstream unreachable; serving last known digest of tag");
                    Ok(c.digest)
                }
                // Never resolved here: ask the swarm, and remember the answer.
                None => match m.downloads.tag_from_peers(&key).await {
                    Some((digest, resolved_at, media_type)) => {
                        let record = TagRecord {
                            digest,
                            media_type,
                            size: 0,
                            resolved_at,
                        };
                        m.store
                            .put_tag(&key, &record)
                            .map_err(|e| ApiError::from_store(&e))?;
                        Ok(digest)
                    }
                    None => Err(ApiError::from_upstream(&e, "MANIFEST_UNKNOWN")),
                },
            }
        }
        Err(e) => Err(ApiError::from_upstream(&e, "MANIFEST_UNKNOWN")),
    }
}

fn manifest_request<'a>(
    method: Method,
    target: &'a Target,
    reference: &str,
    accept: &HeaderValue,
    headers: &HeaderMap,
) -> UpstreamRequest<'a> {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT, accept.clone());
    UpstreamRequest {
        method,
        target,
        path: format!("manifests/{reference}"),
        query: None,
        headers: h,
        client_auth: client_auth(headers),
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A manifest fetched from upstream, hashed but not yet stored.
struct Fetched {
    digest: Digest,
    media_type: String,
    body: Bytes,
}

async fn fetch(
    m: &Mirror,
    target: &Target,
    reference: &str,
    accept: &HeaderValue,
    headers: &HeaderMap,
) -> Result<Fetched, ApiError> {
    let req = manifest_request(Method::GET, target, reference, accept, headers);
    let resp = m
        .upstream
        .send(&req)
        .await
        .map_err(|e| ApiError::from_upstream(&e, "MANIFEST_UNKNOWN"))?;
    if resp.status() != StatusCode::OK {
        let e = UpstreamError::Status {
            host: target.host.clone(),
            status: resp.status(),
        };
        return Err(ApiError::from_upstream(&e, "MANIFEST_UNKNOWN"));
    }
    let declared = content_type(resp.headers());
    let too_big = || {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "MANIFEST_INVALID",
            format!("upstream manifest exceeds {MAX_MANIFEST_BYTES} bytes"),
        )
    };
    if resp
        .content_length()
        .is_some_and(|l| l > MAX_MANIFEST_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                format!("reading manifest from {}: {e}", target.host),
            )
        })?;
        if body.len() + piece.len() > MAX_MANIFEST_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&piece);
    }
    let body = body.freeze();
    let digest = Digest::from_sha256_bytes(Sha256::digest(&body).into());
    let media_type = declared.unwrap_or_else(|| sniff_media_type(&body));
    Ok(Fetched {
        digest,
        media_type,
        body,
    })
}

async fn store(m: &Mirror, fetched: Fetched) -> Result<(BlobRecord, Bytes), ApiError> {
    let store = m.store.clone();
    let Fetched {
        digest,
        media_type,
        body,
    } = fetched;
    let bytes = body.clone();
    let record =
        tokio::task::spawn_blocking(move || store.put_bytes(digest, &bytes, Some(media_type)))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::from_store(&e))?;
    Ok((record, body))
}

async fn load(m: &Mirror, digest: Digest) -> Result<Option<(BlobRecord, Bytes)>, ApiError> {
    let store = m.store.clone();
    tokio::task::spawn_blocking(move || -> Result<Option<(BlobRecord, Bytes)>, ApiError> {
        let Some((record, mut file)) = store
            .open_blob(&digest)
            .map_err(|e| ApiError::from_store(&e))?
        else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(record.size() as usize);
        std::io::Read::read_to_end(&mut file, &mut buf)
            .map_err(|e| ApiError::internal(format!("reading manifest {digest}: {e}")))?;
        Ok(Some((record, Bytes::from(buf))))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// The media type a manifest declares in its body, for stores rebuilt without sidecars.
fn sniff_media_type(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe {
            media_type: Some(t),
            ..
        }) => t,
        Ok(Probe {
            manifests: Some(_), ..
        }) => "application/vnd.oci.image.index.v1+json".into(),
        _ => "application/vnd.oci.image.manifest.v1+json".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matching() {
        let a = HeaderValue::from_static(
            "application/vnd.oci.image.manifest.v1+json; q=0.9, application/json",
        );
        assert!(accepts(&a, "application/vnd.oci.image.manifest.v1+json"));
        assert!(!accepts(&a, "application/vnd.oci.image.index.v1+json"));
        assert!(accepts(&HeaderValue::from_static("*/*"), "x"));
    }

    #[test]
    fn sniffing() {
        assert_eq!(
            sniff_media_type(br#"{"mediaType":"application/x"}"#),
            "application/x"
        );
        assert_eq!(
            sniff_media_type(br#"{"manifests":[]}"#),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            sniff_media_type(b"garbage"),
            "application/vnd.oci.image.manifest.v1+json"
        );
    }
}
