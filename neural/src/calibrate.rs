//! Restoring a merged model's confidence.
//!
//! Averaging the weights of models trained apart blurs their hidden units,
//! so the merged model's logits come out smaller: its top answer is as
//! often right, but with a lower probability. A node serves the model's
//! answer only at a probability of at least `model.min_confidence` (the
//! rules answer below it), so an uncalibrated merge hands answers it has
//! right to the rules. Measured (`bench federated`, random shards of the
//! cargo-registry data): the merge of four peers' models into a node's own
//! got 383 of 540 held-out samples right at probability 0.25, the local
//! model 429, although its plain top-1 accuracy on the common test was
//! higher (0.95 against 0.92).
//!
//! [`calibrate`] scales the output layer (weights and biases) by the one
//! factor that gives the best likelihood on samples the node holds out
//! (temperature scaling, Guo et al. 2017). One factor cannot change which
//! label ranks first, only how sure the model is of it.
//!
//! The likelihood is taken over the labels the node knew before the merge
//! only. New labels can also lower the top answer's probability: a peer
//! that adds hundreds of copies of existing output units, each a little
//! lower, drowns every answer below `min_confidence`. Fitted over all
//! labels, the factor would sharpen that away and hide it from the check;
//! fitted over the known ones, it restores only what averaging blurred,
//! and the crowding still shows.

use crate::checkpoint::Checkpoint;
use crate::dataset::Sample;
use crate::error::NeuralError;

/// The factors tried (logits × factor). Merged models come out less sure,
/// so the grid reaches further up than down.
pub const FACTORS: [f32; 10] = [0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0];
/// Fewer held-out samples than this fit no factor.
pub const MIN_SAMPLES: usize = 20;

/// Mean negative log-likelihood of `labels` under softmax(`logits` × `factor`).
fn nll(logits: &[Vec<f32>], labels: &[usize], factor: f32) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(z, &y)| {
            let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * factor));
            let sum: f64 = z.iter().map(|&x| f64::from(x * factor - max).exp()).sum();
            sum.ln() - f64::from(z[y] * factor - max)
        })
        .sum();
    total / labels.len().max(1) as f64
}

/// Scales `model`'s output layer by the factor of [`FACTORS`] with the
/// best likelihood on `held_out` over its first `known` labels (the ones
/// the node had before the merge: a merge keeps them first; samples of
/// other labels are left out) and returns the factor; 1 (no change) with
/// fewer than [`MIN_SAMPLES`] usable samples.
pub fn calibrate(
    model: &mut Checkpoint,
    held_out: &[Sample],
    known: usize,
) -> Result<f32, NeuralError> {
    let index: std::collections::HashMap<&str, usize> = model
        .labels
        .iter()
        .take(known)
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let (contexts, labels): (Vec<_>, Vec<usize>) = held_out
        .iter()
        .filter_map(|s| index.get(s.label.as_str()).map(|&y| (&s.context, y)))
        .unzip();
    if labels.len() < MIN_SAMPLES {
        return Ok(1.0);
    }
    let logits: Vec<Vec<f32>> = model
        .classifier()?
        .logits(&contexts)
        .into_iter()
        .map(|mut z| {
            z.truncate(known);
            z
        })
        .collect();
    let mut best = (nll(&logits, &labels, 1.0), 1.0);
    for factor in FACTORS {
        let loss = nll(&logits, &labels, factor);
        if loss < best.0 {
            best = (loss, factor);
        }
    }
    let factor = best.1;
    if factor != 1.0 {
        let out = &mut model.weights.layers[3];
        out.weight.iter_mut().for_each(|w| *w *= factor);
        out.bias.iter_mut().for_each(|b| *b *= factor);
    }
    Ok(factor)
}

/// The share of the probability a merged model gives the right answers on
/// `held_out` that its labels past the first `known` (the peers' new
/// ones) take: 1 − exp(−d), d the mean over the samples of
/// ln(Σ over all labels of e^z / Σ over the known ones), so 0.1 means the
/// new labels cost the right answers a tenth of their probability (a
/// geometric mean). 0 with fewer than [`MIN_SAMPLES`] samples or no new
/// label.
pub fn new_label_share(
    model: &Checkpoint,
    held_out: &[Sample],
    known: usize,
) -> Result<f64, NeuralError> {
    if model.labels.len() <= known || held_out.len() < MIN_SAMPLES {
        return Ok(0.0);
    }
    let contexts: Vec<_> = held_out.iter().map(|s| &s.context).collect();
    let logits = model.classifier()?.logits(&contexts);
    let log_sum = |z: &[f32], max: f32| -> f64 {
        z.iter()
            .map(|&x| f64::from(x - max).exp())
            .sum::<f64>()
            .ln()
    };
    let total: f64 = logits
        .iter()
        .map(|z| {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            log_sum(z, max) - log_sum(&z[..known.min(z.len())], max)
        })
        .sum();
    Ok(1.0 - (-total / logits.len().max(1) as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::tests::synthetic;
    use crate::features::FeatureConfig;
    use crate::{train, TrainConfig};

    fn top(model: &Checkpoint, s: &Sample) -> (String, f64) {
        model.classifier().unwrap().predict(&s.context, 1)[0].clone()
    }

    #[test]
    fn a_model_made_unsure_gets_its_confidence_back_and_keeps_its_answers() {
        let data = synthetic(300);
        let config = TrainConfig {
            max_epochs: 5,
            features: FeatureConfig {
                dim: 512,
                ..FeatureConfig::default()
            },
            ..TrainConfig::default()
        };
        let (classifier, _) = train(&data, &config, |_| {}).unwrap();
        let trained = Checkpoint::of(&classifier, 1, 300, None);
        // Its logits shrunk threefold, as a blurred merge leaves them.
        let mut unsure = trained.clone();
        let out = &mut unsure.weights.layers[3];
        out.weight.iter_mut().for_each(|w| *w /= 3.0);
        out.bias.iter_mut().for_each(|b| *b /= 3.0);
        let mut fixed = unsure.clone();
        let factor = calibrate(&mut fixed, &data[..100], trained.labels.len()).unwrap();
        assert!(factor >= 2.0, "{factor}");
        for s in &data[200..] {
            let (before, after) = (top(&unsure, s), top(&fixed, s));
            assert_eq!(before.0, after.0);
            assert!(after.1 >= before.1);
        }
        // Too few samples: unchanged.
        let mut same = unsure.clone();
        assert_eq!(
            calibrate(&mut same, &data[..5], trained.labels.len()).unwrap(),
            1.0
        );
        assert_eq!(
            same.weights.layers[3].weight,
            unsure.weights.layers[3].weight
        );
    }
}
