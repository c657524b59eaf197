//! Benchmarks over real node processes. They print JSON; tests never assert
//! wall-clock figures.

use crate::collect::Collector;
use crate::mesh::{Testnet, TestnetOptions};
use anyhow::Result;
use futures::future::join_all;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GossipBench {
    pub nodes: usize,
    /// Messages in the light-load latency phase.
    pub light_messages: usize,
    /// Pause between light-load publishes.
    pub light_interval: Duration,
    /// Length of the sustained-load phase.
    pub load: Duration,
    /// Concurrent publish requests per node during the load phase.
    pub in_flight: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn progress(line: &str) {
    eprintln!("[bench] {line}");
}

const CHANNEL: &str = "bench:gossip";

pub async fn gossip(bench: &GossipBench, mut options: TestnetOptions) -> Result<serde_json::Value> {
    options.nodes = bench.nodes;
    progress(&format!("starting {} nodes", bench.nodes));
    let net = Testnet::start(options).await?;
    net.wait_full_mesh(Duration::from_secs(60)).await?;
    let all: Vec<usize> = (0..net.nodes.len()).collect();
    let mut collector = Collector::subscribe(&net, &all, CHANNEL).await?;
    net.wait_topic("bench", Duration::from_secs(30)).await?;

    // Phase 1: light load, one message at a time, publish→delivery latency
    // at every other node (HTTP publish and SSE delivery included).
    progress(&format!(
        "latency: {} messages, one every {:?}",
        bench.light_messages, bench.light_interval
    ));
    let mut sent_at: HashMap<String, (usize, Instant)> = HashMap::new();
    let mut latencies = Vec::new();
    let mut expected = HashSet::new();
    for seq in 0..bench.light_messages {
        let publisher = seq % net.nodes.len();
        let t0 = Instant::now();
        let receipt = net.nodes[publisher]
            .client
            .publish(
                CHANNEL,
                "application/json",
                json!({ "seq": seq }).to_string().into_bytes(),
            )
            .await?;
        sent_at.insert(receipt.id.clone(), (publisher, t0));
        expected.insert(receipt.id);
        // Drain arrivals while pacing, so timing is taken as they arrive.
        let pace_until = Instant::now() + bench.light_interval;
        while let Some(r) = collector
            .next(pace_until.saturating_duration_since(Instant::now()))
            .await
        {
            record_latency(&sent_at, &r, &mut latencies);
        }
    }
    collector
        .wait_for_all(&expected, Duration::from_secs(30), |r| {
            record_latency(&sent_at, r, &mut latencies)
        })
        .await?;
    latencies.sort_by(|a, b| a.total_cmp(b));

    // Phase 2: sustained load from every node at once.
    progress(&format!(
        "throughput: {:?} of load, {} requests in flight per node",
        bench.load, bench.in_flight
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let publishers = net.nodes.iter().map(|node| {
        let client = node.client.clone();
        let stop = stop.clone();
        let in_flight = bench.in_flight;
        async move {
            let workers = (0..in_flight).map(|_| {
                let client = client.clone();
                let stop = stop.clone();
                async move {
                    let mut ids = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client
                            .publish(CHANNEL, "text/plain", b"load".to_vec())
                            .await
                        {
                            Ok(r) => ids.push(r.id),
                            Err(e) => tracing::debug!(error = %e, "publish failed under load"),
                        }
                    }
                    ids
                }
            });
            join_all(workers)
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        }
    });
    let stopper = {
        let stop = stop.clone();
        let load = bench.load;
        async move {
            tokio::time::sleep(load).await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    let (published, ()) = tokio::join!(join_all(publishers), stopper);
    let load_ids: HashSet<String> = published.into_iter().flatten().collect();
    progress(&format!(
        "published {} messages; waiting for delivery everywhere",
        load_ids.len()
    ));
    let delivered_all = collector
        .wait_for_all(&load_ids, Duration::from_secs(60), |_| {})
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let fully_delivered = load_ids
        .iter()
        .filter(|id| collector.counts.iter().all(|c| c.contains_key(*id)))
        .count();
    let peak_rss = net
        .nodes
        .iter()
        .filter_map(|n| n.peak_rss_mb())
        .fold(0.0, f64::max);
    let result = json!({
        "bench": "gossip",
        "nodes": net.nodes.len(),
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p95": percentile(&latencies, 95.0),
            "p99": percentile(&latencies, 99.0),
        },
        "latency_samples": latencies.len(),
        "throughput_msgs_per_s": fully_delivered as f64 / elapsed,
        "deliveries_per_s": (fully_delivered * net.nodes.len()) as f64 / elapsed,
        "load_messages": load_ids.len(),
        "load_fully_delivered": fully_delivered,
        "load_complete": delivered_all.is_ok(),
        "subscriber_lagged": collector.lagged,
        "peak_rss_mb": peak_rss,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    drop(collector);
    net.stop().await?;
    Ok(result)
}

fn record_latency(
    sent_at: &HashMap<String, (usize, Instant)>,
    r: &crate::collect::Received,
    out: &mut Vec<f64>,
) {
    if let Some((publisher, t0)) = sent_at.get(&r.event.id) {
        if *publisher != r.node {
            out.push(r.at.duration_since(*t0).as_secs_f64() * 1e3);
        }
    }
}
