//! Reading models and images through the node's registry mirror, exactly as containerd
//! would, so every byte comes through shoald's store and swarm.

use sha2::{Digest as _, Sha256};
use shoal_proto::control::ErrorCode;
use shoal_proto::oci::{self, Descriptor, Manifest, Platform, Reference};
use shoal_proto::Digest;

use crate::error::{ClientError, Result};

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (the registry's own limit).
const MAX_MANIFEST: usize = 4 << 20;

/// A manifest as fetched: raw bytes (verified against the digest), type, parsed body.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Media type (the response's Content-Type, else the body's).
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// Parsed.
    pub manifest: Manifest,
}

impl FetchedManifest {
    /// This manifest as a descriptor (for an OCI layout's index.json).
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest,
            size: self.bytes.len() as u64,
            annotations: Default::default(),
            platform: None,
            artifact_type: self.manifest.artifact_type.clone(),
        }
    }
}

/// A reference resolved to the manifest(s) to use.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the reference names (an index or a manifest).
    pub top: FetchedManifest,
    /// The image manifests chosen: the platform's from an index, or `top` itself.
    pub manifests: Vec<FetchedManifest>,
}

/// A client of one mirror endpoint.
#[derive(Clone)]
pub struct MirrorClient {
    http: reqwest::Client,
    base: String,
}

impl MirrorClient {
    /// A client of the mirror at `base` (`http://127.0.0.1:5050`).
    pub fn new(base: String) -> Result<MirrorClient> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Other(format!("HTTP client: {e}")))?;
        Ok(MirrorClient { http, base })
    }

    fn url(&self, r: &Reference, kind: &str, what: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{what}?ns={}",
            self.base, r.repository, r.registry
        )
    }

    async fn get(
        &self,
        url: String,
        headers: &[(reqwest::header::HeaderName, String)],
        what: &str,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.get(&url);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::DaemonUnreachable {
                at: self.base.clone(),
                reason: e.to_string(),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let detail = resp
            .bytes()
            .await
            .ok()
            .and_then(|b| oci::error_message(&b))
            .unwrap_or_else(|| status.to_string());
        let hint = match status.as_u16() {
            404 => "check the name and tag",
            502..=504 => "the registry is unreachable and no peer has it; check the network or pull it on a node that can reach the registry",
            507 => "free space on the node (shoal gc) and retry",
            401 | 403 => "the registry refused: check shoald's --credentials",
            400 => "the reference is malformed",
            _ => "see shoald's log",
        };
        let code = ErrorCode::for_registry_status(status.as_u16());
        Err(ClientError::Api {
            code,
            message: format!("{what}: {detail} ({hint})"),
        })
    }

    /// Fetches a manifest by tag or digest and checks its bytes against the digest.
    pub async fn manifest(&self, r: &Reference, what: &str) -> Result<FetchedManifest> {
        let resp = self
            .get(
                self.url(r, "manifests", what),
                &[(reqwest::header::ACCEPT, ACCEPT_MANIFESTS.to_owned())],
                &r.to_string(),
            )
            .await?;
        let header_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Other(format!("{r}: reading manifest: {e}")))?;
        if bytes.len() > MAX_MANIFEST {
            return Err(ClientError::Refused(format!("{r}: manifest over 4 MiB")));
        }
        let digest = Digest::from_sha256_bytes(Sha256::digest(&bytes).into());
        if let Ok(expected) = what.parse::<Digest>() {
            if expected != digest {
                return Err(ClientError::Refused(format!(
                    "{r}: manifest {expected} hashed to {digest}"
                )));
            }
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Refused(format!("{r}: manifest is not valid JSON: {e}")))?;
        let media_type = header_type
            .filter(|t| oci::is_manifest(t))
            .or_else(|| manifest.media_type.clone())
            .unwrap_or_else(|| oci::OCI_MANIFEST.to_owned());
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes: bytes.to_vec(),
            manifest,
        })
    }

    /// Resolves a reference; from an index, takes `platform`'s manifest, or every
    /// manifest when `platform` is `None` or the index lists no platforms (artifacts).
    pub async fn resolve(&self, r: &Reference, platform: Option<&Platform>) -> Result<Resolved> {
        let top = self.manifest(r, &r.manifest_reference()).await?;
        if !top.manifest.is_index(&top.media_type) {
            return Ok(Resolved {
                manifests: vec![top.clone()],
                top,
            });
        }
        let has_platforms = top.manifest.manifests.iter().any(|d| d.platform.is_some());
        let children: Vec<Descriptor> = match platform {
            Some(p) if has_platforms => match top.manifest.for_platform(p) {
                Some(d) => vec![d.clone()],
                None => {
                    let offered: Vec<String> = top
                        .manifest
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect();
                    return Err(ClientError::Api {
                        code: ErrorCode::NotFound,
                        message: format!(
                            "{r} has no manifest for {p}; it offers {} (use --platform)",
                            offered.join(", ")
                        ),
                    });
                }
            },
            _ => top
                .manifest
                .manifests
                .iter()
                .filter(|d| oci::is_manifest(&d.media_type))
                .cloned()
                .collect(),
        };
        let mut manifests = Vec::new();
        for child in children {
            manifests.push(self.manifest(r, &child.digest.to_string()).await?);
        }
        Ok(Resolved { top, manifests })
    }

    /// Starts a blob download; the caller streams the body and verifies it.
    pub async fn blob(&self, r: &Reference, digest: &Digest) -> Result<reqwest::Response> {
        self.blob_range(r, digest, 0).await
    }

    /// Starts a blob download from byte `offset` (206 when honoured, else 200).
    pub async fn blob_range(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<reqwest::Response> {
        let range = (offset > 0).then(|| (reqwest::header::RANGE, format!("bytes={offset}-")));
        self.get(
            self.url(r, "blobs", &digest.to_string()),
            range.as_slice(),
            &digest.to_string(),
        )
        .await
    }
}
