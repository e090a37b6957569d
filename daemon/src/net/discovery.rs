//! Discovery: which nodes hold (or want) a blob, and where their transfer endpoints are.
//!
//! libp2p over QUIC with three behaviours:
//! - **Kademlia** under a private protocol name, forced into server mode (rust-libp2p
//!   starts in client mode until an external address is confirmed, which never happens
//!   on a LAN without AutoNAT). A node is a *provider* of a blob from the moment it wants
//!   it (a partial provider, so cold-start nodes find each other) until it evicts it.
//!   Provider records live minutes, not the default 48 h, so dead nodes drop out.
//! - **identify**, whose listen addresses feed the routing table and whose agent string
//!   carries the node's chunk-transfer address (`transfer=IP:PORT`, or `transfer=:PORT`
//!   for "the IP you reached me at"): the transfer endpoint is a separate quinn socket.
//! - **mDNS** (optional) for edge LANs without a bootstrap list.
//!
//! The swarm runs in one task; [`Discovery`] is a handle that sends it commands.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::core::multiaddr::Protocol;
use libp2p::kad::{self, store::MemoryStore, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::swarm::{behaviour::toggle::Toggle, ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, Multiaddr, StreamProtocol, Swarm};
use libp2p_identity::{Keypair, PeerId};
use shoal_proto::Digest;
use tokio::sync::{mpsc, oneshot};

use super::NetError;

const KAD_PROTOCOL: &str = "/shoal/kad/1.0.0";
const IDENTIFY_PROTOCOL: &str = "/shoal/id/1.0.0";
/// How often bootstrap addresses are re-dialled (and `dns:` names re-resolved) and the
/// routing table refreshed: new DaemonSet pods appear behind the same Service name.
const BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);
/// How long a provider lookup waits for unidentified providers to tell their transfer address.
const IDENTIFY_WAIT: Duration = Duration::from_secs(3);

/// One bootstrap entry, as given with `--bootstrap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// `IP:PORT` of a peer's libp2p QUIC socket; its PeerId is learned on connect.
    Socket(SocketAddr),
    /// A multiaddr, with or without `/p2p/<id>`.
    Multiaddr(Multiaddr),
    /// `dns:NAME:PORT`: every address NAME resolves to (a headless Service).
    Dns {
        /// Host name.
        name: String,
        /// libp2p port.
        port: u16,
    },
}

impl std::str::FromStr for Bootstrap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("dns:") {
            let (name, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: expected dns:NAME:PORT"))?;
            let port = port
                .parse()
                .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
            if name.is_empty() {
                return Err(format!("{s:?}: empty host name"));
            }
            return Ok(Bootstrap::Dns {
                name: name.to_owned(),
                port,
            });
        }
        if s.starts_with('/') {
            return s
                .parse::<Multiaddr>()
                .map(Bootstrap::Multiaddr)
                .map_err(|e| format!("{s:?}: bad multiaddr: {e}"));
        }
        s.parse::<SocketAddr>().map(Bootstrap::Socket).map_err(|_| {
            format!("{s:?}: expected IP:PORT, a multiaddr (/ip4/…/udp/…/quic-v1) or dns:NAME:PORT")
        })
    }
}

/// A node found holding or wanting a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Its identity (checked again by TLS on the transfer connection).
    pub peer: PeerId,
    /// Its chunk-transfer endpoint.
    pub transfer: SocketAddr,
}

/// Settings of the discovery service.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// libp2p QUIC listen address.
    pub listen: SocketAddr,
    /// The IP peers should dial, when the bound address is not it.
    pub advertise_ip: Option<IpAddr>,
    /// Where to find the first peers.
    pub bootstrap: Vec<Bootstrap>,
    /// LAN discovery.
    pub mdns: bool,
    /// This node's transfer endpoint as bound.
    pub transfer: SocketAddr,
    /// Provider record lifetime; records are republished at a third of it.
    pub provider_ttl: Duration,
}

enum Command {
    Provide(Digest),
    StopProviding(Digest),
    FindProviders(Digest, oneshot::Sender<Vec<Provider>>),
    Peers(oneshot::Sender<Vec<Provider>>),
    Members(oneshot::Sender<Vec<PeerId>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
}

/// Handle to the discovery task.
pub struct Discovery {
    commands: mpsc::UnboundedSender<Command>,
    /// This node's PeerId.
    pub local_peer: PeerId,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Discovery {
    /// Starts listening and bootstrapping; returns once the listener is bound.
    pub async fn start(
        keypair: Keypair,
        options: DiscoveryOptions,
    ) -> Result<Arc<Discovery>, NetError> {
        let local_peer = keypair.public().to_peer_id();
        let agent = transfer_agent(&options);
        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_config
            .set_provider_record_ttl(Some(options.provider_ttl))
            .set_provider_publication_interval(Some(options.provider_ttl / 3))
            .set_query_timeout(Duration::from_secs(10));
        let mdns_enabled = options.mdns;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_quic()
            .with_behaviour(|key| {
                let peer = key.public().to_peer_id();
                let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad_config);
                kad.set_mode(Some(kad::Mode::Server));
                let identify = identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(agent),
                );
                let mdns = if mdns_enabled {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
                } else {
                    None
                };
                Ok(Behaviour {
                    kad,
                    identify,
                    mdns: mdns.into(),
                })
            })
            .map_err(|e| NetError::Setup(format!("libp2p behaviour: {e}")))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        let listen = socket_multiaddr(options.listen);
        swarm
            .listen_on(listen.clone())
            .map_err(|e| NetError::Setup(format!("libp2p listen on {listen}: {e}")))?;
        if let Some(ip) = options.advertise_ip {
            let mut external = socket_multiaddr(SocketAddr::new(ip, options.listen.port()));
            external.push(Protocol::P2p(local_peer));
            swarm.add_external_address(external);
        }
        // Wait for the listener so a bad address fails start-up, not a later query.
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%local_peer, %address, "libp2p listening");
                    break;
                }
                SwarmEvent::ListenerError { error, .. }
                | SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                } => {
                    return Err(NetError::Setup(format!(
                        "libp2p listen on {listen}: {error}"
                    )));
                }
                _ => {}
            }
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let task = Task {
            swarm,
            options,
            transfer_addrs: HashMap::new(),
            connection_ips: HashMap::new(),
            lookups: HashMap::new(),
            waiting: Vec::new(),
            provided: HashSet::new(),
        };
        tokio::spawn(task.run(rx));
        Ok(Arc::new(Discovery {
            commands,
            local_peer,
        }))
    }

    /// Advertises this node as a provider of `digest` (idempotent).
    pub fn provide(&self, digest: Digest) {
        let _ = self.commands.send(Command::Provide(digest));
    }

    /// Stops advertising `digest` (evicted, or a download given up).
    pub fn stop_providing(&self, digest: Digest) {
        let _ = self.commands.send(Command::StopProviding(digest));
    }

    /// Other nodes holding or wanting `digest`, with their transfer addresses.
    pub async fn find_providers(&self, digest: Digest) -> Vec<Provider> {
        self.ask(|tx| Command::FindProviders(digest, tx)).await
    }

    /// Connected peers whose transfer address is known.
    pub async fn peers(&self) -> Vec<Provider> {
        self.ask(Command::Peers).await
    }

    /// Every other node this one knows of: its routing table and its connected peers.
    /// In a small cluster that is the whole cluster; in a large one, a part of it.
    pub async fn members(&self) -> Vec<PeerId> {
        self.ask(Command::Members).await
    }

    /// Addresses the libp2p socket listens on (with `/p2p/<id>`), for bootstrap lists.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(Command::ListenAddrs).await
    }

    async fn ask<T: Default>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(make(tx)).is_err() {
            return T::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// `transfer=IP:PORT`, or `transfer=:PORT` when bound to the unspecified address and
/// no advertise address is set: peers then use the IP they reached us at.
fn transfer_agent(options: &DiscoveryOptions) -> String {
    let ip = options
        .advertise_ip
        .or_else(|| Some(options.transfer.ip()).filter(|ip| !ip.is_unspecified()));
    let addr = match ip {
        Some(ip) => SocketAddr::new(ip, options.transfer.port()).to_string(),
        None => format!(":{}", options.transfer.port()),
    };
    format!("shoald/{} transfer={addr}", env!("CARGO_PKG_VERSION"))
}

/// The transfer address announced in an identify agent string, given the IP the peer
/// was reached at.
fn parse_transfer_agent(agent: &str, seen_ip: Option<IpAddr>) -> Option<SocketAddr> {
    let value = agent
        .split_whitespace()
        .find_map(|w| w.strip_prefix("transfer="))?;
    if let Some(port) = value.strip_prefix(':') {
        return Some(SocketAddr::new(seen_ip?, port.parse().ok()?));
    }
    value.parse().ok()
}

fn socket_multiaddr(addr: SocketAddr) -> Multiaddr {
    let mut m = Multiaddr::empty();
    m.push(match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    m.push(Protocol::Udp(addr.port()));
    m.push(Protocol::QuicV1);
    m
}

fn multiaddr_ip(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// A provider lookup in progress.
struct Lookup {
    found: HashSet<PeerId>,
    reply: oneshot::Sender<Vec<Provider>>,
}

/// A finished lookup waiting for some providers to identify themselves.
struct Waiting {
    found: HashSet<PeerId>,
    reply: oneshot::Sender<Vec<Provider>>,
    deadline: Instant,
}

struct Task {
    swarm: Swarm<Behaviour>,
    options: DiscoveryOptions,
    /// Transfer endpoints learned through identify.
    transfer_addrs: HashMap<PeerId, SocketAddr>,
    /// Remote IP of each libp2p connection, for `transfer=:PORT` agents.
    connection_ips: HashMap<ConnectionId, IpAddr>,
    lookups: HashMap<QueryId, Lookup>,
    waiting: Vec<Waiting>,
    provided: HashSet<Digest>,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut bootstrap = tokio::time::interval(BOOTSTRAP_INTERVAL);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return, // the daemon is shutting down
                },
                _ = bootstrap.tick() => self.bootstrap().await,
                _ = tick.tick() => self.answer_waiting(),
            }
        }
    }

    async fn bootstrap(&mut self) {
        let mut addrs = Vec::new();
        for entry in self.options.bootstrap.clone() {
            match entry {
                Bootstrap::Socket(a) => addrs.push(socket_multiaddr(a)),
                Bootstrap::Multiaddr(m) => addrs.push(m),
                Bootstrap::Dns { name, port } => {
                    match tokio::net::lookup_host((name.as_str(), port)).await {
                        Ok(resolved) => addrs.extend(resolved.map(socket_multiaddr)),
                        Err(e) => {
                            tracing::warn!(%name, error = %e, "bootstrap name did not resolve")
                        }
                    }
                }
            }
        }
        let own = socket_multiaddr(self.options.listen);
        for addr in addrs {
            if addr == own {
                continue;
            }
            let known = addr.iter().find_map(|p| match p {
                Protocol::P2p(id) => Some(id),
                _ => None,
            });
            if let Some(peer) = known {
                if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
                    continue;
                }
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "bootstrap dial failed");
            }
        }
        // Refresh the routing table; fails harmlessly while it is still empty.
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Provide(digest) => {
                if self.provided.insert(digest) {
                    let key = RecordKey::new(&digest.as_bytes());
                    if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                        tracing::warn!(%digest, error = %e, "cannot advertise blob");
                    }
                }
            }
            Command::StopProviding(digest) => {
                if self.provided.remove(&digest) {
                    let key = RecordKey::new(&digest.as_bytes());
                    self.swarm.behaviour_mut().kad.stop_providing(&key);
                }
            }
            Command::FindProviders(digest, reply) => {
                let key = RecordKey::new(&digest.as_bytes());
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.lookups.insert(
                    id,
                    Lookup {
                        found: HashSet::new(),
                        reply,
                    },
                );
            }
            Command::Peers(reply) => {
                let peers = self
                    .swarm
                    .connected_peers()
                    .filter_map(|p| self.provider(p))
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Members(reply) => {
                let mut members: HashSet<PeerId> = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .flat_map(|bucket| {
                        bucket
                            .iter()
                            .map(|entry| *entry.node.key.preimage())
                            .collect::<Vec<_>>()
                    })
                    .collect();
                members.extend(self.swarm.connected_peers().copied());
                let _ = reply.send(members.into_iter().collect());
            }
            Command::ListenAddrs(reply) => {
                let me = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .cloned()
                    .map(|mut a| {
                        a.push(Protocol::P2p(me));
                        a
                    })
                    .collect();
                let _ = reply.send(addrs);
            }
        }
    }

    fn provider(&self, peer: &PeerId) -> Option<Provider> {
        self.transfer_addrs.get(peer).map(|&transfer| Provider {
            peer: *peer,
            transfer,
        })
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "libp2p connection");
                if let Some(ip) = multiaddr_ip(endpoint.get_remote_address()) {
                    self.connection_ips.insert(connection_id, ip);
                }
            }
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                self.connection_ips.remove(&connection_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            })) => {
                let seen_ip = self.connection_ips.get(&connection_id).copied();
                let Some(transfer) = parse_transfer_agent(&info.agent_version, seen_ip) else {
                    tracing::debug!(peer = %peer_id, agent = %info.agent_version, "not a shoal node");
                    return;
                };
                for addr in info.listen_addrs {
                    if multiaddr_ip(&addr).is_some_and(|ip| !ip.is_unspecified()) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                if self.transfer_addrs.insert(peer_id, transfer) != Some(transfer) {
                    tracing::info!(peer = %peer_id, %transfer, "peer identified");
                }
                self.answer_waiting();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(result),
                step,
                ..
            })) => {
                let me = *self.swarm.local_peer_id();
                let finished = match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        if let Some(lookup) = self.lookups.get_mut(&id) {
                            lookup
                                .found
                                .extend(providers.into_iter().filter(|p| *p != me));
                        }
                        step.last
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, "provider lookup ended early");
                        true
                    }
                };
                if finished {
                    if let Some(lookup) = self.lookups.remove(&id) {
                        self.await_identify(lookup);
                    }
                }
            }
            _ => {}
        }
    }

    /// Dials found providers not identified yet; the answer goes out once they are.
    fn await_identify(&mut self, lookup: Lookup) {
        for peer in &lookup.found {
            if !self.transfer_addrs.contains_key(peer) && !self.swarm.is_connected(peer) {
                // Kademlia supplies the addresses from the provider record.
                let _ = self.swarm.dial(*peer);
            }
        }
        self.waiting.push(Waiting {
            found: lookup.found,
            reply: lookup.reply,
            deadline: Instant::now() + IDENTIFY_WAIT,
        });
        self.answer_waiting();
    }

    /// Answers finished lookups whose providers have all identified, or at their deadline
    /// with those that have.
    fn answer_waiting(&mut self) {
        let now = Instant::now();
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.waiting) {
            let complete = w.found.iter().all(|p| self.transfer_addrs.contains_key(p));
            if complete || now >= w.deadline {
                let providers = w.found.iter().filter_map(|p| self.provider(p)).collect();
                let _ = w.reply.send(providers);
            } else {
                still.push(w);
            }
        }
        self.waiting = still;
    }
}

#[cfg(test)]
mod tests;
