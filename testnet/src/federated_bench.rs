//! `bench federated`: five nodes that each saw different data, before and
//! after one merge round, against one model trained on all of it.
//!
//! The data (the cargo registry's test functions, as `bench model`) loses
//! a common test part; the rest is dealt to five nodes, either at random
//! (`random`) or by label, each node seeing only every fifth crate
//! (`labels`). Each node trains on its shard with the network's seed,
//! keeps its held-out slice, and then runs the merge round a node runs
//! when four peers announce their models: every peer's share capped as
//! the peer ledger caps fresh identities (together at most
//! `model.max_peer_influence`), each peer judged alone on the node's
//! held-out slice, then all together (`merge_checked`). Nodes announce a
//! model only when it learned from their own data, so in a mesh where
//! nothing new is learned this one round is where merging ends.
//!
//! Reported per node: top-1 and top-5 accuracy on the common test part
//! before and after, and in `labels` on the crates only its peers saw;
//! the same for a merge with no influence bound (the sample rule alone),
//! to show what the bound costs; and the bytes one model exchange moves.

use crate::bench::progress;
use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::dataset::{load_jsonl, split, Sample};
use agentmesh_neural::merge::merge;
use agentmesh_neural::{train, TrainConfig};
use agentmesh_node::config::ModelConfig;
use agentmesh_node::model::gate::{merge_checked, CheckSlice, Gate};
use agentmesh_node::model::ledger::round_caps;
use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

const NODES: usize = 5;
/// Targets of the federated evaluation: after merging, each node's top-1
/// accuracy at least this share of the central model's (random shards),
/// and its top-5 on crates only its peers saw at least this share of the
/// central model's there (label shards).
const RANDOM_TARGET: f64 = 0.95;
const UNSEEN_TOP5_TARGET: f64 = 0.9;

/// Top-1 and top-5 accuracy of `model` on the samples of `test` whose
/// label passes `keep`.
fn accuracy(model: &Checkpoint, test: &[Sample], keep: impl Fn(&str) -> bool) -> Result<Value> {
    let classifier = model.classifier().map_err(|e| anyhow!(e))?;
    let (mut top1, mut top5, mut n) = (0usize, 0usize, 0usize);
    for s in test.iter().filter(|s| keep(&s.label)) {
        n += 1;
        let ranked = classifier.predict(&s.context, 5);
        top1 += usize::from(ranked.first().is_some_and(|(l, _)| *l == s.label));
        top5 += usize::from(ranked.iter().any(|(l, _)| *l == s.label));
    }
    let share = |x: usize| x as f64 / n.max(1) as f64;
    Ok(json!({ "top1": share(top1), "top5": share(top5), "samples": n }))
}

fn figure(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// Deals `pool` to the nodes: every fifth sample, or every fifth label.
fn shards(pool: &[Sample], by_label: bool) -> Vec<Vec<Sample>> {
    let labels: Vec<&str> = pool
        .iter()
        .map(|s| s.label.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let owner = |i: usize, s: &Sample| {
        if by_label {
            labels.binary_search(&s.label.as_str()).unwrap_or(0) % NODES
        } else {
            i % NODES
        }
    };
    (0..NODES)
        .map(|node| {
            pool.iter()
                .enumerate()
                .filter(|(i, s)| owner(*i, s) == node)
                .map(|(_, s)| s.clone())
                .collect()
        })
        .collect()
}

struct Trained {
    model: Checkpoint,
    gate: Gate,
}

fn train_node(shard: &[Sample], config: &TrainConfig) -> Result<Trained> {
    // The node's defaults for the check.
    let settings = ModelConfig::default();
    let (classifier, _) = train(shard, config, |_| {}).map_err(|e| anyhow!(e))?;
    let slice = CheckSlice::from_training(shard, config.seed, &classifier, settings.min_confidence);
    Ok(Trained {
        model: Checkpoint::of(&classifier, 1, shard.len() as u64, None),
        gate: Gate {
            slice: Arc::new(slice),
            outcomes: Vec::new(),
            max_drop: settings.merge_max_accuracy_drop,
            min_confidence: settings.min_confidence,
        },
    })
}

// Long on purpose: one scenario, top to bottom: shards, training, each
// node's merge round, the report.
fn scenario(
    pool: &[Sample],
    test: &[Sample],
    central: &Checkpoint,
    by_label: bool,
    config: &TrainConfig,
) -> Result<Value> {
    let name = if by_label { "labels" } else { "random" };
    let shards = shards(pool, by_label);
    let mut nodes = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        progress(&format!(
            "{name}: node {i} trains on {} samples",
            shard.len()
        ));
        nodes.push(train_node(shard, config)?);
    }
    let (mut reports, mut worst) = (Vec::new(), f64::INFINITY);
    for (i, node) in nodes.iter().enumerate() {
        progress(&format!("{name}: node {i} merges its four peers"));
        let peers: Vec<Checkpoint> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.model.clone())
            .collect();
        // Fresh peers' caps, as the node's peer ledger gives them.
        let max = ModelConfig::default().max_peer_influence;
        let caps = round_caps(vec![max; peers.len()], max, true);
        let checked =
            merge_checked(Some(&node.model), &peers, &caps, &node.gate).map_err(|e| anyhow!(e))?;
        let after = checked
            .merged
            .as_ref()
            .map_or(&node.model, |(merged, _)| merged);
        let peer_refs: Vec<&Checkpoint> = peers.iter().collect();
        let (unbounded, _) = merge(Some(&node.model), &peer_refs).map_err(|e| anyhow!(e))?;
        let own: HashSet<&str> = node.model.labels.iter().map(String::as_str).collect();
        let all = |_: &str| true;
        let unseen = |l: &str| !own.contains(l);
        let merged_all = accuracy(after, test, all)?;
        let mut report = json!({
            "samples": shards[i].len(),
            "patterns": own.len(),
            "before": accuracy(&node.model, test, all)?,
            "after": merged_all,
            "unbounded_merge": accuracy(&unbounded, test, all)?,
            "peers_merged": checked.merged.as_ref().map_or(0, |(_, r)| r.peers_merged),
            "peers_rejected": checked.rejected.iter().map(|(p, why)| json!({"peer": p, "why": why})).collect::<Vec<_>>(),
            "peers_deferred": checked.deferred.len(),
        });
        let ratio = if by_label {
            let central_unseen = accuracy(central, test, unseen)?;
            let merged_unseen = accuracy(after, test, unseen)?;
            let ratio = figure(&merged_unseen, "top5") / figure(&central_unseen, "top5");
            report["unseen_patterns"] = json!({
                "central": central_unseen,
                "before": accuracy(&node.model, test, unseen)?,
                "after": merged_unseen,
                "unbounded_merge": accuracy(&unbounded, test, unseen)?,
                "top5_of_central": ratio,
            });
            ratio
        } else {
            let ratio =
                figure(&merged_all, "top1") / figure(&accuracy(central, test, all)?, "top1");
            report["top1_of_central"] = json!(ratio);
            ratio
        };
        worst = worst.min(ratio);
        reports.push(report);
    }
    let target = if by_label {
        UNSEEN_TOP5_TARGET
    } else {
        RANDOM_TARGET
    };
    Ok(json!({
        "nodes": reports,
        // random: each node's top-1 over the central model's; labels: each
        // node's top-5 on crates only its peers saw over the central
        // model's on the same samples.
        "worst_of_central": worst,
        "target": target,
        "met": worst >= target,
    }))
}

pub fn federated(data: Option<PathBuf>, samples: usize, seed: u64) -> Result<Value> {
    let tmp = tempfile::tempdir()?;
    let data = match data {
        Some(d) => d,
        None => crate::model_bench::build_dataset(tmp.path())?,
    };
    let all = load_jsonl(&data)?;
    // A seeded subset; its last tenth is the common test part.
    let (a, b, c) = split(all.len(), seed ^ 0xfed);
    let order: Vec<usize> = a.into_iter().chain(b).chain(c).take(samples).collect();
    let test_len = order.len() / 10;
    let (pool_idx, test_idx) = order.split_at(order.len() - test_len);
    let pool: Vec<Sample> = pool_idx.iter().map(|&i| all[i].clone()).collect();
    let test: Vec<Sample> = test_idx.iter().map(|&i| all[i].clone()).collect();
    drop(all);
    let config = TrainConfig {
        seed,
        ..TrainConfig::default()
    };
    progress(&format!("central model: {} samples", pool.len()));
    let (central, _) = train(&pool, &config, |_| {}).map_err(|e| anyhow!(e))?;
    let central = Checkpoint::of(&central, 1, pool.len() as u64, None);
    let exchange_bytes = central.encode().map_err(|e| anyhow!(e))?.len();
    let random = scenario(&pool, &test, &central, false, &config)?;
    let labels = scenario(&pool, &test, &central, true, &config)?;
    Ok(json!({
        "bench": "federated",
        "nodes": NODES,
        "samples": pool.len(),
        "test_samples": test.len(),
        "central": accuracy(&central, &test, |_| true)?,
        // One model exchange: a checkpoint, fetched whole.
        "model_exchange_bytes": exchange_bytes,
        "random": random,
        "labels": labels,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    }))
}
