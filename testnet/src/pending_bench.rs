//! What strangers cost a node before they are refused: 256 peers without
//! a certificate connect to a member of an authority-mode network, never
//! finish the membership handshake, and send the largest messages gossip
//! carries (1 MiB on the vertex topic, a full channel frame on a channel
//! topic) for as long as they are pending. Measured once a second: the
//! node's memory, its pending handshakes and the bytes it holds for them.

use crate::authority::{peer_id_of_dir, Authority};
use crate::bench::progress;
use crate::mesh::{Testnet, TestnetOptions};
use crate::rogue::RoguePeer;
use anyhow::{Context, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Current resident memory of a process, in MiB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

async fn stranger(target: String, network: String, stop: Arc<AtomicBool>) -> Result<()> {
    let mut rogue = RoguePeer::new(&network)?;
    rogue.stall_handshake = true;
    rogue.subscribe("coordination")?;
    // Connections being set up at once are limited: try until one is in.
    // Connections being set up at once, and handshakes under way, are
    // limited: try until this one is in (or the run ends).
    while let Err(e) = rogue.connect_consensus(&target).await {
        if stop.load(Ordering::Relaxed) {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let vertex = vec![0x5a; agentmesh_protocol::vertex::MAX_VERTEX_BYTES - 64];
    let channel = vec![
        0xa5;
        agentmesh_node::config::Config::default()
            .network
            .max_message_bytes
    ];
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        // Distinct bytes each time: gossipsub drops repeats by content.
        let mut v = vertex.clone();
        v[..4].copy_from_slice(&n.to_le_bytes());
        let _ = rogue.publish_vertex_bytes(v);
        let mut c = channel.clone();
        c[..4].copy_from_slice(&n.to_le_bytes());
        let _ = rogue.publish_raw("coordination", c);
        n += 1;
        rogue.pump(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `max_pending_handshakes`: the node's setting (None: its default).
pub async fn pending_strangers(
    mut options: TestnetOptions,
    strangers: usize,
    secs: u64,
    max_pending_handshakes: Option<usize>,
) -> Result<serde_json::Value> {
    let authority = Authority::create(&options.bin, &options.root.join("ca"))?;
    options.nodes = 1;
    let peer = peer_id_of_dir(&options.bin, &options.spec(0).data_dir)?;
    let cert = authority.issue(&peer, "all", "1h", &options.root.join("node-0.cert"))?;
    let mut args = authority.member_args(&cert);
    // Room for every stranger to connect, and a handshake deadline longer
    // than the run; how many may be pending at once is the setting under
    // test (all of them: the worst case).
    let config = options.root.join("pending.toml");
    let mut toml = format!(
        "[peers]\ntarget_peers = {}\n[network]\nmax_connections = {}\n\
         [membership]\nmembership_timeout_ms = {}\n",
        strangers + 16,
        2 * strangers + 64,
        (secs + 30) * 1000
    );
    if let Some(n) = max_pending_handshakes {
        toml.push_str(&format!("max_pending_handshakes = {n}\n"));
    }
    std::fs::write(&config, toml)?;
    args.extend(["--config".to_string(), config.display().to_string()]);
    options.node_args.push(args);
    let net = Testnet::start(options).await?;
    let node = &net.nodes[0];
    let target = node.tcp_addr().context("the node has no TCP address")?;
    let baseline = rss_mb(node.pid());
    progress(&format!(
        "{strangers} strangers connect and send maximal messages for {secs} s"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..strangers)
        .map(|_| {
            tokio::spawn(stranger(
                target.clone(),
                net.options.network.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    let (mut max_pending, mut max_held, mut max_rss) = (0usize, 0usize, 0f64);
    while started.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        let security = node.client.status().await?.security;
        let rss = rss_mb(node.pid()).unwrap_or(f64::NAN);
        max_pending = max_pending.max(security.pending_handshakes);
        max_held = max_held.max(security.held_bytes);
        max_rss = max_rss.max(rss);
        samples.push(json!({
            "t_secs": started.elapsed().as_secs(),
            "pending": security.pending_handshakes,
            "held_bytes": security.held_bytes,
            "rss_mb": rss,
        }));
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut connected = 0;
    for t in tasks {
        if matches!(t.await, Ok(Ok(()))) {
            connected += 1;
        }
    }
    let report = json!({
        "bench": "pending",
        "strangers": strangers,
        "max_pending_handshakes": max_pending_handshakes.map_or_else(|| json!("default"), |n| json!(n)),
        "strangers_connected": connected,
        "secs": secs,
        "baseline_rss_mb": baseline,
        "max_rss_mb": max_rss,
        "peak_rss_mb": node.peak_rss_mb(),
        "max_pending": max_pending,
        "max_held_bytes": max_held,
        "samples": samples,
    });
    net.stop().await?;
    Ok(report)
}
