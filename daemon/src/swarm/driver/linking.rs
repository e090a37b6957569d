//! A download's links: finding providers, linking to them (and to nodes that link to
//! us), and telling them what this node holds and whom it downloads with.

use std::collections::HashSet;
use std::sync::Arc;

use libp2p_identity::PeerId;
use shoal_proto::wire::Message;
use shoal_proto::ChunkLayout;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::links::{self, LinkUpdate};
use super::super::scheduler::{Event, NodeId};
use super::super::tuning::MAX_LINKED;
use super::{Input, Peer, Run, SETTLE, SETTLE_POLL};
use crate::net::transfer::{PeerConnection, PeerLink};

/// A link with the connection it runs on.
pub(super) type LinkedPeer = (Arc<PeerConnection>, PeerLink);

/// Whether every one of `members` is among the remotes of `linked`.
fn all_linked(members: &[PeerId], linked: &[LinkedPeer]) -> bool {
    members
        .iter()
        .all(|m| linked.iter().any(|(conn, _)| conn.remote == *m))
}

impl Run {
    /// Tells every link this node's linked downloaders when they changed, so each peer
    /// assigns origin chunks over two hops of view ([`Event::Interested`]).
    pub(super) fn gossip(&mut self, linked: Vec<NodeId>) {
        if linked == self.gossiped {
            return;
        }
        let msg = self.interested_message(&linked);
        for p in self.peers.values_mut() {
            p.writers.retain(|w| w.send(msg.clone()).is_ok());
        }
        self.gossiped = linked;
    }

    fn interested_message(&self, nodes: &[NodeId]) -> Message {
        Message::Interested {
            digest: self.digest,
            nodes: nodes.iter().map(|n| n.0).collect(),
        }
    }

    /// With nobody holding the blob yet, waits up to [`SETTLE`] for the nodes starting
    /// it at the same moment, so that none of them fetches from the origin chunks
    /// another is fetching. Ends early once every node in `members` (every node this
    /// one knows of) is linked, as in a rollout to a whole small cluster: there is
    /// nobody left to wait for. In a large cluster some member is usually missing, and
    /// the wait runs its full length.
    pub(super) async fn settle(&mut self, linked: &mut Vec<LinkedPeer>, members: &[PeerId]) {
        let started = Instant::now();
        let deadline = started + SETTLE;
        loop {
            self.link_inbound(linked).await;
            let everyone = all_linked(members, linked);
            if everyone || Instant::now() >= deadline {
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    everyone,
                    "settled"
                );
                return;
            }
            tokio::time::sleep_until(deadline.min(Instant::now() + SETTLE_POLL)).await;
            let known = linked.iter().map(|(c, _)| c.remote).collect();
            linked.extend(self.link_new(known).await);
        }
    }

    /// Connects back to the nodes that linked to us since the last call.
    pub(super) async fn link_inbound(&mut self, linked: &mut Vec<LinkedPeer>) {
        while let Ok(link) = self.inbound.try_recv() {
            if let Some(l) = links::dial_back(&self.swarm.transfer, link).await {
                linked.push(l);
            }
        }
    }

    /// Links providers not in `known`, in parallel, up to [`MAX_LINKED`] in all.
    pub(super) async fn link_new(&self, known: HashSet<PeerId>) -> Vec<LinkedPeer> {
        let providers = self.swarm.discovery.find_providers(self.digest).await;
        let room = MAX_LINKED.saturating_sub(known.len());
        let ours = self.partial.snapshot();
        links::link_all(
            &self.swarm.transfer,
            providers,
            known,
            room,
            self.digest,
            ours,
        )
        .await
    }

    pub(super) fn spawn_dial_back(
        &self,
        link: Box<PeerLink>,
        inputs: &mpsc::UnboundedSender<Input>,
    ) {
        if self.banned.contains(&links::node_id(&link.peer)) {
            return;
        }
        let transfer = self.swarm.transfer.clone();
        let inputs = inputs.clone();
        tokio::spawn(async move {
            if let Some((conn, link)) = links::dial_back(&transfer, link).await {
                let _ = inputs.send(Input::Linked(conn, link));
            }
        });
    }

    pub(super) fn spawn_rediscover(&self, inputs: &mpsc::UnboundedSender<Input>) {
        let known: HashSet<_> = self.peers.values().map(|p| p.conn.remote).collect();
        let room = MAX_LINKED.saturating_sub(known.len());
        if room == 0 {
            return;
        }
        let (transfer, discovery) = (self.swarm.transfer.clone(), self.swarm.discovery.clone());
        let (digest, ours, inputs) = (self.digest, self.partial.snapshot(), inputs.clone());
        tokio::spawn(async move {
            let providers = discovery.find_providers(digest).await;
            for (conn, link) in
                links::link_all(&transfer, providers, known, room, digest, ours).await
            {
                let _ = inputs.send(Input::Linked(conn, link));
            }
        });
    }

    /// Registers a link: reader and writer tasks, our current have-map, and the
    /// scheduler event for theirs.
    pub(super) fn add_link(
        &mut self,
        conn: Arc<PeerConnection>,
        link: PeerLink,
        layout: &ChunkLayout,
        updates: &mpsc::UnboundedSender<LinkUpdate>,
    ) -> Option<Event> {
        let id = links::node_id(&link.peer);
        if self.banned.contains(&id) || link.peer == self.swarm.discovery.local_peer {
            return None;
        }
        let PeerLink {
            layout: theirs,
            bitfield,
            send,
            recv,
            ..
        } = link;
        links::spawn_reader(id, self.digest, recv, updates.clone());
        let writer = links::spawn_writer(send);
        let (our_layout, our_bits) = self.partial.snapshot();
        let _ = writer.send(Message::HaveMap {
            digest: self.digest,
            layout: our_layout,
            bitfield: our_bits,
        });
        if !self.gossiped.is_empty() {
            let _ = writer.send(self.interested_message(&self.gossiped));
        }
        let event = links::bitfield_event(id, layout, theirs, &bitfield);
        if event.is_none() {
            tracing::warn!(peer = %conn.remote, "peer chunks this blob differently; not using it");
            return None;
        }
        tracing::debug!(peer = %conn.remote, "linked");
        let entry = self.peers.entry(id).or_insert(Peer {
            conn,
            writers: Vec::new(),
        });
        entry.writers.push(writer);
        event
    }
}
