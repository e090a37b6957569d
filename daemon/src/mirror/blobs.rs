//! `GET/HEAD /v2/<name>/blobs/<digest>`, with Range.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use shoal_proto::Digest;

use super::error::ApiError;
use super::range::{self, RangeRequest};
use super::{client_auth, Mirror, DOCKER_CONTENT_DIGEST};
use crate::metrics::ContentKind;
use crate::swarm::{stream_range, BlobSource};
use crate::upstream::Target;

pub(super) async fn serve(
    m: &Arc<Mirror>,
    method: &Method,
    target: &Target,
    digest: Digest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let range_header = headers.get(RANGE).and_then(|v| v.to_str().ok());
    // Whole as served: a Range header that is not text is ignored below too.
    if method == Method::GET && range_header.is_none() {
        super::prefetch::blob_requested(m, target, &digest, client_auth(headers));
    }
    if let Some((record, file)) = m
        .store
        .open_blob(&digest)
        .map_err(|e| ApiError::from_store(&e))?
    {
        m.metrics.lookup(ContentKind::Blob, true);
        return respond(
            m,
            method,
            digest,
            record.size(),
            BlobSource::Committed(Arc::new(file)),
            range_header,
        );
    }
    m.metrics.lookup(ContentKind::Blob, false);
    if method == Method::HEAD {
        let size = match m.downloads.running_size(&digest) {
            Some(size) => size,
            None => head_upstream(m, target, digest, headers).await?,
        };
        return blob_response(digest, size, range::parse(range_header, size))?
            .body(Body::empty())
            .map_err(ApiError::internal);
    }
    let download = m
        .downloads
        .get_or_start(digest, target, client_auth(headers));
    let (size, file) = download
        .wait_started()
        .await
        .map_err(|e| ApiError::from_download(&e, "BLOB_UNKNOWN"))?;
    respond(
        m,
        method,
        digest,
        size,
        BlobSource::Download {
            file,
            progress: download.subscribe(),
        },
        range_header,
    )
}

async fn head_upstream(
    m: &Mirror,
    target: &Target,
    digest: Digest,
    headers: &HeaderMap,
) -> Result<u64, ApiError> {
    m.upstream
        .blob_size(target, &digest, client_auth(headers))
        .await
        .map_err(|e| ApiError::from_upstream(&e, "BLOB_UNKNOWN"))
}

/// Status and headers for a blob answer, or the 416 error.
fn blob_response(
    digest: Digest,
    size: u64,
    range: RangeRequest,
) -> Result<http::response::Builder, ApiError> {
    let builder = Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(ETAG, format!("\"{digest}\""))
        .header(ACCEPT_RANGES, "bytes");
    Ok(match range {
        RangeRequest::Full => builder.status(StatusCode::OK).header(CONTENT_LENGTH, size),
        RangeRequest::Partial { start, end } => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(CONTENT_LENGTH, end - start + 1)
            .header(CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
        RangeRequest::Unsatisfiable => {
            let mut e = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "UNKNOWN",
                format!("requested range is not satisfiable for a blob of {size} bytes"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                e.headers.push((CONTENT_RANGE, v));
            }
            return Err(e);
        }
    })
}

fn respond(
    m: &Arc<Mirror>,
    method: &Method,
    digest: Digest,
    size: u64,
    source: BlobSource,
    range_header: Option<&str>,
) -> Result<Response, ApiError> {
    let range = range::parse(range_header, size);
    let builder = blob_response(digest, size, range)?;
    if method == Method::HEAD {
        return builder.body(Body::empty()).map_err(ApiError::internal);
    }
    let (start, end) = match range {
        RangeRequest::Partial { start, end } => (start, end + 1),
        _ => (0, size),
    };
    let metrics = m.metrics.clone();
    let stream = stream_range(source, start, end).inspect(move |piece| {
        if let Ok(p) = piece {
            metrics.served_bytes.inc_by(p.len() as u64);
        }
    });
    builder
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}
