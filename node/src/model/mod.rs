//! The node's local model: recommendations (model or rules), outcomes
//! (stored, then learned from at once), training on a blocking thread,
//! checkpoints in sled, import and export, and the state the mesh-learning
//! service shares and merges.

pub mod gate;
pub mod ledger;
mod outcomes;
pub mod service;

use crate::config::ModelConfig;
use crate::network::model_io::{ServedModel, SharedModel};
use crate::patterns::Patterns;
use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::features::FeatureConfig;
use agentmesh_neural::recommender::{
    Answer, Installed, OutcomeEffect, Recommender, RecommenderConfig,
};
use agentmesh_neural::{Context, NeuralError, Sample, TrainConfig, TrainReport};
use agentmesh_protocol::codec;
use agentmesh_store::{ModelStore, OutcomeMark};
use outcomes::{learn_stored_outcomes, stored_outcomes, MAX_OUTCOME_BYTES};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most recommendations one request may ask for.
pub const MAX_K: usize = 100;
/// Outcomes stored during a training run are learned by the new model
/// before the lock until fewer than this many remain (at most
/// `CATCH_UP_PASSES` passes); the rest under the lock.
const CATCH_UP_REMAINDER: usize = 64;
const CATCH_UP_PASSES: usize = 10;

/// A reported outcome, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub context: Context,
    pub pattern: String,
    pub success: bool,
    pub at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(String),
    #[error("a training run is already under way")]
    Busy,
    #[error("{0}")]
    Unavailable(String),
    #[error("storage: {0}")]
    Store(#[from] agentmesh_store::StoreError),
    /// The node's own fault (a model it holds that cannot be used).
    #[error("{0}")]
    Internal(NeuralError),
}

/// Why a training run failed: too few samples or labels, or no epoch to
/// run (`max_epochs` 0), is what the caller sent (with the stored
/// outcomes); the node's feature settings, the other `InvalidConfig`, are
/// checked at start-up. Anything else is the node's own fault.
fn training_error(e: NeuralError) -> ModelError {
    match e {
        NeuralError::InvalidData(reason) | NeuralError::InvalidConfig(reason) => {
            ModelError::Invalid(reason)
        }
        other => ModelError::Internal(other),
    }
}

/// Counters for `/metrics` and the status.
#[derive(Default)]
pub struct ModelCounters {
    pub by_model: AtomicU64,
    pub by_rules: AtomicU64,
    pub cached: AtomicU64,
    pub outcomes: AtomicU64,
    pub online_updates: AtomicU64,
    pub merges: AtomicU64,
    pub peer_models_merged: AtomicU64,
    pub merge_failures: AtomicU64,
    /// Peer models left out of a merge: worse on this node's own data, or
    /// unusable (too many new patterns, malformed).
    pub peer_models_rejected: AtomicU64,
    pub trainings: AtomicU64,
    /// Bytes of peers' models received (chunks, whether or not the model
    /// was then merged).
    pub model_bytes_fetched: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrainingInfo {
    pub finished_ms: u64,
    pub samples: usize,
    pub from_outcomes: usize,
    pub report: TrainReport,
}

/// Recommendations answered, by who chose them, and from the cache.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct RecommendationCounts {
    pub model: u64,
    pub rules: u64,
    pub cached: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelStatus {
    pub enabled: bool,
    pub trained: bool,
    pub version: u64,
    pub samples: u64,
    pub classes: Vec<String>,
    pub feature_dim: Option<usize>,
    /// L2 norm of the model's text features (peers' models at another
    /// norm are not merged).
    pub feature_norm: Option<f32>,
    /// Held-out metrics of the last full training (absent for a model
    /// that only came from merges).
    pub metrics: Option<serde_json::Value>,
    pub last_training: Option<TrainingInfo>,
    pub stored_outcomes: usize,
    pub rule_patterns: usize,
    pub recommendations: RecommendationCounts,
    pub online_updates: u64,
    pub merges: u64,
    pub peer_models_merged: u64,
    pub merge_failures: u64,
    /// Peer models rejected: worse on this node's own held-out samples and
    /// latest outcomes than its model, or unusable.
    pub peer_models_rejected: u64,
    /// Bytes of peers' models this node has fetched since it started: it
    /// stops growing once every peer's latest model is merged.
    pub model_bytes_fetched: u64,
    /// Held-out samples merged models are checked against (from the last
    /// training run).
    pub held_out_samples: usize,
}

/// The recommender and the last stored outcome its model accounts for
/// (learned, or stored while the model was off or before it was installed
/// — a model installed by training has read them all). Both change under
/// one lock, and outcomes are stored under it too, so sequence order is
/// learning order: a checkpoint saved with this mark accounts for every
/// outcome up to it, and a restart learns the ones after.
struct LocalModel {
    recommender: Recommender,
    outcomes_through: Option<u64>,
}

impl std::ops::Deref for LocalModel {
    type Target = Recommender;
    fn deref(&self) -> &Recommender {
        &self.recommender
    }
}

impl std::ops::DerefMut for LocalModel {
    fn deref_mut(&mut self) -> &mut Recommender {
        &mut self.recommender
    }
}

/// A copy of the model to save, share or merge, and its outcome mark.
pub struct ModelSnapshot {
    pub checkpoint: Checkpoint,
    pub outcomes_through: Option<u64>,
}

struct Shared {
    recommender: Mutex<LocalModel>,
    store: ModelStore,
    patterns: Patterns,
    settings: ModelConfig,
    counters: ModelCounters,
    last_training: Mutex<Option<TrainingInfo>>,
    training: AtomicBool,
    served: ServedModel,
    /// The model version sled holds (0: none), so a model saved when it
    /// was installed is not written again when it is next shared.
    saved_version: AtomicU64,
    /// Serialises writes, so an older model never replaces a newer one.
    save_lock: Mutex<()>,
    /// The model version from which outcomes start a save between sharing
    /// rounds (one outcome that changes the model raises it by one).
    next_background_save: AtomicU64,
    /// A save started by outcomes is under way.
    saving: AtomicBool,
    /// Bumped by every training run and import: peers' influence is
    /// counted again from zero on a new lineage.
    lineage: AtomicU64,
    /// Bumped whenever the model learns from this node's own data
    /// (training, an import, an outcome that changed it), not by merges:
    /// a model is announced to peers only when this moved, so a mesh with
    /// nothing new to learn stops moving models.
    own_learning: AtomicU64,
    /// The held-out samples merges are checked against (also stored).
    check_slice: Mutex<Arc<gate::CheckSlice>>,
}

#[derive(Clone)]
pub struct ModelHandle {
    shared: Arc<Shared>,
}

impl ModelHandle {
    /// The node's model, restored from its last checkpoint (a damaged one
    /// is reported and left in place; the node starts untrained). The
    /// stored outcomes are learned again: all of them by the rules (their
    /// past contexts are not saved otherwise), and by the model those
    /// after its checkpoint's mark — what a crash lost since the last save.
    pub fn load(store: ModelStore, patterns: Patterns, settings: ModelConfig) -> ModelHandle {
        let mut recommender = Recommender::new(RecommenderConfig {
            model_enabled: settings.enabled,
            min_confidence: settings.min_confidence,
            ..RecommenderConfig::default()
        });
        let mut mark = OutcomeMark::NoneYet;
        match store.checkpoint() {
            Ok(Some(stored)) => {
                match Checkpoint::decode(&stored.bytes).and_then(|c| recommender.install(c)) {
                    Ok(version) => {
                        mark = stored.outcomes;
                        tracing::info!(version, "model restored from its checkpoint");
                        if mark == OutcomeMark::Unknown {
                            tracing::warn!("the saved model does not say which outcomes it learned; none is learned again")
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the stored model checkpoint is unusable; starting untrained")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the model checkpoint"),
        }
        let saved = recommender.version();
        let mut local = LocalModel {
            recommender,
            outcomes_through: None,
        };
        let check_slice = read_check_slice(&store);
        learn_stored_outcomes(&store, &mut local, mark, &check_slice.held_out);
        ModelHandle {
            shared: Arc::new(Shared {
                saved_version: AtomicU64::new(saved),
                save_lock: Mutex::new(()),
                next_background_save: AtomicU64::new(
                    saved.saturating_add(settings.save_outcomes.get()),
                ),
                saving: AtomicBool::new(false),
                lineage: AtomicU64::new(0),
                own_learning: AtomicU64::new(0),
                check_slice: Mutex::new(Arc::new(check_slice)),
                recommender: Mutex::new(local),
                store,
                patterns,
                settings,
                counters: ModelCounters::default(),
                last_training: Mutex::new(None),
                training: AtomicBool::new(false),
                served: ServedModel::default(),
            }),
        }
    }

    fn recommender(&self) -> MutexGuard<'_, LocalModel> {
        // A panic while holding the lock leaves a usable recommender.
        self.shared
            .recommender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> &ModelConfig {
        &self.shared.settings
    }

    pub fn counters(&self) -> &ModelCounters {
        &self.shared.counters
    }

    pub fn served(&self) -> ServedModel {
        self.shared.served.clone()
    }

    pub fn version(&self) -> u64 {
        self.recommender().version()
    }

    pub fn recommend(&self, context: &Context, k: usize) -> Result<Answer, ModelError> {
        context
            .validate()
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        if k == 0 || k > MAX_K {
            return Err(ModelError::Invalid(format!(
                "k must be between 1 and {MAX_K}"
            )));
        }
        let answer = self.recommender().recommend(context, k);
        let c = &self.shared.counters;
        let counter = match answer.source {
            agentmesh_neural::recommender::Source::Model => &c.by_model,
            agentmesh_neural::recommender::Source::Rules => &c.by_rules,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if answer.cached {
            c.cached.fetch_add(1, Ordering::Relaxed);
        }
        Ok(answer)
    }

    /// Stores the outcome, updates the pattern's replicated statistics (if
    /// the pattern is in the store) and lets the recommender learn from it.
    pub fn outcome(&self, outcome: Outcome) -> Result<OutcomeEffect, ModelError> {
        outcome
            .context
            .validate()
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        agentmesh_protocol::pattern::validate_id(&outcome.pattern)
            .map_err(|e| ModelError::Invalid(format!("pattern: {e}")))?;
        let bytes = codec::encode(&outcome).map_err(|e| ModelError::Invalid(e.to_string()))?;
        // A record too large to read back would be learned now and skipped
        // by a restart and by training.
        if bytes.len() > MAX_OUTCOME_BYTES {
            return Err(ModelError::Invalid(format!(
                "the outcome is {} bytes encoded; at most {MAX_OUTCOME_BYTES}",
                bytes.len()
            )));
        }
        let (effect, version) = {
            let mut local = self.recommender();
            // Read under the lock, as training swaps model and slice under
            // it: a new pattern is kept off the held-out samples of the
            // model it is learned into (a restart learns it again so).
            let slice = self.check_slice();
            let seq = self.shared.store.append_outcome(&bytes)?;
            let effect = local.outcome(
                &outcome.context,
                &outcome.pattern,
                outcome.success,
                &slice.held_out,
            );
            local.outcomes_through = Some(seq);
            // Under the lock: a snapshot taken after this count is read
            // holds the change it counts.
            if effect.model_updated {
                self.shared.own_learning.fetch_add(1, Ordering::Release);
            }
            (effect, local.version())
        };
        // The outcome is stored and learned whatever becomes of this.
        if let Err(e) = self.shared.store.trim_outcomes() {
            tracing::warn!(error = %e, "cannot remove the oldest stored outcomes");
        }
        match self
            .shared
            .patterns
            .count_outcome(&outcome.pattern, outcome.success)
        {
            Ok(_) | Err(agentmesh_store::patterns::EditError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the outcome in the pattern's statistics")
            }
        }
        let c = &self.shared.counters;
        c.outcomes.fetch_add(1, Ordering::Relaxed);
        if effect.model_updated {
            c.online_updates.fetch_add(1, Ordering::Relaxed);
            if version >= self.shared.next_background_save.load(Ordering::Relaxed) {
                self.save_in_background(version);
            }
        }
        Ok(effect)
    }

    /// Saves the model on a blocking thread (at once without a runtime),
    /// unless such a save is under way: the outcome that asks for it does
    /// not wait for 67 MB to be copied and written.
    fn save_in_background(&self, version: u64) {
        if self.shared.saving.swap(true, Ordering::AcqRel) {
            return;
        }
        // If this save fails, the next is tried as many outcomes later.
        self.shared.next_background_save.store(
            version.saturating_add(self.shared.settings.save_outcomes.get()),
            Ordering::Relaxed,
        );
        let handle = self.clone();
        let save = move || {
            // Cleared however the save ends (a panic, a dropped task).
            struct Saving(Arc<Shared>);
            impl Drop for Saving {
                fn drop(&mut self) {
                    self.0.saving.store(false, Ordering::Release);
                }
            }
            let _saving = Saving(handle.shared.clone());
            if let Err(e) = handle.save() {
                tracing::warn!(error = %e, "cannot save the model");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(save)),
            Err(_) => save(),
        }
    }

    /// A full training run on the stored successful outcomes plus `extra`
    /// samples, on a blocking thread; the result is installed and saved.
    pub async fn train(
        &self,
        extra: Vec<Sample>,
        max_epochs: Option<usize>,
    ) -> Result<TrainingInfo, ModelError> {
        if self.shared.training.swap(true, Ordering::AcqRel) {
            return Err(ModelError::Busy);
        }
        let handle = self.clone();
        // The flag is cleared by the training thread itself when it ends:
        // the request may be dropped first (a timeout, a client that left).
        tokio::task::spawn_blocking(move || {
            let result = handle.train_blocking(extra, max_epochs);
            handle.shared.training.store(false, Ordering::Release);
            result
        })
        .await
        .unwrap_or_else(|e| {
            // A panic in training: the thread did not clear the flag.
            self.shared.training.store(false, Ordering::Release);
            Err(ModelError::Unavailable(format!("training failed: {e}")))
        })
    }

    fn train_blocking(
        &self,
        extra: Vec<Sample>,
        max_epochs: Option<usize>,
    ) -> Result<TrainingInfo, ModelError> {
        for (i, s) in extra.iter().enumerate() {
            s.context
                .validate()
                .map_err(|e| ModelError::Invalid(format!("samples[{i}]: {e}")))?;
        }
        let store = &self.shared.store;
        let (outcomes, read_up_to) = stored_outcomes(store, None)?;
        let mut samples: Vec<Sample> = outcomes
            .into_iter()
            .filter(|o| o.success)
            .map(|o| Sample {
                context: o.context,
                label: o.pattern,
            })
            .collect();
        let from_outcomes = samples.len();
        samples.extend(extra);
        let settings = &self.shared.settings;
        let config = TrainConfig {
            seed: settings.seed,
            max_epochs: max_epochs.unwrap_or(50).clamp(1, 50),
            features: FeatureConfig {
                dim: settings.feature_dim,
                ..FeatureConfig::default()
            },
            ..TrainConfig::default()
        };
        let (classifier, report) =
            agentmesh_neural::train(&samples, &config, |line| tracing::info!("training: {line}"))
                .map_err(training_error)?;
        let slice = gate::CheckSlice::from_training(
            &samples,
            config.seed,
            &classifier,
            self.shared.settings.min_confidence,
        );
        let checkpoint = Checkpoint::of(&classifier, 0, samples.len() as u64, Some(report.clone()));
        // Fails only for labels the samples gave (too many, too long).
        let mut built = Installed::from_checkpoint(checkpoint)
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        // Outcomes reported while it trained changed the model it replaces:
        // the new one learns them too, most of them before the lock and the
        // rest under it (outcomes are stored under it), so that none is
        // missed or learned twice and the outcome mark stays true.
        let rate = self.recommender().config().online_learning_rate;
        // New patterns are kept off the new model's held-out samples.
        let slice_bytes = codec::encode(&slice).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let slice = Arc::new(slice);
        let guard = &slice.held_out;
        let (mut read_up_to, mut relearned) = (read_up_to, 0);
        for _ in 0..CATCH_UP_PASSES {
            let (late, last) = stored_outcomes(store, read_up_to)?;
            read_up_to = last;
            relearned += late.len();
            for o in &late {
                built.learn_outcome(&o.context, &o.pattern, o.success, rate, guard);
            }
            if late.len() < CATCH_UP_REMAINDER {
                break;
            }
        }
        {
            let mut local = self.recommender();
            let (rest, _) = stored_outcomes(store, read_up_to)?;
            relearned += rest.len();
            for o in &rest {
                built.learn_outcome(&o.context, &o.pattern, o.success, rate, guard);
            }
            local.install_built(built);
            // With the model: merges are judged, and outcomes learned,
            // against its held-out samples even if storing them fails.
            self.install_check_slice(slice.clone());
        }
        self.shared.lineage.fetch_add(1, Ordering::Relaxed);
        self.shared.own_learning.fetch_add(1, Ordering::Release);
        self.shared.store.save_check_slice(&slice_bytes)?;
        self.save()?;
        if relearned > 0 {
            tracing::info!(
                outcomes = relearned,
                "outcomes reported during training learned again"
            );
        }
        self.shared
            .counters
            .trainings
            .fetch_add(1, Ordering::Relaxed);
        let info = TrainingInfo {
            finished_ms: crate::clock::now_ms(),
            samples: samples.len(),
            from_outcomes,
            report,
        };
        *self
            .shared
            .last_training
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(info.clone());
        Ok(info)
    }

    /// Installs a checkpoint (trained, imported or merged) and saves it.
    pub fn install_and_save(&self, checkpoint: Checkpoint) -> Result<u64, ModelError> {
        // Checked and built before the lock: recommendations go on meanwhile.
        let built = Installed::from_checkpoint(checkpoint)
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        let version = self.recommender().install_built(built);
        self.save()?;
        Ok(version)
    }

    /// Installs a merged model unless the local one changed since the
    /// merge read it (its outcomes would be lost): None then.
    pub fn install_if_unchanged(
        &self,
        checkpoint: Checkpoint,
        read_version: u64,
    ) -> Result<Option<u64>, ModelError> {
        let built = Installed::from_checkpoint(checkpoint)
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        let version = {
            let mut r = self.recommender();
            if r.version() != read_version {
                return Ok(None);
            }
            r.install_built(built)
        };
        self.save()?;
        Ok(Some(version))
    }

    /// The feature norm of the installed model (None while untrained):
    /// peers' models at another norm are not fetched.
    pub fn feature_norm(&self) -> Option<f32> {
        self.recommender()
            .model()
            .map(|m| m.classifier.features.norm)
    }

    /// The current model as a checkpoint (None while untrained).
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.snapshot().map(|s| s.checkpoint)
    }

    /// The current model and its outcome mark (None while untrained).
    pub fn snapshot(&self) -> Option<ModelSnapshot> {
        let (model, outcomes_through) = {
            let local = self.recommender();
            (local.model_snapshot(), local.outcomes_through)
        };
        // Copied after the lock is let go: recommendations go on meanwhile.
        model.map(|m| ModelSnapshot {
            checkpoint: m.checkpoint(),
            outcomes_through,
        })
    }

    /// Writes the current model to sled (nothing if sled holds it).
    pub fn save(&self) -> Result<(), ModelError> {
        if self.version() == self.shared.saved_version.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(snapshot) = self.snapshot() {
            let bytes = snapshot
                .checkpoint
                .encode()
                .map_err(|e| ModelError::Unavailable(e.to_string()))?;
            self.save_encoded(&bytes, &snapshot)?;
        }
        Ok(())
    }

    /// Writes `bytes`, the encoded checkpoint of `snapshot`, to sled,
    /// unless sled holds this version or a newer one already. A snapshot
    /// older than the live model is still worth writing: its mark says
    /// which outcomes a restart learns again on top of it.
    pub fn save_encoded(&self, bytes: &[u8], snapshot: &ModelSnapshot) -> Result<(), ModelError> {
        let version = snapshot.checkpoint.version;
        let _writing = self
            .shared
            .save_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let saved = &self.shared.saved_version;
        if version <= saved.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.shared
            .store
            .save_checkpoint(bytes, snapshot.outcomes_through)?;
        saved.store(version, Ordering::Relaxed);
        self.shared.next_background_save.store(
            version.saturating_add(self.shared.settings.save_outcomes.get()),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Checks and installs a checkpoint file's bytes. The held-out samples
    /// stay (they are this node's data); the baseline merges are judged
    /// against becomes the imported model's score on them.
    pub fn import(&self, bytes: &[u8]) -> Result<u64, ModelError> {
        let checkpoint =
            Checkpoint::decode(bytes).map_err(|e| ModelError::Invalid(e.to_string()))?;
        let mut slice = gate::CheckSlice::clone(&self.check_slice());
        if !slice.held_out.is_empty() {
            let classifier = checkpoint
                .classifier()
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
            slice.baseline = gate::correct(
                &classifier,
                &slice.held_out,
                self.shared.settings.min_confidence,
            );
        }
        let version = self.install_and_save(checkpoint)?;
        self.shared.lineage.fetch_add(1, Ordering::Relaxed);
        self.shared.own_learning.fetch_add(1, Ordering::Release);
        // An empty slice in memory (none stored, or one that could not be
        // read) is not written over what the store holds.
        if !slice.held_out.is_empty() {
            self.save_check_slice(slice)?;
        }
        Ok(version)
    }

    /// Installs `slice` for the checks (at once, even if storing it fails)
    /// and stores it.
    fn save_check_slice(&self, slice: gate::CheckSlice) -> Result<(), ModelError> {
        let bytes = codec::encode(&slice).map_err(|e| ModelError::Invalid(e.to_string()))?;
        self.install_check_slice(Arc::new(slice));
        self.shared.store.save_check_slice(&bytes)?;
        Ok(())
    }

    fn install_check_slice(&self, slice: Arc<gate::CheckSlice>) {
        *self
            .shared
            .check_slice
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = slice;
    }

    fn check_slice(&self) -> Arc<gate::CheckSlice> {
        self.shared
            .check_slice
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bumped by every training run and import.
    pub fn lineage(&self) -> u64 {
        self.shared.lineage.load(Ordering::Relaxed)
    }

    /// Moves whenever the model learns from this node's own data.
    pub fn own_learning(&self) -> u64 {
        self.shared.own_learning.load(Ordering::Acquire)
    }

    /// Samples the installed model learned from (0: untrained, or a model
    /// made only of peers' merges): influence is counted above 0.
    pub fn own_samples(&self) -> u64 {
        self.recommender().model().map_or(0, |m| m.samples)
    }

    /// What merged models are checked against (reads the latest outcomes
    /// from the store: call it off the async threads).
    pub fn gate(&self) -> gate::Gate {
        let outcomes = match self.shared.store.latest_outcomes(gate::LATEST_OUTCOMES) {
            Ok(records) => records
                .iter()
                .filter_map(|bytes| codec::decode::<Outcome>(bytes, MAX_OUTCOME_BYTES).ok())
                .filter(|o| o.success)
                .map(|o| Sample {
                    context: o.context,
                    label: o.pattern,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the latest outcomes to check merges against");
                Vec::new()
            }
        };
        gate::Gate {
            slice: self.check_slice(),
            outcomes,
            max_drop: self.shared.settings.merge_max_accuracy_drop,
            min_confidence: self.shared.settings.min_confidence,
        }
    }

    pub fn export(&self) -> Result<Vec<u8>, ModelError> {
        self.checkpoint()
            .ok_or_else(|| ModelError::Unavailable("the node has no model yet".into()))?
            .encode()
            .map_err(|e| ModelError::Unavailable(e.to_string()))
    }

    /// Makes `bytes` (with its digest) what this node serves to peers.
    pub fn serve(&self, digest: [u8; 32], bytes: Arc<Vec<u8>>) {
        *self
            .shared
            .served
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(SharedModel { digest, bytes });
    }

    /// Adds patterns' descriptions and their mesh-wide use counts to the
    /// rule-based recommender.
    pub fn describe(
        &self,
        patterns: &[agentmesh_protocol::Pattern],
        described: &mut std::collections::HashMap<String, [u8; 32]>,
    ) {
        // Built and hashed before the lock: recommendations wait only for
        // the descriptions that changed.
        let mut changed = Vec::new();
        for p in patterns {
            let content = &p.content.value;
            let context = Context {
                text: format!("{} {} {}", content.name, content.kind, content.description),
                keywords: p.tag_list(),
                framework: content.framework.clone(),
                language: content.language.clone(),
                ..Context::default()
            };
            // Everything the rules read of the pattern: a change of tags
            // or framework is a new description too.
            let hash =
                agentmesh_protocol::sha256(&serde_json::to_vec(&context).unwrap_or_default());
            if described.get(&p.id) != Some(&hash) {
                described.insert(p.id.clone(), hash);
                changed.push((p.id.as_str(), context));
            }
        }
        let mut r = self.recommender();
        for (id, context) in &changed {
            r.describe(id, context);
        }
        for p in patterns {
            r.set_statistics(&p.id, p.uses.value(), p.successes.value());
        }
    }

    pub fn status(&self) -> ModelStatus {
        let r = self.recommender();
        let c = &self.shared.counters;
        let model = r.model();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ModelStatus {
            enabled: self.shared.settings.enabled,
            trained: model.is_some(),
            version: r.version(),
            samples: model.map_or(0, |m| m.samples),
            classes: model
                .map(|m| m.classifier.labels.clone())
                .unwrap_or_default(),
            feature_dim: model.map(|m| m.classifier.features.dim),
            feature_norm: model.map(|m| m.classifier.features.norm),
            metrics: model
                .and_then(|m| m.report.as_ref())
                .and_then(|r| serde_json::to_value(&r.test).ok()),
            last_training: self
                .shared
                .last_training
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            stored_outcomes: self.shared.store.outcome_count(),
            rule_patterns: r.rule_patterns(),
            recommendations: RecommendationCounts {
                model: load(&c.by_model),
                rules: load(&c.by_rules),
                cached: load(&c.cached),
            },
            online_updates: load(&c.online_updates),
            merges: load(&c.merges),
            peer_models_merged: load(&c.peer_models_merged),
            merge_failures: load(&c.merge_failures),
            peer_models_rejected: load(&c.peer_models_rejected),
            model_bytes_fetched: load(&c.model_bytes_fetched),
            held_out_samples: self.check_slice().held_out.len(),
        }
    }
}

/// The stored check slice (empty if none, or if damaged: reported).
fn read_check_slice(store: &ModelStore) -> gate::CheckSlice {
    match store.check_slice() {
        Ok(None) => gate::CheckSlice::default(),
        Ok(Some(bytes)) => codec::decode(&bytes, gate::MAX_SLICE_BYTES).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the stored held-out samples are damaged; merges are checked on outcomes only, and new patterns learned from outcomes are not kept off held-out samples, until the next training");
            gate::CheckSlice::default()
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stored held-out samples");
            gate::CheckSlice::default()
        }
    }
}

#[cfg(test)]
mod tests;
