//! The content store: verified blobs on disk, cut into fixed-size chunks.
//!
//! ```text
//! <data-dir>/blobs/sha256/<hex>        committed blob bytes (immutable)
//! <data-dir>/blobs/sha256/<hex>.meta   sidecar: size, media type, chunk index (JSON)
//! <data-dir>/partial/<hex>             staging file of a blob being downloaded
//! <data-dir>/index/                    sled: blob records, chunk presence, access times, tags
//! ```
//!
//! A blob is written to `partial/`, hashed on the way in (sha256 of the whole, BLAKE3 of
//! every chunk) and renamed into `blobs/` only when its sha256 matches the digest. Each
//! finished chunk is handed to the disk at once (write-behind), so the fsync before the
//! rename has little left to write. The sidecar makes the sled index disposable:
//! [`Store::open`] reconciles the index with the files, so deleting `index/` (or sled
//! corrupting it) loses nothing committed.
//! Partial blobs keep their per-chunk BLAKE3 hashes in sled, so a restart resumes from
//! the chunks that are present and still hash right.

mod index;
mod ingest;
mod reconcile;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use shoal_proto::{ChunkIndex, ChunkLayout, Digest};

pub use index::{now_secs, PinRecord, TagRecord};
pub use ingest::Ingest;

/// A committed, verified blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobRecord {
    /// Content digest.
    pub digest: Digest,
    /// Media type when known (always set for manifests).
    pub media_type: Option<String>,
    /// Chunk geometry and BLAKE3 hashes; `chunks.layout.size` is the blob size.
    pub chunks: ChunkIndex,
    /// Pinned blobs are never evicted.
    #[serde(default)]
    pub pinned: bool,
}

impl BlobRecord {
    /// Blob size in bytes.
    pub fn size(&self) -> u64 {
        self.chunks.layout.size
    }
}

/// Store failures. Each names what went wrong; none leaves a half-written blob visible.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The filesystem is full.
    #[error("disk full while {context}")]
    DiskFull {
        /// What the store was doing.
        context: String,
    },
    /// The metadata index failed.
    #[error("metadata index: {0}")]
    Index(#[from] sled::Error),
    /// Stored metadata could not be decoded.
    #[error("metadata record for {key}: {message}")]
    Record {
        /// Record key.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// Downloaded bytes do not hash to the expected digest; they were discarded.
    #[error("content of {expected} hashed to {actual}; discarded")]
    DigestMismatch {
        /// Digest that was asked for.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A chunk does not hash to its entry in the chunk index; it was not written.
    #[error("{digest}: chunk {index} does not match the chunk index")]
    ChunkMismatch {
        /// Blob digest.
        digest: Digest,
        /// Chunk index.
        index: u32,
    },
    /// More or fewer bytes than announced.
    #[error("{digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Blob digest.
        digest: Digest,
        /// Announced size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The blob does not fit under the disk quota even after evicting everything unpinned.
    #[error("store quota of {quota} bytes cannot fit {needed} more bytes ({used} in use, rest pinned or in use)")]
    QuotaExceeded {
        /// Bytes requested.
        needed: u64,
        /// Bytes in use.
        used: u64,
        /// Configured quota.
        quota: u64,
    },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        let context = context.into();
        if source.kind() == std::io::ErrorKind::StorageFull {
            StoreError::DiskFull { context }
        } else {
            StoreError::Io { context, source }
        }
    }

    /// True when the failure is about space (quota or a full filesystem).
    pub fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull { .. } | StoreError::QuotaExceeded { .. }
        )
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Told of each blob the store evicts or removes.
pub type RemoveHook = Box<dyn Fn(&Digest) + Send + Sync>;

/// The content store. Cheap to share behind an `Arc`.
pub struct Store {
    root: PathBuf,
    chunk_size: u32,
    quota: u64,
    index: index::Index,
    /// Serialises space accounting so two ingests cannot both claim the last bytes.
    space: Mutex<Space>,
    /// Told of every eviction and removal (the swarm stops advertising the blob).
    on_remove: std::sync::OnceLock<RemoveHook>,
}

#[derive(Default)]
struct Space {
    /// Committed bytes plus bytes reserved by running ingests.
    used: u64,
}

impl Store {
    /// Opens (creating if needed) the store under `root`, reconciling the index with
    /// the data files.
    pub fn open(root: &Path, chunk_size: u32, quota: u64) -> Result<Store> {
        for dir in ["blobs/sha256", "partial", "tmp"] {
            let p = root.join(dir);
            std::fs::create_dir_all(&p)
                .map_err(|e| StoreError::io(format!("creating {}", p.display()), e))?;
        }
        let index = index::Index::open(&root.join("index"))?;
        let store = Store {
            root: root.to_owned(),
            chunk_size,
            quota,
            index,
            space: Mutex::new(Space::default()),
            on_remove: std::sync::OnceLock::new(),
        };
        let used = reconcile::reconcile(&store)?;
        store.lock_space().used = used;
        Ok(store)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Chunk size used for new blobs.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The layout this node gives a new blob of `size` bytes.
    pub fn new_blob_layout(&self, size: u64) -> ChunkLayout {
        ChunkLayout::for_blob(size, self.chunk_size)
    }

    /// Bytes in use (committed plus reserved by running ingests).
    pub fn used_bytes(&self) -> u64 {
        self.lock_space().used
    }

    fn lock_space(&self) -> std::sync::MutexGuard<'_, Space> {
        // A panic while holding this lock cannot leave `used` half-updated, so the
        // poisoned value is still meaningful.
        self.space.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub(crate) fn sidecar_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(format!("{}.meta", digest.hex()))
    }

    pub(crate) fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(digest.hex())
    }

    /// The committed record for `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        self.index.blob(digest)
    }

    /// Opens a committed blob for reading and records the access for LRU eviction.
    /// `Ok(None)` when the blob is not (or no longer) committed.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<(BlobRecord, File)>> {
        let Some(record) = self.index.blob(digest)? else {
            return Ok(None);
        };
        match File::open(self.blob_path(digest)) {
            Ok(f) => {
                self.index.touch(digest)?;
                Ok(Some((record, f)))
            }
            // Evicted between the lookup and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("opening blob {digest}"), e)),
        }
    }

    /// The bytes of a small committed blob (a manifest), without counting it as a use.
    /// `Ok(None)` when it is not committed or larger than `max`.
    pub fn read_small(&self, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>> {
        match self.index.blob(digest)? {
            Some(r) if r.size() <= max => match std::fs::read(self.blob_path(digest)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::io(format!("reading blob {digest}"), e)),
            },
            _ => Ok(None),
        }
    }

    /// Starts (or resumes) writing `digest` of `size` bytes. Space is reserved under the
    /// quota first, evicting least recently used unpinned blobs if needed.
    /// The staging file survives a crash and the next call resumes from its verified chunks.
    /// Blocking (it may re-hash the resumed part): call it from a blocking context.
    /// A partial blob of the same size resumes in the chunk layout it was started in.
    pub fn begin_ingest(
        self: &Arc<Self>,
        digest: Digest,
        size: u64,
        media_type: Option<String>,
    ) -> Result<Ingest> {
        let layout = self
            .partial_layout(&digest)?
            .filter(|l| l.size == size)
            .unwrap_or_else(|| self.new_blob_layout(size));
        self.begin_ingest_as(digest, layout, media_type)
    }

    /// As [`Store::begin_ingest`], in a given chunk layout: a swarm download takes the
    /// layout its peers hold the blob in, which may not be this node's chunk size.
    pub fn begin_ingest_as(
        self: &Arc<Self>,
        digest: Digest,
        layout: ChunkLayout,
        media_type: Option<String>,
    ) -> Result<Ingest> {
        Ingest::begin(self.clone(), digest, layout, media_type, true)
    }

    /// Starts writing a blob whose bytes arrive from a local client (`shoal import`):
    /// a private staging file, so it never collides with a download of the same digest.
    pub fn begin_import(
        self: &Arc<Self>,
        digest: Digest,
        size: u64,
        media_type: Option<String>,
    ) -> Result<Ingest> {
        let layout = self.new_blob_layout(size);
        Ingest::begin(self.clone(), digest, layout, media_type, false)
    }

    /// Stores a small in-memory blob (a manifest) in one go.
    pub fn put_bytes(
        self: &Arc<Self>,
        digest: Digest,
        bytes: &[u8],
        media_type: Option<String>,
    ) -> Result<BlobRecord> {
        if let Some(existing) = self.index.blob(&digest)? {
            return Ok(existing);
        }
        let layout = self.new_blob_layout(bytes.len() as u64);
        let mut ingest = Ingest::begin(self.clone(), digest, layout, media_type, false)?;
        ingest.write(bytes)?;
        ingest.commit()
    }

    /// Marks a blob pinned (never evicted) or not. `Ok(false)` if it is not committed.
    pub fn set_pinned(&self, digest: &Digest, pinned: bool) -> Result<bool> {
        let Some(mut record) = self.index.blob(digest)? else {
            return Ok(false);
        };
        record.pinned = pinned;
        reconcile::write_sidecar(self, &record)?;
        self.index.put_blob(&record)?;
        Ok(true)
    }

    /// Size of a partial (resumable) blob left by an earlier download, if any.
    pub fn partial_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.index.partial(digest)?.map(|p| p.size))
    }

    /// The chunk layout a partial blob was started in, if there is one. A record whose
    /// chunk size no configuration could give falls back to this node's chunk size,
    /// which discards the partial's chunks when it is resumed.
    pub fn partial_layout(&self, digest: &Digest) -> Result<Option<ChunkLayout>> {
        Ok(self.index.partial(digest)?.map(|p| {
            Some(ChunkLayout::new(p.size, p.chunk_size))
                .filter(ChunkLayout::is_well_formed)
                .unwrap_or_else(|| self.new_blob_layout(p.size))
        }))
    }

    /// Removes a committed blob (pinned or not). `Ok(false)` if it was not committed.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let Some(record) = self.index.blob(digest)? else {
            return Ok(false);
        };
        self.remove_committed(&record)?;
        self.release(record.size());
        if let Some(notify) = self.on_remove.get() {
            notify(digest);
        }
        Ok(true)
    }

    /// The cached resolution of a tag.
    pub fn tag(&self, key: &str) -> Result<Option<TagRecord>> {
        self.index.tag(key)
    }

    /// Records a tag resolution.
    pub fn put_tag(&self, key: &str, record: &TagRecord) -> Result<()> {
        self.index.put_tag(key, record)
    }

    /// All committed records (for inspection and tests).
    pub fn list(&self) -> Result<Vec<BlobRecord>> {
        self.index.blobs()
    }

    /// Every tag resolution the node remembers, by key (`registry/repository:tag`).
    pub fn tags(&self) -> Result<Vec<(String, TagRecord)>> {
        self.index.tags()
    }

    /// Unix seconds of the last read of a committed blob.
    pub fn last_access(&self, digest: &Digest) -> Result<Option<u64>> {
        self.index.last_access(digest)
    }

    /// Interrupted or running downloads: (digest, size, bytes present).
    pub fn partials(&self) -> Result<Vec<(Digest, u64, u64)>> {
        let mut out = Vec::new();
        for digest in self.index.partial_digests()? {
            let Some(p) = self.index.partial(&digest)? else {
                continue;
            };
            let layout = shoal_proto::ChunkLayout::new(p.size, p.chunk_size);
            let present = self
                .index
                .partial_chunks(&digest)?
                .iter()
                .filter_map(|(i, _)| layout.range(*i))
                .map(|r| r.end - r.start)
                .sum();
            out.push((digest, p.size, present));
        }
        Ok(out)
    }

    /// Every pinned reference.
    pub fn pins(&self) -> Result<Vec<(String, PinRecord)>> {
        self.index.pins()
    }

    /// Pins `reference`: every blob of `record` (all committed) is kept from eviction,
    /// across restarts (the flag lives in each blob's sidecar too).
    pub fn pin(&self, reference: &str, record: &PinRecord) -> Result<()> {
        for digest in &record.blobs {
            self.set_pinned(digest, true)?;
        }
        self.index.put_pin(reference, record)
    }

    /// Unpins `reference`; returns the blobs released (those no other pin holds), or
    /// `None` when the reference was not pinned.
    pub fn unpin(&self, reference: &str) -> Result<Option<(PinRecord, Vec<Digest>)>> {
        let Some(old) = self.index.remove_pin(reference)? else {
            return Ok(None);
        };
        let still_held: std::collections::HashSet<Digest> = self
            .index
            .pins()?
            .into_iter()
            .flat_map(|(_, p)| p.blobs)
            .collect();
        let mut released = Vec::new();
        for digest in &old.blobs {
            if !still_held.contains(digest) && self.set_pinned(digest, false)? {
                released.push(*digest);
            }
        }
        Ok(Some((old, released)))
    }

    /// Evicts least recently used unpinned blobs until at most `target` bytes are in
    /// use; with `dry_run`, only says which would go. Returns them with their last use.
    pub fn gc(&self, target: u64, dry_run: bool) -> Result<Vec<(BlobRecord, u64)>> {
        let mut space = self.lock_space();
        let mut used = space.used;
        let mut evicted = Vec::new();
        for (digest, last_used) in self.index.by_last_access()? {
            if used <= target {
                break;
            }
            let Some(record) = self.index.blob(&digest)? else {
                continue;
            };
            if record.pinned {
                continue;
            }
            if !dry_run {
                self.remove_committed(&record)?;
                if let Some(notify) = self.on_remove.get() {
                    notify(&digest);
                }
                space.used = space.used.saturating_sub(record.size());
                tracing::info!(digest = %digest, size = record.size(), "gc evicted blob");
            }
            used = used.saturating_sub(record.size());
            evicted.push((record, last_used));
        }
        Ok(evicted)
    }

    /// The configured quota in bytes (0: unlimited).
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Sets the function told of each blob the store evicts or removes (set once).
    pub fn set_on_remove(&self, notify: RemoveHook) {
        let _ = self.on_remove.set(notify);
    }

    /// Reserves `needed` bytes, evicting LRU unpinned blobs when over quota.
    fn reserve(&self, needed: u64) -> Result<()> {
        let mut space = self.lock_space();
        if self.quota == 0 || space.used + needed <= self.quota {
            space.used += needed;
            return Ok(());
        }
        for (digest, _) in self.index.by_last_access()? {
            if space.used + needed <= self.quota {
                break;
            }
            let Some(record) = self.index.blob(&digest)? else {
                continue;
            };
            if record.pinned {
                continue;
            }
            self.remove_committed(&record)?;
            if let Some(notify) = self.on_remove.get() {
                notify(&digest);
            }
            space.used = space.used.saturating_sub(record.size());
            tracing::info!(digest = %digest, size = record.size(), "evicted least recently used blob");
        }
        if space.used + needed > self.quota {
            return Err(StoreError::QuotaExceeded {
                needed,
                used: space.used,
                quota: self.quota,
            });
        }
        space.used += needed;
        Ok(())
    }

    fn release(&self, bytes: u64) {
        let mut space = self.lock_space();
        space.used = space.used.saturating_sub(bytes);
    }

    fn remove_committed(&self, record: &BlobRecord) -> Result<()> {
        // Index first: a crash after this leaves an orphan file that reconcile re-adds,
        // never an index entry pointing at nothing.
        self.index.remove_blob(&record.digest)?;
        for p in [
            self.blob_path(&record.digest),
            self.sidecar_path(&record.digest),
        ] {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(StoreError::io(format!("removing {}", p.display()), e));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
