//! Chunks: the unit of transfer and verification.
//!
//! A blob of `size` bytes is cut into `ceil(size / chunk_size)` chunks; the last one
//! may be short. A zero-length blob has zero chunks. The chunk index is the list of
//! BLAKE3 hashes of the chunks, in order. Only a node that has verified the blob's full
//! sha256 may publish one, which is what lets a peer check each chunk on arrival.

use std::fmt;
use std::ops::Range;

/// Default chunk size: 512 KiB. A chunk is relayed only once whole, so smaller chunks
/// reach the next node sooner; each halving about doubles the scheduler's work per blob
/// and the messages per byte. Simulated, 4 -> 2 -> 1 MiB: 8-node cold start 1.26x ->
/// 1.15x -> 1.11x T_limit, 1000 nodes cold 1.61x -> 1.44x -> 1.34x. Emulated (8 nodes,
/// 200 Mbit/s, 512 MiB, one 2-core machine, the daemons CPU-bound): 1 MiB was 0.05-0.15x
/// faster warm than 2 MiB; 512 KiB then took the warm start from 1.12-1.15x (median
/// 1.14) to 1.12-1.13x, cold no slower; 256 KiB made the cold start 1.29-1.36x. Ingest
/// costs about the same from 512 KiB up. See `benches/RESULTS.md`, sessions 8, 12, 27.
pub const DEFAULT_CHUNK_SIZE: u32 = 512 * 1024;

/// Smallest chunk size accepted in configuration (64 KiB).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;

/// Largest chunk size accepted in configuration (64 MiB).
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;

/// Most chunks a blob is cut into while the chunk size can still grow: 131,072 hashes
/// make a 4 MiB `Index` frame, half of [`crate::wire::MAX_FRAME`]. With 512 KiB chunks
/// this is 64 GiB; a larger blob gets larger chunks (see [`ChunkLayout::for_blob`]),
/// so every blob up to 8 TiB has an index a peer can send and its chunks stay
/// verifiable one by one.
pub const MAX_INDEX_CHUNKS: u32 = 128 * 1024;

/// How a blob of a given size is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkLayout {
    /// Total blob size in bytes.
    pub size: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
}

impl ChunkLayout {
    /// Layout for `size` bytes in chunks of `chunk_size` (must be non-zero).
    pub fn new(size: u64, chunk_size: u32) -> Self {
        debug_assert!(chunk_size > 0);
        ChunkLayout {
            size,
            chunk_size: chunk_size.max(1),
        }
    }

    /// The layout every node uses for a blob of `size` bytes when configured with
    /// `configured` chunks: that size, doubled until the blob fits in
    /// [`MAX_INDEX_CHUNKS`] chunks, but never past [`MAX_CHUNK_SIZE`]. Nodes with the
    /// same configuration agree on it without asking each other.
    pub fn for_blob(size: u64, configured: u32) -> Self {
        let mut chunk_size = configured.max(1);
        while size.div_ceil(u64::from(chunk_size)) > u64::from(MAX_INDEX_CHUNKS)
            && chunk_size <= MAX_CHUNK_SIZE / 2
        {
            chunk_size *= 2;
        }
        ChunkLayout::new(size, chunk_size)
    }

    /// Whether some node could have chosen this layout: [`ChunkLayout::for_blob`] with a
    /// chunk size that `--chunk-size` accepts. A node checks this before downloading a
    /// blob in a peer's layout, so that a peer cannot make it track chunks of any size.
    pub fn is_well_formed(&self) -> bool {
        (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            && *self == ChunkLayout::for_blob(self.size, self.chunk_size)
    }

    /// Number of chunks.
    pub fn count(&self) -> u32 {
        let n = self.size.div_ceil(u64::from(self.chunk_size));
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Byte range of chunk `index`, or `None` past the end.
    pub fn range(&self, index: u32) -> Option<Range<u64>> {
        let start = u64::from(index) * u64::from(self.chunk_size);
        if start >= self.size {
            return None;
        }
        Some(start..(start + u64::from(self.chunk_size)).min(self.size))
    }

    /// Index of the chunk containing byte `offset`.
    pub fn chunk_of(&self, offset: u64) -> u32 {
        u32::try_from(offset / u64::from(self.chunk_size)).unwrap_or(u32::MAX)
    }
}

/// BLAKE3 hash of one chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkHash(pub [u8; 32]);

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl serde::Serialize for ChunkHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for ChunkHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.as_bytes(), &mut out).map_err(serde::de::Error::custom)?;
        Ok(ChunkHash(out))
    }
}

/// The chunk index of a fully verified blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkIndex {
    /// Geometry the hashes refer to.
    pub layout: ChunkLayout,
    /// One BLAKE3 hash per chunk, in order.
    pub hashes: Vec<ChunkHash>,
}

impl ChunkIndex {
    /// True when the number of hashes matches the layout.
    pub fn is_consistent(&self) -> bool {
        self.hashes.len() == self.layout.count() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_keeps_the_configured_chunk_size_until_its_index_would_outgrow_the_limit() {
        const MIB: u64 = 1024 * 1024;
        let one_mib = MIB as u32;
        let limit = u64::from(MAX_INDEX_CHUNKS) * MIB;
        assert_eq!(ChunkLayout::for_blob(0, one_mib).chunk_size, one_mib);
        assert_eq!(ChunkLayout::for_blob(limit, one_mib).chunk_size, one_mib);
        assert_eq!(
            ChunkLayout::for_blob(limit + 1, one_mib).chunk_size,
            2 * one_mib
        );
        let big = ChunkLayout::for_blob(300 << 30, one_mib);
        assert_eq!(big.chunk_size, 4 * one_mib);
        assert!(big.count() <= MAX_INDEX_CHUNKS);
        // At the largest chunk size the count may exceed the limit again.
        let huge = ChunkLayout::for_blob(16 << 40, one_mib);
        assert_eq!(huge.chunk_size, MAX_CHUNK_SIZE);
        assert_eq!(huge.count(), 2 * MAX_INDEX_CHUNKS);
        // A configured size above the limit's need is kept as it is.
        assert_eq!(
            ChunkLayout::for_blob(limit, MAX_CHUNK_SIZE).chunk_size,
            MAX_CHUNK_SIZE
        );
    }

    #[test]
    fn a_layout_is_well_formed_when_for_blob_could_have_chosen_it() {
        const MIB: u32 = 1024 * 1024;
        assert!(ChunkLayout::for_blob(512 << 20, MIB).is_well_formed());
        assert!(ChunkLayout::for_blob(512 << 20, MIB / 2).is_well_formed());
        assert!(ChunkLayout::for_blob(0, MIN_CHUNK_SIZE).is_well_formed());
        // Below or above what `--chunk-size` accepts.
        assert!(!ChunkLayout::new(512 << 20, MIN_CHUNK_SIZE / 2).is_well_formed());
        assert!(!ChunkLayout::new(1 << 30, 2 * MAX_CHUNK_SIZE).is_well_formed());
        // More chunks than `for_blob` ever makes at that size.
        let too_many = u64::from(MAX_INDEX_CHUNKS) * u64::from(MIB) + 1;
        assert!(!ChunkLayout::new(too_many, MIB).is_well_formed());
        assert!(ChunkLayout::new(too_many, 2 * MIB).is_well_formed());
    }

    #[test]
    fn geometry() {
        let l = ChunkLayout::new(10, 4);
        assert_eq!(l.count(), 3);
        assert_eq!(l.range(0), Some(0..4));
        assert_eq!(l.range(2), Some(8..10));
        assert_eq!(l.range(3), None);
        assert_eq!(l.chunk_of(9), 2);
        assert_eq!(ChunkLayout::new(0, 4).count(), 0);
        assert_eq!(ChunkLayout::new(8, 4).count(), 2);
    }
}
