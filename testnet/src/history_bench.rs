//! The long-run consensus scenario: sustained load for minutes, then what
//! the history it leaves costs. Memory per node sampled over the run
//! (flat after warm-up, or not), disk bytes per finalized transaction, the
//! start-up time of a node holding that history, and how long and how many
//! bytes a brand-new node takes to bootstrap it.

use crate::bench::progress;
use crate::consensus_bench::{spawn_load, ConsensusBench};
use crate::mesh::{Testnet, TestnetOptions};
use crate::process::rss_mb;
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

// Long on purpose: the scenario reads top to bottom (load, history,
// restart, bootstrap).
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
    // Per sample: the largest resident set of any node (MB).
    let mut rss_samples: Vec<f64> = Vec::new();
    while started.elapsed() < run {
        tokio::time::sleep(SAMPLE_EVERY.min(run.saturating_sub(started.elapsed()))).await;
        let worst = net
            .nodes
            .iter()
            .filter_map(|n| rss_mb(n.pid()))
            .fold(0.0f64, f64::max);
        rss_samples.push((worst * 10.0).round() / 10.0);
        progress(&format!(
            "{:.0} s: largest node RSS {worst:.1} MB",
            started.elapsed().as_secs_f64()
        ));
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last proposals settle before measuring the history.
    let observer = net.nodes[0].client.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let s = observer.consensus().await?;
        if s.processing == 0 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let finalized = status.accepted_transactions;
    let peak_rss = net
        .nodes
        .iter()
        .filter_map(|n| n.peak_rss_mb())
        .fold(0.0f64, f64::max);

    // Start-up with that history: node 1 stopped cleanly and started again,
    // from launch to its API answering.
    let index = 1;
    let spec = net.nodes[index].spec.clone();
    let db = spec.data_dir.join("db");
    let node = net.nodes.remove(index);
    node.stop(Duration::from_secs(10)).await?;
    let disk = dir_bytes(&db);
    let launched = Instant::now();
    net.restart(index, spec)
        .await
        .context("restarting a node")?;
    let startup_ms = launched.elapsed().as_millis() as u64;

    progress("a new node bootstraps the history");
    let fresh = net.nodes.len();
    net.add_node(&[]).await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let bootstrap = loop {
        let s = net.nodes[fresh].client.consensus().await?;
        if s.bootstrap.state == "done" || Instant::now() > deadline {
            break s.bootstrap;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
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
