//! Who else downloads the blob: the interested set the origin and seed chunks are
//! assigned over, built from this node's links and the lists its peers gossip.

use std::time::Duration;

use super::{NodeId, Scheduler};

impl Scheduler {
    /// [`Scheduler::live_interested`], recomputed only when an event or the passing of
    /// a grace period may have changed it.
    pub(super) fn cached_interested(&mut self, now: Duration) -> Vec<NodeId> {
        if let Some((set, until)) = &self.interested_cache {
            if now < *until {
                debug_assert_eq!(*set, self.live_interested(now));
                return set.clone();
            }
        }
        let set = self.live_interested(now);
        let grace = self.config.assignment_grace;
        let peer_expiry = self
            .peers
            .values()
            .filter(|st| st.downloading && st.heard_within(now, grace))
            .map(|st| st.last_heard + grace);
        // A list lapses with its sender's liveness (every sender is a peer).
        let sender_expiry = self
            .heard_interested
            .keys()
            .filter_map(|from| self.peers.get(from))
            .filter(|st| st.heard_within(now, grace))
            .map(|st| st.last_heard + grace);
        let until = peer_expiry
            .chain(sender_expiry)
            .min()
            .unwrap_or(Duration::MAX);
        self.interested_cache = Some((set.clone(), until));
        set
    }

    /// Whether a list from `from` counts: it is linked and was heard from within the
    /// grace. Lists are sent only when they change, so a list's own age says nothing
    /// (when lists lapsed 30 s after they were sent, every large simulated cold start
    /// fell back to one-hop views half-way through and fetched chunks again).
    fn live_sender(&self, from: &NodeId, now: Duration) -> bool {
        self.peers
            .get(from)
            .is_some_and(|st| st.heard_within(now, self.config.assignment_grace))
    }

    /// The live interested nodes (this one included), sorted.
    pub(super) fn live_interested(&self, now: Duration) -> Vec<NodeId> {
        let mut live: Vec<NodeId> = self.linked_interested(now);
        for (from, nodes) in &self.heard_interested {
            if self.live_sender(from, now) {
                // A linked peer this node knows to be complete is a seed, not a
                // co-downloader, whatever an older list says (as an owner it would
                // hold chunks nobody fetches until the grace runs out).
                live.extend(
                    nodes
                        .iter()
                        .copied()
                        .filter(|n| self.peers.get(n).is_none_or(|st| st.downloading)),
                );
            }
        }
        live.sort_unstable();
        live.dedup();
        live
    }

    /// This node and its linked peers that are downloading the blob and were heard from
    /// within the grace: what it tells its peers ([`Event::Interested`](super::Event::Interested)).
    pub fn linked_interested(&self, now: Duration) -> Vec<NodeId> {
        let grace = self.config.assignment_grace;
        let mut live: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, st)| st.downloading && st.heard_within(now, grace))
            .map(|(id, _)| *id)
            .chain([self.me])
            .collect();
        live.sort_unstable();
        live
    }

    /// Whether the interested set is as complete as it will get soon: every linked
    /// downloading peer has sent its list, or [`super::Config::membership_wait`] has passed.
    pub(super) fn membership_known(&self, now: Duration) -> bool {
        let waited = self
            .started
            .is_some_and(|t| now.saturating_sub(t) >= self.config.membership_wait);
        waited
            || self
                .peers
                .iter()
                .filter(|(_, st)| st.downloading)
                .all(|(id, _)| self.heard_interested.contains_key(id))
    }
}
