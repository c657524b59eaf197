use agentmesh_testnet::bench::{self, GossipBench};
use agentmesh_testnet::consensus_bench::{self, ConsensusBench};
use agentmesh_testnet::hosts::Hosts;
use agentmesh_testnet::process::{pid_alive, signal};
use agentmesh_testnet::state::{NodeState, TestnetState};
use agentmesh_testnet::sync_bench::{self, SyncBench};
use agentmesh_testnet::{binary, wait, Testnet, TestnetOptions};
use agentmesh_testnet::{claims, demo};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "agentmesh-testnet",
    version,
    about = "Run a local agentmesh testnet, its demo and benchmarks"
)]
struct Cli {
    /// The agentmesh binary [default: beside this program, or $AGENTMESH_BIN].
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start N nodes, wait for the mesh, exchange messages, settle a contested
    /// claim, replicate a pattern, print a summary, stop.
    Demo {
        #[arg(default_value_t = 5)]
        nodes: usize,
        /// Directory for node data [default: a fresh temporary directory].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Run the nodes on N separate hosts: one Linux network namespace
        /// each, on a shared bridge (needs root, ip and iptables). Overrides N.
        #[arg(long)]
        hosts: Option<usize>,
        /// With --hosts: put every host but the first behind its own NAT
        /// router, alternately port-restricted cone and symmetric (see
        /// docs/nat.md). The first host stays public: bootstrap and relay.
        #[arg(long, requires = "hosts")]
        nat: bool,
    },
    /// Start N nodes in the background and wait for the mesh.
    Up {
        #[arg(default_value_t = 5)]
        nodes: usize,
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
    },
    /// Show the nodes started by `up`.
    Status {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
    },
    /// Stop the nodes started by `up`.
    Down {
        #[arg(long, default_value_os_t = default_dir())]
        dir: PathBuf,
    },
    /// The consensus simulator's adversarial campaign: RUNS seeded runs of
    /// every scenario (adaptive Byzantine voters, silent partitions, churn,
    /// Sybil ids, 100-way claims); prints one JSON object.
    Campaign {
        #[arg(long, default_value_t = 100)]
        runs: u64,
        /// The first seed; runs use SEED, SEED+1, ...
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Only scenarios whose name contains this (e.g. silent_halves).
        #[arg(long)]
        only: Option<String>,
    },
    /// Benchmarks; each prints one JSON object per line.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// TCP fallback time with UDP blocked, dead-peer detection, reconnection,
    /// gossip under 5% and 10% packet loss (namespaced hosts; needs root).
    Transport,
    /// Hosts behind NAT routers (namespaced; needs root): per NAT kind, time
    /// to a newcomer's first message and to a direct connection, the
    /// hole-punch success rate over N attempts, relayed or direct gossip
    /// latency between two NATed hosts.
    Nat {
        /// Newcomers started behind the port-restricted cone NAT.
        #[arg(long, default_value_t = 50)]
        attempts: usize,
        /// Newcomers started behind the symmetric NAT (each waits for hole
        /// punching to fail).
        #[arg(long, default_value_t = 10)]
        symmetric_attempts: usize,
        /// Every node runs TCP alone (`--quic false`): TCP hole punching.
        #[arg(long)]
        tcp: bool,
    },
    /// Finalized transactions/s, finality and query round-trip percentiles,
    /// peak RSS; all honest, then with one contrary voter; and the
    /// simulator's cost per round at 100 nodes.
    Consensus(ConsensusArgs),
    /// Every one of N loopback nodes claims the same task at once: time until
    /// every node reports the single winner.
    Claims {
        #[arg(long, default_value_t = 60)]
        nodes: usize,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// A claim on each side of a silent 50/50 partition of N namespaced
    /// hosts with an authority (needs root): nothing may be decided while
    /// partitioned; after healing, one winner everywhere.
    Partition {
        #[arg(long, default_value_t = 30)]
        hosts: usize,
        /// How long the partition is held and watched.
        #[arg(long, default_value_t = 20)]
        hold_secs: u64,
    },
    /// Pattern sync: a fresh node reconciling N patterns from a peer (time,
    /// bytes, peak RSS), and replication throughput across several nodes.
    Sync {
        /// Patterns the fresh node reconciles.
        #[arg(long, default_value_t = 100_000)]
        patterns: usize,
        /// Nodes of the replication run.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Patterns written (spread over the nodes) in the replication run.
        #[arg(long, default_value_t = 20_000)]
        replicated: usize,
    },
    /// Gossip latency at light load, sustained throughput, peak RSS; the same
    /// workload on a 3-node NATS cluster beside it (skipped, saying so, where
    /// nats-server is not installed).
    Gossip {
        #[arg(long, default_value_t = 7)]
        nodes: usize,
        #[command(flatten)]
        load: GossipLoad,
    },
    /// Gossip latency among honest nodes before and while a peer floods one
    /// of them, and how soon the flooder is banned.
    Flood {
        #[arg(long, default_value_t = 300)]
        messages: usize,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// The local model on real data (the cargo registry's test functions):
    /// accuracy beside the rule-based recommender and scikit-learn, epoch
    /// time, inference and online-update latency, model size.
    Model {
        /// JSONL data; default: built by scripts/model/dataset.py.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        samples: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Burn backend: ndarray, or flex (a build with `--features flex`).
        #[arg(long, default_value = "ndarray", value_parser = ["ndarray", "flex"])]
        backend: String,
    },
    /// Federated learning: five nodes train on their own shards of the
    /// cargo-registry data (at random, or each seeing only every fifth
    /// crate), then run one merge round as a node does; each node's
    /// accuracy on a common test part before and after, against a model
    /// trained on all of it.
    Federated {
        /// JSONL data; default: built by scripts/model/dataset.py.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        samples: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// A Sybil attack on one node: throwaway identities from many loopback
    /// addresses; slots held by Sybils over time, honest peers kept, bans,
    /// prunes, memory.
    Sybil {
        #[arg(long, default_value_t = 300)]
        identities: usize,
        #[arg(long, default_value_t = 30)]
        addresses: usize,
        /// Addresses whose identities also send garbage.
        #[arg(long, default_value_t = 10)]
        misbehaving_addresses: usize,
        #[arg(long, default_value_t = 60)]
        attack_secs: u64,
    },
    /// Memory of a node while strangers without a certificate stay pending
    /// and send maximal messages (authority mode).
    Pending {
        #[arg(long, default_value_t = 256)]
        strangers: usize,
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// The node's max_pending_handshakes (default: the node's default).
        #[arg(long)]
        max_pending_handshakes: Option<usize>,
    },
    /// The cost of membership: gossip latency and throughput without and
    /// with an authority (ratio), and the membership handshake time.
    Membership {
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        #[command(flatten)]
        load: GossipLoad,
    },
}

#[derive(clap::Args)]
struct ConsensusArgs {
    #[arg(long, default_value_t = 7)]
    nodes: usize,
    /// Byzantine node counts to run, one scenario each (0 or 1).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    byzantine: Vec<usize>,
    /// Transactions per proposal request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Proposal requests in flight per node.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    #[arg(long, default_value_t = 10)]
    measure_secs: u64,
    /// Engines in the simulator run.
    #[arg(long, default_value_t = 100)]
    sim_nodes: usize,
    /// Offered transactions/s over all nodes, one scenario each; 0 means
    /// as fast as the nodes accept.
    #[arg(long, value_delimiter = ',', default_value = "10000,0")]
    rates: Vec<u64>,
    /// Instead of the scenarios above, the long run: the first rate offered
    /// for this many seconds by honest nodes, then memory, disk per
    /// transaction, start-up time and a new node's bootstrapping
    /// (docs/benchmarks.md).
    #[arg(long, default_value_t = 0)]
    long_run_secs: u64,
}

/// The load of a gossip benchmark.
#[derive(clap::Args, Debug)]
struct GossipLoad {
    /// Messages of the light-load latency phase.
    #[arg(long, default_value_t = 700)]
    messages: usize,
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Offered rates (messages/s, all nodes together) of the throughput steps.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,4000,8000,12000,16000,24000,32000"
    )]
    rates: Vec<u64>,
    /// Seconds per throughput step.
    #[arg(long, default_value_t = 4)]
    step_secs: u64,
}

impl GossipLoad {
    fn spec(self, nodes: usize) -> GossipBench {
        GossipBench {
            nodes,
            light_messages: self.messages,
            light_interval: Duration::from_millis(self.interval_ms),
            rates: self.rates,
            step: Duration::from_secs(self.step_secs),
        }
    }
}

/// A benchmark's testnet options, in a fresh temporary directory (removed
/// when the returned guard drops).
fn bench_testnet(
    nodes: usize,
    bin: &std::path::Path,
) -> Result<(tempfile::TempDir, TestnetOptions)> {
    let tmp = tempfile::Builder::new()
        .prefix("agentmesh-bench-")
        .tempdir()?;
    let options = TestnetOptions::new(nodes, tmp.path(), bin);
    Ok((tmp, options))
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("agentmesh-testnet")
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("agentmesh-testnet: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Campaign { runs, seed, only } = &cli.command {
        anyhow::ensure!(*runs >= 1, "--runs must be at least 1");
        let report = agentmesh_consensus::sim::campaign::run(*runs, *seed, only.as_deref());
        anyhow::ensure!(!report.scenarios.is_empty(), "no scenario matches {only:?}");
        println!("{}", agentmesh_consensus::sim::campaign::to_json(&report));
        return Ok(());
    }
    let bin = match cli.bin {
        Some(b) => b,
        None => binary::locate()?,
    };
    match cli.command {
        Command::Demo {
            nodes,
            dir,
            hosts,
            nat,
        } => {
            let tmp = tempfile::Builder::new()
                .prefix("agentmesh-demo-")
                .tempdir()?;
            let root = dir.unwrap_or_else(|| tmp.path().to_path_buf());
            let mut options = TestnetOptions::new(hosts.unwrap_or(nodes), &root, &bin);
            options.progress = true;
            if let Some(n) = hosts {
                let placements = agentmesh_testnet::hosts::demo_placements(n, nat);
                eprintln!("[testnet] creating {n} hosts (network namespaces on a bridge)");
                for (i, p) in placements.iter().enumerate() {
                    if let Some(kind) = p.nat() {
                        eprintln!("[testnet] host {i} is behind a {kind:?} NAT");
                    }
                }
                // Removed when the demo ends, fails or is interrupted.
                let created = Hosts::create_placed(&placements)?;
                if nat {
                    // The public bootstrap host only ever receives
                    // connections, so it has nobody to ask for a dial-back:
                    // its address is configured, as an operator would.
                    options.node_args = vec![created.external_address_args(0, false)];
                }
                options.hosts = Some(std::sync::Arc::new(created));
            }
            tokio::select! {
                r = run_demo(options) => r,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; nodes stopped"),
            }
        }
        Command::Up { nodes, dir } => up(nodes, dir, &bin).await,
        Command::Status { dir } => status(dir).await,
        Command::Down { dir } => down(dir).await,
        Command::Campaign { .. } => Ok(()),
        Command::Bench { which } => bench(which, &bin).await,
    }
}

async fn up(nodes: usize, dir: PathBuf, bin: &Path) -> Result<()> {
    if TestnetState::load(&dir).is_ok() {
        anyhow::bail!(
            "a testnet is already up in {}; run `down` first",
            dir.display()
        );
    }
    let mut options = TestnetOptions::new(nodes, &dir, bin);
    options.progress = true;
    options.detached = true;
    options.network = "testnet".into();
    let net = Testnet::start(options).await?;
    let state = TestnetState {
        network: net.options.network.clone(),
        nodes: net
            .nodes
            .iter()
            .map(|n| NodeState {
                pid: n.pid(),
                peer_id: n.info.peer_id.clone(),
                api: n.info.api,
                data_dir: n.spec.data_dir.clone(),
            })
            .collect(),
    };
    state.save(&dir)?;
    net.wait_full_mesh(Duration::from_secs(60)).await?;
    demo::print_summary(&net, None).await?;
    println!("\nnodes keep running; `scripts/testnet.sh status` shows them, `scripts/testnet.sh down` stops them");
    Ok(())
}

async fn status(dir: PathBuf) -> Result<()> {
    let state = TestnetState::load(&dir)?;
    println!(
        "{:<4} {:<8} {:<54} {:<20} {:>6}  state",
        "node", "pid", "peer id", "api", "peers"
    );
    for (i, n) in state.nodes.iter().enumerate() {
        let token_file = n.data_dir.join(agentmesh_node::api::TOKEN_FILE);
        let client = agentmesh_node::client::ApiClient::with_token_file(n.api, &token_file)
            .unwrap_or_else(|_| agentmesh_node::client::ApiClient::new(n.api));
        let (peers, st) = match client.status().await {
            Ok(s) => (s.connected_peers.to_string(), "running".to_string()),
            Err(_) if !pid_alive(n.pid) => ("-".into(), "stopped".into()),
            Err(e) => ("-".into(), format!("not answering: {e}")),
        };
        println!(
            "{:<4} {:<8} {:<54} {:<20} {:>6}  {}",
            i,
            n.pid,
            n.peer_id,
            n.api.to_string(),
            peers,
            st
        );
    }
    Ok(())
}

async fn down(dir: PathBuf) -> Result<()> {
    let state = TestnetState::load(&dir)?;
    for n in &state.nodes {
        if pid_alive(n.pid) {
            signal(n.pid, libc::SIGTERM);
        }
    }
    let pids: Vec<u32> = state.nodes.iter().map(|n| n.pid).collect();
    let stopped = wait::until("the nodes to stop", Duration::from_secs(15), || {
        let pids = pids.clone();
        async move { Ok(pids.iter().all(|p| !pid_alive(*p)).then_some(())) }
    })
    .await;
    if stopped.is_err() {
        for p in &pids {
            signal(*p, libc::SIGKILL);
        }
        eprintln!("some nodes did not stop within 15 s and were killed");
    }
    TestnetState::remove(&dir);
    println!(
        "stopped {} nodes (data kept in {})",
        pids.len(),
        dir.display()
    );
    Ok(())
}

/// `bench ...`: each prints its figures as JSON.
// Long on purpose: A dispatch table: one short arm per benchmark.
async fn bench(which: BenchCommand, bin: &Path) -> Result<()> {
    match which {
        BenchCommand::Claims {
            nodes,
            timeout_secs,
        } => bench_claims(nodes, timeout_secs, bin).await,
        BenchCommand::Partition { hosts, hold_secs } => {
            if let Some(why) = agentmesh_testnet::hosts::unavailable() {
                anyhow::bail!("namespaced hosts are unavailable: {why}");
            }
            let tmp = tempfile::Builder::new()
                .prefix("agentmesh-partition-")
                .tempdir()?;
            let report = agentmesh_testnet::partition::run(
                bin,
                tmp.path(),
                hosts,
                Duration::from_secs(hold_secs),
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        BenchCommand::Transport => {
            for line in agentmesh_testnet::transport_bench::transport(bin).await? {
                println!("{line}");
            }
            Ok(())
        }
        BenchCommand::Nat {
            attempts,
            symmetric_attempts,
            tcp,
        } => {
            anyhow::ensure!(
                attempts >= 1 && symmetric_attempts >= 1,
                "--attempts and --symmetric-attempts must be at least 1"
            );
            if let Some(why) = agentmesh_testnet::hosts::unavailable() {
                anyhow::bail!("namespaced hosts are unavailable: {why}");
            }
            for line in
                agentmesh_testnet::nat_bench::nat(bin, attempts, symmetric_attempts, tcp).await?
            {
                println!("{line}");
            }
            Ok(())
        }
        BenchCommand::Consensus(c) => bench_consensus(c, bin).await,
        BenchCommand::Sync {
            patterns,
            nodes,
            replicated,
        } => {
            anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
            anyhow::ensure!(
                patterns >= 1 && replicated >= nodes,
                "--patterns and --replicated must be positive"
            );
            let (_tmp, options) = bench_testnet(nodes, bin)?;
            let spec = SyncBench {
                patterns,
                nodes,
                replicated,
            };
            let result = sync_bench::sync(&spec, &options)
                .await
                .context("sync benchmark")?;
            println!("{result}");
            Ok(())
        }
        BenchCommand::Gossip { nodes, load } => bench_gossip(nodes, load, bin).await,
        BenchCommand::Flood {
            messages,
            interval_ms,
        } => {
            let (_tmp, options) = bench_testnet(3, bin)?;
            let result = agentmesh_testnet::membership_bench::flood(
                options,
                messages,
                Duration::from_millis(interval_ms),
            )
            .await
            .context("flood benchmark")?;
            println!("{result}");
            Ok(())
        }
        BenchCommand::Federated {
            data,
            samples,
            seed,
        } => {
            let result = tokio::task::spawn_blocking(move || {
                agentmesh_testnet::federated_bench::federated(data, samples, seed)
            })
            .await?
            .context("federated benchmark")?;
            println!("{result}");
            Ok(())
        }
        BenchCommand::Model {
            data,
            samples,
            seed,
            backend,
        } => {
            use agentmesh_neural::model::{set_backend, Backend};
            let backend = if backend == "flex" {
                Backend::Flex
            } else {
                Backend::Ndarray
            };
            set_backend(backend).map_err(|e| anyhow::anyhow!(e))?;
            let result = tokio::task::spawn_blocking(move || {
                agentmesh_testnet::model_bench::model(data, samples, seed)
            })
            .await?
            .context("model benchmark")?;
            println!("{result}");
            Ok(())
        }
        BenchCommand::Sybil {
            identities,
            addresses,
            misbehaving_addresses,
            attack_secs,
        } => {
            let (_dir, options) = bench_testnet(3, bin)?;
            let o = agentmesh_testnet::sybil_bench::SybilOptions {
                identities,
                addresses,
                misbehaving_addresses,
                attack_secs,
                ..Default::default()
            };
            let result = agentmesh_testnet::sybil_bench::sybil_attack(options, &o)
                .await
                .context("sybil benchmark")?;
            println!("{result}");
            Ok(())
        }
        BenchCommand::Pending {
            strangers,
            secs,
            max_pending_handshakes,
        } => {
            let (_dir, options) = bench_testnet(1, bin)?;
            let result = agentmesh_testnet::pending_bench::pending_strangers(
                options,
                strangers,
                secs,
                max_pending_handshakes,
            )
            .await
            .context("pending benchmark")?;
            println!("{result}");
            Ok(())
        }
        BenchCommand::Membership { nodes, load } => {
            let (_open_dir, open) = bench_testnet(nodes, bin)?;
            let (_members_dir, members) = bench_testnet(nodes, bin)?;
            let result =
                agentmesh_testnet::membership_bench::membership(&load.spec(nodes), open, members)
                    .await
                    .context("membership benchmark")?;
            println!("{result}");
            Ok(())
        }
    }
}

async fn bench_claims(nodes: usize, timeout_secs: u64, bin: &Path) -> Result<()> {
    anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
    let (_tmp, options) = bench_testnet(nodes, bin)?;
    let started = std::time::Instant::now();
    let net = agentmesh_testnet::Testnet::start(options).await?;
    net.wait_full_mesh(Duration::from_secs(timeout_secs))
        .await?;
    let mesh_s = started.elapsed().as_secs_f64();
    let report = agentmesh_testnet::claims::contested_claim(
        &net,
        "claimed-by-all",
        Duration::from_secs(timeout_secs),
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({
            "bench": "claims",
            "nodes": nodes,
            "mesh_s": (mesh_s * 10.0).round() / 10.0,
            "decide_ms": report.elapsed.as_millis() as u64,
            "winner": report.winners[0].claimant,
            "one_winner": true,
        })
    );
    net.stop().await
}

async fn bench_consensus(c: ConsensusArgs, bin: &Path) -> Result<()> {
    let ConsensusArgs {
        nodes,
        byzantine,
        batch,
        concurrency,
        warmup_secs,
        measure_secs,
        sim_nodes,
        rates,
        long_run_secs,
    } = c;
    anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
    if long_run_secs > 0 {
        let (_tmp, options) = bench_testnet(nodes, bin)?;
        let spec = ConsensusBench {
            nodes,
            byzantine: 0,
            batch,
            concurrency,
            warmup: Duration::ZERO,
            measure: Duration::from_secs(long_run_secs),
            rate: rates.first().copied().unwrap_or(0),
        };
        let result = agentmesh_testnet::history_bench::long_run(
            &spec,
            Duration::from_secs(long_run_secs),
            options,
        )
        .await
        .context("consensus long run")?;
        println!("{result}");
        return Ok(());
    }
    for (b, rate) in byzantine
        .iter()
        .flat_map(|b| rates.iter().map(move |r| (*b, *r)))
    {
        anyhow::ensure!(b <= 1, "--byzantine takes 0 or 1 (one contrary voter)");
        let (_tmp, options) = bench_testnet(nodes, bin)?;
        let spec = ConsensusBench {
            nodes,
            byzantine: b,
            batch,
            concurrency,
            warmup: Duration::from_secs(warmup_secs),
            measure: Duration::from_secs(measure_secs),
            rate,
        };
        let result = consensus_bench::consensus(&spec, options)
            .await
            .context("consensus benchmark")?;
        println!("{result}");
    }
    println!("{}", consensus_bench::simulator(sim_nodes, 1));
    Ok(())
}

async fn bench_gossip(nodes: usize, load: GossipLoad, bin: &Path) -> Result<()> {
    let (_tmp, options) = bench_testnet(nodes, bin)?;
    let spec = load.spec(nodes);
    let result = bench::gossip(&spec, options)
        .await
        .context("gossip benchmark")?;
    #[cfg(feature = "nats")]
    let result = agentmesh_testnet::nats_bench::with_nats_comparison(&spec, result).await;
    #[cfg(not(feature = "nats"))]
    let result = {
        let mut result = result;
        agentmesh_testnet::bench::progress(
                "NATS comparison skipped: built without the `nats` feature (scripts/testnet.sh bench builds with it)",
            );
        result["nats"] = serde_json::json!({ "skipped": "built without the nats feature" });
        result
    };
    println!("{result}");
    Ok(())
}

async fn run_demo(options: TestnetOptions) -> Result<()> {
    let started = std::time::Instant::now();
    let net = Testnet::start(options).await?;
    net.wait_full_mesh(Duration::from_secs(60)).await?;
    eprintln!(
        "[testnet] mesh formed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    eprintln!("[testnet] every node publishes on 'coordination'");
    let report = demo::exchange(&net, "coordination", 1, Duration::from_secs(30)).await?;
    demo::print_summary(&net, Some(&report)).await?;
    eprintln!("[testnet] every node claims task 'demo-task' for its agent at the same moment");
    let contest = claims::contested_claim(&net, "demo-task", Duration::from_secs(60)).await?;
    claims::print_contest(&contest);
    eprintln!("[testnet] node 0 shares a pattern; the last node reports using it");
    let spread = agentmesh_testnet::patterns::spread(&net, Duration::from_secs(60)).await?;
    agentmesh_testnet::patterns::print_spread(&spread);
    eprintln!("[testnet] the last node asks which pattern fits a task");
    agentmesh_testnet::patterns::recommend(&net, Duration::from_secs(30)).await?;
    eprintln!("[testnet] stopping nodes");
    net.stop().await?;
    println!("demo finished: OK");
    Ok(())
}
