//! Node configuration: one serde struct with defaults, read from a TOML file,
//! overridden by `AGENTMESH_*` environment variables and then by flags (clap
//! resolves env < flag; [`RunArgs::overlay`] puts both over the file).
//! [`Settings::from_config`] validates everything and names the setting that
//! is wrong.

use agentmesh_consensus::{Params, ValidatorSet};
use agentmesh_protocol::NodeId;
use ipnet::IpNet;
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network id: nodes only talk to nodes with the same id.
    pub network: String,
    /// Directory for the identity key and the database.
    pub data_dir: PathBuf,
    /// Multiaddrs to listen on (QUIC and TCP).
    pub listen: Vec<String>,
    /// Addresses other hosts should dial us on (announced through identify).
    pub external_addresses: Vec<String>,
    /// Peers to join through, as full multiaddrs ending in /p2p/<peer id>.
    pub bootstrap: Vec<String>,
    pub quic: bool,
    pub tcp: bool,
    /// Agent API address (HTTP/JSON).
    pub api: String,
    /// Allow the agent API on a non-loopback address (plain HTTP: anyone on
    /// the path can read the token).
    pub api_allow_remote: bool,
    /// File holding the API's bearer token; created (mode 0600) if absent.
    /// Empty: `<data_dir>/api-token`.
    pub api_token_file: String,
    /// Host names (besides loopback ones and the API's own address) that
    /// requests may name in their Host header.
    pub api_allowed_hosts: Vec<String>,
    /// `human` or `json`.
    pub log_format: String,
    /// Largest message body accepted from agents and peers, in bytes.
    pub max_message_bytes: usize,
    /// Most established connections in total.
    pub max_connections: u32,
    /// Most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// Most connections being set up at once (each direction).
    pub max_pending_connections: u32,
    /// Discovered peers are dialled while fewer than this many are connected.
    pub target_peers: usize,
    /// Inbound peers accepted beyond `target_peers`; every few seconds the
    /// worst of them are pruned back to the target.
    pub peer_excess: usize,
    /// Of `target_peers + peer_excess` slots, how many only connections
    /// this node dials may use (strangers dialling in never take them).
    pub reserved_outbound_peers: usize,
    /// Most inbound connections from one IP address.
    pub max_peers_per_ip: usize,
    /// Most inbound connections from one subnet (/24 for IPv4, /48 for IPv6).
    pub max_peers_per_subnet: usize,
    /// Networks (CIDR) exempt from the per-address limits and from IP bans.
    /// Loopback by default: a local testnet runs every node on one address.
    pub peer_limits_exempt: Vec<String>,
    /// Private networks (CIDR) whose addresses are accepted from any peer;
    /// otherwise private addresses are accepted only from peers connected
    /// from a private network themselves.
    pub private_networks: Vec<String>,
    /// Peers remembered on disk for rejoining after a restart.
    pub max_known_peers: usize,
    pub ping_interval_secs: u64,
    /// A ping unanswered this long counts as failed.
    pub ping_timeout_secs: u64,
    /// Consecutive ping failures after which a connection is closed.
    pub ping_max_failures: u32,
    /// A QUIC dial not answered within this time fails, and TCP is tried.
    pub quic_dial_timeout_ms: u64,
    /// How long a peer's circuit breaker stays open (TCP only) before QUIC is tried again.
    pub breaker_cooldown_secs: u64,
    /// Longest wait between redials of a peer whose connection dropped.
    pub reconnect_max_delay_secs: u64,
    pub idle_connection_timeout_secs: u64,
    /// Periodic Kademlia bootstrap.
    pub bootstrap_interval_secs: u64,
    pub gossip_heartbeat_ms: u64,
    /// Buffered messages per local channel family before slow subscribers miss some.
    pub subscriber_buffer: usize,
    /// Consensus: peers sampled per poll.
    pub consensus_k: usize,
    /// Consensus: yes votes of `consensus_k` that make a poll successful
    /// (the value's preference strength grows).
    pub consensus_alpha_preference: usize,
    /// Consensus: yes votes of `consensus_k` that count towards acceptance.
    pub consensus_alpha_confidence: usize,
    /// Consensus: the validators, as peer ids with an optional weight
    /// (`12D3KooW...=3`; 1 without one). Only they are sampled and only
    /// their votes count. Empty: every peer seen in the last 24 hours votes
    /// with weight 1, which is for development only (not Sybil-resistant).
    pub validators: Vec<String>,
    /// Consensus: consecutive successful polls accepting an uncontested transaction.
    pub consensus_beta_virtuous: u32,
    /// Consensus: consecutive successful polls accepting a contested transaction.
    pub consensus_beta_rogue: u32,
    /// Consensus: polls in flight at once.
    pub consensus_polls_in_flight: usize,
    /// Consensus: vertex ids per query.
    pub consensus_batch_size: usize,
    /// Consensus: a peer's unanswered query counts as a no vote after this long.
    pub consensus_query_timeout_ms: u64,
    /// Patterns: seconds between anti-entropy rounds with a random peer
    /// (a peer is also reconciled with whenever it connects).
    pub patterns_anti_entropy_secs: u64,
    /// Patterns: local changes are gossiped in batches collected over this
    /// many milliseconds (or 100 changes, whichever comes first).
    pub patterns_gossip_delay_ms: u64,
    /// Membership: the network authority's public key (64 hex characters,
    /// printed by `agentmesh ca init`). Set, every peer must present a
    /// certificate it signed; unset, the node runs open to any peer.
    pub authority: Option<String>,
    /// Membership: this node's certificate file (`agentmesh ca issue`);
    /// required when `authority` is set.
    pub certificate: Option<PathBuf>,
    /// Membership: a connected peer that has not proved its membership
    /// within this many milliseconds is disconnected.
    pub membership_timeout_ms: u64,
    /// Membership: most peers proving membership at once. Each may send
    /// gossip-sized messages meanwhile, so this bounds what strangers cost.
    /// When full, a newcomer displaces the peer that has waited longest if
    /// that one has waited over a second (an honest handshake takes
    /// milliseconds); otherwise the newcomer is turned away.
    pub max_pending_handshakes: usize,
    /// Limits: channel messages per second accepted from one author (bursts
    /// of twice this pass); more are dropped and count against the author.
    pub peer_message_rate: u32,
    /// Limits: requests per second (consensus queries, sync, handshakes)
    /// answered for one peer (bursts of twice this pass).
    pub peer_request_rate: u32,
    /// Limits: misbehaviour points after which a peer is banned. Malformed
    /// or unauthorised data costs 20, a bad signature 50, each message or
    /// request over the rate 1; a peer recovers 1 point per second.
    pub ban_threshold: u32,
    /// Limits: how long a misbehaving peer stays banned, in seconds (bans
    /// are kept on disk across restarts).
    pub ban_secs: u64,
    /// Model: use the local model for recommendations (false: the
    /// rule-based recommender answers alone, and no model is shared).
    pub model_enabled: bool,
    /// Model: seconds between sharing the model on `learning:model` and
    /// merging what peers shared.
    pub model_share_secs: u64,
    /// Model: top probability below which the rules answer instead (0..1).
    pub model_min_confidence: f64,
    /// Model: feature dimension of models this node trains (a power of
    /// two, 64..=2^20); all nodes of a network must use the same to merge.
    pub model_feature_dim: usize,
    /// Model: seed of the initial weights and of the data split; all nodes
    /// of a network must use the same (merging averages weights that
    /// started from the same point).
    pub model_seed: u64,
    /// Model: outcomes learned after which the model is saved even
    /// between sharing rounds; a restart after a crash learns about this
    /// many again (a few ms each).
    pub model_save_outcomes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network: "agentmesh".into(),
            data_dir: PathBuf::from("agentmesh-data"),
            listen: vec![
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
                "/ip4/0.0.0.0/tcp/4001".into(),
            ],
            external_addresses: vec![],
            bootstrap: vec![],
            quic: true,
            tcp: true,
            api: "127.0.0.1:7700".into(),
            api_allow_remote: false,
            api_token_file: String::new(),
            api_allowed_hosts: Vec::new(),
            log_format: "human".into(),
            max_message_bytes: 256 * 1024,
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_connections: 64,
            target_peers: 64,
            peer_excess: 16,
            reserved_outbound_peers: 16,
            max_peers_per_ip: 8,
            max_peers_per_subnet: 32,
            peer_limits_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
            private_networks: Vec::new(),
            max_known_peers: 1000,
            ping_interval_secs: 30,
            ping_timeout_secs: 10,
            ping_max_failures: 3,
            quic_dial_timeout_ms: 1500,
            breaker_cooldown_secs: 300,
            reconnect_max_delay_secs: 60,
            idle_connection_timeout_secs: 3600,
            bootstrap_interval_secs: 300,
            gossip_heartbeat_ms: 500,
            subscriber_buffer: 4096,
            consensus_k: Params::default().k,
            consensus_alpha_preference: Params::default().alpha_preference,
            consensus_alpha_confidence: Params::default().alpha_confidence,
            validators: vec![],
            consensus_beta_virtuous: Params::default().beta_virtuous,
            consensus_beta_rogue: Params::default().beta_rogue,
            consensus_polls_in_flight: Params::default().max_polls_in_flight,
            consensus_batch_size: Params::default().batch_size,
            consensus_query_timeout_ms: Params::default().query_timeout_ms,
            patterns_anti_entropy_secs: 30,
            patterns_gossip_delay_ms: 20,
            authority: None,
            certificate: None,
            membership_timeout_ms: 10_000,
            max_pending_handshakes: 32,
            peer_message_rate: 50_000,
            peer_request_rate: 5_000,
            ban_threshold: 100,
            ban_secs: 3600,
            model_enabled: true,
            model_share_secs: 300,
            model_min_confidence: 0.25,
            model_feature_dim: 1 << 16,
            model_seed: 42,
            model_save_outcomes: 2000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting '{setting}': {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }
}

/// A bootstrap peer: who, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapPeer {
    pub peer_id: PeerId,
    pub addr: Multiaddr,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

fn consensus_params(c: &Config) -> Result<Params, ConfigError> {
    let params = Params {
        k: c.consensus_k,
        alpha_preference: c.consensus_alpha_preference,
        alpha_confidence: c.consensus_alpha_confidence,
        beta_virtuous: c.consensus_beta_virtuous,
        beta_rogue: c.consensus_beta_rogue,
        max_polls_in_flight: c.consensus_polls_in_flight,
        batch_size: c.consensus_batch_size,
        query_timeout_ms: c.consensus_query_timeout_ms,
        ..Params::default()
    };
    params.validate().map_err(|e| {
        let setting = match e.name {
            "k" => "consensus_k",
            "alpha_preference" => "consensus_alpha_preference",
            "alpha_confidence" => "consensus_alpha_confidence",
            "beta_virtuous" => "consensus_beta_virtuous",
            "beta_rogue" => "consensus_beta_rogue",
            "max_polls_in_flight" => "consensus_polls_in_flight",
            "batch_size" => "consensus_batch_size",
            "query_timeout_ms" => "consensus_query_timeout_ms",
            other => other,
        };
        invalid(setting, e.problem)
    })?;
    Ok(params)
}

/// The validated configuration the node runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub network: String,
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub external_addresses: Vec<Multiaddr>,
    pub bootstrap: Vec<BootstrapPeer>,
    pub quic: bool,
    pub tcp: bool,
    pub api: SocketAddr,
    /// Where the API's bearer token is kept.
    pub api_token_file: PathBuf,
    /// Lowercased host names allowed in Host headers, besides loopback.
    pub api_allowed_hosts: Vec<String>,
    pub log_format: LogFormat,
    pub max_message_bytes: usize,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_connections: u32,
    pub target_peers: usize,
    pub peers: PeerLimits,
    pub max_known_peers: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub ping_max_failures: u32,
    pub quic_dial_timeout: Duration,
    pub breaker_cooldown: Duration,
    pub reconnect_max_delay: Duration,
    pub idle_connection_timeout: Duration,
    pub bootstrap_interval: Duration,
    pub gossip_heartbeat: Duration,
    pub subscriber_buffer: usize,
    pub consensus: Params,
    /// The configured validator set; `None`: the peers seen (development).
    pub validators: Option<ValidatorSet>,
    pub anti_entropy_interval: Duration,
    pub pattern_gossip_delay: Duration,
    /// The authority's key and this node's certificate; `None` = open mode.
    pub membership: Option<MembershipSettings>,
    pub membership_timeout: Duration,
    pub max_pending_handshakes: usize,
    pub peer_message_rate: NonZeroU32,
    pub peer_request_rate: NonZeroU32,
    pub ban_threshold: NonZeroU32,
    pub ban_duration: Duration,
    pub model: ModelSettings,
}

/// The peer manager's limits (see `network::peer_manager`).
#[derive(Clone, Debug)]
pub struct PeerLimits {
    pub excess: usize,
    pub reserved_outbound: usize,
    pub max_per_ip: usize,
    pub max_per_subnet: usize,
    pub exempt: Vec<IpNet>,
    pub private_networks: Vec<IpNet>,
}

impl PeerLimits {
    /// Most peers at once: the target plus the excess.
    pub fn max_peers(&self, target: usize) -> usize {
        target + self.excess
    }

    /// Most inbound connections: what the reserved outbound slots leave.
    pub fn max_inbound(&self, target: usize) -> usize {
        self.max_peers(target) - self.reserved_outbound
    }
}

fn cidrs(setting: &'static str, entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .map(|e| {
            let e = e.trim();
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    invalid(
                        setting,
                        format!("{e:?} is not a network such as 10.0.0.0/8 or an address"),
                    )
                })
        })
        .collect()
}

fn peer_limits(c: &Config) -> Result<PeerLimits, ConfigError> {
    positive("max_peers_per_ip", c.max_peers_per_ip as u64)?;
    if c.max_peers_per_subnet < c.max_peers_per_ip {
        return Err(invalid(
            "max_peers_per_subnet",
            format!("must be at least max_peers_per_ip ({})", c.max_peers_per_ip),
        ));
    }
    let max_peers = c
        .target_peers
        .checked_add(c.peer_excess)
        .filter(|n| *n <= 100_000)
        .ok_or_else(|| {
            invalid(
                "peer_excess",
                "target_peers + peer_excess must be at most 100000",
            )
        })?;
    if c.reserved_outbound_peers >= max_peers {
        return Err(invalid(
            "reserved_outbound_peers",
            format!(
                "must be less than target_peers + peer_excess ({max_peers}), or no peer could ever connect to this node"
            ),
        ));
    }
    // The connection limit counts a peer's duplicate connections too: it
    // must leave room for every peer slot, or it (not the peer manager)
    // would decide who gets in, reserved outbound slots included.
    if (c.max_connections as usize) < max_peers {
        return Err(invalid(
            "max_connections",
            format!("must be at least target_peers + peer_excess ({max_peers})"),
        ));
    }
    Ok(PeerLimits {
        excess: c.peer_excess,
        reserved_outbound: c.reserved_outbound_peers,
        max_per_ip: c.max_peers_per_ip,
        max_per_subnet: c.max_peers_per_subnet,
        exempt: cidrs("peer_limits_exempt", &c.peer_limits_exempt)?,
        private_networks: cidrs("private_networks", &c.private_networks)?,
    })
}

#[derive(Clone, Debug)]
pub struct ModelSettings {
    pub enabled: bool,
    pub share_interval: Duration,
    pub min_confidence: f64,
    pub feature_dim: usize,
    pub seed: u64,
    pub save_after_outcomes: u64,
}

fn model_settings(c: &Config) -> Result<ModelSettings, ConfigError> {
    if !(0.0..=1.0).contains(&c.model_min_confidence) {
        return Err(invalid("model_min_confidence", "must be between 0 and 1"));
    }
    if !c.model_feature_dim.is_power_of_two() || !(64..=1 << 20).contains(&c.model_feature_dim) {
        return Err(invalid(
            "model_feature_dim",
            "must be a power of two between 64 and 1048576",
        ));
    }
    Ok(ModelSettings {
        enabled: c.model_enabled,
        share_interval: Duration::from_secs(positive("model_share_secs", c.model_share_secs)?),
        min_confidence: c.model_min_confidence,
        feature_dim: c.model_feature_dim,
        seed: c.model_seed,
        save_after_outcomes: positive("model_save_outcomes", c.model_save_outcomes)?,
    })
}

#[derive(Clone, Debug)]
pub struct MembershipSettings {
    pub authority: NodeId,
    pub certificate: PathBuf,
}

fn membership_settings(c: &Config) -> Result<Option<MembershipSettings>, ConfigError> {
    let Some(text) = &c.authority else {
        if c.certificate.is_some() {
            return Err(invalid(
                "certificate",
                "a certificate is only used with an authority; set 'authority' too",
            ));
        }
        return Ok(None);
    };
    let authority = agentmesh_protocol::membership::parse_public_key(text).ok_or_else(|| {
        invalid(
            "authority",
            format!("{text:?} is not a public key of 64 hex characters (see `agentmesh ca init`)"),
        )
    })?;
    let certificate = c.certificate.clone().ok_or_else(|| {
        invalid(
            "certificate",
            "a node in a network with an authority needs its certificate file (see `agentmesh ca issue`)",
        )
    })?;
    Ok(Some(MembershipSettings {
        authority,
        certificate,
    }))
}

fn non_zero(setting: &'static str, v: u32) -> Result<NonZeroU32, ConfigError> {
    NonZeroU32::new(v).ok_or_else(|| invalid(setting, "must be greater than 0"))
}

/// Largest accepted `max_message_bytes`: gossipsub keeps messages in memory
/// for its history window, so very large messages belong in another protocol.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 16 * 1024 * 1024;

pub fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

pub fn is_tcp(addr: &Multiaddr) -> bool {
    !is_quic(addr) && addr.iter().any(|p| matches!(p, Protocol::Tcp(_)))
}

fn parse_addr(setting: &'static str, s: &str) -> Result<Multiaddr, ConfigError> {
    s.parse::<Multiaddr>()
        .map_err(|e| invalid(setting, format!("{s:?} is not a valid multiaddr: {e}")))
}

fn parse_bootstrap(s: &str) -> Result<BootstrapPeer, ConfigError> {
    let mut addr = parse_addr("bootstrap", s)?;
    match addr.pop() {
        Some(Protocol::P2p(peer_id)) if !addr.is_empty() => Ok(BootstrapPeer { peer_id, addr }),
        _ => Err(invalid(
            "bootstrap",
            format!("{s:?} must be a full address ending in /p2p/<peer id>, e.g. /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW..."),
        )),
    }
}

/// `validators`: `<peer id>[=<weight>]` entries.
fn parse_validators(entries: &[String]) -> Result<Option<ValidatorSet>, ConfigError> {
    if entries.is_empty() {
        return Ok(None);
    }
    let mut members = Vec::with_capacity(entries.len());
    for entry in entries {
        let (peer, weight) = match entry.split_once('=') {
            Some((peer, weight)) => {
                let weight = weight.trim().parse::<u64>().map_err(|_| {
                    invalid(
                        "validators",
                        format!("{entry:?}: the weight after '=' must be a whole number"),
                    )
                })?;
                (peer.trim(), weight)
            }
            None => (entry.trim(), 1),
        };
        let node = peer
            .parse::<libp2p::PeerId>()
            .ok()
            .and_then(|p| crate::identity::node_id_of(&p))
            .ok_or_else(|| {
                invalid(
                    "validators",
                    format!("{peer:?} is not an agentmesh peer id (12D3KooW..., as `agentmesh id` prints)"),
                )
            })?;
        members.push((node, weight));
    }
    ValidatorSet::new(1, members)
        .map(Some)
        .map_err(|e| invalid("validators", e.to_string()))
}

fn positive(setting: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(setting, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

/// A positive number of seconds.
fn secs(setting: &'static str, v: u64) -> Result<Duration, ConfigError> {
    positive(setting, v).map(Duration::from_secs)
}

impl Settings {
    pub fn from_config(c: &Config) -> Result<Settings, ConfigError> {
        if c.network.is_empty()
            || c.network.len() > 64
            || !c
                .network
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            return Err(invalid(
                "network",
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    c.network
                ),
            ));
        }
        if !c.quic && !c.tcp {
            return Err(invalid(
                "quic",
                "QUIC and TCP are both disabled; enable at least one",
            ));
        }
        let mut listen = Vec::new();
        for s in &c.listen {
            let addr = parse_addr("listen", s)?;
            if !is_quic(&addr) && !is_tcp(&addr) {
                return Err(invalid("listen", format!("{s:?} is neither a TCP (/tcp/<port>) nor a QUIC (/udp/<port>/quic-v1) address")));
            }
            // A disabled transport's listen addresses are dropped, so that
            // `--no-quic` works with the default listen list.
            if (is_quic(&addr) && c.quic) || (is_tcp(&addr) && c.tcp) {
                listen.push(addr);
            }
        }
        if listen.is_empty() {
            return Err(invalid(
                "listen",
                "no address to listen on for the enabled transports",
            ));
        }
        let external_addresses = c
            .external_addresses
            .iter()
            .map(|s| parse_addr("external_addresses", s))
            .collect::<Result<_, _>>()?;
        let bootstrap = c
            .bootstrap
            .iter()
            .map(|s| parse_bootstrap(s))
            .collect::<Result<_, _>>()?;
        let api: SocketAddr = c.api.parse().map_err(|_| {
            invalid(
                "api",
                format!(
                    "{:?} is not an IP:port address such as 127.0.0.1:7700",
                    c.api
                ),
            )
        })?;
        if !api.ip().is_loopback() && !c.api_allow_remote {
            return Err(invalid(
                "api",
                format!("{api} is not a loopback address; the agent API is plain HTTP (its token travels in the clear), set api_allow_remote = true to expose it anyway"),
            ));
        }
        let api_token_file = if c.api_token_file.is_empty() {
            c.data_dir.join(crate::api::TOKEN_FILE)
        } else {
            PathBuf::from(&c.api_token_file)
        };
        let api_allowed_hosts = c
            .api_allowed_hosts
            .iter()
            .map(|h| {
                let host = h.trim().to_ascii_lowercase();
                if host.is_empty() || host.contains(['/', ' ', '@']) {
                    Err(invalid(
                        "api_allowed_hosts",
                        format!("{h:?} is not a host name (such as node1.internal)"),
                    ))
                } else {
                    Ok(host)
                }
            })
            .collect::<Result<_, _>>()?;
        let log_format = match c.log_format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("{other:?} is not 'human' or 'json'"),
                ))
            }
        };
        if c.max_message_bytes == 0 || c.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
            return Err(invalid(
                "max_message_bytes",
                format!("must be between 1 and {MAX_MESSAGE_BYTES_LIMIT}"),
            ));
        }
        positive("max_connections", c.max_connections.into())?;
        positive(
            "max_connections_per_peer",
            c.max_connections_per_peer.into(),
        )?;
        positive("max_pending_connections", c.max_pending_connections.into())?;
        positive("target_peers", c.target_peers as u64)?;
        positive("max_known_peers", c.max_known_peers as u64)?;
        positive("ping_max_failures", c.ping_max_failures.into())?;
        positive("subscriber_buffer", c.subscriber_buffer as u64)?;
        if c.gossip_heartbeat_ms < 50 {
            return Err(invalid("gossip_heartbeat_ms", "must be at least 50"));
        }
        let consensus = consensus_params(c)?;
        let validators = parse_validators(&c.validators)?;
        Ok(Settings {
            network: c.network.clone(),
            data_dir: c.data_dir.clone(),
            listen,
            external_addresses,
            bootstrap,
            quic: c.quic,
            tcp: c.tcp,
            api,
            api_token_file,
            api_allowed_hosts,
            log_format,
            max_message_bytes: c.max_message_bytes,
            max_connections: c.max_connections,
            max_connections_per_peer: c.max_connections_per_peer,
            max_pending_connections: c.max_pending_connections,
            target_peers: c.target_peers,
            peers: peer_limits(c)?,
            max_known_peers: c.max_known_peers,
            ping_interval: secs("ping_interval_secs", c.ping_interval_secs)?,
            ping_timeout: secs("ping_timeout_secs", c.ping_timeout_secs)?,
            ping_max_failures: c.ping_max_failures,
            quic_dial_timeout: Duration::from_millis(positive(
                "quic_dial_timeout_ms",
                c.quic_dial_timeout_ms,
            )?),
            breaker_cooldown: secs("breaker_cooldown_secs", c.breaker_cooldown_secs)?,
            reconnect_max_delay: secs("reconnect_max_delay_secs", c.reconnect_max_delay_secs)?,
            idle_connection_timeout: secs(
                "idle_connection_timeout_secs",
                c.idle_connection_timeout_secs,
            )?,
            bootstrap_interval: secs("bootstrap_interval_secs", c.bootstrap_interval_secs)?,
            gossip_heartbeat: Duration::from_millis(c.gossip_heartbeat_ms),
            subscriber_buffer: c.subscriber_buffer,
            consensus,
            validators,
            anti_entropy_interval: secs(
                "patterns_anti_entropy_secs",
                c.patterns_anti_entropy_secs,
            )?,
            pattern_gossip_delay: Duration::from_millis(
                (1..=10_000)
                    .contains(&c.patterns_gossip_delay_ms)
                    .then_some(c.patterns_gossip_delay_ms)
                    .ok_or_else(|| {
                        invalid("patterns_gossip_delay_ms", "must be between 1 and 10000")
                    })?,
            ),
            membership: membership_settings(c)?,
            membership_timeout: Duration::from_millis(positive(
                "membership_timeout_ms",
                c.membership_timeout_ms,
            )?),
            max_pending_handshakes: positive(
                "max_pending_handshakes",
                c.max_pending_handshakes as u64,
            )? as usize,
            peer_message_rate: non_zero("peer_message_rate", c.peer_message_rate)?,
            peer_request_rate: non_zero("peer_request_rate", c.peer_request_rate)?,
            ban_threshold: non_zero("ban_threshold", c.ban_threshold)?,
            ban_duration: secs("ban_secs", c.ban_secs)?,
            model: model_settings(c)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting_of(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { setting, .. } => setting,
            other => panic!("expected an invalid setting, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::from_config(&Config::default()).unwrap();
        assert_eq!(s.listen.len(), 2);
        assert!(s.api.ip().is_loopback());
    }

    #[test]
    fn each_bad_value_names_its_setting() {
        type Mutation = fn(&mut Config);
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.network = "bad network".into(), "network"),
            (|c| c.listen = vec!["/ip4/1.2.3.4/tcpx/1".into()], "listen"),
            (|c| c.listen = vec!["/ip4/1.2.3.4/udp/1".into()], "listen"),
            (
                |c| c.bootstrap = vec!["/ip4/1.2.3.4/tcp/1".into()],
                "bootstrap",
            ),
            (|c| c.bootstrap = vec!["nonsense".into()], "bootstrap"),
            (
                |c| c.external_addresses = vec!["x".into()],
                "external_addresses",
            ),
            (|c| c.api = "localhost".into(), "api"),
            (|c| c.api = "0.0.0.0:7700".into(), "api"),
            (|c| c.log_format = "xml".into(), "log_format"),
            (|c| c.max_message_bytes = 0, "max_message_bytes"),
            (|c| c.ping_interval_secs = 0, "ping_interval_secs"),
            (|c| c.gossip_heartbeat_ms = 1, "gossip_heartbeat_ms"),
            (
                |c| c.patterns_anti_entropy_secs = 0,
                "patterns_anti_entropy_secs",
            ),
            (
                |c| c.patterns_gossip_delay_ms = 0,
                "patterns_gossip_delay_ms",
            ),
            (
                |c| {
                    c.quic = false;
                    c.tcp = false
                },
                "quic",
            ),
            (|c| c.authority = Some("abc".into()), "authority"),
            (|c| c.authority = Some("00".repeat(32)), "certificate"),
            (
                |c| c.certificate = Some("member.cert".into()),
                "certificate",
            ),
            (|c| c.membership_timeout_ms = 0, "membership_timeout_ms"),
            (|c| c.peer_message_rate = 0, "peer_message_rate"),
            (|c| c.peer_request_rate = 0, "peer_request_rate"),
            (|c| c.ban_secs = 0, "ban_secs"),
            (|c| c.ban_threshold = 0, "ban_threshold"),
            (|c| c.model_share_secs = 0, "model_share_secs"),
            (|c| c.model_min_confidence = 1.5, "model_min_confidence"),
            (|c| c.model_feature_dim = 1000, "model_feature_dim"),
            (|c| c.model_save_outcomes = 0, "model_save_outcomes"),
            (|c| c.max_peers_per_ip = 0, "max_peers_per_ip"),
            (|c| c.max_pending_handshakes = 0, "max_pending_handshakes"),
            (|c| c.max_peers_per_subnet = 2, "max_peers_per_subnet"),
            (
                |c| c.reserved_outbound_peers = 80,
                "reserved_outbound_peers",
            ),
            (
                |c| c.peer_limits_exempt = vec!["10.0.0.0/33".into()],
                "peer_limits_exempt",
            ),
            (
                |c| c.private_networks = vec!["lan".into()],
                "private_networks",
            ),
        ];
        for (mutate, setting) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            assert_eq!(setting_of(Settings::from_config(&c).unwrap_err()), setting);
        }
    }

    #[test]
    fn disabling_a_transport_drops_its_listen_addresses() {
        let c = Config {
            quic: false,
            ..Config::default()
        };
        let s = Settings::from_config(&c).unwrap();
        assert!(s.listen.iter().all(is_tcp));
    }

    #[test]
    fn bootstrap_addresses_are_split_into_peer_and_address() {
        let id = PeerId::random();
        let c = Config {
            bootstrap: vec![format!("/ip4/10.0.0.1/tcp/4001/p2p/{id}")],
            ..Config::default()
        };
        let s = Settings::from_config(&c).unwrap();
        assert_eq!(s.bootstrap[0].peer_id, id);
        assert_eq!(s.bootstrap[0].addr.to_string(), "/ip4/10.0.0.1/tcp/4001");
    }

    #[test]
    fn unknown_file_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "network = \"x\"\nlisten_prot = 3\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("listen_prot"), "{err}");
    }
}
