//! The gossip benchmark's workload on what an agent fleet would otherwise
//! use: a 3-node NATS cluster (Debian's `nats-server`) with one client per
//! host (the `async-nats` crate). Each host subscribes to one subject and
//! publishes on it; every message must reach the subscribers of all hosts.
//! The phases mirror [`crate::bench::gossip`]: paced messages for latency,
//! then rising offered rates until a step is not delivered everywhere.

use crate::bench::{latency_summary, progress, GossipBench};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SUBJECT: &str = "bench.gossip";
const SERVERS: usize = 3;
const TICK: Duration = Duration::from_millis(10);

/// Where `nats-server` is, if installed.
pub fn nats_server() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    })
}

/// A local NATS cluster; its servers are killed on drop.
struct Cluster {
    servers: Vec<Child>,
    urls: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    fn start(bin: &Path, dir: &Path) -> Result<Cluster> {
        let client_ports: Vec<u16> = (0..SERVERS).map(|_| free_port()).collect::<Result<_>>()?;
        let route_ports: Vec<u16> = (0..SERVERS).map(|_| free_port()).collect::<Result<_>>()?;
        let mut servers = Vec::new();
        for i in 0..SERVERS {
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            let log = std::fs::File::create(dir.join(format!("nats-{i}.log")))?;
            let child = Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &client_ports[i].to_string()])
                .args(["--cluster_name", "bench"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", route_ports[i])])
                .args(["--routes", &routes.join(",")])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            servers.push(child);
        }
        Ok(Cluster {
            servers,
            urls: client_ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
        })
    }
}

/// A delivery: which host's subscriber, which message, when.
type Delivery = (usize, u64, Instant);

struct Hosts {
    clients: Vec<async_nats::Client>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Deliveries per message id.
    counts: HashMap<u64, usize>,
}

fn message_id(host: usize, seq: u64) -> u64 {
    ((host as u64) << 40) | seq
}

impl Hosts {
    async fn connect(cluster: &Cluster, hosts: usize) -> Result<Hosts> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for host in 0..hosts {
            let url = &cluster.urls[host % cluster.urls.len()];
            let deadline = Instant::now() + Duration::from_secs(20);
            let client = loop {
                match async_nats::connect(url).await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() > deadline => {
                        bail!("cannot connect to NATS at {url}: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let mut sub = client.subscribe(SUBJECT).await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Some(id) = msg
                        .payload
                        .get(..8)
                        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    else {
                        continue;
                    };
                    if tx.send((host, id, Instant::now())).is_err() {
                        break;
                    }
                }
            });
            clients.push(client);
        }
        Ok(Hosts {
            clients,
            deliveries: rx,
            counts: HashMap::new(),
        })
    }

    /// Takes the deliveries that arrived by `until`, counting them.
    async fn drain_until(&mut self, until: Instant, mut each: impl FnMut(&Delivery)) {
        while let Ok(Some(d)) = tokio::time::timeout_at(until.into(), self.deliveries.recv()).await
        {
            *self.counts.entry(d.1).or_default() += 1;
            each(&d);
        }
    }

    fn everywhere(&self, ids: &[u64]) -> usize {
        let hosts = self.clients.len();
        ids.iter()
            .filter(|id| self.counts.get(id).copied().unwrap_or(0) >= hosts)
            .count()
    }

    /// Waits until every id reached every host (or `grace` passes).
    async fn settle(&mut self, ids: &[u64], grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.everywhere(ids) < ids.len() && Instant::now() < deadline {
            self.drain_until(Instant::now() + Duration::from_millis(50), |_| {})
                .await;
        }
    }
}

/// The same body size as the agentmesh benchmark's JSON bodies, led by the
/// message id.
fn payload(id: u64) -> Bytes {
    let mut p = id.to_le_bytes().to_vec();
    p.extend_from_slice(b"{\"seq\":0}");
    Bytes::from(p)
}

/// The publish→delivery latency of a delivery at another host than the
/// publisher's, in ms.
fn record_latency(sent: &HashMap<u64, (usize, Instant)>, d: &Delivery, out: &mut Vec<f64>) {
    let (host, id, at) = d;
    if let Some((from, t0)) = sent.get(id) {
        if from != host {
            out.push(at.duration_since(*t0).as_secs_f64() * 1e3);
        }
    }
}

/// Runs `bench`'s workload over a NATS cluster; JSON like the gossip one.
// Long on purpose: A benchmark reads best as its scenario, top to bottom: set-up, warm-up,
// load, report.
pub async fn nats_gossip(bench: &GossipBench, bin: &Path) -> Result<serde_json::Value> {
    let dir = tempfile::Builder::new()
        .prefix("agentmesh-nats-")
        .tempdir()?;
    progress(&format!(
        "NATS: {SERVERS}-server cluster, {} hosts",
        bench.nodes
    ));
    let cluster = Cluster::start(bin, dir.path())?;
    let mut hosts = Hosts::connect(&cluster, bench.nodes).await?;

    // Warm-up: until a probe from every host reaches every host, the
    // cluster's routes and interest are not complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut probe_seq = 1u64 << 39;
    loop {
        let probes: Vec<u64> = (0..bench.nodes)
            .map(|h| message_id(h, probe_seq + h as u64))
            .collect();
        for (h, id) in probes.iter().enumerate() {
            hosts.clients[h].publish(SUBJECT, payload(*id)).await?;
            hosts.clients[h].flush().await?;
        }
        hosts.settle(&probes, Duration::from_secs(1)).await;
        if hosts.everywhere(&probes) == probes.len() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the NATS cluster never formed");
        probe_seq += bench.nodes as u64;
    }

    progress(&format!(
        "NATS latency: {} messages, one every {:?}",
        bench.light_messages, bench.light_interval
    ));
    let mut sent: HashMap<u64, (usize, Instant)> = HashMap::new();
    let mut latencies = Vec::new();
    let mut ids = Vec::new();
    for seq in 0..bench.light_messages as u64 {
        let host = seq as usize % bench.nodes;
        let id = message_id(host, seq);
        let t0 = Instant::now();
        hosts.clients[host].publish(SUBJECT, payload(id)).await?;
        hosts.clients[host].flush().await?;
        sent.insert(id, (host, t0));
        ids.push(id);
        hosts
            .drain_until(t0 + bench.light_interval, |d| {
                record_latency(&sent, d, &mut latencies)
            })
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while hosts.everywhere(&ids) < ids.len() && Instant::now() < deadline {
        hosts
            .drain_until(Instant::now() + Duration::from_millis(50), |d| {
                record_latency(&sent, d, &mut latencies)
            })
            .await;
    }
    latencies.sort_by(f64::total_cmp);

    let mut steps = Vec::new();
    let mut sustained = 0.0f64;
    let mut next_seq = bench.light_messages as u64;
    for &rate in &bench.rates {
        let per_tick = ((rate as f64 / bench.nodes as f64) * TICK.as_secs_f64()).max(1.0);
        let started = Instant::now();
        let publishers = hosts.clients.iter().enumerate().map(|(host, client)| {
            let client = client.clone();
            let first = next_seq;
            async move {
                let mut published = Vec::new();
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut owed = 0.0f64;
                let mut seq = first;
                while started.elapsed() < bench.step {
                    tick.tick().await;
                    owed += per_tick;
                    let n = owed.floor() as usize;
                    owed -= n as f64;
                    for _ in 0..n {
                        let id = message_id(host, seq);
                        seq += 1;
                        if client.publish(SUBJECT, payload(id)).await.is_ok() {
                            published.push(id);
                        }
                    }
                    let _ = client.flush().await;
                }
                published
            }
        });
        let all = futures::future::join_all(publishers);
        tokio::pin!(all);
        let published: Vec<u64> = loop {
            tokio::select! {
                done = &mut all => break done.into_iter().flatten().collect(),
                _ = hosts.drain_until(Instant::now() + Duration::from_millis(100), |_| {}) => {}
            }
        };
        let secs = started.elapsed().as_secs_f64();
        next_seq += (rate * bench.step.as_secs() * 2).max(1_000_000);
        hosts.settle(&published, Duration::from_secs(15)).await;
        let delivered = hosts.everywhere(&published);
        let per_s = published.len() as f64 / secs;
        let complete = delivered == published.len();
        progress(&format!(
            "NATS offered {rate}/s: published {per_s:.0}/s, {delivered} of {} delivered everywhere",
            published.len()
        ));
        steps.push(json!({
            "offered_msgs_per_s": rate,
            "published_msgs_per_s": per_s,
            "published": published.len(),
            "fully_delivered": delivered,
            "complete": complete,
        }));
        hosts.counts.clear();
        if !complete {
            break;
        }
        sustained = sustained.max(per_s);
    }
    Ok(json!({
        "servers": SERVERS,
        "hosts": bench.nodes,
        "latency_ms": latency_summary(&latencies),
        "latency_samples": latencies.len(),
        "throughput_msgs_per_s": sustained,
        "steps": steps,
    }))
}

/// The gossip report with NATS's figures beside it and the ratios
/// (agentmesh / NATS), or a note that NATS was skipped.
pub async fn with_nats_comparison(
    bench: &GossipBench,
    mut report: serde_json::Value,
) -> serde_json::Value {
    let Some(bin) = nats_server() else {
        progress(
            "NATS comparison skipped: nats-server is not installed (apt-get install nats-server)",
        );
        report["nats"] = json!({ "skipped": "nats-server is not installed" });
        return report;
    };
    match nats_gossip(bench, &bin).await {
        Ok(nats) => {
            let f = |v: &serde_json::Value, path: &[&str]| {
                path.iter()
                    .fold(v, |v, k| &v[*k])
                    .as_f64()
                    .unwrap_or(f64::NAN)
            };
            report["vs_nats"] = json!({
                "throughput_ratio": f(&report, &["throughput_msgs_per_s"]) / f(&nats, &["throughput_msgs_per_s"]),
                "p95_latency_ratio": f(&report, &["latency_ms", "p95"]) / f(&nats, &["latency_ms", "p95"]),
            });
            report["nats"] = nats;
        }
        Err(e) => {
            progress(&format!("NATS comparison failed: {e:#}"));
            report["nats"] = json!({ "error": format!("{e:#}") });
        }
    }
    report
}
