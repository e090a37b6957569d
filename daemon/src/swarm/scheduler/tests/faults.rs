//! Failures: lost and timed-out requests, bad chunks, a failing origin, a blob that
//! fails its sha256.

use std::collections::HashSet;

use super::*;

#[test]
fn lost_peer_requests_move_to_another_peer() {
    // No endgame duplicates here, to see the re-requests themselves.
    let mut s = Scheduler::new(
        ME,
        layout(4),
        true,
        Config {
            endgame_sources: 1,
            ..seeds_only()
        },
    );
    let acts = s.handle(ms(0), holding(A, bits(4, |_| true)));
    let to_a: HashSet<u32> = requests(&acts).into_iter().map(|(_, c)| c).collect();
    assert_eq!(to_a.len(), 4);
    s.handle(ms(1), holding(B, bits(4, |_| true)));
    let acts = s.handle(ms(2), Event::PeerGone { peer: A });
    let to_b: HashSet<u32> = requests(&acts)
        .into_iter()
        .map(|(src, c)| {
            assert_eq!(src, Source::Peer(B));
            c
        })
        .collect();
    assert_eq!(to_b, to_a);
}

#[test]
fn bad_chunk_bans_the_peer_and_refetches_elsewhere() {
    let mut s = Scheduler::new(
        ME,
        layout(1),
        true,
        Config {
            max_requests_per_peer: 1,
            endgame_sources: 1,
            ..seeds_only()
        },
    );
    let acts = s.handle_batch(ms(0), [holding(A, vec![true]), holding(B, vec![true])]);
    let (first, _) = requests(&acts)[0];
    let Source::Peer(liar) = first else { panic!() };
    let honest = if liar == A { B } else { A };
    let acts = s.handle(
        ms(5),
        Event::ChunkArrived {
            source: first,
            chunk: 0,
            valid: false,
        },
    );
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Ban { peer, .. } if *peer == liar)));
    assert_eq!(requests(&acts), vec![(Source::Peer(honest), 0)]);
    // The liar announcing again changes nothing while banned.
    let acts = s.handle(ms(6), holding(liar, vec![true]));
    assert!(requests(&acts)
        .iter()
        .all(|(s, _)| *s != Source::Peer(liar)));
    assert!(!s.has_chunk(0));
}

#[test]
fn timeouts_retry_elsewhere_and_penalise() {
    let cfg = Config {
        max_requests_per_peer: 1,
        request_timeout: ms(100),
        endgame_sources: 1,
        ..seeds_only()
    };
    let mut s = Scheduler::new(ME, layout(1), true, cfg);
    let acts = s.handle(ms(0), holding(A, vec![true]));
    assert_eq!(requests(&acts), vec![(Source::Peer(A), 0)]);
    s.handle(ms(10), holding(B, vec![true]));
    let acts = s.handle(ms(150), Event::Tick);
    assert!(acts.contains(&Action::Cancel {
        source: Source::Peer(A),
        chunk: 0
    }));
    assert!(requests(&acts).contains(&(Source::Peer(B), 0)), "{acts:?}");
}

#[test]
fn origin_failures_abort_after_the_limit() {
    let mut s = Scheduler::new(
        ME,
        layout(1),
        false,
        Config {
            max_origin_failures: 3,
            ..Config::default()
        },
    );
    let mut acts = s.handle(ms(0), Event::Tick);
    for i in 0..3 {
        assert_eq!(requests(&acts), vec![(Source::Origin, 0)], "attempt {i}");
        acts = s.handle(
            ms(10 * (i + 1)),
            Event::RequestFailed {
                source: Source::Origin,
                chunk: 0,
            },
        );
    }
    assert!(acts.iter().any(|a| matches!(a, Action::Abort { .. })));
}

#[test]
fn corrupt_blob_refetches_peer_chunks_from_origin_only() {
    let mut s = Scheduler::new(
        ME,
        layout(2),
        false,
        Config {
            max_origin_requests: 1,
            ..seeds_only()
        },
    );
    let first = s.handle(ms(0), holding(A, bits(2, |c| c == 0)));
    let pending: Vec<(Source, u32)> = requests(&first);
    assert_eq!(
        pending.len(),
        2,
        "chunk 0 from the peer, chunk 1 from the origin: {pending:?}"
    );
    let (complete, t) = deliver_until_idle(&mut s, pending, 1, |_| {});
    assert!(complete);
    let acts = s.handle(ms(t + 1), Event::BlobCorrupt);
    // Chunk 0 came from a peer without an index: it is fetched again, from the origin.
    assert_eq!(requests(&acts), vec![(Source::Origin, 0)]);
    let acts = s.handle(
        ms(t + 2),
        Event::ChunkArrived {
            source: Source::Origin,
            chunk: 0,
            valid: true,
        },
    );
    assert!(acts.contains(&Action::Complete));
}

#[test]
fn slow_origin_requests_are_not_cancelled_by_the_peer_timeout() {
    let cfg = Config {
        request_timeout: ms(100),
        max_origin_requests: 1,
        ..Config::default()
    };
    let mut s = Scheduler::new(NodeId(1), layout(2), false, cfg);
    let first = s.handle(ms(0), Event::Tick);
    assert_eq!(requests(&first), vec![(Source::Origin, 0)]);
    // Long past the timeout, the range is still running: no cancel, no duplicate.
    let later = s.handle(ms(10_000), Event::Tick);
    assert!(later.is_empty(), "{later:?}");
    let done = s.handle(
        ms(10_001),
        Event::ChunkArrived {
            source: Source::Origin,
            chunk: 0,
            valid: true,
        },
    );
    assert!(requests(&done).contains(&(Source::Origin, 1)), "{done:?}");
}
