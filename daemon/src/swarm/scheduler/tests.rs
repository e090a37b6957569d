//! Scheduler tests with virtual time: single-node policy checks, and a small
//! discrete-event harness in which several schedulers drive each other.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use shoal_proto::ChunkLayout;

use super::*;

const CHUNK: u32 = 1 << 20;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn layout(chunks: u32) -> ChunkLayout {
    ChunkLayout::new(u64::from(chunks) * u64::from(CHUNK), CHUNK)
}

fn requests(actions: &[Action]) -> Vec<(Source, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { source, chunk } => Some((*source, *chunk)),
            _ => None,
        })
        .collect()
}

/// Answers every request successfully, one per `step_ms`, until none is outstanding.
/// `check` sees the number outstanding after each step. Returns whether the scheduler
/// completed, and the time of the last delivery.
fn deliver_until_idle(
    s: &mut Scheduler,
    mut pending: Vec<(Source, u32)>,
    step_ms: u64,
    mut check: impl FnMut(usize),
) -> (bool, u64) {
    let (mut t, mut complete) = (0, false);
    while let Some((source, chunk)) = pending.pop() {
        t += step_ms;
        let acts = s.handle(
            ms(t),
            Event::ChunkArrived {
                source,
                chunk,
                valid: true,
            },
        );
        complete |= acts.contains(&Action::Complete);
        pending.extend(requests(&acts));
        check(pending.len());
    }
    (complete, t)
}

fn bits(n: u32, have: impl Fn(u32) -> bool) -> Vec<bool> {
    (0..n).map(have).collect()
}

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const ME: NodeId = NodeId(100);

fn seeds_only() -> Config {
    Config {
        stream_window: 0,
        ..Config::default()
    }
}

#[test]
fn rarest_chunks_first() {
    let mut s = Scheduler::new(
        ME,
        layout(8),
        true,
        Config {
            max_requests_per_peer: 2,
            ..seeds_only()
        },
    );
    let acts = s.handle_batch(
        ms(0),
        [
            Event::PeerBitfield {
                peer: B,
                chunks: bits(8, |c| c < 4),
                downloading: false,
            },
            Event::PeerBitfield {
                peer: A,
                chunks: bits(8, |_| true),
                downloading: false,
            },
        ],
    );
    let reqs = requests(&acts);
    // A alone has 4..8 (availability 1): A is asked for those; B for what it has.
    for (src, c) in &reqs {
        match src {
            Source::Peer(p) if *p == A => assert!(*c >= 4, "A asked for common chunk {c}"),
            Source::Peer(p) if *p == B => assert!(*c < 4),
            other => panic!("unexpected source {other:?}"),
        }
    }
    assert_eq!(reqs.len(), 4, "two pipelined requests per peer: {reqs:?}");
}

/// Availability is kept across events rather than recounted: a resent bitfield replaces
/// the old one and a departed peer's chunks stop counting.
#[test]
fn rarity_follows_resent_bitfields_and_departures() {
    let bitfield = |peer: u64, have: fn(u32) -> bool| Event::PeerBitfield {
        peer: NodeId(peer),
        chunks: bits(8, have),
        downloading: false,
    };
    let mut s = Scheduler::new(ME, layout(8), true, seeds_only());
    let acts = s.handle_batch(
        ms(0),
        [
            bitfield(1, |_| true),
            bitfield(2, |c| c < 4),
            // Two peers that held 4..8 and went away, two that resent empty bitfields.
            bitfield(3, |c| c >= 4),
            bitfield(4, |c| c >= 4),
            Event::PeerGone { peer: NodeId(3) },
            Event::PeerGone { peer: NodeId(4) },
            bitfield(5, |c| c >= 4),
            bitfield(6, |c| c >= 4),
            bitfield(5, |_| false),
            bitfield(6, |_| false),
            // A repeated announcement counts once.
            Event::PeerHave { peer: B, chunk: 0 },
        ],
    );
    // 4..8 are held by A alone, 0..4 by A and B: A is asked for the rare half.
    let mut from_a: Vec<u32> = requests(&acts)
        .into_iter()
        .filter(|(src, _)| *src == Source::Peer(A))
        .map(|(_, c)| c)
        .collect();
    from_a.sort_unstable();
    assert_eq!(from_a, vec![4, 5, 6, 7], "{acts:?}");
}

#[test]
fn streaming_window_goes_first() {
    let mut s = Scheduler::new(
        ME,
        layout(16),
        true,
        Config {
            max_requests_per_peer: 1,
            stream_window: 2,
            ..Config::default()
        },
    );
    let acts = s.handle(
        ms(0),
        Event::PeerBitfield {
            peer: A,
            chunks: bits(16, |_| true),
            downloading: false,
        },
    );
    assert_eq!(requests(&acts), vec![(Source::Peer(A), 0)]);
    let acts = s.handle(
        ms(5),
        Event::ChunkArrived {
            source: Source::Peer(A),
            chunk: 0,
            valid: true,
        },
    );
    assert_eq!(requests(&acts), vec![(Source::Peer(A), 1)]);
}

#[test]
fn status_counts_what_the_download_waits_on() {
    let cfg = Config {
        max_requests_per_peer: 1,
        ..Config::default()
    };
    let mut s = Scheduler::new(ME, layout(16), true, cfg);
    let seed = Event::PeerBitfield {
        peer: A,
        chunks: bits(16, |_| true),
        downloading: false,
    };
    let partial = Event::PeerBitfield {
        peer: B,
        chunks: bits(16, |c| c < 8),
        downloading: true,
    };
    let sent = requests(&s.handle_batch(ms(0), [seed, partial]));
    let st = s.status(ms(0));
    assert_eq!((st.present, st.chunks), (0, 16));
    assert_eq!((st.peers, st.seeds, st.interested), (2, 1, 2));
    assert_eq!((st.peer_requests, st.origin_requests), (2, 0));
    assert!(!st.stalled);
    assert_eq!(
        (s.peer_complete(A), s.peer_complete(B), s.peer_complete(ME)),
        (Some(true), Some(false), None)
    );
    let (source, chunk) = sent[0];
    s.handle(
        ms(5),
        Event::ChunkArrived {
            source,
            chunk,
            valid: true,
        },
    );
    assert_eq!(s.status(ms(5)).present, 1);
}

#[test]
fn origin_only_for_what_no_peer_has() {
    let mut s = Scheduler::new(
        ME,
        layout(6),
        true,
        Config {
            max_origin_requests: 10,
            ..seeds_only()
        },
    );
    let acts = s.handle(
        ms(0),
        Event::PeerBitfield {
            peer: A,
            chunks: bits(6, |c| c % 2 == 0),
            downloading: false,
        },
    );
    let origin: HashSet<u32> = requests(&acts)
        .into_iter()
        .filter(|(s, _)| *s == Source::Origin)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(origin, HashSet::from([1, 3, 5]));
}

#[test]
fn no_peers_means_bounded_origin_and_completion() {
    let mut s = Scheduler::new(
        ME,
        layout(5),
        false,
        Config {
            max_origin_requests: 2,
            ..Config::default()
        },
    );
    let outstanding = requests(&s.handle(ms(0), Event::Tick));
    assert_eq!(outstanding.len(), 2);
    let (done, _) = deliver_until_idle(&mut s, outstanding, 10, |n| assert!(n <= 2));
    assert!(done && s.present() == 5 && s.cursor() == 5);
}

#[test]
fn endgame_duplicates_the_last_chunk_and_cancels_the_loser() {
    let mut s = Scheduler::new(
        ME,
        layout(2),
        true,
        Config {
            max_requests_per_peer: 1,
            ..seeds_only()
        },
    );
    let first = requests(&s.handle(
        ms(0),
        Event::PeerBitfield {
            peer: A,
            chunks: bits(2, |_| true),
            downloading: false,
        },
    ));
    assert_eq!(first.len(), 1);
    let (_, a_chunk) = first[0];
    // B joins: it takes the other chunk...
    let acts = s.handle(
        ms(1),
        Event::PeerBitfield {
            peer: B,
            chunks: bits(2, |_| true),
            downloading: false,
        },
    );
    let (_, b_chunk) = requests(&acts)[0];
    assert_ne!(a_chunk, b_chunk);
    // ...and once it delivered, with A still busy on the last chunk, B duplicates it.
    let acts = s.handle(
        ms(20),
        Event::ChunkArrived {
            source: Source::Peer(B),
            chunk: b_chunk,
            valid: true,
        },
    );
    assert!(
        requests(&acts).contains(&(Source::Peer(B), a_chunk)),
        "endgame duplicate: {acts:?}"
    );
    let acts = s.handle(
        ms(30),
        Event::ChunkArrived {
            source: Source::Peer(B),
            chunk: a_chunk,
            valid: true,
        },
    );
    assert!(acts.contains(&Action::Cancel {
        source: Source::Peer(A),
        chunk: a_chunk
    }));
    assert!(acts.contains(&Action::Complete));
}

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
    let acts = s.handle(
        ms(0),
        Event::PeerBitfield {
            peer: A,
            chunks: bits(4, |_| true),
            downloading: false,
        },
    );
    let to_a: HashSet<u32> = requests(&acts).into_iter().map(|(_, c)| c).collect();
    assert_eq!(to_a.len(), 4);
    s.handle(
        ms(1),
        Event::PeerBitfield {
            peer: B,
            chunks: bits(4, |_| true),
            downloading: false,
        },
    );
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
    let acts = s.handle_batch(
        ms(0),
        [
            Event::PeerBitfield {
                peer: A,
                chunks: vec![true],
                downloading: false,
            },
            Event::PeerBitfield {
                peer: B,
                chunks: vec![true],
                downloading: false,
            },
        ],
    );
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
    let acts = s.handle(
        ms(6),
        Event::PeerBitfield {
            peer: liar,
            chunks: vec![true],
            downloading: false,
        },
    );
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
    let acts = s.handle(
        ms(0),
        Event::PeerBitfield {
            peer: A,
            chunks: vec![true],
            downloading: false,
        },
    );
    assert_eq!(requests(&acts), vec![(Source::Peer(A), 0)]);
    s.handle(
        ms(10),
        Event::PeerBitfield {
            peer: B,
            chunks: vec![true],
            downloading: false,
        },
    );
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
    let first = s.handle(
        ms(0),
        Event::PeerBitfield {
            peer: A,
            chunks: bits(2, |c| c == 0),
            downloading: false,
        },
    );
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

#[test]
fn gossiped_interested_nodes_take_part_in_the_origin_assignment() {
    // a and b are not linked to each other, only to c, which tells each about the other.
    let (a, b, c) = (NodeId(11), NodeId(22), NodeId(33));
    let chunks = 64;
    let cfg = Config {
        max_origin_requests: chunks as usize,
        shared_origin_requests: chunks as usize,
        ..Config::default()
    };
    let origin_requests = |me: NodeId, gossip: bool| {
        let mut s = Scheduler::new(me, layout(chunks), false, cfg.clone());
        let mut events = vec![Event::PeerBitfield {
            peer: c,
            chunks: vec![false; chunks as usize],
            downloading: true,
        }];
        if gossip {
            events.push(Event::Interested {
                from: c,
                nodes: vec![a, b, c],
            });
            return requests(&s.handle_batch(ms(0), events));
        }
        // Without c's list, the origin waits for it, then goes ahead on the own view.
        assert!(requests(&s.handle_batch(ms(0), events)).is_empty());
        requests(&s.handle(cfg.membership_wait, Event::Tick))
    };
    // Without the gossip, a and b each think they share the chunks with c alone.
    let (ra, rb) = (origin_requests(a, false), origin_requests(b, false));
    let doubled = ra.iter().filter(|r| rb.contains(r)).count();
    assert!(doubled > 0, "overlapping views assign some chunks twice");
    // With it, the three-way split agrees: no chunk is fetched by both.
    let (ra, rb) = (origin_requests(a, true), origin_requests(b, true));
    assert!(!ra.is_empty() && !rb.is_empty());
    assert!(ra.iter().all(|r| !rb.contains(r)), "no chunk owned twice");
    // Lists from peers that are not linked are ignored.
    let mut s = Scheduler::new(a, layout(chunks), false, cfg.clone());
    s.handle(
        ms(0),
        Event::Interested {
            from: b,
            nodes: vec![a, b],
        },
    );
    assert_eq!(s.linked_interested(ms(0)), vec![a]);
    assert_eq!(s.live_interested(ms(0)), vec![a]);
}

#[test]
fn salted_blobs_have_different_owners_and_agree_per_blob() {
    let (a, b) = (NodeId(11), NodeId(22));
    let chunks = 64u32;
    let cfg = Config {
        shared_origin_requests: chunks as usize,
        ..Config::default()
    };
    let owned = |me: NodeId, peer: NodeId, salt: u64| -> Vec<u32> {
        let mut s = Scheduler::new(me, layout(chunks), false, cfg.clone()).with_salt(salt);
        let events = [
            Event::PeerBitfield {
                peer,
                chunks: vec![false; chunks as usize],
                downloading: true,
            },
            Event::Interested {
                from: peer,
                nodes: vec![a, b],
            },
        ];
        requests(&s.handle_batch(ms(0), events))
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    };
    // Two layers of one model: a node's chunks differ between them...
    let (first, second) = (owned(a, b, 1), owned(a, b, 2));
    assert!(!first.is_empty() && !second.is_empty());
    assert_ne!(first, second);
    // ...and for each, the two nodes split the chunks without overlap or gap.
    for salt in [1, 2] {
        let mut both = owned(a, b, salt);
        let theirs = owned(b, a, salt);
        assert!(both.iter().all(|c| !theirs.contains(c)), "owned twice");
        both.extend(theirs);
        both.sort_unstable();
        assert_eq!(both, (0..chunks).collect::<Vec<_>>());
    }
}

#[test]
fn a_gossiped_list_lasts_while_its_sender_is_heard_from() {
    let (me, c, far) = (NodeId(1), NodeId(2), NodeId(3));
    let cfg = Config {
        assignment_grace: ms(1000),
        ..Config::default()
    };
    let mut s = Scheduler::new(me, layout(8), false, cfg);
    s.handle_batch(
        ms(0),
        [
            Event::PeerBitfield {
                peer: c,
                chunks: vec![false; 8],
                downloading: true,
            },
            Event::Interested {
                from: c,
                nodes: vec![c, far],
            },
        ],
    );
    // Lists are sent on change only: c's list still counts long after it was sent, as
    // long as c itself is heard from.
    for (t, chunk) in [(800, 0), (1600, 1), (2400, 2)] {
        s.handle(ms(t), Event::PeerHave { peer: c, chunk });
        assert_eq!(
            s.cached_interested(ms(t + 100)),
            vec![me, c, far],
            "at {t} ms"
        );
    }
    // c falls silent: its list lapses with it.
    assert_eq!(s.cached_interested(ms(3400)), vec![me]);
}

#[test]
fn only_peers_complete_from_the_start_are_shared_seeds() {
    let (me, p, q) = (NodeId(1), NodeId(2), NodeId(3));
    let chunks = 16u32;
    let mine = |c: u32| rendezvous_owner(&[me, p], c, 0) == me;
    // q is complete: from the start (a seed), or after downloading alongside, and then
    // perhaps linked again (its links close when its download completes).
    let asked_of_q = |seed_from_start: bool, relinked: bool| -> Vec<u32> {
        let mut s = Scheduler::new(me, layout(chunks), false, Config::default());
        let bitfield = |peer, complete: bool| Event::PeerBitfield {
            peer,
            chunks: vec![complete; chunks as usize],
            downloading: !complete,
        };
        let mut acts = s.handle_batch(ms(0), [bitfield(p, false), bitfield(q, seed_from_start)]);
        if !seed_from_start {
            // Its completion arrives at once (a fresh have-map), so nothing was asked
            // of it while it was downloading.
            acts.extend(s.handle(ms(10), bitfield(q, true)));
        }
        if relinked {
            acts.clear();
            s.handle(ms(15), Event::PeerGone { peer: q });
            acts.extend(s.handle(ms(16), bitfield(q, true)));
        }
        acts.extend(s.handle(ms(20), Event::Tick));
        requests(&acts)
            .into_iter()
            .filter(|(src, _)| *src == Source::Peer(q))
            .map(|(_, c)| c)
            .collect()
    };
    // A seed's chunks go to their owner among the linked downloaders (me or p).
    let from_seed = asked_of_q(true, false);
    assert!(!from_seed.is_empty());
    assert!(from_seed.iter().all(|&c| mine(c)), "{from_seed:?}");
    // So is a seed that went and came back.
    let from_seed = asked_of_q(true, true);
    assert!(!from_seed.is_empty());
    assert!(from_seed.iter().all(|&c| mine(c)), "{from_seed:?}");
    // A co-downloader that finished is asked directly, owner or not: the owner may not
    // be linked to it. Also when it is linked again after its links closed.
    for relinked in [false, true] {
        let from_finished = asked_of_q(false, relinked);
        assert!(from_finished.iter().any(|&c| !mine(c)), "{from_finished:?}");
    }
}

/// In a small swarm an owner takes its chunks from a shared seed lowest index first, so
/// the swarm fills blobs in order and local clients can stream them; past
/// `seeds_in_order_up_to` the per-node hash order spreads the requests.
#[test]
fn a_small_swarm_takes_a_seeds_chunks_in_index_order() {
    let (me, p, seed) = (NodeId(1), NodeId(2), NodeId(3));
    let chunks = 64u32;
    let asked_of_seed = |in_order_up_to: usize| -> Vec<u32> {
        let config = Config {
            seeds_in_order_up_to: in_order_up_to,
            ..seeds_only()
        };
        let mut s = Scheduler::new(me, layout(chunks), false, config);
        let bitfield = |peer, complete: bool| Event::PeerBitfield {
            peer,
            chunks: vec![complete; chunks as usize],
            downloading: !complete,
        };
        let acts = s.handle_batch(ms(0), [bitfield(p, false), bitfield(seed, true)]);
        requests(&acts)
            .into_iter()
            .filter(|(src, _)| *src == Source::Peer(seed))
            .map(|(_, c)| c)
            .collect()
    };
    let mine: Vec<u32> = (0..chunks)
        .filter(|&c| rendezvous_owner(&[me, p], c, 0) == me)
        .collect();
    let depth = Config::default().max_requests_per_peer;
    assert_eq!(asked_of_seed(2), mine[..depth], "two downloaders: in order");
    let spread = asked_of_seed(1);
    assert_eq!(spread.len(), depth);
    assert!(spread.iter().all(|c| mine.contains(c)), "{spread:?}");
    assert_ne!(spread, mine[..depth], "over the limit: hash order");
}

#[test]
fn first_origin_request_waits_for_the_linked_downloaders_lists() {
    let (me, p, q) = (NodeId(1), NodeId(2), NodeId(3));
    let cfg = Config {
        membership_wait: ms(1000),
        ..Config::default()
    };
    let downloading = |peer| Event::PeerBitfield {
        peer,
        chunks: vec![false; 8],
        downloading: true,
    };
    let listed = |from, nodes| Event::Interested { from, nodes };
    let mut s = Scheduler::new(me, layout(8), false, cfg.clone());
    assert!(requests(&s.handle_batch(ms(0), [downloading(p), downloading(q)])).is_empty());
    // One list of two is not enough...
    assert!(requests(&s.handle(ms(10), listed(p, vec![me, p]))).is_empty());
    // ...both are: the origin request goes out at once, for a chunk this node owns.
    let sent = requests(&s.handle(ms(20), listed(q, vec![me, q])));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, Source::Origin);
    assert_eq!(rendezvous_owner(&[me, p, q], sent[0].1, 0), me);

    // A peer that never sends its list (an older node) delays the origin by the wait only.
    let mut s = Scheduler::new(me, layout(8), false, cfg.clone());
    assert!(requests(&s.handle_batch(ms(0), [downloading(p)])).is_empty());
    assert!(requests(&s.handle(ms(999), Event::Tick)).is_empty());
    assert_eq!(requests(&s.handle(ms(1000), Event::Tick)).len(), 1);

    // Alone, or with only seeds linked, nothing waits.
    let mut s = Scheduler::new(me, layout(8), false, cfg);
    assert!(!requests(&s.handle_batch(ms(0), [])).is_empty());
}

/// A cold start of 32 chunks with an origin frontier of 4, between this node (1) and one
/// linked downloader (2) that holds `peer_has` and lists both as interested. Returns the
/// scheduler and its first actions.
fn frontier_start(peer_has: impl Fn(u32) -> bool) -> (Scheduler, Vec<Action>) {
    frontier_start_with(usize::MAX, peer_has)
}

/// [`frontier_start`] with [`Config::large_swarm`] set.
fn frontier_start_with(
    large_swarm: usize,
    peer_has: impl Fn(u32) -> bool,
) -> (Scheduler, Vec<Action>) {
    let (me, p) = (NodeId(1), NodeId(2));
    let chunks = 32u32;
    let cfg = Config {
        origin_frontier: 4,
        large_swarm,
        shared_origin_requests: chunks as usize,
        ..Config::default()
    };
    let mut s = Scheduler::new(me, layout(chunks), false, cfg);
    let first = s.handle_batch(
        ms(0),
        [
            Event::PeerBitfield {
                peer: p,
                chunks: (0..chunks).map(peer_has).collect(),
                downloading: true,
            },
            Event::Interested {
                from: p,
                nodes: vec![me, p],
            },
        ],
    );
    (s, first)
}

/// The chunks `acts` requests from the origin.
fn origin_requests(acts: &[Action]) -> Vec<u32> {
    requests(acts)
        .into_iter()
        .filter(|(src, _)| *src == Source::Origin)
        .map(|(_, c)| c)
        .collect()
}

#[test]
fn cold_start_origin_fetches_stay_near_the_frontier() {
    // Two downloaders that know each other; this node owns about half the chunks.
    let (me, p) = (NodeId(1), NodeId(2));
    let (mut s, first) = frontier_start(|_| false);
    let mine = |c: u32| rendezvous_owner(&[me, p], c, 0) == me;
    let origin = origin_requests;
    let sent = origin(&first);
    assert_eq!(sent, (0..4).filter(|&c| mine(c)).collect::<Vec<_>>());
    // The peer announces the chunks it owns below 12: the frontier moves past them and
    // past ours once they arrive, so the next owned chunks become fetchable.
    let mut later = Vec::new();
    for c in (0..12).filter(|&c| !mine(c)) {
        later.extend(origin(
            &s.handle(ms(10), Event::PeerHave { peer: p, chunk: c }),
        ));
    }
    for c in sent {
        let acts = s.handle(
            ms(20),
            Event::ChunkArrived {
                source: Source::Origin,
                chunk: c,
                valid: true,
            },
        );
        later.extend(origin(&acts));
    }
    assert!(later.iter().all(|&c| mine(c) && c >= 4), "{later:?}");
    // Each was among the four lowest chunks held neither here nor by the peer (holdings
    // only grow, so that is still true at the end).
    let peer_has = |c: u32| c < 12 && !mine(c);
    let unheld_below = |c: u32| (0..c).filter(|&b| !s.has_chunk(b) && !peer_has(b)).count();
    assert!(
        later.iter().all(|&c| unheld_below(c) < 4),
        "{later:?} beyond the window"
    );
    assert!(!later.is_empty());
}

#[test]
fn the_origin_frontier_counts_only_chunks_nobody_linked_holds() {
    // The peer got chunks 1..12 from elsewhere in the swarm, but not chunk 0. The window
    // is the four lowest chunks neither node holds, {0, 12, 13, 14}, not positions 0..4.
    let (me, p) = (NodeId(1), NodeId(2));
    let (_, first) = frontier_start(|c| (1..12).contains(&c));
    let origin = origin_requests(&first);
    let mine = |c: u32| rendezvous_owner(&[me, p], c, 0) == me;
    let window = [0, 12, 13, 14];
    assert_eq!(
        origin,
        window.into_iter().filter(|&c| mine(c)).collect::<Vec<_>>()
    );
    // Positions 0..4 would have allowed chunk 0 at most.
    assert!(origin.iter().any(|&c| c >= 12), "{origin:?}");
}

#[test]
fn a_large_swarm_doubles_the_origin_frontier() {
    // Two interested nodes count as large here: the window is the eight lowest chunks.
    let (me, p) = (NodeId(1), NodeId(2));
    let mine = |c: u32| rendezvous_owner(&[me, p], c, 0) == me;
    for (large_swarm, window) in [(usize::MAX, 4), (3, 4), (2, 8)] {
        let (_, first) = frontier_start_with(large_swarm, |_| false);
        assert_eq!(
            origin_requests(&first),
            (0..window).filter(|&c| mine(c)).collect::<Vec<_>>(),
            "large_swarm {large_swarm}"
        );
    }
}

/// A tiny discrete-event world: N schedulers, an origin, fixed transfer delays.
struct World {
    nodes: BTreeMap<NodeId, Scheduler>,
    dead: HashSet<NodeId>,
    /// (time, seq) → (node, event)
    queue: BTreeMap<(Duration, u64), (NodeId, Event)>,
    seq: u64,
    origin_fetches: BTreeMap<u32, u32>,
    completed: HashSet<NodeId>,
    /// Each node's view of the others at t=0 (everyone is a partial provider).
    initial: Vec<(NodeId, Vec<Event>)>,
    /// A complete node that serves but does not download, and the chunks it sent.
    seed: Option<NodeId>,
    seed_uploads: u32,
}

impl World {
    fn new(n: u64, chunks: u32, cfg: &Config) -> World {
        let ids: Vec<NodeId> = (1..=n)
            .map(|i| NodeId::from_peer_bytes(&i.to_le_bytes()))
            .collect();
        let mut w = World {
            nodes: BTreeMap::new(),
            dead: HashSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            origin_fetches: BTreeMap::new(),
            completed: HashSet::new(),
            initial: Vec::new(),
            seed: None,
            seed_uploads: 0,
        };
        for &id in &ids {
            w.nodes
                .insert(id, Scheduler::new(id, layout(chunks), false, cfg.clone()));
        }
        w.initial = ids
            .iter()
            .map(|&id| {
                let events = ids
                    .iter()
                    .filter(|&&o| o != id)
                    .map(|&other| Event::PeerBitfield {
                        peer: other,
                        chunks: vec![false; chunks as usize],
                        downloading: true,
                    })
                    .collect();
                (id, events)
            })
            .collect();
        w
    }

    /// Adds a seed holding the whole blob, known to every node from the start.
    fn with_seed(mut self, chunks: u32) -> World {
        let seed = NodeId::from_peer_bytes(b"seed");
        for (_, events) in &mut self.initial {
            events.push(Event::PeerBitfield {
                peer: seed,
                chunks: vec![true; chunks as usize],
                downloading: false,
            });
        }
        self.seed = Some(seed);
        self
    }

    fn apply(&mut self, t: Duration, node: NodeId, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Request {
                    source: Source::Origin,
                    chunk,
                } => {
                    *self.origin_fetches.entry(chunk).or_default() += 1;
                    self.push(
                        t + ms(40),
                        node,
                        Event::ChunkArrived {
                            source: Source::Origin,
                            chunk,
                            valid: true,
                        },
                    );
                }
                Action::Request {
                    source: Source::Peer(p),
                    chunk,
                } => {
                    if self.seed == Some(p) {
                        self.seed_uploads += 1;
                    }
                    let ev = if self.dead.contains(&p) {
                        Event::RequestFailed {
                            source: Source::Peer(p),
                            chunk,
                        }
                    } else {
                        Event::ChunkArrived {
                            source: Source::Peer(p),
                            chunk,
                            valid: true,
                        }
                    };
                    self.push(t + ms(10), node, ev);
                }
                Action::Announce { chunk } => {
                    for other in self.nodes.keys().copied().collect::<Vec<_>>() {
                        if other != node {
                            self.push(t + ms(1), other, Event::PeerHave { peer: node, chunk });
                        }
                    }
                }
                Action::Complete => {
                    self.completed.insert(node);
                }
                _ => {}
            }
        }
    }

    fn push(&mut self, t: Duration, node: NodeId, e: Event) {
        self.seq += 1;
        self.queue.insert((t, self.seq), (node, e));
    }

    fn run(&mut self, until: Duration) {
        for (id, events) in std::mem::take(&mut self.initial) {
            if !self.dead.contains(&id) {
                let actions = self
                    .nodes
                    .get_mut(&id)
                    .expect("node")
                    .handle_batch(ms(0), events);
                self.apply(ms(0), id, actions);
            }
        }
        let mut next_tick = ms(500);
        while next_tick <= until && self.completed.len() + self.dead.len() < self.nodes.len() {
            // Events before the next tick, then the tick (drives timeouts and grace periods).
            let due = self
                .queue
                .first_key_value()
                .is_some_and(|((t, _), _)| *t < next_tick);
            let (t, node, event) = if due {
                let ((t, _), (node, event)) = self.queue.pop_first().expect("due event");
                (t, node, Some(event))
            } else {
                let t = next_tick;
                next_tick += ms(500);
                for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                    self.push(t, id, Event::Tick);
                }
                (t, NodeId(0), None)
            };
            let Some(event) = event else { continue };
            if self.dead.contains(&node) {
                continue;
            }
            let Some(s) = self.nodes.get_mut(&node) else {
                continue;
            };
            let actions = s.handle(t, event);
            self.apply(t, node, actions);
        }
    }
}

#[test]
fn cold_start_splits_origin_fetches_between_nodes() {
    let chunks = 64;
    let mut w = World::new(4, chunks, &Config::default());
    w.run(Duration::from_secs(60));
    assert_eq!(w.completed.len(), 4, "every node completes");
    let total: u32 = w.origin_fetches.values().sum();
    assert_eq!(
        w.origin_fetches.len(),
        chunks as usize,
        "every chunk came from the origin at least once"
    );
    assert_eq!(
        total, chunks,
        "each chunk fetched from the origin exactly once: {:?}",
        w.origin_fetches
    );
}

#[test]
fn cold_start_survives_a_dead_node() {
    let chunks = 48;
    let cfg = Config {
        assignment_grace: ms(1000),
        ..Config::default()
    };
    let mut w = World::new(3, chunks, &cfg);
    let victim = *w.nodes.keys().next().unwrap();
    w.dead.insert(victim);
    w.run(Duration::from_secs(60));
    assert_eq!(w.completed.len(), 2, "the survivors complete");
    let total: u32 = w.origin_fetches.values().sum();
    assert_eq!(w.origin_fetches.len(), chunks as usize);
    assert!(
        total <= chunks + chunks / 3,
        "origin fetches {total} for {chunks} chunks"
    );
}

#[test]
fn cold_start_of_sixteen_nodes_stays_within_origin_target() {
    let chunks = 128;
    let mut w = World::new(16, chunks, &Config::default());
    w.run(Duration::from_secs(120));
    assert_eq!(w.completed.len(), 16);
    let total: u32 = w.origin_fetches.values().sum();
    assert!(
        f64::from(total) <= 1.05 * f64::from(chunks),
        "origin fetches {total} for {chunks} chunks"
    );
}

#[test]
fn downloaders_share_a_seed_instead_of_each_taking_everything_from_it() {
    let chunks = 64;
    // The seed's chunks in index order (the default for 4 nodes) and in hash order.
    for seeds_in_order_up_to in [Config::default().seeds_in_order_up_to, 0] {
        let config = Config {
            seeds_in_order_up_to,
            ..Config::default()
        };
        let mut w = World::new(4, chunks, &config).with_seed(chunks);
        w.run(Duration::from_secs(60));
        assert_eq!(w.completed.len(), 4, "every node completes");
        assert!(w.origin_fetches.is_empty(), "the seed has everything");
        // Once each: endgame duplicates are not asked of a shared seed (they were: 81
        // chunks in index order, 78 in hash order); without sharing the seed sent 174
        // chunks here, 2.7 x the blob.
        assert_eq!(
            w.seed_uploads, chunks,
            "the seed's uploads for a {chunks}-chunk blob to 4 nodes (in order up to \
             {seeds_in_order_up_to})"
        );
    }
}

#[test]
fn peer_requests_stay_within_the_download_share() {
    let peers: Vec<NodeId> = (1..=5).map(NodeId).collect();
    let mut s = Scheduler::new(
        ME,
        layout(20),
        true,
        Config {
            max_requests_per_peer: 1,
            max_peer_requests: 2,
            ..seeds_only()
        },
    );
    let bitfields = peers.iter().map(|&peer| Event::PeerBitfield {
        peer,
        chunks: vec![true; 20],
        downloading: false,
    });
    let first = requests(&s.handle_batch(ms(0), bitfields));
    assert_eq!(first.len(), 2, "{first:?}");

    // The share grows when other downloads end: the next event fills it.
    s.set_max_peer_requests(4);
    let more = requests(&s.handle(ms(10), Event::Tick));
    assert_eq!(more.len(), 2, "{more:?}");
    let asked: HashSet<Source> = first.iter().chain(&more).map(|(src, _)| *src).collect();
    assert_eq!(asked.len(), 4, "one request per peer: {first:?} {more:?}");

    // An arrival frees one place, and only one request replaces it.
    let (source, chunk) = first[0];
    let after = s.handle(
        ms(20),
        Event::ChunkArrived {
            source,
            chunk,
            valid: true,
        },
    );
    assert_eq!(requests(&after).len(), 1, "{after:?}");
}

/// The owners kept across changes of the set are the ones a fresh computation gives:
/// nodes joining, leaving, both at once, the set emptied and refilled, another salt.
#[test]
fn ownership_kept_across_set_changes_matches_a_fresh_computation() {
    let me = NodeId(7);
    let set = |ids: &[u64]| -> Vec<NodeId> {
        let mut v: Vec<NodeId> = ids.iter().copied().map(NodeId).collect();
        v.sort_unstable();
        v
    };
    let steps: Vec<(Vec<NodeId>, u64)> = vec![
        (set(&[7, 1, 2, 3]), 5),
        (set(&[7, 1, 2, 3, 40, 41, 42]), 5),
        (set(&[7, 2, 41]), 5),
        (set(&[7, 2, 41, 90, 91]), 5),
        (set(&[7, 3, 90, 92, 93, 94]), 5),
        (set(&[7]), 5),
        (set(&[]), 5),
        (set(&[7, 11, 12]), 5),
        (set(&[7, 11, 12]), 6),
        (set(&[11, 12]), 6),
    ];
    let mut ownership = Ownership::default();
    for (nodes, salt) in steps {
        let owned = ownership.update(nodes.clone(), me, 300, salt).to_vec();
        let fresh: Vec<bool> = (0..300)
            .map(|c| rendezvous_owner(&nodes, c, salt) == me)
            .collect();
        assert_eq!(owned, fresh, "set {nodes:?}, salt {salt}");
    }
}
