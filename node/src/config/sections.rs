//! Every setting of the node, declared once, grouped by `[section]` of the
//! configuration file. `agentmesh config reference` prints them (the
//! generated docs/configuration-reference.md) with defaults, flags and
//! environment variables.

use super::section::{config_section, Millis, Secs};
use agentmesh_consensus::Params;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;

const fn nz32(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("zero default"),
    }
}

const fn nzu(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("zero default"),
    }
}

/// How the node writes its log.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

config_section! {
    /// The node itself: which network, where its data lives, how it logs.
    NodeConfig / NodeFlags, "node", prefix {
        /// Network id: nodes only talk to nodes with the same id (1-64
        /// letters, digits, '-', '_' or '.').
        network: String = "agentmesh".into(),
        /// Directory for the identity key, the database (`db/`), the API
        /// token and `node.json` (the running node's addresses).
        data_dir: PathBuf = PathBuf::from("agentmesh-data"),
        /// `human` or `json` (filter with `RUST_LOG`).
        log_format: LogFormat = LogFormat::Human,
    }
}

config_section! {
    /// Transports, addresses and connections.
    NetworkConfig / NetworkFlags, "network", prefix {
        /// Multiaddrs to listen on (QUIC and TCP); a disabled transport's
        /// addresses are skipped.
        #[arg(value_delimiter = ',')]
        listen: Vec<String> = vec![
            "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            "/ip4/0.0.0.0/tcp/4001".into(),
        ],
        /// Addresses other hosts should dial this node on (announced to
        /// peers through identify, beside addresses confirmed by a
        /// dial-back; listen addresses themselves are not announced).
        #[arg(value_delimiter = ',', long = "external-address", env = "AGENTMESH_EXTERNAL_ADDRESS")]
        external_addresses: Vec<String> = Vec::new(),
        /// Peers to join through, as full multiaddrs ending in `/p2p/<peer id>`.
        #[arg(value_delimiter = ',')]
        bootstrap: Vec<String> = Vec::new(),
        /// Use the QUIC transport (`--quic false` to disable).
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        quic: bool = true,
        /// Use the TCP transport (`--tcp false` to disable).
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        tcp: bool = true,
        /// Largest message body accepted from agents and peers, in bytes
        /// (at most 16 MiB).
        max_message_bytes: usize = 256 * 1024,
        /// Most established connections in total (at least
        /// `peers.target_peers + peers.peer_excess`).
        max_connections: NonZeroU32 = nz32(256),
        /// Most established connections to one peer. Hole punching needs
        /// three: a peer behind NAT may be reached through two relayed
        /// connections at once (both ends dialled, or a retry), and the
        /// direct one is a third; with less, its dial is refused here.
        max_connections_per_peer: NonZeroU32 = nz32(3),
        /// Most connections being set up at once (each direction).
        max_pending_connections: NonZeroU32 = nz32(64),
        /// Peers remembered on disk for rejoining after a restart (the most
        /// recently seen are kept).
        max_known_peers: NonZeroUsize = nzu(1000),
        /// Seconds between keep-alive pings.
        ping_interval_secs: Secs = Secs::new(30),
        /// A ping unanswered this many seconds counts as failed.
        ping_timeout_secs: Secs = Secs::new(10),
        /// Consecutive ping failures after which a connection is closed.
        ping_max_failures: NonZeroU32 = nz32(3),
        /// A QUIC dial not answered within this many milliseconds fails,
        /// and TCP is tried.
        quic_dial_timeout_ms: Millis = Millis::new(1500),
        /// A TCP connection not set up within this many milliseconds fails
        /// (a NAT or firewall that drops connection attempts answers
        /// nothing). Below AutoNAT's 10 s, so that a dial-back through a
        /// NAT fails in time to tell the node it is not reachable.
        tcp_connect_timeout_ms: Millis = Millis::new(5000),
        /// Seconds a peer's circuit breaker stays open (TCP only) before
        /// QUIC is tried again.
        breaker_cooldown_secs: Secs = Secs::new(300),
        /// Longest wait in seconds between redials of a peer whose
        /// connection dropped (the backoff is 1 s, 2 s, 4 s ..., jittered).
        reconnect_max_delay_secs: Secs = Secs::new(60),
        /// Seconds an idle connection stays open (gossipsub keeps only its
        /// mesh links busy by itself).
        idle_connection_timeout_secs: Secs = Secs::new(3600),
        /// Seconds between periodic Kademlia bootstraps.
        bootstrap_interval_secs: Secs = Secs::new(300),
        /// Gossipsub heartbeat in milliseconds (at least 50).
        gossip_heartbeat_ms: Millis = Millis::new(500),
        /// Messages buffered per local channel family before slow
        /// subscribers miss some.
        subscriber_buffer: NonZeroUsize = nzu(4096),
    }
}

/// Whether other hosts can dial this node directly.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ReachabilityMode {
    /// Learned with AutoNAT: peers dial back the addresses they see this
    /// node at.
    Auto,
    /// Reachable at every listen address: announce them all, never
    /// reserve relay slots.
    Public,
    /// Behind NAT or a firewall: reserve relay slots at once.
    Private,
}

config_section! {
    /// Hosts behind NAT: reachability (AutoNAT), circuit relays and hole
    /// punching (DCUtR). How they work together: docs/nat.md.
    NatConfig / NatFlags, "nat", prefix nat_ {
        /// `auto` (learned from peers dialling back the addresses they see
        /// this node at), `public` (its listen addresses reach it; they are
        /// announced) or `private`.
        reachability: ReachabilityMode = ReachabilityMode::Auto,
        /// Relays to reserve a slot on while this node is not publicly
        /// reachable, as full multiaddrs ending in `/p2p/<peer id>`; members
        /// that offer relaying are used too.
        #[arg(value_delimiter = ',')]
        relays: Vec<String> = Vec::new(),
        /// Relay slots held at once while not publicly reachable (0: never
        /// use relays).
        max_relays: usize = 2,
        /// Offer circuit relay v2 to peers while this node is publicly
        /// reachable (`--nat-relay-service false` to disable).
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        relay_service: bool = true,
        /// As a relay: most slots reserved by other peers.
        relay_max_reservations: NonZeroUsize = nzu(64),
        /// As a relay: most circuits relayed at once.
        relay_max_circuits: NonZeroUsize = nzu(64),
        /// As a relay: most circuits of one peer at once.
        relay_max_circuits_per_peer: NonZeroUsize = nzu(8),
        /// As a relay: seconds a circuit lasts before it is closed (its ends
        /// reconnect, through a relay or directly).
        relay_circuit_secs: Secs = Secs::new(600),
        /// As a relay: bytes a circuit carries (both directions together)
        /// before it is closed.
        relay_circuit_bytes: NonZeroU64 = NonZeroU64::new(16 << 20).unwrap(),
        /// Upgrade connections made through a relay to direct ones by hole
        /// punching (DCUtR) (`--nat-hole-punching false` to disable).
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        hole_punching: bool = true,
        /// Ask the local gateway for a port mapping with UPnP IGD: the node
        /// is then public at the mapped address (docs/nat.md, UPnP).
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        upnp: bool = false,
    }
}

config_section! {
    /// The peer manager: how many peers, from where, and how much each may
    /// send before it is banned.
    PeersConfig / PeersFlags, "peers", prefix {
        /// Discovered peers are dialled while fewer than this many are
        /// connected.
        target_peers: NonZeroUsize = nzu(64),
        /// Inbound peers accepted beyond `target_peers`; every few seconds
        /// the worst of them are pruned back to the target.
        peer_excess: usize = 16,
        /// Of `target_peers + peer_excess` slots, how many only connections
        /// this node dials may use (strangers dialling in never take them).
        reserved_outbound_peers: usize = 16,
        /// Most inbound connections from one IP address.
        max_peers_per_ip: NonZeroUsize = nzu(8),
        /// Most inbound connections from one subnet (/24 for IPv4, /48 for
        /// IPv6); at least `max_peers_per_ip`.
        max_peers_per_subnet: usize = 32,
        /// Networks (CIDR) exempt from the per-address limits and from IP
        /// bans. Loopback by default: a local testnet runs every node on
        /// one address.
        #[arg(value_delimiter = ',')]
        peer_limits_exempt: Vec<String> = vec!["127.0.0.0/8".into(), "::1/128".into()],
        /// Private networks (CIDR) whose addresses are accepted from any
        /// peer; otherwise private addresses are accepted only from peers
        /// connected from a private network themselves.
        #[arg(value_delimiter = ',')]
        private_networks: Vec<String> = Vec::new(),
        /// Channel messages per second accepted from one author (bursts of
        /// twice this pass); more are dropped and count against the author.
        peer_message_rate: NonZeroU32 = nz32(50_000),
        /// Requests per second (consensus queries, sync, handshakes)
        /// answered for one peer (bursts of twice this pass).
        peer_request_rate: NonZeroU32 = nz32(5_000),
        /// Misbehaviour points after which a peer is banned. Malformed or
        /// unauthorised data costs 20 (so does misleading anti-entropy), a
        /// bad signature 50, each message or request over the rate 1; a
        /// peer recovers 1 point per second.
        ban_threshold: NonZeroU32 = nz32(100),
        /// Seconds a misbehaving peer stays banned (bans are kept on disk
        /// across restarts).
        ban_secs: Secs = Secs::new(3600),
    }
}

config_section! {
    /// Avalanche consensus: who votes and how polls decide. The checks that
    /// keep it safe are in docs/consensus.md.
    ConsensusConfig / ConsensusFlags, "consensus", prefix consensus_ {
        /// The validators, as peer ids with an optional weight
        /// (`12D3KooW...=3`; 1 without one). Only they are sampled and only
        /// their votes count. Empty: every peer seen in the last 24 hours
        /// votes with weight 1, which is for development only (not
        /// Sybil-resistant).
        #[arg(value_delimiter = ',', long = "validators", env = "AGENTMESH_VALIDATORS")]
        validators: Vec<String> = Vec::new(),
        /// Weighted draws of validators per poll, with replacement (1 to 64).
        k: usize = Params::default().k,
        /// Yes votes of `k` that make a poll successful (the value's
        /// preference strength grows); a majority of `k`.
        alpha_preference: usize = Params::default().alpha_preference,
        /// Yes votes of `k` that count towards acceptance (at least
        /// `alpha_preference`).
        alpha_confidence: usize = Params::default().alpha_confidence,
        /// Consecutive confident polls accepting an uncontested transaction
        /// (values outside the analysed safety region are refused; see
        /// docs/consensus.md).
        beta_virtuous: u32 = Params::default().beta_virtuous,
        /// Consecutive confident polls accepting a contested transaction (at
        /// least `beta_virtuous`).
        beta_rogue: u32 = Params::default().beta_rogue,
        /// Polls in flight at once.
        polls_in_flight: usize = Params::default().max_polls_in_flight,
        /// Vertex ids per query (at most 1024).
        batch_size: usize = Params::default().batch_size,
        /// Milliseconds before an unanswered query counts as a no vote,
        /// until the peer's round trips are measured (then they set it,
        /// between 250 and 10000).
        query_timeout_ms: u64 = Params::default().query_timeout_ms,
    }
}

config_section! {
    /// Shared patterns: replication by gossip and anti-entropy.
    PatternsConfig / PatternsFlags, "patterns", prefix patterns_ {
        /// Seconds between anti-entropy rounds with a random peer (a peer is
        /// also reconciled with whenever it connects).
        anti_entropy_secs: Secs = Secs::new(30),
        /// Seconds an anti-entropy round may run. A round cut short keeps
        /// what it merged and is retried; a peer that keeps a round going
        /// with entries it never delivers is charged for them.
        anti_entropy_round_secs: Secs = Secs::new(60),
        /// Local changes are gossiped in batches collected over this many
        /// milliseconds (or 100 changes, whichever comes first); at most
        /// 10000.
        gossip_delay_ms: Millis = Millis::new(20),
    }
}

config_section! {
    /// Membership: the network authority, this node's certificate, and what
    /// strangers may cost while they prove theirs.
    MembershipConfig / MembershipFlags, "membership", prefix {
        /// The network authority's public key (64 hex characters, printed by
        /// `agentmesh ca init`). Set, every peer must present a certificate
        /// it signed; unset, the node runs open to any peer.
        #[arg(num_args = 1)]
        authority: Option<String> = None,
        /// This node's certificate file (`agentmesh ca issue`); required
        /// when `authority` is set.
        #[arg(num_args = 1)]
        certificate: Option<PathBuf> = None,
        /// A connected peer that has not proved its membership within this
        /// many milliseconds is disconnected.
        membership_timeout_ms: Millis = Millis::new(10_000),
        /// Most peers proving membership at once. Each may send gossip-sized
        /// messages meanwhile, so this bounds what strangers cost. When
        /// full, a newcomer displaces the peer that has waited longest if
        /// that one has waited over a second (an honest handshake takes
        /// milliseconds); otherwise the newcomer is turned away.
        max_pending_handshakes: NonZeroUsize = nzu(32),
    }
}

config_section! {
    /// The local model that recommends patterns and learns from outcomes.
    ModelConfig / ModelFlags, "model", prefix model_ {
        /// Use the local model for recommendations (false: the rule-based
        /// recommender answers alone, and no model is shared).
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        enabled: bool = true,
        /// Seconds between sharing the model on `learning:model` and merging
        /// what peers shared.
        share_secs: Secs = Secs::new(300),
        /// Top probability below which the rules answer instead (0 to 1).
        min_confidence: f64 = 0.25,
        /// Feature dimension of models this node trains (a power of two,
        /// 64 to 65536: a wider input layer makes a checkpoint larger than
        /// a node loads); all nodes of a network must use the same to merge.
        feature_dim: usize = 1 << 16,
        /// Seed of the initial weights and of the data split; all nodes of a
        /// network must use the same (merging averages weights that started
        /// from the same point).
        seed: u64 = 42,
        /// Outcomes learned after which the model is saved even between
        /// sharing rounds; a restart after a crash learns about this many
        /// again (a few ms each).
        save_outcomes: NonZeroU64 = NonZeroU64::new(2000).unwrap(),
        /// A merged model is installed only if its top-1 accuracy on this
        /// node's own held-out samples (and latest successful outcomes)
        /// falls by at most this fraction (0 to 1) from the trained model's;
        /// otherwise the peers' models are rejected and counted.
        merge_max_accuracy_drop: f64 = 0.01,
        /// Largest share of this node's model that one peer's models may
        /// make up over time (0 to 1; merges from other peers and new
        /// training dilute it). Applies once the node has data of its own.
        max_peer_influence: f64 = 0.5,
    }
}

config_section! {
    /// The agent API (HTTP/JSON) and the dashboard.
    ApiConfig / ApiFlags, "api", prefix api_ {
        /// Address of the agent API (port 0 picks a free port; `node.json` in
        /// the data directory tells which).
        #[arg(long = "api", env = "AGENTMESH_API")]
        listen: String = "127.0.0.1:7700".into(),
        /// Allow the agent API on a non-loopback address (plain HTTP: anyone
        /// on the path can read the token).
        #[arg(num_args = 0..=1, default_missing_value = "true")]
        allow_remote: bool = false,
        /// File holding the API's bearer token; created (mode 0600) if
        /// absent (one written by hand needs at least 32 characters). Empty:
        /// `<data_dir>/api-token`.
        token_file: PathBuf = PathBuf::new(),
        /// Host names (besides loopback ones and the API's own address) that
        /// requests may name in their Host header.
        #[arg(value_delimiter = ',')]
        allowed_hosts: Vec<String> = Vec::new(),
    }
}
