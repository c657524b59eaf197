//! A network authority for tests and demos, driven through the real CLI
//! (`agentmesh ca init`, `agentmesh id`, `agentmesh ca issue`).

use agentmesh_node::identity;
use agentmesh_protocol::membership::{self, Scope};
use agentmesh_protocol::NodeId;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Authority {
    bin: PathBuf,
    pub key_path: PathBuf,
    /// The public key, as nodes are configured with it.
    pub public_hex: String,
}

fn run(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "agentmesh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The peer id of the node whose data directory is `data_dir` (its
/// identity is created if there is none yet).
pub fn peer_id_of_dir(bin: &Path, data_dir: &Path) -> Result<String> {
    std::fs::create_dir_all(data_dir)?;
    let data_dir = data_dir.display().to_string();
    Ok(run(bin, &["id", "--data-dir", &data_dir])?
        .trim()
        .to_string())
}

impl Authority {
    /// `agentmesh ca init` in `dir`.
    pub fn create(bin: &Path, dir: &Path) -> Result<Authority> {
        std::fs::create_dir_all(dir)?;
        let key_path = dir.join("authority.key");
        let out = run(
            bin,
            &["ca", "init", "--key", &key_path.display().to_string()],
        )?;
        let public_hex = out
            .lines()
            .find_map(|l| l.strip_prefix("authority = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .context("`ca init` printed no authority line")?
            .to_string();
        Ok(Authority {
            bin: bin.to_path_buf(),
            key_path,
            public_hex,
        })
    }

    /// `agentmesh ca issue` for `peer`; returns the certificate's path.
    pub fn issue(&self, peer: &str, scopes: &str, expires: &str, out: &Path) -> Result<PathBuf> {
        run(
            &self.bin,
            &[
                "ca",
                "issue",
                "--key",
                &self.key_path.display().to_string(),
                "--peer",
                peer,
                "--scopes",
                scopes,
                "--expires",
                expires,
                "--out",
                &out.display().to_string(),
            ],
        )?;
        Ok(out.to_path_buf())
    }

    /// A certificate with explicit times (e.g. one that has expired), made
    /// with the library rather than the CLI.
    pub fn issue_at(
        &self,
        holder: NodeId,
        scopes: &str,
        issued_ms: u64,
        expires_ms: u64,
    ) -> Result<Vec<u8>> {
        let key = identity::load(&self.key_path)?;
        let scopes = Scope::parse_list(scopes)?;
        Ok(membership::issue(
            &key, holder, &scopes, issued_ms, expires_ms,
        )?)
    }

    /// `agentmesh run` arguments for a member holding `certificate`.
    pub fn member_args(&self, certificate: &Path) -> Vec<String> {
        vec![
            "--authority".into(),
            self.public_hex.clone(),
            "--certificate".into(),
            certificate.display().to_string(),
        ]
    }
}
