//! The rule-based recommender: cosine similarity between a context's
//! feature vector and each pattern's profile (the vectors of its
//! description and of the contexts it was used in), weighted by the
//! pattern's success rate. It answers when the model is untrained, off, or
//! unsure, and is the baseline the model must beat.

use crate::dataset::Context;
use crate::features::FeatureConfig;
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Sum of the feature vectors seen (the description's and the
    /// contexts', all of one norm), sparse.
    sum: HashMap<u32, f32>,
    /// The current description's vector, kept so that a new description
    /// replaces it in `sum` rather than adding to it.
    description: Vec<(u32, f32)>,
    /// Uses and successes, for the weight.
    pub uses: u64,
    pub successes: u64,
}

impl Profile {
    fn norm(&self) -> f64 {
        self.sum
            .values()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Laplace-smoothed success rate: an unused pattern counts as 1/2.
    pub fn success_rate(&self) -> f64 {
        (self.successes as f64 + 1.0) / (self.uses as f64 + 2.0)
    }
}

#[derive(Debug, Clone, Default)]
pub struct RuleRecommender {
    pub profiles: HashMap<String, Profile>,
}

impl RuleRecommender {
    /// Adds a context `label` was used in to its profile.
    pub fn learn(&mut self, label: &str, vector: &[(u32, f32)]) {
        let profile = self.profiles.entry(label.to_string()).or_default();
        for (i, x) in vector {
            *profile.sum.entry(*i).or_default() += x;
        }
    }

    /// Sets `label`'s description, replacing the one it had.
    pub fn describe(&mut self, label: &str, vector: &[(u32, f32)]) {
        let profile = self.profiles.entry(label.to_string()).or_default();
        for (i, x) in std::mem::take(&mut profile.description) {
            if let Some(sum) = profile.sum.get_mut(&i) {
                *sum -= x;
                // What remains of a bucket only the old description used
                // is rounding error.
                if sum.abs() < 1e-6 {
                    profile.sum.remove(&i);
                }
            }
        }
        for (i, x) in vector {
            *profile.sum.entry(*i).or_default() += x;
        }
        profile.description = vector.to_vec();
    }

    pub fn record_outcome(&mut self, label: &str, success: bool) {
        let profile = self.profiles.entry(label.to_string()).or_default();
        profile.uses += 1;
        profile.successes += u64::from(success);
    }

    /// Labels by score (cosine × success rate), best first, at most `k`.
    pub fn rank(
        &self,
        features: &FeatureConfig,
        context: &Context,
        k: usize,
    ) -> Vec<(String, f64)> {
        let v = features.extract(context);
        // Divided by the context's norm too, so that the score is a cosine
        // in [-1, 1] whatever norm the features are scaled to (in f64: the
        // squares of tiny metadata values underflow in f32). An empty
        // context scores 0 against every pattern.
        let context_norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let mut scored: Vec<(String, f64)> = self
            .profiles
            .iter()
            .filter_map(|(label, p)| {
                let norm = p.norm();
                if norm == 0.0 {
                    return None;
                }
                let dot: f64 = p
                    .sum
                    .iter()
                    .map(|(i, x)| f64::from(*x) * f64::from(v[*i as usize]))
                    .sum();
                let cosine = if context_norm > 0.0 {
                    dot / (norm * context_norm)
                } else {
                    0.0
                };
                Some((label.clone(), cosine * p.success_rate()))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_description_replaces_the_old_one() {
        let features = FeatureConfig {
            dim: 1 << 12,
            ..FeatureConfig::default()
        };
        let mut rules = RuleRecommender::default();
        let text = |t: &str| features.extract_sparse(&Context::from_text(t));
        rules.describe("store", &text("parse json documents"));
        rules.describe("queue", &text("send messages over channels"));
        let asked = Context::from_text("parse json");
        assert_eq!(rules.rank(&features, &asked, 1)[0].0, "store");
        // The score is cosine × success rate (1/2 for an unused pattern),
        // whatever norm the features are scaled to.
        let described = Context::from_text("parse json documents");
        let score = rules.rank(&features, &described, 1)[0].1;
        assert!((score - 0.5).abs() < 1e-5, "{score}");
        rules.describe("store", &text("table query index commit row"));
        let ranked = rules.rank(&features, &asked, 2);
        assert!(
            ranked.iter().all(|(_, score)| *score == 0.0),
            "the old description still scores: {ranked:?}"
        );
        assert_eq!(
            rules.rank(&features, &Context::from_text("commit a row"), 1)[0].0,
            "store"
        );
    }
}
