//! Fetching a whole model or image into the store by walking it through this node's own
//! mirror endpoint, exactly as containerd would. Going through the mirror (rather than
//! calling the download code directly) gives preheat and pin the same tag resolution,
//! peer use, offline fallbacks and verification as every other pull.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use shoal_proto::control::ErrorCode;
use shoal_proto::oci::{self, Descriptor, Manifest, Platform, Reference};
use shoal_proto::Digest;

use super::ControlError;
use crate::store::Store;

/// Blob downloads a walk runs at once (containerd's default is 3).
const PARALLEL_BLOBS: usize = 4;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// A reference resolved down to its blobs.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    /// The top manifest (or index) digest.
    pub digest: Digest,
    /// Every manifest of the tree (the top one too); fetched, so in the store.
    pub manifests: Vec<Digest>,
    /// Config and layer blobs of the chosen manifests.
    pub blobs: Vec<Descriptor>,
}

impl Tree {
    /// Every digest of the tree.
    pub fn all_digests(&self) -> Vec<Digest> {
        let mut all = self.manifests.clone();
        all.extend(self.blobs.iter().map(|d| d.digest));
        all.sort();
        all.dedup();
        all
    }

    /// Bytes of the blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|d| d.size).sum()
    }
}

/// Bytes of a walk so far, readable while it runs.
#[derive(Default)]
pub(crate) struct WalkProgress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

/// Fetches through the mirror at `base` (`http://127.0.0.1:5050`).
#[derive(Clone)]
pub(crate) struct Walker {
    http: reqwest::Client,
    base: String,
    store: Arc<Store>,
}

impl Walker {
    pub fn new(mirror: std::net::SocketAddr, store: Arc<Store>) -> Walker {
        let ip = match mirror.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        Walker {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
            base: format!("http://{}", std::net::SocketAddr::new(ip, mirror.port())),
            store,
        }
    }

    fn url(&self, reference: &Reference, kind: &str, what: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{what}?ns={}",
            self.base, reference.repository, reference.registry
        )
    }

    /// Fetches a manifest by tag or digest: (digest, media type, parsed body).
    async fn manifest(
        &self,
        reference: &Reference,
        what: &str,
    ) -> Result<(Digest, String, Manifest), ControlError> {
        let resp = self
            .http
            .get(self.url(reference, "manifests", what))
            .header(http::header::ACCEPT, ACCEPT_MANIFESTS)
            .send()
            .await
            .map_err(|e| ControlError::Internal(format!("own mirror unreachable: {e}")))?;
        let resp = check(resp, &reference.to_string()).await?;
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            .ok_or_else(|| ControlError::Internal("mirror sent no Docker-Content-Digest".into()))?;
        let media_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ControlError::Internal(format!("reading manifest: {e}")))?;
        let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| {
            ControlError::BadRequest(format!("{reference}: manifest is not valid JSON: {e}"))
        })?;
        Ok((digest, media_type, manifest))
    }

    /// Resolves `reference` to its manifests and blobs. An index contributes the
    /// manifest for `platform` when it lists platforms, else every child (artifacts).
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Tree, ControlError> {
        let (digest, media_type, top) = self
            .manifest(reference, &reference.manifest_reference())
            .await?;
        let mut tree = Tree {
            digest,
            manifests: vec![digest],
            blobs: Vec::new(),
        };
        let children: Vec<Descriptor> = if top.is_index(&media_type) {
            match top.for_platform(platform) {
                Some(d) => vec![d.clone()],
                None if top.manifests.iter().any(|d| d.platform.is_some()) => {
                    return Err(ControlError::NotFound(format!(
                        "{reference} has no manifest for platform {platform}"
                    )))
                }
                None => top
                    .manifests
                    .iter()
                    .filter(|d| oci::is_manifest(&d.media_type))
                    .cloned()
                    .collect(),
            }
        } else {
            tree.blobs.extend(top.blobs().cloned());
            Vec::new()
        };
        for child in children {
            let (d, _, m) = self.manifest(reference, &child.digest.to_string()).await?;
            tree.manifests.push(d);
            tree.blobs.extend(m.blobs().cloned());
        }
        tree.blobs.sort_by_key(|d| d.digest);
        tree.blobs.dedup_by_key(|d| d.digest);
        Ok(tree)
    }

    /// Fetches every blob of `tree` the store lacks, a few at a time, counting bytes.
    pub async fn fetch(
        &self,
        reference: &Reference,
        tree: &Tree,
        progress: &WalkProgress,
    ) -> Result<(), ControlError> {
        progress.total.store(tree.blob_bytes(), Ordering::Relaxed);
        futures::stream::iter(tree.blobs.iter().map(Ok))
            .try_for_each_concurrent(PARALLEL_BLOBS, |blob| async move {
                if self.store.get(&blob.digest).ok().flatten().is_some() {
                    progress.done.fetch_add(blob.size, Ordering::Relaxed);
                    return Ok(());
                }
                let resp = self
                    .http
                    .get(self.url(reference, "blobs", &blob.digest.to_string()))
                    .send()
                    .await
                    .map_err(|e| ControlError::Internal(format!("own mirror unreachable: {e}")))?;
                let resp = check(resp, &blob.digest.to_string()).await?;
                let mut body = resp.bytes_stream();
                while let Some(piece) = body.next().await {
                    let piece = piece.map_err(|e| {
                        ControlError::UpstreamUnreachable(format!(
                            "{}: download aborted: {e}",
                            blob.digest
                        ))
                    })?;
                    progress
                        .done
                        .fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            })
            .await
    }
}

/// Maps a mirror error answer to a [`ControlError`], keeping the mirror's message.
async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, ControlError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let message = resp
        .bytes()
        .await
        .ok()
        .and_then(|b| oci::error_message(&b))
        .unwrap_or_else(|| status.to_string());
    let message = format!("{what}: {message}");
    Err(ControlError::from_code(
        ErrorCode::for_registry_status(status.as_u16()),
        message,
    ))
}
