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
};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration: one table per section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub network: NetworkConfig,
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
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
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
    /// `setting` is `section.key`, as in the file.
    #[error("invalid setting '{setting}': {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}
