//! `agentmesh model train|eval`: the local model on a JSONL file, without
//! a running node. Progress goes to standard error, metrics (JSON) to
//! standard output.

use crate::cli::ModelCommand;
use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::dataset::load_jsonl;
use agentmesh_neural::{train, TrainConfig, TrainReport};
use anyhow::{anyhow, Context, Result};
use serde_json::json;

pub fn run(command: ModelCommand) -> Result<()> {
    let (data, seed, out, feature_args) = match command {
        ModelCommand::Train {
            data,
            seed,
            out,
            features,
        } => (data, seed, out, features),
        ModelCommand::Eval {
            data,
            seed,
            features,
        } => (data, seed, None, features),
    };
    let mut features = agentmesh_neural::features::FeatureConfig::default();
    if let Some(dim) = feature_args.dim {
        features.dim = dim;
    }
    if let Some(norm) = feature_args.norm {
        features.norm = norm;
    }
    if let Some(range) = feature_args.char_ngrams {
        let (min, max) = match range.split_once('-') {
            Some((a, b)) => (a.parse(), b.parse()),
            None => (range.parse(), range.parse()),
        };
        let (Ok(min), Ok(max)) = (min, max) else {
            return Err(anyhow!("--char-ngrams {range:?}: expected e.g. 3-5, or 0"));
        };
        features.char_min = min;
        features.char_max = max;
    }
    features
        .validate()
        .map_err(|e| anyhow!("feature options: {e}"))?;
    let samples = load_jsonl(&data)?;
    eprintln!("[model] {} samples from {}", samples.len(), data.display());
    let config = TrainConfig {
        seed,
        features,
        ..TrainConfig::default()
    };
    let (classifier, report) =
        train(&samples, &config, |line| eprintln!("[model] {line}")).map_err(|e| anyhow!(e))?;
    if let Some(out) = out {
        let bytes = Checkpoint::of(&classifier, 1, samples.len() as u64, Some(report.clone()))
            .encode()
            .map_err(|e| anyhow!(e))?;
        std::fs::write(&out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("[model] checkpoint written to {}", out.display());
    }
    println!("{}", summary(&report));
    Ok(())
}

/// The metrics as `model train|eval` print them.
pub fn summary(r: &TrainReport) -> serde_json::Value {
    json!({
        "samples": r.samples,
        "classes": r.classes,
        "test_accuracy": r.test.accuracy,
        "macro_precision": r.test.macro_precision,
        "macro_recall": r.test.macro_recall,
        "macro_f1": r.test.macro_f1,
        "epochs": r.epochs,
        "best_epoch": r.best_epoch,
        "train_seconds": r.train_seconds,
        "epoch_seconds_mean": r.epoch_seconds.iter().sum::<f64>() / r.epoch_seconds.len().max(1) as f64,
        "baseline_test_accuracy": r.baseline_test.accuracy,
        "baseline_macro_f1": r.baseline_test.macro_f1,
    })
}
