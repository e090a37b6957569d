//! Store unit tests (the integration suite covers the same paths through the binary).

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use shoal_proto::Digest;

use super::{Store, StoreError};

const CHUNK: u32 = 64 * 1024;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn digest_of(b: &[u8]) -> Digest {
    Digest::from_sha256_bytes(Sha256::digest(b).into())
}

fn open(dir: &std::path::Path, quota: u64) -> Arc<Store> {
    Arc::new(Store::open(dir, CHUNK, quota).unwrap())
}

#[test]
fn commit_records_chunk_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 0);
    let bytes = data(CHUNK as usize * 3 + 17);
    let d = digest_of(&bytes);
    let mut ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
    for piece in bytes.chunks(10_000) {
        ingest.write(piece).unwrap();
    }
    let rec = ingest.commit().unwrap();
    assert_eq!(rec.chunks.hashes.len(), 4);
    assert_eq!(
        rec.chunks.hashes[3].0,
        *blake3::hash(&bytes[3 * CHUNK as usize..]).as_bytes()
    );
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), bytes);
    assert_eq!(store.used_bytes(), bytes.len() as u64);
}

#[test]
fn mismatch_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 0);
    let bytes = data(100_000);
    let wrong = digest_of(b"something else");
    let mut ingest = store.begin_ingest(wrong, bytes.len() as u64, None).unwrap();
    ingest.write(&bytes).unwrap();
    assert!(matches!(
        ingest.commit(),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(store.get(&wrong).unwrap().is_none());
    assert!(!store.partial_path(&wrong).exists());
    assert!(!store.blob_path(&wrong).exists());
    assert_eq!(store.used_bytes(), 0);
}

#[test]
fn too_many_bytes_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 0);
    let mut ingest = store.begin_ingest(digest_of(b"ab"), 2, None).unwrap();
    assert!(matches!(
        ingest.write(b"abc"),
        Err(StoreError::SizeMismatch { .. })
    ));
}

#[test]
fn resume_keeps_verified_chunks_and_drops_torn_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(CHUNK as usize * 5);
    let d = digest_of(&bytes);
    {
        let store = open(dir.path(), 0);
        let mut ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
        ingest.write(&bytes[..CHUNK as usize * 3 + 100]).unwrap();
    } // dropped mid-way, as after a crash
    let store = open(dir.path(), 0);
    assert_eq!(
        store
            .begin_ingest(d, bytes.len() as u64, None)
            .unwrap()
            .offset(),
        3 * CHUNK as u64
    );
    // Tear chunk 1 on disk: resume must stop before it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(store.partial_path(&d))
        .unwrap();
    f.write_all_at(b"torn", CHUNK as u64 + 5).unwrap();
    let mut ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
    assert_eq!(ingest.offset(), CHUNK as u64);
    ingest.write(&bytes[CHUNK as usize..]).unwrap();
    let rec = ingest.commit().unwrap();
    assert_eq!(rec.digest, d);
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), bytes);
}

#[test]
fn quota_evicts_unpinned_lru_and_keeps_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 250_000);
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| data(100_000 + i)).collect();
    let digests: Vec<Digest> = blobs.iter().map(|b| digest_of(b)).collect();
    store.put_bytes(digests[0], &blobs[0], None).unwrap();
    store.set_pinned(&digests[0], true).unwrap();
    store.put_bytes(digests[1], &blobs[1], None).unwrap();
    store.put_bytes(digests[2], &blobs[2], None).unwrap();
    assert!(store.get(&digests[0]).unwrap().is_some(), "pinned survives");
    assert!(
        store.get(&digests[1]).unwrap().is_none(),
        "unpinned LRU evicted"
    );
    assert!(store.get(&digests[2]).unwrap().is_some());
    let err = store
        .put_bytes(digest_of(&data(300_000)), &data(300_000), None)
        .unwrap_err();
    assert!(matches!(err, StoreError::QuotaExceeded { .. }));
}

#[test]
fn index_rebuilds_from_sidecars_and_rehash() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(200_000);
    let d = digest_of(&bytes);
    {
        let store = open(dir.path(), 0);
        store
            .put_bytes(d, &bytes, Some("application/x-test".into()))
            .unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = open(dir.path(), 0);
    assert_eq!(
        store.get(&d).unwrap().unwrap().media_type.as_deref(),
        Some("application/x-test")
    );
    drop(store);
    // Without the sidecar the blob is re-hashed and still served (media type unknown).
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    std::fs::remove_file(
        dir.path()
            .join("blobs/sha256")
            .join(format!("{}.meta", d.hex())),
    )
    .unwrap();
    let store = open(dir.path(), 0);
    let rec = store.get(&d).unwrap().unwrap();
    assert_eq!(rec.size(), bytes.len() as u64);
    assert_eq!(store.used_bytes(), bytes.len() as u64);
}

#[test]
fn chunks_in_any_order_commit_and_are_checked_against_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 0);
    let bytes = data(CHUNK as usize * 4 + 1000);
    let d = digest_of(&bytes);
    let chunk = |i: usize| &bytes[i * CHUNK as usize..((i + 1) * CHUNK as usize).min(bytes.len())];
    let index: Vec<shoal_proto::ChunkHash> = (0..5)
        .map(|i| shoal_proto::ChunkHash(*blake3::hash(chunk(i)).as_bytes()))
        .collect();
    let mut ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
    // A forged chunk is refused and nothing is recorded.
    let mut forged = chunk(2).to_vec();
    forged[0] ^= 1;
    assert!(matches!(
        ingest.write_chunk(2, &forged, Some(&index[2])),
        Err(StoreError::ChunkMismatch { index: 2, .. })
    ));
    assert_eq!(ingest.present_chunks().count(), 0);
    for i in [4, 2, 0, 3] {
        ingest
            .write_chunk(i as u32, chunk(i), Some(&index[i]))
            .unwrap();
    }
    assert_eq!(ingest.offset(), CHUNK as u64, "only chunk 0 is contiguous");
    ingest.write_chunk(1, chunk(1), Some(&index[1])).unwrap();
    assert_eq!(ingest.offset(), bytes.len() as u64);
    let rec = ingest.commit().unwrap();
    assert_eq!(rec.chunks.hashes, index);
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), bytes);
}

#[test]
fn resume_keeps_chunks_after_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(CHUNK as usize * 4);
    let d = digest_of(&bytes);
    let chunk = |i: usize| &bytes[i * CHUNK as usize..(i + 1) * CHUNK as usize];
    {
        let store = open(dir.path(), 0);
        let mut ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
        ingest.write_chunk(0, chunk(0), None).unwrap();
        ingest.write_chunk(3, chunk(3), None).unwrap();
    }
    let store = open(dir.path(), 0);
    let mut ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
    assert_eq!(ingest.present_chunks().collect::<Vec<_>>(), vec![0, 3]);
    assert_eq!(ingest.offset(), CHUNK as u64);
    ingest.write_chunk(2, chunk(2), None).unwrap();
    ingest.write_chunk(1, chunk(1), None).unwrap();
    assert_eq!(ingest.commit().unwrap().digest, d);
}

/// A swarm download may take its peers' chunk size (an upgrade changed the default);
/// after a restart the partial resumes in that layout, on either download path, and the
/// committed blob's index keeps it.
#[test]
fn a_partial_in_another_chunk_size_resumes_in_that_size() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = shoal_proto::ChunkLayout::for_blob(CHUNK as u64 * 8, 2 * CHUNK);
    let bytes = data(theirs.size as usize);
    let d = digest_of(&bytes);
    let chunk = |i: u32| {
        &bytes[theirs.range(i).unwrap().start as usize..theirs.range(i).unwrap().end as usize]
    };
    {
        let store = open(dir.path(), 0);
        let mut ingest = store.begin_ingest_as(d, theirs, None).unwrap();
        ingest.write_chunk(0, chunk(0), None).unwrap();
        ingest.write_chunk(2, chunk(2), None).unwrap();
    }
    let store = open(dir.path(), 0);
    assert_eq!(store.partial_layout(&d).unwrap(), Some(theirs));
    {
        // The origin's path (`begin_ingest`) resumes it too, in its layout.
        let ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
        assert_eq!(ingest.present_chunks().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(ingest.offset(), 2 * CHUNK as u64);
    }
    let mut ingest = store.begin_ingest_as(d, theirs, None).unwrap();
    assert_eq!(ingest.present_chunks().collect::<Vec<_>>(), vec![0, 2]);
    ingest.write_chunk(1, chunk(1), None).unwrap();
    ingest.write_chunk(3, chunk(3), None).unwrap();
    let record = ingest.commit().unwrap();
    assert_eq!(record.chunks.layout, theirs);
    assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), bytes);
}

#[test]
fn pins_hold_shared_blobs_until_the_last_pin_goes_and_gc_respects_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 0);
    let blobs: Vec<Digest> = (0..3)
        .map(|i| {
            let b = data(1000 + i);
            store.put_bytes(digest_of(&b), &b, None).unwrap().digest
        })
        .collect();
    let pin = |blobs: &[Digest]| super::PinRecord {
        digest: blobs[0],
        blobs: blobs.to_vec(),
    };
    // Two references share blob 1.
    store.pin("r/a:1", &pin(&blobs[0..2])).unwrap();
    store.pin("r/b:1", &pin(&blobs[1..2])).unwrap();
    let dry = store.gc(0, true).unwrap();
    assert_eq!(dry.len(), 1, "only the unpinned blob would go");
    assert!(
        store.get(&blobs[2]).unwrap().is_some(),
        "dry run removes nothing"
    );

    let (_, released) = store.unpin("r/a:1").unwrap().unwrap();
    assert_eq!(released, vec![blobs[0]], "blob 1 is still held by r/b:1");
    assert!(store.unpin("r/a:1").unwrap().is_none());
    let gone: Vec<Digest> = store
        .gc(0, false)
        .unwrap()
        .iter()
        .map(|(r, _)| r.digest)
        .collect();
    assert!(gone.contains(&blobs[0]) && gone.contains(&blobs[2]));
    assert!(store.get(&blobs[1]).unwrap().is_some_and(|r| r.pinned));
    assert_eq!(store.used_bytes(), 1001);

    // Pins survive a reopen (sled and sidecars).
    drop(store);
    let store = open(dir.path(), 0);
    assert_eq!(store.pins().unwrap().len(), 1);
    assert!(store.gc(0, false).unwrap().is_empty());
}

/// A file's page-cache pages, as `cachestat(2)` (Linux 6.5) counts them.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod write_behind {
    use std::os::fd::AsRawFd;

    use super::*;

    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }

    #[repr(C)]
    #[derive(Default, Debug)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }

    const SYS_CACHESTAT: libc::c_long = 451;

    fn dirty_pages(path: &std::path::Path) -> u64 {
        let file = std::fs::File::open(path).unwrap();
        let range = Range { off: 0, len: 0 };
        let mut stat = CacheStat::default();
        // SAFETY: cachestat reads `range` and writes `stat`, both live for the call.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd(),
                &range as *const Range,
                &mut stat as *mut CacheStat,
                0,
            )
        };
        assert_eq!(
            rc,
            0,
            "cachestat failed (needs Linux 6.5): {}",
            std::io::Error::last_os_error()
        );
        assert!(stat.nr_cache > 0, "the file's pages are cached: {stat:?}");
        stat.nr_dirty
    }

    /// A directory on a disk: tmpfs pages are always dirty, and write-behind is moot there.
    fn disk_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
        let fs = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            assert_eq!(libc::statfs(path.as_ptr(), &mut st), 0);
            st.f_type
        };
        assert_ne!(
            fs, 0x0102_1994,
            "/var/tmp must be on a disk for this test, not tmpfs"
        );
        dir
    }

    /// Dirty pages of a 4 MiB blob's staging file once `write` has put every byte in.
    fn dirty_after_writing(write: impl FnOnce(&mut crate::store::Ingest, &[u8])) -> u64 {
        let dir = disk_dir();
        let store = open(dir.path(), 0);
        let bytes = data(CHUNK as usize * 64);
        let d = digest_of(&bytes);
        let mut ingest = store.begin_ingest(d, bytes.len() as u64, None).unwrap();
        write(&mut ingest, &bytes);
        let dirty = dirty_pages(&store.partial_path(&d));
        ingest.commit().unwrap();
        dirty
    }

    /// Without write-behind the kernel leaves fresh pages dirty for 30 s
    /// (`vm.dirty_expire_centisecs`), and the commit's fsync writes them all at once.
    #[test]
    fn chunks_written_in_any_order_are_not_left_dirty() {
        let dirty = dirty_after_writing(|ingest, bytes| {
            for (i, chunk) in bytes.chunks(CHUNK as usize).enumerate().rev() {
                ingest.write_chunk(i as u32, chunk, None).unwrap();
            }
        });
        assert_eq!(dirty, 0);
    }

    #[test]
    fn a_streamed_blob_is_not_left_dirty() {
        let dirty = dirty_after_writing(|ingest, bytes| {
            for piece in bytes.chunks(10_000) {
                ingest.write(piece).unwrap();
            }
        });
        assert_eq!(dirty, 0);
    }
}

#[test]
fn a_blob_too_large_for_one_index_frame_is_cut_into_larger_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 0);
    // Past MAX_INDEX_CHUNKS chunks of 64 KiB (8 GiB), chunks double to 128 KiB.
    let size = 9 << 30;
    let d = Digest::from_sha256_bytes([3; 32]);
    let mut ingest = store.begin_ingest(d, size, None).unwrap();
    let configured = data(CHUNK as usize);
    assert!(matches!(
        ingest.write_chunk(1, &configured, None),
        Err(StoreError::SizeMismatch { expected, .. }) if expected == 2 * u64::from(CHUNK)
    ));
    // Chunk 1 lands at 128 KiB in a sparse staging file, and the partial records it.
    ingest
        .write_chunk(1, &data(2 * CHUNK as usize), None)
        .unwrap();
    assert_eq!(
        store.partials().unwrap(),
        vec![(d, size, 2 * u64::from(CHUNK))]
    );
    ingest.discard();
}
