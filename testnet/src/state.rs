//! `<root>/testnet.json`: what `up` started, so `status` and `down` can find
//! the nodes again from another process.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "testnet.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub pid: u32,
    pub peer_id: String,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TestnetState {
    pub network: String,
    pub nodes: Vec<NodeState>,
}

impl TestnetState {
    pub fn save(&self, root: &Path) -> Result<()> {
        let path = root.join(STATE_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(root: &Path) -> Result<TestnetState> {
        let path = root.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "no testnet is up in {} (cannot read {})",
                root.display(),
                path.display()
            )
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))
    }

    pub fn remove(root: &Path) {
        let _ = std::fs::remove_file(root.join(STATE_FILE));
    }
}
