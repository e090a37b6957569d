//! Fetching one blob from the origin into the store, resuming with `Range` when the
//! connection breaks and when a previous run left a partial blob.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_proto::Digest;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::{Context, DownloadError, Progress};
use crate::store::Ingest;
use crate::upstream::{Target, Upstream, UpstreamError, UpstreamRequest};

/// Body pieces buffered between the network and the disk writer. With reqwest's
/// ~16-64 KiB frames this bounds a download's memory to a few MiB whatever the blob size.
const WRITE_QUEUE: usize = 64;

pub(super) async fn run(
    ctx: &Arc<Context>,
    digest: Digest,
    target: &Target,
    client_auth: Option<HeaderValue>,
    tx: &Arc<watch::Sender<Progress>>,
) -> Result<(), DownloadError> {
    let span =
        tracing::info_span!("download", %digest, upstream = %target.host, repo = %target.repo);
    async move {
        let started = std::time::Instant::now();
        if super::publish_committed(ctx, digest, tx)? {
            return Ok(());
        }
        let req = |range_from: Option<u64>| {
            let mut headers = HeaderMap::new();
            if let Some(from) = range_from {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-")) {
                    headers.insert(RANGE, v);
                }
            }
            UpstreamRequest {
                method: Method::GET,
                target,
                path: format!("blobs/{digest}"),
                query: None,
                headers,
                client_auth: client_auth.clone(),
            }
        };

        // Size from a partial left by an earlier run, else from the first response.
        let mut pending_response = None;
        let size = match ctx.store.partial_size(&digest)? {
            Some(size) => size,
            None => {
                let resp = ctx.upstream.send(&req(None)).await?;
                let size = expect_body(&resp, target, 0)?;
                pending_response = Some(resp);
                size
            }
        };
        let store = ctx.store.clone();
        let ingest = tokio::task::spawn_blocking(move || store.begin_ingest(digest, size, None))
            .await
            .map_err(|e| DownloadError::Task(e.to_string()))??;
        let resumed = ingest.offset();
        let file = Arc::new(ingest.staging_file()?);
        tx.send_modify(|p| {
            p.size = Some(size);
            p.available = resumed;
            p.file = Some(file);
        });

        let (bytes_tx, bytes_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = spawn_writer(ingest, bytes_rx, tx.clone());
        let mut sent = resumed;
        let mut failures = 0u32;
        while sent < size {
            let resp = match pending_response.take() {
                // A resumed partial needs a ranged request, not the full-body response.
                Some(resp) if sent == 0 => resp,
                _ => match ctx.upstream.send(&req(Some(sent))).await {
                    Ok(resp) => resp,
                    Err(e) if e.is_unavailable() && failures < ctx.upstream.retries() => {
                        failures += 1;
                        tokio::time::sleep(Upstream::backoff(failures)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let mut skip = match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    check_content_range(&resp, target, sent, size)?;
                    0
                }
                // The origin ignored Range: drop what we already have.
                StatusCode::OK => {
                    expect_body(&resp, target, size)?;
                    sent
                }
                status => return Err(UpstreamError::Status { host: target.host.clone(), status }.into()),
            };
            let mut body = resp.bytes_stream();
            let mut broke = None;
            while let Some(piece) = body.next().await {
                let mut piece = match piece {
                    Ok(p) => p,
                    Err(e) => {
                        broke = Some(e.to_string());
                        break;
                    }
                };
                if skip > 0 {
                    let n = (skip as usize).min(piece.len());
                    skip -= n as u64;
                    piece = piece.slice(n..);
                }
                if piece.is_empty() {
                    continue;
                }
                if sent + piece.len() as u64 > size {
                    return Err(UpstreamError::Protocol { host: target.host.clone(), message: "more bytes than announced".into() }.into());
                }
                sent += piece.len() as u64;
                ctx.metrics.upstream_bytes.inc_by(piece.len() as u64);
                if bytes_tx.send(piece).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            if sent < size {
                if writer.is_finished() {
                    break;
                }
                failures += 1;
                let why = broke.unwrap_or_else(|| "body ended early".into());
                if failures > ctx.upstream.retries() {
                    return Err(UpstreamError::Unreachable { host: target.host.clone(), message: why }.into());
                }
                tracing::warn!(offset = sent, attempt = failures, error = %why, "blob download broke; resuming with Range");
                tokio::time::sleep(Upstream::backoff(failures)).await;
            }
        }
        drop(bytes_tx);
        super::commit(writer, started, resumed).await
    }
    .instrument(span)
    .await
}

/// Writes (and hashes) body pieces on a blocking thread so hashing never stalls the
/// runtime, publishing each step to readers.
fn spawn_writer(
    mut ingest: Ingest,
    mut rx: mpsc::Receiver<Bytes>,
    tx: Arc<watch::Sender<Progress>>,
) -> tokio::task::JoinHandle<Result<Ingest, DownloadError>> {
    tokio::task::spawn_blocking(move || {
        while let Some(piece) = rx.blocking_recv() {
            if let Err(e) = ingest.write(&piece) {
                if e.is_out_of_space() {
                    // Keeping the partial would hold on to the very space that ran out.
                    ingest.discard();
                }
                return Err(e.into());
            }
            let available = ingest.offset();
            tx.send_modify(|p| p.available = available);
        }
        Ok(ingest)
    })
}

/// Checks a 200 blob response and returns its length (which must equal `expected`
/// unless that is 0, meaning unknown yet).
fn expect_body(
    resp: &reqwest::Response,
    target: &Target,
    expected: u64,
) -> Result<u64, DownloadError> {
    match resp.status() {
        StatusCode::OK => {}
        status => {
            return Err(UpstreamError::Status {
                host: target.host.clone(),
                status,
            }
            .into())
        }
    }
    let len = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| UpstreamError::Protocol {
            host: target.host.clone(),
            message: "blob response without Content-Length".into(),
        })?;
    if expected != 0 && len != expected {
        return Err(UpstreamError::Protocol {
            host: target.host.clone(),
            message: format!("blob is {len} bytes now, {expected} before"),
        }
        .into());
    }
    Ok(len)
}

fn check_content_range(
    resp: &reqwest::Response,
    target: &Target,
    from: u64,
    size: u64,
) -> Result<(), DownloadError> {
    let header = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected_prefix = format!("bytes {from}-");
    let total_ok = header
        .rsplit('/')
        .next()
        .is_some_and(|t| t == "*" || t.parse::<u64>().ok() == Some(size));
    if header.starts_with(&expected_prefix) && total_ok {
        Ok(())
    } else {
        Err(UpstreamError::Protocol {
            host: target.host.clone(),
            message: format!("unexpected Content-Range {header:?} for bytes={from}-"),
        }
        .into())
    }
}
