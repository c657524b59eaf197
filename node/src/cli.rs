//! Command-line interface of the `agentmesh` binary.

use crate::config::{Config, ConfigError, ConfigFlags};
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
    /// Print the agent API's OpenAPI 3 description (JSON), as a node serves
    /// it at /v1/openapi.json.
    Openapi,
    /// The configuration: its reference, its defaults, or a check of one.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Set up a host: create its identity, write a commented configuration
    /// file (public host or behind NAT), print its peer id and, for a
    /// public host, the bootstrap addresses other hosts start with.
    Init(crate::init::InitArgs),
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
        /// Task id (the claim is a transaction with key `task:<id>`).
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
pub enum ConfigCommand {
    /// Print the reference of every setting as Markdown (its key, default,
    /// flag, environment variable and meaning).
    Reference,
    /// Print a configuration file with every setting at its default.
    Defaults,
    /// Check a configuration (file, environment and flags, as `run` takes
    /// them) without starting a node; prints the result as TOML.
    Check(Box<RunArgs>),
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
        /// Where to write the certificate (default: `<peer id>.cert`).
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

/// `agentmesh run`: a configuration file and every setting as a flag and
/// an `AGENTMESH_*` variable (declared in `config::sections`).
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML configuration file (`agentmesh config defaults` prints one with
    /// every setting).
    #[arg(long, env = "AGENTMESH_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ConfigFlags,
}

impl RunArgs {
    /// The config file (if any) with environment and flags laid over it.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        crate::config::check_retired_variables()?;
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.settings.overlay(&mut c);
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
        std::fs::write(
            &path,
            "[node]\nnetwork = \"file\"\n[peers]\ntarget_peers = 5\n[network]\nquic = true\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "agentmesh",
            "run",
            "--config",
            path.to_str().unwrap(),
            "--network",
            "flag",
            "--quic=false",
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
        assert_eq!(c.node.network, "flag");
        assert_eq!(c.peers.target_peers.get(), 5);
        assert!(!c.network.quic);
        assert_eq!(c.network.bootstrap.len(), 2);
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
