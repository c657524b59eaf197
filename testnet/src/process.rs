//! One node process: started from the real binary with its own data
//! directory, ports chosen by the OS, stopped with SIGTERM (or killed).

use crate::hosts::Hosts;
use crate::wait;
use agentmesh_node::client::ApiClient;
use agentmesh_node::ready::{self, ReadyInfo};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub data_dir: PathBuf,
    pub network: String,
    pub bootstrap: Vec<String>,
    /// Listen addresses; by default QUIC and TCP on 127.0.0.1, port 0.
    pub listen: Vec<String>,
    pub api: String,
    pub extra_args: Vec<String>,
    /// Command prefix the node runs under (e.g. `ip netns exec <ns>`).
    pub wrapper: Vec<String>,
    /// Environment variables set for this node only.
    pub env: Vec<(String, String)>,
}

impl NodeSpec {
    pub fn local(data_dir: PathBuf, network: &str) -> NodeSpec {
        NodeSpec {
            data_dir,
            network: network.to_string(),
            bootstrap: vec![],
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1".into(),
                "/ip4/127.0.0.1/tcp/0".into(),
            ],
            api: "127.0.0.1:0".into(),
            extra_args: vec![],
            wrapper: vec![],
            env: vec![],
        }
    }

    /// A node on a namespaced host: fixed ports on the host's own address
    /// (nothing else uses it), the API reachable from outside the namespace.
    pub fn on_host(data_dir: PathBuf, network: &str, hosts: &Hosts, i: usize) -> NodeSpec {
        let addr = hosts.addr(i);
        NodeSpec {
            data_dir,
            network: network.to_string(),
            bootstrap: vec![],
            listen: vec![
                format!("/ip4/{addr}/udp/4001/quic-v1"),
                format!("/ip4/{addr}/tcp/4001"),
            ],
            api: format!("{addr}:7700"),
            extra_args: vec!["--api-allow-remote".into()],
            wrapper: hosts.exec_prefix(i),
            env: vec![],
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "run".to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--network".into(),
            self.network.clone(),
            "--api".into(),
            self.api.clone(),
        ];
        for l in &self.listen {
            args.extend(["--listen".into(), l.clone()]);
        }
        for b in &self.bootstrap {
            args.extend(["--bootstrap".into(), b.clone()]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

pub struct NodeProcess {
    pub spec: NodeSpec,
    pub info: ReadyInfo,
    pub client: ApiClient,
    /// The node's API bearer token.
    pub token: String,
    child: Option<Child>,
}

impl NodeProcess {
    /// Starts the node and waits until it has written its ready file.
    /// `detached` nodes get their own process group (they outlive the
    /// launcher and ignore its Ctrl-C); others are killed when dropped.
    pub async fn start(bin: &Path, spec: NodeSpec, detached: bool) -> Result<NodeProcess> {
        std::fs::create_dir_all(&spec.data_dir)
            .with_context(|| format!("cannot create {}", spec.data_dir.display()))?;
        ready::remove(&spec.data_dir);
        let log_path = spec.data_dir.join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        // `ip netns exec` execs the program, so the pid stays the node's.
        let mut cmd = match spec.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(spec.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,libp2p_gossipsub=warn");
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        use std::os::unix::process::CommandExt;
        if detached {
            cmd.process_group(0);
        } else {
            // If the launcher dies without cleaning up (killed by a signal),
            // its nodes get SIGTERM instead of living on as orphans. The
            // signal follows the spawning thread, which here is a runtime
            // worker that lives as long as the launcher needs its nodes.
            // SAFETY: prctl is async-signal-safe and touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        let dir = spec.data_dir.clone();
        let info = wait::until("the node to start", Duration::from_secs(30), || {
            let exited = child.try_wait();
            let dir = dir.clone();
            let log_path = log_path.clone();
            async move {
                if let Some(status) = exited? {
                    bail!(
                        "node exited with {status} during start-up:\n{}",
                        tail(&log_path, 15)
                    );
                }
                match ready::read(&dir) {
                    Ok(info) if info.pid == pid => Ok(Some(info)),
                    _ => Ok(None),
                }
            }
        })
        .await;
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let token = match std::fs::read_to_string(&info.api_token_file) {
            Ok(token) => token.trim().to_string(),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "cannot read the node's API token {}: {e}",
                    info.api_token_file.display()
                );
            }
        };
        Ok(NodeProcess {
            client: ApiClient::with_token(info.api, Some(&token)),
            token,
            spec,
            info,
            child: if detached { None } else { Some(child) },
        })
    }

    /// A plain HTTP client that sends this node's token on every request
    /// (for tests that shape requests by hand).
    pub fn http(&self) -> agentmesh_node::client::Http {
        self.client.http()
    }

    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    /// The node's addresses with `/p2p/<peer id>` appended, for bootstrapping.
    pub fn bootstrap_addrs(&self) -> Vec<String> {
        self.info
            .listen_addrs
            .iter()
            .map(|a| format!("{a}/p2p/{}", self.info.peer_id))
            .collect()
    }

    /// The node's TCP address with `/p2p/<peer id>` (what a bare libp2p
    /// peer such as the rogue dials).
    pub fn tcp_addr(&self) -> Option<String> {
        self.bootstrap_addrs()
            .into_iter()
            .find(|a| a.contains("/tcp/"))
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after `grace`).
    pub async fn stop(mut self, grace: Duration) -> Result<()> {
        let pid = self.pid();
        signal(pid, libc::SIGTERM);
        let exited = wait::until("the node to exit", grace, || {
            let gone = self.has_exited();
            async move { Ok(gone.then_some(())) }
        })
        .await;
        if exited.is_err() {
            signal(pid, libc::SIGKILL);
            if let Some(child) = self.child.as_mut() {
                let _ = child.wait();
            }
            bail!("node {pid} did not stop within {grace:?} and was killed");
        }
        Ok(())
    }

    /// SIGKILL: the crash case, nothing is flushed.
    pub fn kill(mut self) {
        signal(self.pid(), libc::SIGKILL);
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
    }

    fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => !pid_alive(self.info.pid),
        }
    }

    /// Peak resident memory (VmHWM) in MiB, read from /proc.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        peak_rss_mb(self.pid())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.spec.data_dir.join("node.log"), lines)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    proc_status_mb(pid, "VmHWM:")
}

/// The process's resident set now.
pub fn rss_mb(pid: u32) -> Option<f64> {
    proc_status_mb(pid, "VmRSS:")
}

fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
