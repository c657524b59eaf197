//! The local model over real node processes: training through the API,
//! outcomes that change a node's recommendations at once, and mesh
//! learning — a node that saw none of the outcomes recommends what two
//! other nodes learned, after merging their shared models, and still
//! knows it after a restart.

mod common;

use agentmesh_neural::recommender::{Answer, Source};
use agentmesh_neural::{Context, Sample};
use agentmesh_node::client::ApiClient;
use agentmesh_testnet::wait;
use common::{start, MESH_TIMEOUT};
use std::time::Duration;

const LEARN_TIMEOUT: Duration = Duration::from_secs(90);

const TOPICS: [(&str, [&str; 4]); 4] = [
    ("net", ["socket", "dial", "peer", "packet"]),
    ("db", ["table", "query", "index", "row"]),
    ("ui", ["button", "click", "pixel", "layout"]),
    ("fs", ["file", "directory", "path", "inode"]),
];

fn samples(n: usize) -> Vec<Sample> {
    let shared = ["the", "value", "result", "handle"];
    (0..n)
        .map(|i| {
            let (label, words) = TOPICS[i % TOPICS.len()];
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

async fn top(client: &ApiClient, text: &str) -> Answer {
    client
        .recommend(&Context::from_text(text), 3)
        .await
        .unwrap()
}

fn first(a: &Answer) -> (&str, f64) {
    a.recommendations
        .first()
        .map_or(("", 0.0), |r| (r.pattern.as_str(), r.score))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: One scenario: outcomes on one node, then what the others learn from it, on
// the same mesh.
async fn outcomes_change_a_node_at_once_and_the_mesh_teaches_a_node_that_saw_none() {
    let mut t = start(
        3,
        &["--model-share-secs", "1", "--model-feature-dim", "4096"],
    )
    .await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let [a, b, c] = [0, 1, 2].map(|i| &net.nodes[i].client);

    // Untrained: the rules answer, and say so.
    assert_eq!(top(a, "dial the socket").await.source, Source::Rules);

    // A trains; B and C, untrained, take its model from the mesh.
    let trained = a.train_model(&samples(400), Some(10)).await.unwrap();
    assert!(trained["report"]["test"]["accuracy"].as_f64().unwrap() > 0.9);
    for node in [b, c] {
        wait::until("the shared model", LEARN_TIMEOUT, || async {
            let s = node.model_status().await?;
            Ok((s["trained"] == true).then_some(()))
        })
        .await
        .unwrap();
    }
    let answer = top(c, "socket dial peer packet").await;
    assert_eq!((answer.source, first(&answer).0), (Source::Model, "net"));
    // The status names the features the merged model reads.
    let status = c.model_status().await.unwrap();
    assert_eq!(
        (&status["feature_dim"], &status["feature_norm"]),
        (&serde_json::json!(4096), &serde_json::json!(2.0)),
        "{status}"
    );

    // Outcomes on A change A's answers at once: a new pattern that worked
    // is recommended for its context, and a failure lowers a pattern. Each
    // new pattern is learned for a context the model gives to one topic
    // (net, ui), so it ranks first where that topic did.
    let known = samples(4);
    let (retry, cache) = (&known[0].context.text, &known[2].context.text);
    a.report_outcome(&Context::from_text(retry), "retry", true)
        .await
        .unwrap();
    let answer = top(a, retry).await;
    assert_eq!((answer.source, first(&answer).0), (Source::Model, "retry"));
    // A failure, on a db sample (a topic neither new pattern came from).
    let probe = &known[1].context.text;
    let probed = top(a, probe).await;
    let before = first(&probed);
    assert_eq!(before.0, "db");
    let reply = a
        .report_outcome(&Context::from_text(probe), before.0, false)
        .await
        .unwrap();
    assert_eq!(reply["model_updated"], true);
    let after = top(a, probe).await;
    let lowered = after
        .recommendations
        .iter()
        .find(|r| r.pattern == before.0)
        .map_or(0.0, |r| r.score);
    assert!(
        !after.cached && lowered < before.1,
        "{before:?} -> {lowered}"
    );

    // B learns another pattern.
    b.report_outcome(&Context::from_text(cache), "cache", true)
        .await
        .unwrap();
    assert_eq!(first(&top(b, cache).await).0, "cache");

    // C saw neither outcome; after merging A's and B's models it
    // recommends both patterns, from its own model.
    wait::until("C to learn from A and B", LEARN_TIMEOUT, || async {
        let (r, k) = (top(c, retry).await, top(c, cache).await);
        Ok((r.source == Source::Model
            && first(&r).0 == "retry"
            && k.source == Source::Model
            && first(&k).0 == "cache")
            .then_some(()))
    })
    .await
    .unwrap();
    let status = c.model_status().await.unwrap();
    assert_eq!(status["stored_outcomes"], 0);
    // A may already hold B's pattern when C fetches: learning is
    // transitive, so one merged peer model can carry both.
    assert!(
        status["peer_models_merged"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let classes = status["classes"].as_array().unwrap();
    assert!(classes.iter().any(|l| l == "retry") && classes.iter().any(|l| l == "cache"));

    // C's merged model survives a restart: C is stopped, A and B are gone
    // (nothing to merge from again), and C comes back knowing both.
    let c_node = t.net.nodes.remove(2);
    let c_spec = c_node.spec.clone();
    c_node.stop(Duration::from_secs(10)).await.unwrap();
    t.net.kill(1);
    t.net.kill(0);
    t.net.restart(0, c_spec).await.unwrap();
    let c = &t.net.nodes[0].client;
    let status = c.model_status().await.unwrap();
    let classes = status["classes"].as_array().unwrap();
    assert!(
        classes.iter().any(|l| l == "retry") && classes.iter().any(|l| l == "cache"),
        "{status}"
    );
    let answer = top(c, retry).await;
    assert_eq!((answer.source, first(&answer).0), (Source::Model, "retry"));
}
