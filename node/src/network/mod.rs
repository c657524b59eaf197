//! The network task: owns the libp2p `Swarm`; everything else talks to it
//! through a bounded command channel ([`NetworkHandle`]).

mod autonat_probe;
mod backoff;
pub mod behaviour;
pub mod breaker;
pub mod cbor_codec;
mod connections;
pub mod consensus_io;
mod counters;
mod dial_filter;
mod dialer;
mod guard;
mod inbound;
pub mod membership;
pub mod model_io;
pub mod nat;
pub mod peer_manager;
mod peers;
mod publish;
mod relay_service;
mod relayed_sync;
pub mod router;
pub mod sync_io;
mod validation;

use crate::config::{is_quic, Settings};
use crate::identity::node_id_of;
use crate::types::{
    ChannelFamilyInfo, Channels, MessageCounters, PeerInfo, PublishReceipt, Status,
};
use agentmesh_protocol::{Channel, ChannelPattern, NodeId, NodeKey};
use agentmesh_store::{KnownPeer, KnownPeers, PeerBook};
use backoff::Backoff;
use behaviour::{Behaviour, BehaviourEvent};
use counters::ChannelCounters;
use dialer::Dialer;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::metrics::Recorder;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, ping, Multiaddr, PeerId, Swarm};
use peers::PeerTable;
use router::{Router, Subscription};
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the network task; senders wait when it is full.
const COMMAND_QUEUE: usize = 1024;

/// Longest wait between attempts to rejoin the mesh with no connection.
const REJOIN_MAX_DELAY: Duration = Duration::from_secs(60);

/// How long a duplicate connection stays open before it is closed (see
/// `on_connection_established`).
const DUPLICATE_CLOSE_DELAY: Duration = Duration::from_secs(2);

/// Most queued commands handled in one go before the swarm is polled again.
const MAX_COMMAND_BURST: usize = 512;

pub use crate::clock::now_ms;

/// Every channel topic of `network` starts with this.
pub fn topic_prefix(network: &str) -> String {
    format!("/agentmesh/{network}/channel/")
}

pub fn topic_for(network: &str, family: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("{}{family}", topic_prefix(network)))
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The message itself is unacceptable (the agent's mistake).
    #[error("invalid message: {0}")]
    Invalid(String),
    /// Outside this node's membership scopes.
    #[error("{0}")]
    Forbidden(String),
    #[error("message of {0} bytes is larger than the network accepts")]
    TooLarge(usize),
    #[error("the send queues to all {0} subscribed peers are full; retry later")]
    QueuesFull(usize),
    #[error("publishing failed: {0}")]
    Failed(String),
}

pub struct PublishRequest {
    channel: Channel,
    content_type: String,
    body: Vec<u8>,
    reply: oneshot::Sender<Result<PublishReceipt, PublishError>>,
}

pub enum Command {
    Publish(PublishRequest),
    /// Several publishes from one agent request, kept together.
    PublishMany(Vec<PublishRequest>),
    Subscribe {
        pattern: ChannelPattern,
        reply: oneshot::Sender<Subscription>,
    },
    Status(oneshot::Sender<Status>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Channels(oneshot::Sender<Channels>),
    Shutdown(oneshot::Sender<()>),
    Consensus(consensus_io::ConsensusCommand),
    Sync(sync_io::SyncCommand),
    FetchModel(model_io::ModelFetch),
}

#[derive(Debug, thiserror::Error)]
#[error("the network task has stopped")]
pub struct NetworkStopped;

/// Why a request to a peer (pattern sync, model fetch) got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerRequestError {
    #[error("not a peer id: {0}")]
    NotAPeer(String),
    #[error(transparent)]
    Failed(#[from] libp2p::request_response::OutboundFailure),
    /// The peer answered, but its membership does not allow what it sent.
    #[error("the peer's membership certificate does not allow {0}")]
    NotAllowed(&'static str),
    /// Large transfers never go through a relay (circuits carry
    /// `nat.relay_circuit_bytes` at most, and a relay is someone else's
    /// bandwidth): they wait for a direct connection.
    #[error("no direct connection to the peer (only through a relay, or none); {0} waits for one")]
    RelayedOnly(&'static str),
    /// Pattern sync with a peer reached only through a relay spent its
    /// byte budget for this minute (see `relayed_sync`).
    #[error("pattern sync through a relay is limited to {0} bytes a minute per peer and this minute's are spent; the rest waits for the next minute or a direct connection")]
    RelayBudget(usize),
}

/// A cheap, cloneable way to talk to the network task.
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
}

impl NetworkHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkStopped> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetworkStopped)?;
        rx.await.map_err(|_| NetworkStopped)
    }

    pub async fn publish(
        &self,
        channel: Channel,
        content_type: String,
        body: Vec<u8>,
    ) -> Result<Result<PublishReceipt, PublishError>, NetworkStopped> {
        self.ask(|reply| {
            Command::Publish(PublishRequest {
                channel,
                content_type,
                body,
                reply,
            })
        })
        .await
    }

    /// Publishes several messages in order; one result per message.
    pub async fn publish_many(
        &self,
        messages: Vec<(Channel, String, Vec<u8>)>,
    ) -> Result<Vec<Result<PublishReceipt, PublishError>>, NetworkStopped> {
        let mut requests = Vec::with_capacity(messages.len());
        let mut replies = Vec::with_capacity(messages.len());
        for (channel, content_type, body) in messages {
            let (reply, rx) = oneshot::channel();
            requests.push(PublishRequest {
                channel,
                content_type,
                body,
                reply,
            });
            replies.push(rx);
        }
        self.commands
            .send(Command::PublishMany(requests))
            .await
            .map_err(|_| NetworkStopped)?;
        let mut results = Vec::with_capacity(replies.len());
        for rx in replies {
            results.push(rx.await.map_err(|_| NetworkStopped)?);
        }
        Ok(results)
    }

    pub async fn subscribe(&self, pattern: ChannelPattern) -> Result<Subscription, NetworkStopped> {
        self.ask(|reply| Command::Subscribe { pattern, reply })
            .await
    }

    pub async fn status(&self) -> Result<Status, NetworkStopped> {
        self.ask(Command::Status).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetworkStopped> {
        self.ask(Command::Peers).await
    }

    pub async fn channels(&self) -> Result<Channels, NetworkStopped> {
        self.ask(Command::Channels).await
    }

    /// Hands a consensus command to the network task (waits when its queue
    /// is full).
    pub async fn consensus(
        &self,
        command: consensus_io::ConsensusCommand,
    ) -> Result<(), NetworkStopped> {
        self.commands
            .send(Command::Consensus(command))
            .await
            .map_err(|_| NetworkStopped)
    }

    /// Hands an anti-entropy command to the network task.
    pub async fn sync(&self, command: sync_io::SyncCommand) -> Result<(), NetworkStopped> {
        self.commands
            .send(Command::Sync(command))
            .await
            .map_err(|_| NetworkStopped)
    }

    /// Asks `peer` for a chunk of its shared model.
    pub async fn fetch_model(
        &self,
        peer: NodeId,
        request: agentmesh_protocol::model_wire::ModelRequest,
    ) -> Result<
        Result<agentmesh_protocol::model_wire::ModelResponse, PeerRequestError>,
        NetworkStopped,
    > {
        self.ask(|reply| {
            Command::FetchModel(model_io::ModelFetch {
                peer,
                request,
                reply,
            })
        })
        .await
    }

    /// Asks the network task to persist what it knows and stop.
    pub async fn shutdown(&self) -> Result<(), NetworkStopped> {
        self.ask(Command::Shutdown).await
    }
}

/// Where the network task hands what it receives for the node's services.
pub struct ServiceSenders {
    pub consensus: consensus_io::ConsensusSenders,
    pub sync: mpsc::Sender<sync_io::SyncEvent>,
    /// The model this node serves to peers.
    pub model: model_io::ServedModel,
}

/// The node's listen addresses, and who waits for them.
struct Listening {
    addrs: Vec<Multiaddr>,
    /// Listeners not yet reporting an address.
    pending: HashSet<ListenerId>,
    /// Told the addresses once every listener has one.
    on_ready: Option<oneshot::Sender<Vec<Multiaddr>>>,
}

/// The network task: the swarm, and the parts each concern is delegated
/// to (connections, peer manager, membership, guard, validation, the
/// consensus, sync and model protocols).
pub struct Network {
    swarm: Swarm<Behaviour>,
    settings: Settings,
    /// `topic_prefix(network)`, computed once: checked for every frame.
    topic_prefix: String,
    local_node: NodeId,
    /// Signs the gossip frames this node publishes.
    key: NodeKey,
    peer_book: PeerBook,
    router: Router,
    counters: ChannelCounters,
    totals: MessageCounters,
    commands: mpsc::Receiver<Command>,
    started: Instant,
    listening: Listening,
    /// Who is connected, how to dial, when to redial.
    links: connections::Links,
    last_prune: Instant,
    consensus: consensus_io::ConsensusIo,
    sync: sync_io::SyncIo,
    model: model_io::ModelIo,
    metrics: crate::metrics::NetworkMetrics,
    membership: membership::Membership,
    guard: guard::Guard,
    peer_manager: peer_manager::PeerManager,
    validation: validation::ValidationPool,
    nat: nat::Nat,
}

impl Network {
    /// Builds the swarm and starts listening. Fails on addresses that cannot
    /// be bound (port in use, unsupported address).
    pub fn new(
        swarm: Swarm<Behaviour>,
        settings: Settings,
        key: NodeKey,
        store: &agentmesh_store::Store,
        services: ServiceSenders,
        metrics: crate::metrics::NetworkMetrics,
        membership: membership::Membership,
    ) -> anyhow::Result<(Network, NetworkHandle, oneshot::Receiver<Vec<Multiaddr>>)> {
        let ServiceSenders {
            consensus: consensus_events,
            sync: sync_events,
            model: served_model,
        } = services;
        let peer_book = store.peers()?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (listening_tx, listening_rx) = oneshot::channel();
        let router = Router::new(settings.config.network.subscriber_buffer.get());
        let discovery = Backoff::new(
            settings.config.network.bootstrap_interval_secs.duration(),
            Instant::now(),
        );
        let dialer = Dialer::new(
            settings.config.network.breaker_cooldown_secs.duration(),
            settings.config.network.reconnect_max_delay_secs.duration(),
            settings.config.network.quic,
            settings.config.network.tcp,
        );
        let consensus =
            consensus_io::ConsensusIo::new(&settings.config.node.network, consensus_events);
        let guard = guard::Guard::new(&settings, store.bans()?);
        let mut nat = nat::Nat::new(
            settings.config.nat.reachability,
            settings.config.nat.max_relays,
            &settings
                .relays
                .iter()
                .map(|r| (r.peer_id, r.addr.clone()))
                .collect::<Vec<_>>(),
            &settings.external_addrs,
        );
        if settings.config.nat.upnp {
            nat.upnp_searching();
        }
        let peer_manager = peer_manager::PeerManager::new(&settings);
        let mut network = Network {
            membership,
            guard,
            consensus,
            sync: sync_io::SyncIo::new(sync_events),
            model: model_io::ModelIo::new(served_model),
            metrics,
            topic_prefix: topic_prefix(&settings.config.node.network),
            swarm,
            settings,
            local_node: key.node_id(),
            key,
            peer_book,
            router,
            counters: ChannelCounters::default(),
            totals: MessageCounters::default(),
            commands: rx,
            started: Instant::now(),
            listening: Listening {
                addrs: Vec::new(),
                pending: HashSet::new(),
                on_ready: Some(listening_tx),
            },
            links: connections::Links {
                table: PeerTable::default(),
                dialer,
                trials: HashMap::new(),
                closing_duplicates: Vec::new(),
                deaf_peers: HashMap::new(),
                unwanted: HashSet::new(),
                rejoin: Backoff::new(REJOIN_MAX_DELAY, Instant::now()),
                discovery,
            },
            last_prune: Instant::now(),
            peer_manager,
            validation: validation::ValidationPool::start(),
            nat,
        };
        for addr in network.settings.listen_addrs.clone() {
            let id = network
                .swarm
                .listen_on(addr.clone())
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            network.listening.pending.insert(id);
        }
        for addr in network.settings.external_addrs.clone() {
            network.swarm.add_external_address(addr);
        }
        let topic = network.consensus.topic().clone();
        network
            .swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| anyhow::anyhow!("cannot join the consensus topic: {e}"))?;
        network.apply_stored_bans();
        network.add_initial_peers();
        Ok((network, NetworkHandle { commands: tx }, listening_rx))
    }

    /// Bootstrap peers from the configuration, then every peer remembered
    /// from earlier runs.
    fn add_initial_peers(&mut self) {
        for b in self.settings.bootstrap_peers.clone() {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&b.peer_id, b.addr);
        }
        match self.peer_book.all() {
            Ok(KnownPeers {
                peers: known,
                damaged,
            }) => {
                for e in damaged {
                    tracing::warn!(error = %e, "skipping a damaged known-peer record");
                }
                for (node, peer) in known {
                    let Ok(peer_id) = crate::identity::peer_id_of(&node) else {
                        continue;
                    };
                    for addr in peer
                        .addrs
                        .iter()
                        .filter_map(|a| a.parse::<Multiaddr>().ok())
                    {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read known peers"),
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(checked) = self.validation.results.recv() => self.on_checked(checked),
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if self.on_commands(command).is_break() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.maintain(),
            }
        }
        self.close_connections().await;
        tracing::info!("network task stopped");
    }

    /// Closes every connection and waits (up to a second) until they are
    /// closed, so that peers learn at once that this node left: a relay
    /// frees its slot and circuits, instead of holding them until an idle
    /// timeout (a QUIC connection dropped with the process says nothing).
    async fn close_connections(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                _ = self.swarm.select_next_some() => {}
                _ = &mut deadline => break,
            }
        }
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        for family in self.router.collect_unused() {
            let topic = topic_for(&self.settings.config.node.network, &family);
            self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
        }
        self.dial_due(now);
        self.close_due_duplicates(now);
        self.maintain_nat(now);
        self.reconnect_peers_missing_subscriptions(now);
        self.maintain_consensus();
        self.expire_handshakes();
        self.expire_bans();
        self.manage_peers(now);
        if self.links.table.is_empty() {
            if self.links.rejoin.is_due(now) {
                self.rejoin_mesh();
                self.links.rejoin.schedule_next(now);
            }
        } else if self.links.discovery.is_due(now) {
            // Peers that joined after our last lookup are only found by
            // looking again; the schedule restarts whenever one appears.
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            self.links.discovery.schedule_next(now);
        }
        if now.duration_since(self.last_prune) > Duration::from_secs(600) {
            self.last_prune = now;
            if let Err(e) = self
                .peer_book
                .prune(self.settings.config.network.max_known_peers.get())
            {
                tracing::warn!(error = %e, "cannot prune known peers");
            }
        }
    }

    /// With no connection at all: dial bootstrap and known peers again and
    /// restart the Kademlia bootstrap (its own periodic one is too slow).
    fn rejoin_mesh(&mut self) {
        self.add_initial_peers();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let mut candidates = Vec::new();
        for bucket in kad.kbuckets() {
            for entry in bucket.iter() {
                candidates.push((
                    *entry.node.key.preimage(),
                    entry.node.value.iter().cloned().collect::<Vec<_>>(),
                ));
            }
        }
        if candidates.is_empty() {
            return;
        }
        tracing::debug!(
            peers = candidates.len(),
            "no connections; dialling known peers"
        );
        for (peer, addrs) in candidates {
            self.dial(peer, addrs);
        }
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                self.announce_if_public(&address);
                self.listening.addrs.push(address);
                self.listening.pending.remove(&listener_id);
                if self.listening.pending.is_empty() {
                    if let Some(tx) = self.listening.on_ready.take() {
                        let _ = tx.send(self.listening.addrs.clone());
                    }
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listening.addrs.retain(|a| *a != address);
                if self.settings.config.nat.reachability == crate::config::ReachabilityMode::Public
                {
                    self.swarm.remove_external_address(&address);
                }
                for mapped in self.nat.listen_addr_gone(&address) {
                    tracing::info!(%mapped, "UPnP mapping removed with its listen address");
                    self.swarm.remove_external_address(&mapped);
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                self.external_addrs_changed(&address, true)
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                self.external_addrs_changed(&address, false)
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let reason = match reason {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                };
                self.on_listener_closed(listener_id, &reason);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                concurrent_dial_errors,
                ..
            } => {
                let failed = concurrent_dial_errors
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(addr, _)| addr)
                    .collect();
                self.on_connection_established(peer_id, connection_id, &endpoint, failed);
                // Any connection of a peer in neither state, not only its
                // first: a second one may come up while a turned-away
                // first one is still closing.
                if self.swarm.is_connected(&peer_id)
                    && !self.membership.is_admitted(&peer_id)
                    && !self.membership.is_pending(&peer_id)
                {
                    self.membership_connected(peer_id, endpoint.is_dialer());
                }
                // Consensus samples from connected peers: tell it at once.
                self.maintain_consensus();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, cause = ?cause, "connection closed");
                self.on_connection_closed(peer_id, connection_id, num_established);
                if num_established == 0 {
                    let remote = (!endpoint.is_dialer())
                        .then(|| peer_manager::addrs::ip_of(endpoint.get_remote_address()))
                        .flatten();
                    self.membership_disconnected(&peer_id, remote);
                    self.nat.peer_gone(&peer_id);
                }
                self.maintain_consensus();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                connection_id,
                error,
            } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                self.on_dial_error(peer_id, connection_id, &error);
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match &event {
            BehaviourEvent::Gossipsub(e) => self.metrics.libp2p.record(e),
            BehaviourEvent::Identify(e) => self.metrics.libp2p.record(e),
            BehaviourEvent::Kad(e) => self.metrics.libp2p.record(e),
            BehaviourEvent::Ping(e) => self.metrics.libp2p.record(e),
            _ => {}
        }
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => self.on_identified(peer_id, connection_id, info),
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                is_new_peer: true,
                ..
            }) => {
                self.links.discovery.restart(Instant::now());
                if !self.swarm.is_connected(&peer)
                    && self.links.table.len() < self.settings.config.peers.target_peers.get()
                {
                    self.dial(peer, addresses.into_vec());
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(rtt) => self.links.table.ping_ok(&peer, rtt),
                Err(error) => {
                    let failures = self.links.table.ping_failed(&peer);
                    tracing::debug!(%peer, %error, failures, "ping failed");
                    if failures >= self.settings.config.network.ping_max_failures.get() {
                        tracing::info!(%peer, failures, "peer stopped answering pings; closing the connection");
                        self.swarm.close_connection(connection);
                    }
                }
            },
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Consensus(event) => self.on_consensus_event(event),
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Membership(event) => self.on_membership_event(event),
            BehaviourEvent::Model(event) => self.on_model_event(event),
            BehaviourEvent::Autonat(event) => self.on_autonat(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client(event),
            BehaviourEvent::Relay(event) => self.nat.on_relay_service(&event),
            BehaviourEvent::Dcutr(event) => self.on_hole_punch(event),
            BehaviourEvent::Upnp(event) => {
                match &event {
                    libp2p::upnp::Event::GatewayNotFound => {
                        tracing::warn!("UPnP: no gateway answered; no port is mapped")
                    }
                    libp2p::upnp::Event::NonRoutableGateway => {
                        tracing::warn!("UPnP: the gateway is itself behind NAT; no port is mapped")
                    }
                    _ => tracing::info!(?event, "UPnP"),
                }
                self.nat.on_upnp(&event);
            }
            _ => {}
        }
    }

    fn on_identified(
        &mut self,
        peer: PeerId,
        connection: libp2p::swarm::ConnectionId,
        info: identify::Info,
    ) {
        if !self.membership.is_admitted(&peer) && !self.membership.is_pending(&peer) {
            // Refused (or banned) while its identify was on the way.
            return;
        }
        let ours = behaviour::identify_protocol_version(&self.settings.config.node.network);
        if info.protocol_version != ours {
            tracing::info!(%peer, theirs = %info.protocol_version, %ours, "peer belongs to another network; disconnecting");
            self.mark_unwanted(peer);
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        // Only addresses that make sense from where the peer was seen:
        // none pointing a remote peer's audience at this host, a link, or
        // a private network the peer is not on.
        let seen_at = self.links.table.remote_ip(&peer);
        let private = &self.settings.private_nets;
        let mut addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(|a| peer_manager::addrs::is_routable_from(a, seen_at, private))
            .collect();
        addrs.sort_by_key(|a| !is_quic(a));
        addrs.truncate(16);
        if self
            .links
            .table
            .identified(&peer, info.agent_version, addrs.clone())
        {
            // Its old connections are dead, and gossipsub sent this node's
            // subscriptions on them only: start over with the new process.
            tracing::info!(%peer, "peer restarted; reconnecting to it from scratch");
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        // The same process on a newer connection: the older ones of its
        // transport are redundant (see `PeerTable::superseded`), unless the
        // peer is a relay this node holds a slot on (the slot lives on the
        // connection it was reserved over).
        let due = Instant::now() + DUPLICATE_CLOSE_DELAY;
        let superseded = if self.nat.holds_slot_on(&peer) {
            Vec::new()
        } else {
            self.links.table.superseded(&peer, connection)
        };
        for old in superseded {
            if !self.links.closing_duplicates.iter().any(|(_, c)| *c == old) {
                tracing::debug!(%peer, connection = ?old, "closing a connection superseded by a newer one");
                self.links.closing_duplicates.push((due, old));
            }
        }
        let kad_protocol = behaviour::kad_protocol(&self.settings.config.node.network);
        let identified = membership::Identified {
            addrs,
            seen_at,
            via_relay: self.links.table.is_relayed(&peer, connection),
            serves_kad: info.protocols.contains(&kad_protocol),
            serves_relay: info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME),
            sees_us_at: peer_manager::addrs::ip_of(&info.observed_addr),
        };
        if self.membership.is_admitted(&peer) {
            self.route_to(peer, identified);
        } else {
            // Not a member yet: its addresses reach no routing table and no
            // peer book until it proves membership.
            self.membership.hold_identified(&peer, identified);
        }
    }

    /// Puts an admitted peer's addresses into Kademlia and the peer book.
    fn route_to(&mut self, peer: PeerId, identified: membership::Identified) {
        let membership::Identified {
            addrs,
            seen_at,
            serves_kad,
            serves_relay,
            sees_us_at,
            via_relay,
        } = identified;
        self.nat.relay_seen(peer, serves_relay, via_relay, &addrs);
        // Only a peer this node chose (dialled) may say where it sees it:
        // in open mode every peer is a member, strangers included.
        if let Some(ip) = sees_us_at.filter(|_| self.links.table.dialled(&peer)) {
            self.swarm.behaviour_mut().autonat.vouch(ip);
        }
        // Redials and QUIC trials use these (a stranger's are never kept).
        let table = &self.links.table;
        self.links
            .dialer
            .remember_addrs(peer, &addrs, seen_at, |relay| table.remote_ip(relay));
        let quic_allowed = self.links.dialer.allows_quic(peer, Instant::now());
        if serves_kad {
            // While the breaker is open, Kademlia must not dial the peer's
            // QUIC either (QUIC to its relay is another matter).
            for addr in addrs
                .iter()
                .filter(|a| quic_allowed || !is_quic(a) || nat::is_relayed(a))
            {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
        }
        // Remembered for rejoining after a restart: what it announces, and
        // where this node reached it itself. Peers announce only confirmed
        // addresses (a bootstrap host without `external_addresses` may
        // announce none), so an announcement with nothing usable never
        // replaces a record that has something.
        let mut remembered = addrs.clone();
        for dialled in self.links.table.dialled_addrs(&peer) {
            if !remembered.contains(&dialled) {
                remembered.push(dialled);
            }
        }
        remembered.truncate(16);
        if let (Some(node), false) = (node_id_of(&peer), remembered.is_empty()) {
            let record = KnownPeer {
                addrs: remembered.iter().map(|a| a.to_string()).collect(),
                last_seen_ms: now_ms(),
            };
            if let Err(e) = self.peer_book.put(&node, &record) {
                tracing::warn!(%peer, error = %e, "cannot remember peer");
            }
        }
    }

    fn persist_connected_peers(&mut self) {
        for info in self.links.table.info() {
            let (Ok(peer), false) = (info.peer_id.parse::<PeerId>(), info.listen_addrs.is_empty())
            else {
                continue;
            };
            // A peer still proving membership is remembered by no one.
            if !self.membership.is_admitted(&peer) {
                continue;
            }
            if let Some(node) = node_id_of(&peer) {
                let record = KnownPeer {
                    addrs: info.listen_addrs,
                    last_seen_ms: now_ms(),
                };
                if let Err(e) = self.peer_book.put(&node, &record) {
                    tracing::warn!(%peer, error = %e, "cannot remember peer at shutdown");
                }
            }
        }
    }

    /// Handles `first` and whatever else is already queued (up to a bound,
    /// so the swarm is polled again soon). Consecutive publishes are handled
    /// together so they can share gossip frames. Breaks on shutdown.
    fn on_commands(&mut self, first: Command) -> ControlFlow<()> {
        let mut publishes = Vec::new();
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(command) = next.take() {
            handled += 1;
            match command {
                Command::Publish(request) => publishes.push(request),
                Command::PublishMany(requests) => publishes.extend(requests),
                other => {
                    self.publish_all(std::mem::take(&mut publishes));
                    let shutdown = matches!(other, Command::Shutdown(_));
                    self.on_command(other);
                    if shutdown {
                        return ControlFlow::Break(());
                    }
                }
            }
            if handled < MAX_COMMAND_BURST {
                next = self.commands.try_recv().ok();
            }
        }
        self.publish_all(publishes);
        ControlFlow::Continue(())
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish(request) => self.publish_all(vec![request]),
            Command::PublishMany(requests) => self.publish_all(requests),
            Command::Subscribe { pattern, reply } => {
                let (subscription, is_new) = self.router.subscribe(pattern);
                if is_new {
                    let topic = topic_for(
                        &self.settings.config.node.network,
                        subscription.pattern.family(),
                    );
                    let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                    // Standard families are scored from the start; others
                    // from when this node joins them.
                    let _ = gossipsub.set_topic_params(topic.clone(), behaviour::topic_scoring());
                    if let Err(e) = gossipsub.subscribe(&topic) {
                        tracing::warn!(%topic, error = %e, "cannot join topic");
                    }
                }
                let _ = reply.send(subscription);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peers());
            }
            Command::Channels(reply) => {
                let _ = reply.send(self.channels());
            }
            Command::Shutdown(reply) => {
                self.persist_connected_peers();
                let _ = reply.send(());
            }
            Command::Consensus(command) => self.on_consensus_command(command),
            Command::Sync(command) => self.on_sync_command(command),
            Command::FetchModel(fetch) => self.on_model_fetch(fetch),
        }
    }

    /// Members subscribed to `topic`: a peer still proving membership gets
    /// nothing, so it is not counted as a receiver.
    fn remote_subscribers(&self, topic: &gossipsub::TopicHash) -> usize {
        self.swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(peer, topics)| topics.contains(&topic) && self.membership.is_admitted(peer))
            .count()
    }

    fn peers(&mut self) -> Vec<PeerInfo> {
        let now = Instant::now();
        let mut peers = self.links.table.info();
        for info in &mut peers {
            if let Ok(peer) = info.peer_id.parse::<PeerId>() {
                let (state, failures, successes) = self.links.dialer.breaker_state(peer, now);
                info.breaker = state.name().to_string();
                info.quic_failures = failures;
                info.quic_successes = successes;
            }
        }
        peers
    }

    fn status(&mut self) -> Status {
        let kad_peers = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|bucket| bucket.num_entries())
            .sum();
        Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            node_id: self.local_node.to_string(),
            network: self.settings.config.node.network.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            listen_addrs: self.listening.addrs.iter().map(|a| a.to_string()).collect(),
            external_addrs: self
                .swarm
                .external_addresses()
                .map(|a| a.to_string())
                .collect(),
            connected_peers: self.links.table.len(),
            known_peers: self.peer_book.len(),
            routing_table_peers: kad_peers,
            quic: self.settings.config.network.quic,
            tcp: self.settings.config.network.tcp,
            messages: self.totals.clone(),
            consensus_events_dropped: self.consensus.dropped_events,
            security: self.security_status(),
            nat: self.nat_status(),
        }
    }

    /// Families this node subscribes to, and families only its peers
    /// subscribe to (so a publisher can see who would receive a message).
    fn channels(&self) -> Channels {
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let mut families: HashSet<String> = self.router.families().map(str::to_string).collect();
        for (_, topics) in gossipsub.all_peers() {
            families.extend(topics.iter().filter_map(|t| self.family_of_topic(t)));
        }
        let mut subscribed: Vec<ChannelFamilyInfo> = families
            .into_iter()
            .map(|family| {
                let topic = topic_for(&self.settings.config.node.network, &family).hash();
                ChannelFamilyInfo {
                    local_subscribers: self.router.local_subscribers(&family),
                    remote_subscribers: self.remote_subscribers(&topic),
                    mesh_peers: gossipsub.mesh_peers(&topic).count(),
                    topic: topic.to_string(),
                    family,
                }
            })
            .collect();
        subscribed.sort_by(|a, b| a.family.cmp(&b.family));
        Channels {
            subscribed,
            counters: self.counters.info(),
        }
    }
}
