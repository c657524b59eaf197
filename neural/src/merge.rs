//! Merging models learned on other nodes (federated averaging).
//!
//! Models are averaged parameter by parameter, each weighted by the
//! samples it learned from; a peer's weight is capped at the local
//! model's, so no single peer can replace what this node learned (an
//! untrained node has nothing to protect and takes the peers' average).
//! Output units are aligned by label: a pattern only some models know is
//! averaged over those. Before averaging, a peer whose distance from the
//! reference (the local model, or the peers' mean) is more than
//! [`CLIP_FACTOR`] times the median distance is pulled back to that
//! distance, so one wild update moves the result a bounded amount.
//!
//! Averaging hidden units only makes sense between models that started
//! from the same initial weights: nodes train with the network-wide seed
//! (`model_seed`), as federated averaging requires.

use crate::checkpoint::{Checkpoint, FORMAT};
use crate::classifier::MAX_LABELS;
use crate::error::NeuralError;
use crate::model::{LayerWeights, Weights};
use std::collections::{HashMap, HashSet};

/// A peer's distance from the reference is clipped to this multiple of
/// the median peer distance.
pub const CLIP_FACTOR: f64 = 3.0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    pub peers_merged: usize,
    /// (peer index, why it was left out).
    pub skipped: Vec<(usize, String)>,
    pub clipped: usize,
    pub labels_added: Vec<String>,
}

struct Member<'a> {
    checkpoint: &'a Checkpoint,
    weight: f64,
    /// How much of its distance from the reference is kept (1 = all).
    keep: f32,
}

/// Reasons, one per peer model in order, as one line naming each.
fn each_peer(reasons: impl Iterator<Item = String>) -> String {
    let named: Vec<String> = reasons
        .enumerate()
        .map(|(i, reason)| format!("peer model {i}: {reason}"))
        .collect();
    named.join("; ")
}

/// Merges `peers` into `local` (or, without a local model, averages the
/// peers). The result keeps the local version and sample count; the caller
/// bumps the version. Fails only if nothing is left to merge, always with
/// [`NeuralError::Incompatible`].
pub fn merge(
    local: Option<&Checkpoint>,
    peers: &[&Checkpoint],
) -> Result<(Checkpoint, MergeReport), NeuralError> {
    let mut report = MergeReport::default();
    let base = base_of(local, peers)?;
    let mut members = members(local, peers, base, &mut report)?;

    // The hidden layers: a weighted average, each member clipped to a
    // bounded distance from the reference first.
    let shared = 3; // input and hidden layers; the output layer is per label
    let reference = reference(local, &members, shared);
    report.clipped = clip_outliers(&mut members, local, &reference, shared);
    let layers: Vec<LayerWeights> = (0..shared)
        .map(|layer| {
            average_layer(
                members
                    .iter()
                    .map(|m| (&m.checkpoint.weights.layers[layer], m.weight, m.keep)),
                Some(&reference[layer]),
            )
        })
        .collect();

    // Labels: the local order, then new ones sorted.
    let mut labels = base.labels.clone();
    let known: HashSet<&String> = base.labels.iter().collect();
    let mut new: Vec<String> = members
        .iter()
        .flat_map(|m| m.checkpoint.labels.iter())
        .filter(|l| !known.contains(l))
        .cloned()
        .collect();
    new.sort();
    new.dedup();
    report.labels_added = new.clone();
    labels.extend(new);
    if labels.len() > MAX_LABELS {
        return Err(NeuralError::Incompatible(format!(
            "the merged model would know {} patterns; at most {MAX_LABELS}",
            labels.len()
        )));
    }
    let output = merge_output(&members, &labels, local);

    let mut features = base.features.clone();
    features.idf = merged_idf(&members, base.features.dim);
    let mut weights = Weights { layers };
    weights.layers.push(output);
    let merged = Checkpoint {
        format: FORMAT,
        version: local.map_or(0, |l| l.version),
        samples: local.map_or(0, |l| l.samples),
        features,
        labels,
        weights,
        report: local.and_then(|l| l.report.clone()),
    };
    crate::classifier::check_parts(&merged.features, &merged.labels, &merged.weights)
        .map_err(|e| NeuralError::Incompatible(e.to_string()))?;
    Ok((merged, report))
}

/// The shape everything must match: the local model's, or the first
/// peer's that is usable at all.
fn base_of<'a>(
    local: Option<&'a Checkpoint>,
    peers: &[&'a Checkpoint],
) -> Result<&'a Checkpoint, NeuralError> {
    local
        .or_else(|| {
            peers
                .iter()
                .copied()
                .find(|p| p.samples > 0 && p.validate().is_ok())
        })
        .ok_or_else(|| {
            let reasons = peers.iter().map(|p| {
                p.validate()
                    .err()
                    .map_or_else(|| "learned from no samples".into(), |e| e.to_string())
            });
            NeuralError::Incompatible(format!("no usable peer model ({})", each_peer(reasons)))
        })
}

/// Why a model does not merge with `base` (None: it does).
fn incompatible(c: &Checkpoint, base: &Checkpoint) -> Option<String> {
    if c.format != FORMAT {
        return Some(format!("checkpoint format {}", c.format));
    }
    let (a, b) = (&c.features, &base.features);
    if (a.dim, a.char_min, a.char_max) != (b.dim, b.char_min, b.char_max) {
        return Some(format!(
            "feature dimension {} does not match {}",
            a.dim, b.dim
        ));
    }
    // Weights learnt on inputs of another size do not average.
    if a.norm != b.norm {
        return Some(format!("feature norm {} does not match {}", a.norm, b.norm));
    }
    crate::classifier::check_parts(&c.features, &c.labels, &c.weights)
        .err()
        .map(|e| e.to_string())
}

/// The local model and the compatible peers, each weighted by the samples
/// it learned from (a peer's claim capped at the local count); the others
/// are listed in the report.
fn members<'a>(
    local: Option<&'a Checkpoint>,
    peers: &[&'a Checkpoint],
    base: &Checkpoint,
    report: &mut MergeReport,
) -> Result<Vec<Member<'a>>, NeuralError> {
    let local_samples = local.map(|l| l.samples as f64);
    let mut members: Vec<Member> = Vec::new();
    if let Some(l) = local {
        members.push(Member {
            checkpoint: l,
            weight: (l.samples as f64).max(1.0),
            keep: 1.0,
        });
    }
    for (i, p) in peers.iter().enumerate() {
        if let Some(e) = incompatible(p, base) {
            report.skipped.push((i, e));
            continue;
        }
        if p.samples == 0 {
            report.skipped.push((i, "learned from no samples".into()));
            continue;
        }
        let claimed = p.samples as f64;
        let weight = match local_samples {
            Some(own) => claimed.min(own.max(1.0)),
            None => claimed,
        };
        members.push(Member {
            checkpoint: p,
            weight,
            keep: 1.0,
        });
        report.peers_merged += 1;
    }
    if report.peers_merged == 0 {
        let reasons = report.skipped.iter().map(|(_, reason)| reason.clone());
        return Err(NeuralError::Incompatible(format!(
            "no compatible peer model ({})",
            each_peer(reasons)
        )));
    }
    Ok(members)
}

/// The reference the distances are measured from: the local model's
/// shared layers, or without one the plain average.
fn reference(local: Option<&Checkpoint>, members: &[Member], shared: usize) -> Vec<LayerWeights> {
    match local {
        Some(l) => l.weights.layers[..shared].to_vec(),
        None => (0..shared)
            .map(|layer| {
                average_layer(
                    members
                        .iter()
                        .map(|m| (&m.checkpoint.weights.layers[layer], 1.0, 1.0)),
                    None,
                )
            })
            .collect(),
    }
}

/// Shrinks members farther from the reference than `CLIP_FACTOR` times the
/// peers' median distance back to that bound; how many were shrunk.
fn clip_outliers(
    members: &mut [Member],
    local: Option<&Checkpoint>,
    reference: &[LayerWeights],
    shared: usize,
) -> usize {
    let distances: Vec<f64> = members
        .iter()
        .map(|m| distance(&m.checkpoint.weights.layers[..shared], reference))
        .collect();
    let mut peer_distances: Vec<f64> = distances
        .iter()
        .zip(members.iter())
        .filter(|(_, m)| local.is_none_or(|l| !std::ptr::eq(m.checkpoint, l)))
        .map(|(d, _)| *d)
        .collect();
    peer_distances.sort_by(f64::total_cmp);
    let median = peer_distances[peer_distances.len() / 2];
    let bound = CLIP_FACTOR * median;
    let mut clipped = 0;
    for (m, d) in members.iter_mut().zip(&distances) {
        if *d > bound && *d > 0.0 {
            m.keep = (bound / d) as f32;
            clipped += 1;
        }
    }
    clipped
}

/// Inverse document frequencies: the members' weighted average.
fn merged_idf(members: &[Member], dim: usize) -> Vec<f32> {
    let total: f64 = members.iter().map(|m| m.weight).sum();
    (0..dim)
        .map(|i| {
            let sum: f64 = members
                .iter()
                .map(|m| {
                    m.weight * f64::from(m.checkpoint.features.idf.get(i).copied().unwrap_or(1.0))
                })
                .sum();
            (sum / total) as f32
        })
        .collect()
}

/// Euclidean distance between two stacks of layers of the same shapes.
fn distance(a: &[LayerWeights], b: &[LayerWeights]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.weight
                .iter()
                .zip(&y.weight)
                .chain(x.bias.iter().zip(&y.bias))
                .map(|(p, q)| f64::from(p - q).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt()
}

/// Σ wᵢ (ref + keepᵢ (xᵢ − ref)) / Σ wᵢ, elementwise (ref = 0 and keep = 1
/// without a reference). Streams member by member into the result: a
/// 2^16-wide input layer is 16.7 million values, so no per-element
/// temporaries.
fn average_layer<'a>(
    members: impl Iterator<Item = (&'a LayerWeights, f64, f32)> + Clone,
    reference: Option<&LayerWeights>,
) -> LayerWeights {
    let Some((first, _, _)) = members.clone().next() else {
        return LayerWeights {
            d_in: 0,
            d_out: 0,
            weight: Vec::new(),
            bias: Vec::new(),
        };
    };
    let total: f64 = members.clone().map(|(_, w, _)| w).sum();
    let blend = |pick: &dyn Fn(&LayerWeights) -> &[f32], reference: Option<&[f32]>| {
        let mut out = vec![0f32; pick(first).len()];
        for (layer, w, keep) in members.clone() {
            let share = (w / total) as f32;
            let values = pick(layer);
            match reference {
                Some(r) => {
                    for ((o, x), r) in out.iter_mut().zip(values).zip(r) {
                        *o += share * (r + keep * (x - r));
                    }
                }
                None => {
                    for (o, x) in out.iter_mut().zip(values) {
                        *o += share * x;
                    }
                }
            }
        }
        out
    };
    LayerWeights {
        d_in: first.d_in,
        d_out: first.d_out,
        weight: blend(&|l| &l.weight, reference.map(|r| r.weight.as_slice())),
        bias: blend(&|l| &l.bias, reference.map(|r| r.bias.as_slice())),
    }
}

/// Label → output unit of one model.
fn label_index(c: &Checkpoint) -> HashMap<&str, usize> {
    c.labels
        .iter()
        .enumerate()
        .map(|(j, l)| (l.as_str(), j))
        .collect()
}

/// The output layer for `labels`: each label's column (and bias) averaged
/// over the members that know the label, clipped toward the local column
/// when there is one.
fn merge_output(members: &[Member], labels: &[String], local: Option<&Checkpoint>) -> LayerWeights {
    let d_in = crate::model::HIDDEN[2];
    let d_out = labels.len();
    let mut weight = vec![0f32; d_in * d_out];
    let mut bias = vec![0f32; d_out];
    // Label → output unit, per model (a scan per label would be quadratic).
    let indexes: Vec<HashMap<&str, usize>> =
        members.iter().map(|m| label_index(m.checkpoint)).collect();
    let local_index = local.map(label_index);
    for (col, label) in labels.iter().enumerate() {
        let column = |c: &Checkpoint, at: &HashMap<&str, usize>| -> Option<(Vec<f32>, f32)> {
            let j = *at.get(label.as_str())?;
            let out = &c.weights.layers[3];
            let values = (0..d_in).map(|i| out.weight[i * out.d_out + j]).collect();
            Some((values, out.bias[j]))
        };
        let reference = local
            .zip(local_index.as_ref())
            .and_then(|(l, at)| column(l, at));
        let mut acc = vec![0f64; d_in + 1];
        let mut total = 0.0;
        for (m, at) in members.iter().zip(&indexes) {
            let Some((values, b)) = column(m.checkpoint, at) else {
                continue;
            };
            let keep = if reference.is_some() { m.keep } else { 1.0 };
            for (k, x) in values.iter().chain(std::iter::once(&b)).enumerate() {
                let r = reference
                    .as_ref()
                    .map_or(*x, |(rv, rb)| if k < d_in { rv[k] } else { *rb });
                acc[k] += m.weight * f64::from(r + keep * (x - r));
            }
            total += m.weight;
        }
        for i in 0..d_in {
            weight[i * d_out + col] = (acc[i] / total) as f32;
        }
        bias[col] = (acc[d_in] / total) as f32;
    }
    LayerWeights {
        d_in,
        d_out,
        weight,
        bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{train, Classifier, TrainConfig};
    use crate::dataset::{Context, Sample};
    use crate::features::FeatureConfig;
    use crate::recommender::{Recommender, RecommenderConfig};

    fn samples(topics: &[(&str, [&str; 4])], n: usize) -> Vec<Sample> {
        let shared = ["the", "value", "result", "handle"];
        (0..n)
            .map(|i| {
                let (label, words) = topics[i % topics.len()];
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

    fn trained(topics: &[(&str, [&str; 4])], config: &TrainConfig) -> Checkpoint {
        let (c, r) = train(&samples(topics, 300), config, |_| {}).unwrap();
        Checkpoint::of(&c, 1, 300, Some(r))
    }

    fn small() -> TrainConfig {
        TrainConfig {
            max_epochs: 10,
            features: FeatureConfig {
                dim: 512,
                ..FeatureConfig::default()
            },
            ..TrainConfig::default()
        }
    }

    fn model(topics: &[(&str, [&str; 4])]) -> Checkpoint {
        trained(topics, &small())
    }

    const A: [(&str, [&str; 4]); 2] = [
        ("net", ["socket", "dial", "peer", "packet"]),
        ("db", ["table", "query", "index", "row"]),
    ];
    const B: [(&str, [&str; 4]); 2] = [
        ("ui", ["button", "click", "pixel", "layout"]),
        ("fs", ["file", "directory", "path", "inode"]),
    ];

    /// Two nodes start from the same model (as the mesh shares it) and each
    /// learns a new pattern from one outcome; a third merges them.
    fn a_node_learns_its_peers_patterns(seed: u64) {
        let topics: Vec<_> = A.iter().chain(&B).copied().collect();
        let known = samples(&topics, 300);
        let base = trained(&topics, &TrainConfig { seed, ..small() });
        let learn = |pattern: &str, text: &str| {
            let mut r = Recommender::new(RecommenderConfig::default());
            r.install(base.clone()).unwrap();
            assert!(
                r.outcome(&Context::from_text(text), pattern, true)
                    .pattern_added
            );
            assert_eq!(
                r.recommend(&Context::from_text(text), 1).recommendations[0].pattern,
                pattern
            );
            r.model().unwrap().checkpoint()
        };
        // Each learned for a context the model gives to one topic (net,
        // ui): the new label then ranks first where that topic did (one
        // outcome cannot tell them apart), and not elsewhere.
        let (retry, cache) = (&known[0].context.text, &known[2].context.text);
        let a = learn("retry", retry);
        let b = learn("cache", cache);
        let (merged, report) = merge(Some(&base), &[&a, &b]).unwrap();
        assert_eq!(report.peers_merged, 2);
        assert_eq!(report.labels_added, ["cache", "retry"]);
        let c = merged.classifier().unwrap();
        let first =
            |c: &Classifier, text: &str| c.predict(&Context::from_text(text), 1)[0].0.clone();
        assert_eq!(first(&c, retry), "retry", "seed {seed}");
        assert_eq!(first(&c, cache), "cache", "seed {seed}");
        // What all of them knew is still known: among the labels they had,
        // each sample's answer is the one the base model gave, and the new
        // labels take at most three quarters of its probability (a sample
        // like an imprinting context may rank the new label first, but
        // not by much; the imprint this replaced left some 1e-12).
        let before = base.classifier().unwrap();
        for sample in &known {
            let (was, p_was) = before.predict(&sample.context, 1).remove(0);
            let ranked = c.predict(&sample.context, 6);
            let (label, p) = ranked
                .iter()
                .find(|(l, _)| l != "retry" && l != "cache")
                .unwrap();
            assert_eq!(label, &was, "seed {seed}");
            assert!(*p > p_was / 4.0, "seed {seed}: {p_was} -> {ranked:?}");
            // Topics neither was learned for keep their answer.
            if sample.label == "db" || sample.label == "fs" {
                assert_eq!(ranked[0].0, was, "seed {seed}: {ranked:?}");
            }
        }
        // Without a local model the peers' average is taken.
        let (alone, _) = merge(None, &[&a, &b]).unwrap();
        let c = alone.classifier().unwrap();
        assert_eq!(first(&c, retry), "retry", "seed {seed}");
        assert_eq!(first(&c, cache), "cache", "seed {seed}");
    }

    #[test]
    fn a_node_without_examples_learns_the_patterns_its_peers_learned() {
        for seed in 1..=12 {
            a_node_learns_its_peers_patterns(seed);
        }
    }

    #[test]
    fn one_peer_cannot_replace_the_local_model_and_outliers_are_clipped() {
        let (a, b) = (model(&A), model(&B));
        // A peer claiming a million samples still weighs as much as us.
        let loud = Checkpoint {
            samples: 1_000_000,
            ..b.clone()
        };
        let (merged, _) = merge(Some(&a), &[&loud]).unwrap();
        for layer in 0..3 {
            let (m, x, y) = (
                &merged.weights.layers[layer].weight,
                &a.weights.layers[layer].weight,
                &b.weights.layers[layer].weight,
            );
            assert!(m
                .iter()
                .zip(x.iter().zip(y))
                .all(|(m, (x, y))| (m - (x + y) / 2.0).abs() < 1e-5));
        }
        // Its patterns come in with its output units, ours stay ours.
        assert_eq!(merged.labels, ["db", "net", "fs", "ui"]);
        let (own, out) = (&a.weights.layers[3], &merged.weights.layers[3]);
        assert_eq!(out.bias[..2], own.bias[..]);

        // Three peers, one with wild weights: it is pulled back.
        let mut wild = b.clone();
        wild.weights.layers[1]
            .weight
            .iter_mut()
            .for_each(|w| *w *= 1000.0);
        let (_, report) = merge(Some(&a), &[&b, &b.clone(), &wild]).unwrap();
        assert_eq!(report.clipped, 1);
        // A model of another shape is left out, with the reason.
        let mut other = b.clone();
        other.features.dim = 1024;
        let (_, report) = merge(Some(&a), &[&b, &other]).unwrap();
        assert_eq!(report.skipped.len(), 1);
        assert!(matches!(
            merge(Some(&a), &[&other]),
            Err(NeuralError::Incompatible(_))
        ));
        // So is one trained on inputs of another norm.
        let mut scaled = b.clone();
        scaled.features.norm = 1.0;
        let (_, report) = merge(Some(&a), &[&b, &scaled]).unwrap();
        assert_eq!(report.skipped.len(), 1);
        assert!(report.skipped[0].1.contains("norm"), "{:?}", report.skipped);
        // With nothing to merge, the error says why each was skipped.
        let refused = merge(Some(&a), &[&scaled]).unwrap_err().to_string();
        assert!(
            refused.contains("peer model 0: feature norm 1 does not match 2"),
            "{refused}"
        );
        // So does it without a local model, when no peer's is usable; with
        // one, an untrained node follows it whatever its norm.
        let mut empty = b.clone();
        empty.samples = 0;
        let refused = merge(None, &[&empty]).unwrap_err().to_string();
        assert!(
            refused.contains("peer model 0: learned from no samples"),
            "{refused}"
        );
        let (merged, report) = merge(None, &[&empty, &scaled]).unwrap();
        assert_eq!((merged.features.norm, report.peers_merged), (1.0, 1));
    }
}
