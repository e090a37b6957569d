//! OCI distribution error responses: `{"errors":[{"code","message","detail"}]}`.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::store::StoreError;
use crate::swarm::DownloadError;
use crate::upstream::UpstreamError;

/// An error answer of the mirror.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI error code, e.g. `BLOB_UNKNOWN`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Extra headers (`Content-Range` on 416, `WWW-Authenticate` on 401).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with no extra headers.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Maps an upstream failure, with `unknown` the code for "upstream says it does not exist".
    pub fn from_upstream(e: &UpstreamError, unknown: &'static str) -> ApiError {
        match e {
            UpstreamError::Status { status, .. } => match *status {
                StatusCode::NOT_FOUND => {
                    ApiError::new(StatusCode::NOT_FOUND, unknown, e.to_string())
                }
                StatusCode::UNAUTHORIZED => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string())
                }
                StatusCode::FORBIDDEN => {
                    ApiError::new(StatusCode::FORBIDDEN, "DENIED", e.to_string())
                }
                StatusCode::TOO_MANY_REQUESTS => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOOMANYREQUESTS",
                    e.to_string(),
                ),
                _ => ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", e.to_string()),
            },
            UpstreamError::Timeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "UNKNOWN", e.to_string())
            }
            UpstreamError::Unreachable { .. } | UpstreamError::Protocol { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", e.to_string())
            }
            UpstreamError::Config(_) => ApiError::internal(e.to_string()),
        }
    }

    /// Maps a store failure.
    pub fn from_store(e: &StoreError) -> ApiError {
        if e.is_out_of_space() {
            tracing::error!(error = %e, "store out of space");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "UNKNOWN",
                format!("shoald cannot store this blob: {e}"),
            )
        } else {
            ApiError::internal(e.to_string())
        }
    }

    /// Maps a download failure.
    pub fn from_download(e: &DownloadError, unknown: &'static str) -> ApiError {
        match e {
            DownloadError::Upstream(u) => ApiError::from_upstream(u, unknown),
            DownloadError::Store(StoreError::DigestMismatch { .. })
            | DownloadError::CorruptFromPeers(_)
            | DownloadError::Swarm(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "UNKNOWN", e.to_string())
            }
            DownloadError::Store(s) => ApiError::from_store(s),
            DownloadError::Task(_) => ApiError::internal(e.to_string()),
        }
    }

    /// A 500.
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        let message = message.to_string();
        tracing::error!(%message, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": null }]
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
