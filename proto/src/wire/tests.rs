use super::*;
use crate::chunk::ChunkHash;

fn d(n: u8) -> Digest {
    Digest::from_sha256_bytes([n; 32])
}

fn samples() -> Vec<Message> {
    let mut bits = bitfield::new(11);
    bitfield::set(&mut bits, 0);
    bitfield::set(&mut bits, 10);
    vec![
        Message::Hello {
            nonce: [1; 32],
            proof: [2; 32],
            agent: "shoald/0.1".into(),
        },
        Message::HaveMap {
            digest: d(1),
            layout: Some(ChunkLayout::new(11 * 65_536 - 5, 65_536)),
            bitfield: bits,
        },
        Message::HaveMap {
            digest: d(4),
            layout: None,
            bitfield: Vec::new(),
        },
        Message::Have {
            digest: d(2),
            chunk: 7,
        },
        Message::Request {
            digest: d(3),
            chunk: u32::MAX,
            held: 17,
        },
        Message::ChunkData {
            digest: d(4),
            chunk: 1,
            len: 4 << 20,
        },
        Message::IndexRequest { digest: d(5) },
        Message::Index {
            digest: d(6),
            index: ChunkIndex {
                layout: ChunkLayout::new(300_000, 65_536),
                hashes: vec![ChunkHash([9; 32]); 5],
            },
        },
        Message::Reject {
            digest: d(7),
            chunk: 3,
            reason: RejectReason::Busy,
        },
        Message::Error {
            code: 400,
            message: "bad request".into(),
        },
        Message::TagRequest {
            key: "registry-1.docker.io/library/alpine:3".into(),
        },
        Message::Tag {
            key: "registry-1.docker.io/library/alpine:3".into(),
            digest: d(5),
            resolved_at: 1_790_000_000,
            media_type: "application/vnd.oci.image.index.v1+json".into(),
        },
        Message::PreheatRequest {
            reference: "ghcr.io/org/model:v1".into(),
        },
        Message::PreheatStatus {
            reference: "ghcr.io/org/model:v1".into(),
            state: 2,
            done: 1 << 33,
            total: 1 << 34,
            message: "origin unreachable".into(),
        },
        Message::Interested {
            digest: d(8),
            nodes: vec![0, 1, u64::MAX, 0x0123_4567_89ab_cdef],
        },
        Message::Interested {
            digest: d(9),
            nodes: Vec::new(),
        },
    ]
}

#[test]
fn interested_lists_are_capped_both_ways() {
    // The encoder sends at most MAX_INTERESTED ids...
    let long = Message::Interested {
        digest: d(1),
        nodes: (0..MAX_INTERESTED as u64 + 5).collect(),
    };
    let (back, _) = Message::decode(&long.to_bytes()).unwrap().unwrap();
    let Message::Interested { nodes, .. } = back else {
        panic!("decoded {back:?}");
    };
    assert_eq!(nodes, (0..MAX_INTERESTED as u64).collect::<Vec<_>>());
    // ...and the decoder refuses a frame that claims more.
    let mut frame = vec![VERSION, 14];
    frame.extend_from_slice(d(1).as_bytes());
    frame.extend_from_slice(&(MAX_INTERESTED as u16 + 1).to_be_bytes());
    frame.extend(std::iter::repeat_n(0u8, 8 * (MAX_INTERESTED + 1)));
    assert!(matches!(
        Message::decode_frame(&frame),
        Err(DecodeError::Malformed(m)) if m.contains("interested nodes")
    ));
}

#[test]
fn the_index_of_a_blob_too_large_for_default_chunks_still_fits_a_frame() {
    // 1 TiB at the default 512 KiB would be 2,097,152 hashes (64 MiB): over MAX_FRAME.
    let layout = ChunkLayout::for_blob(1 << 40, crate::DEFAULT_CHUNK_SIZE);
    assert_eq!(layout.chunk_size, 8 << 20);
    assert_eq!(layout.count(), crate::chunk::MAX_INDEX_CHUNKS);
    let index = Message::Index {
        digest: d(1),
        index: ChunkIndex {
            layout,
            hashes: vec![ChunkHash([7; 32]); layout.count() as usize],
        },
    };
    let bytes = index.to_bytes();
    assert!(
        bytes.len() <= MAX_FRAME as usize + 4,
        "{} bytes",
        bytes.len()
    );
    let (back, used) = Message::decode(&bytes).unwrap().unwrap();
    assert_eq!((back, used), (index, bytes.len()));
}

#[test]
fn round_trip_every_message() {
    for m in samples() {
        let bytes = m.to_bytes();
        let (back, used) = Message::decode(&bytes).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn truncation_asks_for_more_never_panics() {
    for m in samples() {
        let bytes = m.to_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                Message::decode(&bytes[..cut]),
                Ok(None),
                "{m:?} cut at {cut}"
            );
        }
    }
}

#[test]
fn rejects_oversized_unknown_and_malformed() {
    let mut big = (MAX_FRAME + 1).to_be_bytes().to_vec();
    big.extend_from_slice(&[VERSION, 3]);
    assert_eq!(
        Message::decode(&big),
        Err(DecodeError::Oversized(MAX_FRAME + 1))
    );
    let mut v3 = Message::Have {
        digest: d(1),
        chunk: 1,
    }
    .to_bytes();
    v3[4] = 3;
    assert_eq!(Message::decode(&v3), Err(DecodeError::UnknownVersion(3)));
    // A version 1 node's `Request` (no held count) names the version, not a bad length.
    let mut v1_request = vec![0, 0, 0, 38, 1, 4];
    v1_request.extend_from_slice(d(1).as_bytes());
    v1_request.extend_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        Message::decode(&v1_request),
        Err(DecodeError::UnknownVersion(1))
    );
    let mut t = Message::Have {
        digest: d(1),
        chunk: 1,
    }
    .to_bytes();
    t[5] = 200;
    assert_eq!(Message::decode(&t), Err(DecodeError::UnknownType(200)));
    // A frame whose length cuts its own payload short, and one with trailing bytes.
    let mut short = Message::Have {
        digest: d(1),
        chunk: 1,
    }
    .to_bytes();
    short[3] -= 1;
    assert!(matches!(
        Message::decode(&short),
        Err(DecodeError::Malformed(_))
    ));
    let mut long = Message::IndexRequest { digest: d(1) }.to_bytes();
    long.push(0);
    long[3] += 1;
    assert!(matches!(
        Message::decode(&long),
        Err(DecodeError::Malformed(_))
    ));
    assert_eq!(
        Message::decode(&[0, 0, 0, 1, 1]),
        Err(DecodeError::TooShort(1))
    );
    // Bits past the last chunk.
    let bad = Message::HaveMap {
        digest: d(1),
        layout: Some(ChunkLayout::new(3 * 65_536, 65_536)),
        bitfield: vec![0xff],
    }
    .to_bytes();
    assert!(matches!(
        Message::decode(&bad),
        Err(DecodeError::Malformed(_))
    ));
    // An index whose hash count disagrees with its layout.
    let mut idx = Message::Index {
        digest: d(1),
        index: ChunkIndex {
            layout: ChunkLayout::new(200_000, 65_536),
            hashes: vec![ChunkHash([0; 32]); 4],
        },
    }
    .to_bytes();
    idx.truncate(idx.len() - 32);
    let len = (idx.len() - 4) as u32;
    idx[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        Message::decode(&idx),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..50_000 {
        let len = (next() % 96) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half the time, make the frame plausible so decoding gets past the header.
        if next() % 2 == 0 && buf.len() >= 6 {
            let l = (buf.len() - 4) as u32;
            buf[..4].copy_from_slice(&l.to_be_bytes());
            buf[4] = VERSION;
            buf[5] = (next() % 16) as u8;
        }
        let _ = Message::decode(&buf);
    }
}

#[test]
fn proof_binds_peers_nonces_and_secret() {
    let p = hello_proof(b"secret", b"alice", b"bob", &[1; 32], &[2; 32]);
    assert_eq!(
        p,
        hello_proof(b"secret", b"alice", b"bob", &[1; 32], &[2; 32])
    );
    assert_ne!(
        p,
        hello_proof(b"other", b"alice", b"bob", &[1; 32], &[2; 32])
    );
    assert_ne!(
        p,
        hello_proof(b"secret", b"bob", b"alice", &[1; 32], &[2; 32])
    );
    assert_ne!(
        p,
        hello_proof(b"secret", b"alice", b"bob", &[3; 32], &[2; 32])
    );
    // Length-prefixed: moving bytes between the ids changes the proof.
    assert_ne!(
        p,
        hello_proof(b"secret", b"alic", b"ebob", &[1; 32], &[2; 32])
    );
}

#[test]
fn bitfield_ops() {
    let mut b = bitfield::new(9);
    assert_eq!(b.len(), 2);
    bitfield::set(&mut b, 8);
    bitfield::set(&mut b, 100);
    assert!(bitfield::get(&b, 8) && !bitfield::get(&b, 7) && !bitfield::get(&b, 100));
}
