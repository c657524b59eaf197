//! `<data dir>/node.json`: written once the node listens and serves its API,
//! removed on clean shutdown. Launchers (the testnet, scripts) wait for it
//! and read the actual ports from it, which is what makes port 0 usable.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const READY_FILE: &str = "node.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub peer_id: String,
    pub node_id: String,
    pub network: String,
    pub api: SocketAddr,
    /// Where the API's bearer token is kept.
    pub api_token_file: PathBuf,
    pub listen_addrs: Vec<String>,
    pub pid: u32,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(READY_FILE)
}

pub fn write(data_dir: &Path, info: &ReadyInfo) -> Result<()> {
    let tmp = data_dir.join(format!("{READY_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path(data_dir))
        .with_context(|| format!("cannot write {}", path(data_dir).display()))
}

pub fn read(data_dir: &Path) -> Result<ReadyInfo> {
    let p = path(data_dir);
    let bytes = std::fs::read(&p)
        .with_context(|| format!("cannot read {} (is the node running?)", p.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid node.json", p.display()))
}

pub fn remove(data_dir: &Path) {
    let _ = std::fs::remove_file(path(data_dir));
}
