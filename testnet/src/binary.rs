//! Finding the `agentmesh` binary the testnet launches.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `AGENTMESH_BIN` if set, else `agentmesh` beside the running executable
/// (cargo puts both in `target/<profile>/`, tests one level deeper in `deps/`).
pub fn locate() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AGENTMESH_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("AGENTMESH_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let candidate = profile_dir()?.join("agentmesh");
    if !candidate.is_file() {
        bail!(
            "no agentmesh binary at {}; build it with `cargo build -p agentmesh-node` or set AGENTMESH_BIN",
            candidate.display()
        );
    }
    Ok(candidate)
}

fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("executable has no directory")?;
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// For tests: builds the node binary with the profile the tests were built
/// with (once per test process), so tests never run a stale binary.
pub fn build_for_tests() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if std::env::var_os("AGENTMESH_BIN").is_some() {
                return locate().map_err(|e| format!("{e:#}"));
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let release = profile_dir()
                .map(|d| d.ends_with("release"))
                .unwrap_or(false);
            let mut cmd = std::process::Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "agentmesh-node",
                "--bin",
                "agentmesh",
            ]);
            if release {
                cmd.arg("--release");
            }
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
            // cargo sets per-package variables for the test process; some
            // build scripts (ring's) rerun when they change, which would
            // rebuild half the dependency tree on every test run.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                let per_package = key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_BIN_EXE_")
                    || matches!(
                        key.as_ref(),
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_MANIFEST_LINKS"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    );
                if per_package {
                    cmd.env_remove(key.as_ref());
                }
            }
            let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err(format!("building agentmesh failed: {status}"));
            }
            locate().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
