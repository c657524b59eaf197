//! Checkpoints: weights, label map, feature configuration, metrics and a
//! version, as one CBOR value. Decoding checks everything before a model is
//! built from it, so a damaged file (or a peer's bytes) cannot crash a node.

use crate::classifier::{check_parts, Classifier, TrainReport};
use crate::features::FeatureConfig;
use crate::model::Weights;
use serde::{Deserialize, Serialize};

/// Format version; bumped when the layout changes.
pub const FORMAT: u32 = 2;

/// Largest checkpoint accepted (a 2^16-wide input layer is 64 MiB).
pub const MAX_CHECKPOINT_BYTES: usize = 96 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: u32,
    /// Model version: bumped by every training run, online update or merge.
    pub version: u64,
    /// Samples the weights have learned from (weights merges by this).
    pub samples: u64,
    pub features: FeatureConfig,
    pub labels: Vec<String>,
    pub weights: Weights,
    pub report: Option<TrainReport>,
}

impl Checkpoint {
    pub fn of(
        classifier: &Classifier,
        version: u64,
        samples: u64,
        report: Option<TrainReport>,
    ) -> Checkpoint {
        Checkpoint {
            format: FORMAT,
            version,
            samples,
            features: classifier.features.clone(),
            labels: classifier.labels.clone(),
            weights: classifier.weights(),
            report,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).map_err(|e| format!("encoding a checkpoint: {e}"))?;
        Ok(out)
    }

    /// Decodes and checks a checkpoint.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() > MAX_CHECKPOINT_BYTES {
            return Err(format!(
                "checkpoint of {} bytes is larger than {MAX_CHECKPOINT_BYTES}",
                bytes.len()
            ));
        }
        let c: Checkpoint =
            ciborium::from_reader(bytes).map_err(|e| format!("malformed checkpoint: {e}"))?;
        if c.format != FORMAT {
            return Err(format!(
                "checkpoint format {} (this build reads {FORMAT})",
                c.format
            ));
        }
        c.validate()?;
        Ok(c)
    }

    /// Do its parts make a model?
    pub fn validate(&self) -> Result<(), String> {
        check_parts(&self.features, &self.labels, &self.weights)
            .map_err(|e| format!("checkpoint: {e}"))
    }

    /// The classifier, taking the weights.
    pub fn into_classifier(self) -> Result<Classifier, String> {
        Classifier::from_owned(self.features, self.labels, self.weights)
    }

    pub fn classifier(&self) -> Result<Classifier, String> {
        Classifier::from_parts(self.features.clone(), self.labels.clone(), &self.weights)
    }
}
