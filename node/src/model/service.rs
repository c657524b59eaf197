//! Mesh learning. Every `model.share_secs` the service (1) announces the
//! node's model on `learning:model` if it has samples of its own and
//! learned from this node's data since it was last announced, serving the
//! encoded checkpoint to peers that fetch it, and (2) fetches the models peers announced since the last round (checking
//! each against its announced SHA-256 and size), merges them into the
//! local model and saves the result. It also keeps the rule-based
//! recommender's pattern descriptions and statistics current.

use super::gate::merge_checked;
use super::ledger::{round_caps, PeerLedger};
use super::ModelHandle;
use crate::network::router::Subscription;
use crate::network::NetworkHandle;
use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::NeuralError;
use agentmesh_protocol::model_wire::{
    ModelAnnouncement, ModelRequest, ModelResponse, ANNOUNCEMENT_CONTENT_TYPE, CHUNK_BYTES,
    MODEL_CHANNEL,
};
use agentmesh_protocol::{sha256, Channel, ChannelPattern, NodeId};
use agentmesh_store::patterns::Filter;
use serde_bytes::ByteArray;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// An announcement's cap and the model's are one limit in two crates.
const _: () = assert!(
    agentmesh_protocol::model_wire::MAX_LABELS == agentmesh_neural::classifier::MAX_LABELS as u64
);

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

/// The latest announcement per peer, not yet merged; filled by the
/// listener task, so announcements are read even while a round fetches.
type Pending = Arc<Mutex<HashMap<NodeId, ModelAnnouncement>>>;

struct Round {
    pending: Pending,
    /// The digest of the model last merged from each peer (a digest, not a
    /// version: a peer that restarts counts versions again).
    merged: HashMap<NodeId, [u8; 32]>,
    /// The model lineage `merged` was merged into.
    lineage: u64,
    /// The model version last encoded (and saved), and its announcement
    /// (None without samples of its own).
    encoded_version: u64,
    announcement: Option<ModelAnnouncement>,
    /// The model's own-learning count when it was last announced (None:
    /// not yet, so a model restored from disk is announced at the first
    /// round).
    announced_own: Option<u64>,
    described: HashMap<String, [u8; 32]>,
    ledger: PeerLedger,
}

/// Reads announcements from `learning:model` into `pending` (the newest
/// per peer; this node's own are skipped).
async fn listen(mut subscription: Subscription, node: NodeId, pending: Pending) {
    while let Some(delivery) = subscription.next().await {
        let Ok(d) = delivery else {
            continue;
        };
        let from = d.envelope.sender;
        if from == node {
            continue;
        }
        match ModelAnnouncement::decode(&d.envelope.body) {
            Ok(a) => {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.get(&from).is_none_or(|p| a.version >= p.version) {
                    pending.insert(from, a);
                }
            }
            Err(e) => tracing::debug!(peer = %from, error = %e, "rejected a model announcement"),
        }
    }
}

/// Puts announcements back for the next round, unless newer ones came.
fn requeue(pending: &Pending, announcements: Vec<(NodeId, ModelAnnouncement)>) {
    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
    for (peer, a) in announcements {
        pending.entry(peer).or_insert(a);
    }
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

/// Can the announced model be averaged with this node's: the same feature
/// dimension, and the installed model's norm (any, while untrained)?
fn averages_with(a: &ModelAnnouncement, dim: u64, norm: Option<f32>) -> bool {
    a.feature_dim == dim && norm.is_none_or(|n| a.norm() == n)
}

/// Why a peer's model was not had.
enum FetchFailure {
    /// Not received: the connection failed, or the peer no longer serves
    /// that model (it shared a newer one since). Tried again when
    /// announced again; nothing is charged.
    Transfer(String),
    /// Received otherwise than announced (chunks of the wrong size, bytes
    /// that do not match the digest), or not within the deadline: the
    /// peer cools down.
    Breach(String),
    /// Received as announced, but not a model this build can read (another
    /// format, or invalid).
    Unreadable(NeuralError),
}

impl ModelService {
    pub async fn run(self) {
        let pattern = ChannelPattern::parse(MODEL_CHANNEL).expect("a valid channel name");
        let Ok(subscription) = self.network.subscribe(pattern).await else {
            return;
        };
        let mut tick = tokio::time::interval(self.model.settings().share_secs.duration());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rules_tick = tokio::time::interval(RULES_REFRESH);
        rules_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pending = Pending::default();
        let mut listener = tokio::spawn(listen(subscription, self.node, pending.clone()));
        let mut round = Round {
            pending,
            merged: HashMap::new(),
            lineage: 0,
            // 0: a model restored from disk is announced at the first round.
            encoded_version: 0,
            announcement: None,
            announced_own: None,
            described: HashMap::new(),
            ledger: PeerLedger::new(self.model.settings().share_secs.duration()),
        };
        loop {
            tokio::select! {
                // The subscription ended: the network stopped.
                _ = &mut listener => return,
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

    /// Encodes and saves the model when it changed. Announces it (and
    /// serves those bytes) only when it learned from this node's own data
    /// since the last announcement: a model that changed only by merging
    /// peers' models has nothing to teach them that they have not shared
    /// themselves (every member hears every announcement and fetches from
    /// its sender), and re-announcing merges would keep models moving
    /// between nodes that have nothing new: each merge changes the bytes,
    /// the peer merges them back, and so on. The current announcement is
    /// published again every round: a small frame, which peers skip when
    /// they merged its digest, and which repairs announcements lost before
    /// the gossip mesh formed. Copying and encoding tens of megabytes runs
    /// on a blocking thread.
    async fn share(&self, round: &mut Round) {
        // Read before the snapshot: the snapshot holds at least what it
        // counts.
        let own = self.model.own_learning();
        let announce = round.announced_own != Some(own);
        if self.model.version() != round.encoded_version || announce {
            let model = self.model.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                let snapshot = model.snapshot()?;
                let bytes = snapshot.checkpoint.encode().ok()?;
                let saved = model.save_encoded(&bytes, &snapshot);
                let c = snapshot.checkpoint;
                Some((
                    c.version,
                    c.samples,
                    c.labels.len(),
                    (c.features.dim, c.features.norm),
                    bytes,
                    saved,
                ))
            })
            .await;
            let Ok(Some((version, samples, classes, (dim, norm), bytes, saved))) = prepared else {
                return;
            };
            if let Err(e) = saved {
                tracing::warn!(error = %e, "cannot save the model");
            }
            round.encoded_version = version;
            if announce {
                round.announced_own = Some(own);
            }
            if samples == 0 {
                round.announcement = None;
            } else if announce {
                let digest = sha256(&bytes);
                round.announcement = Some(ModelAnnouncement {
                    version,
                    samples,
                    classes: classes as u64,
                    feature_dim: dim as u64,
                    feature_norm: Some(norm),
                    bytes: bytes.len() as u64,
                    digest: ByteArray::new(digest),
                });
                self.model.serve(digest, Arc::new(bytes));
            }
        }
        let Some(body) = round.announcement.as_ref().and_then(|a| a.encode().ok()) else {
            return;
        };
        let channel = Channel::parse(MODEL_CHANNEL).expect("a valid channel name");
        if let Err(e) = self
            .network
            .publish(channel, ANNOUNCEMENT_CONTENT_TYPE.into(), body)
            .await
        {
            // No peer subscribed yet: announced again next round.
            tracing::debug!(error = %e, "model announcement not sent");
        }
    }

    async fn fetch(&self, peer: NodeId, a: &ModelAnnouncement) -> Result<Checkpoint, FetchFailure> {
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
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(FetchFailure::Transfer)?;
            match response {
                ModelResponse::Chunk {
                    total,
                    bytes: chunk,
                } => {
                    let expected = (a.bytes - bytes.len() as u64).min(CHUNK_BYTES as u64);
                    if total != a.bytes || chunk.len() as u64 != expected {
                        return Err(FetchFailure::Breach(format!(
                            "peer sent a {}-byte chunk of a {total}-byte model ({expected} of {} expected)",
                            chunk.len(),
                            a.bytes
                        )));
                    }
                    self.model
                        .counters()
                        .model_bytes_fetched
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    bytes.extend_from_slice(&chunk);
                }
                ModelResponse::Unavailable { reason } => {
                    return Err(FetchFailure::Transfer(reason))
                }
            }
        }
        if bytes.len() as u64 != a.bytes || sha256(&bytes) != *a.digest {
            return Err(FetchFailure::Breach(
                "the model does not match its announced digest".into(),
            ));
        }
        tokio::task::spawn_blocking(move || Checkpoint::decode(&bytes))
            .await
            .map_err(|e| FetchFailure::Transfer(e.to_string()))?
            .map_err(FetchFailure::Unreadable)
    }

    /// The announced models worth fetching this round, in the ledger's
    /// order (peers taken longest ago first); the rest go back to the
    /// queue. Peers cooling down after a rejection, or whose influence on
    /// this model is used up, are passed over (they announce again).
    fn due(&self, round: &mut Round) -> Vec<(NodeId, ModelAnnouncement)> {
        let now = Instant::now();
        let counting = self.model.own_samples() > 0;
        let max_influence = self.model.settings().max_peer_influence;
        let lineage = self.model.lineage();
        round.ledger.on_lineage(lineage);
        // A model trained or imported since replaced what the peers'
        // models were merged into: their current models are taken again.
        if lineage != round.lineage {
            round.lineage = lineage;
            round.merged.clear();
        }
        let mut queue: Vec<(NodeId, ModelAnnouncement)> = {
            let mut pending = round.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .drain()
                .filter(|(peer, a)| round.merged.get(peer) != Some(&*a.digest))
                .filter(|(peer, _)| !round.ledger.cooling(peer, now))
                .filter(|(peer, _)| round.ledger.cap(peer, max_influence, counting, now) > 0.0)
                .collect()
        };
        // Models of another feature dimension or norm do not average with
        // this one: they are not fetched, nor remembered as merged, since
        // this node's norm changes when it trains or imports a model (an
        // untrained node takes any norm: its merge follows the first
        // usable peer model). Peers announce every round, so they are
        // looked at again then.
        let dim = self.model.settings().feature_dim as u64;
        let norm = self.model.feature_norm();
        queue.retain(|(peer, a)| {
            let fits = averages_with(a, dim, norm);
            if !fits {
                tracing::debug!(peer = %peer, dim = a.feature_dim, norm = a.norm(), "peer model of another feature dimension or norm passed over");
            }
            fits
        });
        // A few; the rest wait for the next round (each fetched model is
        // held in memory until the merge).
        round.ledger.order(&mut queue);
        let later = queue.split_off(MAX_PEERS_PER_ROUND.min(queue.len()));
        requeue(&round.pending, later);
        queue
    }

    /// Fetches `queue`'s models (each within a deadline): the models, and
    /// whose they are, in the same order.
    async fn fetch_all(
        &self,
        round: &mut Round,
        queue: Vec<(NodeId, ModelAnnouncement)>,
    ) -> (Vec<Checkpoint>, Vec<(NodeId, ModelAnnouncement)>) {
        let counters = self.model.counters();
        let mut fetched = Vec::new();
        let mut taken = Vec::new();
        for (peer, a) in queue {
            // Bounded, so a slow or stalling peer cannot hold up the round.
            let limit = FETCH_BASE_TIMEOUT + Duration::from_secs(a.bytes / (1 << 20));
            let fetched_one = tokio::time::timeout(limit, self.fetch(peer, &a))
                .await
                .unwrap_or_else(|_| {
                    Err(FetchFailure::Breach(format!(
                        "no complete model within {limit:?}"
                    )))
                });
            match fetched_one {
                Ok(c) => {
                    round.merged.insert(peer, *a.digest);
                    fetched.push(c);
                    taken.push((peer, a));
                }
                Err(FetchFailure::Transfer(e)) => {
                    counters.merge_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %peer, error = %e, "cannot fetch a peer's model");
                }
                // The peer cools down like one whose model was rejected: a
                // peer that stalls every fetch to its deadline, or serves
                // bytes other than it announced, or an unreadable model
                // under a new digest each round, costs this node one fetch
                // now and then.
                Err(FetchFailure::Breach(e)) => {
                    counters.merge_failures.fetch_add(1, Ordering::Relaxed);
                    round.ledger.rejected(peer, Instant::now(), self.interval());
                    tracing::warn!(peer = %peer, error = %e, "a peer's model was not served as announced");
                }
                Err(FetchFailure::Unreadable(e)) => {
                    // It matched its digest, so asking again gets the same
                    // bytes: this model is not fetched again.
                    round.merged.insert(peer, *a.digest);
                    counters.merge_failures.fetch_add(1, Ordering::Relaxed);
                    round.ledger.rejected(peer, Instant::now(), self.interval());
                    tracing::warn!(peer = %peer, error = %e, "a peer's model cannot be read; not fetched again");
                }
            }
        }
        (fetched, taken)
    }

    fn interval(&self) -> Duration {
        self.model.settings().share_secs.duration()
    }

    async fn merge_round(&self, round: &mut Round) {
        let queue = self.due(round);
        if queue.is_empty() {
            return;
        }
        let (fetched, taken) = self.fetch_all(round, queue).await;
        let counters = self.model.counters();
        if fetched.is_empty() {
            return;
        }
        let started = Instant::now();
        let counting = self.model.own_samples() > 0;
        let max_influence = self.model.settings().max_peer_influence;
        let caps = round_caps(
            taken
                .iter()
                .map(|(peer, _)| round.ledger.cap(peer, max_influence, counting, started))
                .collect(),
            max_influence,
            counting,
        );
        let model = self.model.clone();
        let checked = tokio::task::spawn_blocking(move || {
            // Read before the model: training bumps it after installing.
            let lineage = model.lineage();
            let local = model.checkpoint();
            let version = local.as_ref().map_or(0, |c| c.version);
            let gate = model.gate();
            merge_checked(local.as_ref(), &fetched, &caps, &gate)
                .map(|m| (m, (version, lineage), local.is_some()))
                .map_err(|e| e.to_string())
        })
        .await;
        let (checked, (version_before, lineage), had_local) =
            match checked.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(m) => m,
                Err(e) => {
                    // Nothing was judged: the models are fetched again
                    // when next due.
                    counters.merge_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "merging peers' models failed");
                    for (peer, _) in &taken {
                        round.merged.remove(peer);
                    }
                    return;
                }
            };
        // `taken` is in the order the models were fetched and merged.
        let skipped = checked
            .merged
            .as_ref()
            .map(|(_, report)| report.skipped.clone())
            .unwrap_or_default();
        // Without a local model, models are measured against a base that
        // one of the peers set: one that does not fit it is not at fault.
        let skipped = if had_local { skipped } else { Vec::new() };
        for (i, reason) in checked.rejected.iter().chain(&skipped) {
            if let Some((peer, _)) = taken.get(*i) {
                counters
                    .peer_models_rejected
                    .fetch_add(1, Ordering::Relaxed);
                round
                    .ledger
                    .rejected(*peer, started, self.model.settings().share_secs.duration());
                tracing::warn!(peer = %peer, reason = %reason, "a peer's model was rejected");
            }
        }
        // Kept but not merged this round (the best alone was installed
        // instead): fetched again next time, uncharged.
        let deferred: Vec<(NodeId, ModelAnnouncement)> = checked
            .deferred
            .iter()
            .filter_map(|i| taken.get(*i).cloned())
            .collect();
        for (peer, _) in &deferred {
            round.merged.remove(peer);
        }
        requeue(&round.pending, deferred);
        let Some((checkpoint, report)) = checked.merged else {
            return;
        };
        let model = self.model.clone();
        let installed = tokio::task::spawn_blocking(move || {
            model.install_if_unchanged(checkpoint, version_before)
        })
        .await
        .map_err(|e| super::ModelError::Unavailable(e.to_string()))
        .and_then(|r| r);
        // Outcomes learned while merging would be lost by installing; the
        // peers' models that were not rejected are fetched and merged
        // again next round instead.
        if matches!(installed, Ok(None)) {
            tracing::debug!("model changed during the merge; merging again next round");
            let again: Vec<(NodeId, ModelAnnouncement)> = taken
                .into_iter()
                .enumerate()
                .filter(|(i, _)| report.shares[*i] > 0.0)
                .map(|(_, t)| t)
                .collect();
            for (peer, _) in &again {
                round.merged.remove(peer);
            }
            requeue(&round.pending, again);
            return;
        }
        match installed {
            Ok(None) => {}
            Ok(Some(version)) => {
                // A model trained or imported after `due` looked: the merge
                // went into it, so the peers merged now are not taken
                // again, and the others (merged into the model it
                // replaced) are.
                if lineage != round.lineage {
                    round.lineage = lineage;
                    round.ledger.on_lineage(lineage);
                    round
                        .merged
                        .retain(|peer, _| taken.iter().any(|(p, _)| p == peer));
                }
                let shares: Vec<(NodeId, f64)> = taken
                    .iter()
                    .zip(&report.shares)
                    .filter(|(_, share)| **share > 0.0)
                    .map(|((peer, _), share)| (*peer, *share))
                    .collect();
                round.ledger.merged(&shares, counting, Instant::now());
                counters.merges.fetch_add(1, Ordering::Relaxed);
                counters
                    .peer_models_merged
                    .fetch_add(report.peers_merged as u64, Ordering::Relaxed);
                tracing::info!(
                    version,
                    peers = report.peers_merged,
                    clipped = report.clipped,
                    new_patterns = report.labels_added.len(),
                    patterns_dropped = report.labels_dropped,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_models_of_this_dimension_and_norm_are_fetched() {
        let at = |dim, norm| ModelAnnouncement {
            version: 1,
            samples: 10,
            classes: 2,
            feature_dim: dim,
            feature_norm: norm,
            bytes: 100,
            digest: ByteArray::new([1; 32]),
        };
        // An older build announces no norm: its model is at 1.
        assert!(averages_with(&at(1024, None), 1024, Some(1.0)));
        assert!(!averages_with(&at(1024, None), 1024, Some(2.0)));
        assert!(averages_with(&at(1024, Some(2.0)), 1024, Some(2.0)));
        assert!(!averages_with(&at(2048, Some(2.0)), 1024, Some(2.0)));
        // Untrained, any norm will do (the merge follows the first model),
        // but not another dimension.
        assert!(averages_with(&at(1024, None), 1024, None));
        assert!(averages_with(&at(1024, Some(2.0)), 1024, None));
        assert!(!averages_with(&at(2048, None), 1024, None));
    }
}
