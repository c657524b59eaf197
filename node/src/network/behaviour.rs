//! The libp2p behaviour and transports of a node.

use crate::config::Settings;
use crate::network::cbor_codec::{
    protocol_name, CborCodec, ConsensusMessages, MembershipMessages, Messages, ModelMessages,
    SyncMessages,
};
use crate::network::consensus_io::consensus_topic;
use crate::network::peer_manager::gate::{Gate, GateLimits};
use agentmesh_protocol::{frame::max_frame_bytes, sha256};
use anyhow::{Context, Result};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::transport::{Boxed, OptionalTransport};
use libp2p::core::upgrade;
use libp2p::futures::future::Either;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair,
    kad, noise, ping, quic, relay, request_response, tcp, upnp, yamux, PeerId, StreamProtocol,
    Swarm, Transport,
};
use std::hash::{BuildHasher, Hasher};
use std::num::{NonZeroU32, NonZeroU8};
use std::time::Duration;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Banned peers: their connections are refused before anything else
    /// sees them.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// The peer manager's limits: inbound/outbound split, per address.
    pub gate: Gate,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: Gossipsub,
    pub consensus: request_response::Behaviour<CborCodec<ConsensusMessages>>,
    pub sync: request_response::Behaviour<CborCodec<SyncMessages>>,
    pub membership: request_response::Behaviour<CborCodec<MembershipMessages>>,
    pub model: request_response::Behaviour<CborCodec<ModelMessages>>,
    /// Circuit relay v2 service, offered while this node is publicly
    /// reachable (see `network::nat`).
    pub relay: Toggle<super::relay_service::RelayService>,
    /// Reservations on relays, and connections through them.
    pub relay_client: relay::client::Behaviour,
    /// Hole punching: upgrades relayed connections to direct ones.
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// Asks peers to dial back the addresses they see this node at.
    pub autonat: super::autonat_probe::Probe,
    /// Dials back the addresses peers ask about.
    pub autonat_server: autonat::v2::server::Behaviour,
    /// Port mapping on the local gateway (off unless `nat.upnp`).
    pub upnp: Toggle<upnp::tokio::Behaviour>,
}

/// Identify's protocol version doubles as the network check: peers that
/// announce another network are disconnected.
pub fn identify_protocol_version(network: &str) -> String {
    format!("/agentmesh/{network}/1.0.0")
}

/// The application score of a peer whose membership handshake is under
/// way (authority mode): below the publish and gossip thresholds, above
/// the graylist one (its subscriptions are still recorded).
pub const PENDING_PEER_SCORE: f64 = -100.0;

/// The gossipsub behaviour with the node's subscription filter.
pub type Gossipsub = gossipsub::Behaviour<
    gossipsub::IdentityTransform,
    gossipsub::MaxCountSubscriptionFilter<NetworkTopics>,
>;

/// Most topics one peer may be subscribed to (channel families and the
/// vertex topic). gossipsub drops a whole subscription message that would
/// take a peer past it, so it is far above what a node joins: its own
/// families are those its event streams (at most 64, see the API) and its
/// services subscribe to.
pub const MAX_TOPICS_PER_PEER: usize = 1024;

/// Accepts subscriptions to this network's topics only: a peer's
/// subscriptions to anything else are never recorded (no memory, no mesh).
pub struct NetworkTopics {
    prefix: String,
}

impl gossipsub::TopicSubscriptionFilter for NetworkTopics {
    fn can_subscribe(&mut self, topic: &gossipsub::TopicHash) -> bool {
        topic.as_str().starts_with(&self.prefix)
    }
}

/// Every topic of `network` (channel families and vertices) starts with this.
pub fn network_topic_prefix(network: &str) -> String {
    format!("/agentmesh/{network}/")
}

/// Channel families whose gossip size limit is known up front (per-topic
/// limits are fixed when gossipsub is built); any other family is held to
/// the same limit by the node's own frame check.
pub const STANDARD_FAMILIES: [&str; 7] = [
    "coordination",
    "agent",
    "task",
    "metrics",
    "learning",
    "chat",
    "patterns",
];

/// Scores a peer earns or loses on a topic: a little for time in the mesh
/// and for delivering messages first, a lot (squared) for invalid
/// messages — those the node rejects (malformed, badly signed, outside
/// the author's scopes), never those it merely ignores (stale, over an
/// author's rate), so honest relays are not charged. Message-delivery
/// deficits are not scored: a quiet channel is not a sign of misbehaviour.
pub fn topic_scoring() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 0.1,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -1.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    }
}

/// gossipsub peer scoring: fencing (the application score) and topic
/// scores (see [`topic_scoring`]). Behaviour penalties start only past a
/// few broken promises and slow-peer penalties are off, so an honest peer
/// under load keeps a score of at least 0.
///
/// IP colocation is off. gossipsub counts every peer of an address,
/// pending strangers included, and keeps counting those that left with a
/// score of 0 or less for `retain_score`: an attacker behind the members'
/// NAT could cycle throwaway ids through it and push the members out of
/// the mesh. Per-address limits are the peer manager's job (its gate counts
/// live connections only, and strikes count distinct identities).
///
/// Scores of peers that left are kept a minute (not gossipsub's hour): a
/// stranger's throwaway ids cost little memory.
fn peer_scoring(
    settings: &Settings,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topics = [consensus_topic(&settings.config.node.network).hash()]
        .into_iter()
        .chain(
            STANDARD_FAMILIES
                .iter()
                .map(|f| super::topic_for(&settings.config.node.network, f).hash()),
        )
        .map(|t| (t, topic_scoring()))
        .collect();
    let params = gossipsub::PeerScoreParams {
        topics,
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: -1.0,
        behaviour_penalty_threshold: 6.0,
        slow_peer_weight: 0.0,
        retain_score: Duration::from_secs(60),
        ..Default::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -1_000.0,
        ..Default::default()
    };
    (params, thresholds)
}

pub fn kad_protocol(network: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/agentmesh/{network}/kad/1.0.0"))
        .expect("network names are validated to printable ASCII without spaces")
}

/// Bytes gossipsub must accept for the largest frame: the frame limit plus
/// gossipsub's own framing (signature, key, seqno, topic).
pub fn gossip_transmit_limit(max_message_bytes: usize) -> usize {
    max_frame_bytes(max_message_bytes) + 1024
}

pub fn gossipsub_config(settings: &Settings) -> Result<gossipsub::Config> {
    let mut builder = gossipsub::ConfigBuilder::default();
    builder
        // Frames carry their author's signature themselves (see
        // agentmesh_protocol::frame), checked once per distinct frame after
        // gossipsub has dropped duplicates. Gossipsub's own signing would
        // verify every duplicate copy as it arrives.
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        // Nothing is forwarded until the node has validated the envelope.
        .validate_messages()
        // Content-addressed ids: the same bytes are the same message,
        // whichever way they arrive.
        .message_id_fn(|m| gossipsub::MessageId::from(sha256(&m.data).to_vec()))
        // Vertices travel on gossip too: the largest message any topic
        // takes, and what gossipsub reads off the wire before it knows the
        // topic.
        .max_transmit_size(
            gossip_transmit_limit(settings.config.network.max_message_bytes)
                .max(agentmesh_protocol::vertex::MAX_VERTEX_BYTES + 1024),
        )
        .heartbeat_interval(settings.config.network.gossip_heartbeat_ms.duration());
    // Channel messages are far smaller than vertices: a larger one is
    // refused as it is decoded, and counts as an invalid message.
    for family in STANDARD_FAMILIES {
        builder.max_transmit_size_for_topic(
            gossip_transmit_limit(settings.config.network.max_message_bytes),
            super::topic_for(&settings.config.node.network, family).hash(),
        );
    }
    builder.build().context("invalid gossipsub configuration")
}

type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// QUIC and/or TCP (Noise + yamux), as enabled.
fn base_transport(keypair: &Keypair, settings: &Settings) -> Result<BoxedTransport> {
    let tcp = if settings.config.network.tcp {
        // The connection attempt alone gets its own limit; the one below
        // covers it and the upgrade (Noise, yamux) together.
        let t = TransportTimeout::with_outgoing_timeout(
            tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)),
            settings.config.network.tcp_connect_timeout_ms.duration(),
        )
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(keypair).context("noise configuration")?)
        .multiplex(yamux::Config::default())
        .timeout(crate::config::TCP_SETUP_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
        OptionalTransport::some(t)
    } else {
        OptionalTransport::none()
    };
    let quic = if settings.config.network.quic {
        let mut config = quic::Config::new(keypair);
        // An unanswered QUIC dial gives way to the next address (TCP) after this.
        config.handshake_timeout = settings.config.network.quic_dial_timeout_ms.duration();
        let t = quic::tokio::Transport::new(config)
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
        OptionalTransport::some(t)
    } else {
        OptionalTransport::none()
    };
    // Which one is dialled first is decided by the order of the addresses
    // the node dials (QUIC first), not by this composition.
    Ok(quic
        .or_transport(tcp)
        .map(|either, _| match either {
            Either::Left(out) | Either::Right(out) => out,
        })
        .boxed())
}

fn direct_transport(keypair: &Keypair, settings: &Settings) -> Result<BoxedTransport> {
    // DNS lets operators write /dns4/host/tcp/4001 addresses.
    match libp2p::dns::tokio::Transport::system(base_transport(keypair, settings)?) {
        Ok(dns) => Ok(dns.boxed()),
        Err(e) => {
            tracing::warn!(error = %e, "no usable system DNS configuration; /dns addresses will not resolve");
            base_transport(keypair, settings)
        }
    }
}

/// Direct connections, and connections through a relay (`/p2p-circuit`
/// addresses), which are encrypted end to end with Noise like TCP: the
/// relay only forwards bytes it cannot read.
fn build_transport(
    keypair: &Keypair,
    settings: &Settings,
    relayed: relay::client::Transport,
) -> Result<BoxedTransport> {
    let relayed = relayed
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(keypair).context("noise configuration")?)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let all = relayed
        .or_transport(direct_transport(keypair, settings)?)
        .map(|either, _| match either {
            Either::Left(out) | Either::Right(out) => out,
        })
        .boxed();
    Ok(super::dial_filter::NoLocalDials::new(all, settings.exempt_nets.clone()).boxed())
}

/// The relay service's limits: every one from the `nat` section, so a
/// stranger can take at most what they allow.
fn relay_config(settings: &Settings) -> relay::Config {
    let nat = &settings.config.nat;
    relay::Config {
        max_reservations: nat.relay_max_reservations.get(),
        // libp2p-relay refuses only when a peer already holds *more* than
        // these (`count > max`), so each is one below the limit meant:
        // one slot per peer, `relay_max_circuits_per_peer` circuits.
        max_reservations_per_peer: 0,
        max_circuits: nat.relay_max_circuits.get(),
        max_circuits_per_peer: nat.relay_max_circuits_per_peer.get() - 1,
        max_circuit_duration: nat.relay_circuit_secs.duration(),
        max_circuit_bytes: nat.relay_circuit_bytes.get(),
        // Circuit rates of our own, below. libp2p's reservation rates (per
        // peer 30 at once then one every 2 min; per IP 60 then one a
        // minute) are kept: a node reserves once per relay.
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    }
    .circuit_src_per_peer(
        CIRCUIT_BURST_PER_PEER.saturating_mul(nonzero(nat.relay_max_circuits_per_peer.get())),
        CIRCUIT_REFILL_PER_PEER,
    )
    .circuit_src_per_ip(nonzero(nat.relay_max_circuits.get()), CIRCUIT_REFILL_PER_IP)
}

/// Circuits a peer may open in a burst, per circuit it may hold at once.
///
/// libp2p's default (30 circuits per source peer, then one every 2 minutes;
/// 60 per source IP, then one a minute) cut off a NATed node after it had
/// met about ten other NATed peers (`bench nat` found it): each meeting
/// takes a few circuits (both ends dial, hole punching retries), and every
/// circuit closes after `nat.relay_circuit_secs` and is opened again. Ours
/// let a node reach a mesh's worth of NATed peers at once, then keep a new
/// one every 10 s; a NAT that hides many hosts behind one IP gets a burst
/// of `relay_max_circuits` and one every 2 s. Each circuit is bounded in
/// bytes and time, so the rate bounds only setup work.
const CIRCUIT_BURST_PER_PEER: NonZeroU32 = NonZeroU32::new(4).unwrap();
const CIRCUIT_REFILL_PER_PEER: Duration = Duration::from_secs(10);
const CIRCUIT_REFILL_PER_IP: Duration = Duration::from_secs(2);

fn nonzero(n: usize) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

pub fn build_swarm(keypair: Keypair, settings: &Settings) -> Result<Swarm<Behaviour>> {
    let local_peer_id = keypair.public().to_peer_id();
    let (relayed, relay_client) = relay::client::new(local_peer_id);
    let transport = build_transport(&keypair, settings, relayed)?;

    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(settings.config.network.max_connections.get()))
            .with_max_established_per_peer(Some(
                settings.config.network.max_connections_per_peer.get(),
            ))
            .with_max_pending_incoming(Some(settings.config.network.max_pending_connections.get()))
            .with_max_pending_outgoing(Some(settings.config.network.max_pending_connections.get())),
    );
    let identify = identify::Behaviour::new(
        identify::Config::new(
            identify_protocol_version(&settings.config.node.network),
            keypair.public(),
        )
        // The run nonce tells peers this process apart from an earlier one
        // with the same identity (see `peers::run_of`).
        .with_agent_version(format!(
            "agentmesh/{} run/{:016x}",
            env!("CARGO_PKG_VERSION"),
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        ))
        .with_push_listen_addr_updates(true)
        // Announce only external addresses: configured, mapped by the
        // gateway, dialled back (AutoNAT), relayed, or every listen address
        // when the operator says the node is public. A host behind NAT
        // would otherwise hand its private addresses to the whole mesh.
        .with_hide_listen_addrs(true),
    );
    let ping = ping::Behaviour::new(
        ping::Config::new()
            .with_interval(settings.config.network.ping_interval_secs.duration())
            .with_timeout(settings.config.network.ping_timeout_secs.duration()),
    );

    let kad = kademlia(local_peer_id, &settings.config.node.network);

    let gossipsub = gossipsub_behaviour(settings)?;

    let network = &settings.config.node.network;
    let query_timeout = Duration::from_millis(settings.consensus_params.query_timeout_max_ms);
    let consensus = requests::<ConsensusMessages>(network, query_timeout, 1024);
    // Anti-entropy requests walk a hash tree and move batches of patterns;
    // a peer busy writing a large batch may take a while to answer.
    let sync = requests::<SyncMessages>(network, Duration::from_secs(30), 64);
    let handshake_timeout = settings.config.membership.membership_timeout_ms.duration();
    // libp2p's default stream count: a handshake is one request a peer.
    let membership = requests::<MembershipMessages>(network, handshake_timeout, 100);
    // A chunk is 4 MiB: generous time for a loaded peer to send it.
    let model = requests::<ModelMessages>(network, Duration::from_secs(60), 16);

    let peers = &settings.config.peers;
    let gate = Gate::new(GateLimits {
        max_peers: peers.max_peers(),
        max_inbound: peers.max_inbound(),
        max_per_ip: peers.max_peers_per_ip.get(),
        max_per_subnet: peers.max_peers_per_subnet,
        exempt: settings.exempt_nets.clone(),
    });
    let behaviour = Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        gate,
        limits,
        identify,
        ping,
        kad,
        gossipsub,
        consensus,
        sync,
        membership,
        model,
        relay: Toggle::from(settings.config.nat.relay_service.then(|| {
            super::relay_service::RelayService::new(local_peer_id, relay_config(settings))
        })),
        relay_client,
        dcutr: Toggle::from(
            settings
                .config
                .nat
                .hole_punching
                .then(|| dcutr::Behaviour::new(local_peer_id)),
        ),
        autonat: super::autonat_probe::Probe::default(),
        autonat_server: autonat::v2::server::Behaviour::default(),
        upnp: Toggle::from(
            settings
                .config
                .nat
                .upnp
                .then(upnp::tokio::Behaviour::default),
        ),
    };
    let config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(
            settings
                .config
                .network
                .idle_connection_timeout_secs
                .duration(),
        )
        // One address at a time, in the order given: QUIC before TCP.
        .with_dial_concurrency_factor(NonZeroU8::MIN);
    Ok(Swarm::new(transport, behaviour, local_peer_id, config))
}

/// Kademlia for discovery only: no records, and a routing table the node
/// fills itself.
fn kademlia(local_peer_id: PeerId, network: &str) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut kad_config = kad::Config::new(kad_protocol(network));
    // The node schedules bootstraps itself (network::maintain): often while
    // the mesh changes, every `bootstrap_interval` once it is stable.
    kad_config.set_periodic_bootstrap_interval(None);
    // The node keeps no records: a PUT or ADD_PROVIDER from a peer becomes
    // an event that is dropped, never a stored record.
    kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
    // Peers enter the routing table only when the node puts them there:
    // bootstrap peers, and peers once admitted (network::route_to). A
    // connection alone (a non-member's, or one a query made) adds nothing.
    kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
    let mut kad = kad::Behaviour::with_config(
        local_peer_id,
        kad::store::MemoryStore::new(local_peer_id),
        kad_config,
    );
    // Without this kad waits for a confirmed external address before serving
    // queries, and a fresh mesh on private addresses would never have one.
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// Gossipsub with this network's topics only, and peer scoring.
fn gossipsub_behaviour(settings: &Settings) -> Result<Gossipsub> {
    let topics = gossipsub::MaxCountSubscriptionFilter {
        filter: NetworkTopics {
            prefix: network_topic_prefix(&settings.config.node.network),
        },
        max_subscribed_topics: MAX_TOPICS_PER_PEER,
        max_subscriptions_per_request: MAX_TOPICS_PER_PEER,
    };
    let mut gossipsub = Gossipsub::new_with_subscription_filter(
        gossipsub::MessageAuthenticity::Anonymous,
        gossipsub_config(settings)?,
        topics,
    )
    .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    let (params, thresholds) = peer_scoring(settings);
    gossipsub
        .with_peer_score(params, thresholds)
        .map_err(|e| anyhow::anyhow!("gossipsub peer scoring: {e}"))?;
    Ok(gossipsub)
}

/// A request-response protocol of the node's, CBOR-encoded, with its
/// answer deadline and most streams at once.
fn requests<M: Messages>(
    network: &str,
    timeout: Duration,
    max_streams: usize,
) -> request_response::Behaviour<CborCodec<M>> {
    request_response::Behaviour::with_codec(
        CborCodec::default(),
        [(
            protocol_name::<M>(network),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(max_streams),
    )
}
