//! The sled metadata index. Everything in it about committed blobs can be rebuilt from
//! the data files (see `reconcile`); partial-blob chunk presence and tags are the only
//! things that live here alone.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_proto::{ChunkHash, Digest};

use super::{BlobRecord, Result, StoreError};

/// A tag resolved to a manifest digest, with when that was learned from the upstream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TagRecord {
    /// Manifest digest.
    pub digest: Digest,
    /// Manifest media type.
    pub media_type: String,
    /// Manifest size.
    pub size: u64,
    /// Unix seconds of the last successful upstream resolution.
    pub resolved_at: u64,
}

/// A blob being downloaded. Its present chunks are separate keys (see
/// [`Index::put_partial_chunk`]) so recording one chunk costs O(1), whatever the blob size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartialRecord {
    /// Blob size.
    pub size: u64,
    /// Chunk size of the staging file.
    pub chunk_size: u32,
    /// Media type, when known.
    pub media_type: Option<String>,
}

/// A pinned reference and the blobs its pin holds (`shoal pin`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinRecord {
    /// Manifest (or index) digest the reference resolved to when pinned.
    pub digest: Digest,
    /// Every blob of the manifest tree, manifests included.
    pub blobs: Vec<Digest>,
}

pub(crate) struct Index {
    db: sled::Db,
    blobs: sled::Tree,
    partials: sled::Tree,
    /// Key: digest (32 bytes) ++ chunk index (u32 BE). Value: the chunk's BLAKE3.
    partial_chunks: sled::Tree,
    access: sled::Tree,
    tags: sled::Tree,
    pins: sled::Tree,
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

/// Every record of a tree keyed by text, decoded.
fn decode_all<T: serde::de::DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<(String, T)>> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv?;
            Ok((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?))
        })
        .collect()
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

impl Index {
    pub(crate) fn open(path: &Path) -> Result<Index> {
        let db = match sled::open(path) {
            Ok(db) => db,
            Err(e) => {
                // sled 0.34 can fail to recover after an abrupt stop. The index is
                // rebuildable, so move the broken one aside and start empty.
                let aside = path.with_extension(format!("broken-{}", now_secs()));
                tracing::error!(error = %e, moved_to = %aside.display(), "metadata index unreadable; rebuilding from data files");
                std::fs::rename(path, &aside)
                    .map_err(|e| StoreError::io("moving broken index aside", e))?;
                sled::open(path)?
            }
        };
        Ok(Index {
            blobs: db.open_tree("blobs")?,
            partials: db.open_tree("partials")?,
            partial_chunks: db.open_tree("partial_chunks")?,
            access: db.open_tree("access")?,
            tags: db.open_tree("tags")?,
            pins: db.open_tree("pins")?,
            db,
        })
    }

    pub(crate) fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>> {
        let key = digest.hex();
        self.blobs
            .get(&key)?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    pub(crate) fn blobs(&self) -> Result<Vec<BlobRecord>> {
        self.blobs
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub(crate) fn put_blob(&self, record: &BlobRecord) -> Result<()> {
        let key = record.digest.hex();
        self.blobs.insert(&key, encode(record))?;
        if self.access.get(&key)?.is_none() {
            self.access.insert(&key, &now_secs().to_be_bytes())?;
        }
        Ok(())
    }

    pub(crate) fn set_access(&self, digest: &Digest, secs: u64) -> Result<()> {
        self.access.insert(digest.hex(), &secs.to_be_bytes())?;
        Ok(())
    }

    pub(crate) fn touch(&self, digest: &Digest) -> Result<()> {
        self.set_access(digest, now_secs())
    }

    pub(crate) fn remove_blob(&self, digest: &Digest) -> Result<()> {
        let key = digest.hex();
        self.blobs.remove(&key)?;
        self.access.remove(&key)?;
        Ok(())
    }

    /// Committed digests, least recently used first.
    pub(crate) fn by_last_access(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for kv in self.access.iter() {
            let (k, v) = kv?;
            let Ok(digest) = std::str::from_utf8(&k)
                .map_err(|_| ())
                .and_then(|s| Digest::from_hex(s).map_err(|_| ()))
            else {
                continue;
            };
            let secs = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            out.push((digest, secs));
        }
        out.sort_by_key(|&(_, secs)| secs);
        Ok(out)
    }

    pub(crate) fn partial(&self, digest: &Digest) -> Result<Option<PartialRecord>> {
        let key = digest.hex();
        self.partials
            .get(&key)?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    pub(crate) fn partial_digests(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for k in self.partials.iter().keys() {
            let k = k?;
            if let Ok(d) = std::str::from_utf8(&k)
                .map_err(|_| ())
                .and_then(|s| Digest::from_hex(s).map_err(|_| ()))
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub(crate) fn put_partial(&self, digest: &Digest, record: &PartialRecord) -> Result<()> {
        self.partials.insert(digest.hex(), encode(record))?;
        Ok(())
    }

    pub(crate) fn remove_partial(&self, digest: &Digest) -> Result<()> {
        self.partials.remove(digest.hex())?;
        for key in self.partial_chunks.scan_prefix(digest.as_bytes()).keys() {
            self.partial_chunks.remove(key?)?;
        }
        Ok(())
    }

    fn chunk_key(digest: &Digest, index: u32) -> [u8; 36] {
        let mut key = [0u8; 36];
        key[..32].copy_from_slice(digest.as_bytes());
        key[32..].copy_from_slice(&index.to_be_bytes());
        key
    }

    /// Records that chunk `index` of a partial blob is written, with its BLAKE3.
    pub(crate) fn put_partial_chunk(
        &self,
        digest: &Digest,
        index: u32,
        hash: &ChunkHash,
    ) -> Result<()> {
        self.partial_chunks
            .insert(Self::chunk_key(digest, index), &hash.0)?;
        Ok(())
    }

    /// The recorded chunks of a partial blob, by index.
    pub(crate) fn partial_chunks(&self, digest: &Digest) -> Result<Vec<(u32, ChunkHash)>> {
        let mut out = Vec::new();
        for kv in self.partial_chunks.scan_prefix(digest.as_bytes()) {
            let (k, v) = kv?;
            let (Ok(index), Ok(hash)) = (
                <[u8; 4]>::try_from(&k[32..]),
                <[u8; 32]>::try_from(v.as_ref()),
            ) else {
                continue;
            };
            out.push((u32::from_be_bytes(index), ChunkHash(hash)));
        }
        Ok(out)
    }

    pub(crate) fn tag(&self, key: &str) -> Result<Option<TagRecord>> {
        self.tags
            .get(key)?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    pub(crate) fn put_tag(&self, key: &str, record: &TagRecord) -> Result<()> {
        self.tags.insert(key, encode(record))?;
        Ok(())
    }

    pub(crate) fn tags(&self) -> Result<Vec<(String, TagRecord)>> {
        decode_all(&self.tags)
    }

    pub(crate) fn last_access(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .access
            .get(digest.hex())?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    pub(crate) fn pins(&self) -> Result<Vec<(String, PinRecord)>> {
        decode_all(&self.pins)
    }

    pub(crate) fn put_pin(&self, reference: &str, record: &PinRecord) -> Result<()> {
        self.pins.insert(reference, encode(record))?;
        self.pins.flush()?;
        Ok(())
    }

    pub(crate) fn remove_pin(&self, reference: &str) -> Result<Option<PinRecord>> {
        let old = self
            .pins
            .remove(reference)?
            .map(|v| decode(reference.as_bytes(), &v))
            .transpose()?;
        self.pins.flush()?;
        Ok(old)
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
