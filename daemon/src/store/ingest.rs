//! Writing a blob into the store: one pass computes the blob's sha256 and each chunk's
//! BLAKE3 while the bytes go to a staging file; the blob is renamed into place only
//! when the sha256 matches.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use shoal_proto::{ChunkHash, ChunkIndex, ChunkLayout, Digest};

use super::index::PartialRecord;
use super::{reconcile, BlobRecord, Result, Store, StoreError};

/// A blob being written. Created by [`Store::begin_ingest`] (resumable, staged in
/// `partial/`) or [`Store::put_bytes`] (one-shot, staged in `tmp/`).
///
/// Dropping it without [`Ingest::commit`] releases its space reservation; a resumable
/// staging file stays for the next attempt, a one-shot one is removed.
pub struct Ingest {
    store: Arc<Store>,
    digest: Digest,
    layout: ChunkLayout,
    media_type: Option<String>,
    staging: PathBuf,
    resumable: bool,
    file: File,
    sha: Sha256,
    chunk_hasher: blake3::Hasher,
    /// Bytes written, all contiguous from 0.
    offset: u64,
    chunks: Vec<Option<ChunkHash>>,
    /// Chunks read back for the sha256 (those that arrived before the prefix reached them).
    readback: Vec<u8>,
    reserved: u64,
    committed: bool,
}

/// Below this, handing half the work to another thread costs more than it saves.
const PARALLEL_MIN: usize = 64 * 1024;

/// Starts writing a finished chunk to disk without waiting for it (write-behind), so
/// the fsync at commit finds little left to write. Without it a blob's bytes stay dirty
/// until the kernel's 30 s expiry or the commit, and with ext4's ordered journal the
/// commit's fsync then waits for that whole backlog: in the 8-node swarm benchmark,
/// whose nodes share one disk, the nodes' last commits all returned in the same few
/// milliseconds, seconds after their last chunk (benches/RESULTS.md). On a node with a
/// slow disk (eMMC, SD) the same wait lands on every layer. Best effort: a refusal only
/// leaves the writing to the kernel and the commit, as before.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn start_writeback(file: &File, start: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its arguments; the descriptor is open for the
    // call's duration because `file` is borrowed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), start, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_writeback(_file: &File, _start: u64, _len: u64) {}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Ingest {
    pub(super) fn begin(
        store: Arc<Store>,
        digest: Digest,
        layout: ChunkLayout,
        media_type: Option<String>,
        resumable: bool,
    ) -> Result<Ingest> {
        let size = layout.size;
        let staging = if resumable {
            store.partial_path(&digest)
        } else {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            store
                .root
                .join("tmp")
                .join(format!("{}.{}.{n}", digest.hex(), std::process::id()))
        };
        store.reserve(size)?;
        let mut ingest = Ingest {
            file: match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(!resumable)
                .open(&staging)
            {
                Ok(f) => f,
                Err(e) => {
                    store.release(size);
                    return Err(StoreError::io(
                        format!("creating staging file {}", staging.display()),
                        e,
                    ));
                }
            },
            chunks: vec![None; layout.count() as usize],
            store,
            digest,
            layout,
            media_type,
            staging,
            resumable,
            sha: Sha256::new(),
            chunk_hasher: blake3::Hasher::new(),
            offset: 0,
            reserved: size,
            readback: Vec::new(),
            committed: false,
        };
        if resumable {
            ingest.resume()?;
        }
        Ok(ingest)
    }

    /// Re-reads the chunks a previous attempt recorded, keeping the leading run whose
    /// BLAKE3 still matches (a crash may have torn the last write) and feeding it to the
    /// sha256, so the download can continue at [`Ingest::offset`].
    fn resume(&mut self) -> Result<()> {
        let previous = self.store.index.partial(&self.digest)?;
        let usable = previous
            .as_ref()
            .is_some_and(|p| p.size == self.layout.size && p.chunk_size == self.layout.chunk_size);
        if previous.is_some() && !usable {
            self.store.index.remove_partial(&self.digest)?;
        }
        if usable {
            let mut recorded_chunks = vec![None; self.chunks.len()];
            for (i, hash) in self.store.index.partial_chunks(&self.digest)? {
                if let Some(slot) = recorded_chunks.get_mut(i as usize) {
                    *slot = Some(hash);
                }
            }
            // Keep every recorded chunk that still hashes right (a crash may have torn
            // the last writes); chunks after a gap stay too, for an out-of-order download.
            let mut buf = vec![0u8; self.layout.chunk_size as usize];
            for (i, recorded) in recorded_chunks.iter().enumerate() {
                let (Some(recorded), Some(range)) = (recorded, self.layout.range(i as u32)) else {
                    continue;
                };
                let chunk = &mut buf[..(range.end - range.start) as usize];
                if self.file.read_exact_at(chunk, range.start).is_err()
                    || blake3::hash(chunk).as_bytes() != &recorded.0
                {
                    tracing::warn!(digest = %self.digest, chunk = i, "stored chunk of partial blob failed verification; refetching it");
                    continue;
                }
                self.chunks[i] = Some(*recorded);
            }
            self.advance_sha(None)?;
            if self.offset > 0 {
                tracing::info!(digest = %self.digest, resumed_bytes = self.offset, "resuming partial blob");
            }
        }
        if self.media_type.is_none() {
            self.media_type = previous.and_then(|p| p.media_type);
        }
        self.store.index.put_partial(
            &self.digest,
            &PartialRecord {
                size: self.layout.size,
                chunk_size: self.layout.chunk_size,
                media_type: self.media_type.clone(),
            },
        )
    }

    /// Bytes from 0 that are written and hashed: where the next [`Ingest::write`]
    /// continues, and how far a reader may stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Which chunks are present (after a resume, or as an out-of-order download fills in).
    pub fn present_chunks(&self) -> impl Iterator<Item = u32> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u32)
    }

    /// Writes one whole chunk at its place, in any order (the swarm path). With
    /// `expected` (from a verified chunk index), bytes that do not hash to it are
    /// refused with [`StoreError::ChunkMismatch`] and nothing is written. The blob's
    /// sha256 then advances over whatever prefix is now contiguous.
    pub fn write_chunk(
        &mut self,
        index: u32,
        bytes: &[u8],
        expected: Option<&ChunkHash>,
    ) -> Result<()> {
        let Some(range) = self.layout.range(index) else {
            return Err(StoreError::SizeMismatch {
                digest: self.digest,
                expected: self.layout.size,
                actual: u64::from(index) * u64::from(self.layout.chunk_size),
            });
        };
        if bytes.len() as u64 != range.end - range.start {
            return Err(StoreError::SizeMismatch {
                digest: self.digest,
                expected: range.end - range.start,
                actual: bytes.len() as u64,
            });
        }
        if self.chunks[index as usize].is_some() {
            return Ok(()); // a duplicate (endgame): the first copy stands
        }
        let hash = ChunkHash(*blake3::hash(bytes).as_bytes());
        if expected.is_some_and(|e| *e != hash) {
            return Err(StoreError::ChunkMismatch {
                digest: self.digest,
                index,
            });
        }
        self.file
            .write_all_at(bytes, range.start)
            .map_err(|e| StoreError::io(format!("writing {} chunk {index}", self.digest), e))?;
        start_writeback(&self.file, range.start, range.end - range.start);
        self.chunks[index as usize] = Some(hash);
        if self.resumable {
            self.store
                .index
                .put_partial_chunk(&self.digest, index, &hash)?;
        }
        self.advance_sha(Some((index, bytes)))
    }

    /// Feeds the sha256 with the chunks now contiguous after [`Ingest::offset`],
    /// using `fresh` for the chunk just written and reading the others back (they are
    /// in the page cache: they were written moments ago or verified at resume).
    fn advance_sha(&mut self, fresh: Option<(u32, &[u8])>) -> Result<()> {
        // Kept between calls: a fresh chunk-sized buffer per call is a fresh mapping.
        let mut buf = std::mem::take(&mut self.readback);
        loop {
            let index = self.layout.chunk_of(self.offset);
            let Some(range) = self
                .layout
                .range(index)
                .filter(|_| self.offset < self.layout.size)
            else {
                break;
            };
            if self.chunks[index as usize].is_none() {
                break;
            }
            match fresh {
                Some((i, bytes)) if i == index => self.sha.update(bytes),
                _ => {
                    buf.resize((range.end - range.start) as usize, 0);
                    self.file
                        .read_exact_at(&mut buf, range.start)
                        .map_err(|e| {
                            StoreError::io(format!("reading back {} chunk {index}", self.digest), e)
                        })?;
                    self.sha.update(&buf);
                }
            }
            self.offset = range.end;
        }
        self.readback = buf;
        Ok(())
    }

    /// Total blob size.
    pub fn size(&self) -> u64 {
        self.layout.size
    }

    /// The staging file, for readers that stream the blob while it is written.
    pub fn staging_file(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(|e| StoreError::io("duplicating staging file handle", e))
    }

    /// Appends bytes at [`Ingest::offset`].
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let index = self.layout.chunk_of(self.offset);
            let range = self
                .layout
                .range(index)
                .filter(|_| self.offset < self.layout.size);
            let Some(range) = range else {
                return Err(StoreError::SizeMismatch {
                    digest: self.digest,
                    expected: self.layout.size,
                    actual: self.offset + data.len() as u64,
                });
            };
            let n = data.len().min((range.end - self.offset) as usize);
            let (head, rest) = data.split_at(n);
            let (sha, chunk_hasher, file, offset) = (
                &mut self.sha,
                &mut self.chunk_hasher,
                &self.file,
                self.offset,
            );
            let mut write_and_chunk_hash = || {
                chunk_hasher.update(head);
                file.write_all_at(head, offset)
            };
            // sha256 is inherently sequential and the slowest step; on another core the
            // BLAKE3 and the write then come almost for free (benches/RESULTS.md).
            let written = if head.len() >= PARALLEL_MIN {
                // In place: this thread hashes while a pool thread writes, rather than
                // `join` from outside the pool, which parks this thread and hands both
                // halves to the pool (two wake-ups per piece).
                let mut written = Ok(());
                rayon::in_place_scope(|scope| {
                    scope.spawn(|_| written = write_and_chunk_hash());
                    sha.update(head);
                });
                written
            } else {
                sha.update(head);
                write_and_chunk_hash()
            };
            written.map_err(|e| StoreError::io(format!("writing {}", self.digest), e))?;
            self.offset += n as u64;
            if self.offset == range.end {
                start_writeback(&self.file, range.start, range.end - range.start);
                let hash = ChunkHash(*self.chunk_hasher.finalize().as_bytes());
                self.chunk_hasher.reset();
                self.chunks[index as usize] = Some(hash);
                if self.resumable {
                    self.store
                        .index
                        .put_partial_chunk(&self.digest, index, &hash)?;
                }
            }
            data = rest;
        }
        Ok(())
    }

    /// Verifies the sha256 and moves the blob into place. On a mismatch the staging
    /// file and its chunk records are deleted and nothing is committed.
    pub fn commit(mut self) -> Result<BlobRecord> {
        if self.offset != self.layout.size {
            return Err(StoreError::SizeMismatch {
                digest: self.digest,
                expected: self.layout.size,
                actual: self.offset,
            });
        }
        let actual = Digest::from_sha256_bytes(std::mem::take(&mut self.sha).finalize().into());
        if actual != self.digest {
            self.discard();
            tracing::error!(expected = %self.digest, actual = %actual, "blob failed sha256 verification; discarded");
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let hashes: Option<Vec<ChunkHash>> = self.chunks.iter().copied().collect();
        let Some(hashes) = hashes else {
            return Err(StoreError::Record {
                key: self.digest.hex(),
                message: "chunk hash missing at commit".into(),
            });
        };
        let record = BlobRecord {
            digest: self.digest,
            media_type: self.media_type.clone(),
            chunks: ChunkIndex {
                layout: self.layout,
                hashes,
            },
            pinned: false,
        };
        self.file
            .sync_data()
            .map_err(|e| StoreError::io(format!("syncing {}", self.digest), e))?;
        // Sidecar first: a crash between the two renames leaves a sidecar without data,
        // which reconcile drops, never data without its media type.
        reconcile::write_sidecar(&self.store, &record)?;
        let target = self.store.blob_path(&self.digest);
        std::fs::rename(&self.staging, &target)
            .map_err(|e| StoreError::io(format!("moving {} into place", self.digest), e))?;
        reconcile::sync_dir(&self.store.root.join("blobs/sha256"));
        self.store.index.put_blob(&record)?;
        if self.resumable {
            self.store.index.remove_partial(&self.digest)?;
        }
        self.committed = true;
        Ok(record)
    }

    /// Deletes the staging file and chunk records (after bad content).
    pub fn discard(&mut self) {
        let _ = std::fs::remove_file(&self.staging);
        if self.resumable {
            if let Err(e) = self.store.index.remove_partial(&self.digest) {
                tracing::warn!(digest = %self.digest, error = %e, "could not remove partial record");
            }
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.store.release(self.reserved);
        if !self.resumable {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}
