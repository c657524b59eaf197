//! Command-line interface of the `agentmesh` binary.

use crate::config::{Config, ConfigError};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "agentmesh", version, about = "A peer-to-peer node for fleets of software agents", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node (settings: config file < AGENTMESH_* environment < flags).
    Run(Box<RunArgs>),
    /// Print this node's peer id (creates the identity if there is none yet).
    Id {
        #[arg(long, env = "AGENTMESH_DATA_DIR", default_value = "agentmesh-data")]
        data_dir: PathBuf,
    },
    /// Write a new identity key file (mode 0600).
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Network authority: create its key, issue and inspect membership certificates.
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
    /// The local model, standalone on a JSONL file: train it or measure it.
    Model {
        #[command(subcommand)]
        action: ModelCommand,
    },
    /// Show the status of a running node.
    Status(ClientArgs),
    /// Print the link that opens a running node's dashboard (it carries the
    /// API token in its fragment, which browsers never send).
    Dashboard(ClientArgs),
    /// List the peers a running node is connected to.
    Peers(ClientArgs),
    /// Publish a message on a channel.
    Publish {
        #[command(flatten)]
        client: ClientArgs,
        /// Channel name, e.g. `coordination` or `metrics:cpu`.
        channel: String,
        /// The message body; `-` reads it from standard input.
        body: String,
        /// Content type of the body.
        #[arg(long, default_value = "application/json")]
        content_type: String,
    },
    /// Propose transactions for consensus: KEY=PAYLOAD pairs, one vertex.
    Propose {
        #[command(flatten)]
        client: ClientArgs,
        /// Transactions as KEY=PAYLOAD (two with one key conflict).
        #[arg(required = true)]
        transactions: Vec<String>,
    },
    /// Ask the node which patterns fit a context (the model, or the rules
    /// when the model is untrained, off or unsure).
    Recommend {
        #[command(flatten)]
        client: ClientArgs,
        /// What the agent is doing.
        text: String,
        /// Keywords (repeatable).
        #[arg(long = "keyword")]
        keywords: Vec<String>,
        #[arg(long)]
        framework: Option<String>,
        #[arg(long)]
        language: Option<String>,
        /// How many patterns.
        #[arg(long, default_value_t = 5)]
        k: usize,
    },
    /// Claim a task for an agent; with --wait, print the final winner.
    Claim {
        #[command(flatten)]
        client: ClientArgs,
        /// Task id (the claim is a transaction with key task:<id>).
        task: String,
        /// Who claims it (an agent name).
        #[arg(long)]
        claimant: String,
        /// Wait up to this many seconds for the final winner.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Show who holds a task (the final winner) or the undecided claims.
    Task {
        #[command(flatten)]
        client: ClientArgs,
        task: String,
    },
    /// Show a vertex and where consensus stands on it.
    Vertex {
        #[command(flatten)]
        client: ClientArgs,
        /// Vertex id (64 hex digits).
        id: String,
    },
    /// Shared patterns: create or update, show, list, report outcomes, sync status.
    Patterns {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: PatternsCommand,
    },
    /// Print messages from a channel or prefix (`metrics:*`) as JSON lines.
    Subscribe {
        #[command(flatten)]
        client: ClientArgs,
        /// Channel name or prefix pattern ending in `:*`.
        pattern: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Train on FILE (one `{"context": {...}, "label": "..."}` per line) with a
    /// seeded 70/20/10 split; print held-out metrics as JSON; save a checkpoint.
    Train {
        /// JSONL samples, one `{"context": {"text": ...}, "label": ...}` a line.
        #[arg(long, value_name = "FILE")]
        data: PathBuf,
        /// Seed of the split, the initial weights, the sample order and dropout.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where to write the checkpoint.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        features: FeatureArgs,
    },
    /// Train and measure on FILE without saving: the model's and the
    /// rule-based recommender's held-out metrics as JSON.
    Eval {
        /// JSONL samples, one `{"context": {"text": ...}, "label": ...}` a line.
        #[arg(long, value_name = "FILE")]
        data: PathBuf,
        /// Seed of the split, the initial weights, the sample order and dropout.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[command(flatten)]
        features: FeatureArgs,
    },
}

/// Feature choices (the defaults are what measured best; see docs/model.md).
#[derive(Args, Debug, Clone)]
pub struct FeatureArgs {
    /// Hashed feature dimension (a power of two).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Character n-grams of each word, e.g. `3-5`, or `0` for none.
    #[arg(long)]
    pub char_ngrams: Option<String>,
    /// L2 norm the text features are scaled to (default 2; at most 100).
    #[arg(long)]
    pub norm: Option<f32>,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create the authority key pair (private key file mode 0600); prints the
    /// public key to set as `authority` on every node.
    Init {
        /// Where to write the authority's private key.
        #[arg(long, default_value = "authority.key")]
        key: PathBuf,
    },
    /// Issue a membership certificate for a peer.
    Issue {
        /// The authority's private key file.
        #[arg(long, default_value = "authority.key")]
        key: PathBuf,
        /// The member's peer id (`agentmesh id` prints it).
        #[arg(long)]
        peer: String,
        /// Comma-separated scopes: `publish:<channel or prefix:*>`, `publish:*`,
        /// `propose`, `validate` (vote in consensus), `model`, `patterns`, or `all`.
        #[arg(long)]
        scopes: String,
        /// Voting weight in consensus (1 to 1000000), with `validate` or
        /// `all` [default: 1 for validators, 0 for other members].
        #[arg(long)]
        weight: Option<u64>,
        /// Validity, e.g. `90d`, `12h`, `30m`.
        #[arg(long)]
        expires: String,
        /// Where to write the certificate [default: <peer id>.cert].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a certificate's contents (and check it against an authority).
    Show {
        /// The certificate file.
        file: PathBuf,
        /// The authority's public key (hex); without it the signature is not checked.
        #[arg(long, env = "AGENTMESH_AUTHORITY")]
        authority: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PatternsCommand {
    /// Create or update a pattern from JSON (fields as POST /v1/patterns takes).
    Put {
        /// The pattern as JSON; `-` reads it from standard input.
        pattern: String,
    },
    /// Show one pattern.
    Get {
        /// Pattern id.
        id: String,
    },
    /// List patterns, optionally by tag and kind.
    List {
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Start after this id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Record a use of a pattern and whether it worked.
    Outcome {
        /// Pattern id.
        id: String,
        /// The use worked.
        #[arg(long, conflicts_with = "failure", required_unless_present = "failure")]
        success: bool,
        /// The use failed.
        #[arg(long)]
        failure: bool,
    },
    /// Replication and anti-entropy status.
    Sync,
}

impl ClientArgs {
    /// A client for the node at `api`, with the token from
    /// `api_token_file` (none if it cannot be read: the node then answers
    /// 401, naming the file it keeps the token in).
    pub fn client(&self) -> crate::client::ApiClient {
        crate::client::ApiClient::with_token_file(self.api, &self.api_token_file).unwrap_or_else(
            |e| {
                tracing::debug!(file = %self.api_token_file.display(), error = %e, "no API token");
                crate::client::ApiClient::new(self.api)
            },
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Address of the node's agent API.
    #[arg(
        long,
        global = true,
        env = "AGENTMESH_API",
        default_value = "127.0.0.1:7700"
    )]
    pub api: SocketAddr,
    /// File with the node's API token [default: agentmesh-data/api-token].
    #[arg(
        long,
        global = true,
        env = "AGENTMESH_API_TOKEN_FILE",
        default_value = "agentmesh-data/api-token"
    )]
    pub api_token_file: PathBuf,
    /// Print raw JSON instead of a table (commands that print tables).
    #[arg(long, global = true)]
    pub json: bool,
}

/// Every setting of [`Config`] as a flag and an `AGENTMESH_*` variable.
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "AGENTMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Network id; nodes only talk to nodes of the same network [default: agentmesh].
    #[arg(long, env = "AGENTMESH_NETWORK")]
    pub network: Option<String>,
    /// Directory for the identity key and database [default: agentmesh-data].
    #[arg(long, env = "AGENTMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen multiaddr, repeatable [default: /ip4/0.0.0.0/udp/4001/quic-v1 and /ip4/0.0.0.0/tcp/4001].
    #[arg(long, env = "AGENTMESH_LISTEN", value_delimiter = ',')]
    pub listen: Option<Vec<String>>,
    /// Address other hosts reach this node on (announced to peers), repeatable.
    #[arg(long, env = "AGENTMESH_EXTERNAL_ADDRESS", value_delimiter = ',')]
    pub external_address: Option<Vec<String>>,
    /// Bootstrap peer: a multiaddr ending in /p2p/<peer id>, repeatable.
    #[arg(long, env = "AGENTMESH_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Option<Vec<String>>,
    /// Disable the QUIC transport.
    #[arg(long, env = "AGENTMESH_NO_QUIC")]
    pub no_quic: bool,
    /// Disable the TCP transport.
    #[arg(long, env = "AGENTMESH_NO_TCP")]
    pub no_tcp: bool,
    /// Agent API address [default: 127.0.0.1:7700; port 0 picks a free port].
    #[arg(long, env = "AGENTMESH_API")]
    pub api: Option<String>,
    /// Allow a non-loopback API address (plain HTTP: the token travels in the clear).
    #[arg(long, env = "AGENTMESH_API_ALLOW_REMOTE")]
    pub api_allow_remote: bool,
    /// File with the API bearer token, created if absent [default: <data dir>/api-token].
    #[arg(long, env = "AGENTMESH_API_TOKEN_FILE")]
    pub api_token_file: Option<String>,
    /// Host names requests may use besides loopback ones, repeatable.
    #[arg(long, env = "AGENTMESH_API_ALLOWED_HOSTS", value_delimiter = ',')]
    pub api_allowed_hosts: Option<Vec<String>>,
    /// Log format: human or json [default: human].
    #[arg(long, env = "AGENTMESH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Largest message body in bytes [default: 262144].
    #[arg(long, env = "AGENTMESH_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Most established connections [default: 256].
    #[arg(long, env = "AGENTMESH_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Most connections to one peer [default: 2].
    #[arg(long, env = "AGENTMESH_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<u32>,
    /// Most connections being set up at once, per direction [default: 64].
    #[arg(long, env = "AGENTMESH_MAX_PENDING_CONNECTIONS")]
    pub max_pending_connections: Option<u32>,
    /// Dial discovered peers while fewer than this many are connected [default: 64].
    #[arg(long, env = "AGENTMESH_TARGET_PEERS")]
    pub target_peers: Option<usize>,
    /// Inbound peers accepted beyond --target-peers before pruning [default: 16].
    #[arg(long, env = "AGENTMESH_PEER_EXCESS")]
    pub peer_excess: Option<usize>,
    /// Peer slots only connections this node dials may use [default: 16].
    #[arg(long, env = "AGENTMESH_RESERVED_OUTBOUND_PEERS")]
    pub reserved_outbound_peers: Option<usize>,
    /// Most inbound connections from one IP address [default: 8].
    #[arg(long, env = "AGENTMESH_MAX_PEERS_PER_IP")]
    pub max_peers_per_ip: Option<usize>,
    /// Most inbound connections from one /24 or /48 [default: 32].
    #[arg(long, env = "AGENTMESH_MAX_PEERS_PER_SUBNET")]
    pub max_peers_per_subnet: Option<usize>,
    /// Networks (CIDR) exempt from per-address limits and IP bans, repeatable
    /// [default: 127.0.0.0/8,::1/128].
    #[arg(long, env = "AGENTMESH_PEER_LIMITS_EXEMPT", value_delimiter = ',')]
    pub peer_limits_exempt: Option<Vec<String>>,
    /// Private networks (CIDR) whose addresses are accepted from any peer,
    /// repeatable.
    #[arg(long, env = "AGENTMESH_PRIVATE_NETWORKS", value_delimiter = ',')]
    pub private_networks: Option<Vec<String>>,
    /// Peers remembered on disk for rejoining [default: 1000].
    #[arg(long, env = "AGENTMESH_MAX_KNOWN_PEERS")]
    pub max_known_peers: Option<usize>,
    /// Seconds between keep-alive pings [default: 30].
    #[arg(long, env = "AGENTMESH_PING_INTERVAL_SECS")]
    pub ping_interval_secs: Option<u64>,
    /// Seconds before an unanswered ping counts as failed [default: 10].
    #[arg(long, env = "AGENTMESH_PING_TIMEOUT_SECS")]
    pub ping_timeout_secs: Option<u64>,
    /// Milliseconds a QUIC dial may take before TCP is tried [default: 1500].
    #[arg(long, env = "AGENTMESH_QUIC_DIAL_TIMEOUT_MS")]
    pub quic_dial_timeout_ms: Option<u64>,
    /// Seconds a peer's QUIC circuit breaker stays open (TCP only) [default: 300].
    #[arg(long, env = "AGENTMESH_BREAKER_COOLDOWN_SECS")]
    pub breaker_cooldown_secs: Option<u64>,
    /// Longest wait in seconds between redials of a lost peer [default: 60].
    #[arg(long, env = "AGENTMESH_RECONNECT_MAX_DELAY_SECS")]
    pub reconnect_max_delay_secs: Option<u64>,
    /// Consecutive failed pings before a connection is closed [default: 3].
    #[arg(long, env = "AGENTMESH_PING_MAX_FAILURES")]
    pub ping_max_failures: Option<u32>,
    /// Seconds an idle connection stays open [default: 3600].
    #[arg(long, env = "AGENTMESH_IDLE_CONNECTION_TIMEOUT_SECS")]
    pub idle_connection_timeout_secs: Option<u64>,
    /// Seconds between periodic Kademlia bootstraps [default: 300].
    #[arg(long, env = "AGENTMESH_BOOTSTRAP_INTERVAL_SECS")]
    pub bootstrap_interval_secs: Option<u64>,
    /// Gossipsub heartbeat in milliseconds [default: 500].
    #[arg(long, env = "AGENTMESH_GOSSIP_HEARTBEAT_MS")]
    pub gossip_heartbeat_ms: Option<u64>,
    /// Messages buffered per channel family for slow local subscribers [default: 4096].
    #[arg(long, env = "AGENTMESH_SUBSCRIBER_BUFFER")]
    pub subscriber_buffer: Option<usize>,
    /// Consensus: weighted draws of validators per poll [default: 20].
    #[arg(long, env = "AGENTMESH_CONSENSUS_K")]
    pub consensus_k: Option<usize>,
    /// Consensus: yes votes of k that make a poll successful, a majority [default: 11].
    #[arg(long, env = "AGENTMESH_CONSENSUS_ALPHA_PREFERENCE")]
    pub consensus_alpha_preference: Option<usize>,
    /// Consensus: yes votes of k that count towards acceptance [default: 15].
    #[arg(long, env = "AGENTMESH_CONSENSUS_ALPHA_CONFIDENCE")]
    pub consensus_alpha_confidence: Option<usize>,
    /// Consensus: the validators, comma-separated peer ids with optional
    /// weights (12D3KooW...=2). Without them every peer seen in the last
    /// 24 hours votes: development only, not Sybil-resistant.
    #[arg(long, env = "AGENTMESH_VALIDATORS", value_delimiter = ',')]
    pub validators: Option<Vec<String>>,
    /// Consensus: consecutive confident polls accepting an uncontested transaction [default: 15].
    #[arg(long, env = "AGENTMESH_CONSENSUS_BETA_VIRTUOUS")]
    pub consensus_beta_virtuous: Option<u32>,
    /// Consensus: consecutive confident polls accepting a contested transaction [default: 15].
    #[arg(long, env = "AGENTMESH_CONSENSUS_BETA_ROGUE")]
    pub consensus_beta_rogue: Option<u32>,
    /// Consensus: polls in flight at once [default: 16].
    #[arg(long, env = "AGENTMESH_CONSENSUS_POLLS_IN_FLIGHT")]
    pub consensus_polls_in_flight: Option<usize>,
    /// Consensus: vertex ids per query [default: 64].
    #[arg(long, env = "AGENTMESH_CONSENSUS_BATCH_SIZE")]
    pub consensus_batch_size: Option<usize>,
    /// Consensus: milliseconds before an unanswered query counts as a no
    /// vote, until the peer's round trips are measured (then they set it,
    /// between 250 and 10000) [default: 2000].
    #[arg(long, env = "AGENTMESH_CONSENSUS_QUERY_TIMEOUT_MS")]
    pub consensus_query_timeout_ms: Option<u64>,
    /// Patterns: seconds between anti-entropy rounds with a random peer [default: 30].
    #[arg(long, env = "AGENTMESH_PATTERNS_ANTI_ENTROPY_SECS")]
    pub patterns_anti_entropy_secs: Option<u64>,
    /// Patterns: milliseconds local changes are collected before they are gossiped [default: 20].
    #[arg(long, env = "AGENTMESH_PATTERNS_GOSSIP_DELAY_MS")]
    pub patterns_gossip_delay_ms: Option<u64>,
    /// Membership: the network authority's public key (hex, from `ca init`); unset = open network.
    #[arg(long, env = "AGENTMESH_AUTHORITY")]
    pub authority: Option<String>,
    /// Membership: this node's certificate file (from `ca issue`).
    #[arg(long, env = "AGENTMESH_CERTIFICATE")]
    pub certificate: Option<PathBuf>,
    /// Membership: milliseconds a peer has to prove its membership [default: 10000].
    #[arg(long, env = "AGENTMESH_MEMBERSHIP_TIMEOUT_MS")]
    pub membership_timeout_ms: Option<u64>,
    /// Membership: most strangers proving membership at once [default: 32].
    #[arg(long, env = "AGENTMESH_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,
    /// Channel messages per second accepted from one author [default: 50000].
    #[arg(long, env = "AGENTMESH_PEER_MESSAGE_RATE")]
    pub peer_message_rate: Option<u32>,
    /// Requests per second answered for one peer [default: 5000].
    #[arg(long, env = "AGENTMESH_PEER_REQUEST_RATE")]
    pub peer_request_rate: Option<u32>,
    /// Misbehaviour points before a peer is banned (malformed 20, bad signature 50, over rate 1 each) [default: 100].
    #[arg(long, env = "AGENTMESH_BAN_THRESHOLD")]
    pub ban_threshold: Option<u32>,
    /// Seconds a misbehaving peer stays banned (kept across restarts) [default: 3600].
    #[arg(long, env = "AGENTMESH_BAN_SECS")]
    pub ban_secs: Option<u64>,
    /// Use the local model for recommendations (false: rules alone) [default: true].
    #[arg(long, env = "AGENTMESH_MODEL_ENABLED")]
    pub model_enabled: Option<bool>,
    /// Seconds between sharing the model with peers and merging theirs [default: 300].
    #[arg(long, env = "AGENTMESH_MODEL_SHARE_SECS")]
    pub model_share_secs: Option<u64>,
    /// Top probability below which the rule-based recommender answers [default: 0.25].
    #[arg(long, env = "AGENTMESH_MODEL_MIN_CONFIDENCE")]
    pub model_min_confidence: Option<f64>,
    /// Feature dimension of models this node trains; the same on every node [default: 65536].
    #[arg(long, env = "AGENTMESH_MODEL_FEATURE_DIM")]
    pub model_feature_dim: Option<usize>,
    /// Seed of initial weights and data split; the same on every node [default: 42].
    #[arg(long, env = "AGENTMESH_MODEL_SEED")]
    pub model_seed: Option<u64>,
    /// Outcomes learned after which the model is saved between sharing rounds [default: 2000].
    #[arg(long, env = "AGENTMESH_MODEL_SAVE_OUTCOMES")]
    pub model_save_outcomes: Option<u64>,
}

impl RunArgs {
    /// The config file (if any) with environment and flags laid over it.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! overlay {
            ($($field:ident => $target:ident),* $(,)?) => {
                $(if let Some(v) = &self.$field { c.$target = v.clone(); })*
            };
        }
        overlay!(
            network => network, data_dir => data_dir, listen => listen,
            external_address => external_addresses, bootstrap => bootstrap, api => api,
            api_token_file => api_token_file, api_allowed_hosts => api_allowed_hosts,
            log_format => log_format, max_message_bytes => max_message_bytes,
            max_connections => max_connections, max_connections_per_peer => max_connections_per_peer,
            max_pending_connections => max_pending_connections, target_peers => target_peers,
            peer_excess => peer_excess, reserved_outbound_peers => reserved_outbound_peers,
            max_peers_per_ip => max_peers_per_ip, max_peers_per_subnet => max_peers_per_subnet,
            peer_limits_exempt => peer_limits_exempt, private_networks => private_networks,
            max_known_peers => max_known_peers, ping_interval_secs => ping_interval_secs,
            ping_max_failures => ping_max_failures, ping_timeout_secs => ping_timeout_secs,
            quic_dial_timeout_ms => quic_dial_timeout_ms,
            breaker_cooldown_secs => breaker_cooldown_secs,
            reconnect_max_delay_secs => reconnect_max_delay_secs,
            idle_connection_timeout_secs => idle_connection_timeout_secs,
            bootstrap_interval_secs => bootstrap_interval_secs,
            gossip_heartbeat_ms => gossip_heartbeat_ms, subscriber_buffer => subscriber_buffer,
            consensus_k => consensus_k,
            consensus_alpha_preference => consensus_alpha_preference,
            consensus_alpha_confidence => consensus_alpha_confidence,
            validators => validators,
            consensus_beta_virtuous => consensus_beta_virtuous,
            consensus_beta_rogue => consensus_beta_rogue,
            consensus_polls_in_flight => consensus_polls_in_flight,
            consensus_batch_size => consensus_batch_size,
            consensus_query_timeout_ms => consensus_query_timeout_ms,
            patterns_anti_entropy_secs => patterns_anti_entropy_secs,
            patterns_gossip_delay_ms => patterns_gossip_delay_ms,
            membership_timeout_ms => membership_timeout_ms,
            max_pending_handshakes => max_pending_handshakes,
            peer_message_rate => peer_message_rate, peer_request_rate => peer_request_rate,
            ban_secs => ban_secs, ban_threshold => ban_threshold,
            model_enabled => model_enabled, model_share_secs => model_share_secs,
            model_min_confidence => model_min_confidence,
            model_feature_dim => model_feature_dim, model_seed => model_seed,
            model_save_outcomes => model_save_outcomes,
        );
        if let Some(authority) = &self.authority {
            c.authority = Some(authority.clone());
        }
        if let Some(certificate) = &self.certificate {
            c.certificate = Some(certificate.clone());
        }
        if self.no_quic {
            c.quic = false;
        }
        if self.no_tcp {
            c.tcp = false;
        }
        if self.api_allow_remote {
            c.api_allow_remote = true;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "network = \"file\"\ntarget_peers = 5\nquic = true\n").unwrap();
        let cli = Cli::try_parse_from([
            "agentmesh",
            "run",
            "--config",
            path.to_str().unwrap(),
            "--network",
            "flag",
            "--no-quic",
            "--bootstrap",
            "/ip4/1.2.3.4/tcp/1/p2p/x",
            "--bootstrap",
            "/ip4/1.2.3.5/tcp/1/p2p/y",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.network, "flag");
        assert_eq!(c.target_peers, 5);
        assert!(!c.quic);
        assert_eq!(c.bootstrap.len(), 2);
    }

    #[test]
    fn every_client_command_parses_with_the_global_flags() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        // clap's own check misses an argument that shares a global flag's
        // name in a subcommand: parsing panics then. Parse each one.
        let commands: &[&[&str]] = &[
            &["status"],
            &["peers"],
            &["publish", "c", "b"],
            &["propose", "k=v"],
            &["claim", "t", "--claimant", "a"],
            &["task", "t"],
            &["vertex", "00"],
            &["subscribe", "c"],
            &["patterns", "put", "{}"],
            &["patterns", "get", "p"],
            &["patterns", "list", "--tag", "t"],
            &["patterns", "outcome", "p", "--success"],
            &["patterns", "sync"],
        ];
        for args in [
            &["ca", "init", "--key", "k"][..],
            &[
                "ca",
                "issue",
                "--peer",
                "p",
                "--scopes",
                "all",
                "--expires",
                "1d",
            ],
            &["ca", "show", "c.cert"],
            &[
                "model", "train", "--data", "d.jsonl", "--out", "m", "--dim", "1024",
            ],
            &["model", "eval", "--data", "d.jsonl", "--char-ngrams", "3-5"],
        ] {
            Cli::try_parse_from(["agentmesh"].iter().chain(args.iter()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        for args in commands {
            let line = ["agentmesh"]
                .iter()
                .chain(args.iter())
                .chain(["--api", "127.0.0.1:1", "--json"].iter());
            Cli::try_parse_from(line).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
}
