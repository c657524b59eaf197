//! A contested claim across a silent partition, on namespaced hosts in a
//! network with an authority: every node a validator, the hosts split in
//! two halves that drop each other's packets, one claim of the same task on
//! each side. Neither half holds α-confidence of the weight, so no node may
//! report a winner while the partition lasts; once it heals, every node
//! must report the same one.

use crate::authority::{peer_id_of_dir, Authority};
use crate::hosts::Hosts;
use crate::{claims, wait, Testnet, TestnetOptions};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fast failure detection, so the partition is noticed within seconds.
pub const FAST_FAILURE_DETECTION: &[&str] = &[
    "--ping-interval-secs",
    "1",
    "--ping-timeout-secs",
    "2",
    "--ping-max-failures",
    "2",
    "--reconnect-max-delay-secs",
    "2",
    "--quic-dial-timeout-ms",
    "700",
    "--bootstrap-interval-secs",
    "5",
    "--breaker-cooldown-secs",
    "4",
];

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub hosts: usize,
    /// How long the halves were watched while partitioned (ms).
    pub partitioned_ms: u64,
    /// Nodes that reported a winner while partitioned (must be 0).
    pub decided_while_partitioned: usize,
    /// From healing until every node reported the winner (ms).
    pub heal_to_decision_ms: u64,
    /// Every node reports the same winner.
    pub one_winner: bool,
    pub winner: String,
}

/// Runs the scenario on `n` fresh hosts (needs root); node data under `dir`.
pub async fn run(bin: &Path, dir: &Path, n: usize, hold: Duration) -> Result<PartitionReport> {
    if n < 4 {
        bail!("the partition scenario needs at least 4 hosts, got {n}");
    }
    let hosts = Arc::new(Hosts::create(n).context("creating namespaced hosts")?);
    let authority = Authority::create(bin, &dir.join("ca"))?;
    let mut opts = TestnetOptions::new(n, dir, bin);
    for i in 0..n {
        let peer = peer_id_of_dir(bin, &opts.spec(i).data_dir)?;
        let cert = authority.issue(&peer, "all", "2h", &dir.join(format!("node-{i}.cert")))?;
        opts.node_args.push(authority.member_args(&cert));
    }
    opts.hosts = Some(hosts.clone());
    opts.extra_args = FAST_FAILURE_DETECTION
        .iter()
        .map(|s| s.to_string())
        .collect();
    let net = Testnet::start(opts).await?;
    let long = Duration::from_secs(30 + 3 * n as u64);
    net.wait_full_mesh(long).await?;
    wait_validators(&net, n, long).await?;

    let (left, right): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| *i < n / 2);
    hosts.partition(&left, &right)?;
    // Each side notices the other is gone (pings fail within seconds);
    // the other side stays in the validator set, counted as no.
    wait::until("each side to lose the other", long, || async {
        for (i, node) in net.nodes.iter().enumerate() {
            let side = if i < n / 2 { left.len() } else { right.len() };
            if node.client.status().await?.connected_peers >= side {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    let claimants = vec![
        (0, "agent-left".to_string()),
        (n - 1, "agent-right".to_string()),
    ];
    claims::claim_at_once(&net, "job-1", &claimants).await?;
    let watch_start = Instant::now();
    let mut decided = std::collections::HashSet::new();
    while watch_start.elapsed() < hold {
        for (i, node) in net.nodes.iter().enumerate() {
            if node.client.task("job-1").await?.winner.is_some() {
                decided.insert(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let partitioned_ms = watch_start.elapsed().as_millis() as u64;
    hosts.heal()?;
    let healed = Instant::now();
    let winners = claims::final_winners(&net, "job-1", Duration::from_secs(180)).await?;
    let heal_to_decision_ms = healed.elapsed().as_millis() as u64;
    let one_winner = winners.iter().all(|w| *w == winners[0]);
    let report = PartitionReport {
        hosts: n,
        partitioned_ms,
        decided_while_partitioned: decided.len(),
        heal_to_decision_ms,
        one_winner,
        winner: winners[0].claimant.clone(),
    };
    net.stop().await?;
    Ok(report)
}

/// Until every node counts every node (itself included) as a validator.
async fn wait_validators(net: &Testnet, n: usize, timeout: Duration) -> Result<()> {
    wait::until("every node in every validator set", timeout, || async {
        for node in &net.nodes {
            if node.client.consensus().await?.validators.count != n {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
}
