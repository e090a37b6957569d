//! Who fetches which chunk from the origin in a cold start: rendezvous owners over the
//! interested nodes, gossip, the membership wait and the origin frontier.

use super::*;

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
