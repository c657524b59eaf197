//! The checked configuration a node runs with: the sections as declared,
//! plus the parsed form of the settings given as text (addresses, keys,
//! networks). Checks that involve more than one setting live here too.

use super::PeersConfig;
use super::{invalid, Config, ConfigError};
use super::{ApiConfig, ConsensusConfig, MembershipConfig, ModelConfig, NetworkConfig, NodeConfig};
use agentmesh_consensus::{Params, ValidatorSet};
use agentmesh_protocol::NodeId;
use ipnet::IpNet;
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Largest accepted `network.max_message_bytes`: gossipsub keeps messages
/// in memory for its history window, so very large messages belong in
/// another protocol.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 16 * 1024 * 1024;

/// The limit on setting up a TCP connection: connecting, Noise and yamux.
pub const TCP_SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The validated configuration the node runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Every setting as given (and checked).
    pub config: Config,
    /// `network.listen` of the enabled transports.
    pub listen_addrs: Vec<Multiaddr>,
    /// `network.external_addresses`.
    pub external_addrs: Vec<Multiaddr>,
    /// `network.bootstrap`.
    pub bootstrap_peers: Vec<BootstrapPeer>,
    /// `nat.relays`.
    pub relays: Vec<BootstrapPeer>,
    /// `peers.peer_limits_exempt`.
    pub exempt_nets: Vec<IpNet>,
    /// `peers.private_networks`.
    pub private_nets: Vec<IpNet>,
    /// The `consensus` section as the engine takes it.
    pub consensus_params: Params,
    /// `consensus.validators`; `None`: the peers seen (development).
    pub validator_set: Option<ValidatorSet>,
    /// The authority's key and this node's certificate; `None` = open mode.
    pub authority: Option<MembershipSettings>,
    /// `api.listen`.
    pub api_addr: SocketAddr,
    /// `api.token_file`, or its default place in the data directory.
    pub api_token_path: PathBuf,
    /// `api.allowed_hosts`, lowercased.
    pub api_hosts: Vec<String>,
}

/// A bootstrap peer: who, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapPeer {
    pub peer_id: PeerId,
    pub addr: Multiaddr,
}

#[derive(Clone, Debug)]
pub struct MembershipSettings {
    pub authority: NodeId,
    pub certificate: PathBuf,
}

impl PeersConfig {
    /// Most peers at once: the target plus the excess.
    pub fn max_peers(&self) -> usize {
        self.target_peers.get() + self.peer_excess
    }

    /// Most inbound connections: what the reserved outbound slots leave.
    pub fn max_inbound(&self) -> usize {
        self.max_peers() - self.reserved_outbound_peers
    }
}

impl Settings {
    pub fn from_config(c: &Config) -> Result<Settings, ConfigError> {
        check_node(&c.node)?;
        check_network(&c.network)?;
        check_peers(&c.peers, &c.network)?;
        check_model(&c.model)?;
        let (api_addr, api_hosts) = check_api(&c.api)?;
        let gossip_delay = c.patterns.gossip_delay_ms.get();
        if gossip_delay > 10_000 {
            return Err(invalid("patterns.gossip_delay_ms", "must be at most 10000"));
        }
        Ok(Settings {
            listen_addrs: listen_addrs(&c.network)?,
            external_addrs: c
                .network
                .external_addresses
                .iter()
                .map(|s| parse_addr("network.external_addresses", s))
                .collect::<Result<_, _>>()?,
            bootstrap_peers: c
                .network
                .bootstrap
                .iter()
                .map(|s| parse_peer_addr("network.bootstrap", s))
                .collect::<Result<_, _>>()?,
            relays: c
                .nat
                .relays
                .iter()
                .map(|s| parse_peer_addr("nat.relays", s))
                .collect::<Result<_, _>>()?,
            exempt_nets: cidrs("peers.peer_limits_exempt", &c.peers.peer_limits_exempt)?,
            private_nets: cidrs("peers.private_networks", &c.peers.private_networks)?,
            consensus_params: consensus_params(&c.consensus)?,
            validator_set: parse_validators(&c.consensus.validators)?,
            authority: authority(&c.membership)?,
            api_addr,
            api_token_path: if c.api.token_file.as_os_str().is_empty() {
                c.node.data_dir.join(crate::api::TOKEN_FILE)
            } else {
                c.api.token_file.clone()
            },
            api_hosts,
            config: c.clone(),
        })
    }
}

fn check_node(n: &NodeConfig) -> Result<(), ConfigError> {
    let id = &n.network;
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        return Err(invalid(
            "node.network",
            format!("{id:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

fn check_network(n: &NetworkConfig) -> Result<(), ConfigError> {
    if !n.quic && !n.tcp {
        return Err(invalid(
            "network.quic",
            "QUIC and TCP are both disabled; enable at least one",
        ));
    }
    if n.max_message_bytes == 0 || n.max_message_bytes > MAX_MESSAGE_BYTES_LIMIT {
        return Err(invalid(
            "network.max_message_bytes",
            format!("must be between 1 and {MAX_MESSAGE_BYTES_LIMIT}"),
        ));
    }
    if n.gossip_heartbeat_ms.get() < 50 {
        return Err(invalid(
            "network.gossip_heartbeat_ms",
            "must be at least 50",
        ));
    }
    if n.tcp_connect_timeout_ms.duration() >= TCP_SETUP_TIMEOUT {
        return Err(invalid(
            "network.tcp_connect_timeout_ms",
            format!(
                "must be below {} (the limit on a whole TCP connection setup, handshakes included)",
                TCP_SETUP_TIMEOUT.as_millis()
            ),
        ));
    }
    Ok(())
}

fn listen_addrs(n: &NetworkConfig) -> Result<Vec<Multiaddr>, ConfigError> {
    let mut listen = Vec::new();
    for s in &n.listen {
        let addr = parse_addr("network.listen", s)?;
        if !is_quic(&addr) && !is_tcp(&addr) {
            return Err(invalid(
                "network.listen",
                format!(
                    "{s:?} is neither a TCP (/tcp/<port>) nor a QUIC (/udp/<port>/quic-v1) address"
                ),
            ));
        }
        // A disabled transport's listen addresses are dropped, so that
        // `--quic=false` works with the default listen list.
        if (is_quic(&addr) && n.quic) || (is_tcp(&addr) && n.tcp) {
            listen.push(addr);
        }
    }
    if listen.is_empty() {
        return Err(invalid(
            "network.listen",
            "no address to listen on for the enabled transports",
        ));
    }
    Ok(listen)
}

fn check_peers(p: &PeersConfig, n: &NetworkConfig) -> Result<(), ConfigError> {
    if p.max_peers_per_subnet < p.max_peers_per_ip.get() {
        return Err(invalid(
            "peers.max_peers_per_subnet",
            format!("must be at least max_peers_per_ip ({})", p.max_peers_per_ip),
        ));
    }
    let max_peers = p
        .target_peers
        .get()
        .checked_add(p.peer_excess)
        .filter(|n| *n <= 100_000)
        .ok_or_else(|| {
            invalid(
                "peers.peer_excess",
                "target_peers + peer_excess must be at most 100000",
            )
        })?;
    if p.reserved_outbound_peers >= max_peers {
        return Err(invalid(
            "peers.reserved_outbound_peers",
            format!(
                "must be less than target_peers + peer_excess ({max_peers}), or no peer could ever connect to this node"
            ),
        ));
    }
    // The connection limit counts a peer's duplicate connections too: it
    // must leave room for every peer slot, or it (not the peer manager)
    // would decide who gets in, reserved outbound slots included.
    if (n.max_connections.get() as usize) < max_peers {
        return Err(invalid(
            "network.max_connections",
            format!("must be at least peers.target_peers + peers.peer_excess ({max_peers})"),
        ));
    }
    Ok(())
}

fn check_model(m: &ModelConfig) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&m.min_confidence) {
        return Err(invalid("model.min_confidence", "must be between 0 and 1"));
    }
    let max_dim = agentmesh_neural::checkpoint::MAX_FEATURE_DIM;
    if !m.feature_dim.is_power_of_two() || !(64..=max_dim).contains(&m.feature_dim) {
        return Err(invalid(
            "model.feature_dim",
            format!(
                "must be a power of two between 64 and {max_dim} (a wider input layer makes a checkpoint larger than the {} MiB a node loads)",
                agentmesh_neural::checkpoint::MAX_CHECKPOINT_BYTES >> 20
            ),
        ));
    }
    if !(0.0..=1.0).contains(&m.merge_max_accuracy_drop) {
        return Err(invalid(
            "model.merge_max_accuracy_drop",
            "must be between 0 and 1",
        ));
    }
    if !(m.max_peer_influence > 0.0 && m.max_peer_influence <= 1.0) {
        return Err(invalid(
            "model.max_peer_influence",
            "must be above 0 and at most 1",
        ));
    }
    Ok(())
}

fn check_api(a: &ApiConfig) -> Result<(SocketAddr, Vec<String>), ConfigError> {
    let addr: SocketAddr = a.listen.parse().map_err(|_| {
        invalid(
            "api.listen",
            format!(
                "{:?} is not an IP:port address such as 127.0.0.1:7700",
                a.listen
            ),
        )
    })?;
    if !addr.ip().is_loopback() && !a.allow_remote {
        return Err(invalid(
            "api.listen",
            format!("{addr} is not a loopback address; the agent API is plain HTTP (its token travels in the clear), set api.allow_remote = true to expose it anyway"),
        ));
    }
    let hosts = a
        .allowed_hosts
        .iter()
        .map(|h| {
            let host = h.trim().to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ', '@']) {
                Err(invalid(
                    "api.allowed_hosts",
                    format!("{h:?} is not a host name (such as node1.internal)"),
                ))
            } else {
                Ok(host)
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((addr, hosts))
}

fn consensus_params(c: &ConsensusConfig) -> Result<Params, ConfigError> {
    let params = Params {
        k: c.k,
        alpha_preference: c.alpha_preference,
        alpha_confidence: c.alpha_confidence,
        beta_virtuous: c.beta_virtuous,
        beta_rogue: c.beta_rogue,
        max_polls_in_flight: c.polls_in_flight,
        batch_size: c.batch_size,
        query_timeout_ms: c.query_timeout_ms,
        ..Params::default()
    };
    params.validate().map_err(|e| {
        let setting = match e.name {
            "k" => "consensus.k",
            "alpha_preference" => "consensus.alpha_preference",
            "alpha_confidence" => "consensus.alpha_confidence",
            "beta_virtuous" => "consensus.beta_virtuous",
            "beta_rogue" => "consensus.beta_rogue",
            "max_polls_in_flight" => "consensus.polls_in_flight",
            "batch_size" => "consensus.batch_size",
            "query_timeout_ms" => "consensus.query_timeout_ms",
            other => other,
        };
        invalid(setting, e.problem)
    })?;
    Ok(params)
}

fn authority(m: &MembershipConfig) -> Result<Option<MembershipSettings>, ConfigError> {
    let Some(text) = &m.authority else {
        if m.certificate.is_some() {
            return Err(invalid(
                "membership.certificate",
                "a certificate is only used with an authority; set membership.authority too",
            ));
        }
        return Ok(None);
    };
    // An authority given but empty (a template that left it blank) must
    // not open the network: only leaving it out does.
    let authority =
        agentmesh_protocol::membership::parse_public_key(text.trim()).ok_or_else(|| {
            invalid(
                "membership.authority",
                format!(
                    "{text:?} is not a public key of 64 hex characters (see `agentmesh ca init`); \
                     leave the setting out for an open network"
                ),
            )
        })?;
    let certificate = m.certificate.clone().ok_or_else(|| {
        invalid(
            "membership.certificate",
            "a node in a network with an authority needs its certificate file (see `agentmesh ca issue`)",
        )
    })?;
    Ok(Some(MembershipSettings {
        authority,
        certificate,
    }))
}

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

/// A full address ending in `/p2p/<peer id>`; a relay's own address must
/// not itself go through a relay.
fn parse_peer_addr(setting: &'static str, s: &str) -> Result<BootstrapPeer, ConfigError> {
    let mut addr = parse_addr(setting, s)?;
    if setting == "nat.relays" && addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return Err(invalid(
            setting,
            format!("{s:?} goes through a relay itself; give the relay's direct address"),
        ));
    }
    match addr.pop() {
        Some(Protocol::P2p(peer_id)) if !addr.is_empty() => Ok(BootstrapPeer { peer_id, addr }),
        _ => Err(invalid(
            setting,
            format!("{s:?} must be a full address ending in /p2p/<peer id>, e.g. /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW..."),
        )),
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

/// `consensus.validators`: `<peer id>[=<weight>]` entries.
fn parse_validators(entries: &[String]) -> Result<Option<ValidatorSet>, ConfigError> {
    const SETTING: &str = "consensus.validators";
    if entries.is_empty() {
        return Ok(None);
    }
    let mut members = Vec::with_capacity(entries.len());
    for entry in entries {
        let (peer, weight) = match entry.split_once('=') {
            Some((peer, weight)) => {
                let weight = weight.trim().parse::<u64>().map_err(|_| {
                    invalid(
                        SETTING,
                        format!("{entry:?}: the weight after '=' must be a whole number"),
                    )
                })?;
                (peer.trim(), weight)
            }
            None => (entry.trim(), 1),
        };
        let node = peer
            .parse::<PeerId>()
            .ok()
            .and_then(|p| crate::identity::node_id_of(&p))
            .ok_or_else(|| {
                invalid(
                    SETTING,
                    format!("{peer:?} is not an agentmesh peer id (12D3KooW..., as `agentmesh id` prints)"),
                )
            })?;
        members.push((node, weight));
    }
    ValidatorSet::new(1, members)
        .map(Some)
        .map_err(|e| invalid(SETTING, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Millis;

    fn setting_of(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { setting, .. } => setting,
            other => panic!("expected an invalid setting, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::from_config(&Config::default()).unwrap();
        assert_eq!(s.listen_addrs.len(), 2);
        assert!(s.api_addr.ip().is_loopback());
    }

    #[test]
    fn each_bad_value_names_its_setting() {
        type Mutation = fn(&mut Config);
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.node.network = "bad network".into(), "node.network"),
            (
                |c| c.network.listen = vec!["/ip4/1.2.3.4/tcpx/1".into()],
                "network.listen",
            ),
            (
                |c| c.network.listen = vec!["/ip4/1.2.3.4/udp/1".into()],
                "network.listen",
            ),
            (
                |c| c.network.bootstrap = vec!["/ip4/1.2.3.4/tcp/1".into()],
                "network.bootstrap",
            ),
            (
                |c| c.network.bootstrap = vec!["nonsense".into()],
                "network.bootstrap",
            ),
            (
                |c| c.nat.relays = vec!["/ip4/1.2.3.4/tcp/1".into()],
                "nat.relays",
            ),
            (
                |c| {
                    c.nat.relays = vec![
                        "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
                    ]
                },
                "nat.relays",
            ),
            (
                |c| c.network.external_addresses = vec!["x".into()],
                "network.external_addresses",
            ),
            (|c| c.api.listen = "localhost".into(), "api.listen"),
            (|c| c.api.listen = "0.0.0.0:7700".into(), "api.listen"),
            (
                |c| c.api.allowed_hosts = vec!["a b".into()],
                "api.allowed_hosts",
            ),
            (
                |c| c.network.max_message_bytes = 0,
                "network.max_message_bytes",
            ),
            (
                |c| c.network.gossip_heartbeat_ms = Millis::new(1),
                "network.gossip_heartbeat_ms",
            ),
            (
                |c| c.patterns.gossip_delay_ms = Millis::new(10_001),
                "patterns.gossip_delay_ms",
            ),
            (
                |c| c.network.tcp_connect_timeout_ms = Millis::new(20_000),
                "network.tcp_connect_timeout_ms",
            ),
            (
                |c| {
                    c.network.quic = false;
                    c.network.tcp = false
                },
                "network.quic",
            ),
            (
                |c| c.membership.authority = Some("abc".into()),
                "membership.authority",
            ),
            (
                |c| c.membership.authority = Some(" ".into()),
                "membership.authority",
            ),
            (
                |c| c.membership.authority = Some("00".repeat(32)),
                "membership.certificate",
            ),
            (
                |c| c.membership.certificate = Some("member.cert".into()),
                "membership.certificate",
            ),
            (|c| c.model.min_confidence = 1.5, "model.min_confidence"),
            (|c| c.model.feature_dim = 1000, "model.feature_dim"),
            (|c| c.model.feature_dim = 1 << 17, "model.feature_dim"),
            (
                |c| c.model.merge_max_accuracy_drop = -0.1,
                "model.merge_max_accuracy_drop",
            ),
            (
                |c| c.model.max_peer_influence = 0.0,
                "model.max_peer_influence",
            ),
            (
                |c| c.peers.max_peers_per_subnet = 2,
                "peers.max_peers_per_subnet",
            ),
            (
                |c| c.peers.reserved_outbound_peers = 80,
                "peers.reserved_outbound_peers",
            ),
            (
                |c| c.peers.peer_limits_exempt = vec!["10.0.0.0/33".into()],
                "peers.peer_limits_exempt",
            ),
            (
                |c| c.peers.private_networks = vec!["lan".into()],
                "peers.private_networks",
            ),
            (
                |c| c.network.max_connections = std::num::NonZeroU32::new(10).unwrap(),
                "network.max_connections",
            ),
            (
                |c| c.consensus.alpha_preference = 5,
                "consensus.alpha_preference",
            ),
            (
                |c| c.consensus.validators = vec!["nonsense".into()],
                "consensus.validators",
            ),
        ];
        for (mutate, setting) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            assert_eq!(setting_of(Settings::from_config(&c).unwrap_err()), setting);
        }
    }

    #[test]
    fn zero_where_a_positive_number_is_needed_is_refused_by_the_file_parser() {
        for (section, key) in [
            ("network", "ping_interval_secs"),
            ("network", "max_connections"),
            ("peers", "ban_secs"),
            ("peers", "peer_message_rate"),
            ("membership", "max_pending_handshakes"),
            ("model", "save_outcomes"),
            ("patterns", "anti_entropy_secs"),
        ] {
            let err = toml::from_str::<Config>(&format!("[{section}]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("nonzero"), "{err}");
        }
    }

    #[test]
    fn disabling_a_transport_drops_its_listen_addresses() {
        let mut c = Config::default();
        c.network.quic = false;
        let s = Settings::from_config(&c).unwrap();
        assert!(s.listen_addrs.iter().all(is_tcp));
    }

    #[test]
    fn bootstrap_addresses_are_split_into_peer_and_address() {
        let id = PeerId::random();
        let mut c = Config::default();
        c.network.bootstrap = vec![format!("/ip4/10.0.0.1/tcp/4001/p2p/{id}")];
        let s = Settings::from_config(&c).unwrap();
        assert_eq!(s.bootstrap_peers[0].peer_id, id);
        assert_eq!(
            s.bootstrap_peers[0].addr.to_string(),
            "/ip4/10.0.0.1/tcp/4001"
        );
    }

    #[test]
    fn unknown_file_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[node]\nnetwork = \"x\"\nlisten_prot = 3\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("listen_prot"), "{err}");
        // A file from before sections: each setting is told where it went.
        std::fs::write(
            &path,
            "network = \"x\"\ntarget_peers = 3\nconsensus_k = 5\napi = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        for moved in [
            "'network' is now 'network' in [node]",
            "'target_peers' is now 'target_peers' in [peers]",
            "'consensus_k' is now 'k' in [consensus]",
            "'api' is now 'listen' in [api]",
        ] {
            assert!(err.contains(moved), "{err}");
        }
    }
}
