//! Benchmarks over real node processes. They print JSON; tests never assert
//! wall-clock figures.

use crate::collect::Collector;
use crate::mesh::{Testnet, TestnetOptions};
use agentmesh_node::types::{BatchMessage, PublishBatch};
use anyhow::Result;
use futures::future::join_all;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GossipBench {
    pub nodes: usize,
    /// Messages in the light-load latency phase.
    pub light_messages: usize,
    /// Pause between light-load publishes.
    pub light_interval: Duration,
    /// Offered rates (messages/s over all nodes) of the throughput steps.
    pub rates: Vec<u64>,
    /// Length of each throughput step.
    pub step: Duration,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// p50, p95 and p99 of sorted latencies, as the benchmarks report them.
pub fn latency_summary(sorted: &[f64]) -> serde_json::Value {
    json!({
        "p50": percentile(sorted, 50.0),
        "p95": percentile(sorted, 95.0),
        "p99": percentile(sorted, 99.0),
    })
}

pub fn progress(line: &str) {
    eprintln!("[bench] {line}");
}

pub const CHANNEL: &str = "bench:gossip";

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
    let light = paced_latency(
        &net,
        &mut collector,
        bench.light_messages,
        bench.light_interval,
        Duration::from_secs(30),
    )
    .await?;
    anyhow::ensure!(
        light.delivered == light.expected,
        "light load: only {} of {} deliveries arrived",
        light.delivered,
        light.expected
    );
    let latencies = light.latencies_ms;

    // Phase 2: sustained throughput. Every node publishes at a fixed rate
    // (batches through POST /v1/messages every 10 ms); the offered rate
    // steps up until some message is not delivered to every node in time
    // or a subscriber lags. The figure is the highest achieved rate at
    // which every message reached every node.
    let mut steps = Vec::new();
    let mut sustained = 0.0f64;
    for &rate in &bench.rates {
        let step = load_step(&net, &mut collector, rate, bench.step).await?;
        progress(&format!(
            "offered {rate}/s: published {:.0}/s, {} of {} delivered everywhere{}",
            step.published_per_s,
            step.fully_delivered,
            step.published,
            if step.lagged > 0 {
                format!(", {} dropped for slow readers", step.lagged)
            } else {
                String::new()
            }
        ));
        let complete = step.fully_delivered == step.published && step.lagged == 0;
        steps.push(json!({
            "offered_msgs_per_s": rate,
            "published_msgs_per_s": step.published_per_s,
            "published": step.published,
            "fully_delivered": step.fully_delivered,
            "lagged": step.lagged,
            "complete": complete,
        }));
        if !complete {
            break;
        }
        sustained = sustained.max(step.published_per_s);
    }
    let peak_rss = net
        .nodes
        .iter()
        .filter_map(|n| n.peak_rss_mb())
        .fold(0.0, f64::max);
    // With an authority: each node's time from connection to admission of
    // its last admitted peer.
    let mut handshakes = Vec::new();
    for node in &net.nodes {
        if let Some(ms) = node.client.status().await?.security.last_handshake_ms {
            handshakes.push(ms);
        }
    }
    let result = json!({
        "bench": "gossip",
        "membership_handshake_ms": handshakes,
        "nodes": net.nodes.len(),
        "latency_ms": latency_summary(&latencies),
        "latency_samples": latencies.len(),
        "throughput_msgs_per_s": sustained,
        "deliveries_per_s": sustained * net.nodes.len() as f64,
        "steps": steps,
        "peak_rss_mb": peak_rss,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    drop(collector);
    net.stop().await?;
    Ok(result)
}

struct StepResult {
    published: usize,
    published_per_s: f64,
    fully_delivered: usize,
    lagged: u64,
}

const TICK: Duration = Duration::from_millis(10);

async fn load_step(
    net: &Testnet,
    collector: &mut Collector,
    rate: u64,
    length: Duration,
) -> Result<StepResult> {
    let per_tick = ((rate as f64 / net.nodes.len() as f64) * TICK.as_secs_f64()).max(1.0);
    let lagged_before = collector.lagged;
    let started = Instant::now();
    let publishers = net.nodes.iter().map(|node| {
        let client = node.client.clone();
        async move {
            let mut ids = Vec::new();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut owed = 0.0f64;
            while started.elapsed() < length {
                tick.tick().await;
                owed += per_tick;
                let n = owed.floor() as usize;
                owed -= n as f64;
                if n == 0 {
                    continue;
                }
                let batch = PublishBatch {
                    messages: (0..n)
                        .map(|i| BatchMessage {
                            channel: CHANNEL.into(),
                            body: json!(i),
                        })
                        .collect(),
                };
                match client.publish_many(&batch).await {
                    Ok(receipts) => ids.extend(receipts.into_iter().map(|r| r.id)),
                    Err(e) => tracing::debug!(error = %e, "publish failed under load"),
                }
            }
            ids
        }
    });
    // Keep reading subscriptions while publishing, as a real agent would.
    let publish_all = join_all(publishers);
    tokio::pin!(publish_all);
    let published = loop {
        tokio::select! {
            ids = &mut publish_all => break ids,
            _ = collector.next(Duration::from_millis(100)) => {}
        }
    };
    let publish_secs = started.elapsed().as_secs_f64();
    let ids: HashSet<String> = published.into_iter().flatten().collect();
    let _ = collector
        .wait_for_all(&ids, Duration::from_secs(15), |_| {})
        .await;
    let fully_delivered = ids
        .iter()
        .filter(|id| collector.counts.iter().all(|c| c.contains_key(*id)))
        .count();
    Ok(StepResult {
        published: ids.len(),
        published_per_s: ids.len() as f64 / publish_secs,
        fully_delivered,
        lagged: collector.lagged - lagged_before,
    })
}

/// What a paced run of messages measured.
pub struct PacedRun {
    /// Publish→delivery latencies at the other nodes, sorted, in ms.
    pub latencies_ms: Vec<f64>,
    /// Deliveries expected (messages × subscribers) and seen.
    pub expected: usize,
    pub delivered: usize,
}

/// Publishes `messages` messages one at a time, publishers taking turns,
/// one every `interval`, and measures the latency of every delivery at the
/// other nodes (HTTP publish and SSE delivery included). Waits up to
/// `grace` after the last publish for stragglers; never fails on loss.
pub async fn paced_latency(
    net: &Testnet,
    collector: &mut Collector,
    messages: usize,
    interval: Duration,
    grace: Duration,
) -> Result<PacedRun> {
    let mut sent_at: HashMap<String, (usize, Instant)> = HashMap::new();
    let mut latencies = Vec::new();
    let mut expected = HashSet::new();
    for seq in 0..messages {
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
        let pace_until = Instant::now() + interval;
        while let Some(r) = collector
            .next(pace_until.saturating_duration_since(Instant::now()))
            .await
        {
            record_latency(&sent_at, &r, &mut latencies);
        }
    }
    let _ = collector
        .wait_for_all(&expected, grace, |r| {
            record_latency(&sent_at, r, &mut latencies)
        })
        .await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let delivered = collector
        .counts
        .iter()
        .map(|c| expected.iter().filter(|id| c.contains_key(*id)).count())
        .sum();
    Ok(PacedRun {
        latencies_ms: latencies,
        expected: expected.len() * collector.counts.len(),
        delivered,
    })
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
