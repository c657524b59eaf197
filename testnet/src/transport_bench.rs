//! Transport benchmark on namespaced hosts (needs root): how long the TCP
//! fallback takes when UDP is blocked, how long a dead peer takes to be
//! noticed and a restarted one to be reconnected, and gossip delivery
//! ratio and latency under packet loss. Default node settings throughout.

use crate::bench::{paced_latency, percentile, progress, CHANNEL};
use crate::collect::Collector;
use crate::hosts::Hosts;
use crate::mesh::{Testnet, TestnetOptions};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

fn options(nodes: usize, root: &Path, bin: &Path, hosts: &Arc<Hosts>) -> TestnetOptions {
    let mut o = TestnetOptions::new(nodes, root, bin);
    o.hosts = Some(hosts.clone());
    o
}

/// From starting a second node (bootstrapped to the first) to the first
/// message of the new node reaching a subscriber on the first.
async fn first_message_ms(bin: &Path, udp_blocked: bool) -> Result<f64> {
    let hosts = Arc::new(Hosts::create(2)?);
    if udp_blocked {
        hosts.block_udp(0, 1)?;
    }
    let dir = tempfile::tempdir()?;
    let mut net = Testnet::start(options(1, dir.path(), bin, &hosts)).await?;
    let mut collector = Collector::subscribe(&net, &[0], CHANNEL).await?;
    let t0 = Instant::now();
    net.add_node(&[]).await?;
    let elapsed = loop {
        net.nodes[1]
            .client
            .publish(CHANNEL, "text/plain", b"hello".to_vec())
            .await?;
        if collector.next(Duration::from_millis(20)).await.is_some() {
            break t0.elapsed();
        }
        anyhow::ensure!(t0.elapsed() < LONG, "no message arrived within {LONG:?}");
    };
    drop(collector);
    net.stop().await?;
    Ok(elapsed.as_secs_f64() * 1e3)
}

/// SIGKILL a node: time until its peer notices; restart it: time until
/// they are connected again.
async fn crash_and_restart_ms(bin: &Path) -> Result<(f64, f64)> {
    let hosts = Arc::new(Hosts::create(2)?);
    let dir = tempfile::tempdir()?;
    let mut net = Testnet::start(options(2, dir.path(), bin, &hosts)).await?;
    net.wait_full_mesh(LONG).await?;
    let t0 = Instant::now();
    let spec = net.kill(1);
    net.wait_connected(0, 0, LONG)
        .await
        .context("dead peer never noticed")?;
    let detect = t0.elapsed();
    let t1 = Instant::now();
    net.restart(1, spec).await?;
    net.wait_full_mesh(LONG).await.context("no reconnection")?;
    let reconnect = t1.elapsed();
    net.stop().await?;
    Ok((detect.as_secs_f64() * 1e3, reconnect.as_secs_f64() * 1e3))
}

async fn under_loss(bin: &Path, nodes: usize, loss: f64) -> Result<Value> {
    let hosts = Arc::new(Hosts::create(nodes)?);
    let dir = tempfile::tempdir()?;
    let net = Testnet::start(options(nodes, dir.path(), bin, &hosts)).await?;
    net.wait_full_mesh(LONG).await?;
    let all: Vec<usize> = (0..nodes).collect();
    let mut collector = Collector::subscribe(&net, &all, CHANNEL).await?;
    net.wait_topic("bench", LONG).await?;
    hosts.packet_loss(loss)?;
    let run = paced_latency(
        &net,
        &mut collector,
        300,
        Duration::from_millis(20),
        Duration::from_secs(20),
    )
    .await?;
    drop(collector);
    hosts.heal()?;
    net.stop().await?;
    // Own deliveries are local; the ratio counts every subscriber.
    Ok(json!({
        "bench": "transport_loss",
        "nodes": nodes,
        "loss": loss,
        "delivery_ratio": run.delivered as f64 / run.expected as f64,
        "latency_ms": {
            "p50": percentile(&run.latencies_ms, 50.0),
            "p95": percentile(&run.latencies_ms, 95.0),
            "p99": percentile(&run.latencies_ms, 99.0),
        },
    }))
}

pub async fn transport(bin: &Path) -> Result<Vec<Value>> {
    progress("first message over QUIC, then with UDP blocked (TCP fallback)");
    let quic_ms = first_message_ms(bin, false).await?;
    let fallback_ms = first_message_ms(bin, true).await?;
    progress("crash and restart");
    let (detect_ms, reconnect_ms) = crash_and_restart_ms(bin).await?;
    let mut out = vec![json!({
        "bench": "transport",
        "first_message_quic_ms": quic_ms,
        "first_message_udp_blocked_ms": fallback_ms,
        "dead_peer_detect_ms": detect_ms,
        "reconnect_after_restart_ms": reconnect_ms,
    })];
    for loss in [0.05, 0.10] {
        progress(&format!("gossip under {:.0}% packet loss", loss * 100.0));
        out.push(under_loss(bin, 5, loss).await?);
    }
    Ok(out)
}
