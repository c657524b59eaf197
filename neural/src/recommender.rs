//! What a node answers with: the model when it is trained and sure, the
//! rule-based recommender otherwise; an LRU cache in front (keyed by the
//! context, emptied whenever the model changes); outcomes that take one
//! gradient step at once and update the rules' statistics; installing
//! trained, imported and merged models.

use crate::baseline::RuleRecommender;
use crate::checkpoint::Checkpoint;
use crate::classifier::{Classifier, TrainReport, MAX_LABELS};
use crate::dataset::{Context, Sample};
use crate::error::NeuralError;
use crate::features::FeatureConfig;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RecommenderConfig {
    /// Off: the rule-based recommender answers alone.
    pub model_enabled: bool,
    /// The model answers only if its top probability reaches this.
    pub min_confidence: f64,
    pub cache_entries: usize,
    pub cache_ttl: Duration,
    /// Step size of one outcome's gradient step.
    pub online_learning_rate: f64,
}

impl Default for RecommenderConfig {
    fn default() -> Self {
        RecommenderConfig {
            model_enabled: true,
            min_confidence: 0.25,
            cache_entries: 1000,
            cache_ttl: Duration::from_secs(3600),
            online_learning_rate: 1e-4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Model,
    Rules,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scored {
    pub pattern: String,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Answer {
    pub source: Source,
    pub recommendations: Vec<Scored>,
    /// The model version the answer was computed with (0: none).
    pub model_version: u64,
    pub cached: bool,
}

/// The installed model and what is known about it.
#[derive(Clone)]
pub struct Installed {
    pub classifier: Classifier,
    pub version: u64,
    /// Samples it learned from (training samples plus outcomes).
    pub samples: u64,
    pub report: Option<TrainReport>,
}

impl Installed {
    /// Checks and builds a checkpoint's model (a failure is a
    /// [`NeuralError::Checkpoint`]).
    pub fn from_checkpoint(checkpoint: Checkpoint) -> Result<Installed, NeuralError> {
        let (version, samples, report) = (
            checkpoint.version,
            checkpoint.samples,
            checkpoint.report.clone(),
        );
        Ok(Installed {
            classifier: checkpoint.into_classifier()?,
            version,
            samples,
            report,
        })
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::of(
            &self.classifier,
            self.version,
            self.samples,
            self.report.clone(),
        )
    }

    /// Whether an outcome changes this model: a failure of a pattern it
    /// never learned teaches it nothing worth a new output, and at
    /// [`MAX_LABELS`] there is no room for one.
    pub fn learns_from(&self, pattern: &str, success: bool) -> bool {
        let labels = &self.classifier.labels;
        labels.iter().any(|l| l == pattern) || (success && labels.len() < MAX_LABELS)
    }

    /// One outcome's gradient step at `rate` (a new pattern is imprinted
    /// instead, kept off the `guard` samples: see
    /// [`Classifier::add_label_from`]); every outcome that changes it
    /// raises the version.
    pub fn learn_outcome(
        &mut self,
        context: &Context,
        pattern: &str,
        success: bool,
        rate: f64,
        guard: &[Sample],
    ) -> OutcomeEffect {
        let mut effect = OutcomeEffect::default();
        if !self.learns_from(pattern, success) {
            return effect;
        }
        if self.classifier.labels.iter().any(|l| l == pattern) {
            effect.model_updated = self
                .classifier
                .learn_outcome(context, pattern, success, rate);
        } else {
            // The imprint is what this outcome teaches; a gradient step
            // on top would only disturb the fresh weights.
            effect.pattern_added = self.classifier.add_label_from(pattern, context, guard);
            effect.model_updated = effect.pattern_added;
        }
        if effect.model_updated {
            self.version += 1;
            self.samples += 1;
        }
        effect
    }
}

/// What an outcome changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutcomeEffect {
    /// The model took a gradient step.
    pub model_updated: bool,
    /// The model had not known the pattern: its head grew by one output.
    pub pattern_added: bool,
}

pub struct Recommender {
    config: RecommenderConfig,
    /// Shared with snapshots being copied out (a save, a merge) so that
    /// copying 67 MB never holds up recommendations; an outcome arriving
    /// during such a copy makes its own copy first (`Arc::make_mut`).
    model: Option<Arc<Installed>>,
    rules: RuleRecommender,
    /// The rules' own features (no idf), so they never depend on a model.
    rule_features: FeatureConfig,
    cache: LruCache<(String, usize), (Instant, Answer)>,
}

impl Recommender {
    pub fn new(config: RecommenderConfig) -> Recommender {
        let entries = NonZeroUsize::new(config.cache_entries).unwrap_or(NonZeroUsize::MIN);
        Recommender {
            config,
            model: None,
            rules: RuleRecommender::default(),
            rule_features: FeatureConfig::default(),
            cache: LruCache::new(entries),
        }
    }

    pub fn config(&self) -> &RecommenderConfig {
        &self.config
    }

    pub fn model(&self) -> Option<&Installed> {
        self.model.as_deref()
    }

    /// The installed model, to be read after the caller lets go of any
    /// lock around this recommender.
    pub fn model_snapshot(&self) -> Option<Arc<Installed>> {
        self.model.clone()
    }

    pub fn version(&self) -> u64 {
        self.model.as_ref().map_or(0, |m| m.version)
    }

    /// The patterns the rules know (from descriptions and outcomes).
    pub fn rule_patterns(&self) -> usize {
        self.rules.profiles.len()
    }

    /// Sets a pattern's description (its text, tags) in the rules,
    /// replacing the one it had.
    pub fn describe(&mut self, pattern: &str, text: &Context) {
        let v = self.rule_features.extract_sparse(text);
        self.rules.describe(pattern, &v);
        self.cache.clear();
    }

    /// Sets a pattern's use and success counts (the mesh-wide figures the
    /// pattern store replicates) for the rules' weighting.
    pub fn set_statistics(&mut self, pattern: &str, uses: u64, successes: u64) {
        let profile = self.rules.profiles.entry(pattern.to_string()).or_default();
        if (profile.uses, profile.successes) != (uses, successes) {
            profile.uses = uses;
            profile.successes = successes.min(uses);
            self.cache.clear();
        }
    }

    /// The top `k` patterns for `context`, and who chose them.
    pub fn recommend(&mut self, context: &Context, k: usize) -> Answer {
        let key = (
            serde_json::to_string(context).unwrap_or_else(|_| context.text.clone()),
            k,
        );
        if let Some((at, answer)) = self.cache.get(&key) {
            if at.elapsed() < self.config.cache_ttl {
                return Answer {
                    cached: true,
                    ..answer.clone()
                };
            }
            self.cache.pop(&key);
        }
        let answer = self.compute(context, k);
        self.cache.put(key, (Instant::now(), answer.clone()));
        answer
    }

    fn compute(&self, context: &Context, k: usize) -> Answer {
        let scored = |list: Vec<(String, f64)>| -> Vec<Scored> {
            list.into_iter()
                .map(|(pattern, score)| Scored { pattern, score })
                .collect()
        };
        if let Some(m) = self.model.as_ref().filter(|_| self.config.model_enabled) {
            let top = m.classifier.predict(context, k);
            if top
                .first()
                .is_some_and(|(_, p)| *p >= self.config.min_confidence)
            {
                return Answer {
                    source: Source::Model,
                    recommendations: scored(top),
                    model_version: m.version,
                    cached: false,
                };
            }
        }
        Answer {
            source: Source::Rules,
            recommendations: scored(self.rules.rank(&self.rule_features, context, k)),
            model_version: self.version(),
            cached: false,
        }
    }

    /// Learns from a reported outcome: the rules' statistics (and, on a
    /// success, the pattern's profile), and one gradient step of the model
    /// — growing its head first if the pattern is new to it (kept off the
    /// `guard` samples: see [`Classifier::add_label_from`]).
    pub fn outcome(
        &mut self,
        context: &Context,
        pattern: &str,
        success: bool,
        guard: &[Sample],
    ) -> OutcomeEffect {
        self.learn_rules(context, pattern, success);
        self.learn_model(context, pattern, success, guard)
    }

    /// The rules' half of an outcome.
    pub fn learn_rules(&mut self, context: &Context, pattern: &str, success: bool) {
        // Profiles are kept for at most MAX_LABELS patterns: agents name
        // patterns freely, and each profile holds a sparse vector.
        let tracked =
            self.rules.profiles.contains_key(pattern) || self.rules.profiles.len() < MAX_LABELS;
        if tracked {
            self.rules.record_outcome(pattern, success);
            if success {
                let v = self.rule_features.extract_sparse(context);
                self.rules.learn(pattern, &v);
            }
            self.cache.clear();
        }
    }

    /// The model's half of an outcome (nothing while it is off or
    /// untrained).
    pub fn learn_model(
        &mut self,
        context: &Context,
        pattern: &str,
        success: bool,
        guard: &[Sample],
    ) -> OutcomeEffect {
        let rate = self.config.online_learning_rate;
        let Some(m) = self.model.as_mut().filter(|_| self.config.model_enabled) else {
            return OutcomeEffect::default();
        };
        // Checked first: an outcome that teaches nothing is no reason to
        // copy a model being saved.
        if !m.learns_from(pattern, success) {
            return OutcomeEffect::default();
        }
        self.cache.clear();
        Arc::make_mut(m).learn_outcome(context, pattern, success, rate, guard)
    }

    /// Installs a trained, imported or merged model; its version becomes
    /// at least one above the current one.
    pub fn install(&mut self, checkpoint: Checkpoint) -> Result<u64, NeuralError> {
        Ok(self.install_built(Installed::from_checkpoint(checkpoint)?))
    }

    /// Installs a model built beforehand (outside any lock around this).
    pub fn install_built(&mut self, mut installed: Installed) -> u64 {
        installed.version = installed.version.max(self.version() + 1);
        let version = installed.version;
        self.model = Some(Arc::new(installed));
        self.cache.clear();
        version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::tests::synthetic;
    use crate::classifier::{train, TrainConfig};

    fn trained() -> Checkpoint {
        let samples = synthetic(300);
        let config = TrainConfig {
            max_epochs: 8,
            features: FeatureConfig {
                dim: 256,
                ..FeatureConfig::default()
            },
            ..TrainConfig::default()
        };
        let (classifier, report) = train(&samples, &config, |_| {}).unwrap();
        Checkpoint::of(&classifier, 1, 300, Some(report))
    }

    #[test]
    fn rules_answer_until_a_model_is_installed_and_the_cache_follows_the_model() {
        let mut r = Recommender::new(RecommenderConfig::default());
        r.describe(
            "net",
            &Context::from_text("socket connect peer packet dial"),
        );
        r.describe("db", &Context::from_text("table query index commit row"));
        let ask = Context::from_text("dial the peer socket");
        let first = r.recommend(&ask, 2);
        assert_eq!(first.source, Source::Rules);
        assert_eq!(first.recommendations[0].pattern, "net");
        assert!(!first.cached);
        assert!(r.recommend(&ask, 2).cached);

        r.install(trained()).unwrap();
        let after = r.recommend(&ask, 2);
        assert!(!after.cached, "installing a model empties the cache");
        assert_eq!(after.source, Source::Model);
        assert_eq!(after.recommendations[0].pattern, "net");

        // Switched off: the rules answer alone.
        let mut off = Recommender::new(RecommenderConfig {
            model_enabled: false,
            ..RecommenderConfig::default()
        });
        off.install(trained()).unwrap();
        off.describe("db", &Context::from_text("table query index commit row"));
        assert_eq!(off.recommend(&ask, 2).source, Source::Rules);
    }

    #[test]
    fn an_outcome_for_a_new_pattern_grows_the_model_and_failures_lower_a_pattern() {
        let mut r = Recommender::new(RecommenderConfig {
            online_learning_rate: 0.05,
            ..RecommenderConfig::default()
        });
        r.install(trained()).unwrap();
        let v0 = r.version();
        // A save or merge copying the model out meanwhile keeps the model
        // it took.
        let being_saved = r.model_snapshot().unwrap();
        let ask = Context::from_text("the handle value error result");
        let effect = r.outcome(&ask, "retry-policy", true, &[]);
        assert!(effect.pattern_added && effect.model_updated);
        assert!(r.version() > v0);
        assert_eq!(being_saved.version, v0);
        assert!(!being_saved
            .classifier
            .labels
            .iter()
            .any(|l| l == "retry-policy"));
        let labels = &r.model().unwrap().classifier.labels;
        assert!(labels.contains(&"retry-policy".to_string()));

        let p = |r: &mut Recommender, label: &str| {
            r.model()
                .unwrap()
                .classifier
                .predict(&ask, 4)
                .into_iter()
                .find(|(l, _)| l == label)
                .unwrap()
                .1
        };
        let before = p(&mut r, "net");
        assert!(r.outcome(&ask, "net", false, &[]).model_updated);
        let after = p(&mut r, "net");
        assert!(after < before, "{before} -> {after}");
        // A failure of an unknown pattern adds nothing.
        assert!(!r.outcome(&ask, "never-seen", false, &[]).pattern_added);
    }

    #[test]
    fn the_same_outcomes_make_the_same_model() {
        // A restart learns the outcomes after the last save again: it must
        // reach the model the node had (no dropout draws in the step).
        let mut a = Installed::from_checkpoint(trained()).unwrap();
        let mut b = a.clone();
        let ask = Context::from_text("memoize lookups in an lru cache");
        // The guard the node passes: its held-out samples.
        let held_out = synthetic(60);
        for m in [&mut a, &mut b] {
            let learn = |m: &mut Installed, label, success| {
                m.learn_outcome(&ask, label, success, 1e-4, &held_out)
            };
            assert!(learn(m, "cache", true).pattern_added);
            assert!(learn(m, "net", false).model_updated);
            assert!(learn(m, "cache", true).model_updated);
        }
        assert_eq!(a.version, b.version);
        assert_eq!(
            a.checkpoint().encode().unwrap(),
            b.checkpoint().encode().unwrap()
        );
    }
}
