//! Which chunk a node asks for and from whom: rarity, the streaming window, the
//! origin as the last resort, endgame, and shared seeds.

use std::collections::HashSet;

use super::*;

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
            holding(B, bits(8, |c| c < 4)),
            holding(A, bits(8, |_| true)),
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
    let bitfield = |peer: u64, have: fn(u32) -> bool| holding(NodeId(peer), bits(8, have));
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
    let acts = s.handle(ms(0), holding(A, bits(16, |_| true)));
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
    let seed = holding(A, bits(16, |_| true));
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
    let acts = s.handle(ms(0), holding(A, bits(6, |c| c % 2 == 0)));
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
    let first = requests(&s.handle(ms(0), holding(A, bits(2, |_| true))));
    assert_eq!(first.len(), 1);
    let (_, a_chunk) = first[0];
    // B joins: it takes the other chunk...
    let acts = s.handle(ms(1), holding(B, bits(2, |_| true)));
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
