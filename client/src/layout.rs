//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`), as a directory or
//! a tar file: `shoal export` writes one from the mirror, `shoal import` loads one
//! into the daemon so the node and its peers serve it with no registry at all.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use shoal_proto::oci::{self, Descriptor, Manifest, Reference};
use shoal_proto::Digest;

use crate::api::ControlClient;
use crate::error::{ClientError, Result};
use crate::registry::{MirrorClient, Resolved};

/// Annotation containerd uses for the full image name in a layout.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// OCI annotation for the reference (often just the tag).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Where a layout goes or comes from.
#[derive(Debug, Clone)]
pub enum LayoutPath {
    /// A directory.
    Dir(PathBuf),
    /// A tar file (`*.tar`).
    Tar(PathBuf),
}

impl LayoutPath {
    /// A `.tar` name is a tar file; anything else a directory.
    pub fn new(path: &Path) -> LayoutPath {
        if path.extension().is_some_and(|e| e == "tar") {
            LayoutPath::Tar(path.to_owned())
        } else {
            LayoutPath::Dir(path.to_owned())
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    /// The reference exported.
    pub reference: String,
    /// Top manifest digest.
    pub digest: Digest,
    /// Blobs written (manifests included).
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Everything to write: manifests (bytes in hand) then blobs (fetched).
fn export_plan(resolved: &Resolved) -> (Vec<(Digest, Vec<u8>)>, Vec<Descriptor>) {
    let mut manifests = vec![(resolved.top.digest, resolved.top.bytes.clone())];
    for m in &resolved.manifests {
        if m.digest != resolved.top.digest {
            manifests.push((m.digest, m.bytes.clone()));
        }
    }
    let mut blobs: Vec<Descriptor> = resolved
        .manifests
        .iter()
        .flat_map(|m| m.manifest.blobs().cloned())
        .collect();
    blobs.sort_by_key(|d| d.digest);
    blobs.dedup_by_key(|d| d.digest);
    (manifests, blobs)
}

/// Blocking writer of a layout.
enum Sink {
    Dir(PathBuf),
    Tar(tar::Builder<std::fs::File>),
}

impl Sink {
    fn create(path: &LayoutPath) -> Result<Sink> {
        match path {
            LayoutPath::Dir(d) => {
                std::fs::create_dir_all(d.join("blobs/sha256"))
                    .map_err(|e| ClientError::io(format!("creating {}", d.display()), e))?;
                Ok(Sink::Dir(d.clone()))
            }
            LayoutPath::Tar(f) => {
                let file = std::fs::File::create(f)
                    .map_err(|e| ClientError::io(format!("creating {}", f.display()), e))?;
                Ok(Sink::Tar(tar::Builder::new(file)))
            }
        }
    }

    fn has(&self, digest: &Digest, size: u64) -> bool {
        match self {
            Sink::Dir(d) => {
                let p = d.join("blobs/sha256").join(digest.hex());
                std::fs::metadata(&p).is_ok_and(|m| m.len() == size)
                    && hash_reader(std::fs::File::open(&p).ok()).is_some_and(|h| h == *digest)
            }
            Sink::Tar(_) => false,
        }
    }

    /// Writes `name` from `reader` (`size` bytes), checking `digest` when given.
    fn put(
        &mut self,
        name: &str,
        size: u64,
        reader: &mut dyn Read,
        digest: Option<Digest>,
    ) -> Result<()> {
        let mut hashing = HashingReader {
            inner: reader,
            sha: Sha256::new(),
        };
        match self {
            Sink::Dir(d) => {
                let dest = d.join(name);
                let tmp = dest.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp)
                    .map_err(|e| ClientError::io(format!("creating {}", tmp.display()), e))?;
                std::io::copy(&mut hashing, &mut f)
                    .map_err(|e| ClientError::io(format!("writing {}", tmp.display()), e))?;
                check(&hashing, digest).inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })?;
                std::fs::rename(&tmp, &dest)
                    .map_err(|e| ClientError::io(format!("writing {}", dest.display()), e))
            }
            Sink::Tar(b) => {
                let mut header = tar::Header::new_ustar();
                header.set_size(size);
                header.set_mode(0o644);
                header.set_mtime(0);
                header.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut header, name, &mut hashing)
                    .map_err(|e| ClientError::io(format!("writing {name} into the tar"), e))?;
                check(&hashing, digest)
            }
        }
    }

    fn finish(self) -> Result<()> {
        if let Sink::Tar(mut b) = self {
            b.finish()
                .map_err(|e| ClientError::io("finishing the tar", e))?;
        }
        Ok(())
    }
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    sha: Sha256,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

fn check(h: &HashingReader<'_>, expected: Option<Digest>) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let actual = Digest::from_sha256_bytes(h.sha.clone().finalize().into());
    if actual != expected {
        return Err(ClientError::Refused(format!(
            "blob {expected} hashed to {actual}"
        )));
    }
    Ok(())
}

fn hash_reader(r: Option<impl Read>) -> Option<Digest> {
    let mut r = r?;
    let mut sha = Sha256::new();
    std::io::copy(&mut r, &mut sha).ok()?;
    Some(Digest::from_sha256_bytes(sha.finalize().into()))
}

/// Writes `reference` (as resolved) to an OCI image layout.
pub async fn export(
    mirror: &MirrorClient,
    reference: &Reference,
    resolved: &Resolved,
    out: &LayoutPath,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ExportReport> {
    let (manifests, blobs) = export_plan(resolved);
    let sink = std::sync::Arc::new(std::sync::Mutex::new(Sink::create(out)?));
    let mut bytes = 0u64;
    let mut count = 0usize;
    for blob in &blobs {
        count += 1;
        bytes += blob.size;
        let (s, d, size) = (sink.clone(), blob.digest, blob.size);
        let present = tokio::task::spawn_blocking(move || {
            s.lock().unwrap_or_else(|p| p.into_inner()).has(&d, size)
        })
        .await
        .unwrap_or(false);
        if present {
            progress(blob.size);
            continue;
        }
        let resp = mirror.blob(reference, &blob.digest).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<bytes::Bytes, String>>(16);
        let s = sink.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut reader = crate::extract::ChannelReader::new(rx, Default::default());
            s.lock().unwrap_or_else(|p| p.into_inner()).put(
                &format!("blobs/sha256/{}", d.hex()),
                size,
                &mut reader,
                Some(d),
            )
        });
        let mut body = resp.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| format!("download interrupted: {e}"));
            let n = piece.as_ref().map_or(0, |p| p.len() as u64);
            if tx.send(piece).await.is_err() {
                break;
            }
            progress(n);
        }
        drop(tx);
        writer
            .await
            .map_err(|e| ClientError::Other(e.to_string()))??;
    }
    let top = &resolved.top;
    let mut annotations = BTreeMap::new();
    annotations.insert(CONTAINERD_NAME.to_owned(), reference.to_string());
    if let Some(tag) = &reference.tag {
        annotations.insert(REF_NAME.to_owned(), tag.clone());
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_INDEX,
        "manifests": [Descriptor { annotations, ..top.descriptor() }],
    });
    let index = serde_json::to_vec_pretty(&index).map_err(|e| ClientError::Other(e.to_string()))?;
    let manifest_count = manifests.len();
    let finishing = sink.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut s = finishing.lock().unwrap_or_else(|p| p.into_inner());
        for (digest, body) in &manifests {
            s.put(
                &format!("blobs/sha256/{}", digest.hex()),
                body.len() as u64,
                &mut body.as_slice(),
                Some(*digest),
            )?;
        }
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        s.put("oci-layout", layout.len() as u64, &mut &layout[..], None)?;
        s.put(
            "index.json",
            index.len() as u64,
            &mut index.as_slice(),
            None,
        )?;
        Ok(())
    })
    .await
    .map_err(|e| ClientError::Other(e.to_string()))??;
    let sink = std::sync::Arc::try_unwrap(sink)
        .map_err(|_| ClientError::Other("layout writer still in use".into()))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    sink.finish()?;
    Ok(ExportReport {
        reference: reference.to_string(),
        digest: top.digest,
        blobs: count + manifest_count,
        bytes,
    })
}

/// What an import loaded.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    /// References recorded as tags.
    pub tags: Vec<String>,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the daemon already had.
    pub present: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// The blobs of a layout in upload order (children before the manifests naming them)
/// with their media types, and the tags to record.
struct ImportPlan {
    blobs: Vec<Descriptor>,
    tags: Vec<(String, Digest)>,
}

/// Walks `index.json` using `read_manifest` for manifest bodies.
fn plan_import(
    index: &[u8],
    name_override: Option<&Reference>,
    mut read_manifest: impl FnMut(&Digest) -> Result<Vec<u8>>,
) -> Result<ImportPlan> {
    let index: Manifest = serde_json::from_slice(index)
        .map_err(|e| ClientError::Refused(format!("index.json is not an OCI index: {e}")))?;
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut tags = Vec::new();
    for entry in &index.manifests {
        let name = name_override.map(|r| r.to_string()).or_else(|| {
            [CONTAINERD_NAME, REF_NAME]
                .iter()
                .filter_map(|k| entry.annotations.get(*k))
                .find(|n| {
                    n.parse::<Reference>()
                        .is_ok_and(|r| n.contains('/') || r.registry != oci::DOCKER_HUB)
                })
                .cloned()
        });
        if let Some(n) = name {
            let r: Reference = n
                .parse()
                .map_err(|e: oci::ReferenceError| ClientError::Usage(e.to_string()))?;
            tags.push((r.to_string(), entry.digest));
        }
        let mut stack = vec![entry.clone()];
        while let Some(d) = stack.pop() {
            let body = read_manifest(&d.digest)?;
            let m: Manifest = serde_json::from_slice(&body).map_err(|e| {
                ClientError::Refused(format!("manifest {} is not valid JSON: {e}", d.digest))
            })?;
            blobs.extend(m.blobs().cloned());
            for child in &m.manifests {
                if oci::is_manifest(&child.media_type) {
                    stack.push(child.clone());
                } else {
                    blobs.push(child.clone());
                }
            }
            // After its children, so the daemon never holds a manifest without them.
            blobs.push(Descriptor {
                size: body.len() as u64,
                ..d
            });
        }
    }
    // Children first: reverse the manifests' order relative to their blobs is kept by
    // the push order above; drop repeats keeping the first occurrence.
    let mut seen = std::collections::HashSet::new();
    blobs.retain(|d| seen.insert(d.digest));
    Ok(ImportPlan { blobs, tags })
}

/// Loads a layout into the daemon: every blob (verified by the daemon), then the tags.
pub async fn import(
    control: &ControlClient,
    from: &LayoutPath,
    name_override: Option<&Reference>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let plan = match from {
        LayoutPath::Dir(dir) => {
            let index = std::fs::read(dir.join("index.json")).map_err(|e| {
                ClientError::io(
                    format!("{} is not an OCI layout (index.json)", dir.display()),
                    e,
                )
            })?;
            let plan = plan_import(&index, name_override, |d| {
                read_capped(&dir.join("blobs/sha256").join(d.hex()))
            })?;
            for blob in &plan.blobs {
                if control.has_blob(&blob.digest).await? {
                    report.present += 1;
                    progress(blob.size);
                    continue;
                }
                let path = dir.join("blobs/sha256").join(blob.digest.hex());
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| ClientError::io(format!("opening {}", path.display()), e))?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
                control
                    .put_blob(&blob.digest, blob.size, &blob.media_type, body)
                    .await?;
                report.uploaded += 1;
                report.bytes += blob.size;
                progress(blob.size);
            }
            plan
        }
        LayoutPath::Tar(file) => {
            import_tar(control, file, name_override, &mut report, progress).await?
        }
    };
    for (reference, digest) in &plan.tags {
        control.put_tag(reference, *digest).await?;
        report.tags.push(reference.clone());
    }
    Ok(report)
}

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path)
        .map_err(|e| ClientError::io(format!("reading {}", path.display()), e))?;
    let mut buf = Vec::new();
    f.take(4 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| ClientError::io(format!("reading {}", path.display()), e))?;
    Ok(buf)
}

/// A tar layout is read twice: once for `index.json` and the manifests (small files
/// kept in memory, up to a cap), once to stream the blobs to the daemon.
async fn import_tar(
    control: &ControlClient,
    file: &Path,
    name_override: Option<&Reference>,
    report: &mut ImportReport,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ImportPlan> {
    const SMALL: u64 = 4 << 20;
    const SMALL_TOTAL: u64 = 256 << 20;
    let path = file.to_owned();
    let (index, small) = tokio::task::spawn_blocking(move || -> Result<_> {
        let f = std::fs::File::open(&path)
            .map_err(|e| ClientError::io(format!("opening {}", path.display()), e))?;
        let mut archive = tar::Archive::new(f);
        let mut index = None;
        let mut small: HashMap<String, Vec<u8>> = HashMap::new();
        let mut kept = 0u64;
        for entry in archive
            .entries()
            .map_err(|e| ClientError::Refused(format!("bad tar: {e}")))?
        {
            let mut entry = entry.map_err(|e| ClientError::Refused(format!("bad tar: {e}")))?;
            let name = entry_name(&entry);
            let size = entry.header().size().unwrap_or(u64::MAX);
            if name == "index.json"
                || (size <= SMALL
                    && kept + size <= SMALL_TOTAL
                    && name.starts_with("blobs/sha256/"))
            {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| ClientError::Refused(format!("bad tar: {e}")))?;
                if name == "index.json" {
                    index = Some(buf);
                } else {
                    kept += size;
                    small.insert(name, buf);
                }
            }
        }
        Ok((index, small))
    })
    .await
    .map_err(|e| ClientError::Other(e.to_string()))??;
    let index = index.ok_or_else(|| {
        ClientError::Refused(format!(
            "{} has no index.json: not an OCI layout",
            file.display()
        ))
    })?;
    let plan = plan_import(&index, name_override, |d| {
        small
            .get(&format!("blobs/sha256/{}", d.hex()))
            .cloned()
            .ok_or_else(|| ClientError::Refused(format!("manifest {d} missing from the layout")))
    })?;
    let mut missing = Vec::new();
    for blob in &plan.blobs {
        if control.has_blob(&blob.digest).await? {
            report.present += 1;
            progress(blob.size);
        } else {
            missing.push(blob.clone());
        }
    }
    // Second pass: stream each missing blob's entry to the daemon as it comes.
    let wanted: HashMap<String, Descriptor> = missing
        .iter()
        .map(|d| (format!("blobs/sha256/{}", d.digest.hex()), d.clone()))
        .collect();
    let (entries_tx, mut entries_rx) = tokio::sync::mpsc::channel::<(
        Descriptor,
        tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    )>(1);
    let path = file.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let f = std::fs::File::open(&path)
            .map_err(|e| ClientError::io(format!("opening {}", path.display()), e))?;
        let mut archive = tar::Archive::new(f);
        for entry in archive
            .entries()
            .map_err(|e| ClientError::Refused(format!("bad tar: {e}")))?
        {
            let mut entry = entry.map_err(|e| ClientError::Refused(format!("bad tar: {e}")))?;
            let Some(d) = wanted.get(&entry_name(&entry)) else {
                continue;
            };
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            if entries_tx.blocking_send((d.clone(), rx)).is_err() {
                return Ok(());
            }
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match entry.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx
                            .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        }
        Ok(())
    });
    let mut uploaded = std::collections::HashSet::new();
    while let Some((d, rx)) = entries_rx.recv().await {
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        control
            .put_blob(
                &d.digest,
                d.size,
                &d.media_type,
                reqwest::Body::wrap_stream(stream),
            )
            .await?;
        uploaded.insert(d.digest);
        report.uploaded += 1;
        report.bytes += d.size;
        progress(d.size);
    }
    reader
        .await
        .map_err(|e| ClientError::Other(e.to_string()))??;
    if let Some(d) = missing.iter().find(|d| !uploaded.contains(&d.digest)) {
        return Err(ClientError::Refused(format!(
            "blob {} is missing from {}",
            d.digest,
            file.display()
        )));
    }
    // The daemon stores manifests before their blobs here (tar order); that is fine
    // because tags are recorded only now, after every blob is in.
    Ok(plan)
}

fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    name.trim_start_matches("./").to_owned()
}
