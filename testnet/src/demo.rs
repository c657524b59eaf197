//! The demo workload: every node publishes on `coordination`, every node
//! must receive every message exactly once; then a summary table.

use crate::collect::Collector;
use crate::mesh::Testnet;
use anyhow::{ensure, Result};
use std::collections::HashSet;
use std::time::{Duration, Instant};

pub struct ExchangeReport {
    pub published: usize,
    /// Per node: distinct messages received.
    pub received: Vec<usize>,
    pub duplicates: usize,
    pub elapsed: Duration,
}

/// Subscribes every node to `channel`, waits until the topic reaches every
/// node, has each node publish `per_node` messages, and waits until every
/// node has received all of them (its own included, through its local
/// subscription). Fails if anything is missing or duplicated.
pub async fn exchange(
    net: &Testnet,
    channel: &str,
    per_node: usize,
    timeout: Duration,
) -> Result<ExchangeReport> {
    let all: Vec<usize> = (0..net.nodes.len()).collect();
    let mut collector = Collector::subscribe(net, &all, channel).await?;
    let family = channel.split(':').next().unwrap_or(channel);
    net.wait_topic(family, timeout).await?;
    let started = Instant::now();
    let mut expected = HashSet::new();
    for round in 0..per_node {
        for (i, node) in net.nodes.iter().enumerate() {
            let body = serde_json::json!({ "from": i, "round": round, "peer": node.info.peer_id });
            let receipt = node
                .client
                .publish(channel, "application/json", body.to_string().into_bytes())
                .await?;
            expected.insert(receipt.id);
        }
    }
    collector.wait_for_all(&expected, timeout, |_| {}).await?;
    // A fence: once every node has this later message, earlier duplicates
    // (if gossip produced any) would have been delivered before it.
    let fence = net.nodes[0]
        .client
        .publish(channel, "text/plain", b"fence".to_vec())
        .await?;
    collector
        .wait_for_all(&HashSet::from([fence.id]), timeout, |_| {})
        .await?;
    let duplicates = collector.duplicates();
    ensure!(
        duplicates.is_empty(),
        "messages delivered more than once: {duplicates:?}"
    );
    Ok(ExchangeReport {
        published: expected.len(),
        received: collector
            .counts
            .iter()
            .map(|c| c.keys().filter(|id| expected.contains(*id)).count())
            .collect(),
        duplicates: 0,
        elapsed: started.elapsed(),
    })
}

pub async fn print_summary(net: &Testnet, report: Option<&ExchangeReport>) -> Result<()> {
    println!();
    println!(
        "{:<4} {:<54} {:<20} {:>6} {:>9}  listen addresses",
        "node", "peer id", "api", "peers", "received"
    );
    for (i, node) in net.nodes.iter().enumerate() {
        let status = node.client.status().await?;
        let received = report.map_or("-".to_string(), |r| {
            format!("{}/{}", r.received[i], r.published)
        });
        println!(
            "{:<4} {:<54} {:<20} {:>6} {:>9}  {}",
            i,
            status.peer_id,
            node.info.api.to_string(),
            status.connected_peers,
            received,
            status.listen_addrs.join(" ")
        );
    }
    print_nat(net).await?;
    if let Some(r) = report {
        let total = r.published * r.received.len();
        let got: usize = r.received.iter().sum();
        println!();
        println!(
            "coordination: {} messages published, {got}/{total} deliveries, {} duplicates, all delivered in {:.0} ms",
            r.published,
            r.duplicates,
            r.elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Where nodes behind NAT stand, when some are: reachability, whose relay
/// each holds a slot on, and how many of its connections go through one.
async fn print_nat(net: &Testnet) -> Result<()> {
    let mut lines = Vec::new();
    let mut any_private = false;
    let index_of = |peer: &str| {
        net.nodes
            .iter()
            .position(|n| n.info.peer_id == peer)
            .map_or_else(|| peer.to_string(), |i| format!("node {i}"))
    };
    for (i, node) in net.nodes.iter().enumerate() {
        let status = node.client.status().await?;
        let nat = &status.nat;
        any_private |= nat.reachability == "private";
        let mut line = format!("  node {i}: {}", nat.reachability);
        if nat.relay_service {
            line += &format!(", relay for {} slot(s)", nat.relay_reservations);
        }
        if !nat.relays.is_empty() {
            let on: Vec<String> = nat.relays.iter().map(|r| index_of(r)).collect();
            line += &format!(", slot on {}", on.join(" and "));
        }
        line += &format!(
            "; {} relayed connection(s) among {} peers; holes {} punched, {} failed",
            nat.relayed_connections,
            status.connected_peers,
            nat.hole_punches_ok,
            nat.hole_punches_failed
        );
        lines.push(line);
    }
    if any_private {
        println!();
        println!("reachability (AutoNAT), relays and hole punching:");
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}
