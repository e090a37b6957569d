//! How each [`Event`] changes a download's state: peers and their chunks, outstanding
//! requests, arrivals, timeouts. Deciding what to request next is `policy.rs`.

use std::time::Duration;

use super::{
    Action, ChunkState, Event, NodeId, PeerState, Scheduler, Source, MAX_HEARD_INTERESTED,
};

impl Scheduler {
    pub(super) fn apply(&mut self, now: Duration, event: Event) {
        match event {
            Event::PeerBitfield {
                peer,
                chunks,
                downloading,
            } => {
                if peer != self.me {
                    let mut chunks = chunks;
                    chunks.resize(self.chunks.len(), false);
                    if downloading {
                        self.co_downloaders.insert(peer);
                    }
                    let seed = !downloading && !self.co_downloaders.contains(&peer);
                    let st = self.peers.entry(peer).or_insert(PeerState {
                        chunks: Vec::new(),
                        held: 0,
                        downloading,
                        seed,
                        score: f64::INFINITY,
                        last_heard: now,
                        in_flight: 0,
                    });
                    count_chunks(&mut self.availability, &st.chunks, false);
                    count_chunks(&mut self.availability, &chunks, true);
                    st.held = chunks.iter().filter(|&&c| c).count() as u32;
                    st.chunks = chunks;
                    st.downloading = downloading;
                    st.last_heard = now;
                    self.interested_cache = None;
                }
            }
            Event::PeerHave { peer, chunk } => {
                let grace = self.config.assignment_grace;
                if let Some(st) = self.peers.get_mut(&peer) {
                    if let Some(c) = st.chunks.get_mut(chunk as usize) {
                        if !*c {
                            *c = true;
                            st.held += 1;
                            self.availability[chunk as usize] += 1;
                        }
                    }
                    let was = (st.downloading, !st.heard_within(now, grace));
                    st.last_heard = now;
                    if st.complete() {
                        st.downloading = false;
                    }
                    // Back from silence, or done: the set changes.
                    if was.1 || was.0 != st.downloading {
                        self.interested_cache = None;
                    }
                }
            }
            Event::PeerGone { peer } => self.drop_peer(peer),
            Event::ChunkArrived {
                source,
                chunk,
                valid,
            } => self.on_arrival(now, source, chunk, valid),
            Event::RequestFailed { source, chunk } => {
                if self.remove_in_flight(chunk, source).is_some() {
                    match source {
                        Source::Origin => {
                            self.origin_failures += 1;
                            if self.origin_failures >= self.config.max_origin_failures {
                                self.abort(format!(
                                    "origin failed {} times in a row",
                                    self.origin_failures
                                ));
                            }
                        }
                        Source::Peer(p) => self.penalise(p),
                    }
                }
            }
            Event::BlobCorrupt => self.on_corrupt(),
            Event::Interested { from, mut nodes } => {
                if let Some(st) = self.peers.get_mut(&from) {
                    st.last_heard = now;
                    nodes.truncate(MAX_HEARD_INTERESTED);
                    self.heard_interested.insert(from, nodes);
                    self.interested_cache = None;
                }
            }
            Event::Tick => {}
        }
    }

    /// Halves a peer's score; an unmeasured (optimistic) peer drops to the back.
    fn penalise(&mut self, peer: NodeId) {
        if let Some(st) = self.peers.get_mut(&peer) {
            st.score = if st.score.is_finite() {
                st.score / 2.0
            } else {
                0.0
            };
        }
    }

    fn abort(&mut self, reason: String) {
        if !self.finished {
            self.finished = true;
            self.actions.push(Action::Abort { reason });
        }
    }

    fn drop_peer(&mut self, peer: NodeId) {
        if let Some(st) = self.peers.remove(&peer) {
            count_chunks(&mut self.availability, &st.chunks, false);
        }
        self.heard_interested.remove(&peer);
        self.interested_cache = None;
        let chunks: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, v)| v.iter().any(|(s, _)| *s == Source::Peer(peer)))
            .map(|(c, _)| *c)
            .collect();
        for c in chunks {
            self.remove_in_flight(c, Source::Peer(peer));
        }
    }

    fn remove_in_flight(&mut self, chunk: u32, source: Source) -> Option<Duration> {
        let list = self.in_flight.get_mut(&chunk)?;
        let pos = list.iter().position(|(s, _)| *s == source)?;
        let (_, sent) = list.remove(pos);
        if list.is_empty() {
            self.in_flight.remove(&chunk);
        }
        self.release_slot(source);
        Some(sent)
    }

    fn on_arrival(&mut self, now: Duration, source: Source, chunk: u32, valid: bool) {
        let Some(sent) = self.remove_in_flight(chunk, source) else {
            return;
        };
        if !valid {
            if let Source::Peer(p) = source {
                let until = now + self.config.ban_period;
                self.banned.insert(p, until);
                self.drop_peer(p);
                self.actions.push(Action::Ban { peer: p, until });
            }
            return;
        }
        match source {
            Source::Origin => self.origin_failures = 0,
            Source::Peer(p) => {
                if let Some(st) = self.peers.get_mut(&p) {
                    let bytes = self.layout.range(chunk).map_or(0, |r| r.end - r.start) as f64;
                    let rate = bytes / (now.saturating_sub(sent)).as_secs_f64().max(1e-6);
                    st.score = if st.score.is_finite() {
                        0.7 * st.score + 0.3 * rate
                    } else {
                        rate
                    };
                    if !st.heard_within(now, self.config.assignment_grace) {
                        self.interested_cache = None;
                    }
                    st.last_heard = now;
                }
            }
        }
        if self.chunks[chunk as usize] != ChunkState::Missing {
            return; // an endgame duplicate that lost
        }
        self.last_progress = Some(now);
        let trusted = source == Source::Origin || self.have_index;
        self.chunks[chunk as usize] = if trusted {
            ChunkState::Verified
        } else {
            ChunkState::Unverified
        };
        self.present += 1;
        self.advance_cursor();
        self.actions.push(Action::Announce { chunk });
        if let Some(others) = self.in_flight.remove(&chunk) {
            for (s, _) in others {
                self.release_slot(s);
                self.actions.push(Action::Cancel { source: s, chunk });
            }
        }
        if self.present as usize == self.chunks.len() {
            self.finished = true;
            self.actions.push(Action::Complete);
        }
    }

    fn release_slot(&mut self, source: Source) {
        match source {
            Source::Origin => self.origin_in_flight = self.origin_in_flight.saturating_sub(1),
            Source::Peer(p) => {
                if let Some(st) = self.peers.get_mut(&p) {
                    st.in_flight = st.in_flight.saturating_sub(1);
                }
            }
        }
    }

    fn on_corrupt(&mut self) {
        self.finished = false;
        self.origin_only = true;
        for c in self.chunks.iter_mut() {
            if *c == ChunkState::Unverified {
                *c = ChunkState::Missing;
                self.present -= 1;
            }
        }
        self.cursor = 0;
        self.advance_cursor();
    }

    pub(super) fn advance_cursor(&mut self) {
        while self
            .chunks
            .get(self.cursor as usize)
            .is_some_and(|c| *c != ChunkState::Missing)
        {
            self.cursor += 1;
        }
    }

    /// Cancels requests older than the timeout; the chunks become requestable again.
    pub(super) fn expire(&mut self, now: Duration) {
        let timeout = self.config.request_timeout;
        let expired: Vec<(u32, Source)> = self
            .in_flight
            .iter()
            .flat_map(|(c, v)| {
                v.iter()
                    .filter(|(s, t)| *s != Source::Origin && now.saturating_sub(*t) >= timeout)
                    .map(move |(s, _)| (*c, *s))
            })
            .collect();
        for (chunk, source) in expired {
            self.remove_in_flight(chunk, source);
            self.actions.push(Action::Cancel { source, chunk });
            if let Source::Peer(p) = source {
                self.penalise(p);
            }
        }
        self.banned.retain(|_, until| *until > now);
    }
}

/// Adds (or takes away) one peer's chunks to the per-chunk availability counts.
fn count_chunks(availability: &mut [u32], chunks: &[bool], add: bool) {
    for (count, _) in availability
        .iter_mut()
        .zip(chunks)
        .filter(|(_, &held)| held)
    {
        if add {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
    }
}
