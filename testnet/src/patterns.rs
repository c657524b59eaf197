//! Driving shared patterns across a testnet: writing many patterns through
//! the API, and waiting until nodes hold the same pattern set.

use crate::{wait, Testnet};
use agentmesh_node::client::ApiClient;
use agentmesh_node::types::{PatternInput, SyncStatus};
use anyhow::Result;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::time::Duration;

/// A plausible pattern with id `id`.
pub fn sample(id: &str, kind: &str, tags: &[&str]) -> PatternInput {
    PatternInput {
        id: Some(id.to_string()),
        kind: kind.to_string(),
        name: format!("pattern {id}"),
        description: format!("retry {id} with exponential backoff and jitter"),
        framework: Some("tokio".into()),
        language: Some("rust".into()),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        body: serde_json::json!({"template": format!("retry({id})"), "max_attempts": 5}),
        metadata: Some(serde_json::json!({"source": "testnet"})),
        author_agent: "testnet".into(),
    }
}

/// Writes `inputs` through `client`, `concurrency` requests at a time.
pub async fn put_all(
    client: &ApiClient,
    inputs: Vec<PatternInput>,
    concurrency: usize,
) -> Result<()> {
    stream::iter(inputs)
        .map(|input| async move { client.put_pattern(&input).await.map(|_| ()) })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Waits until each of `nodes` holds `count` patterns with one hash-tree
/// root (the same states); returns their statuses.
pub async fn wait_converged(
    net: &Testnet,
    nodes: &[usize],
    count: u64,
    timeout: Duration,
) -> Result<Vec<SyncStatus>> {
    wait::until(
        &format!("nodes {nodes:?} to hold the same {count} patterns"),
        timeout,
        || async {
            let mut statuses = Vec::new();
            for &i in nodes {
                statuses.push(net.nodes[i].client.sync_status().await?);
            }
            let same = statuses
                .iter()
                .all(|s| s.patterns == count && s.root == statuses[0].root);
            Ok(same.then_some(statuses))
        },
    )
    .await
}

pub struct SpreadReport {
    pub id: String,
    pub nodes: usize,
    pub replicated: Duration,
    pub outcome_counted: Duration,
}

/// The demo: node 0 writes a pattern, the last node reports a successful
/// use of it; waits until every node holds the pattern, then the count.
pub async fn spread(net: &Testnet, timeout: Duration) -> Result<SpreadReport> {
    let id = "retry-with-backoff";
    let started = std::time::Instant::now();
    net.nodes[0]
        .client
        .put_pattern(&sample(id, "snippet", &["rust", "retry"]))
        .await?;
    let all: Vec<usize> = (0..net.nodes.len()).collect();
    wait_converged(net, &all, 1, timeout).await?;
    let replicated = started.elapsed();
    let last = &net.nodes[net.nodes.len() - 1].client;
    last.pattern_outcome(id, true).await?;
    let counted_at = std::time::Instant::now();
    wait::until("the outcome to be counted everywhere", timeout, || async {
        for node in &net.nodes {
            if node.client.pattern(id).await?.stats.successes < 1 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    Ok(SpreadReport {
        id: id.to_string(),
        nodes: net.nodes.len(),
        replicated,
        outcome_counted: counted_at.elapsed(),
    })
}

/// Asks the node farthest from node 0 for a recommendation until the
/// replicated demo pattern is what it recommends; prints who answered.
pub async fn recommend(net: &Testnet, timeout: Duration) -> Result<()> {
    let last = &net.nodes[net.nodes.len() - 1].client;
    let context = agentmesh_neural::Context {
        text: "the upstream call keeps failing; retry it with backoff".into(),
        language: Some("rust".into()),
        ..Default::default()
    };
    let answer = wait::until(
        "a recommendation of the shared pattern",
        timeout,
        || async {
            let answer = last.recommend(&context, 3).await?;
            let hit = answer
                .recommendations
                .first()
                .is_some_and(|r| r.pattern == "retry-with-backoff");
            Ok(hit.then_some(answer))
        },
    )
    .await?;
    let best = &answer.recommendations[0];
    println!(
        "recommendation: node {} suggests '{}' (score {:.3}, answered by the {})",
        net.nodes.len() - 1,
        best.pattern,
        best.score,
        match answer.source {
            agentmesh_neural::recommender::Source::Model => "model",
            agentmesh_neural::recommender::Source::Rules =>
                "rule-based recommender: no model trained yet",
        }
    );
    Ok(())
}

pub fn print_spread(r: &SpreadReport) {
    println!(
        "patterns: '{}' written on node 0 held by all {} nodes after {:.0} ms; a use reported on node {} counted everywhere after {:.0} ms",
        r.id,
        r.nodes,
        r.replicated.as_secs_f64() * 1e3,
        r.nodes - 1,
        r.outcome_counted.as_secs_f64() * 1e3
    );
}
