//! Consensus benchmark over real node processes: sustained proposals on
//! every node, finalized transactions and vertices per second, finality and
//! query round-trip percentiles (as the nodes measure them), peak RSS; with
//! all nodes honest, or with one of them replaced by a peer that votes "no"
//! on everything. Also the simulator's cost per simulated round.

use crate::bench::progress;
use crate::mesh::{Testnet, TestnetOptions};
use crate::rogue::RoguePeer;
use agentmesh_consensus::sim::{Sim, SimConfig};
use agentmesh_node::types::TransactionBody;
use anyhow::{Context, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ConsensusBench {
    pub nodes: usize,
    pub byzantine: usize,
    /// Transactions per proposal request.
    pub batch: usize,
    /// Proposal requests in flight per node.
    pub concurrency: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Offered transactions per second over all nodes; 0 sends as fast as
    /// the nodes accept (they answer 503 when too much is undecided).
    pub rate: u64,
}

// Long on purpose: A benchmark reads best as its scenario, top to bottom: set-up, warm-up,
// load, report.
pub async fn consensus(
    bench: &ConsensusBench,
    mut options: TestnetOptions,
) -> Result<serde_json::Value> {
    let honest = bench.nodes - bench.byzantine;
    options.nodes = honest;
    progress(&format!(
        "starting {honest} nodes{}",
        if bench.byzantine > 0 {
            " and one contrary voter"
        } else {
            ""
        }
    ));
    let net = Testnet::start(options).await?;
    net.wait_full_mesh(Duration::from_secs(60)).await?;
    let mut rogue_task = None;
    if bench.byzantine > 0 {
        let mut rogue = RoguePeer::new(&net.options.network)?;
        for node in &net.nodes {
            let target = node.tcp_addr().context("a node without a TCP address")?;
            rogue.connect_consensus(&target).await?;
        }
        let total = bench.warmup + bench.measure + Duration::from_secs(30);
        rogue_task = Some(tokio::spawn(async move { rogue.pump(total).await }));
    }

    // Light load first: one single-transaction proposal per node every
    // 100 ms, for the latency a lone claim sees.
    progress("light load: one proposal per node every 100 ms for 3 s");
    let light_started = Instant::now();
    let mut n = 0u64;
    while light_started.elapsed() < Duration::from_secs(3) {
        for (i, node) in net.nodes.iter().enumerate() {
            let tx = TransactionBody {
                key: format!("light:{i}:{n}"),
                payload: "x".into(),
            };
            node.client.propose(vec![tx]).await?;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let light = worst_percentiles(&net).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let load = spawn_load(&net, bench, stop.clone(), refused.clone());
    progress(&format!(
        "load: {} nodes x {} clients x {} transactions per request; warm-up {:?}, measuring {:?}",
        honest, bench.concurrency, bench.batch, bench.warmup, bench.measure
    ));
    tokio::time::sleep(bench.warmup).await;
    let observer = &net.nodes[0].client;
    let before = observer.consensus().await?;
    let started = Instant::now();
    tokio::time::sleep(bench.measure).await;
    let after = observer.consensus().await?;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    let loaded = worst_percentiles(&net).await?;
    let peak_rss = net
        .nodes
        .iter()
        .filter_map(|n| n.peak_rss_mb())
        .fold(0.0f64, f64::max);
    if let Some(task) = rogue_task {
        task.abort();
    }
    net.stop().await?;
    let tx = after.accepted_transactions - before.accepted_transactions;
    let vertices = after.accepted_vertices - before.accepted_vertices;
    Ok(json!({
        "bench": "consensus",
        "nodes": bench.nodes,
        "byzantine": bench.byzantine,
        "offered_tx_per_s": if bench.rate > 0 { json!(bench.rate) } else { json!("max") },
        "tx_per_s": (tx as f64 / elapsed).round(),
        "vertices_per_s": (vertices as f64 / elapsed * 10.0).round() / 10.0,
        "finality_ms": loaded.finality,
        "query_rtt_ms": {"p95": loaded.rtt_p95},
        "peak_rss_mb": peak_rss,
        "refused_requests": refused.load(Ordering::Relaxed),
        "light_load": {"finality_ms": light.finality, "query_rtt_ms": {"p95": light.rtt_p95}},
        "note": "finality and query round trip: the worst per-node percentile; finality runs from a vertex's timestamp to its acceptance on its author's node, over the node's last 20000 own vertices; refused requests were answered 503 (backpressure) and retried"
    }))
}

/// Sustained proposals on every node of `net` (`bench.concurrency`
/// clients each, `bench.batch` transactions per request, at `bench.rate`
/// over all nodes or as fast as they accept) until `stop`; requests
/// refused with 503 are counted in `refused` and retried.
pub fn spawn_load(
    net: &Testnet,
    bench: &ConsensusBench,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let honest = net.nodes.len();
    let mut load = Vec::new();
    for (i, node) in net.nodes.iter().enumerate() {
        for worker in 0..bench.concurrency {
            let client = node.client.clone();
            let (stop, refused) = (stop.clone(), refused.clone());
            let batch = bench.batch;
            // With an offered rate, each client sends one batch per slot;
            // without one, back to back.
            let clients = (honest * bench.concurrency) as f64;
            let slot = (bench.rate > 0)
                .then(|| Duration::from_secs_f64(batch as f64 * clients / bench.rate as f64));
            load.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut next = tokio::time::Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(slot) = slot {
                        next += slot;
                        tokio::time::sleep_until(next).await;
                    }
                    let txs = (0..batch)
                        .map(|j| TransactionBody {
                            key: format!("bench:{i}:{worker}:{n}:{j}"),
                            payload: "x".into(),
                        })
                        .collect();
                    n += 1;
                    if client.propose(txs).await.is_err() {
                        // Saturated (503): back off briefly.
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
    }
    load
}

struct Worst {
    finality: serde_json::Value,
    rtt_p95: f64,
}

/// The worst per-node finality and query round-trip percentiles so far.
async fn worst_percentiles(net: &Testnet) -> Result<Worst> {
    let (mut p50, mut p95, mut p99, mut rtt) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for node in &net.nodes {
        let s = node.client.consensus().await?;
        p50 = p50.max(s.finality_ms.p50);
        p95 = p95.max(s.finality_ms.p95);
        p99 = p99.max(s.finality_ms.p99);
        rtt = rtt.max(s.query_rtt_ms.p95);
    }
    Ok(Worst {
        finality: json!({"p50": p50, "p95": p95, "p99": p99}),
        rtt_p95: (rtt * 100.0).round() / 100.0,
    })
}

/// Wall-clock cost of the deterministic simulator at `nodes` engines:
/// honest nodes, 5-50 ms simulated latency, until all is decided.
pub fn simulator(nodes: usize, seed: u64) -> serde_json::Value {
    let mut config = SimConfig::new(nodes, seed);
    config.virtuous_per_node = 5;
    let mean_round_trip_ms = (config.latency_ms.0 + config.latency_ms.1) as f64;
    let started = Instant::now();
    let report = Sim::new(config).run();
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let rounds = report.end_ms as f64 / mean_round_trip_ms;
    json!({
        "bench": "consensus-sim",
        "nodes": nodes,
        "simulated_ms": report.end_ms,
        "rounds": rounds.round(),
        "messages": report.messages,
        "wall_ms": wall_ms.round(),
        "wall_ms_per_round": (wall_ms / rounds * 100.0).round() / 100.0,
        "safety_violations": report.safety_violations.len(),
        "note": "a round is one mean query round trip (55 ms simulated)"
    })
}
