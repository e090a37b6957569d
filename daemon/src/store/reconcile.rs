//! Rebuilding the metadata index from the data files.
//!
//! Runs at every start. Committed blobs are the files in `blobs/sha256/`; their
//! sidecars carry the media type and chunk index. A blob whose sidecar is missing or
//! disagrees is re-hashed (and dropped if it no longer matches its name), so a deleted
//! or corrupted sled directory never loses or mis-serves committed content.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::UNIX_EPOCH;

use sha2::{Digest as _, Sha256};
use shoal_proto::{ChunkHash, ChunkIndex, ChunkLayout, Digest};

use super::{BlobRecord, Result, Store, StoreError};

/// Reconciles the index with the files and returns the committed bytes on disk.
pub(super) fn reconcile(store: &Store) -> Result<u64> {
    let mut indexed: HashMap<Digest, BlobRecord> = store
        .index
        .blobs()?
        .into_iter()
        .map(|r| (r.digest, r))
        .collect();
    let dir = store.root.join("blobs/sha256");
    let mut used = 0u64;
    let (mut rebuilt, mut dropped) = (0usize, 0usize);
    for entry in read_dir(&dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if let Some(hex) = name.strip_suffix(".meta") {
            if !dir.join(hex).exists() {
                remove_quietly(&path);
            }
            continue;
        }
        if name.ends_with(".tmp") {
            remove_quietly(&path);
            continue;
        }
        let Ok(digest) = Digest::from_hex(&name) else {
            tracing::warn!(file = %path.display(), "ignoring unexpected file in blob directory");
            continue;
        };
        let meta = entry
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?;
        if indexed
            .remove(&digest)
            .is_some_and(|r| r.size() == meta.len())
        {
            used += meta.len();
            continue;
        }
        let record = match read_sidecar(store, &digest)
            .filter(|r| r.size() == meta.len() && r.chunks.is_consistent())
        {
            Some(r) => r,
            None => match rehash(&path, store.chunk_size)? {
                (actual, chunks) if actual == digest => {
                    let r = BlobRecord {
                        digest,
                        media_type: None,
                        chunks,
                        pinned: false,
                    };
                    write_sidecar(store, &r)?;
                    r
                }
                (actual, _) => {
                    tracing::error!(file = %path.display(), actual = %actual, "committed blob no longer matches its digest; removing");
                    remove_quietly(&path);
                    remove_quietly(&store.sidecar_path(&digest));
                    dropped += 1;
                    continue;
                }
            },
        };
        store.index.put_blob(&record)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        store.index.set_access(&digest, mtime)?;
        used += record.size();
        rebuilt += 1;
    }
    for stale in indexed.keys() {
        store.index.remove_blob(stale)?;
        dropped += 1;
    }
    // Partial blobs: keep a staging file only together with its chunk records.
    let partial_dir = store.root.join("partial");
    let with_records: Vec<Digest> = store.index.partial_digests()?;
    for digest in &with_records {
        if !store.partial_path(digest).exists() {
            store.index.remove_partial(digest)?;
        }
    }
    for entry in read_dir(&partial_dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !Digest::from_hex(&name).is_ok_and(|d| with_records.contains(&d)) {
            remove_quietly(&entry.path());
        }
    }
    for entry in read_dir(&store.root.join("tmp"))? {
        remove_quietly(&entry.path());
    }
    store.index.flush()?;
    if rebuilt > 0 || dropped > 0 {
        tracing::info!(
            rebuilt,
            dropped,
            "reconciled metadata index with data files"
        );
    }
    Ok(used)
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .and_then(|it| it.collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(file = %path.display(), error = %e, "could not remove stale file");
    }
}

fn read_sidecar(store: &Store, digest: &Digest) -> Option<BlobRecord> {
    let bytes = std::fs::read(store.sidecar_path(digest)).ok()?;
    serde_json::from_slice::<BlobRecord>(&bytes)
        .ok()
        .filter(|r| r.digest == *digest)
}

/// Writes the sidecar atomically (temp file, fsync, rename).
pub(super) fn write_sidecar(store: &Store, record: &BlobRecord) -> Result<()> {
    let target = store.sidecar_path(&record.digest);
    let tmp = target.with_extension("meta.tmp");
    let body = serde_json::to_vec(record).map_err(|e| StoreError::Record {
        key: record.digest.hex(),
        message: e.to_string(),
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io(format!("writing sidecar for {}", record.digest), e)
    })
}

/// Best-effort directory fsync so renames survive power loss.
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// sha256 of the whole file and BLAKE3 of each chunk, in one sequential pass, cut as
/// [`ChunkLayout::for_blob`] cuts a blob for a store configured with `chunk_size`.
pub fn rehash(path: &Path, chunk_size: u32) -> Result<(Digest, ChunkIndex)> {
    let mut file =
        File::open(path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    let size = file
        .metadata()
        .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
        .len();
    let layout = ChunkLayout::for_blob(size, chunk_size);
    let mut sha = Sha256::new();
    let mut hashes = Vec::with_capacity(layout.count() as usize);
    let mut buf = vec![0u8; layout.chunk_size as usize];
    for i in 0..layout.count() {
        let Some(range) = layout.range(i) else { break };
        let chunk = &mut buf[..(range.end - range.start) as usize];
        file.read_exact(chunk)
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        sha.update(&*chunk);
        hashes.push(ChunkHash(*blake3::hash(chunk).as_bytes()));
    }
    Ok((
        Digest::from_sha256_bytes(sha.finalize().into()),
        ChunkIndex { layout, hashes },
    ))
}
