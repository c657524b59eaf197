//! The output column of a label imprinted from one context (see
//! [`crate::Classifier::add_label_from`]).
//!
//! Its logit for last-hidden-layer activations h is a blend of the
//! existing labels' logits zₖ, weighted by how the model ranks them for the
//! imprinting context x (softmax at [`TEMPERATURE`]), plus the constant C
//! that puts it [`MARGIN`] above the best of them at x, plus a term that
//! is 0 at x and falls away from it along −u (u a unit direction):
//!
//!   new(h) = Σₖ sₖ zₖ(h) + C + β u·(h − h(x)).
//!
//! So the new label ranks first at x whatever β. With β = 0 the blend
//! copies whichever label the model gives x surely, and the new label
//! ranks first wherever that one does: one successful outcome for a new
//! pattern took every answer of an existing one. β and u are chosen on
//! guard contexts the node holds (its held-out samples): u points from the
//! mean activations of the guard contexts the blend alone would take
//! (come within [`GUARD_MARGIN`] of their best existing logit) towards
//! h(x), and β is the smallest that keeps the new label at least
//! [`GUARD_MARGIN`] (and a hair, [`TIE`]) below the best existing logit on
//! as many guard contexts as any β along u can. It spreads to contexts
//! like x as far as the node's own data allows, and no further. β is
//! capped so that the term does not make the column longer than
//! [`MAX_LENGTH_FACTOR`] times the longest existing one, or than the blend
//! alone if that is longer (peers merging it clip a new column longer
//! than three times their own longest, which would undo the imprint
//! there); guard contexts the cap, or the geometry (x between two of
//! them), leaves taken are counted in [`NewColumn::guard_taken`]. Without
//! a guard, β = 0.
//! The output is linear in h, so the term rises beyond x along u (away
//! from the contexts it was kept off); contexts out there that no guard
//! context stands for can still be taken.

use crate::model::LayerWeights;

/// Temperature of the weights the new label takes from the existing ones.
pub const TEMPERATURE: f64 = 0.5;
/// How far above the best existing logit the new label starts at its own
/// context.
pub const MARGIN: f64 = 0.5;
/// How far below the best existing logit the new label is kept on a guard
/// context (where β can achieve it). Measured on the crates data
/// (docs/model.md, "Imprinting: the measurements"), 0.5 and 0.25 kept
/// more answers of the known crates (0.09% and 0.14% taken against 0.21%)
/// but a new pattern imprinted inside a known one's samples took more of
/// them (84%, 74% against 53%) and the new crate ranked in the top five
/// for fewer of its samples (52%, 63% against 79%).
pub const GUARD_MARGIN: f64 = 0.0;
/// How far below the kept-off line the steepness puts the guard context
/// that sets it: a tie in f64 here could be a win in the model's f32.
pub const TIE: f64 = 1e-3;
/// Most guard contexts one imprint reads (their logits are computed under
/// the model's lock).
pub const MAX_GUARD: usize = 512;
/// The longest the new column (weights and bias) may be, in lengths of
/// the longest existing column; peers clip a new label's column at 3.
pub const MAX_LENGTH_FACTOR: f64 = 2.0;

/// What the model computes for one context.
pub struct Seen {
    /// The last hidden layer's activations.
    pub hidden: Vec<f32>,
    /// One logit per existing label.
    pub logits: Vec<f32>,
}

/// The new label's output column, and what choosing it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct NewColumn {
    /// One weight per hidden unit.
    pub weight: Vec<f32>,
    pub bias: f32,
    /// β (0: the blend alone).
    pub steepness: f64,
    /// Guard contexts whose best existing logit the new label comes within
    /// [`GUARD_MARGIN`] of, even at the chosen β.
    pub guard_taken: usize,
}

fn finite(xs: &[f32]) -> bool {
    xs.iter().all(|x| x.is_finite())
}

fn max(xs: &[f32]) -> f64 {
    xs.iter()
        .map(|&x| f64::from(x))
        .fold(f64::NEG_INFINITY, f64::max)
}

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * f64::from(*y)).sum()
}

/// The column for a label imprinted at `at`, kept off `guard` (module
/// docs). `out` is the output layer (`d_in` × `d_out`, row-major by input
/// unit). None if the inputs do not fit the layer or are not finite.
pub fn new_column(out: &LayerWeights, at: &Seen, guard: &[Seen]) -> Option<NewColumn> {
    let (d_in, classes) = (out.d_in, out.d_out);
    let fits = |s: &Seen| s.hidden.len() == d_in && s.logits.len() == classes;
    if classes == 0 || !fits(at) || !finite(&at.logits) || !finite(&at.hidden) {
        return None;
    }
    let top = max(&at.logits);
    let exp: Vec<f64> = at
        .logits
        .iter()
        .map(|&l| ((f64::from(l) - top) / TEMPERATURE).exp())
        .collect();
    let total: f64 = exp.iter().sum();
    let share: Vec<f64> = exp.iter().map(|e| e / total).collect();
    let blend = |z: &[f32]| dot(&share, z);
    let c = top - blend(&at.logits) + MARGIN;
    let mix_weight: Vec<f64> = (0..d_in)
        .map(|i| blend(&out.weight[i * classes..(i + 1) * classes]))
        .collect();
    let mix_bias = blend(&out.bias);
    let same = |h: &[f32]| {
        h.iter()
            .zip(&at.hidden)
            .all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + a.abs()))
    };
    let guard: Vec<&Seen> = guard
        .iter()
        .take(MAX_GUARD)
        .filter(|g| fits(g) && finite(&g.logits) && finite(&g.hidden) && !same(&g.hidden))
        .collect();
    // How far above the kept-off line the new label is on each guard
    // context at β = 0.
    let excess: Vec<f64> = guard
        .iter()
        .map(|g| blend(&g.logits) + c - max(&g.logits) + GUARD_MARGIN)
        .collect();
    let dir = direction(at, &guard, &excess);
    let dir_at = dot(&dir, &at.hidden);
    // How much each unit of β lowers the new label on each.
    let slope: Vec<f64> = guard
        .iter()
        .map(|g| dir_at - dot(&dir, &g.hidden))
        .collect();
    let taken = |beta: f64| {
        excess
            .iter()
            .zip(&slope)
            .filter(|(e, s)| *e - beta * *s > 0.0)
            .count()
    };
    let beta_max = max_steepness_within_cap(out, &mix_weight, mix_bias + c, &dir, dir_at);
    // The count changes only where a line crosses 0: just past each
    // crossing that frees a context, and the cap.
    let mut candidates: Vec<f64> = excess
        .iter()
        .zip(&slope)
        .filter(|(e, s)| **e > -TIE && **s > 0.0)
        .map(|(e, s)| (e + TIE) / s)
        .filter(|b| *b <= beta_max)
        .chain([0.0, beta_max])
        .collect();
    candidates.sort_by(f64::total_cmp);
    let (steepness, guard_taken) = candidates
        .into_iter()
        .map(|b| (b, taken(b)))
        .min_by(|a, b| a.1.cmp(&b.1).then(a.0.total_cmp(&b.0)))
        .unwrap_or((0.0, taken(0.0)));
    Some(NewColumn {
        weight: mix_weight
            .iter()
            .zip(&dir)
            .map(|(w, d)| (w + steepness * d) as f32)
            .collect(),
        bias: (mix_bias + c - steepness * dir_at) as f32,
        steepness,
        guard_taken,
    })
}

/// The unit direction from the mean activations of the guard contexts the
/// blend alone would take towards the imprinting context's (zero if it
/// takes none, or they average to it): lowering the new label along it
/// lowers it most where it would take the most.
fn direction(at: &Seen, guard: &[&Seen], excess: &[f64]) -> Vec<f64> {
    let threatened: Vec<&&Seen> = guard
        .iter()
        .zip(excess)
        .filter(|(_, e)| **e > 0.0)
        .map(|(g, _)| g)
        .collect();
    let mut d: Vec<f64> = at.hidden.iter().map(|&h| f64::from(h)).collect();
    if threatened.is_empty() {
        return vec![0.0; d.len()];
    }
    let k = threatened.len() as f64;
    for g in &threatened {
        for (d, h) in d.iter_mut().zip(&g.hidden) {
            *d -= f64::from(*h) / k;
        }
    }
    let length = d.iter().map(|x| x * x).sum::<f64>().sqrt();
    if length > 0.0 {
        d.iter_mut().for_each(|x| *x /= length);
    }
    d
}

/// The largest β at which the column (blend + β·(u, −u·h(x))) is at most
/// [`MAX_LENGTH_FACTOR`] times the longest existing column, or as long as
/// the blend alone if that is longer.
fn max_steepness_within_cap(
    out: &LayerWeights,
    weight: &[f64],
    bias: f64,
    dir: &[f64],
    dir_at: f64,
) -> f64 {
    let classes = out.d_out;
    let longest = (0..classes)
        .map(|k| {
            let w: f64 = (0..out.d_in)
                .map(|i| f64::from(out.weight[i * classes + k]).powi(2))
                .sum();
            (w + f64::from(out.bias[k]).powi(2)).sqrt()
        })
        .fold(0.0, f64::max);
    let limit = MAX_LENGTH_FACTOR * longest;
    // |a + βv|² = limit², a = (weight, bias), v = (dir, −dir·h(x)).
    let aa: f64 = weight.iter().map(|w| w * w).sum::<f64>() + bias * bias;
    let av: f64 = weight.iter().zip(dir).map(|(w, d)| w * d).sum::<f64>() - bias * dir_at;
    let vv = dir.iter().map(|d| d * d).sum::<f64>() + dir_at * dir_at;
    if vv == 0.0 {
        return 0.0;
    }
    // A blend longer than the limit may still be pulled in by the term,
    // never further out.
    let rest = (aa - limit * limit).min(0.0);
    ((-av + (av * av - vv * rest).sqrt()) / vv).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hidden units, two labels: label 0 reads unit 0, label 1 unit 1.
    fn layer() -> LayerWeights {
        LayerWeights {
            d_in: 2,
            d_out: 2,
            weight: vec![4.0, 0.0, 0.0, 4.0],
            bias: vec![0.0, 0.0],
        }
    }

    fn seen(h: [f32; 2]) -> Seen {
        let out = layer();
        let logits = (0..2)
            .map(|k| h[0] * out.weight[k] + h[1] * out.weight[2 + k] + out.bias[k])
            .collect();
        Seen {
            hidden: h.to_vec(),
            logits,
        }
    }

    fn logit(c: &NewColumn, h: [f32; 2]) -> f64 {
        f64::from(c.weight[0] * h[0] + c.weight[1] * h[1] + c.bias)
    }

    #[test]
    fn the_new_label_wins_at_its_context_and_keeps_off_the_guard() {
        // x is confidently label 0, a little of label 1.
        let x = [1.0, 0.2];
        let at = seen(x);
        let top = max(&at.logits);
        // Without a guard the blend copies label 0: it wins wherever label
        // 0 does, however far from x.
        let bare = new_column(&layer(), &at, &[]).unwrap();
        assert_eq!(bare.steepness, 0.0);
        assert!((logit(&bare, x) - (top + MARGIN)).abs() < 1e-5);
        let far = [3.0, 0.0];
        assert!(logit(&bare, far) > max(&seen(far).logits));
        // With label 0's other contexts as guard, it keeps off them and
        // still wins at x by the margin.
        let guard: Vec<Seen> = [[0.5, 0.0], [0.3, 0.1], [0.2, 0.9]]
            .map(seen)
            .into_iter()
            .collect();
        let kept = new_column(&layer(), &at, &guard).unwrap();
        assert!(kept.steepness > 0.0);
        assert_eq!(kept.guard_taken, 0);
        assert!((logit(&kept, x) - (top + MARGIN)).abs() < 1e-4);
        for g in &guard {
            let h = [g.hidden[0], g.hidden[1]];
            assert!(
                logit(&kept, h) <= max(&g.logits) - GUARD_MARGIN + 1e-4,
                "{h:?}"
            );
        }
        // A guard context identical to x is x: not kept off.
        let with_x: Vec<Seen> = [x, [0.5, 0.0]].map(seen).into_iter().collect();
        assert_eq!(new_column(&layer(), &at, &with_x).unwrap().guard_taken, 0);
        // The column stays within the length cap.
        let length =
            |c: &NewColumn| (c.weight.iter().map(|w| w * w).sum::<f32>() + c.bias * c.bias).sqrt();
        assert!(f64::from(length(&kept)) <= MAX_LENGTH_FACTOR * 4.0 + 1e-4);
    }

    #[test]
    fn guards_out_of_reach_are_counted_not_chased() {
        let at = seen([1.0, 0.0]);
        // Further along x's direction: kept off by turning away from it.
        let further = vec![seen([2.0, 0.0])];
        let c = new_column(&layer(), &at, &further).unwrap();
        assert!(c.steepness > 0.0);
        assert_eq!(c.guard_taken, 0);
        // x between two of them on one line: no linear output is above
        // the best at x and kept off both; one is counted.
        let around = vec![seen([2.0, 0.0]), seen([0.5, 0.0])];
        let c = new_column(&layer(), &at, &around).unwrap();
        assert_eq!(c.guard_taken, 1);
        // Close to x: keeping the new label off it would take a column
        // longer than the cap allows; it is counted.
        let x = [1.0, 0.2];
        let guard = vec![seen([0.5, 0.0]), seen([1.0, 0.0])];
        let c = new_column(&layer(), &seen(x), &guard).unwrap();
        assert!(c.steepness > 0.0);
        assert_eq!(c.guard_taken, 1);
        // Inputs that do not fit the layer are refused.
        let short = Seen {
            hidden: vec![1.0],
            logits: vec![1.0, 0.0],
        };
        assert!(new_column(&layer(), &short, &[]).is_none());
        let nan = Seen {
            hidden: vec![f32::NAN, 0.0],
            logits: vec![0.0, 0.0],
        };
        assert!(new_column(&layer(), &nan, &[]).is_none());
    }
}
