//! Classification metrics on held-out data.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metrics {
    pub samples: usize,
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// `confusion[truth][predicted]`, classes in label-map order.
    pub confusion: Vec<Vec<u32>>,
}

/// Metrics of `predicted` against `truth` (class indices below `classes`).
/// Macro averages run over the classes that occur in either, as
/// scikit-learn's do.
pub fn evaluate(truth: &[usize], predicted: &[usize], classes: usize) -> Metrics {
    let mut confusion = vec![vec![0u32; classes]; classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        confusion[t][p] += 1;
    }
    let correct: u32 = (0..classes).map(|c| confusion[c][c]).sum();
    let (mut precision, mut recall, mut f1, mut present) = (0.0, 0.0, 0.0, 0usize);
    for c in 0..classes {
        let tp = f64::from(confusion[c][c]);
        let actual: f64 = confusion[c].iter().map(|&n| f64::from(n)).sum();
        let called: f64 = confusion.iter().map(|row| f64::from(row[c])).sum();
        if actual == 0.0 && called == 0.0 {
            continue;
        }
        present += 1;
        let p = if called > 0.0 { tp / called } else { 0.0 };
        let r = if actual > 0.0 { tp / actual } else { 0.0 };
        precision += p;
        recall += r;
        f1 += if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
    }
    let avg = |x: f64| if present > 0 { x / present as f64 } else { 0.0 };
    Metrics {
        samples: truth.len(),
        accuracy: if truth.is_empty() {
            0.0
        } else {
            f64::from(correct) / truth.len() as f64
        },
        macro_precision: avg(precision),
        macro_recall: avg(recall),
        macro_f1: avg(f1),
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_a_hand_computed_case() {
        // truth:     0 0 1 1 2
        // predicted: 0 1 1 1 0
        let m = evaluate(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3);
        assert!((m.accuracy - 0.6).abs() < 1e-9);
        // precision: 0.5, 2/3, 0 → 0.3889; recall: 0.5, 1, 0 → 0.5
        assert!((m.macro_precision - (0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-9);
        assert!((m.macro_recall - 0.5).abs() < 1e-9);
        let f1 = (0.5 + 0.8) / 3.0;
        assert!((m.macro_f1 - f1).abs() < 1e-9);
        assert_eq!(m.confusion[0], vec![1, 1, 0]);
    }
}
