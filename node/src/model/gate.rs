//! The check a merged model passes before it is installed: it must not be
//! worse than the local model on this node's own data.
//!
//! Clipping (`agentmesh_neural::merge`) bounds how far a peer's model moves
//! this one, not whether the move is harmful: a bounded bias on one output
//! unit can still change every answer. So each merge is judged on samples
//! only this node holds:
//!
//! - the **held-out slice**: the validation and test parts of the last
//!   training run (at most [`MAX_HELD_OUT`]), which the trained model never
//!   learned from, and how many of them it got right (the baseline);
//! - the latest [`LATEST_OUTCOMES`] successful outcomes agents reported
//!   here (learned already, so they show what a merge would unlearn).
//!
//! "Right" means what the node would serve: the top-1 label, at a
//! probability of at least `model.min_confidence` (below it the rules
//! answer). With `a(n)` = ⌊`model.merge_max_accuracy_drop` × n⌋, a
//! candidate passes if on the held-out slice it gets at least min(baseline
//! − a, what the local model gets) right, and on the outcomes at least what
//! the local model gets minus a. The held-out floor is fixed at training
//! time, so merges cannot wear held-out accuracy down a little at a time;
//! if the local model is already below it (outcomes moved it), a merge may
//! not lower it further.
//! A candidate's top answer must also be right, at any probability, for
//! at least the local model's count − a of the held-out samples:
//! candidates are calibrated (sharpened) and the local model is not, and
//! this keeps answers lost from hiding behind answers made surer. The outcomes' floor follows the local model, so
//! it bounds each merge, not their sum.
//!
//! A round first merges each peer's model alone: one that does not fit, or
//! that alone costs more than [`SCREEN_FACTOR`] times the allowance, is
//! rejected and named, however many honest models beside it would dilute
//! it. The rest are merged together and each is judged by what it adds to
//! the others (leave one out, "reject on negative influence"): one
//! without which the others' merge gets more than the allowance more
//! samples right is rejected. Requiring each to pass the floor alone
//! rejects honest models: one trained on other data moves this model a
//! little off its own samples (`bench federated`, random shards: 17 of 20
//! honest models failed alone, by 1 to 6 samples in 540), and only
//! averaged do their errors cancel. What is kept is installed if it
//! passes the floors above; if not, the best kept one that passes alone
//! is installed and the others wait for the next round. A node with
//! neither held-out samples nor successful outcomes
//! (never trained here: untrained, or running a model it imported) has
//! nothing to judge by and merges unchecked; `held_out_samples` in
//! `GET /v1/model` shows which.

use agentmesh_neural::calibrate::{calibrate, new_label_share};
use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::merge::{merge_capped, MergeReport};
use agentmesh_neural::{Classifier, NeuralError, Sample};
use serde::{Deserialize, Serialize};

/// A model that alone costs more than this many times the allowance is
/// rejected even if others would dilute it. Honest models trained on
/// other data alone cost up to about one allowance (`bench federated`,
/// random shards: 1 to 6 of 540 held-out samples, the allowance being 5);
/// the poisons of the tests cost a third or more.
pub const SCREEN_FACTOR: usize = 3;
/// The most a peer's new patterns may take of the probability this node's
/// model gives its own held-out answers (see
/// `agentmesh_neural::calibrate::new_label_share`). Patterns this node has
/// not seen belong mostly to other contexts; one learned from a single
/// outcome is imprinted from the patterns its context resembled and takes
/// a share of theirs by design, so the bound is loose. Made-up labels that
/// copy existing ones take more (in the unit test, 250 copies of one
/// output unit set one lower took a third; fewer copies take less, and
/// [`agentmesh_neural::merge::MAX_NEW_LABELS_PER_PEER`] bounds how many
/// one model brings). Calibration restores the top
/// answer's confidence, so such labels would not cost answers the check
/// counts; they would crowd the ranks below the top and the label map.
pub const MAX_NEW_LABEL_SHARE: f64 = 0.25;
/// Most held-out samples kept from a training run.
pub const MAX_HELD_OUT: usize = 1_000;
/// Latest successful outcomes a merge is also judged on.
pub const LATEST_OUTCOMES: usize = 256;
/// Most encoded bytes kept in the held-out samples (so a stored slice is
/// read back within [`MAX_SLICE_BYTES`]).
pub const MAX_HELD_OUT_BYTES: usize = 8 << 20;
/// Largest stored slice read back: the samples plus generous framing.
pub const MAX_SLICE_BYTES: usize = 2 * MAX_HELD_OUT_BYTES;

/// A sample's encoded size (an unencodable one counts as too large).
fn sample_bytes(s: &Sample) -> usize {
    agentmesh_protocol::codec::encode(s).map_or(usize::MAX / 2, |b| b.len() + 16)
}

/// What is stored: the held-out samples and the baseline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckSlice {
    pub held_out: Vec<Sample>,
    /// How many of them the model got right when it was trained or
    /// imported.
    pub baseline: usize,
}

impl CheckSlice {
    /// The held-out part of a training run's samples (the same seeded
    /// split training used; at most [`MAX_HELD_OUT`] samples and
    /// [`MAX_HELD_OUT_BYTES`] of text) and the trained model's score on it.
    pub fn from_training(
        samples: &[Sample],
        seed: u64,
        trained: &Classifier,
        min_confidence: f64,
    ) -> CheckSlice {
        let (_, validation, test) = agentmesh_neural::dataset::split(samples.len(), seed);
        let mut bytes = 0;
        let held_out: Vec<Sample> = validation
            .into_iter()
            .chain(test)
            .map(|i| &samples[i])
            .take_while(|s| {
                bytes += sample_bytes(s);
                bytes <= MAX_HELD_OUT_BYTES
            })
            .take(MAX_HELD_OUT)
            .cloned()
            .collect();
        let baseline = correct(trained, &held_out, min_confidence);
        CheckSlice { held_out, baseline }
    }
}

/// Samples the model answers with their label: its top-1 prediction, at a
/// probability of at least `min_confidence` (below it the node answers
/// from the rules, so a model whose answers were all drowned in made-up
/// labels would not count as right).
pub fn correct(classifier: &Classifier, samples: &[Sample], min_confidence: f64) -> usize {
    right(classifier, samples, min_confidence).0
}

/// Samples answered right at `min_confidence`, and samples whose top
/// answer is right at any probability.
fn right(classifier: &Classifier, samples: &[Sample], min_confidence: f64) -> (usize, usize) {
    let (mut confident, mut top1) = (0, 0);
    for s in samples {
        if let Some((label, p)) = classifier.predict(&s.context, 1).first() {
            if *label == s.label {
                top1 += 1;
                confident += usize::from(*p >= min_confidence);
            }
        }
    }
    (confident, top1)
}

pub struct Gate {
    pub slice: std::sync::Arc<CheckSlice>,
    pub outcomes: Vec<Sample>,
    pub max_drop: f64,
    /// The node's `model.min_confidence`: answers below it are the rules'.
    pub min_confidence: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    /// Held-out samples answered right at `min_confidence`.
    held_out: usize,
    /// Held-out samples whose top answer is right, at any probability: a
    /// calibrated candidate is sharper than the local model, and this
    /// keeps answers it lost from hiding behind answers it made surer.
    top1: usize,
    outcomes: usize,
}

impl Gate {
    fn is_empty(&self) -> bool {
        self.slice.held_out.is_empty() && self.outcomes.is_empty()
    }

    fn allowance(&self, n: usize) -> usize {
        (self.max_drop * n as f64).floor() as usize
    }

    fn score(&self, c: &Checkpoint) -> Result<Score, NeuralError> {
        let classifier = c.classifier()?;
        let (held_out, top1) = right(&classifier, &self.slice.held_out, self.min_confidence);
        Ok(Score {
            held_out,
            top1,
            outcomes: correct(&classifier, &self.outcomes, self.min_confidence),
        })
    }

    /// Why a model that scores `alone` merged by itself is rejected
    /// whatever it is merged with: more than [`SCREEN_FACTOR`] times the
    /// allowance (at least that many samples) below the local model, on
    /// held-out answers served, held-out top answers, or outcomes (None: it
    /// may be merged with others).
    fn screen(&self, local: Score, alone: Score) -> Option<String> {
        let (n, m) = (self.slice.held_out.len(), self.outcomes.len());
        let far = |k: usize| SCREEN_FACTOR * self.allowance(k).max(1);
        if alone.held_out + far(n) < local.held_out {
            return Some(format!(
                "alone it would get {} of this node's {n} held-out samples right, the local model {}",
                alone.held_out, local.held_out
            ));
        }
        if alone.top1 + far(n) < local.top1 {
            return Some(format!(
                "alone its top answer would be right for {} of this node's {n} held-out samples, the local model's for {}",
                alone.top1, local.top1
            ));
        }
        if alone.outcomes + far(m) < local.outcomes {
            return Some(format!(
                "alone it would get {} of this node's latest {m} successful outcomes right, the local model {}",
                alone.outcomes, local.outcomes
            ));
        }
        None
    }

    /// Why a model whose merge scores `with` (against `without` it)
    /// harms the merge: without it, more than the allowance more samples
    /// are right (held-out answers served, held-out top answers, or
    /// outcomes; None: it does not harm it).
    fn harm(&self, without: Score, with: Score) -> Option<String> {
        let (n, m) = (self.slice.held_out.len(), self.outcomes.len());
        if without.held_out > with.held_out + self.allowance(n) {
            return Some(format!(
                "with it the merge gets {} of this node's {n} held-out samples right, without it {}",
                with.held_out, without.held_out
            ));
        }
        if without.top1 > with.top1 + self.allowance(n) {
            return Some(format!(
                "with it the merge's top answer is right for {} of this node's {n} held-out samples, without it {}",
                with.top1, without.top1
            ));
        }
        if without.outcomes > with.outcomes + self.allowance(m) {
            return Some(format!(
                "with it the merge gets {} of this node's latest {m} successful outcomes right, without it {}",
                with.outcomes, without.outcomes
            ));
        }
        None
    }

    /// Why `candidate` may not replace a model that scored `local` (None:
    /// it may).
    fn judge(&self, local: Score, candidate: Score) -> Option<String> {
        let n = self.slice.held_out.len();
        let floor = self
            .slice
            .baseline
            .saturating_sub(self.allowance(n))
            .min(local.held_out);
        if candidate.held_out < floor {
            return Some(format!(
                "it would get {} of this node's {n} held-out samples right, below the floor of {floor} (the local model gets {})",
                candidate.held_out, local.held_out
            ));
        }
        let top1_floor = local.top1.saturating_sub(self.allowance(n));
        if candidate.top1 < top1_floor {
            return Some(format!(
                "its top answer would be right for {} of this node's {n} held-out samples, the local model's for {}",
                candidate.top1, local.top1
            ));
        }
        let m = self.outcomes.len();
        let floor = local.outcomes.saturating_sub(self.allowance(m));
        if candidate.outcomes < floor {
            return Some(format!(
                "it would get {} of this node's latest {m} successful outcomes right, below the floor of {floor} (the local model gets {})",
                candidate.outcomes, local.outcomes
            ));
        }
        None
    }
}

/// A merge round's result: the model to install (if any) with its report
/// (indices are the peers'), the peers rejected by the check, and the
/// peers whose models were kept but not merged this round because only
/// the best one alone was installed (see [`merge_checked`]): neither
/// merged nor rejected.
pub struct Checked {
    pub merged: Option<(Checkpoint, MergeReport)>,
    pub rejected: Vec<(usize, String)>,
    pub deferred: Vec<usize>,
}

/// Merges `peers` into `local` with each peer's share capped, installing
/// only what passes `gate` (module docs). Without a check (no local model,
/// or nothing to judge by) it fails when no peer model is usable; with
/// one, unusable models are rejected and named instead.
pub fn merge_checked(
    local: Option<&Checkpoint>,
    peers: &[Checkpoint],
    caps: &[f64],
    gate: &Gate,
) -> Result<Checked, NeuralError> {
    let all: Vec<usize> = (0..peers.len()).collect();
    let Some(local) = local.filter(|_| !gate.is_empty()) else {
        return Ok(Checked {
            merged: Some(merge_subset(local, peers, caps, &all, &[])?),
            rejected: Vec::new(),
            deferred: Vec::new(),
        });
    };
    let before = gate.score(local)?;
    // Each alone: models that do not fit (too far, too many new labels),
    // whose new labels take the node's answers, or far worse than the
    // local one are rejected, even where honest ones beside them would
    // dilute them past the floor. The scores alone (not the models: each
    // is a whole model) are kept for the fallback below.
    let mut rejected = Vec::new();
    let mut usable = Vec::new();
    let mut alone_scores = std::collections::HashMap::new();
    for i in all {
        let alone = match merge_subset(Some(local), peers, caps, &[i], &gate.slice.held_out) {
            Ok(alone) => alone,
            Err(e) => {
                rejected.push((i, e.to_string()));
                continue;
            }
        };
        if !alone.1.labels_added.is_empty() {
            let known = local.labels.len();
            let share = new_label_share(&alone.0, &gate.slice.held_out, known)?;
            // NaN (a model whose outputs are not numbers) fails too.
            if share.is_nan() || share > MAX_NEW_LABEL_SHARE {
                rejected.push((
                    i,
                    format!(
                        "its {} new patterns would take {:.0}% of the probability of this node's held-out answers",
                        alone.1.labels_added.len(),
                        share * 100.0
                    ),
                ));
                continue;
            }
        }
        let score = gate.score(&alone.0)?;
        if let Some(reason) = gate.screen(before, score) {
            rejected.push((i, reason));
            continue;
        }
        usable.push(i);
        alone_scores.insert(i, score);
    }
    if usable.is_empty() {
        return Ok(Checked {
            merged: None,
            rejected,
            deferred: Vec::new(),
        });
    }
    let together = merge_subset(Some(local), peers, caps, &usable, &gate.slice.held_out)?;
    let with_all = gate.score(&together.0)?;
    // Then each left out in turn: a model without which the others do
    // better by more than the allowance is rejected.
    let mut kept = Vec::new();
    for &i in &usable {
        let without = if usable.len() == 1 {
            before
        } else {
            let others: Vec<usize> = usable.iter().copied().filter(|&j| j != i).collect();
            gate.score(&merge_subset(Some(local), peers, caps, &others, &gate.slice.held_out)?.0)?
        };
        match gate.harm(without, with_all) {
            Some(reason) => rejected.push((i, reason)),
            None => kept.push(i),
        }
    }
    if !kept.is_empty() {
        let (merged, score) = if kept == usable {
            (together, with_all)
        } else {
            let m = merge_subset(Some(local), peers, caps, &kept, &gate.slice.held_out)?;
            let score = gate.score(&m.0)?;
            (m, score)
        };
        if gate.judge(before, score).is_none() {
            return Ok(Checked {
                merged: Some(merged),
                rejected,
                deferred: Vec::new(),
            });
        }
    }
    // Together below the floor: the best kept one that passes alone is
    // installed, and the other kept ones wait for the next round, neither
    // merged nor charged (measured against the new model, they may pass
    // then). If none passes alone, each is rejected with its reason alone
    // (and not fetched again until its peer shares another model).
    let best = kept
        .iter()
        .filter_map(|i| alone_scores.get(i).map(|s| (*i, s)))
        .filter(|(_, s)| gate.judge(before, **s).is_none())
        .max_by_key(|(_, s)| (s.held_out, s.outcomes));
    match best {
        Some((chosen, _)) => Ok(Checked {
            merged: Some(merge_subset(
                Some(local),
                peers,
                caps,
                &[chosen],
                &gate.slice.held_out,
            )?),
            rejected,
            deferred: kept.into_iter().filter(|&i| i != chosen).collect(),
        }),
        None => {
            for i in kept {
                let reason = alone_scores
                    .get(&i)
                    .and_then(|s| gate.judge(before, *s))
                    .unwrap_or_else(|| "together with the others below the floor".into());
                rejected.push((i, reason));
            }
            Ok(Checked {
                merged: None,
                rejected,
                deferred: Vec::new(),
            })
        }
    }
}

/// The merge of `peers[chosen]`, its report indexed like `peers`, its
/// confidence calibrated on `held_out` (`agentmesh_neural::calibrate`:
/// averaging leaves a model less sure of answers it has right, and the
/// node serves only answers at `model.min_confidence`).
fn merge_subset(
    local: Option<&Checkpoint>,
    peers: &[Checkpoint],
    caps: &[f64],
    chosen: &[usize],
    held_out: &[Sample],
) -> Result<(Checkpoint, MergeReport), NeuralError> {
    let subset: Vec<&Checkpoint> = chosen.iter().map(|&i| &peers[i]).collect();
    let subset_caps: Vec<f64> = chosen.iter().map(|&i| caps[i]).collect();
    let (mut merged, mut report) = merge_capped(local, &subset, &subset_caps)?;
    calibrate(&mut merged, held_out, local.map_or(0, |l| l.labels.len()))?;
    let mut shares = vec![0.0; peers.len()];
    for (k, &i) in chosen.iter().enumerate() {
        shares[i] = report.shares[k];
    }
    report.shares = shares;
    for (k, _) in &mut report.skipped {
        *k = chosen[*k];
    }
    Ok((merged, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_neural::features::FeatureConfig;
    use agentmesh_neural::{Context, TrainConfig};

    const TOPICS: [(&str, [&str; 4]); 4] = [
        ("net", ["socket", "dial", "peer", "packet"]),
        ("db", ["table", "query", "index", "row"]),
        ("ui", ["button", "click", "pixel", "layout"]),
        ("fs", ["file", "directory", "path", "inode"]),
    ];

    fn samples(n: usize, offset: usize) -> Vec<Sample> {
        let shared = ["the", "value", "result", "handle"];
        (offset..offset + n)
            .map(|i| {
                let (label, words) = TOPICS[i % TOPICS.len()];
                let text: Vec<&str> = (0..6)
                    .flat_map(|j| [words[(i + j) % 4], shared[(i / 2 + j) % 4]])
                    .collect();
                Sample {
                    context: Context::from_text(text.join(" ")),
                    label: label.into(),
                }
            })
            .collect()
    }

    /// A trained model and the gate its training leaves.
    fn trained(offset: usize) -> (Checkpoint, Gate) {
        trained_for(offset, 10)
    }

    fn trained_for(offset: usize, epochs: usize) -> (Checkpoint, Gate) {
        let data = samples(400, offset);
        let config = TrainConfig {
            max_epochs: epochs,
            features: FeatureConfig {
                dim: 512,
                ..FeatureConfig::default()
            },
            ..TrainConfig::default()
        };
        let (classifier, _) = agentmesh_neural::train(&data, &config, |_| {}).unwrap();
        let slice = CheckSlice::from_training(&data, config.seed, &classifier, 0.0);
        assert!(slice.held_out.len() >= 100, "{}", slice.baseline);
        let gate = Gate {
            slice: std::sync::Arc::new(slice),
            outcomes: Vec::new(),
            max_drop: 0.01,
            min_confidence: 0.0,
        };
        (Checkpoint::of(&classifier, 1, 400, None), gate)
    }

    /// `merged` gets all but at most one of the held-out samples the
    /// trained model got right.
    fn assert_kept_accuracy(merged: &Checkpoint, gate: &Gate) {
        let score = correct(&merged.classifier().unwrap(), &gate.slice.held_out, 0.0);
        assert!(
            score + 1 >= gate.slice.baseline,
            "{score} vs {}",
            gate.slice.baseline
        );
    }

    /// The local model with its output units handed to other labels.
    fn relabelled(local: &Checkpoint) -> Checkpoint {
        let mut c = local.clone();
        c.labels.rotate_left(1);
        c
    }

    /// `c` with `n` more labels, each a copy of label 0's output unit one
    /// lower: the top answer stays, its probability drowns.
    fn shadowed(c: &Checkpoint, n: usize) -> Checkpoint {
        let mut c = c.clone();
        let out = &mut c.weights.layers[3];
        let (d_in, old) = (out.d_in, out.d_out);
        let d_out = old + n;
        let mut weight = vec![0f32; d_in * d_out];
        for i in 0..d_in {
            let row = &out.weight[i * old..(i + 1) * old];
            weight[i * d_out..i * d_out + old].copy_from_slice(row);
            weight[i * d_out + old..(i + 1) * d_out].fill(row[0]);
        }
        let first = out.bias[0];
        out.weight = weight;
        out.bias.resize(d_out, first - 1.0);
        out.d_out = d_out;
        c.labels.extend((0..n).map(|i| format!("shadow-{i:03}")));
        c
    }

    #[test]
    fn labels_that_drown_the_answers_are_rejected_though_calibration_would_hide_them() {
        let (local, mut gate) = trained(0);
        gate.min_confidence = 0.25;
        let slice = CheckSlice {
            baseline: correct(
                &local.classifier().unwrap(),
                &gate.slice.held_out,
                gate.min_confidence,
            ),
            ..CheckSlice::clone(&gate.slice)
        };
        gate.slice = std::sync::Arc::new(slice);
        // Within the limit on new patterns a model may bring.
        let checked = merge_checked(Some(&local), &[shadowed(&local, 250)], &[0.5], &gate).unwrap();
        assert!(checked.merged.is_none(), "{:?}", checked.rejected);
        assert_eq!(checked.rejected.len(), 1);
        assert!(
            checked.rejected[0]
                .1
                .contains("250 new patterns would take"),
            "{:?}",
            checked.rejected
        );
    }

    #[test]
    fn a_harmful_model_within_the_clipping_bounds_is_rejected_by_the_check() {
        // A barely trained local model: small margins, so a bounded update
        // can change answers.
        let (local, gate) = trained_for(0, 1);
        let (honest, _) = trained(1000);
        let mut negated = local.clone();
        negated.weights.layers[0]
            .weight
            .iter_mut()
            .for_each(|w| *w = -*w * 3.0);
        let peers = [negated, honest];
        let checked = merge_checked(Some(&local), &peers, &[1.0; 2], &gate).unwrap();
        assert_eq!(checked.rejected.len(), 1, "{:?}", checked.rejected);
        assert_eq!(checked.rejected[0].0, 0);
        assert!(
            checked.rejected[0].1.contains("held-out samples right"),
            "{:?}",
            checked.rejected
        );
        let (merged, report) = checked.merged.unwrap();
        assert!(report.shares[1] > 0.0);
        assert_kept_accuracy(&merged, &gate);
    }

    #[test]
    fn a_poisoned_peer_is_rejected_and_the_honest_one_of_the_round_merged() {
        let (local, gate) = trained(0);
        let (honest, _) = trained(1000);
        let mut poisoned = honest.clone();
        poisoned.samples = 1_000_000;
        poisoned.weights.layers[3].bias[0] += 1e6;
        let mut random = honest.clone();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for layer in &mut random.weights.layers {
            for w in layer.weight.iter_mut().chain(layer.bias.iter_mut()) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *w = (x % 2000) as f32 / 100.0 - 10.0;
            }
        }
        let peers = [poisoned, honest, random];
        let checked = merge_checked(Some(&local), &peers, &[1.0; 3], &gate).unwrap();
        let rejected: Vec<usize> = checked.rejected.iter().map(|(i, _)| *i).collect();
        assert_eq!(rejected, [0, 2], "{:?}", checked.rejected);
        assert!(checked.rejected[0].1.contains("output units differ"));
        let (merged, report) = checked.merged.unwrap();
        assert!(report.shares[1] > 0.0 && report.shares[0] == 0.0);
        assert_kept_accuracy(&merged, &gate);
    }

    #[test]
    fn merges_cannot_ratchet_accuracy_down_round_after_round() {
        let (local, gate) = trained(0);
        let n = gate.slice.held_out.len();
        let at = |held_out| Score {
            held_out,
            top1: n,
            outcomes: 0,
        };
        let baseline = gate.slice.baseline;
        let allowance = (0.01 * n as f64).floor() as usize;
        // One allowance below the baseline passes; below that, not even
        // from a local model that is there already.
        assert!(gate.judge(at(baseline), at(baseline - allowance)).is_none());
        assert!(gate
            .judge(at(baseline - allowance), at(baseline - allowance - 1))
            .is_some());
        // A local model already below the floor may not fall further...
        assert!(gate.judge(at(baseline - 5), at(baseline - 6)).is_some());
        // ...but may be merged into at its own level.
        assert!(gate.judge(at(baseline - 5), at(baseline - 5)).is_none());
        // Answers made surer do not hide top answers lost: the plain top-1
        // count may fall by the allowance only.
        let sharper = |top1| Score {
            held_out: baseline,
            top1,
            outcomes: 0,
        };
        assert!(gate.judge(at(baseline), sharper(n - allowance)).is_none());
        assert!(gate
            .judge(at(baseline), sharper(n - allowance - 1))
            .is_some());
        // Without data of its own a node merges unchecked.
        let empty = Gate {
            slice: Default::default(),
            outcomes: Vec::new(),
            max_drop: 0.01,
            min_confidence: 0.0,
        };
        let checked = merge_checked(Some(&local), &[relabelled(&local)], &[1.0], &empty).unwrap();
        assert!(checked.merged.is_some() && checked.rejected.is_empty());
    }
}
