//! Parsing `/v2/...` request paths into routes, rejecting malformed names, references
//! and digests before anything else sees them.

use http::StatusCode;
use shoal_proto::oci::valid_tag;
use shoal_proto::{validate_repository_name, Digest, DigestError};

use super::error::ApiError;

/// A manifest reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A tag, `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

/// What a `/v2/` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`
    Manifest {
        /// Repository name.
        name: String,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`
    Blob {
        /// Repository name.
        name: String,
        /// Blob digest.
        digest: Digest,
    },
    /// `/v2/<name>/referrers/<digest>`: passed through.
    Referrers {
        /// Repository name.
        name: String,
        /// Subject digest.
        digest: Digest,
    },
    /// `/v2/<name>/tags/list`: passed through.
    TagList {
        /// Repository name.
        name: String,
    },
    /// Push endpoints (`/blobs/uploads/`): never served by a mirror.
    Upload,
}

impl Route {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Referrers { .. } => "referrers",
            Route::TagList { .. } => "tags",
            Route::Upload => "upload",
        }
    }
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e: DigestError| {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    })
}

fn parse_name(name: &str) -> Result<String, ApiError> {
    validate_repository_name(name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string()))?;
    Ok(name.to_owned())
}

/// Parses a request path (not percent-decoded: an encoded `..` is simply invalid).
pub fn parse(path: &str) -> Result<Route, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint: {path}"),
        )
    };
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or_else(not_found)?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::TagList {
            name: parse_name(name)?,
        });
    }
    if let Some(idx) = rest.rfind("/blobs/uploads") {
        let tail = &rest[idx + "/blobs/uploads".len()..];
        if tail.is_empty() || tail.starts_with('/') {
            return Ok(Route::Upload);
        }
    }
    for (marker, kind) in [("/manifests/", 0), ("/blobs/", 1), ("/referrers/", 2)] {
        let Some(idx) = rest.rfind(marker) else {
            continue;
        };
        let name = parse_name(&rest[..idx])?;
        let arg = &rest[idx + marker.len()..];
        return Ok(match kind {
            0 if arg.contains(':') => Route::Manifest {
                name,
                reference: Reference::Digest(parse_digest(arg)?),
            },
            0 if valid_tag(arg) => Route::Manifest {
                name,
                reference: Reference::Tag(arg.to_owned()),
            },
            0 => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    format!("{arg:?} is neither a valid tag nor a digest"),
                ))
            }
            1 => Route::Blob {
                name,
                digest: parse_digest(arg)?,
            },
            _ => Route::Referrers {
                name,
                digest: parse_digest(arg)?,
            },
        });
    }
    Err(not_found())
}

/// Validates a `?ns=` registry host (`host` or `host:port`), so it can be dialled and
/// cannot smuggle a path or credentials into the upstream URL.
pub fn validate_ns(ns: &str) -> Result<(), ApiError> {
    let (host, port) = match ns.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (ns, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-']);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("ns={ns:?} is not a registry host[:port]"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(
            parse("/v2/library/ubuntu/manifests/22.04").unwrap(),
            Route::Manifest {
                name: "library/ubuntu".into(),
                reference: Reference::Tag("22.04".into())
            }
        );
        assert!(
            matches!(parse(&format!("/v2/a/b/c/blobs/{D}")).unwrap(), Route::Blob { name, .. } if name == "a/b/c")
        );
        // a repository may itself be called "blobs" or "manifests"
        assert!(
            matches!(parse(&format!("/v2/x/blobs/blobs/{D}")).unwrap(), Route::Blob { name, .. } if name == "x/blobs")
        );
        assert!(matches!(
            parse(&format!("/v2/x/manifests/{D}")).unwrap(),
            Route::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert_eq!(parse("/v2/x/blobs/uploads/").unwrap(), Route::Upload);
        assert_eq!(parse("/v2/x/blobs/uploads/abc").unwrap(), Route::Upload);
        assert_eq!(
            parse("/v2/x/tags/list").unwrap(),
            Route::TagList { name: "x".into() }
        );
    }

    #[test]
    fn rejects_malformed() {
        let code = |p: &str| parse(p).unwrap_err().code;
        assert_eq!(code(&format!("/v2/../etc/blobs/{D}")), "NAME_INVALID");
        assert_eq!(code(&format!("/v2/a/%2e%2e/blobs/{D}")), "NAME_INVALID");
        assert_eq!(code("/v2/a/blobs/sha256:zzz"), "DIGEST_INVALID");
        assert_eq!(code("/v2/a/blobs/notadigest"), "DIGEST_INVALID");
        assert_eq!(code("/v2/a/manifests/-bad"), "MANIFEST_INVALID");
        assert_eq!(code("/v2/a/manifests/sha256:12"), "DIGEST_INVALID");
        assert_eq!(code("/v3/"), "NOT_FOUND");
        assert_eq!(code("/v2/a"), "NOT_FOUND");
    }

    #[test]
    fn ns_hosts() {
        assert!(validate_ns("docker.io").is_ok());
        assert!(validate_ns("127.0.0.1:5000").is_ok());
        for bad in ["", "a/b", "user@host", "host:99999", "host:", "a b", ".x"] {
            assert!(validate_ns(bad).is_err(), "{bad:?}");
        }
    }
}
