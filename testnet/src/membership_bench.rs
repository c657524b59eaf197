//! What membership costs: the gossip benchmark run on an open network and
//! on one with an authority (every frame carries and is checked against
//! its author's certificate; every connection starts with a handshake).

use crate::authority::{peer_id_of_dir, Authority};
use crate::bench::{self, progress, GossipBench};
use crate::mesh::TestnetOptions;
use anyhow::{Context, Result};
use serde_json::json;

/// Runs `spec` twice from `open` and `members` (fresh options in separate
/// directories); prints nothing, returns the JSON report.
pub async fn membership(
    spec: &GossipBench,
    open: TestnetOptions,
    mut members: TestnetOptions,
) -> Result<serde_json::Value> {
    progress("open network (no authority)");
    let without = bench::gossip(spec, open).await.context("open network")?;

    progress("network with an authority");
    let authority = Authority::create(&members.bin, &members.root.join("ca"))?;
    members.nodes = spec.nodes;
    for i in 0..spec.nodes {
        let peer = peer_id_of_dir(&members.bin, &members.spec(i).data_dir)?;
        let out = members.root.join(format!("node-{i}.cert"));
        let cert = authority.issue(&peer, "all", "1h", &out)?;
        members.node_args.push(authority.member_args(&cert));
    }
    let with = bench::gossip(spec, members)
        .await
        .context("network with an authority")?;

    let figure = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let throughput_ratio =
        figure(&with, "throughput_msgs_per_s") / figure(&without, "throughput_msgs_per_s");
    let mut handshakes: Vec<f64> = with["membership_handshake_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    handshakes.sort_by(f64::total_cmp);
    Ok(json!({
        "bench": "membership",
        "nodes": spec.nodes,
        "open": {
            "throughput_msgs_per_s": without["throughput_msgs_per_s"],
            "latency_ms": without["latency_ms"],
        },
        "authority": {
            "throughput_msgs_per_s": with["throughput_msgs_per_s"],
            "latency_ms": with["latency_ms"],
        },
        "throughput_ratio": throughput_ratio,
        "handshake_ms": {
            "samples": handshakes.len(),
            "p50": bench::percentile(&handshakes, 50.0),
            "max": handshakes.last().copied().unwrap_or(f64::NAN),
        },
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    }))
}

/// Gossip latency among honest nodes before and while a peer floods one of
/// them, and how long until the flooder is banned.
// Long on purpose: A benchmark reads best as its scenario, top to bottom: set-up, flood,
// measurements, report.
pub async fn flood(
    mut options: TestnetOptions,
    messages: usize,
    interval: std::time::Duration,
) -> Result<serde_json::Value> {
    use crate::collect::Collector;
    use crate::rogue::RoguePeer;
    use agentmesh_protocol::{encode_frame, Channel, Envelope, MessageId};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let rate = 1000;
    options.nodes = 3;
    options
        .extra_args
        .extend(["--peer-message-rate".to_string(), rate.to_string()]);
    progress("flood: starting 3 nodes");
    let net = crate::Testnet::start(options).await?;
    net.wait_full_mesh(Duration::from_secs(60)).await?;
    let all: Vec<usize> = (0..net.nodes.len()).collect();
    let mut collector = Collector::subscribe(&net, &all, bench::CHANNEL).await?;
    net.wait_topic("bench", Duration::from_secs(30)).await?;
    let grace = Duration::from_secs(30);
    progress("flood: baseline latency");
    let baseline = bench::paced_latency(&net, &mut collector, messages, interval, grace).await?;

    let mut rogue = RoguePeer::new(&net.options.network)?;
    let target = net.nodes[0]
        .tcp_addr()
        .context("node 0 has no TCP address")?;
    rogue.connect(&target, "bench").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let channel = Channel::parse("bench:flood").expect("valid channel");
            while !stop.load(Ordering::Relaxed) {
                let envelopes: Vec<Envelope> = (0..100)
                    .filter_map(|i: u32| {
                        Some(Envelope {
                            channel: channel.clone(),
                            id: MessageId::random()?,
                            sender: rogue.key.node_id(),
                            // Fresh, so the flood is judged (and charged),
                            // not dropped as a replay.
                            timestamp_ms: agentmesh_node::network::now_ms(),
                            content_type: "text/plain".into(),
                            body: i.to_le_bytes().to_vec(),
                        })
                    })
                    .collect();
                if let Ok(frame) = encode_frame(&rogue.key, &envelopes, None) {
                    if rogue.publish_raw("bench", frame).is_ok() {
                        sent.fetch_add(envelopes.len() as u64, Ordering::Relaxed);
                    }
                }
                rogue.pump(Duration::from_millis(2)).await;
            }
        })
    };
    let flood_started = Instant::now();
    // Watches for the ban while the latency is measured.
    let ban_watch = {
        let client = net.nodes[0].client.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(status) = client.status().await {
                    if status.security.banned_peers > 0 {
                        return Some(flood_started.elapsed().as_secs_f64() * 1e3);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    };
    progress("flood: latency while a peer floods node 0");
    let during = bench::paced_latency(&net, &mut collector, messages, interval, grace).await?;
    let banned_after_ms = ban_watch.await.unwrap_or(None);
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.await;
    let security = net.nodes[0].client.status().await?.security;
    let figures = |run: &bench::PacedRun| {
        json!({
            "p50": bench::percentile(&run.latencies_ms, 50.0),
            "p95": bench::percentile(&run.latencies_ms, 95.0),
            "p99": bench::percentile(&run.latencies_ms, 99.0),
            "delivered": run.delivered,
            "expected": run.expected,
        })
    };
    let result = json!({
        "bench": "flood",
        "peer_message_rate": rate,
        "latency_ms_before": figures(&baseline),
        "latency_ms_during_flood": figures(&during),
        "flood_messages_sent": sent.load(Ordering::Relaxed),
        "over_rate_offences": security.offences.get("over_rate"),
        "banned_after_ms": banned_after_ms,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    drop(collector);
    net.stop().await?;
    Ok(result)
}
