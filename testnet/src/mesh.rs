//! A local testnet: N node processes, node 0 alone, every other node given
//! only node 0 as its bootstrap peer.

use crate::hosts::Hosts;
use crate::process::{NodeProcess, NodeSpec};
use crate::wait;
use anyhow::{Context, Result};
use futures::future::join_all;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct TestnetOptions {
    pub nodes: usize,
    pub root: PathBuf,
    pub network: String,
    pub bin: PathBuf,
    /// Extra `agentmesh run` arguments for every node.
    pub extra_args: Vec<String>,
    /// Extra arguments for node i only (e.g. its certificate).
    pub node_args: Vec<Vec<String>>,
    /// Print progress lines to standard error.
    pub progress: bool,
    /// Nodes outlive this process (for `up`/`down`).
    pub detached: bool,
    /// Run node i on namespaced host i instead of loopback.
    pub hosts: Option<Arc<Hosts>>,
}

impl TestnetOptions {
    pub fn new(nodes: usize, root: &Path, bin: &Path) -> TestnetOptions {
        TestnetOptions {
            nodes,
            root: root.to_path_buf(),
            network: format!("testnet-{}", std::process::id()),
            bin: bin.to_path_buf(),
            extra_args: vec![],
            node_args: vec![],
            progress: false,
            detached: false,
            hosts: None,
        }
    }

    pub fn spec(&self, index: usize) -> NodeSpec {
        let dir = self.root.join(format!("node-{index}"));
        let mut spec = match &self.hosts {
            Some(hosts) => NodeSpec::on_host(dir, &self.network, hosts, index),
            None => NodeSpec::local(dir, &self.network),
        };
        spec.extra_args.extend(self.extra_args.iter().cloned());
        if let Some(args) = self.node_args.get(index) {
            spec.extra_args.extend(args.iter().cloned());
        }
        spec
    }
}

pub struct Testnet {
    pub options: TestnetOptions,
    pub nodes: Vec<NodeProcess>,
}

fn progress(options: &TestnetOptions, line: &str) {
    if options.progress {
        eprintln!("[testnet] {line}");
    }
}

impl Testnet {
    /// Starts node 0, then the others (in parallel), each bootstrapped to node 0.
    pub async fn start(options: TestnetOptions) -> Result<Testnet> {
        anyhow::ensure!(options.nodes >= 1, "a testnet needs at least one node");
        std::fs::create_dir_all(&options.root)
            .with_context(|| format!("cannot create {}", options.root.display()))?;
        progress(&options, &format!("starting node 1/{}", options.nodes));
        let first = NodeProcess::start(&options.bin, options.spec(0), options.detached).await?;
        let bootstrap = first.bootstrap_addrs();
        let mut nodes = vec![first];
        let rest = (1..options.nodes).map(|i| {
            let mut spec = options.spec(i);
            spec.bootstrap = bootstrap.clone();
            NodeProcess::start(&options.bin, spec, options.detached)
        });
        for (i, node) in join_all(rest).await.into_iter().enumerate() {
            nodes.push(node.with_context(|| format!("starting node {}", i + 2))?);
        }
        progress(&options, &format!("started {} nodes", nodes.len()));
        Ok(Testnet { options, nodes })
    }

    /// Adds one more node bootstrapped to node 0 (with extra arguments).
    pub async fn add_node(&mut self, extra_args: &[&str]) -> Result<&NodeProcess> {
        let mut spec = self.options.spec(self.nodes.len());
        spec.bootstrap = self.nodes[0].bootstrap_addrs();
        spec.extra_args
            .extend(extra_args.iter().map(|s| s.to_string()));
        let node = NodeProcess::start(&self.options.bin, spec, self.options.detached).await?;
        self.nodes.push(node);
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// Waits until every node is connected to every other node.
    pub async fn wait_full_mesh(&self, timeout: Duration) -> Result<()> {
        let want = self.nodes.len() - 1;
        let opts = &self.options;
        wait::until(
            "every node to connect to every other",
            timeout,
            || async move {
                let counts = join_all(self.nodes.iter().map(|n| n.client.status())).await;
                let mut full = 0;
                for status in counts {
                    if status?.connected_peers >= want {
                        full += 1;
                    }
                }
                progress(
                    opts,
                    &format!(
                        "mesh: {full}/{} nodes connected to all {want} others",
                        self.nodes.len()
                    ),
                );
                Ok((full == self.nodes.len()).then_some(()))
            },
        )
        .await
    }

    /// Waits until node `i` is connected to exactly `count` peers.
    pub async fn wait_connected(&self, i: usize, count: usize, timeout: Duration) -> Result<()> {
        let client = &self.nodes[i].client;
        wait::until(
            &format!("node {i} to have {count} peers"),
            timeout,
            || async move { Ok((client.status().await?.connected_peers == count).then_some(())) },
        )
        .await
    }

    /// Waits until, on every node, every other node subscribes to `family`'s
    /// topic (so a publish reaches everyone).
    pub async fn wait_topic(&self, family: &str, timeout: Duration) -> Result<()> {
        let want = self.nodes.len() - 1;
        for node in 0..self.nodes.len() {
            self.wait_remote_subscribers(node, family, want, timeout)
                .await?;
        }
        Ok(())
    }

    /// Waits until node `node` sees at least `count` peers subscribed to
    /// `family`'s topic.
    pub async fn wait_remote_subscribers(
        &self,
        node: usize,
        family: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<()> {
        let client = &self.nodes[node].client;
        wait::until(
            &format!("node {node} to see {count} subscribers of {family}"),
            timeout,
            || async move {
                let channels = client.channels().await?;
                let seen = channels
                    .subscribed
                    .iter()
                    .find(|c| c.family == family)
                    .map_or(0, |c| c.remote_subscribers);
                Ok((seen >= count).then_some(()))
            },
        )
        .await
    }

    /// Kills node `i` with SIGKILL (a crash: nothing is flushed) and returns
    /// how to start it again.
    pub fn kill(&mut self, i: usize) -> NodeSpec {
        let spec = self.nodes[i].spec.clone();
        let placeholder = self.nodes.remove(i);
        placeholder.kill();
        spec
    }

    /// Starts a node again from `spec` (same data directory) at index `i`.
    pub async fn restart(&mut self, i: usize, spec: NodeSpec) -> Result<()> {
        let node = NodeProcess::start(&self.options.bin, spec, self.options.detached).await?;
        self.nodes.insert(i, node);
        Ok(())
    }

    /// Stops every node with SIGTERM (in parallel).
    pub async fn stop(self) -> Result<()> {
        let grace = Duration::from_secs(10);
        let results = join_all(self.nodes.into_iter().map(|n| n.stop(grace))).await;
        results.into_iter().collect::<Result<Vec<_>>>().map(|_| ())
    }
}
