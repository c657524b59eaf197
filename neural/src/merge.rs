//! Merging models learned on other nodes: federated averaging made robust
//! to a peer that sends a poisoned model.
//!
//! A peer's model is read as an update: its difference from a reference
//! (the local model; without one, the coordinate-wise median of the
//! peers). The rule, applied to **every** parameter:
//!
//! 1. **Clipping, group by group.** The groups are the three hidden
//!    layers, the output units (a column and its bias per label) and the
//!    idf weights. A member's update in a group is shrunk to at most
//!    [`CLIP_FACTOR`] times the median peer's in that group, and, when
//!    there is a local model, to at most the local group's own norm: one
//!    peer alone cannot make the median, so the second bound is what holds
//!    when it is the only peer (a +1e6 bias on one output unit is pulled
//!    back to the size of the local output layer). A label this node does
//!    not know yet comes in with its column no longer than `CLIP_FACTOR`
//!    times the longest local column.
//! 2. **Shares.** Each member weighs by the samples it learned from, a
//!    peer's claim capped at the local count; the caller can cap each
//!    peer's share further ([`merge_capped`]: the node bounds a peer's
//!    influence over time, not per round). Shares sum to one.
//! 3. **Far updates are left out.** With a local model, a peer whose
//!    update in some group is more than [`REJECT_FACTOR`] times that
//!    group's local size is not a model trained from the same start: it is
//!    left out (and named in the report), not clipped in.
//! 4. **Labels.** Local labels keep their places and are never evicted; a
//!    peer that would add more than [`MAX_NEW_LABELS_PER_PEER`] at once is
//!    left out; peers' new labels past [`MAX_LABELS`] −
//!    [`LOCAL_LABEL_RESERVE`] are dropped and counted, so room is always
//!    left for patterns this node learns itself.
//! 5. **idf** is clamped per weight to within [`IDF_FACTOR`] of the local
//!    weight and to the local range. Without a local model, no peer's
//!    sample claim counts for more than the median claim.
//!
//! Clipping bounds how far one update moves the model, not whether the
//! move is harmful: a bounded bias can still change every answer. The node
//! therefore installs a merged model only if it is not worse on its own
//! held-out samples (`node/src/model/service.rs`, docs/model.md).
//!
//! Averaging hidden units only makes sense between models that started
//! from the same initial weights: nodes train with the network-wide seed
//! (`model_seed`), as federated averaging requires.

use crate::checkpoint::{Checkpoint, FORMAT};
use crate::classifier::MAX_LABELS;
use crate::error::NeuralError;
use crate::model::{LayerWeights, Weights};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// A member's update in a group is clipped to this multiple of the median
/// peer's.
pub const CLIP_FACTOR: f64 = 3.0;
/// Most labels one peer model may add to a local model in one merge; a
/// model offering more is left out (a node learns patterns a few at a
/// time; hundreds at once is a model built to crowd the label map). The
/// check on held-out samples cannot tell made-up labels that take little
/// probability from real patterns of other contexts: this bounds how many
/// one model can bring.
pub const MAX_NEW_LABELS_PER_PEER: usize = 256;
/// A merged idf weight stays within this factor of the local one.
pub const IDF_FACTOR: f32 = 2.0;
/// Labels kept free for patterns this node learns from its own outcomes:
/// peers' labels fill the label map only up to [`MAX_LABELS`] minus this.
pub const LOCAL_LABEL_RESERVE: usize = 1_000;
/// A peer whose update in some group is more than this many times the
/// local group's size is left out rather than clipped.
pub const REJECT_FACTOR: f64 = 10.0;

/// The three hidden layers, then the output units, then idf.
const HIDDEN: usize = 3;
const OUTPUT: usize = 3;
const IDF: usize = 4;
const GROUPS: usize = 5;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    pub peers_merged: usize,
    /// (peer index, why it was left out).
    pub skipped: Vec<(usize, String)>,
    /// Members whose update was shrunk in at least one group.
    pub clipped: usize,
    pub labels_added: Vec<String>,
    /// New labels left out for want of room under [`MAX_LABELS`].
    pub labels_dropped: usize,
    /// Each peer's share of the merged parameters, in peer order (0 for
    /// one left out).
    pub shares: Vec<f64>,
}

struct Member<'a> {
    checkpoint: &'a Checkpoint,
    /// The peer's index (None: the local model).
    peer: Option<usize>,
    /// Its weight (samples, a peer's capped at the local count) and the
    /// largest share it may have.
    weight: f64,
    cap: f64,
    /// Its share of the result (the shares sum to one).
    share: f64,
    /// How much of its update is kept, per group (1 = all).
    keep: [f32; GROUPS],
}

/// Reasons, one per peer model in order, as one line naming each.
fn each_peer(reasons: impl Iterator<Item = String>) -> String {
    let named: Vec<String> = reasons
        .enumerate()
        .map(|(i, reason)| format!("peer model {i}: {reason}"))
        .collect();
    named.join("; ")
}

/// [`merge_capped`] with no cap on any peer's share beyond the sample
/// rule.
pub fn merge(
    local: Option<&Checkpoint>,
    peers: &[&Checkpoint],
) -> Result<(Checkpoint, MergeReport), NeuralError> {
    merge_capped(local, peers, &vec![1.0; peers.len()])
}

/// Merges `peers` into `local` (or, without a local model, the peers with
/// one another), each peer's share at most `max_shares[i]` (0..=1; a peer
/// with 0 is left out). The result keeps the local version and sample
/// count; the caller bumps the version. Fails only if nothing is left to
/// merge, always with [`NeuralError::Incompatible`].
pub fn merge_capped(
    local: Option<&Checkpoint>,
    peers: &[&Checkpoint],
    max_shares: &[f64],
) -> Result<(Checkpoint, MergeReport), NeuralError> {
    let mut report = MergeReport {
        shares: vec![0.0; peers.len()],
        ..MergeReport::default()
    };
    let base = base_of(local, peers)?;
    let mut members = members(local, peers, max_shares, base, &mut report)?;
    if let Some(l) = local {
        leave_out_the_far(&mut members, l, &mut report)?;
    }
    let labels = merged_labels(local, base, &members, &mut report);

    let reference = Reference::of(local, &members, &labels);
    report.clipped = clip(&mut members, local, &reference, &labels);
    for m in &members {
        if let Some(i) = m.peer {
            report.shares[i] = m.share;
        }
    }

    let mut layers: Vec<LayerWeights> = (0..HIDDEN)
        .map(|g| {
            let blend = |pick: &dyn Fn(&LayerWeights) -> &[f32]| {
                blend(&members, g, pick(&reference.layers[g]), |m: &Member| {
                    pick(&m.checkpoint.weights.layers[g])
                })
            };
            let r = &reference.layers[g];
            LayerWeights {
                d_in: r.d_in,
                d_out: r.d_out,
                weight: blend(&|l| &l.weight),
                bias: blend(&|l| &l.bias),
            }
        })
        .collect();
    layers.push(merge_output(&members, &labels, &reference, local.is_some()));
    let mut features = base.features.clone();
    features.idf = blend(&members, IDF, &reference.idf, |m| {
        &m.checkpoint.features.idf
    });
    if let Some(l) = local {
        clamp_idf(&mut features.idf, &l.features.idf);
    }
    let merged = Checkpoint {
        format: FORMAT,
        version: local.map_or(0, |l| l.version),
        samples: local.map_or(0, |l| l.samples),
        features,
        labels,
        weights: Weights { layers },
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
    // An empty idf means "all 1"; it averages only with another such.
    if a.idf.len() != b.idf.len() {
        return Some(format!(
            "{} idf weights where this model has {}",
            a.idf.len(),
            b.idf.len()
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

/// The local model and the compatible peers, with their shares; the
/// others are listed in the report.
fn members<'a>(
    local: Option<&'a Checkpoint>,
    peers: &[&'a Checkpoint],
    max_shares: &[f64],
    base: &Checkpoint,
    report: &mut MergeReport,
) -> Result<Vec<Member<'a>>, NeuralError> {
    let local_samples = local.map(|l| (l.samples as f64).max(1.0));
    let known: Option<HashSet<&String>> = local.map(|l| l.labels.iter().collect());
    let mut members: Vec<Member> = Vec::new();
    if let Some(l) = local {
        members.push(member(l, None, local_samples.unwrap_or(1.0), 1.0));
    }
    for (i, p) in peers.iter().enumerate() {
        let cap = max_shares.get(i).copied().unwrap_or(1.0).clamp(0.0, 1.0);
        let new_labels = known
            .as_ref()
            .map_or(0, |k| p.labels.iter().filter(|l| !k.contains(l)).count());
        let reason = if let Some(e) = incompatible(p, base) {
            Some(e)
        } else if p.samples == 0 {
            Some("learned from no samples".into())
        } else if new_labels > MAX_NEW_LABELS_PER_PEER {
            Some(format!(
                "it would add {new_labels} patterns at once; at most {MAX_NEW_LABELS_PER_PEER}"
            ))
        } else if cap <= 0.0 {
            Some("its influence on this model is used up".into())
        } else {
            None
        };
        if let Some(reason) = reason {
            report.skipped.push((i, reason));
            continue;
        }
        let claimed = p.samples as f64;
        let weight = local_samples.map_or(claimed, |own| claimed.min(own));
        members.push(member(p, Some(i), weight, cap));
        report.peers_merged += 1;
    }
    // Without a local model, no claim counts for more than the median
    // claim: one peer claiming u64::MAX samples does not outweigh the rest.
    if local.is_none() {
        let mut claims: Vec<f64> = members.iter().map(|m| m.weight).collect();
        claims.sort_by(f64::total_cmp);
        // The lower median: with two peers, the smaller claim.
        if let Some(median) = claims.get(claims.len().saturating_sub(1) / 2).copied() {
            members
                .iter_mut()
                .for_each(|m| m.weight = m.weight.min(median));
        }
    }
    share_out(&mut members, report)?;
    Ok(members)
}

/// Gives the members their shares; fails if no peer is left.
fn share_out(members: &mut [Member], report: &MergeReport) -> Result<(), NeuralError> {
    if report.peers_merged == 0 {
        let reasons = report.skipped.iter().map(|(_, reason)| reason.clone());
        return Err(NeuralError::Incompatible(format!(
            "no compatible peer model ({})",
            each_peer(reasons)
        )));
    }
    let weights: Vec<f64> = members.iter().map(|m| m.weight).collect();
    let caps: Vec<f64> = members.iter().map(|m| m.cap).collect();
    for (m, share) in members.iter_mut().zip(capped_shares(&weights, &caps)) {
        m.share = share;
    }
    Ok(())
}

fn member(checkpoint: &Checkpoint, peer: Option<usize>, weight: f64, cap: f64) -> Member<'_> {
    Member {
        checkpoint,
        peer,
        weight,
        cap,
        share: 0.0,
        keep: [1.0; GROUPS],
    }
}

/// Shares proportional to `weights`, none above its cap, summing to one
/// (water-filling: members over their cap are fixed at it and the rest
/// shared out again among the others). If every member is capped and the
/// caps sum to less than one, the caps are scaled up to one.
fn capped_shares(weights: &[f64], caps: &[f64]) -> Vec<f64> {
    let n = weights.len();
    let mut fixed: Vec<Option<f64>> = vec![None; n];
    loop {
        let fixed_mass: f64 = fixed.iter().flatten().sum();
        let free_weight: f64 = (0..n)
            .filter(|&i| fixed[i].is_none())
            .map(|i| weights[i])
            .sum();
        if free_weight <= 0.0 {
            let total = fixed_mass.max(f64::MIN_POSITIVE);
            return fixed.iter().map(|f| f.unwrap_or(0.0) / total).collect();
        }
        let free_mass = (1.0 - fixed_mass).max(0.0);
        let shares: Vec<f64> = (0..n)
            .map(|i| fixed[i].unwrap_or(free_mass * weights[i] / free_weight))
            .collect();
        let over: Vec<usize> = (0..n)
            .filter(|&i| fixed[i].is_none() && shares[i] > caps[i])
            .collect();
        if over.is_empty() {
            return shares;
        }
        for i in over {
            fixed[i] = Some(caps[i]);
        }
    }
}

/// The merged label map: the local order (or the base's), then new labels
/// sorted, each peer adding at most [`MAX_NEW_LABELS_PER_PEER`] (checked
/// in [`members`]) and all together no more than [`MAX_LABELS`] allows.
fn merged_labels(
    local: Option<&Checkpoint>,
    base: &Checkpoint,
    members: &[Member],
    report: &mut MergeReport,
) -> Vec<String> {
    let start = local.unwrap_or(base);
    let mut labels = start.labels.clone();
    let known: HashSet<&String> = start.labels.iter().collect();
    let mut new: Vec<String> = members
        .iter()
        .filter(|m| m.share > 0.0)
        .flat_map(|m| m.checkpoint.labels.iter())
        .filter(|l| !known.contains(l))
        .cloned()
        .collect();
    new.sort();
    new.dedup();
    let room = (MAX_LABELS - LOCAL_LABEL_RESERVE).saturating_sub(labels.len());
    if new.len() > room {
        report.labels_dropped = new.len() - room;
        new.truncate(room);
    }
    report.labels_added = new.clone();
    labels.extend(new);
    labels
}

/// What updates are measured from: the local model, or without one the
/// coordinate-wise median of the members.
struct Reference<'a> {
    layers: Cow<'a, [LayerWeights]>,
    /// Per merged label: its column (d_in weights, then the bias).
    columns: Vec<Vec<f32>>,
    idf: Cow<'a, [f32]>,
    /// Labels the local model knows (their columns are the local ones).
    local_labels: usize,
}

impl<'a> Reference<'a> {
    fn of(local: Option<&'a Checkpoint>, members: &[Member], labels: &[String]) -> Reference<'a> {
        let indexes: Vec<HashMap<&str, usize>> =
            members.iter().map(|m| label_index(m.checkpoint)).collect();
        let local_labels = local.map_or(0, |l| l.labels.len());
        // Columns: the local one where the local model knows the label,
        // else the median of the members that know it.
        let columns: Vec<Vec<f32>> = labels
            .iter()
            .enumerate()
            .map(|(j, label)| match local {
                Some(l) if j < local_labels => column(l, j),
                _ => {
                    let known: Vec<Vec<f32>> = members
                        .iter()
                        .zip(&indexes)
                        .filter_map(|(m, at)| Some(column(m.checkpoint, *at.get(label.as_str())?)))
                        .collect();
                    median_columns(&known)
                }
            })
            .collect();
        match local {
            Some(l) => Reference {
                layers: Cow::Borrowed(&l.weights.layers[..HIDDEN]),
                columns,
                idf: Cow::Borrowed(&l.features.idf),
                local_labels,
            },
            None => {
                let median = |pick: &dyn Fn(&Checkpoint) -> &[f32]| -> Vec<f32> {
                    let all: Vec<&[f32]> = members.iter().map(|m| pick(m.checkpoint)).collect();
                    coordinate_median(&all)
                };
                let layers = (0..HIDDEN)
                    .map(|g| {
                        let first = &members[0].checkpoint.weights.layers[g];
                        LayerWeights {
                            d_in: first.d_in,
                            d_out: first.d_out,
                            weight: median(&|c| &c.weights.layers[g].weight),
                            bias: median(&|c| &c.weights.layers[g].bias),
                        }
                    })
                    .collect();
                Reference {
                    layers: Cow::Owned(layers),
                    columns,
                    idf: Cow::Owned(median(&|c| &c.features.idf)),
                    local_labels,
                }
            }
        }
    }
}

/// The elementwise median of equally long slices (the mean of the middle
/// two for an even count).
fn coordinate_median(all: &[&[f32]]) -> Vec<f32> {
    let len = all.first().map_or(0, |a| a.len());
    let mut values = Vec::with_capacity(all.len());
    (0..len)
        .map(|i| {
            values.clear();
            values.extend(all.iter().map(|a| a[i]));
            values.sort_by(f32::total_cmp);
            let n = values.len();
            if n % 2 == 1 {
                values[n / 2]
            } else {
                (values[n / 2 - 1] + values[n / 2]) / 2.0
            }
        })
        .collect()
}

fn median_columns(columns: &[Vec<f32>]) -> Vec<f32> {
    let all: Vec<&[f32]> = columns.iter().map(Vec::as_slice).collect();
    coordinate_median(&all)
}

/// Label → output unit of one model.
fn label_index(c: &Checkpoint) -> HashMap<&str, usize> {
    c.labels
        .iter()
        .enumerate()
        .map(|(j, l)| (l.as_str(), j))
        .collect()
}

/// Output unit `j` of a model: its d_in weights, then its bias.
fn column(c: &Checkpoint, j: usize) -> Vec<f32> {
    let out = &c.weights.layers[OUTPUT];
    (0..out.d_in)
        .map(|i| out.weight[i * out.d_out + j])
        .chain(std::iter::once(out.bias[j]))
        .collect()
}

fn norm(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(p, q)| f64::from(p - q).powi(2)).sum()
}

/// The local model's size per group: no honest update is many times
/// larger than the model it updates.
fn sizes(l: &Checkpoint) -> [f64; GROUPS] {
    let mut a = [0.0; GROUPS];
    for (g, slot) in a.iter_mut().enumerate().take(OUTPUT + 1) {
        let layer = &l.weights.layers[g];
        *slot = (norm(&layer.weight).powi(2) + norm(&layer.bias).powi(2)).sqrt();
    }
    a[IDF] = norm(&l.features.idf);
    a
}

/// Leaves out peers whose update is more than [`REJECT_FACTOR`] times the
/// local model's size in some group: not a model trained from the same
/// start on similar data, but one built to move this one (a +1e6 bias,
/// weights drawn at another scale). Clipping would take some of it in;
/// leaving it out names it. The shares are shared out again.
fn leave_out_the_far(
    members: &mut Vec<Member>,
    local: &Checkpoint,
    report: &mut MergeReport,
) -> Result<(), NeuralError> {
    const NAMES: [&str; GROUPS] = [
        "first hidden layer",
        "second hidden layer",
        "third hidden layer",
        "output units",
        "idf weights",
    ];
    let reference = Reference::of(Some(local), members, &local.labels);
    let size = sizes(local);
    let mut far = Vec::new();
    for (k, m) in members.iter().enumerate() {
        let Some(i) = m.peer else { continue };
        let d = distances(m, &reference, &local.labels);
        if let Some(g) =
            (0..GROUPS).find(|&g| d[g] > REJECT_FACTOR * size[g].max(f64::MIN_POSITIVE))
        {
            far.push(k);
            report.skipped.push((
                i,
                format!(
                    "its {} differ from this model's by {:.3e}, more than {REJECT_FACTOR} times their size ({:.3e})",
                    NAMES[g], d[g], size[g]
                ),
            ));
        }
    }
    if far.is_empty() {
        return Ok(());
    }
    for k in far.into_iter().rev() {
        members.remove(k);
    }
    report.peers_merged = members.iter().filter(|m| m.peer.is_some()).count();
    share_out(members, report)
}

/// Keeps each merged idf weight within a factor [`IDF_FACTOR`] of the
/// local one and within the range the local weights span: an L2 bound on
/// the whole vector would let one peer spend all of it on one bucket (a
/// trigger word weighted a hundred times its due).
fn clamp_idf(merged: &mut [f32], local: &[f32]) {
    let (low, high) = local
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    for (m, l) in merged.iter_mut().zip(local) {
        let (a, b) = (l / IDF_FACTOR, l * IDF_FACTOR);
        *m = m.clamp(a.min(b), a.max(b)).clamp(low, high);
    }
}

/// Each member's distance from the reference, per group.
fn distances(member: &Member, reference: &Reference, labels: &[String]) -> [f64; GROUPS] {
    let c = member.checkpoint;
    let mut d = [0.0; GROUPS];
    for (g, slot) in d.iter_mut().enumerate().take(HIDDEN) {
        let (x, r) = (&c.weights.layers[g], &reference.layers[g]);
        *slot =
            (squared_distance(&x.weight, &r.weight) + squared_distance(&x.bias, &r.bias)).sqrt();
    }
    let at = label_index(c);
    d[OUTPUT] = labels
        .iter()
        .zip(&reference.columns)
        .filter_map(|(label, r)| Some(squared_distance(&column(c, *at.get(label.as_str())?), r)))
        .sum::<f64>()
        .sqrt();
    d[IDF] = squared_distance(&c.features.idf, &reference.idf).sqrt();
    d
}

/// Shrinks each member's update, group by group, to the bound (module
/// docs); how many members were shrunk.
fn clip(
    members: &mut [Member],
    local: Option<&Checkpoint>,
    reference: &Reference,
    labels: &[String],
) -> usize {
    let distances: Vec<[f64; GROUPS]> = members
        .iter()
        .map(|m| distances(m, reference, labels))
        .collect();
    // The anchor: no update larger than the local group itself.
    let anchor: Option<[f64; GROUPS]> = local.map(sizes);
    let mut shrunk = vec![false; members.len()];
    for g in 0..GROUPS {
        let mut peer_distances: Vec<f64> = members
            .iter()
            .zip(&distances)
            .filter(|(m, _)| m.peer.is_some())
            .map(|(_, d)| d[g])
            .collect();
        peer_distances.sort_by(f64::total_cmp);
        let mut bound = CLIP_FACTOR * peer_distances[peer_distances.len() / 2];
        if let Some(anchor) = anchor {
            bound = bound.min(anchor[g]);
        }
        for ((m, d), shrunk) in members.iter_mut().zip(&distances).zip(&mut shrunk) {
            if d[g] > bound && d[g] > 0.0 {
                m.keep[g] = (bound / d[g]) as f32;
                *shrunk = true;
            }
        }
    }
    shrunk.iter().filter(|s| **s).count()
}

/// Σ shareᵢ (ref + keepᵢ (xᵢ − ref)) over the members, elementwise, for
/// group `g`. Streams member by member into the result: a 2^16-wide input
/// layer is 16.7 million values, so no per-element temporaries.
fn blend<'a>(
    members: &'a [Member],
    g: usize,
    reference: &[f32],
    pick: impl Fn(&'a Member) -> &'a [f32],
) -> Vec<f32> {
    let mut out = vec![0f32; reference.len()];
    for m in members {
        let (share, keep) = (m.share as f32, m.keep[g]);
        if share == 0.0 {
            continue;
        }
        for ((o, x), r) in out.iter_mut().zip(pick(m)).zip(reference) {
            *o += share * (r + keep * (x - r));
        }
    }
    out
}

/// The output layer for `labels`: each label's column (and bias) blended
/// over the members that know it, their shares renormalised among them. A
/// label new to a local model comes in no longer than [`CLIP_FACTOR`]
/// times the longest local column (an imprinted label's bias stands out
/// by design, so a tighter bound would undo what the peer learned).
fn merge_output(
    members: &[Member],
    labels: &[String],
    reference: &Reference,
    has_local: bool,
) -> LayerWeights {
    let d_in = crate::model::HIDDEN[2];
    let d_out = labels.len();
    let mut weight = vec![0f32; d_in * d_out];
    let mut bias = vec![0f32; d_out];
    let indexes: Vec<HashMap<&str, usize>> =
        members.iter().map(|m| label_index(m.checkpoint)).collect();
    let longest_local = reference.columns[..reference.local_labels]
        .iter()
        .map(|c| norm(c))
        .fold(0.0, f64::max);
    for (col, label) in labels.iter().enumerate() {
        let r = &reference.columns[col];
        let mut acc = vec![0f64; d_in + 1];
        let mut total = 0.0;
        for (m, at) in members.iter().zip(&indexes) {
            let Some(&j) = at.get(label.as_str()) else {
                continue;
            };
            if m.share == 0.0 {
                continue;
            }
            let keep = m.keep[OUTPUT];
            for (k, (x, r)) in column(m.checkpoint, j).iter().zip(r).enumerate() {
                acc[k] += m.share * f64::from(r + keep * (x - r));
            }
            total += m.share;
        }
        let mut merged: Vec<f32> = acc.iter().map(|a| (a / total.max(1e-300)) as f32).collect();
        if has_local && col >= reference.local_labels {
            let (length, bound) = (norm(&merged), CLIP_FACTOR * longest_local);
            if length > bound && length > 0.0 {
                let scale = (bound / length) as f32;
                merged.iter_mut().for_each(|v| *v *= scale);
            }
        }
        for (i, v) in merged[..d_in].iter().enumerate() {
            weight[i * d_out + col] = *v;
        }
        bias[col] = merged[d_in];
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
        // The samples the nodes hold: the imprint keeps off them.
        let learn = |pattern: &str, text: &str| {
            let mut r = Recommender::new(RecommenderConfig::default());
            r.install(base.clone()).unwrap();
            assert!(
                r.outcome(&Context::from_text(text), pattern, true, &known)
                    .pattern_added
            );
            assert_eq!(
                r.recommend(&Context::from_text(text), 1).recommendations[0].pattern,
                pattern
            );
            r.model().unwrap().checkpoint()
        };
        // Each learned for a context the model gives to one topic (net,
        // ui), kept off the node's samples of other contexts.
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
            // Topics neither was learned for keep their answer (in the
            // two learned for, every text is a rearrangement of the same
            // few words: the model cannot tell them from the learned one).
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

        // Three peers, one with wild weights: it is pulled back; far
        // wilder, it is left out.
        let mut wild = b.clone();
        wild.weights.layers[1]
            .weight
            .iter_mut()
            .for_each(|w| *w *= 4.0);
        let (_, report) = merge(Some(&a), &[&b, &b.clone(), &wild]).unwrap();
        assert_eq!((report.clipped, report.skipped.len()), (1, 0));
        wild.weights.layers[1]
            .weight
            .iter_mut()
            .for_each(|w| *w *= 1000.0);
        let (_, report) = merge(Some(&a), &[&b, &b.clone(), &wild]).unwrap();
        assert_eq!((report.clipped, report.peers_merged), (0, 2));
        assert!(
            report.skipped[0].1.contains("second hidden layer"),
            "{report:?}"
        );
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

    /// The local model's output-layer norm (weights and bias).
    fn output_norm(c: &Checkpoint) -> f64 {
        let out = &c.weights.layers[OUTPUT];
        (norm(&out.weight).powi(2) + norm(&out.bias).powi(2)).sqrt()
    }

    #[test]
    fn a_huge_output_bias_is_left_out_and_a_large_one_pulled_back() {
        let a = model(&A);
        let honest = model(&A);
        let mut poisoned = a.clone();
        poisoned.samples = 1_000_000;
        poisoned.weights.layers[OUTPUT].bias[0] += 1e6;
        // Alone, nothing is left to merge, and the error says why.
        let refused = merge(Some(&a), &[&poisoned]).unwrap_err().to_string();
        assert!(refused.contains("its output units differ"), "{refused}");
        // Beside honest peers it is left out and they are merged.
        let (_, report) = merge(Some(&a), &[&honest, &poisoned, &honest]).unwrap();
        assert_eq!(report.peers_merged, 2);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].0, 1);
        assert_eq!(report.shares[1], 0.0);
        assert!((report.shares[0] + report.shares[2] + 1.0 / 3.0 - 1.0).abs() < 1e-9);
        // A bias within ten times the layer's size is clipped to its size.
        let bound = output_norm(&a);
        let mut large = a.clone();
        large.weights.layers[OUTPUT].bias[0] += (5.0 * bound) as f32;
        for peers in [vec![&large], vec![&honest, &large, &honest]] {
            let (merged, report) = merge(Some(&a), &peers).unwrap();
            let moved =
                f64::from(merged.weights.layers[OUTPUT].bias[0] - a.weights.layers[OUTPUT].bias[0]);
            assert!(
                moved.abs() <= bound * 1.0001,
                "moved {moved}, bound {bound}"
            );
            assert!(report.clipped >= 1, "{report:?}");
            assert_eq!(report.peers_merged, peers.len());
        }
    }

    #[test]
    fn every_group_is_clipped_idf_included() {
        let a = model(&A);
        let mut wild = a.clone();
        wild.features.idf.iter_mut().for_each(|v| *v *= 3.0);
        let (merged, report) = merge(Some(&a), &[&wild]).unwrap();
        assert_eq!(report.clipped, 1);
        let moved = squared_distance(&merged.features.idf, &a.features.idf).sqrt();
        assert!(moved <= norm(&a.features.idf) * 1.0001, "{moved}");
        // Far larger, it is left out.
        wild.features.idf.iter_mut().for_each(|v| *v *= 1000.0);
        let refused = merge(Some(&a), &[&wild]).unwrap_err().to_string();
        assert!(refused.contains("idf weights differ"), "{refused}");
    }

    #[test]
    fn a_peer_adding_too_many_labels_is_left_out_and_the_others_merged() {
        let a = model(&A);
        let honest = model(&B);
        let mut crowd = model(&B);
        let out = &mut crowd.weights.layers[OUTPUT];
        let extra = MAX_NEW_LABELS_PER_PEER + 1 - crowd.labels.len();
        let (d_in, d_old) = (out.d_in, out.d_out);
        let d_out = d_old + extra;
        let mut weight = vec![0.5f32; d_in * d_out];
        for i in 0..d_in {
            weight[i * d_out..i * d_out + d_old]
                .copy_from_slice(&out.weight[i * d_old..(i + 1) * d_old]);
        }
        out.weight = weight;
        out.bias.resize(d_out, 0.5);
        out.d_out = d_out;
        crowd.labels.extend((0..extra).map(|i| format!("junk-{i}")));
        crowd.validate().unwrap();
        let (merged, report) = merge(Some(&a), &[&crowd, &honest]).unwrap();
        assert_eq!(report.peers_merged, 1);
        let too_many = format!("{} patterns", MAX_NEW_LABELS_PER_PEER + 1);
        assert!(report.skipped[0].1.contains(&too_many), "{report:?}");
        assert_eq!(merged.labels, ["db", "net", "fs", "ui"]);
        assert_eq!(report.shares[0], 0.0);
        assert!(report.shares[1] > 0.0);
    }

    #[test]
    fn a_full_label_map_drops_new_labels_and_keeps_every_local_one() {
        let mut a = model(&A);
        // Local labels up to the peers' limit but one.
        let out = &mut a.weights.layers[OUTPUT];
        let (d_in, d_old) = (out.d_in, out.d_out);
        let d_out = MAX_LABELS - LOCAL_LABEL_RESERVE - 1;
        let mut weight = vec![0.0f32; d_in * d_out];
        for i in 0..d_in {
            weight[i * d_out..i * d_out + d_old]
                .copy_from_slice(&out.weight[i * d_old..(i + 1) * d_old]);
        }
        out.weight = weight;
        out.bias.resize(d_out, -10.0);
        out.d_out = d_out;
        a.labels
            .extend((0..d_out - d_old).map(|i| format!("local-{i}")));
        let (merged, report) = merge(Some(&a), &[&model(&B)]).unwrap();
        assert_eq!(merged.labels.len(), MAX_LABELS - LOCAL_LABEL_RESERVE);
        assert_eq!(merged.labels[..a.labels.len()], a.labels[..]);
        assert_eq!((report.labels_added.len(), report.labels_dropped), (1, 1));
    }

    #[test]
    fn a_peer_share_cap_holds_and_a_used_up_peer_is_left_out() {
        let (a, b) = (model(&A), model(&B));
        let (_, report) = merge_capped(Some(&a), &[&b, &b.clone()], &[0.1, 1.0]).unwrap();
        assert!((report.shares[0] - 0.1).abs() < 1e-12, "{report:?}");
        assert!((report.shares[1] - 0.45).abs() < 1e-12, "{report:?}");
        let (_, report) = merge_capped(Some(&a), &[&b, &b.clone()], &[0.0, 1.0]).unwrap();
        assert_eq!(report.peers_merged, 1);
        assert!(report.skipped[0].1.contains("used up"), "{report:?}");
    }

    #[test]
    fn without_a_local_model_an_outlier_is_measured_from_the_median() {
        let b = model(&B);
        let mut wild = b.clone();
        wild.weights.layers[1]
            .weight
            .iter_mut()
            .for_each(|w| *w *= 1000.0);
        let (merged, report) = merge(None, &[&b, &b.clone(), &wild]).unwrap();
        assert_eq!(report.clipped, 1);
        let moved = squared_distance(
            &merged.weights.layers[1].weight,
            &b.weights.layers[1].weight,
        )
        .sqrt();
        let size = norm(&b.weights.layers[1].weight);
        // Clipped to three times the median distance (the median is b's 0
        // here, so the wild one is dropped to b) — far below its own size.
        assert!(moved < 1e-3 * size, "{moved} vs {size}");
    }

    #[test]
    fn idf_stays_near_the_local_weights_and_an_empty_idf_is_left_out() {
        let a = model(&A);
        // All of the budget on one bucket: clamped to twice the local.
        let mut trigger = a.clone();
        let bucket = 7;
        trigger.features.idf[bucket] += (0.9 * norm(&a.features.idf)) as f32;
        let (merged, _) = merge(Some(&a), &[&trigger]).unwrap();
        assert!(merged.features.idf[bucket] <= 2.0 * a.features.idf[bucket] + 1e-6);
        // An empty idf ("all 1") does not average with a fitted one.
        let mut empty = model(&B);
        empty.features.idf.clear();
        let (_, report) = merge(Some(&a), &[&empty, &model(&B)]).unwrap();
        assert!(report.skipped[0].1.contains("idf weights"), "{report:?}");
        // Without a local model either (it used to index past the end).
        let (_, report) = merge(None, &[&model(&B), &empty, &model(&B)]).unwrap();
        assert_eq!(report.skipped.len(), 1, "{report:?}");
    }

    #[test]
    fn without_a_local_model_no_claim_outweighs_the_median_claim() {
        let b = model(&B);
        let loud = Checkpoint {
            samples: u64::MAX,
            ..b.clone()
        };
        let (_, report) = merge(None, &[&loud, &b, &b.clone()]).unwrap();
        for share in &report.shares {
            assert!((share - 1.0 / 3.0).abs() < 1e-9, "{report:?}");
        }
        let (_, report) = merge(None, &[&loud, &b]).unwrap();
        for share in &report.shares {
            assert!((share - 0.5).abs() < 1e-9, "{report:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn capped_shares_sum_to_one_and_respect_every_cap(
            weights in proptest::collection::vec(0.1f64..1e6, 1..8),
            caps in proptest::collection::vec(0.0f64..=1.0, 8),
        ) {
            // The first member is the local model: never capped.
            let mut caps = caps[..weights.len()].to_vec();
            caps[0] = 1.0;
            let shares = capped_shares(&weights, &caps);
            let total: f64 = shares.iter().sum();
            proptest::prop_assert!((total - 1.0).abs() < 1e-9, "{shares:?}");
            for (s, c) in shares.iter().zip(&caps) {
                proptest::prop_assert!(*s <= c + 1e-12 && *s >= 0.0, "{shares:?} {caps:?}");
            }
            // Uncapped members keep their proportions.
            let free: Vec<usize> = (0..weights.len()).filter(|&i| shares[i] < caps[i] - 1e-12).collect();
            for w in free.windows(2) {
                let (i, j) = (w[0], w[1]);
                proptest::prop_assert!((shares[i] / weights[i] - shares[j] / weights[j]).abs()
                    <= 1e-9 * (shares[i] / weights[i]).max(1e-300));
            }
        }
    }
}
