use agentmesh_node::cli::{Cli, ClientArgs, Command, ConfigCommand, PatternsCommand};
use agentmesh_node::client::{ApiClient, SubscriptionItem};
use agentmesh_node::config::{LogFormat, Settings};
use agentmesh_node::types::{PatternInput, TransactionBody};
use agentmesh_node::{identity, logging, node};
use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use futures::StreamExt;
use std::io::Read;

fn main() {
    // The `run` flags' help shows their defaults, taken from the settings'
    // declarations (the flags themselves have none: see config::reference).
    let command = agentmesh_node::config::with_defaults_in_help(Cli::command());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentmesh: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(dispatch(cli.command)) {
        eprintln!("agentmesh: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run(*args).await,
        Command::Config { action } => config(action),
        Command::Openapi => {
            println!("{}", agentmesh_node::api::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::Init(args) => {
            logging::init(LogFormat::Human, "warn");
            print!("{}", agentmesh_node::init::init(&args)?);
            Ok(())
        }
        Command::Id { data_dir } => id(data_dir),
        Command::Keygen { out, force } => keygen(out, force),
        Command::Ca { action } => agentmesh_node::ca::run(action),
        Command::Model { action } => agentmesh_node::model_cli::run(action),
        Command::Status(args) => status(args).await,
        Command::Dashboard(args) => dashboard(args),
        Command::Peers(args) => peers(args).await,
        Command::Publish {
            client,
            channel,
            body,
            content_type,
        } => publish(client, channel, body, content_type).await,
        Command::Propose {
            client,
            transactions,
        } => propose(client, transactions).await,
        Command::Recommend {
            client,
            text,
            keywords,
            framework,
            language,
            k,
        } => {
            let context = agentmesh_neural::Context {
                text,
                keywords,
                framework,
                language,
                ..Default::default()
            };
            let answer = client.client().recommend(&context, k).await?;
            println!("{}", serde_json::to_string(&answer)?);
            Ok(())
        }
        Command::Claim {
            client,
            task,
            claimant,
            wait,
        } => claim(client, task, claimant, wait).await,
        Command::Task { client, task } => {
            let info = client.client().task(&task).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Vertex { client, id } => {
            let info = client.client().vertex(&id).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Patterns { client, action } => patterns(client.client(), action).await,
        Command::Subscribe {
            client,
            pattern,
            count,
        } => subscribe(client, pattern, count).await,
    }
}

fn id(data_dir: std::path::PathBuf) -> Result<()> {
    logging::init(LogFormat::Human, "warn");
    let key = identity::load_or_create(&identity::key_path(&data_dir))?;
    println!("{}", identity::libp2p_keypair(&key)?.public().to_peer_id());
    Ok(())
}

fn keygen(out: std::path::PathBuf, force: bool) -> Result<()> {
    if force && out.exists() {
        std::fs::remove_file(&out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    identity::ensure_not_exists(&out)?;
    let key = agentmesh_protocol::NodeKey::generate()?;
    identity::write_new(&out, &key)?;
    println!("{}", identity::libp2p_keypair(&key)?.public().to_peer_id());
    Ok(())
}

async fn status(args: ClientArgs) -> Result<()> {
    let status = args.client().status().await?;
    print_json_or(&args, &status, || {
        println!("peer id      {}", status.peer_id);
        println!("network      {}", status.network);
        println!("uptime       {} s", status.uptime_secs);
        println!("listening    {}", status.listen_addrs.join(" "));
        let nat = &status.nat;
        println!(
            "reachability {} ({} dial-backs worked, {} failed; mode {})",
            nat.reachability, nat.probes_ok, nat.probes_failed, nat.mode
        );
        if !nat.confirmed_addrs.is_empty() {
            println!("reachable at {}", nat.confirmed_addrs.join(" "));
        }
        if !nat.upnp.is_empty() && nat.upnp != "off" {
            println!("upnp         {}", nat.upnp);
        }
        if !nat.relays.is_empty() {
            println!("relays       {}", nat.relays.join(" "));
            println!("relayed at   {}", nat.relayed_addrs.join(" "));
        }
        println!(
            "peers        {} connected ({} through a relay), {} in routing table, {} known",
            status.connected_peers,
            nat.relayed_connections,
            status.routing_table_peers,
            status.known_peers
        );
        println!(
            "holes        {} punched, {} failed",
            nat.hole_punches_ok, nat.hole_punches_failed
        );
        if nat.relayed_sync_deferred > 0 {
            println!(
                "relay budget {} pattern sync requests deferred (1 MiB a minute per relayed peer)",
                nat.relayed_sync_deferred
            );
        }
        if nat.relay_service {
            println!(
                "relaying     {} slots held for peers, {} circuits open, {} requests refused",
                nat.relay_reservations, nat.relay_circuits, nat.relay_denied
            );
        }
        let m = &status.messages;
        println!(
            "messages     {} published, {} received, {} rejected",
            m.published, m.received, m.rejected
        );
    })
}

fn dashboard(args: ClientArgs) -> Result<()> {
    let token = std::fs::read_to_string(&args.api_token_file).with_context(|| {
        format!(
            "cannot read the API token file {} (the node writes it to <data dir>/api-token; \
             pass --api-token-file)",
            args.api_token_file.display()
        )
    })?;
    println!("http://{}/#token={}", args.api, token.trim());
    Ok(())
}

async fn peers(args: ClientArgs) -> Result<()> {
    let peers = args.client().peers().await?;
    print_json_or(&args, &peers, || {
        println!(
            "{:<54} {:<9} {:<9} {:>9} {:>9} {:>8}  address",
            "peer id", "transport", "breaker", "quic fail", "rtt ms", "rejected"
        );
        for p in &peers {
            let rtt = p
                .rtt
                .as_ref()
                .map_or("-".to_string(), |r| format!("{:.2}", r.mean_ms));
            let addr = p.connections.first().map_or("", |c| c.remote_addr.as_str());
            let transport = serde_json::to_value(&p.transport)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            println!(
                "{:<54} {:<9} {:<9} {:>9} {:>9} {:>8}  {}",
                p.peer_id, transport, p.breaker, p.quic_failures, rtt, p.rejected_messages, addr
            );
        }
    })
}

async fn publish(
    client: ClientArgs,
    channel: String,
    body: String,
    content_type: String,
) -> Result<()> {
    let body = if body == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the body from standard input")?;
        buf
    } else {
        body.into_bytes()
    };
    let receipt = client
        .client()
        .publish(&channel, &content_type, body)
        .await?;
    println!("{}", serde_json::to_string(&receipt)?);
    Ok(())
}

async fn propose(client: ClientArgs, transactions: Vec<String>) -> Result<()> {
    let mut bodies = Vec::new();
    for t in transactions {
        let (key, payload) = t
            .split_once('=')
            .with_context(|| format!("{t:?} is not KEY=PAYLOAD"))?;
        bodies.push(TransactionBody {
            key: key.to_string(),
            payload: payload.to_string(),
        });
    }
    let receipt = client.client().propose(bodies).await?;
    println!("{}", serde_json::to_string(&receipt)?);
    Ok(())
}

async fn claim(
    client: ClientArgs,
    task: String,
    claimant: String,
    wait: Option<u64>,
) -> Result<()> {
    let api = client.client();
    let receipt = api.claim(&task, &claimant).await?;
    let Some(wait) = wait else {
        println!("{}", serde_json::to_string(&receipt)?);
        return Ok(());
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let info = api.task(&task).await?;
        if info.winner.is_some() {
            println!("{}", serde_json::to_string(&info)?);
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "task {task} has no final winner after {wait} s: {}",
                info.status
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn subscribe(client: ClientArgs, pattern: String, count: Option<u64>) -> Result<()> {
    let mut stream = client.client().subscribe(&pattern).await?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        match stream.next().await {
            Some(Ok(SubscriptionItem::Message(m))) => {
                println!("{}", serde_json::to_string(&m)?);
                seen += 1;
            }
            Some(Ok(SubscriptionItem::Lagged(n))) => {
                eprintln!("agentmesh: {n} messages were dropped because this reader was too slow")
            }
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the node closed the subscription"),
        }
    }
    Ok(())
}

async fn patterns(client: ApiClient, action: PatternsCommand) -> Result<()> {
    let value = match action {
        PatternsCommand::Put { pattern } => {
            let json = if pattern == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the pattern from standard input")?;
                text
            } else {
                pattern
            };
            let input: PatternInput = serde_json::from_str(&json)
                .context("the pattern is not valid JSON of the pattern fields")?;
            serde_json::to_value(client.put_pattern(&input).await?)?
        }
        PatternsCommand::Get { id } => serde_json::to_value(client.pattern(&id).await?)?,
        PatternsCommand::List {
            tag,
            kind,
            after,
            limit,
        } => serde_json::to_value(
            client
                .patterns(tag.as_deref(), kind.as_deref(), after.as_deref(), limit)
                .await?,
        )?,
        PatternsCommand::Outcome { id, success, .. } => {
            serde_json::to_value(client.pattern_outcome(&id, success).await?)?
        }
        PatternsCommand::Sync => serde_json::to_value(client.sync_status().await?)?,
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn print_json_or<T: serde::Serialize>(
    args: &ClientArgs,
    value: &T,
    table: impl FnOnce(),
) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        table();
    }
    Ok(())
}

fn config(action: ConfigCommand) -> Result<()> {
    use agentmesh_node::config;
    match action {
        ConfigCommand::Reference => print!("{}", config::reference_markdown()),
        ConfigCommand::Defaults => print!("{}", config::defaults_toml()),
        ConfigCommand::Check(args) => {
            let c = args.resolve()?;
            Settings::from_config(&c)?;
            print!("{}", toml::to_string(&c)?);
        }
    }
    Ok(())
}

async fn run(args: agentmesh_node::cli::RunArgs) -> Result<()> {
    let config = args.resolve()?;
    let settings = Settings::from_config(&config)?;
    logging::init(
        settings.config.node.log_format,
        "info,libp2p_gossipsub=warn",
    );
    if settings.bootstrap_peers.is_empty() {
        tracing::info!("no bootstrap peers configured: starting alone or from remembered peers");
    }
    let running = node::start(settings).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    running.shutdown().await
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}
