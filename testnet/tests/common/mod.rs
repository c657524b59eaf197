//! Shared set-up for the integration tests: a testnet of real node
//! processes in a temporary directory, on ports chosen by the OS.
#![allow(dead_code)]

use agentmesh_testnet::{binary, Testnet, TestnetOptions};
use std::time::Duration;

pub const MESH_TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestNet {
    pub net: Testnet,
    // Dropped after `net`, so the nodes are killed before their files go.
    pub dir: tempfile::TempDir,
}

pub fn options(nodes: usize, dir: &tempfile::TempDir) -> TestnetOptions {
    let bin = binary::build_for_tests().expect("building the agentmesh binary");
    TestnetOptions::new(nodes, dir.path(), &bin)
}

pub async fn start(nodes: usize, extra_args: &[&str]) -> TestNet {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(nodes, &dir);
    opts.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    let net = Testnet::start(opts).await.expect("starting the testnet");
    TestNet { net, dir }
}

/// Like [`start`], with every node given the same explicit validator set:
/// the `nodes` nodes themselves, weight 1 each. Peers that connect later
/// (a rogue) never vote.
pub async fn start_with_validators(nodes: usize, extra_args: &[&str]) -> TestNet {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(nodes, &dir);
    let bin = binary::build_for_tests().expect("building the agentmesh binary");
    let validators: Vec<String> = (0..nodes)
        .map(|i| {
            agentmesh_testnet::authority::peer_id_of_dir(&bin, &opts.spec(i).data_dir).unwrap()
        })
        .collect();
    opts.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    opts.extra_args.push("--validators".into());
    opts.extra_args.push(validators.join(","));
    let net = Testnet::start(opts).await.expect("starting the testnet");
    TestNet { net, dir }
}

/// A pattern write with id `id` and one tag.
pub fn pattern_input(id: &str, tag: &str) -> agentmesh_node::types::PatternInput {
    agentmesh_node::types::PatternInput {
        id: Some(id.to_string()),
        kind: "fix".into(),
        name: format!("pattern {id}"),
        description: String::new(),
        framework: None,
        language: None,
        tags: vec![tag.into()],
        body: serde_json::json!({"steps": [id]}),
        metadata: None,
        author_agent: "writer".into(),
    }
}

/// Top-1 accuracy of a node's recommendations on `test`.
pub async fn accuracy(
    client: &agentmesh_node::client::ApiClient,
    test: &[agentmesh_neural::Sample],
) -> f64 {
    let mut right = 0;
    for s in test {
        let answer = client.recommend(&s.context, 1).await.unwrap();
        if answer
            .recommendations
            .first()
            .is_some_and(|r| r.pattern == s.label)
        {
            right += 1;
        }
    }
    right as f64 / test.len() as f64
}
