//! Deterministic features of a context: hashed word unigrams and bigrams,
//! hashed character n-grams of each word, keywords and categorical fields
//! (code type, framework, language) as their own tokens, and numeric
//! metadata (log-scaled). Token counts are weighted by sublinear term
//! frequency (1 + ln tf) and inverse document frequency learned from the
//! training data, then L2-normalised — the weighting a strong linear text
//! classifier uses — and scaled to a fixed norm ([`FeatureConfig::norm`]).
//! Hashing is FNV-1a with fixed constants, so the same context gives the
//! same vector on every machine and run.

use crate::dataset::Context;
use crate::error::NeuralError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How contexts become vectors. Stored with every checkpoint: a model is
/// only usable with the features it was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// Vector length (a power of two).
    pub dim: usize,
    /// Character n-grams of lengths `char_min..=char_max` per word (0 = off).
    pub char_min: usize,
    pub char_max: usize,
    /// Weight of a character n-gram relative to a word.
    pub char_weight: f32,
    /// Inverse document frequency per bucket (empty until fitted: all 1).
    #[serde(with = "crate::floats")]
    pub idf: Vec<f32>,
    /// L2 norm of the text part of the vector. With Adam a weight moves by
    /// about the learning rate per step whatever its gradient, so this
    /// sets how fast the input layer's rows move the hidden units, and
    /// most runs reach the 50-epoch cap with the validation loss still
    /// falling: a norm of 2 gets further in those epochs. Measured on the
    /// cargo-registry data (README: 12,409 samples, ten splits), the model
    /// minus scikit-learn's LinearSVC on each split: norm 1 +0.06 ± 0.10
    /// points, norm 2 +0.14 ± 0.07 (better on 7 splits, worse on 1); on an
    /// earlier registry's data, 1.5 and 3 did no better than 2. Checkpoints
    /// from before this setting (format 2) were trained at 1, and read so.
    #[serde(default = "missing_norm")]
    pub norm: f32,
}

/// A norm missing from a checkpoint of this format fails validation
/// (format 2's is set to 1 when it is read: `Checkpoint::decode`).
fn missing_norm() -> f32 {
    f32::NAN
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            // Measured on the cargo-registry test-function data (README),
            // held-out accuracy, seeds 42 / 7: 2^16 buckets 0.972 / 0.979,
            // 2^17 0.974 / 0.979 at twice the size, 2^14 0.955 (seed 42).
            // Character n-grams (3-5) changed nothing and doubled the
            // time; dropping one-letter words lost 0.3 points.
            dim: 1 << 16,
            char_min: 0,
            char_max: 0,
            char_weight: 0.5,
            idf: Vec::new(),
            norm: 2.0,
        }
    }
}

/// Largest accepted [`FeatureConfig::norm`].
pub const MAX_NORM: f32 = 100.0;

fn fnv1a(prefix: u8, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(prefix);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            eat(0);
        }
        part.bytes().for_each(&mut eat);
    }
    h
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl FeatureConfig {
    fn bucket(&self, hash: u64) -> usize {
        (hash as usize) & (self.dim - 1)
    }

    /// Token counts of `context` by bucket (before weighting). Each token
    /// also gets a sign from its hash (as scikit-learn's HashingVectorizer
    /// does), so tokens that share a bucket tend to cancel rather than add
    /// up: the sign is kept apart and applied after weighting.
    fn counts(&self, context: &Context) -> HashMap<usize, (f32, f32)> {
        let mut counts: HashMap<usize, (f32, f32)> = HashMap::new();
        let mut add = |hash: u64, weight: f32| {
            let sign = if hash >> 63 == 1 { -1.0 } else { 1.0 };
            let entry = counts.entry(self.bucket(hash)).or_default();
            entry.0 += weight;
            entry.1 += sign * weight;
        };
        let words = words(&context.text);
        for (i, w) in words.iter().enumerate() {
            add(fnv1a(b'w', &[w]), 1.0);
            if let Some(next) = words.get(i + 1) {
                add(fnv1a(b'b', &[w, next]), 1.0);
            }
            if self.char_min > 0 && w.chars().count() >= self.char_min {
                let padded: Vec<char> = format!("<{w}>").chars().collect();
                for n in self.char_min..=self.char_max {
                    for gram in padded.windows(n) {
                        let gram: String = gram.iter().collect();
                        add(fnv1a(b'c', &[&gram]), self.char_weight);
                    }
                }
            }
        }
        for k in &context.keywords {
            add(fnv1a(b'k', &[&k.to_lowercase()]), 1.0);
            for w in self::words(k) {
                add(fnv1a(b'w', &[&w]), 1.0);
            }
        }
        for (field, value) in [
            ("code_type", &context.code_type),
            ("framework", &context.framework),
            ("language", &context.language),
        ] {
            if let Some(v) = value {
                add(fnv1a(b'f', &[field, &v.to_lowercase()]), 1.0);
            }
        }
        counts
    }

    /// Learns the inverse document frequencies from `contexts`.
    pub fn fit<'a>(&mut self, contexts: impl Iterator<Item = &'a Context>) {
        let mut df = vec![0u32; self.dim];
        let mut n = 0u32;
        for c in contexts {
            n += 1;
            for bucket in self.counts(c).keys() {
                df[*bucket] += 1;
            }
        }
        // Smoothed, as scikit-learn's: ln((1 + n) / (1 + df)) + 1.
        self.idf = df
            .iter()
            .map(|&d| ((1.0 + n as f32) / (1.0 + d as f32)).ln() + 1.0)
            .collect();
    }

    /// The vector of `context` as its non-zero entries (indices
    /// ascending): sublinear tf × idf, scaled to L2 norm [`Self::norm`],
    /// plus the numeric metadata (ln(1 + |x|) with its sign) in hashed
    /// buckets.
    pub fn extract_sparse(&self, context: &Context) -> Vec<(u32, f32)> {
        // Sorted before anything is summed: a float sum in hash-map order
        // would differ in its last bit from one run to the next.
        let mut counts: Vec<(usize, (f32, f32))> = self.counts(context).into_iter().collect();
        counts.sort_unstable_by_key(|(bucket, _)| *bucket);
        let mut v: Vec<(u32, f32)> = counts
            .into_iter()
            .map(|(bucket, (tf, signed))| {
                let idf = self.idf.get(bucket).copied().unwrap_or(1.0);
                (
                    bucket as u32,
                    (1.0 + tf.ln().max(0.0)) * idf * signed.signum(),
                )
            })
            .collect();
        let norm = v.iter().map(|(_, x)| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            let scale = self.norm / norm;
            v.iter_mut().for_each(|(_, x)| *x *= scale);
        }
        for (key, value) in &context.metadata {
            let bucket = self.bucket(fnv1a(b'm', &[key])) as u32;
            let x = (value.abs().ln_1p() as f32).copysign(*value as f32) * 0.1;
            match v.binary_search_by_key(&bucket, |(i, _)| *i) {
                Ok(at) => v[at].1 += x,
                Err(at) => v.insert(at, (bucket, x)),
            }
        }
        v.retain(|(_, x)| *x != 0.0);
        v
    }

    /// The same vector, dense.
    pub fn extract(&self, context: &Context) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        for (i, x) in self.extract_sparse(context) {
            v[i as usize] = x;
        }
        v
    }

    /// Checks a configuration read from a checkpoint or a peer.
    pub fn validate(&self) -> Result<(), NeuralError> {
        if !self.dim.is_power_of_two() || !(64..=1 << 20).contains(&self.dim) {
            return Err(NeuralError::InvalidConfig(format!(
                "feature dim {} is not a power of two in 64..=2^20",
                self.dim
            )));
        }
        if !self.idf.is_empty() && self.idf.len() != self.dim {
            return Err(NeuralError::InvalidConfig(format!(
                "{} idf weights for dim {}",
                self.idf.len(),
                self.dim
            )));
        }
        if self.char_min > self.char_max || self.char_max > 8 {
            return Err(NeuralError::InvalidConfig(
                "character n-gram lengths out of range".into(),
            ));
        }
        if self.idf.iter().any(|x| !x.is_finite()) || !self.char_weight.is_finite() {
            return Err(NeuralError::InvalidConfig(
                "feature weights are not finite".into(),
            ));
        }
        if !(self.norm > 0.0 && self.norm <= MAX_NORM) {
            return Err(NeuralError::InvalidConfig(format!(
                "feature norm {} is not in (0, {MAX_NORM}]",
                self.norm
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn features_are_deterministic_and_normalised() {
        let config = FeatureConfig::default();
        let c = Context {
            keywords: vec!["HashMap".into()],
            framework: Some("tokio".into()),
            ..Context::from_text("spawn a task and await its JoinHandle")
        };
        let a = config.extract(&c);
        assert_eq!(a, config.extract(&c.clone()));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - config.norm).abs() < 1e-4, "{norm}");
        // The norm scales the vector and changes nothing else.
        let unit = FeatureConfig {
            norm: 1.0,
            ..config.clone()
        };
        let b = unit.extract(&c);
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| (x - config.norm * y).abs() < 1e-6));
        // Fixed hashing: the same bucket on every machine and every run.
        // (FNV-1a of "w" "spawn", computed independently.)
        assert_eq!(config.bucket(fnv1a(b'w', &["spawn"])), 6069);
        assert_ne!(
            a,
            config.extract(&Context::from_text("parse a json document"))
        );
    }

    #[test]
    fn idf_lowers_common_tokens() {
        let mut config = FeatureConfig::default();
        let docs = [
            Context::from_text("the cat"),
            Context::from_text("the dog"),
            Context::from_text("the bird"),
        ];
        config.fit(docs.iter());
        let v = config.extract(&Context::from_text("the cat"));
        let the = v[config.bucket(fnv1a(b'w', &["the"]))].abs();
        let cat = v[config.bucket(fnv1a(b'w', &["cat"]))].abs();
        assert!(cat > the, "cat {cat} the {the}");
    }

    proptest! {
        #[test]
        fn any_text_gives_a_finite_vector(text in ".{0,200}", x in proptest::num::f64::NORMAL) {
            let config = FeatureConfig { dim: 256, ..FeatureConfig::default() };
            let mut c = Context::from_text(&text);
            c.metadata.insert("files".into(), x);
            prop_assert!(config.extract(&c).iter().all(|v| v.is_finite()));
        }
    }
}
