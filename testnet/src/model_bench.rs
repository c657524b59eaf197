//! `bench model`: the local model on real data nobody on the project wrote
//! (which crate of the local cargo registry a test function belongs to),
//! beside the rule-based recommender and scikit-learn's TF-IDF + LinearSVC
//! on the same split.

use crate::bench::{percentile, progress};
use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::dataset::{load_jsonl, split};
use agentmesh_neural::merge::merge;
use agentmesh_neural::recommender::{Recommender, RecommenderConfig};
use agentmesh_neural::{train, TrainConfig};
use agentmesh_node::model::gate::{merge_checked, CheckSlice, Gate};
use anyhow::{anyhow, Context as _, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/model")
        .join(name)
}

/// Builds the dataset with `scripts/model/dataset.py` into `dir`.
pub(crate) fn build_dataset(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("crates.jsonl");
    progress("building the dataset from the local cargo registry");
    let status = Command::new("python3")
        .arg(script("dataset.py"))
        .arg("--out")
        .arg(&out)
        .status()
        .context("cannot run python3 scripts/model/dataset.py")?;
    anyhow::ensure!(status.success(), "dataset.py failed");
    Ok(out)
}

/// scikit-learn's figures on the same file and split, if it is installed.
fn sklearn(data: &Path, seed: u64) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(script("baseline.py"))
        .arg("--data")
        .arg(data)
        .arg("--seed")
        .arg(seed.to_string())
        .output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(json!(null)),
        Ok(o) => json!({ "unavailable": String::from_utf8_lossy(&o.stderr).trim() }),
        Err(e) => json!({ "unavailable": e.to_string() }),
    }
}

// Long on purpose: A benchmark reads best as its scenario, top to bottom: data, training,
// measurements, report.
pub fn model(data: Option<PathBuf>, samples: usize, seed: u64) -> Result<serde_json::Value> {
    let tmp = tempfile::tempdir()?;
    let data = match data {
        Some(d) => d,
        None => build_dataset(tmp.path())?,
    };
    let mut all = load_jsonl(&data)?;
    // A seeded subset of `samples` (the epoch time is quoted at 10,000).
    let (a, b, c) = split(all.len(), seed ^ 0x5eed);
    let keep: Vec<usize> = a.into_iter().chain(b).chain(c).take(samples).collect();
    let mut subset: Vec<_> = keep.iter().map(|&i| all[i].clone()).collect();
    all.clear();
    let subset_path = tmp.path().join("subset.jsonl");
    let lines: Vec<String> = subset
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(&subset_path, lines.join("\n") + "\n")?;

    progress(&format!("training on {} samples", subset.len()));
    let config = TrainConfig {
        seed,
        ..TrainConfig::default()
    };
    let (mut classifier, report) = train(&subset, &config, progress).map_err(|e| anyhow!(e))?;

    let (train_part, _, test) = split(subset.len(), seed);
    let train_samples = train_part.len();
    let epoch_s =
        report.epoch_seconds.iter().sum::<f64>() / report.epoch_seconds.len().max(1) as f64;
    let contexts: Vec<_> = test.iter().map(|&i| subset[i].context.clone()).collect();
    let mut infer = Vec::new();
    for c in &contexts {
        let t = Instant::now();
        let _ = classifier.predict(c, 5);
        infer.push(t.elapsed().as_secs_f64() * 1e3);
    }
    infer.sort_by(f64::total_cmp);

    // Through the node's recommender: the first ask of each context fills
    // the cache, the second is answered from it.
    let checkpoint = Checkpoint::of(&classifier, 1, subset.len() as u64, Some(report.clone()));
    let mut recommender = Recommender::new(RecommenderConfig::default());
    recommender
        .install(checkpoint.clone())
        .map_err(|e| anyhow!(e))?;
    for c in &contexts {
        recommender.recommend(c, 5);
    }
    let mut cached = Vec::new();
    for c in &contexts {
        let t = Instant::now();
        let answer = recommender.recommend(c, 5);
        cached.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(answer.cached, "a repeated context missed the cache");
    }
    cached.sort_by(f64::total_cmp);

    let mut online = Vec::new();
    for (i, c) in contexts.iter().take(50).enumerate() {
        let label = &subset[test[i]].label;
        let t = Instant::now();
        classifier.learn_outcome(c, label, i % 2 == 0, 1e-4);
        online.push(t.elapsed().as_secs_f64() * 1e3);
    }
    online.sort_by(f64::total_cmp);

    // A merge round as a node runs it: its model and two peers' (here the
    // model before and after the online updates, so the shapes match).
    progress("merging three models");
    let updated = Checkpoint::of(&classifier, 2, subset.len() as u64, None);
    let started = Instant::now();
    let (_, merge_report) =
        merge(Some(&checkpoint), &[&updated, &updated.clone()]).map_err(|e| anyhow!(e))?;
    let merge_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(merge_report.peers_merged == 2, "the merge left peers out");
    // The same round as a node runs it: each peer's model merged alone and
    // checked on the held-out part of the training split, then both
    // together and checked again.
    progress("a checked merge round");
    let gate = Gate {
        slice: std::sync::Arc::new(CheckSlice::from_training(
            &subset,
            seed,
            &checkpoint.classifier().map_err(|e| anyhow!(e))?,
            0.25,
        )),
        outcomes: Vec::new(),
        max_drop: 0.01,
        min_confidence: 0.25,
    };
    let started = Instant::now();
    let checked = merge_checked(
        Some(&checkpoint),
        &[updated.clone(), updated.clone()],
        &[0.5, 0.5],
        &gate,
    )
    .map_err(|e| anyhow!(e))?;
    let checked_merge_ms = started.elapsed().as_secs_f64() * 1e3;
    let held_out = gate.slice.held_out.len();
    let model_bytes = Checkpoint::of(&classifier, 1, subset.len() as u64, None)
        .encode()
        .map_err(|e| anyhow!(e))?
        .len();
    subset.clear();
    progress("scikit-learn baseline on the same split");
    let sklearn = sklearn(&subset_path, seed);
    Ok(json!({
        "bench": "model",
        "backend": format!("{:?}", agentmesh_neural::model::backend()).to_lowercase(),
        "samples": report.samples,
        "classes": report.classes,
        "feature_dim": classifier.features.dim,
        "epochs": report.epochs,
        // Per 10,000 training samples (the training part of the split is
        // 70% of `samples`; epochs scale linearly in the samples).
        "epoch_s": epoch_s * 10_000.0 / train_samples as f64,
        "epoch_s_measured": epoch_s,
        "train_samples": train_samples,
        "train_seconds": report.train_seconds,
        "test_accuracy": report.test.accuracy,
        "macro_f1": report.test.macro_f1,
        "baseline_test_accuracy": report.baseline_test.accuracy,
        "sklearn": sklearn,
        "infer_ms": { "p50": percentile(&infer, 50.0), "p99": percentile(&infer, 99.0) },
        "cached_infer_ms": { "p50": percentile(&cached, 50.0), "p99": percentile(&cached, 99.0) },
        "online_update_ms": percentile(&online, 50.0),
        "merge_ms": merge_ms,
        "checked_merge": {
            "ms": checked_merge_ms,
            "held_out_samples": held_out,
            "peers_merged": checked.merged.as_ref().map_or(0, |(_, r)| r.peers_merged),
            "peers_rejected": checked.rejected.len(),
        },
        "model_bytes": model_bytes,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    }))
}
