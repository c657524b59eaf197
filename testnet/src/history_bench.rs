//! The long-run consensus scenario: sustained load for minutes, then what
//! the history it leaves costs. Memory per node sampled over the run
//! (flat after warm-up, or not), disk bytes per finalized transaction, the
//! start-up time of a node holding that history, and how long and how many
//! bytes a brand-new node takes to bootstrap it.

use crate::bench::progress;
use crate::consensus_bench::{spawn_load, ConsensusBench};
use crate::mesh::{Testnet, TestnetOptions};
use crate::process::rss_mb;
use agentmesh_node::types::{BootstrapView, ConsensusStatus};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The largest resident set of any node now (MB, one decimal).
fn largest_rss(net: &Testnet) -> f64 {
    let worst = net
        .nodes
        .iter()
        .filter_map(|n| rss_mb(n.pid()))
        .fold(0.0f64, f64::max);
    (worst * 10.0).round() / 10.0
}

/// Node 0's status once nothing is left processing (or after 2 min).
async fn settled(net: &Testnet) -> Result<ConsensusStatus> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = net.nodes[0].client.consensus().await?;
        if s.processing == 0 || Instant::now() > deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops node `index` cleanly, measures its database, and starts it again:
/// (database bytes, ms from launch to its API answering).
async fn restart_timed(net: &mut Testnet, index: usize) -> Result<(u64, u64)> {
    let spec = net.nodes[index].spec.clone();
    let node = net.nodes.remove(index);
    node.stop(Duration::from_secs(10)).await?;
    let disk = dir_bytes(&spec.data_dir.join("db"));
    let launched = Instant::now();
    net.restart(index, spec)
        .await
        .context("restarting a node")?;
    Ok((disk, launched.elapsed().as_millis() as u64))
}

/// Adds a brand-new node and waits for the end of its bootstrapping.
async fn fresh_bootstrap(net: &mut Testnet) -> Result<BootstrapView> {
    let fresh = net.nodes.len();
    net.add_node(&[]).await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let s = net.nodes[fresh].client.consensus().await?;
        if s.bootstrap.state == "done" || Instant::now() > deadline {
            return Ok(s.bootstrap);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn long_run(
    bench: &ConsensusBench,
    run: Duration,
    options: TestnetOptions,
) -> Result<serde_json::Value> {
    progress(&format!("starting {} nodes", bench.nodes));
    let mut net = Testnet::start(options).await?;
    net.wait_full_mesh(Duration::from_secs(60)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let load = spawn_load(&net, bench, stop.clone(), refused.clone());
    progress(&format!(
        "long run: {} tx/s offered for {:?}",
        bench.rate, run
    ));
    let started = Instant::now();
    let mut rss_samples: Vec<f64> = Vec::new();
    while started.elapsed() < run {
        tokio::time::sleep(SAMPLE_EVERY.min(run.saturating_sub(started.elapsed()))).await;
        rss_samples.push(largest_rss(&net));
        let mut states = Vec::new();
        for node in &net.nodes {
            if let Ok(s) = node.client.consensus().await {
                states.push(format!(
                    "{}/{}/{}",
                    s.bootstrap.state, s.processing, s.accepted_transactions
                ));
            }
        }
        progress(&format!(
            "{:.0} s: largest node RSS {:.1} MB; bootstrap/processing/accepted tx per node: {}",
            started.elapsed().as_secs_f64(),
            rss_samples.last().copied().unwrap_or(0.0),
            states.join(" ")
        ));
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let finalized = settled(&net).await?.accepted_transactions;
    let peak_rss = net
        .nodes
        .iter()
        .filter_map(|n| n.peak_rss_mb())
        .fold(0.0f64, f64::max);
    progress("restarting node 1 with that history");
    let (disk, startup_ms) = restart_timed(&mut net, 1).await?;
    progress("a new node bootstraps the history");
    let bootstrap = fresh_bootstrap(&mut net).await?;
    net.stop().await?;
    let warm = rss_samples.len().min(3);
    Ok(json!({
        "bench": "consensus_long_run",
        "nodes": bench.nodes,
        "offered_tx_per_s": bench.rate,
        "seconds": elapsed.round(),
        "finalized_tx": finalized,
        "tx_per_s": (finalized as f64 / elapsed).round(),
        "peak_rss_mb": peak_rss,
        "rss_mb_samples": rss_samples,
        "rss_mb_growth_after_warmup": rss_samples.last().copied().unwrap_or(0.0)
            - rss_samples.get(warm.saturating_sub(1)).copied().unwrap_or(0.0),
        "disk_bytes": disk,
        "disk_bytes_per_tx": if finalized > 0 { (disk as f64 / finalized as f64).round() } else { 0.0 },
        "startup_ms": startup_ms,
        "bootstrap": {
            "state": bootstrap.state,
            "vertices": bootstrap.fetched_vertices,
            "transactions": bootstrap.accepted_transactions,
            "bytes": bootstrap.fetched_bytes,
            "seconds": bootstrap.seconds,
        },
        "refused_requests": refused.load(Ordering::Relaxed),
        "note": "rss_mb_samples: the largest node's resident set every 10 s; disk: one node's database after a clean stop; startup: launch to API ready with that history; bootstrap: a brand-new node, first probe to the end of its walk"
    }))
}
