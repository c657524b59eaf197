//! Starting and stopping a whole node: identity, store, network task and
//! agent API. Rust programs can embed a node through [`RunningNode`].

use crate::api::{self, ApiState};
use crate::config::Settings;
use crate::consensus::validators;
use crate::consensus::{ConsensusHandle, ConsensusService, DiskHistory, REQUEST_QUEUE};
use crate::identity;
use crate::model::service::ModelService;
use crate::model::ModelHandle;
use crate::network::consensus_io::consensus_channels;
use crate::network::membership::Membership;
use crate::network::sync_io::{SyncEvent, SYNC_EVENT_QUEUE};
use crate::network::{behaviour, Network, NetworkHandle, ServiceSenders};
use crate::patterns::{PatternService, Patterns, Reconciler, SyncStats, CHANGE_QUEUE};
use crate::ready::{self, ReadyInfo};
use agentmesh_consensus::Engine;
use agentmesh_protocol::{NodeId, NodeKey};
use agentmesh_store::Store;
use anyhow::{Context, Result};
use libp2p::{Multiaddr, PeerId};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub struct RunningNode {
    pub peer_id: PeerId,
    pub api_addr: SocketAddr,
    pub listen_addrs: Vec<Multiaddr>,
    pub network: NetworkHandle,
    pub consensus: ConsensusHandle,
    settings: Settings,
    consensus_task: JoinHandle<()>,
    pattern_tasks: [JoinHandle<()>; 3],
    store: Store,
    model: ModelHandle,
    network_task: JoinHandle<()>,
    api_task: JoinHandle<()>,
    stop_api: oneshot::Sender<()>,
}

pub async fn start(settings: Settings) -> Result<RunningNode> {
    let dir = &settings.config.node.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    ready::remove(dir);
    let key = identity::load_or_create(&identity::key_path(dir))?;
    let keypair = identity::libp2p_keypair(&key)?;
    let peer_id = keypair.public().to_peer_id();
    let store = open_store(dir).await?;

    let node_id = key.node_id();
    let membership = Membership::load(&settings, node_id)?;
    let own_scopes = membership.own_scopes();
    let validator_source = validator_source(&settings, own_scopes.as_deref(), &store);
    let engine = consensus_engine(&settings, &key, &store, &membership)?;
    let swarm = behaviour::build_swarm(keypair, &settings)?;
    let (consensus_events, events_rx) = consensus_channels();
    let (sync_events, sync_events_rx) = mpsc::channel(SYNC_EVENT_QUEUE);
    let (metrics, network_metrics) = crate::metrics::build();
    let (sync_changes, sync_changes_rx) = mpsc::channel(CHANGE_QUEUE);
    let sync_stats = Arc::new(SyncStats::default());
    let patterns = Patterns::new(store.patterns(), node_id, sync_changes, sync_stats.clone());
    // Learning the stored outcomes again can take seconds: off the runtime.
    let model = {
        let (store, patterns, settings) = (
            store.model(),
            patterns.clone(),
            settings.config.model.clone(),
        );
        tokio::task::spawn_blocking(move || ModelHandle::load(store, patterns, settings)).await?
    };
    let (network, handle, listening) = Network::new(
        swarm,
        settings.clone(),
        key,
        &store,
        ServiceSenders {
            consensus: consensus_events,
            sync: sync_events,
            model: model.served(),
        },
        network_metrics,
        membership,
    )?;
    let network_task = tokio::spawn(network.run());
    let known = known_consensus_peers(&settings, &store, &validator_source);
    let validators = validators::Validators::new(node_id, validator_source, known);
    let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
    let halted = crate::consensus::HaltReason::default();
    let service = ConsensusService::new(
        engine,
        handle.clone(),
        events_rx,
        requests_rx,
        validators,
        halted.clone(),
    );
    let consensus_task = tokio::spawn(service.run());
    let consensus = ConsensusHandle::new(requests, halted);

    let pattern_tasks = spawn_pattern_tasks(
        &settings,
        &store,
        node_id,
        &handle,
        PatternChannels {
            stats: sync_stats,
            changes: sync_changes_rx,
            events: sync_events_rx,
        },
        own_scopes.as_deref(),
        &model,
        &patterns,
    );
    let listen_addrs = tokio::time::timeout(Duration::from_secs(10), listening)
        .await
        .context("timed out waiting for the listeners to come up")?
        .context("the network task stopped during start-up")?;

    let (listener, guard) = bind_api(&settings).await?;
    let api_addr = listener.local_addr()?;
    let (api_task, stop_api) = serve_api(
        listener,
        ApiState {
            network: handle.clone(),
            consensus: consensus.clone(),
            patterns,
            metrics,
            node_id,
            max_message_bytes: settings.config.network.max_message_bytes,
            own_scopes,
            model: model.clone(),
            guard,
        },
    );

    announce_ready(&settings, peer_id, node_id, api_addr, &listen_addrs)?;
    tracing::info!(%peer_id, api = %api_addr, network = %settings.config.node.network, "node started");
    Ok(RunningNode {
        peer_id,
        api_addr,
        listen_addrs,
        network: handle,
        consensus,
        consensus_task,
        pattern_tasks,
        settings,
        store,
        model,
        network_task,
        api_task,
        stop_api,
    })
}

/// Writes `node.json` in the data directory: how to reach this node, for
/// the CLI and the testnet (removed again at shutdown).
fn announce_ready(
    settings: &Settings,
    peer_id: PeerId,
    node_id: NodeId,
    api_addr: SocketAddr,
    listen_addrs: &[Multiaddr],
) -> Result<()> {
    ready::write(
        &settings.config.node.data_dir,
        &ReadyInfo {
            peer_id: peer_id.to_string(),
            node_id: node_id.to_string(),
            network: settings.config.node.network.clone(),
            api: api_addr,
            api_token_file: settings.api_token_path.clone(),
            listen_addrs: listen_addrs.iter().map(|a| a.to_string()).collect(),
            pid: std::process::id(),
        },
    )
}

/// The consensus engine over the stored history, signing with this node's
/// key and carrying its certificate.
fn consensus_engine(
    settings: &Settings,
    key: &NodeKey,
    store: &Store,
    membership: &Membership,
) -> Result<Engine<DiskHistory>> {
    let decisions = store.decisions()?;
    decisions.next_seq().context(
        "the consensus history is damaged (remove the data directory's db to start over)",
    )?;
    let mut engine = Engine::new(
        settings.consensus_params.clone(),
        NodeKey::from_seed(*key.seed())?,
        DiskHistory::new(decisions, crate::consensus::faults::from_env()),
        RandomState::new().build_hasher().finish(),
    )?;
    engine.set_certificate(membership.own_certificate().map(<[u8]>::to_vec));
    Ok(engine)
}

/// Opens the database on a blocking thread: the open may wait out a lock
/// (see Store::open) and trims stored outcomes past their limit.
async fn open_store(dir: &std::path::Path) -> Result<Store> {
    let db_path = dir.join("db");
    let opening = db_path.clone();
    tokio::task::spawn_blocking(move || Store::open(&opening))
        .await
        .context("opening the database")?
        .with_context(|| format!("cannot open the database at {}", db_path.display()))
}

/// Who votes in consensus: the configured set, the certificates of an
/// authority's validators, or (development only) the peers seen.
fn validator_source(
    settings: &Settings,
    own_scopes: Option<&agentmesh_protocol::membership::Verified>,
    store: &Store,
) -> validators::Source {
    match (&settings.validator_set, own_scopes) {
        (Some(set), _) => validators::Source::Configured(set.clone()),
        (None, Some(own)) => validators::Source::Certificates {
            own_weight: own.validator_weight().unwrap_or(0),
            book: store
                .validators()
                .map_err(|e| tracing::warn!(error = %e, "cannot open the validator book"))
                .ok(),
        },
        (None, None) => {
            tracing::warn!(
                "no validators configured: every peer seen in the last 24 hours votes in consensus \
                 with weight 1; this is for development and is not Sybil-resistant (set \
                 consensus.validators, or run with an authority)"
            );
            validators::Source::PeersSeen
        }
    }
}

/// The pattern service's side of the channels to the network task.
struct PatternChannels {
    stats: Arc<SyncStats>,
    /// Ids of patterns changed here, to gossip.
    changes: mpsc::Receiver<String>,
    events: mpsc::Receiver<SyncEvent>,
}

/// Pattern replication, anti-entropy and model sharing, each a task.
#[allow(clippy::too_many_arguments)] // the parts a start-up wires together
fn spawn_pattern_tasks(
    settings: &Settings,
    store: &Store,
    node_id: NodeId,
    handle: &NetworkHandle,
    channels: PatternChannels,
    own_scopes: Option<&agentmesh_protocol::membership::Verified>,
    model: &ModelHandle,
    patterns: &Patterns,
) -> [JoinHandle<()>; 3] {
    let (sync_peers, sync_peers_rx) = watch::channel(Vec::new());
    let pattern_service = PatternService {
        store: store.patterns(),
        node: node_id,
        network: handle.clone(),
        stats: channels.stats.clone(),
        changes: channels.changes,
        sync_events: channels.events,
        peers: sync_peers,
        gossip_delay: settings.config.patterns.gossip_delay_ms.duration(),
    };
    let reconciler = Reconciler {
        local: node_id,
        store: store.patterns(),
        network: handle.clone(),
        stats: channels.stats,
        peers: sync_peers_rx,
        interval: settings.config.patterns.anti_entropy_secs.duration(),
        round_deadline: settings.config.patterns.anti_entropy_round_secs.duration(),
        may_push: own_scopes.is_none_or(|v| v.may_share_patterns()),
    };
    let model_service = ModelService {
        model: model.clone(),
        network: handle.clone(),
        node: node_id,
        patterns: patterns.clone(),
    };
    [
        tokio::spawn(pattern_service.run()),
        tokio::spawn(reconciler.run()),
        tokio::spawn(model_service.run()),
    ]
}

/// Binds the agent API's address (port 0 picks one) and makes its guard,
/// with the token (created if there is none yet).
async fn bind_api(settings: &Settings) -> Result<(tokio::net::TcpListener, api::Guard)> {
    let listener = tokio::net::TcpListener::bind(settings.api_addr)
        .await
        .with_context(|| {
            format!(
                "cannot bind the API address {} (setting 'api.listen')",
                settings.api_addr
            )
        })?;
    let api_addr = listener.local_addr()?;
    let token = api::load_or_create_token(&settings.api_token_path)?;
    let guard = api::Guard::new(
        token,
        settings.api_token_path.clone(),
        api_addr,
        &settings.api_hosts,
    );
    Ok((listener, guard))
}

/// Serves the agent API until the returned sender fires (or is dropped).
fn serve_api(
    listener: tokio::net::TcpListener,
    state: ApiState,
) -> (JoinHandle<()>, oneshot::Sender<()>) {
    let app = api::router(state);
    let (stop_api, stopped) = oneshot::channel::<()>();
    let api_task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "agent API server failed");
        }
    });
    (api_task, stop_api)
}

/// Who may vote before any connection is up, with how long ago each was
/// last seen, its weight and its certificate's expiry: bootstrap peers
/// (weight 1 until their certificate is seen), and the peers (open network)
/// or validators (with an authority) remembered from earlier runs. A node
/// must not decide alone before its connections are up.
fn known_consensus_peers(
    settings: &Settings,
    store: &Store,
    source: &validators::Source,
) -> Vec<(NodeId, Duration, u64, Option<u64>)> {
    let mut peers: Vec<(NodeId, Duration, u64, Option<u64>)> = settings
        .bootstrap_peers
        .iter()
        .filter_map(|b| identity::node_id_of(&b.peer_id))
        .map(|node| (node, Duration::ZERO, 1, None))
        .collect();
    let now = crate::clock::now_ms();
    let age = |seen_ms: u64| Duration::from_millis(now.saturating_sub(seen_ms));
    let remembered = match source {
        validators::Source::Configured(_) => return peers,
        validators::Source::Certificates { book, .. } => book.as_ref().map(|book| {
            // Validators gone longer than the set keeps them, or whose
            // certificate has expired, leave the book for good.
            let pruned = book.retain(|v| {
                age(v.last_seen_ms) < validators::LINGER && v.expires_ms.is_none_or(|at| at > now)
            });
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "cannot prune the validator book");
            }
            book.all().map(|all| {
                all.peers
                    .into_iter()
                    .map(|(node, v)| (node, age(v.last_seen_ms), v.weight, v.expires_ms))
                    .collect::<Vec<_>>()
            })
        }),
        validators::Source::PeersSeen => Some(store.peers().and_then(|p| p.all()).map(|all| {
            all.peers
                .into_iter()
                .map(|(node, p)| (node, age(p.last_seen_ms), 1, None))
                .collect()
        })),
    };
    match remembered {
        Some(Ok(remembered)) => peers.extend(remembered),
        // The quorum then starts from the bootstrap peers only.
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot read known peers for the consensus quorum")
        }
        None => {}
    }
    peers
}

impl RunningNode {
    /// Stops the API (open event streams end), persists peers, stops the
    /// network and flushes the database.
    pub async fn shutdown(self) -> Result<()> {
        ready::remove(&self.settings.config.node.data_dir);
        let _ = self.stop_api.send(());
        // Open SSE streams keep graceful shutdown waiting; they end when the
        // network task drops the subscriptions below, but do not wait forever.
        let _ = self.network.shutdown().await;
        let _ = self.network_task.await;
        // With the network gone the service stops at its next send; its
        // decisions are committed to the history, and the store's flush
        // below makes the last of them durable.
        self.consensus_task.abort();
        let _ = self.consensus_task.await;
        // Pattern writes are complete sled inserts; a round cut short is
        // finished by the next one. The model is saved below.
        for task in self.pattern_tasks {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = self.model.save() {
            tracing::warn!(error = %e, "cannot save the model");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.api_task)
            .await
            .is_err()
        {
            tracing::warn!("agent API did not stop within 5 s");
        }
        self.store.flush().await.context("flushing the database")?;
        tracing::info!("node stopped");
        Ok(())
    }
}
