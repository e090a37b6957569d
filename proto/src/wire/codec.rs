//! Encoding and decoding of [`Message`] frames, as the parent module's table lays them out.

use super::{
    check_length, DecodeError, Message, RejectReason, LENGTH_PREFIX, MAX_INTERESTED, MAX_TEXT,
    VERSION,
};
use crate::chunk::{ChunkHash, ChunkIndex, ChunkLayout, MIN_CHUNK_SIZE};
use crate::digest::Digest;

/// A cursor over a frame body; every read fails cleanly past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed(format!(
                "needed {n} more bytes, frame has {}",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn digest(&mut self) -> Result<Digest, DecodeError> {
        Ok(Digest::from_sha256_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        if len > MAX_TEXT {
            return Err(DecodeError::Malformed(format!(
                "text field of {len} bytes exceeds {MAX_TEXT}"
            )));
        }
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| DecodeError::Malformed("text is not UTF-8".into()))
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(format!(
                "{} trailing bytes",
                self.buf.len()
            )))
        }
    }
}

/// Appends a text field (u16 length + UTF-8), cut to [`MAX_TEXT`] bytes.
fn put_text(out: &mut Vec<u8>, s: &str) {
    // Truncate on a char boundary rather than produce a frame the peer must reject.
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

impl Message {
    fn type_code(&self) -> u8 {
        match self {
            Message::Hello { .. } => 1,
            Message::HaveMap { .. } => 2,
            Message::Have { .. } => 3,
            Message::Request { .. } => 4,
            Message::ChunkData { .. } => 5,
            Message::IndexRequest { .. } => 6,
            Message::Index { .. } => 7,
            Message::Reject { .. } => 8,
            Message::Error { .. } => 9,
            Message::TagRequest { .. } => 10,
            Message::Tag { .. } => 11,
            Message::PreheatRequest { .. } => 12,
            Message::PreheatStatus { .. } => 13,
            Message::Interested { .. } => 14,
        }
    }

    /// Appends the framed message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, VERSION, self.type_code()]);
        match self {
            Message::Hello {
                nonce,
                proof,
                agent,
            } => {
                out.extend_from_slice(nonce);
                out.extend_from_slice(proof);
                put_text(out, agent);
            }
            Message::HaveMap {
                digest,
                layout,
                bitfield,
            } => {
                out.extend_from_slice(digest.as_bytes());
                let (size, chunk_size) = layout.map_or((0, 0), |l| (l.size, l.chunk_size));
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&chunk_size.to_be_bytes());
                out.extend_from_slice(bitfield);
            }
            Message::Have { digest, chunk } => {
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&chunk.to_be_bytes());
            }
            Message::Request {
                digest,
                chunk,
                held,
            } => {
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&chunk.to_be_bytes());
                out.extend_from_slice(&held.to_be_bytes());
            }
            Message::ChunkData { digest, chunk, len } => {
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&chunk.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Message::IndexRequest { digest } => out.extend_from_slice(digest.as_bytes()),
            Message::Index { digest, index } => {
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&index.layout.size.to_be_bytes());
                out.extend_from_slice(&index.layout.chunk_size.to_be_bytes());
                for h in &index.hashes {
                    out.extend_from_slice(&h.0);
                }
            }
            Message::Reject {
                digest,
                chunk,
                reason,
            } => {
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&chunk.to_be_bytes());
                out.push(reason.code());
            }
            Message::Error { code, message } => {
                out.extend_from_slice(&code.to_be_bytes());
                put_text(out, message);
            }
            Message::TagRequest { key } => put_text(out, key),
            Message::Tag {
                key,
                digest,
                resolved_at,
                media_type,
            } => {
                put_text(out, key);
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&resolved_at.to_be_bytes());
                put_text(out, media_type);
            }
            Message::PreheatRequest { reference } => put_text(out, reference),
            Message::PreheatStatus {
                reference,
                state,
                done,
                total,
                message,
            } => {
                put_text(out, reference);
                out.push(*state);
                out.extend_from_slice(&done.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                put_text(out, message);
            }
            Message::Interested { digest, nodes } => {
                // Truncated rather than refused by the peer, like text fields.
                let nodes = &nodes[..nodes.len().min(MAX_INTERESTED)];
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&(nodes.len() as u16).to_be_bytes());
                for n in nodes {
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
        }
        let len = (out.len() - start - LENGTH_PREFIX) as u32;
        out[start..start + LENGTH_PREFIX].copy_from_slice(&len.to_be_bytes());
    }

    /// The framed message as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((message, used)))` consumed `used` bytes. Oversized, unknown-version,
    /// unknown-type and malformed frames are errors.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        check_length(len)?;
        let total = LENGTH_PREFIX + len as usize;
        let Some(frame) = buf.get(LENGTH_PREFIX..total) else {
            return Ok(None);
        };
        Ok(Some((Message::decode_frame(frame)?, total)))
    }

    /// Decodes a frame body (version, type, payload) whose length was already checked
    /// with [`check_length`].
    pub fn decode_frame(frame: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader { buf: frame };
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let msg = match r.u8()? {
            1 => Message::Hello {
                nonce: r.array()?,
                proof: r.array()?,
                agent: r.text()?,
            },
            2 => {
                let digest = r.digest()?;
                let size = r.u64()?;
                let chunk_size = r.u32()?;
                let layout = match (size, chunk_size) {
                    (0, 0) => None,
                    (_, c) if c < MIN_CHUNK_SIZE => {
                        return Err(DecodeError::Malformed(format!(
                            "chunk size {c} below minimum"
                        )))
                    }
                    (size, chunk_size) => Some(ChunkLayout::new(size, chunk_size)),
                };
                let chunk_count = layout.map_or(0, |l| l.count());
                let bytes = (chunk_count as usize).div_ceil(8);
                let bitfield = r.take(bytes)?.to_vec();
                let spare = bytes * 8 - chunk_count as usize;
                if spare > 0
                    && bitfield
                        .last()
                        .is_some_and(|b| b & ((1u8 << spare) - 1) != 0)
                {
                    return Err(DecodeError::Malformed(
                        "bitfield has bits set past the last chunk".into(),
                    ));
                }
                Message::HaveMap {
                    digest,
                    layout,
                    bitfield,
                }
            }
            3 => Message::Have {
                digest: r.digest()?,
                chunk: r.u32()?,
            },
            4 => Message::Request {
                digest: r.digest()?,
                chunk: r.u32()?,
                held: r.u32()?,
            },
            5 => Message::ChunkData {
                digest: r.digest()?,
                chunk: r.u32()?,
                len: r.u32()?,
            },
            6 => Message::IndexRequest {
                digest: r.digest()?,
            },
            7 => {
                let digest = r.digest()?;
                let size = r.u64()?;
                let chunk_size = r.u32()?;
                if chunk_size < MIN_CHUNK_SIZE {
                    return Err(DecodeError::Malformed(format!(
                        "chunk size {chunk_size} below minimum"
                    )));
                }
                let layout = ChunkLayout::new(size, chunk_size);
                let count = layout.count() as usize;
                // The frame limit already bounds this; check before allocating anyway.
                if count.saturating_mul(32) != r.buf.len() {
                    return Err(DecodeError::Malformed(format!(
                        "index for {count} chunks has {} hash bytes",
                        r.buf.len()
                    )));
                }
                let hashes = (0..count)
                    .map(|_| r.array().map(ChunkHash))
                    .collect::<Result<Vec<_>, _>>()?;
                Message::Index {
                    digest,
                    index: ChunkIndex { layout, hashes },
                }
            }
            8 => Message::Reject {
                digest: r.digest()?,
                chunk: r.u32()?,
                reason: RejectReason::from_code(r.u8()?)?,
            },
            9 => Message::Error {
                code: r.u16()?,
                message: r.text()?,
            },
            10 => Message::TagRequest { key: r.text()? },
            11 => Message::Tag {
                key: r.text()?,
                digest: r.digest()?,
                resolved_at: r.u64()?,
                media_type: r.text()?,
            },
            12 => Message::PreheatRequest {
                reference: r.text()?,
            },
            13 => Message::PreheatStatus {
                reference: r.text()?,
                state: r.u8()?,
                done: r.u64()?,
                total: r.u64()?,
                message: r.text()?,
            },
            14 => {
                let digest = r.digest()?;
                let count = usize::from(r.u16()?);
                if count > MAX_INTERESTED {
                    return Err(DecodeError::Malformed(format!(
                        "{count} interested nodes, more than {MAX_INTERESTED}"
                    )));
                }
                let nodes = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
                Message::Interested { digest, nodes }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}
