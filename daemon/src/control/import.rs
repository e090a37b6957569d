//! `shoal import`: blobs and tags arriving from a local OCI image layout. Every blob
//! is hashed on the way in and committed only if it matches its digest, so a damaged
//! layout loses nothing already stored and leaves nothing half-written.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use http::StatusCode;
use shoal_proto::control::{BlobStored, TagRequest};
use shoal_proto::{oci, Digest};

use super::{blocking, parse_reference, Control, ControlError};
use crate::store::{now_secs, TagRecord};
use crate::upstream::Target;

fn parse_digest(s: &str) -> Result<Digest, ControlError> {
    s.parse()
        .map_err(|e: shoal_proto::DigestError| ControlError::BadRequest(e.to_string()))
}

/// `HEAD /v1/blobs/<digest>`: 200 when committed here, 404 otherwise.
pub(super) async fn has_blob(
    State(c): State<Arc<Control>>,
    Path(digest): Path<String>,
) -> Result<Response, ControlError> {
    let digest = parse_digest(&digest)?;
    Ok(match c.store.get(&digest)? {
        Some(r) => (StatusCode::OK, [(http::header::CONTENT_LENGTH, r.size())]).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// Query of `PUT /v1/blobs/<digest>`.
#[derive(serde::Deserialize)]
pub(super) struct PutBlob {
    size: u64,
    media_type: Option<String>,
}

/// `PUT /v1/blobs/<digest>?size=N[&media_type=T]`: stores the body if it hashes right.
pub(super) async fn put_blob(
    State(c): State<Arc<Control>>,
    Path(digest): Path<String>,
    Query(q): Query<PutBlob>,
    body: Body,
) -> Result<Json<BlobStored>, ControlError> {
    let digest = parse_digest(&digest)?;
    if let Some(r) = c.store.get(&digest)? {
        return Ok(Json(BlobStored {
            digest,
            size: r.size(),
            written: false,
        }));
    }
    // The writer runs on a blocking thread; a small channel keeps the body from being
    // buffered in memory when the disk is slower than the socket.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let store = c.store.clone();
    let (size, media_type) = (q.size, q.media_type.clone());
    let writer = tokio::task::spawn_blocking(move || {
        let mut ingest = store.begin_import(digest, size, media_type)?;
        let mut received = 0u64;
        while let Some(piece) = rx.blocking_recv() {
            received += piece.len() as u64;
            if received > size {
                ingest.discard();
                return Err(ControlError::DigestMismatch(format!(
                    "{digest}: more than the announced {size} bytes"
                )));
            }
            if let Err(e) = ingest.write(&piece) {
                ingest.discard();
                return Err(e.into());
            }
        }
        Ok(ingest.commit()?)
    });
    let mut stream = body.into_data_stream();
    let mut body_error = None;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(piece) => {
                if tx.send(piece).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let result = writer
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    if let Some(e) = body_error {
        // An aborted upload: whatever was written is discarded with the ingest.
        return Err(ControlError::BadRequest(format!(
            "{digest}: upload interrupted: {e}"
        )));
    }
    let record = result?;
    if let Some((_, discovery)) = &c.network {
        discovery.provide(digest);
    }
    tracing::info!(%digest, size = record.size(), "imported blob");
    Ok(Json(BlobStored {
        digest,
        size: record.size(),
        written: true,
    }))
}

/// `PUT /v1/tags`: the tag now names a manifest that is in the store.
pub(super) async fn put_tag(
    State(c): State<Arc<Control>>,
    Json(req): Json<TagRequest>,
) -> Result<StatusCode, ControlError> {
    let reference = parse_reference(&req.reference)?;
    let Some(tag) = reference.tag.clone() else {
        return Err(ControlError::BadRequest(format!(
            "{} has no tag to record",
            req.reference
        )));
    };
    let store = c.store.clone();
    let key = Target::resolve(
        Some(&reference.registry),
        &c.default_upstream,
        &reference.repository,
    )
    .tag_key(&tag);
    let digest = req.digest;
    blocking(move || {
        let Some(record) = store.get(&digest)? else {
            return Err(ControlError::NotFound(format!(
                "manifest {digest} is not in the store; import its blob first"
            )));
        };
        let media_type = record
            .media_type
            .clone()
            .filter(|t| oci::is_manifest(t))
            .ok_or_else(|| {
                ControlError::BadRequest(format!("{digest} was not stored as a manifest"))
            })?;
        store.put_tag(
            &key,
            &TagRecord {
                digest,
                media_type,
                size: record.size(),
                resolved_at: now_secs(),
            },
        )?;
        tracing::info!(tag = %key, %digest, "tag recorded");
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
