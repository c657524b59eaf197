//! A member that shares poisoned models, over real node processes: honest
//! nodes reject each poisoned model and count it, their accuracy on
//! held-out data stays within a point, and they still learn from each
//! other meanwhile.
//!
//! The poisoner is a real node whose operator imports crafted checkpoints
//! (`PUT /v1/model/checkpoint`): the node announces and serves them as it
//! would its own model, which is what a malicious member can do.

mod common;

use agentmesh_neural::checkpoint::Checkpoint;
use agentmesh_neural::{Context, Sample};
use agentmesh_node::client::ApiClient;
use agentmesh_testnet::wait;
use common::{accuracy, start, MESH_TIMEOUT};
use std::time::Duration;

// Generous: a poisoner that keeps changing its model is cooled down for
// longer after each rejection (1 s, 2 s, 4 s...).
const LEARN_TIMEOUT: Duration = Duration::from_secs(180);

const TOPICS: [(&str, [&str; 4]); 4] = [
    ("net", ["socket", "dial", "peer", "packet"]),
    ("db", ["table", "query", "index", "row"]),
    ("ui", ["button", "click", "pixel", "layout"]),
    ("fs", ["file", "directory", "path", "inode"]),
];

/// `n` samples from `offset` on: shards of one dataset.
fn samples(n: usize, offset: usize) -> Vec<Sample> {
    let shared = ["the", "value", "result", "handle", "data", "item"];
    (offset..offset + n)
        .map(|i| {
            let (label, words) = TOPICS[i % TOPICS.len()];
            let text: Vec<&str> = (0..5)
                .flat_map(|j| [words[(i / 4 + j) % 4], shared[(i / 3 + j) % 6]])
                .collect();
            Sample {
                context: Context::from_text(text.join(" ")),
                label: label.into(),
            }
        })
        .collect()
}

async fn counter(client: &ApiClient, name: &str) -> u64 {
    client.model_status().await.unwrap()[name].as_u64().unwrap()
}

/// Waits until `client` has rejected more than `before` peer models.
async fn until_rejected(client: &ApiClient, before: u64, what: &str) -> u64 {
    let rejected = wait::until(what, LEARN_TIMEOUT, || async {
        let now = counter(client, "peer_models_rejected").await;
        Ok((now > before).then_some(now))
    })
    .await;
    match rejected {
        Ok(now) => now,
        Err(e) => {
            let mut status = client.model_status().await.unwrap();
            status["classes"] = serde_json::json!(status["classes"].as_array().map(Vec::len));
            panic!("{e}: {status}")
        }
    }
}

/// How a poison changes an honest checkpoint.
type Poison = Box<dyn Fn(&mut Checkpoint)>;

/// The poisons, each with what it is.
fn poisons() -> Vec<(&'static str, Poison)> {
    vec![
        (
            "a +1e6 output bias claiming a million samples",
            Box::new(|c: &mut Checkpoint| {
                c.samples = 1_000_000;
                c.weights.layers[3].bias[0] += 1e6;
            }),
        ),
        (
            "random weights",
            Box::new(|c: &mut Checkpoint| {
                let mut x = 0x9E37_79B9_7F4A_7C15u64;
                for layer in &mut c.weights.layers {
                    for w in layer.weight.iter_mut().chain(layer.bias.iter_mut()) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *w = (x % 2000) as f32 / 100.0 - 10.0;
                    }
                }
            }),
        ),
        (
            // 999 new labels, each a copy of an existing output unit a
            // little lower, to crowd the label map and the ranks below the
            // top: more new patterns than one model may bring at once.
            // (Merged, they would take little probability from the top
            // answers here, so the check on held-out samples would pass
            // them: the limit is what stops them.)
            "999 shadow labels",
            Box::new(|c: &mut Checkpoint| {
                let out = &mut c.weights.layers[3];
                let (d_in, old) = (out.d_in, out.d_out);
                let d_out = old + 999;
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
                c.labels.extend((0..999).map(|i| format!("shadow-{i:03}")));
            }),
        ),
        (
            "a 10,000-label model",
            Box::new(|c: &mut Checkpoint| {
                let out = &mut c.weights.layers[3];
                let (d_in, old) = (out.d_in, out.d_out);
                let d_out = agentmesh_neural::classifier::MAX_LABELS;
                let mut weight = vec![0.1f32; d_in * d_out];
                for i in 0..d_in {
                    weight[i * d_out..i * d_out + old]
                        .copy_from_slice(&out.weight[i * old..(i + 1) * old]);
                }
                out.weight = weight;
                out.bias.resize(d_out, 3.0);
                out.d_out = d_out;
                c.labels
                    .extend((0..d_out - old).map(|i| format!("crowd-{i:05}")));
            }),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: one mesh, three poisons in turn, and honest learning
// going on beside them.
async fn poisoned_models_are_rejected_and_honest_nodes_keep_their_accuracy_and_learn() {
    let t = start(
        3,
        &["--model-share-secs", "1", "--model-feature-dim", "4096"],
    )
    .await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let [a, b, m] = [0, 1, 2].map(|i| &net.nodes[i].client);
    let test = samples(200, 50_000);

    // Each trains on its own shard.
    for (i, node) in [a, b, m].into_iter().enumerate() {
        let report = node
            .train_model(&samples(400, i * 10_000), Some(10))
            .await
            .unwrap();
        assert!(
            report["report"]["test"]["accuracy"].as_f64().unwrap() > 0.9,
            "{report}"
        );
        let status = node.model_status().await.unwrap();
        assert!(
            status["held_out_samples"].as_u64().unwrap() >= 100,
            "{status}"
        );
    }
    let before = [accuracy(a, &test).await, accuracy(b, &test).await];
    let honest = Checkpoint::decode(&m.export_model().await.unwrap()).unwrap();

    for (what, poison) in poisons() {
        let mut c = honest.clone();
        poison(&mut c);
        let rejected = [
            counter(a, "peer_models_rejected").await,
            counter(b, "peer_models_rejected").await,
        ];
        m.import_model(c.encode().unwrap())
            .await
            .unwrap_or_else(|e| panic!("importing {what}: {e}"));
        until_rejected(a, rejected[0], &format!("A to reject {what}")).await;
        until_rejected(b, rejected[1], &format!("B to reject {what}")).await;
        for (node, was) in [a, b].into_iter().zip(before) {
            let now = accuracy(node, &test).await;
            assert!(now >= was - 0.01, "after {what}: accuracy {was} -> {now}");
            let status = node.model_status().await.unwrap();
            let classes = status["classes"].as_array().unwrap();
            assert!(
                classes.len() < 100,
                "after {what}: {} patterns known",
                classes.len()
            );
        }
    }

    // Honest peers are still merged beside the poisoner: a pattern B
    // learns from one outcome comes into A's model with B's.
    let merged_before = counter(a, "peer_models_merged").await;
    let context = &Context::from_text("retry the request with exponential backoff and jitter");
    b.report_outcome(context, "cache", true).await.unwrap();
    let learned = wait::until("A to merge B's new pattern", LEARN_TIMEOUT, || async {
        let status = a.model_status().await?;
        let classes = status["classes"].as_array().cloned().unwrap_or_default();
        // The counter moves just after the model is installed.
        let merged = status["peer_models_merged"].as_u64().unwrap_or(0);
        Ok((classes.iter().any(|c| c == "cache") && merged > merged_before).then_some(()))
    })
    .await;
    if let Err(e) = learned {
        let rejections: Vec<String> = net.nodes[0]
            .log_tail(400)
            .lines()
            .filter(|l| l.contains("rejected"))
            .map(String::from)
            .collect();
        panic!(
            "{e}: A {} / B {}\nA's rejections: {rejections:#?}",
            a.model_status().await.unwrap(),
            b.model_status().await.unwrap()
        );
    }
    for (node, was) in [a, b].into_iter().zip(before) {
        let now = accuracy(node, &test).await;
        assert!(now >= was - 0.01, "at the end: accuracy {was} -> {now}");
    }
    // The metric says the same as the status.
    let url = format!("http://{}/metrics", net.nodes[0].info.api);
    let metrics = net.nodes[0].http().get(&url).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let rejected = counter(a, "peer_models_rejected").await;
    assert!(
        metrics.contains(&format!(
            "agentmesh_model_peer_models_rejected_total {rejected}"
        )),
        "{metrics}"
    );
}
