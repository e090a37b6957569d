//! Writing a model's files into a directory: ModelPack (and the older CNAI names), KitOps
//! ModelKits, Docker Model Runner, OMLMD and plain image layers.
//!
//! Each layer is downloaded through the mirror and hashed as it streams; a raw layer
//! goes to `<file>.shoal-partial` and is renamed into place only once its digest
//! matches, and a tar layer's files are each written beside their name and renamed. So
//! an interruption never leaves a truncated file under a real name, and a rerun:
//! - skips a raw file already present whose sha256 is the layer digest,
//! - resumes a `.shoal-partial` with a Range request after re-hashing what it holds,
//! - skips a tar layer that `.shoal-extract.json` records as done and whose files still
//!   hash as recorded.

pub mod kind;
pub mod paths;
mod unpack;

pub use unpack::ChannelReader;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::StreamExt;
use sha2::Digest as _;
use shoal_proto::oci::{Descriptor, Reference};

use crate::error::{ClientError, Result};
use crate::registry::MirrorClient;
use kind::{LayerPlan, Packing};

/// The state file in the target directory.
pub const STATE_FILE: &str = ".shoal-extract.json";

/// Which files to extract, by glob on their path relative to the target.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<globset::GlobSet>,
    exclude: Option<globset::GlobSet>,
    fingerprint: String,
}

impl Filter {
    /// Files matching any `include` (all when empty) and no `exclude`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter> {
        let build = |globs: &[String]| -> Result<Option<globset::GlobSet>> {
            if globs.is_empty() {
                return Ok(None);
            }
            let mut b = globset::GlobSetBuilder::new();
            for g in globs {
                b.add(
                    globset::Glob::new(g)
                        .map_err(|e| ClientError::Usage(format!("bad glob {g:?}: {e}")))?,
                );
            }
            b.build()
                .map(Some)
                .map_err(|e| ClientError::Usage(e.to_string()))
        };
        Ok(Filter {
            include: build(include)?,
            exclude: build(exclude)?,
            fingerprint: format!("+{}-{}", include.join(","), exclude.join(",")),
        })
    }

    /// Whether `path` is extracted.
    pub fn wants(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(path))
            && !self.exclude.as_ref().is_some_and(|s| s.is_match(path))
    }
}

/// A regular file an extraction wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtractedFile {
    /// Path relative to the target directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, hex.
    pub sha256: String,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    /// Key: layer digest and filter fingerprint.
    layers: BTreeMap<String, Vec<ExtractedFile>>,
}

/// What happened to one layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerOutcome {
    /// Downloaded and written.
    Extracted,
    /// Already present and verified; not downloaded.
    AlreadyPresent,
    /// Excluded by the filters.
    Filtered,
    /// Holds no files (configs, unknown types).
    NoFiles,
}

/// Told of a layer's bytes as they stream.
pub trait Progress: Send + Sync {
    /// `n` more bytes of the layer arrived (or were found present).
    fn advance(&self, n: u64);
}

impl<F: Fn(u64) + Send + Sync> Progress for F {
    fn advance(&self, n: u64) {
        self(n)
    }
}

/// Extracts layers into one directory.
pub struct Extractor {
    root: PathBuf,
    filter: Filter,
    state: Mutex<State>,
}

impl Extractor {
    /// Prepares `root` (created if missing) and loads the state of earlier runs.
    pub fn open(root: &Path, filter: Filter) -> Result<Extractor> {
        std::fs::create_dir_all(root)
            .map_err(|e| ClientError::io(format!("creating {}", root.display()), e))?;
        let root = root
            .canonicalize()
            .map_err(|e| ClientError::io(format!("resolving {}", root.display()), e))?;
        let state = std::fs::read(root.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Extractor {
            root,
            filter,
            state: Mutex::new(state),
        })
    }

    /// The target directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state_key(&self, layer: &Descriptor) -> String {
        format!("{}{}", layer.digest, self.filter.fingerprint)
    }

    fn record(&self, layer: &Descriptor, files: Vec<ExtractedFile>) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.layers.insert(self.state_key(layer), files);
        let bytes =
            serde_json::to_vec_pretty(&*state).map_err(|e| ClientError::Other(e.to_string()))?;
        let tmp = self.root.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, self.root.join(STATE_FILE)))
            .map_err(|e| ClientError::io("writing the extraction state", e))
    }

    /// Extracts one layer (downloading only what is not already here and verified).
    pub async fn layer(
        &self,
        mirror: &MirrorClient,
        reference: &Reference,
        layer: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<LayerOutcome> {
        let Some(plan) = kind::plan(layer) else {
            return Ok(LayerOutcome::NoFiles);
        };
        match plan.packing {
            Packing::Raw => self.raw(mirror, reference, layer, &plan, progress).await,
            _ => self.tar(mirror, reference, layer, &plan, progress).await,
        }
    }

    async fn raw(
        &self,
        mirror: &MirrorClient,
        reference: &Reference,
        layer: &Descriptor,
        plan: &LayerPlan,
        progress: &dyn Progress,
    ) -> Result<LayerOutcome> {
        let rel = plan.path.clone().unwrap_or_default();
        let normal = paths::normalise(&rel)
            .map_err(|e| ClientError::Refused(format!("unsafe path: {e}")))?;
        if !self.filter.wants(&normal.to_string_lossy()) {
            return Ok(LayerOutcome::Filtered);
        }
        let dest = paths::safe_join(&self.root, &rel)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ClientError::io(format!("creating {}", parent.display()), e))?;
        }
        let partial = {
            let mut n = dest.file_name().unwrap_or_default().to_owned();
            n.push(".shoal-partial");
            dest.with_file_name(n)
        };
        let (d, p, size, digest) = (dest.clone(), partial.clone(), layer.size, layer.digest);
        // What is already on disk: the finished file, or a prefix to resume from.
        let (present, sha, offset) = blocking(move || {
            if std::fs::metadata(&d).is_ok_and(|m| m.len() == size) {
                let (sha, _) = unpack::hash_file(&d, None)
                    .map_err(|e| ClientError::io(format!("reading {}", d.display()), e))?;
                if shoal_proto::Digest::from_sha256_bytes(sha.finalize().into()) == digest {
                    return Ok((true, None, 0));
                }
            }
            match std::fs::metadata(&p) {
                Ok(m) if m.len() > 0 && m.len() < size => {
                    let (sha, n) = unpack::hash_file(&p, Some(m.len()))
                        .map_err(|e| ClientError::io(format!("reading {}", p.display()), e))?;
                    Ok((false, Some(sha), n))
                }
                _ => Ok((false, None, 0)),
            }
        })
        .await?;
        if present {
            progress.advance(layer.size);
            return Ok(LayerOutcome::AlreadyPresent);
        }
        let resp = mirror.blob_range(reference, &layer.digest, offset).await?;
        // A server that ignores Range sends everything: start over.
        let (offset, sha) = if offset > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            (0, None)
        } else {
            (offset, sha)
        };
        progress.advance(offset);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let reader = unpack::ChannelReader::new(rx, sha.unwrap_or_default());
        let expected = layer.digest;
        let writer = tokio::task::spawn_blocking(move || {
            unpack::write_raw(reader, &partial, &dest, offset, expected)
        });
        pump(resp, tx, progress).await;
        writer
            .await
            .map_err(|e| ClientError::Other(e.to_string()))??;
        Ok(LayerOutcome::Extracted)
    }

    async fn tar(
        &self,
        mirror: &MirrorClient,
        reference: &Reference,
        layer: &Descriptor,
        plan: &LayerPlan,
        progress: &dyn Progress,
    ) -> Result<LayerOutcome> {
        let recorded = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .layers
            .get(&self.state_key(layer))
            .cloned();
        if let Some(files) = recorded {
            let root = self.root.clone();
            let intact = blocking(move || {
                Ok(files.iter().all(|f| {
                    let path = root.join(&f.path);
                    unpack::hash_file(&path, None).is_ok_and(|(sha, n)| {
                        n == f.size && hex::encode(sha.finalize()) == f.sha256
                    })
                }))
            })
            .await?;
            if intact {
                progress.advance(layer.size);
                return Ok(LayerOutcome::AlreadyPresent);
            }
        }
        let resp = mirror.blob_range(reference, &layer.digest, 0).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut reader = unpack::ChannelReader::new(rx, Default::default());
        let (root, filter, plan_copy, expected) = (
            self.root.clone(),
            self.filter.clone(),
            plan.clone(),
            layer.digest,
        );
        let unpacker = tokio::task::spawn_blocking(move || {
            let files = unpack::unpack_tar(
                &mut reader,
                plan_copy.packing,
                &root,
                &filter,
                plan_copy.image_layer,
            );
            // Hash to the end even after the archive's end-of-archive marker.
            let digest = reader.finish();
            let files = files?;
            let (actual, _) =
                digest.map_err(|e| ClientError::Refused(format!("reading layer: {e}")))?;
            if actual != expected {
                for f in &files {
                    let _ = std::fs::remove_file(root.join(&f.path));
                }
                return Err(ClientError::Refused(format!(
                    "layer {expected} hashed to {actual}; its files were removed"
                )));
            }
            Ok(files)
        });
        pump(resp, tx, progress).await;
        let files = unpacker
            .await
            .map_err(|e| ClientError::Other(e.to_string()))??;
        self.record(layer, files)?;
        Ok(LayerOutcome::Extracted)
    }
}

/// Streams a response body to a blocking reader, reporting progress. A transport
/// error is passed on so the reader fails instead of seeing a clean end.
async fn pump(
    resp: reqwest::Response,
    tx: tokio::sync::mpsc::Sender<std::result::Result<bytes::Bytes, String>>,
    progress: &dyn Progress,
) {
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        match piece {
            Ok(piece) => {
                let n = piece.len() as u64;
                if tx.send(Ok(piece)).await.is_err() {
                    return; // the reader stopped; its error says why
                }
                progress.advance(n);
            }
            Err(e) => {
                let _ = tx.send(Err(format!("download interrupted: {e}"))).await;
                return;
            }
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Other(e.to_string()))?
}
