//! Federated learning over real node processes: five nodes each train on
//! their own shard of one dataset, too small alone to learn it; after they
//! merge one another's models over the mesh, each recommends about as
//! well as a model trained on all the shards together. Then the mesh goes
//! quiet: with nothing new learned, no model bytes move.

mod common;

use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::dataset::splitmix64;
use agentmesh_neural::features::FeatureConfig;
use agentmesh_neural::{train, Context, Sample, TrainConfig};
use agentmesh_node::client::ApiClient;
use agentmesh_testnet::wait;
use common::{accuracy, start, MESH_TIMEOUT};
use std::time::{Duration, Instant};

const NODES: usize = 5;
const SHARD: usize = 1000;
const EPOCHS: usize = 10;
const DIM: usize = 4096;
const LABELS: [&str; 6] = ["auth", "cache", "queue", "parse", "render", "store"];
/// Words of each label's own vocabulary. A sample carries two of them, so
/// a node that trained on its 117 samples of a label has seen about four
/// in five of its words, and the ten epochs here teach it fewer.
const VOCABULARY: u64 = 150;
const NOISE: [&str; 8] = [
    "the", "value", "result", "handle", "data", "item", "with", "from",
];
/// After merging, each node's top-1 accuracy at least this share of the
/// central model's.
const TARGET: f64 = 0.95;
const LEARN_TIMEOUT: Duration = Duration::from_secs(240);
/// Sharing rounds (1 s each here) watched for model bytes once merged.
const QUIET_WINDOW: Duration = Duration::from_secs(10);

/// Sample `i` of the dataset: two words of its label's vocabulary and three
/// words every label uses, drawn from a seeded generator.
fn sample(i: u64) -> Sample {
    let mut x = splitmix64(i);
    let mut next = |n: u64| {
        x = splitmix64(x);
        x % n
    };
    let label = next(LABELS.len() as u64) as usize;
    let mut words: Vec<String> = (0..2)
        .map(|_| format!("w{}", label as u64 * 1000 + next(VOCABULARY)))
        .collect();
    words.extend((0..3).map(|_| NOISE[next(NOISE.len() as u64) as usize].to_string()));
    Sample {
        context: Context::from_text(words.join(" ")),
        label: LABELS[label].into(),
    }
}

fn samples(range: std::ops::Range<u64>) -> Vec<Sample> {
    range.map(sample).collect()
}

/// The node's training run, reproduced here (the same seed, features and
/// epochs): its model before any merge.
fn trained(samples: &[Sample]) -> (Checkpoint, f64) {
    let config = TrainConfig {
        seed: 42,
        max_epochs: EPOCHS,
        features: FeatureConfig {
            dim: DIM,
            ..FeatureConfig::default()
        },
        ..TrainConfig::default()
    };
    let (model, report) = train(samples, &config, |_| {}).unwrap();
    (
        Checkpoint::of(&model, 1, samples.len() as u64, None),
        report.test.accuracy,
    )
}

fn local_accuracy(model: &Checkpoint, test: &[Sample]) -> f64 {
    let classifier = model.classifier().unwrap();
    let right = test
        .iter()
        .filter(|s| {
            classifier
                .predict(&s.context, 1)
                .first()
                .is_some_and(|(l, _)| *l == s.label)
        })
        .count();
    right as f64 / test.len() as f64
}

async fn status_u64(client: &ApiClient, name: &str) -> u64 {
    client.model_status().await.unwrap()[name].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: one scenario: shards, training, merging, quiet.
async fn nodes_that_saw_different_data_merge_to_near_central_accuracy_and_then_go_quiet() {
    let t = start(
        NODES,
        &["--model-share-secs", "1", "--model-feature-dim", "4096"],
    )
    .await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let shards: Vec<Vec<Sample>> = (0..NODES as u64)
        .map(|n| samples(n * SHARD as u64..(n + 1) * SHARD as u64))
        .collect();
    let test = samples(1_000_000..1_000_300);
    let central = local_accuracy(&trained(&shards.concat()).0, &test);
    let alone: Vec<(Checkpoint, f64)> = shards.iter().map(|s| trained(s)).collect();
    let before: Vec<f64> = alone
        .iter()
        .map(|(m, _)| local_accuracy(m, &test))
        .collect();
    // What makes the test mean something: alone, most nodes fall short.
    let short = before.iter().filter(|a| **a < TARGET * central).count();
    assert!(
        short >= 3,
        "the shards are not hard enough: central {central}, alone {before:?}"
    );

    for (i, node) in net.nodes.iter().enumerate() {
        let report = node
            .client
            .train_model(&shards[i], Some(EPOCHS))
            .await
            .unwrap();
        // The node trained the model reproduced above (training is
        // deterministic): "alone" is its model before any merge.
        assert_eq!(
            report["report"]["test"]["accuracy"].as_f64(),
            Some(alone[i].1),
            "{report}"
        );
    }

    // Each node merges its four peers' models.
    for (i, node) in net.nodes.iter().enumerate() {
        let merged = wait::until(
            &format!("node {i} to merge its peers"),
            LEARN_TIMEOUT,
            || async {
                let merged = status_u64(&node.client, "peer_models_merged").await;
                Ok((merged >= (NODES - 1) as u64).then_some(()))
            },
        )
        .await;
        if let Err(e) = merged {
            let mut statuses = Vec::new();
            for n in &net.nodes {
                let s = n.client.model_status().await.unwrap();
                statuses.push(format!(
                    "merges {} merged {} rejected {} failures {}",
                    s["merges"],
                    s["peer_models_merged"],
                    s["peer_models_rejected"],
                    s["merge_failures"]
                ));
            }
            panic!("{e}: {statuses:#?}\n{}", node.log_tail(40));
        }
    }
    // Then nothing more moves: no node learns anything new, so none
    // announces a new model, and no model is fetched.
    let fetched = || async {
        let mut total = 0;
        for node in &net.nodes {
            total += status_u64(&node.client, "model_bytes_fetched").await;
        }
        total
    };
    let mut settled = fetched().await;
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + LEARN_TIMEOUT;
    while quiet_since.elapsed() < QUIET_WINDOW {
        assert!(
            Instant::now() < deadline,
            "model bytes kept moving: {settled} fetched so far"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = fetched().await;
        if now != settled {
            (settled, quiet_since) = (now, Instant::now());
        }
    }
    assert!(settled > 0);

    let mut merged = Vec::new();
    for node in &net.nodes {
        merged.push(accuracy(&node.client, &test).await);
    }
    println!(
        "central {central}, alone {before:?}, merged {merged:?}, {settled} model bytes fetched"
    );
    for (i, after) in merged.into_iter().enumerate() {
        assert!(
            after >= TARGET * central,
            "node {i}: {} alone, {after} merged, central {central}",
            before[i]
        );
    }
}
