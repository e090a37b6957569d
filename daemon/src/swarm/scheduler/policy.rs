//! The scheduling policy proper: which chunk to ask of which peer, and what to fetch
//! from the origin (the precedence is in the module docs of [`super`]).

use std::time::Duration;

use super::{Action, ChunkState, NodeId, Scheduler, Source};

impl Scheduler {
    /// Per-node tie-break so nodes pick different chunks among equally rare ones.
    fn spread(&self, chunk: u32) -> u64 {
        (u64::from(chunk).wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.me.0
    }

    pub(super) fn schedule(&mut self, now: Duration) {
        let missing: Vec<u32> = (0..self.chunks.len() as u32)
            .filter(|&c| self.chunks[c as usize] == ChunkState::Missing)
            .collect();
        if missing.is_empty() {
            return;
        }
        let mut requestable = Requestable::new(self.chunks.len(), &missing, self.in_flight.keys());
        let interested = self.cached_interested(now);
        if !self.origin_only {
            self.schedule_peers(now, &missing, &mut requestable, interested.len() > 1);
        }
        self.schedule_origin(now, &missing, &requestable, interested);
    }

    fn schedule_peers(
        &mut self,
        now: Duration,
        missing: &[u32],
        requestable: &mut Requestable,
        shared: bool,
    ) {
        // Fastest peers first; unmeasured ones (infinite score) are tried early.
        let mut order: Vec<(NodeId, f64)> = self
            .peers
            .iter()
            .filter(|(p, _)| !self.banned.contains_key(p))
            .map(|(p, st)| (*p, st.score))
            .collect();
        order.sort_by(|(a, a_score), (b, b_score)| b_score.total_cmp(a_score).then(a.cmp(b)));
        let best = order
            .iter()
            .map(|(_, score)| *score)
            .find(|s| s.is_finite())
            .unwrap_or(1.0)
            .max(1.0);
        let window_end = self.cursor.saturating_add(self.config.stream_window);
        // Seeds (peers complete when first heard of) are shared like the origin when
        // other nodes want the blob too: each chunk is taken from a seed by its
        // rendezvous owner only, and the others get it from the owner, so a seed's
        // uplink carries each chunk about once.
        let share_seeds = shared && !self.stalled(now);
        let (owned, seeds_in_order) = if share_seeds {
            let linked = self.linked_interested(now);
            let in_order = linked.len() <= self.config.seeds_in_order_up_to;
            let owned = self
                .seed_owners
                .update(linked, self.me, self.chunks.len(), self.salt)
                .to_vec();
            (owned, in_order)
        } else {
            (Vec::new(), false)
        };
        let mut outstanding: usize = self.peers.values().map(|st| st.in_flight).sum();
        for (peer, score) in order {
            if outstanding >= self.config.max_peer_requests {
                break;
            }
            let Some(st) = self.peers.get(&peer) else {
                continue;
            };
            let from_seed = share_seeds && st.seed;
            let in_index_order = from_seed && seeds_in_order;
            let depth = {
                let share = if score.is_finite() { score / best } else { 1.0 };
                ((self.config.max_requests_per_peer as f64 * share).round() as usize)
                    .clamp(1, self.config.max_requests_per_peer)
            };
            if st.held == 0 {
                continue; // nothing to ask of it, endgame included
            }
            let mut peer_in_flight = st.in_flight;
            while peer_in_flight < depth && outstanding < self.config.max_peer_requests {
                let held = &self.peers[&peer].chunks;
                // Flat per-chunk arrays only: this scan runs for every peer with a free
                // slot on every batch of events (with a map lookup per chunk it was most
                // of a simulation's time at 5,000 chunks).
                let candidates = missing.iter().copied().filter(|&c| {
                    held[c as usize]
                        && requestable.get(c)
                        && (!from_seed || owned.get(c as usize).copied().unwrap_or(true))
                });
                // In the window, and from a shared seed in a small swarm: lowest index
                // first. Otherwise rarest, then spread.
                let pick = candidates.min_by_key(|&c| {
                    let by_index = in_index_order || c < window_end;
                    (
                        !by_index,
                        if by_index { c } else { 0 },
                        self.availability[c as usize],
                        self.spread(c),
                    )
                });
                // A shared seed takes no endgame duplicates: every node's last chunks
                // would come from it a second time, on the uplink a warm start waits for
                // (3-4.5 % of what it sent; benches/RESULTS.md, session 24). The cost: a
                // last chunk that only a slow owner and the seed hold waits for that
                // owner, or for its request to fail or time out.
                let pick = pick.or_else(|| {
                    (requestable.count == 0 && !from_seed)
                        .then(|| self.endgame_pick(peer))
                        .flatten()
                });
                let Some(chunk) = pick else { break };
                requestable.take(chunk);
                self.send(now, Source::Peer(peer), chunk);
                peer_in_flight += 1;
                outstanding += 1;
            }
        }
    }

    /// In endgame (every missing chunk requested, which the caller checks), a chunk this
    /// peer has and that is outstanding elsewhere, oldest request first.
    fn endgame_pick(&self, peer: NodeId) -> Option<u32> {
        let st = &self.peers[&peer];
        self.in_flight
            .iter()
            .filter(|(c, v)| {
                st.chunks[**c as usize]
                    && v.len() < self.config.endgame_sources
                    && v.iter().all(|(s, _)| *s != Source::Peer(peer))
            })
            .min_by_key(|(_, v)| v.iter().map(|(_, t)| *t).min())
            .map(|(c, _)| *c)
    }

    fn schedule_origin(
        &mut self,
        now: Duration,
        missing: &[u32],
        requestable: &Requestable,
        interested: Vec<NodeId>,
    ) {
        let everything = self.origin_only || self.stalled(now);
        let shared = interested.len() > 1;
        let frontier = if interested.len() >= self.config.large_swarm {
            self.config.origin_frontier.saturating_mul(2)
        } else {
            self.config.origin_frontier
        };
        if shared && !everything && !self.membership_known(now) {
            return;
        }
        let mut held_by_peer = vec![false; self.chunks.len()];
        if self.origin_only {
            // Nothing from peers any more.
        } else if !self.peers.keys().any(|p| self.banned.contains_key(p)) {
            for &c in missing {
                held_by_peer[c as usize] = self.availability[c as usize] > 0;
            }
        } else {
            for (p, st) in &self.peers {
                if self.banned.contains_key(p) {
                    continue;
                }
                for &c in missing {
                    held_by_peer[c as usize] |= st.chunks[c as usize];
                }
            }
        }
        let window_end = self.cursor.saturating_add(self.config.stream_window);
        let owned = if everything {
            Vec::new()
        } else {
            self.origin_owners
                .update(interested, self.me, self.chunks.len(), self.salt)
                .to_vec()
        };
        let frontier_end = if shared && !everything && frontier > 0 {
            // Counted in chunks nobody linked holds, not in positions: chunks above the
            // frontier that came from elsewhere in the swarm do not narrow the window.
            missing
                .iter()
                .copied()
                .filter(|&c| !held_by_peer[c as usize])
                .nth(frontier as usize)
                .unwrap_or(u32::MAX)
        } else {
            u32::MAX
        };
        let mut wanted: Vec<u32> = missing
            .iter()
            .copied()
            .filter(|&c| requestable.get(c) && !held_by_peer[c as usize])
            .filter(|&c| everything || owned.get(c as usize).copied().unwrap_or(false))
            .filter(|&c| c < frontier_end)
            .collect();
        // In order, window first: the origin is the source of last resort for streaming too.
        wanted.sort_by_key(|&c| (c >= window_end, c));
        let limit = if shared {
            self.config.shared_origin_requests.max(1)
        } else {
            self.config.max_origin_requests
        };
        for chunk in wanted {
            if self.origin_in_flight >= limit {
                break;
            }
            self.send(now, Source::Origin, chunk);
        }
    }

    /// Safety net: nothing outstanding and nothing arrived for a grace period means
    /// assignments evidently are not being served; fetch regardless of owner.
    pub(super) fn stalled(&self, now: Duration) -> bool {
        self.in_flight.is_empty()
            && self
                .last_progress
                .is_some_and(|t| now.saturating_sub(t) >= self.config.assignment_grace)
    }

    fn send(&mut self, now: Duration, source: Source, chunk: u32) {
        self.in_flight.entry(chunk).or_default().push((source, now));
        match source {
            Source::Origin => self.origin_in_flight += 1,
            Source::Peer(p) => {
                if let Some(st) = self.peers.get_mut(&p) {
                    st.in_flight += 1;
                }
            }
        }
        self.actions.push(Action::Request { source, chunk });
    }
}

/// The missing chunks with no request outstanding, as flags by chunk, updated as this
/// round of scheduling sends requests.
struct Requestable {
    flags: Vec<bool>,
    /// How many flags are set: zero means endgame.
    count: usize,
}

impl Requestable {
    fn new<'a>(chunks: usize, missing: &[u32], in_flight: impl Iterator<Item = &'a u32>) -> Self {
        let mut flags = vec![false; chunks];
        for &c in missing {
            flags[c as usize] = true;
        }
        let mut requestable = Requestable {
            flags,
            count: missing.len(),
        };
        for &c in in_flight {
            requestable.take(c);
        }
        requestable
    }

    fn get(&self, chunk: u32) -> bool {
        self.flags.get(chunk as usize).copied().unwrap_or(false)
    }

    fn take(&mut self, chunk: u32) {
        if let Some(flag) = self.flags.get_mut(chunk as usize) {
            if std::mem::take(flag) {
                self.count -= 1;
            }
        }
    }
}
