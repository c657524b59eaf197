//! Node configuration. Every setting is declared once, in `sections.rs`,
//! which gives it its TOML key, default, `--flag` and `AGENTMESH_*`
//! variable. A TOML file is read first, the environment and flags are laid
//! over it (clap resolves env < flag), and [`Settings::from_config`] checks
//! what the types alone cannot, naming the setting that is wrong.

mod reference;
pub(crate) mod section;
mod sections;
mod settings;

pub use reference::{defaults_toml, reference_markdown, with_defaults_in_help};
pub use section::{Millis, Secs, SettingDoc};
pub use sections::*;
pub use settings::{
    is_quic, is_tcp, BootstrapPeer, MembershipSettings, Settings, MAX_MESSAGE_BYTES_LIMIT,
    TCP_SETUP_TIMEOUT,
};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration: one table per section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub network: NetworkConfig,
    pub nat: NatConfig,
    pub peers: PeersConfig,
    pub consensus: ConsensusConfig,
    pub patterns: PatternsConfig,
    pub membership: MembershipConfig,
    pub model: ModelConfig,
    pub api: ApiConfig,
}

/// The flags and variables of every section (see `agentmesh run --help`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ConfigFlags {
    #[command(flatten)]
    pub node: NodeFlags,
    #[command(flatten)]
    pub network: NetworkFlags,
    #[command(flatten)]
    pub nat: NatFlags,
    #[command(flatten)]
    pub peers: PeersFlags,
    #[command(flatten)]
    pub consensus: ConsensusFlags,
    #[command(flatten)]
    pub patterns: PatternsFlags,
    #[command(flatten)]
    pub membership: MembershipFlags,
    #[command(flatten)]
    pub model: ModelFlags,
    #[command(flatten)]
    pub api: ApiFlags,
}

impl ConfigFlags {
    /// Lays the flags and variables that were given over `c`.
    pub fn overlay(&self, c: &mut Config) {
        self.node.overlay(&mut c.node);
        self.network.overlay(&mut c.network);
        self.nat.overlay(&mut c.nat);
        self.peers.overlay(&mut c.peers);
        self.consensus.overlay(&mut c.consensus);
        self.patterns.overlay(&mut c.patterns);
        self.membership.overlay(&mut c.membership);
        self.model.overlay(&mut c.model);
        self.api.overlay(&mut c.api);
    }
}

impl Config {
    /// Every setting's reference row, section by section.
    pub fn reference() -> Vec<SettingDoc> {
        [
            NodeConfig::reference(),
            NetworkConfig::reference(),
            NatConfig::reference(),
            PeersConfig::reference(),
            ConsensusConfig::reference(),
            PatternsConfig::reference(),
            MembershipConfig::reference(),
            ModelConfig::reference(),
            ApiConfig::reference(),
        ]
        .concat()
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        toml::from_str(&text).map_err(|e| {
            // A file written before settings were grouped into sections
            // gets told where each setting went, not just a type error.
            let moved = toml::from_str::<toml::Table>(&text)
                .ok()
                .and_then(|table| moved_settings(&table));
            parse_error(moved.unwrap_or_else(|| e.to_string().trim_end().replace('\n', " ")))
        })
    }
}

/// Settings at the top level of a file, where they were before sections
/// existed: where each one belongs now (`None` if there are none).
fn moved_settings(table: &toml::Table) -> Option<String> {
    let reference = Config::reference();
    let moves: Vec<String> = table
        .iter()
        .filter(|(_, value)| !value.is_table())
        .filter_map(|(key, _)| {
            // Old names were the flags' (`consensus_k`) or the keys'.
            let doc = reference
                .iter()
                .find(|d| d.id == key.as_str() || d.key == key.as_str());
            match (key.as_str(), doc) {
                // The flat file's `api` was the address.
                ("api", _) => Some("'api' is now 'listen' in [api]".to_string()),
                ("network", _) => Some("'network' is now 'network' in [node]".to_string()),
                (_, Some(d)) => Some(format!("'{key}' is now '{}' in [{}]", d.key, d.section)),
                (_, None) => None,
            }
        })
        .collect();
    (!moves.is_empty()).then(|| {
        format!(
            "settings are grouped in sections now (see docs/configuration.md): {}",
            moves.join("; ")
        )
    })
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
    /// `setting` is `section.key`, as in the file.
    #[error("invalid setting '{setting}': {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    /// An environment variable that earlier versions read.
    #[error("{old} is no longer read: {instead}")]
    Retired {
        old: &'static str,
        instead: &'static str,
    },
}

/// Variables earlier versions read, and what replaced them: refused rather
/// than ignored, so that an upgrade never silently drops a setting.
const RETIRED_VARIABLES: [(&str, &str); 2] = [
    (
        "AGENTMESH_NO_QUIC",
        "set AGENTMESH_QUIC=false (or pass --quic false)",
    ),
    (
        "AGENTMESH_NO_TCP",
        "set AGENTMESH_TCP=false (or pass --tcp false)",
    ),
];

/// Refuses variables of earlier versions that are set.
pub fn check_retired_variables() -> Result<(), ConfigError> {
    for (old, instead) in RETIRED_VARIABLES {
        if std::env::var_os(old).is_some() {
            return Err(ConfigError::Retired { old, instead });
        }
    }
    Ok(())
}

pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}
