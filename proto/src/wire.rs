//! The peer protocol: versioned, length-prefixed messages between `shoald` nodes.
//!
//! # Framing
//!
//! Every message is one frame on a QUIC stream:
//!
//! ```text
//! +----------------+---------+------+-----------------+
//! | length: u32 BE | version | type | payload ...     |
//! +----------------+---------+------+-----------------+
//!                  '----------- length bytes ---------'
//! ```
//!
//! `length` counts the version byte, the type byte and the payload. A frame longer than
//! [`MAX_FRAME`] is refused before it is read, so a peer cannot make a node buffer
//! arbitrary amounts. [`VERSION`] is 2 (version 1's `Request` had no held count); a
//! frame of another version is an error (the connection is dropped, and the log names
//! both versions; future versions are negotiated in [`Message::Hello`]).
//! All integers are big-endian; a digest is its 32 raw sha256 bytes.
//!
//! Chunk bytes do not travel inside a frame: [`Message::ChunkData`] announces `len`
//! bytes that follow it raw on the same stream, so the receiver can hash them into the
//! staging file as they arrive instead of buffering a 4 MiB frame.
//!
//! # Messages
//!
//! | type | message | payload |
//! |---|---|---|
//! | 1 | `Hello` | nonce `[32]`, proof `[32]`, agent (u16 len + UTF-8) |
//! | 2 | `HaveMap` | digest, size u64, chunk size u32, bitfield (`ceil(count/8)` bytes, MSB first, spare bits zero); size and chunk size 0 with no bitfield: layout not known yet |
//! | 3 | `Have` | digest, chunk u32 |
//! | 4 | `Request` | digest, chunk u32, held u32 (chunks of the blob the requester holds) |
//! | 5 | `ChunkData` | digest, chunk u32, len u32; then `len` raw bytes |
//! | 6 | `IndexRequest` | digest |
//! | 7 | `Index` | digest, size u64, chunk size u32, one BLAKE3 `[32]` per chunk |
//! | 8 | `Reject` | digest, chunk u32, reason u8 |
//! | 9 | `Error` | code u16, message (u16 len + UTF-8, at most [`MAX_TEXT`] bytes) |
//! | 10 | `TagRequest` | tag key (text: `registry/repository:tag`) |
//! | 11 | `Tag` | tag key (text), digest, resolved-at u64 (Unix seconds), media type (text) |
//! | 12 | `PreheatRequest` | image reference (text) |
//! | 13 | `PreheatStatus` | image reference (text), state u8, done u64, total u64, message (text) |
//! | 14 | `Interested` | digest, count u16 (at most [`MAX_INTERESTED`]), count × node id u64 |
//!
//! Tags are asked of peers only when the origin is unreachable (an offline swarm still
//! resolves tags some node has seen); the answer is a hint whose manifest is then
//! fetched by digest and verified.
//!
//! # Streams
//!
//! After the `Hello` exchange, every request is a new bidirectional stream whose
//! first frame says what it is:
//!
//! - `Request` → `ChunkData` + raw bytes, or `Reject` (`NotPresent`, `Busy`).
//! - `IndexRequest` → `Index` (only from a node holding the verified blob), or `Reject`.
//! - `TagRequest` → `Tag`, or `Reject`.
//! - `PreheatRequest` → `PreheatStatus`: starts fetching the reference into the
//!   receiver's store unless it already is, and reports where that stands (state 0
//!   running, 1 done, 2 failed with the message). Asking again is how progress is polled.
//! - `HaveMap` opens an *interest link* for one blob that lasts the download: the other
//!   side answers with its own `HaveMap` (or `Reject` when it neither holds nor wants the
//!   blob), then both send `HaveMap` (full state, replaces the last) and `Have` (one more
//!   chunk) as they progress. A node with the blob complete answers and finishes its
//!   side. Nodes of a cold start learn of each other, and of each other's chunks, here.
//!   A downloading node also sends `Interested` on its links whenever the set of its
//!   linked peers that download the blob changes: the receiver then knows the
//!   downloaders two hops out, and assigns origin chunks over that wider set (the
//!   scheduler's `Event::Interested`). A node id is the first 8 bytes (little-endian)
//!   of the BLAKE3 of the node's PeerId.
//!
//! # Security
//!
//! Each QUIC connection is TLS authenticated by the libp2p identity of both sides
//! (their PeerIds). On top of that, the first frame each side sends is `Hello`, whose
//! `proof` shows knowledge of the cluster secret: a keyed BLAKE3 of both PeerIds, the
//! sender's nonce and keying material exported from the TLS session (see
//! [`hello_proof`]). The client speaks first on the connection's first stream; the
//! server answers with its own `Hello` or closes the connection. A node that cannot prove it is refused before it can
//! request or serve anything. Every chunk is checked against the chunk index, which
//! only nodes that verified the whole blob's sha256 publish.

use crate::chunk::{ChunkIndex, ChunkLayout};
use crate::digest::Digest;

mod codec;

/// Protocol version spoken by this build.
pub const VERSION: u8 = 2;

/// Largest frame accepted (version + type + payload): 8 MiB. The largest `Index` a node
/// builds is [`crate::chunk::MAX_INDEX_CHUNKS`] hashes (4 MiB) for any blob up to 8 TiB,
/// because [`ChunkLayout::for_blob`] grows the chunks of larger blobs.
pub const MAX_FRAME: u32 = 8 * 1024 * 1024;

/// Most node ids in one `Interested` frame: 8 KiB, and more than one node's links.
pub const MAX_INTERESTED: usize = 1024;

/// Longest text field (agent strings, error messages).
pub const MAX_TEXT: usize = 1024;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Why a chunk request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The node does not have that chunk (any more).
    NotPresent,
    /// The node is at its upload limit; ask elsewhere or later.
    Busy,
    /// The requester is banned or not authenticated.
    Refused,
}

impl RejectReason {
    fn code(self) -> u8 {
        match self {
            RejectReason::NotPresent => 1,
            RejectReason::Busy => 2,
            RejectReason::Refused => 3,
        }
    }

    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            1 => RejectReason::NotPresent,
            2 => RejectReason::Busy,
            3 => RejectReason::Refused,
            other => {
                return Err(DecodeError::Malformed(format!(
                    "unknown reject reason {other}"
                )))
            }
        })
    }
}

/// One peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First frame on a connection: proof of the cluster secret.
    Hello {
        /// Fresh random bytes of the sender.
        nonce: [u8; 32],
        /// See [`hello_proof`].
        proof: [u8; 32],
        /// Software and version, for logs.
        agent: String,
    },
    /// Which chunks of a blob the sender holds.
    HaveMap {
        /// Blob.
        digest: Digest,
        /// Size and chunking of the blob; `None` from a node that has only just asked
        /// for it and does not know its size yet.
        layout: Option<ChunkLayout>,
        /// Bit `i` (MSB first) set when chunk `i` is held.
        bitfield: Vec<u8>,
    },
    /// The sender now also holds one more chunk.
    Have {
        /// Blob.
        digest: Digest,
        /// Chunk index.
        chunk: u32,
    },
    /// Please send this chunk.
    Request {
        /// Blob.
        digest: Digest,
        /// Chunk index.
        chunk: u32,
        /// How many chunks of the blob the requester holds: a busy uploader admits the
        /// requester furthest behind first.
        held: u32,
    },
    /// `len` raw chunk bytes follow this frame.
    ChunkData {
        /// Blob.
        digest: Digest,
        /// Chunk index.
        chunk: u32,
        /// Bytes that follow.
        len: u32,
    },
    /// Please send the chunk index of this blob.
    IndexRequest {
        /// Blob.
        digest: Digest,
    },
    /// The chunk index of a blob whose sha256 the sender verified.
    Index {
        /// Blob.
        digest: Digest,
        /// Layout and hashes.
        index: ChunkIndex,
    },
    /// A request that will not be served.
    Reject {
        /// Blob.
        digest: Digest,
        /// Chunk index.
        chunk: u32,
        /// Why.
        reason: RejectReason,
    },
    /// Asks which digest a tag had when the peer last resolved it.
    TagRequest {
        /// `registry/repository:tag`.
        key: String,
    },
    /// A peer's last resolution of a tag.
    Tag {
        /// `registry/repository:tag`.
        key: String,
        /// Manifest digest.
        digest: Digest,
        /// When the peer resolved it (Unix seconds).
        resolved_at: u64,
        /// Manifest media type.
        media_type: String,
    },
    /// Asks a node to fetch an image or model into its store (`shoal preheat`).
    PreheatRequest {
        /// `registry/repository:tag` or `...@digest`.
        reference: String,
    },
    /// Where a preheat stands on the node that was asked.
    PreheatStatus {
        /// The reference asked for.
        reference: String,
        /// [`crate::control::PreheatState`] code.
        state: u8,
        /// Bytes of the model present.
        done: u64,
        /// Bytes of the model (0 until its manifest is read).
        total: u64,
        /// Failure reason, or empty.
        message: String,
    },
    /// The sender and its linked peers that are downloading this blob too (sent on an
    /// interest link). Replaces the previous list from the same sender.
    Interested {
        /// Blob.
        digest: Digest,
        /// Node ids (see the module docs), at most [`MAX_INTERESTED`].
        nodes: Vec<u64>,
    },
    /// A protocol error; the sender closes the connection after it.
    Error {
        /// Machine-readable code.
        code: u16,
        /// Human-readable message.
        message: String,
    },
}

/// Why bytes could not be decoded. Every case drops the connection; none panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversized(u32),
    /// A frame too short to hold version and type.
    #[error("frame of {0} bytes is too short")]
    TooShort(u32),
    /// A version this build does not speak.
    #[error("unsupported protocol version {0} (this node speaks {VERSION})")]
    UnknownVersion(u8),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The payload does not match its type.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Proof of the cluster secret for a `Hello` sent by `sender` to `receiver`.
///
/// Keyed BLAKE3 (key derived from the secret) over both PeerIds, the sender's nonce and
/// `binding`: keying material exported from the connection's TLS session (RFC 5705),
/// which both ends derive and nobody else can. A proof is therefore bound to this pair
/// of nodes and this very connection, and cannot be replayed on another.
pub fn hello_proof(
    secret: &[u8],
    sender: &[u8],
    receiver: &[u8],
    nonce: &[u8; 32],
    binding: &[u8; 32],
) -> [u8; 32] {
    let key = blake3::derive_key("shoal cluster secret v1", secret);
    let mut h = blake3::Hasher::new_keyed(&key);
    for part in [sender, receiver] {
        h.update(&(part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update(nonce);
    h.update(binding);
    *h.finalize().as_bytes()
}

/// Validates a frame's length prefix before its body is read.
pub fn check_length(len: u32) -> Result<(), DecodeError> {
    if len > MAX_FRAME {
        Err(DecodeError::Oversized(len))
    } else if len < 2 {
        Err(DecodeError::TooShort(len))
    } else {
        Ok(())
    }
}

/// Bitfield helpers for `HaveMap`.
pub mod bitfield {
    /// A zeroed bitfield for `count` chunks.
    pub fn new(count: u32) -> Vec<u8> {
        vec![0; (count as usize).div_ceil(8)]
    }

    /// Sets bit `i` (MSB first). Out-of-range indexes are ignored.
    pub fn set(bits: &mut [u8], i: u32) {
        if let Some(b) = bits.get_mut(i as usize / 8) {
            *b |= 0x80 >> (i % 8);
        }
    }

    /// Whether bit `i` is set (false out of range).
    pub fn get(bits: &[u8], i: u32) -> bool {
        bits.get(i as usize / 8)
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }
}

#[cfg(test)]
mod tests;
