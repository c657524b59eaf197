//! Checkpoints: weights, label map, feature configuration, metrics and a
//! version, as one CBOR value. Decoding checks everything before a model is
//! built from it, so a damaged file (or a peer's bytes) cannot crash a node.

use crate::classifier::{check_parts, Classifier, TrainReport};
use crate::error::NeuralError;
use crate::features::FeatureConfig;
use crate::model::Weights;
use serde::{Deserialize, Serialize};

/// Format version; bumped when the layout changes. Format 3 added the
/// feature norm: a build that reads only 2 would ignore it and feed the
/// model vectors of the wrong size, so it must refuse these.
pub const FORMAT: u32 = 3;

/// Format 2 (before the feature norm) is read as format 3 at norm 1,
/// which is what it was trained at: a node's stored model survives the
/// upgrade.
const UNIT_NORM_FORMAT: u32 = 2;

/// Largest checkpoint accepted (a 2^16-wide input layer is 64 MiB).
pub const MAX_CHECKPOINT_BYTES: usize = 96 << 20;
/// Widest feature vector whose checkpoint fits in [`MAX_CHECKPOINT_BYTES`]
/// (the input layer is this many rows of 256 f32s); nodes refuse wider
/// settings at start-up rather than train a model they cannot load back.
pub const MAX_FEATURE_DIM: usize = 1 << 16;
// The input layer and idf, plus a generous 16 MiB for the rest (labels,
// the other layers at MAX_LABELS outputs, framing).
const _: () = assert!(
    MAX_FEATURE_DIM * (crate::model::HIDDEN[0] + 1) * 4 + (16 << 20) <= MAX_CHECKPOINT_BYTES
);

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

    pub fn encode(&self) -> Result<Vec<u8>, NeuralError> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out)
            .map_err(|e| NeuralError::Checkpoint(format!("encoding a checkpoint: {e}")))?;
        Ok(out)
    }

    /// Decodes and checks a checkpoint; any failure is a
    /// [`NeuralError::Checkpoint`].
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, NeuralError> {
        if bytes.len() > MAX_CHECKPOINT_BYTES {
            return Err(NeuralError::Checkpoint(format!(
                "checkpoint of {} bytes is larger than {MAX_CHECKPOINT_BYTES}",
                bytes.len()
            )));
        }
        let mut c: Checkpoint = ciborium::from_reader(bytes)
            .map_err(|e| NeuralError::Checkpoint(format!("malformed checkpoint: {e}")))?;
        if c.format == UNIT_NORM_FORMAT {
            c.features.norm = 1.0;
            c.format = FORMAT;
        }
        if c.format != FORMAT {
            return Err(NeuralError::Checkpoint(format!(
                "checkpoint format {} (this build reads {FORMAT})",
                c.format
            )));
        }
        c.validate()?;
        Ok(c)
    }

    /// Do its parts make a model?
    pub fn validate(&self) -> Result<(), NeuralError> {
        check_parts(&self.features, &self.labels, &self.weights)
            .map_err(|e| NeuralError::Checkpoint(format!("checkpoint: {e}")))
    }

    /// The classifier, taking the weights.
    pub fn into_classifier(self) -> Result<Classifier, NeuralError> {
        Classifier::from_owned(self.features, self.labels, self.weights)
    }

    pub fn classifier(&self) -> Result<Classifier, NeuralError> {
        Classifier::from_parts(self.features.clone(), self.labels.clone(), &self.weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{tests::synthetic, train, TrainConfig};
    use ciborium::Value;

    /// `checkpoint`'s bytes with the format set to `format` and no norm
    /// among the features: what a build from before the norm wrote, as 2.
    fn without_norm(checkpoint: &Checkpoint, format: u32) -> Vec<u8> {
        let mut value = Value::serialized(checkpoint).unwrap();
        let Value::Map(fields) = &mut value else {
            panic!("a checkpoint is a map");
        };
        for (key, field) in fields.iter_mut() {
            match (key.as_text(), field) {
                (Some("format"), field) => *field = Value::Integer(format.into()),
                (Some("features"), Value::Map(features)) => {
                    features.retain(|(k, _)| k.as_text() != Some("norm"))
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        ciborium::into_writer(&value, &mut out).unwrap();
        out
    }

    #[test]
    fn a_format_2_checkpoint_reads_at_norm_1_and_predicts_as_trained() {
        let config = TrainConfig {
            max_epochs: 4,
            features: FeatureConfig {
                dim: 256,
                norm: 1.0,
                ..FeatureConfig::default()
            },
            ..TrainConfig::default()
        };
        let samples = synthetic(150);
        let (classifier, _) = train(&samples, &config, |_| {}).unwrap();
        let checkpoint = Checkpoint::of(&classifier, 5, 150, None);
        let old = without_norm(&checkpoint, 2);
        let read = Checkpoint::decode(&old).unwrap();
        assert_eq!(
            (read.format, read.version, read.features.norm),
            (FORMAT, 5, 1.0)
        );
        let restored = read.into_classifier().unwrap();
        for s in samples.iter().take(10) {
            assert_eq!(
                classifier.predict(&s.context, 3),
                restored.predict(&s.context, 3)
            );
        }
        // One of this format must give its norm.
        let refused = Checkpoint::decode(&without_norm(&checkpoint, FORMAT)).unwrap_err();
        assert!(matches!(refused, NeuralError::Checkpoint(_)), "{refused:?}");
        assert!(
            refused.to_string().contains("feature norm NaN"),
            "{refused}"
        );
        // A format this build does not know is refused, and named.
        let mut newer = Checkpoint::of(&classifier, 5, 150, None);
        newer.format = FORMAT + 1;
        let refused = Checkpoint::decode(&newer.encode().unwrap()).unwrap_err();
        assert!(refused.to_string().contains("format 4"), "{refused}");
    }
}
