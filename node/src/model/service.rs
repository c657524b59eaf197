//! Mesh learning. Every `model_share_secs` the service (1) announces the
//! node's model on `learning:model` if it changed and learned from samples
//! of its own, serving the encoded checkpoint to peers that fetch it, and
//! (2) fetches the models peers announced since the last round (checking
//! each against its announced SHA-256 and size), merges them into the
//! local model and saves the result. It also keeps the rule-based
//! recommender's pattern descriptions and statistics current.

use super::ModelHandle;
use crate::network::router::Delivery;
use crate::network::NetworkHandle;
use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::merge::merge;
use agentmesh_protocol::model_wire::{
    ModelAnnouncement, ModelRequest, ModelResponse, ANNOUNCEMENT_CONTENT_TYPE, CHUNK_BYTES,
    MODEL_CHANNEL,
};
use agentmesh_protocol::{sha256, Channel, ChannelPattern, NodeId};
use agentmesh_store::patterns::Filter;
use serde_bytes::ByteArray;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Peer models merged per round.
const MAX_PEERS_PER_ROUND: usize = 4;
/// Time allowed to fetch a model: this plus a second per MiB.
const FETCH_BASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often pattern descriptions and statistics reach the rules.
const RULES_REFRESH: Duration = Duration::from_secs(2);
/// Patterns read per round for the rules' descriptions.
const DESCRIBE_LIMIT: usize = 10_000;

pub struct ModelService {
    pub model: ModelHandle,
    pub network: NetworkHandle,
    pub node: NodeId,
    pub patterns: crate::patterns::Patterns,
}

struct Round {
    /// The latest announcement per peer, not yet merged.
    pending: HashMap<NodeId, ModelAnnouncement>,
    /// The version last merged from each peer.
    merged: HashMap<NodeId, u64>,
    /// (version, samples) last announced by this node.
    announced: Option<(u64, u64)>,
    saved_version: u64,
    described: HashMap<String, [u8; 32]>,
}

/// Feeds the patterns' descriptions and statistics to the rules.
fn refresh_rules(
    model: &ModelHandle,
    patterns: &crate::patterns::Patterns,
    described: &mut HashMap<String, [u8; 32]>,
) {
    let filter = Filter {
        limit: DESCRIBE_LIMIT,
        ..Filter::default()
    };
    match patterns.list(&filter) {
        Ok(list) => model.describe(&list, described),
        Err(e) => tracing::warn!(error = %e, "cannot read patterns for the recommender"),
    }
}

impl ModelService {
    pub async fn run(self) {
        let pattern = ChannelPattern::parse(MODEL_CHANNEL).expect("a valid channel name");
        let Ok(mut subscription) = self.network.subscribe(pattern).await else {
            return;
        };
        let mut tick = tokio::time::interval(self.model.settings().share_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rules_tick = tokio::time::interval(RULES_REFRESH);
        rules_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = Round {
            pending: HashMap::new(),
            merged: HashMap::new(),
            announced: None,
            saved_version: self.model.version(),
            described: HashMap::new(),
        };
        loop {
            tokio::select! {
                delivery = subscription.next() => match delivery {
                    None => return,
                    Some(Ok(d)) => self.on_announcement(&d, &mut round),
                    Some(Err(_missed)) => {}
                },
                _ = rules_tick.tick() => {
                    let (model, patterns) = (self.model.clone(), self.patterns.clone());
                    let mut described = std::mem::take(&mut round.described);
                    round.described = tokio::task::spawn_blocking(move || {
                        refresh_rules(&model, &patterns, &mut described);
                        described
                    })
                    .await
                    .unwrap_or_default();
                }
                _ = tick.tick() => {
                    if self.model.settings().enabled {
                        self.merge_round(&mut round).await;
                        self.share(&mut round).await;
                    }
                }
            }
        }
    }

    fn on_announcement(&self, d: &Delivery, round: &mut Round) {
        let from = d.envelope.sender;
        if from == self.node {
            return;
        }
        match ModelAnnouncement::decode(&d.envelope.body) {
            Ok(a) if round.merged.get(&from).is_none_or(|v| a.version > *v) => {
                round.pending.insert(from, a);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(peer = %from, error = %e, "rejected a model announcement"),
        }
    }

    /// Saves the model if it changed, and announces it if it has samples
    /// of its own (a model made only of merges has nothing new to teach).
    /// Copying and encoding tens of megabytes runs on a blocking thread.
    async fn share(&self, round: &mut Round) {
        let model = self.model.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let c = model.checkpoint()?;
            let bytes = c.encode().ok()?;
            Some((c.version, c.samples, c.labels, c.features.dim as u64, bytes))
        })
        .await;
        let Ok(Some((version, samples, labels, feature_dim, bytes))) = prepared else {
            return;
        };
        let bytes = Arc::new(bytes);
        if version != round.saved_version {
            let (model, encoded) = (self.model.clone(), bytes.clone());
            match tokio::task::spawn_blocking(move || model.save_encoded(&encoded, version)).await {
                Ok(Ok(())) => round.saved_version = version,
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the model"),
                Err(e) => tracing::warn!(error = %e, "cannot save the model"),
            }
        }
        if samples == 0 || round.announced == Some((version, samples)) {
            return;
        }
        let digest = sha256(&bytes);
        self.model.serve(digest, bytes.clone());
        let announcement = ModelAnnouncement {
            version,
            samples,
            labels,
            feature_dim,
            bytes: bytes.len() as u64,
            digest: ByteArray::new(digest),
        };
        let Ok(body) = announcement.encode() else {
            return;
        };
        let channel = Channel::parse(MODEL_CHANNEL).expect("a valid channel name");
        match self
            .network
            .publish(channel, ANNOUNCEMENT_CONTENT_TYPE.into(), body)
            .await
        {
            Ok(_) => {
                round.announced = Some((version, samples));
                tracing::info!(version, samples, bytes = bytes.len(), "model announced");
            }
            // No peer subscribed yet: announced again next round.
            Err(e) => tracing::debug!(error = %e, "model announcement not sent"),
        }
    }

    async fn fetch(&self, peer: NodeId, a: &ModelAnnouncement) -> Result<Checkpoint, String> {
        let mut bytes = Vec::with_capacity(a.bytes as usize);
        while (bytes.len() as u64) < a.bytes {
            let request = ModelRequest {
                digest: a.digest,
                offset: bytes.len() as u64,
            };
            let response = self
                .network
                .fetch_model(peer, request)
                .await
                .map_err(|e| e.to_string())??;
            match response {
                ModelResponse::Chunk {
                    total,
                    bytes: chunk,
                } => {
                    let expected = (a.bytes - bytes.len() as u64).min(CHUNK_BYTES as u64);
                    if total != a.bytes || chunk.len() as u64 != expected {
                        return Err(format!(
                            "peer sent a {}-byte chunk of a {total}-byte model ({expected} of {} expected)",
                            chunk.len(),
                            a.bytes
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                ModelResponse::Unavailable { reason } => return Err(reason),
            }
        }
        if bytes.len() as u64 != a.bytes || sha256(&bytes) != *a.digest {
            return Err("the model does not match its announced digest".into());
        }
        tokio::task::spawn_blocking(move || Checkpoint::decode(&bytes))
            .await
            .map_err(|e| e.to_string())?
    }

    async fn merge_round(&self, round: &mut Round) {
        if round.pending.is_empty() {
            return;
        }
        let counters = self.model.counters();
        let dim = self.model.settings().feature_dim as u64;
        let mut fetched = Vec::new();
        let mut taken = Vec::new();
        // The newest few; the rest wait for the next round (each fetched
        // model is held in memory until the merge).
        let mut queue: Vec<(NodeId, ModelAnnouncement)> = round.pending.drain().collect();
        queue.sort_by_key(|(_, a)| std::cmp::Reverse(a.version));
        for (peer, a) in queue.split_off(MAX_PEERS_PER_ROUND.min(queue.len())) {
            round.pending.insert(peer, a);
        }
        for (peer, a) in queue {
            if a.feature_dim != dim {
                tracing::debug!(peer = %peer, dim = a.feature_dim, "peer model of another feature dimension skipped");
                round.merged.insert(peer, a.version);
                continue;
            }
            // Bounded, so a slow or stalling peer cannot hold up the round.
            let limit = FETCH_BASE_TIMEOUT + Duration::from_secs(a.bytes / (1 << 20));
            let fetched_one = tokio::time::timeout(limit, self.fetch(peer, &a))
                .await
                .unwrap_or_else(|_| Err(format!("no complete model within {limit:?}")));
            match fetched_one {
                Ok(c) => {
                    round.merged.insert(peer, a.version);
                    fetched.push(c);
                    taken.push((peer, a));
                }
                Err(e) => {
                    counters.merge_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %peer, error = %e, "cannot fetch a peer's model");
                }
            }
        }
        if fetched.is_empty() {
            return;
        }
        let started = Instant::now();
        let model = self.model.clone();
        let merged = tokio::task::spawn_blocking(move || {
            let local = model.checkpoint();
            let version = local.as_ref().map_or(0, |c| c.version);
            let peers: Vec<&Checkpoint> = fetched.iter().collect();
            merge(local.as_ref(), &peers).map(|m| (m, version))
        })
        .await;
        let ((checkpoint, report), version_before) =
            match merged.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(m) => m,
                Err(e) => {
                    counters.merge_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "merging peers' models failed");
                    return;
                }
            };
        let model = self.model.clone();
        let installed = tokio::task::spawn_blocking(move || {
            model.install_if_unchanged(checkpoint, version_before)
        })
        .await
        .map_err(|e| super::ModelError::Unavailable(e.to_string()))
        .and_then(|r| r);
        // Outcomes learned while merging would be lost by installing; the
        // peers' models are fetched and merged again next round instead.
        if matches!(installed, Ok(None)) {
            tracing::debug!("model changed during the merge; merging again next round");
            for (peer, a) in taken {
                round.merged.remove(&peer);
                round.pending.entry(peer).or_insert(a);
            }
            return;
        }
        match installed {
            Ok(None) => {}
            Ok(Some(version)) => {
                counters.merges.fetch_add(1, Ordering::Relaxed);
                counters
                    .peer_models_merged
                    .fetch_add(report.peers_merged as u64, Ordering::Relaxed);
                tracing::info!(
                    version,
                    peers = report.peers_merged,
                    clipped = report.clipped,
                    new_patterns = report.labels_added.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "merged peers' models"
                );
            }
            Err(e) => {
                counters.merge_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot install the merged model");
            }
        }
    }
}
