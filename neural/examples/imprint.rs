//! How a pattern the model never saw does after one successful outcome.
//!
//! Trains on a JSONL file with a few labels held out (chosen from the
//! seed), then, for each held-out label and five of its samples in turn,
//! adds it to a copy of the model imprinted from that one sample, and
//! measures: the known labels' held-out test samples the new label takes
//! (and their accuracy before and after), and how many of the new label's
//! own samples it then ranks first and in the top five. Prints JSON.
//!
//! `cargo run --release -p agentmesh-neural --example imprint -- FILE [SEED] [--no-guard]`
//! (the guard: the validation samples, as a node passes its held-out ones)
//! (FILE: e.g. the cargo-registry data of `scripts/model/dataset.py`).

use agentmesh_neural::classifier::{train, Classifier, TrainConfig};
use agentmesh_neural::dataset::{load_jsonl, split, splitmix64, Sample};
use std::collections::BTreeSet;

const HELD_OUT: usize = 4;
const IMPRINTS_PER_LABEL: usize = 5;

fn main() {
    if let Err(e) = run() {
        eprintln!("imprint: {e}");
        std::process::exit(1);
    }
}

/// `samples` without the one at `skip`.
fn all_but<'a>(samples: &[&'a Sample], skip: usize) -> Vec<&'a Sample> {
    samples
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, s)| *s)
        .collect()
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let data = args
        .next()
        .ok_or("usage: imprint FILE [SEED] [--no-guard]")?;
    let seed: u64 = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("seed {s:?}: {e}"))?,
        None => 42,
    };
    let no_guard = match args.next().as_deref() {
        None => false,
        Some("--no-guard") => true,
        Some(other) => return Err(format!("unknown argument {other:?}")),
    };
    let all = load_jsonl(std::path::Path::new(&data)).map_err(|e| e.to_string())?;
    let labels: Vec<String> = all
        .iter()
        .map(|s| s.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() <= HELD_OUT + 1 {
        return Err(format!(
            "{} labels: too few to hold {HELD_OUT} out",
            labels.len()
        ));
    }
    // Spread over the sorted labels from a seeded start.
    let start = splitmix64(seed) as usize;
    let held: Vec<String> = (0..HELD_OUT)
        .map(|i| labels[start.wrapping_add(i * 11) % labels.len()].clone())
        .collect();
    let known: Vec<Sample> = all
        .iter()
        .filter(|s| !held.contains(&s.label))
        .cloned()
        .collect();
    let config = TrainConfig {
        seed,
        ..TrainConfig::default()
    };
    eprintln!("training without {held:?}");
    let (model, report) = train(&known, &config, |_| {}).map_err(|e| e.to_string())?;
    let (_, _, test_idx) = split(known.len(), seed);
    let test: Vec<&Sample> = test_idx.iter().map(|&i| &known[i]).collect();
    // What a node passes: the held-out samples of its training run (the
    // validation part here, so the test part stays unseen), or none.
    let (_, validation, _) = split(known.len(), seed);
    let guard: Vec<Sample> = if no_guard {
        Vec::new()
    } else {
        validation.iter().map(|&i| known[i].clone()).collect()
    };

    let (mut known_right, mut taken, mut first, mut top5, mut runs) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for label in &held {
        let own: Vec<&Sample> = all.iter().filter(|s| &s.label == label).collect();
        for j in 0..IMPRINTS_PER_LABEL {
            let mut grown: Classifier = model.clone();
            let source = j * 13 % own.len();
            if !grown.add_label_from(label, &own[source].context, &guard) {
                return Err(format!("{label}: not added"));
            }
            // The sample it was imprinted from is not counted.
            let others = all_but(&own, source);
            let top = |s: &Sample, k: usize| grown.predict(&s.context, k);
            let share = |hits: usize, of: usize| hits as f64 / of.max(1) as f64;
            known_right += share(
                test.iter().filter(|s| top(s, 1)[0].0 == s.label).count(),
                test.len(),
            );
            taken += share(
                test.iter().filter(|s| &top(s, 1)[0].0 == label).count(),
                test.len(),
            );
            first += share(
                others.iter().filter(|s| &top(s, 1)[0].0 == label).count(),
                others.len(),
            );
            top5 += share(
                others
                    .iter()
                    .filter(|s| top(s, 5).iter().any(|(l, _)| l == label))
                    .count(),
                others.len(),
            );
            runs += 1.0;
        }
    }
    // A second pattern for contexts the model already knows: imprinted
    // from a test sample of a known label, how much of that label's test
    // samples (and of the others') the new one takes.
    let (mut same_taken, mut other_taken, mut same_runs) = (0.0, 0.0, 0.0);
    for label in labels.iter().filter(|l| !held.contains(l)).take(HELD_OUT) {
        let (same, other): (Vec<&Sample>, Vec<&Sample>) =
            test.iter().partition(|s| &s.label == label);
        for j in 0..IMPRINTS_PER_LABEL.min(same.len()) {
            let mut grown: Classifier = model.clone();
            let variant = format!("{label}-variant");
            if !grown.add_label_from(&variant, &same[j].context, &guard) {
                return Err(format!("{variant}: not added"));
            }
            // Its own source sample left out, as above.
            let rest = all_but(&same, j);
            let taken = |of: &[&Sample]| {
                of.iter()
                    .filter(|s| grown.predict(&s.context, 1)[0].0 == variant)
                    .count() as f64
                    / of.len().max(1) as f64
            };
            same_taken += taken(&rest);
            other_taken += taken(&other);
            same_runs += 1.0;
        }
    }
    let result = serde_json::json!({
        "bench": "imprint",
        "seed": seed,
        "guard": guard.len().min(agentmesh_neural::imprint::MAX_GUARD),
        "held_out": held,
        "known_test_accuracy_before": report.test.accuracy,
        "known_test_accuracy_after": known_right / runs,
        "known_test_taken_by_new": taken / runs,
        "new_label_first": first / runs,
        "new_label_in_top5": top5 / runs,
        "variant_takes_of_its_label": same_taken / same_runs,
        "variant_takes_of_other_labels": other_taken / same_runs,
    });
    println!("{result}");
    Ok(())
}
