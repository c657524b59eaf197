//! Pattern sync benchmark over real node processes: a fresh node
//! reconciling a large pattern set from one peer (time, bytes moved, peak
//! RSS), and incremental replication throughput (patterns written through
//! the API on every node until all nodes hold all of them).

use crate::bench::progress;
use crate::mesh::{Testnet, TestnetOptions};
use crate::patterns::{put_all, sample, wait_converged};
use agentmesh_node::patterns::views::edit_of;
use agentmesh_protocol::{NodeId, Pattern};
use agentmesh_store::Store;
use anyhow::{Context, Result};
use serde_json::json;
use std::time::{Duration, Instant};

pub struct SyncBench {
    /// Patterns the fresh node reconciles.
    pub patterns: usize,
    /// Nodes and patterns of the replication run.
    pub nodes: usize,
    pub replicated: usize,
}

/// Writes `count` patterns straight into the database of `spec`'s data
/// directory (the node is not running yet): building 100,000 patterns
/// through the API would measure the API, not the sync.
fn seed(data_dir: &std::path::Path, count: usize) -> Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let store = Store::open(&data_dir.join("db")).context("opening the seed database")?;
    let patterns = store.patterns();
    let author = NodeId([42; 32]);
    let mut chunk = Vec::with_capacity(1000);
    for i in 0..count {
        let tags: &[&str] = match i % 3 {
            0 => &["rust", "retry"],
            1 => &["go"],
            _ => &["python", "http", "cache"],
        };
        let input = sample(&format!("seed-{i:07}"), "snippet", tags);
        chunk.push(Pattern::create(
            format!("seed-{i:07}"),
            edit_of(input),
            author,
            1_700_000_000_000 + i as u64,
        )?);
        if chunk.len() == 1000 || i + 1 == count {
            patterns.apply(&chunk)?;
            chunk.clear();
        }
    }
    futures::executor::block_on(store.flush())?;
    Ok(())
}

// Long on purpose: A benchmark reads best as its scenario, top to bottom: set-up, load,
// measurements, report.
pub async fn sync(bench: &SyncBench, options: &TestnetOptions) -> Result<serde_json::Value> {
    // 1. A fresh node reconciles `patterns` from one peer.
    let mut first = options.clone();
    first.nodes = 1;
    first.root = options.root.join("reconcile");
    progress(&format!(
        "writing {} patterns into node 1's database",
        bench.patterns
    ));
    let seeding = Instant::now();
    seed(&first.spec(0).data_dir, bench.patterns)?;
    progress(&format!(
        "seeded in {:.2} s",
        seeding.elapsed().as_secs_f64()
    ));
    let mut net = Testnet::start(first).await?;
    progress(&format!(
        "seeded node up; peak RSS {:?} MB",
        net.nodes[0].peak_rss_mb()
    ));
    net.nodes[0].client.sync_status().await?;
    progress(&format!(
        "seeded node up, its hash tree built; peak RSS {:?} MB",
        net.nodes[0].peak_rss_mb()
    ));
    progress("starting a fresh node bootstrapped to it");
    net.add_node(&[]).await?;
    let started = Instant::now();
    let statuses = wait_converged(
        &net,
        &[0, 1],
        bench.patterns as u64,
        Duration::from_secs(600),
    )
    .await?;
    let reconcile_s = started.elapsed().as_secs_f64();
    let (fresh, seeded) = (&statuses[1].anti_entropy, &statuses[0].anti_entropy);
    let bytes = fresh.bytes_received + fresh.bytes_sent + seeded.bytes_received + seeded.bytes_sent;
    let rss: Vec<f64> = net.nodes.iter().filter_map(|n| n.peak_rss_mb()).collect();
    let reconcile_rss = rss.iter().copied().fold(0.0, f64::max);
    progress(&format!(
        "reconciled in {reconcile_s:.2} s; peak RSS (MB) of the seeded and the fresh node: {rss:?}"
    ));
    net.stop().await?;

    // 2. Incremental replication: patterns written on every node at once.
    let mut many = options.clone();
    many.nodes = bench.nodes;
    many.root = options.root.join("replicate");
    progress(&format!("starting {} nodes", bench.nodes));
    let net = Testnet::start(many).await?;
    net.wait_full_mesh(Duration::from_secs(60)).await?;
    for i in 0..net.nodes.len() {
        let joined = net
            .wait_remote_subscribers(i, "learning", bench.nodes - 1, Duration::from_secs(30))
            .await;
        if let Err(e) = joined {
            // What each node sees, to tell a gossip problem from a slow mesh.
            for (n, node) in net.nodes.iter().enumerate() {
                let channels = node.client.channels().await?;
                progress(&format!(
                    "node {n} channels: {}",
                    serde_json::to_string(&channels.subscribed)?
                ));
            }
            return Err(e);
        }
    }
    let per_node = bench.replicated / bench.nodes;
    let total = per_node * bench.nodes;
    progress(&format!(
        "writing {total} patterns, {per_node} on each node"
    ));
    let started = Instant::now();
    let writes = net.nodes.iter().enumerate().map(|(n, node)| {
        let inputs = (0..per_node)
            .map(|i| sample(&format!("r{n}-{i}"), "snippet", &["bench"]))
            .collect();
        put_all(&node.client, inputs, 16)
    });
    for result in futures::future::join_all(writes).await {
        result?;
    }
    let written_s = started.elapsed().as_secs_f64();
    let all: Vec<usize> = (0..net.nodes.len()).collect();
    let statuses = wait_converged(&net, &all, total as u64, Duration::from_secs(600)).await?;
    let replicated_s = started.elapsed().as_secs_f64();
    let by_gossip: u64 = statuses
        .iter()
        .map(|s| s.replication.patterns_applied)
        .sum();
    let by_anti_entropy: u64 = statuses
        .iter()
        .map(|s| s.anti_entropy.patterns_fetched)
        .sum();
    let replication_rss = net
        .nodes
        .iter()
        .filter_map(|n| n.peak_rss_mb())
        .fold(0.0, f64::max);
    net.stop().await?;

    Ok(json!({
        "bench": "sync",
        "patterns": bench.patterns,
        "reconcile_s": round(reconcile_s),
        "bytes": bytes,
        "replication_patterns_per_s": round(total as f64 / replicated_s),
        "peak_rss_mb": round(reconcile_rss),
        "reconcile_rounds": {
            "fresh_node": fresh.rounds,
            "fresh_node_failed": fresh.rounds_failed,
            "patterns_fetched": fresh.patterns_fetched,
            "patterns_pushed_to_it": seeded.patterns_pushed,
        },
        "replication": {
            "nodes": bench.nodes,
            "patterns": total,
            "api_writes_s": round(written_s),
            "all_nodes_hold_all_s": round(replicated_s),
            "merged_from_gossip": by_gossip,
            "fetched_by_anti_entropy": by_anti_entropy,
            "peak_rss_mb": round(replication_rss),
        },
    }))
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
