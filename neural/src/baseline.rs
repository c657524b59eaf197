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
    /// Sum of the unit vectors seen, sparse.
    sum: HashMap<u32, f32>,
    /// Uses and successes, for the weight.
    pub uses: u64,
    pub successes: u64,
}

impl Profile {
    fn norm(&self) -> f32 {
        self.sum.values().map(|v| v * v).sum::<f32>().sqrt()
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
    /// Adds a text (a description or a context) to `label`'s profile.
    pub fn learn(&mut self, label: &str, vector: &[(u32, f32)]) {
        let profile = self.profiles.entry(label.to_string()).or_default();
        for (i, x) in vector {
            *profile.sum.entry(*i).or_default() += x;
        }
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
        let mut scored: Vec<(String, f64)> = self
            .profiles
            .iter()
            .filter_map(|(label, p)| {
                let norm = p.norm();
                if norm == 0.0 {
                    return None;
                }
                let dot: f32 = p.sum.iter().map(|(i, x)| x * v[*i as usize]).sum();
                Some((label.clone(), f64::from(dot / norm) * p.success_rate()))
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }
}
