//! Upload slots: how many chunks this node serves at once, and which waiting request
//! gets the next free slot.
//!
//! A free slot goes to the waiting request for the chunk this node has uploaded the
//! fewest times, then to the oldest. A seed that serves every chunk once before it
//! serves any twice lets the swarm relay the rest (BitTorrent's super-seeding, applied
//! to the queue only: an otherwise idle slot still serves a repeat). Each downloader
//! takes from a seed only the chunks its rendezvous assigns it, but over its own links,
//! so in a large swarm several nodes own a chunk and the seed sent each about 1.35 times
//! in arrival order. Simulated warm starts, 512 MiB in 4 layers (benches/RESULTS.md):
//! 33 nodes 1.37-1.43x -> 1.28-1.32x T_limit, 200 nodes 1.50x -> 1.35x. Every uploader
//! orders its queue this way; in a cold start it spreads the chunks a node holds
//! (200 nodes 1.33x -> 1.31x).
//!
//! Among requests for chunks sent equally often, the requester that holds the fewest
//! chunks of the blob (it says so in its `Request`) goes first. Otherwise nodes that
//! fall behind stay behind: with one 5 GB layer and a 50 ms queue, simulated, the
//! last of 1000 nodes finished at 1.46x T_limit while the median was at 1.05x. The
//! count is the requester's word: a peer that understates it only goes ahead among
//! requests for equally often sent chunks, and every peer has proven the cluster secret.
//!
//! A requester takes at most its share of the slots: the slots over the nodes with an
//! upload running or a request waiting here, even while a slot is free. Without it, a
//! seed of a small swarm served two of four downloaders with all 8 slots (four layers
//! each) while the other two's requests waited and were refused, in turns that came
//! round together as the 8 uploads ended together. The two served nodes' links were
//! shared with their peers' uploads, so the seed's uplink ran at two thirds, and the
//! warm start took 1.48x T_limit (simulated, 4 downloaders, 512 MiB in 4 layers, 1 ms
//! steps; 3 downloaders 1.24x). With shares: 1.07x and 1.05x; 100 to 1000 nodes
//! within 0.01 (benches/RESULTS.md, session 17). On the emulated network, whose flows
//! do not keep in step, both rules took the same time, and with a third of 8 nodes
//! killed mid-way the origin sent 1.037-1.052x the model instead of 1.060-1.095x.
//!
//! A request waits for a slot a little more than the average interval between
//! hand-offs of freed slots to waiting requests ([`QueueWait`]): about until the
//! next slot frees, whatever the link rate.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use libp2p_identity::PeerId;
use shoal_proto::Digest;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::QueueWait;

/// A blob's upload counts are forgotten after this long without an upload of it: they
/// order one rollout's requests, not the next one's.
const SERVED_MEMORY: Duration = Duration::from_secs(120);

/// The node's upload slots ([`UploadSlots::acquire`]).
pub(crate) struct UploadSlots {
    capacity: usize,
    state: Mutex<State>,
    /// Notified when the last slot in use is released.
    idle: Notify,
}

#[derive(Default)]
struct State {
    in_use: usize,
    /// Shutting down: no more admissions.
    closed: bool,
    next_seq: u64,
    waiters: Vec<Waiter>,
    /// Uploads running per requester.
    running: HashMap<PeerId, usize>,
    served: HashMap<Digest, Served>,
    queue_wait: QueueWait<Instant>,
}

struct Waiter {
    seq: u64,
    requester: PeerId,
    digest: Digest,
    chunk: u32,
    /// Chunks of the blob the requester holds.
    held: u32,
    wake: oneshot::Sender<()>,
}

/// Uploads of one blob's chunks begun by this node.
struct Served {
    counts: HashMap<u32, u32>,
    last: Instant,
}

impl State {
    /// A requester's share of `capacity` slots: over the requesters running or waiting
    /// here, `also` included (a request about to queue).
    fn share(&self, capacity: usize, also: Option<&PeerId>) -> usize {
        let mut requesters: Vec<&PeerId> = self.running.keys().collect();
        requesters.extend(self.waiters.iter().map(|w| &w.requester));
        requesters.extend(also);
        requesters.sort_unstable();
        requesters.dedup();
        capacity.div_ceil(requesters.len().max(1))
    }

    fn running(&self, requester: &PeerId) -> usize {
        self.running.get(requester).copied().unwrap_or(0)
    }

    /// Takes a slot for `requester`'s upload of `chunk`.
    fn admit(&mut self, requester: PeerId, digest: Digest, chunk: u32) {
        self.in_use += 1;
        *self.running.entry(requester).or_default() += 1;
        self.count_upload(digest, chunk);
    }

    fn served(&self, digest: &Digest, chunk: u32) -> u32 {
        self.served
            .get(digest)
            .and_then(|s| s.counts.get(&chunk))
            .copied()
            .unwrap_or(0)
    }

    fn count_upload(&mut self, digest: Digest, chunk: u32) {
        let now = Instant::now();
        if !self.served.contains_key(&digest) {
            self.served
                .retain(|_, s| now.duration_since(s.last) < SERVED_MEMORY);
        }
        let served = self.served.entry(digest).or_insert_with(|| Served {
            counts: HashMap::new(),
            last: now,
        });
        if now.duration_since(served.last) >= SERVED_MEMORY {
            served.counts.clear();
        }
        served.last = now;
        *served.counts.entry(chunk).or_default() += 1;
    }
}

/// A request waiting in the queue. Dropped with its request (the stream or task ended,
/// or the wait ran out), it leaves the queue and passes on a slot handed to it that it
/// will not use, so a cancelled request cannot leak a slot.
struct Queued<'a> {
    slots: &'a UploadSlots,
    seq: u64,
    requester: PeerId,
    woken: oneshot::Receiver<()>,
}

impl Queued<'_> {
    /// Leaves the queue; true when a slot was handed over first (it is this request's).
    fn leave(&mut self) -> bool {
        let mut st = self.slots.lock();
        if let Some(pos) = st.waiters.iter().position(|w| w.seq == self.seq) {
            // No dispatch: a requester with nothing running would not have waited
            // with a slot free, so one that leaves frees no slot for the others.
            st.waiters.remove(pos);
            return false;
        }
        drop(st);
        self.woken.try_recv().is_ok()
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.leave() {
            self.slots.release(&self.requester);
        }
    }
}

/// One upload slot, held until dropped.
pub(crate) struct UploadPermit<'a> {
    slots: &'a UploadSlots,
    requester: PeerId,
}

impl Drop for UploadPermit<'_> {
    fn drop(&mut self) {
        self.slots.release(&self.requester);
    }
}

impl UploadSlots {
    /// `capacity` uploads at once (at least one).
    pub(crate) fn new(capacity: usize) -> UploadSlots {
        UploadSlots {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            idle: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: every update is whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot to upload `chunk` of `digest` to `requester`, which holds `held` chunks of
    /// it; `None` when none came free for this request within the queue wait
    /// ([`QueueWait`]), or the slots are closed.
    pub(crate) async fn acquire(
        &self,
        requester: PeerId,
        digest: Digest,
        chunk: u32,
        held: u32,
    ) -> Option<UploadPermit<'_>> {
        let (mut queued, wait) = {
            let mut st = self.lock();
            if st.closed {
                return None;
            }
            // No waiting request can use a free slot (`dispatch` runs on every change),
            // so a free slot within this requester's share is its own.
            if st.in_use < self.capacity
                && st.running(&requester) < st.share(self.capacity, Some(&requester))
            {
                st.admit(requester, digest, chunk);
                return Some(UploadPermit {
                    slots: self,
                    requester,
                });
            }
            let (wake, woken) = oneshot::channel();
            let seq = st.next_seq;
            st.next_seq += 1;
            st.waiters.push(Waiter {
                seq,
                requester,
                digest,
                chunk,
                held,
                wake,
            });
            let queued = Queued {
                slots: self,
                seq,
                requester,
                woken,
            };
            (queued, st.queue_wait.wait())
        };
        let handed = match tokio::time::timeout(wait, &mut queued.woken).await {
            Ok(woken) => woken.is_ok(), // an error: closed
            Err(_) => queued.leave(),
        };
        // Not `then_some`: a permit built and dropped would release a slot.
        handed.then(|| UploadPermit {
            slots: self,
            requester,
        })
    }

    /// Frees a finished upload's slot and hands the free slots to the best waiting
    /// requests within their shares.
    fn release(&self, requester: &PeerId) {
        let mut st = self.lock();
        st.in_use = st.in_use.saturating_sub(1);
        if let Some(n) = st.running.get_mut(requester) {
            *n -= 1;
            if *n == 0 {
                st.running.remove(requester);
            }
        }
        self.dispatch(&mut st);
        if st.in_use < self.capacity {
            st.queue_wait.drained();
        }
        if st.in_use == 0 {
            self.idle.notify_waiters();
        }
    }

    /// While a slot is free, hands it to the waiting request for the chunk served
    /// least, then from the requester holding least, then the oldest, among requesters
    /// below their share.
    fn dispatch(&self, st: &mut State) {
        while !st.closed && st.in_use < self.capacity {
            let share = st.share(self.capacity, None);
            let best = st
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| st.running(&w.requester) < share)
                .min_by_key(|(_, w)| (st.served(&w.digest, w.chunk), w.held, w.seq))
                .map(|(i, _)| i);
            let Some(i) = best else { break };
            let waiter = st.waiters.remove(i);
            // A request whose stream went away meanwhile dropped its receiver.
            if waiter.wake.send(()).is_ok() {
                st.admit(waiter.requester, waiter.digest, waiter.chunk);
                st.queue_wait.handed_off(Instant::now());
            }
        }
    }

    /// Uploads running now.
    pub(crate) fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Shutdown: refuses the waiting requests and every later one.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.waiters.clear();
    }

    /// Resolves once no upload is running.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_use() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The queue wait before any hand-off was measured.
    const WAIT: Duration = super::super::UPLOAD_QUEUE_WAIT;

    fn digest(n: u8) -> Digest {
        Digest::from_sha256_bytes([n; 32])
    }

    fn peer(n: u8) -> PeerId {
        libp2p_identity::Keypair::ed25519_from_bytes([n; 32])
            .expect("an ed25519 key")
            .public()
            .to_peer_id()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_capacity_is_refused_after_the_wait() {
        let slots = UploadSlots::new(1);
        let running = slots.acquire(peer(1), digest(1), 0, 0).await;
        assert!(running.is_some());
        let started = Instant::now();
        assert!(slots.acquire(peer(1), digest(1), 1, 0).await.is_none());
        assert_eq!(started.elapsed(), WAIT);
        drop(running);
        assert_eq!(slots.in_use(), 0);
        assert!(slots.acquire(peer(1), digest(1), 1, 0).await.is_some());
    }

    /// Queues `requests` ((chunk, chunks the requester holds), in arrival order) behind
    /// the one running upload of `d`, releases it, and returns the chunks in the order
    /// they were admitted.
    async fn admission_order(
        slots: &Arc<UploadSlots>,
        d: Digest,
        running: Option<UploadPermit<'_>>,
        requests: &[(u32, u32)],
    ) -> Vec<u32> {
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        for &(chunk, held) in requests {
            let (slots, tx) = (slots.clone(), tx.clone());
            tokio::spawn(async move {
                let permit = slots.acquire(peer(1), d, chunk, held).await;
                assert!(permit.is_some());
                let _ = tx.send(chunk);
                tokio::time::sleep(Duration::from_millis(1)).await;
            });
            tokio::task::yield_now().await;
        }
        drop(running);
        let mut got = Vec::new();
        for _ in requests {
            got.extend(order.recv().await);
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_goes_to_the_chunk_served_least_then_the_oldest() {
        let slots = Arc::new(UploadSlots::new(1));
        let d = digest(2);
        // Chunk 0 has been uploaded once and is being uploaded again now.
        drop(slots.acquire(peer(1), d, 0, 0).await);
        let running = slots.acquire(peer(1), d, 0, 0).await;
        let got = admission_order(&slots, d, running, &[(0, 0), (5, 0), (7, 0)]).await;
        // 5 and 7 were never uploaded, 5 asked first; chunk 0 (twice before) is last.
        assert_eq!(got, [5, 7, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn among_chunks_served_equally_the_requester_holding_least_goes_first() {
        let slots = Arc::new(UploadSlots::new(1));
        let d = digest(7);
        // Chunk 9 was sent once.
        drop(slots.acquire(peer(1), d, 9, 0).await);
        let running = slots.acquire(peer(1), d, 0, 0).await;
        let requests = [(1, 40), (2, 3), (9, 0), (3, 40), (4, 10)];
        let got = admission_order(&slots, d, running, &requests).await;
        // Never-sent chunks by holdings (ties by arrival); the repeat last, though its
        // requester holds nothing.
        assert_eq!(got, [2, 4, 1, 3, 9]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_requester_takes_at_most_its_share_of_the_slots() {
        let slots = UploadSlots::new(4);
        let (a, b, d) = (peer(1), peer(2), digest(9));
        // Alone, a requester may take every slot.
        let mut held_by_a = Vec::new();
        for chunk in 0..4 {
            held_by_a.push(slots.acquire(a, d, chunk, 0).await.expect("a free slot"));
        }
        // A second requester waits for a slot; the next free one is its.
        let waiting_b = slots.acquire(b, d, 10, 0);
        tokio::pin!(waiting_b);
        assert!(futures::poll!(&mut waiting_b).is_pending());
        drop(held_by_a.pop());
        let first_b = waiting_b.await;
        assert!(first_b.is_some(), "b got the freed slot");
        assert_eq!(slots.in_use(), 4);
        // Two requesters: two slots each. `a` runs three, so with a slot free its next
        // request still waits, and is refused; `b` takes the free slot at once.
        drop(held_by_a.pop());
        assert_eq!(slots.in_use(), 3);
        let started = Instant::now();
        assert!(slots.acquire(a, d, 4, 0).await.is_none());
        assert_eq!(started.elapsed(), WAIT);
        let second_b = slots.acquire(b, d, 11, 0).await;
        assert!(second_b.is_some());
        assert_eq!(started.elapsed(), WAIT, "admitted without waiting");
        assert_eq!(slots.in_use(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_requester_that_leaves_raises_the_others_share() {
        let slots = UploadSlots::new(2);
        let (a, b, d) = (peer(1), peer(2), digest(10));
        let running_a = slots.acquire(a, d, 0, 0).await;
        let running_b = slots.acquire(b, d, 1, 0).await;
        assert!(running_a.is_some() && running_b.is_some());
        let waiting_a = slots.acquire(a, d, 2, 0);
        tokio::pin!(waiting_a);
        assert!(futures::poll!(&mut waiting_a).is_pending());
        // `b`'s upload ends: `a` is the only requester left, and its share is both slots.
        drop(running_b);
        let second_a = waiting_a.await;
        assert!(second_a.is_some());
        assert_eq!(slots.in_use(), 2);
        drop((running_a, second_a));
        assert_eq!(slots.in_use(), 0);
        assert!(slots.lock().running.is_empty(), "no requester left counted");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_follows_the_interval_between_hand_offs() {
        let slots = UploadSlots::new(1);
        let slots = &slots;
        let d = digest(8);
        // Refused after `wait` when the one slot stays busy.
        let refused_after = |chunk| async move {
            let started = Instant::now();
            assert!(slots.acquire(peer(1), d, chunk, 0).await.is_none());
            started.elapsed()
        };
        let mut running = slots.acquire(peer(1), d, 0, 0).await;
        assert_eq!(refused_after(100).await, WAIT, "nothing measured yet");
        // A queue kept full: each upload ends 8 ms in and its slot goes to the waiter.
        for chunk in 1..=20 {
            let waiter = slots.acquire(peer(1), d, chunk, 0);
            tokio::pin!(waiter);
            assert!(futures::poll!(&mut waiter).is_pending());
            tokio::time::advance(Duration::from_millis(8)).await;
            drop(running);
            running = waiter.await;
            assert!(running.is_some());
        }
        assert_eq!(refused_after(101).await, Duration::from_millis(10));
        // Idle time between two busy spells is not an interval between hand-offs.
        drop(running);
        tokio::time::advance(Duration::from_secs(1)).await;
        let running = slots.acquire(peer(1), d, 0, 0).await;
        let waiter = slots.acquire(peer(1), d, 1, 0);
        tokio::pin!(waiter);
        assert!(futures::poll!(&mut waiter).is_pending());
        drop(running);
        let running = waiter.await;
        assert!(running.is_some());
        assert_eq!(refused_after(102).await, Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_cancelled_after_it_was_handed_a_slot_passes_it_on() {
        let slots = Arc::new(UploadSlots::new(1));
        let running = slots.acquire(peer(1), digest(6), 0, 0).await;
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(peer(1), digest(6), 1, 0).await.is_some() })
        };
        tokio::task::yield_now().await;
        // The slot is handed to the waiter, whose task ends before it can take it.
        drop(running);
        waiter.abort();
        assert!(waiter.await.is_err(), "aborted before it ran again");
        assert_eq!(slots.in_use(), 0, "the slot was passed on, not leaked");
        assert!(slots.acquire(peer(1), digest(6), 2, 0).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn counts_are_per_blob_and_forgotten_after_a_while() {
        let slots = UploadSlots::new(4);
        let (a, b) = (digest(3), digest(4));
        drop(slots.acquire(peer(1), a, 1, 0).await);
        drop(slots.acquire(peer(1), a, 1, 0).await);
        assert_eq!(slots.lock().served(&a, 1), 2);
        assert_eq!(slots.lock().served(&b, 1), 0);
        tokio::time::advance(SERVED_MEMORY).await;
        drop(slots.acquire(peer(1), a, 1, 0).await);
        assert_eq!(slots.lock().served(&a, 1), 1);
        tokio::time::advance(SERVED_MEMORY).await;
        drop(slots.acquire(peer(1), b, 1, 0).await);
        assert!(!slots.lock().served.contains_key(&a), "idle blob pruned");
    }

    #[tokio::test(start_paused = true)]
    async fn closing_refuses_waiters_and_idle_waits_for_running_uploads() {
        let slots = Arc::new(UploadSlots::new(1));
        let running = slots.acquire(peer(1), digest(5), 0, 0).await;
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(peer(1), digest(5), 1, 0).await.is_some() })
        };
        tokio::task::yield_now().await;
        slots.close();
        assert!(
            !waiter.await.unwrap(),
            "a waiting request is refused on close"
        );
        assert!(slots.acquire(peer(1), digest(5), 2, 0).await.is_none());
        let idle = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.idle().await })
        };
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        drop(running);
        idle.await.unwrap();
        assert_eq!(slots.in_use(), 0);
    }
}
