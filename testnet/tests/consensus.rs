//! Consensus over real node processes: contested task claims settle on one
//! winner everywhere, decisions survive restarts, and a peer gossiping
//! forged vertices is graylisted while the others carry on.

mod common;

use agentmesh_node::client::SubscriptionItem;
use agentmesh_node::types::{ClaimInfo, TransactionBody};
use agentmesh_protocol::{codec, NodeKey, Transaction, Vertex};
use agentmesh_testnet::rogue::RoguePeer;
use agentmesh_testnet::{claims, wait, Testnet};
use common::{start, start_with_validators, MESH_TIMEOUT};
use futures::StreamExt;
use std::time::Duration;

const DECIDE_TIMEOUT: Duration = Duration::from_secs(60);

async fn winners(net: &Testnet, task: &str) -> anyhow::Result<Vec<ClaimInfo>> {
    claims::final_winners(net, task, DECIDE_TIMEOUT).await
}

async fn claim_at_once(net: &Testnet, task: &str, claimants: &[(usize, String)]) {
    claims::claim_at_once(net, task, claimants)
        .await
        .expect("claims are accepted for processing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: One scenario on one seven-node mesh, start to end: splitting it would start
// the mesh again per step.
async fn concurrent_claims_on_seven_nodes_have_exactly_one_winner_everywhere() {
    let t = start(7, &[]).await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let mut finalized = net.nodes[3]
        .client
        .subscribe("consensus:finalized")
        .await
        .unwrap();
    for task in ["build-42", "scan-7", "report-1"] {
        let claimants: Vec<(usize, String)> =
            (0..5).map(|i| (i, format!("agent-{i}-{task}"))).collect();
        claim_at_once(net, task, &claimants).await;
        let all = winners(net, task).await.unwrap();
        assert!(all.iter().all(|w| *w == all[0]), "winners differ: {all:?}");
        assert!(
            claimants.iter().any(|(_, a)| *a == all[0].claimant),
            "the winner {:?} is one of the claimants",
            all[0]
        );
        // Node 3 announced the decision on consensus:finalized.
        let announced = tokio::time::timeout(DECIDE_TIMEOUT, async {
            while let Some(item) = finalized.next().await {
                if let Ok(SubscriptionItem::Message(m)) = item {
                    if m.body["vertex"] == all[0].vertex.as_str() {
                        return Some(m.body);
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("the winning vertex announced on consensus:finalized");
        assert_eq!(announced["decision"], "accepted");
        assert_eq!(announced["transactions"][0]["key"], format!("task:{task}"));
        // A late claim is refused with the winner's name.
        let late = net.nodes[6]
            .client
            .claim(task, "latecomer")
            .await
            .unwrap_err();
        assert!(late.to_string().contains(&all[0].claimant), "{late}");
    }
    // An uncontested transaction is accepted everywhere.
    let receipt = net.nodes[6]
        .client
        .propose(vec![TransactionBody {
            key: "note:1".into(),
            payload: "{\"hello\":1}".into(),
        }])
        .await
        .unwrap();
    for node in &net.nodes {
        let status = wait::until("the proposal to be final", DECIDE_TIMEOUT, || async {
            let v = node.client.vertex(&receipt.vertex).await;
            Ok(v.ok().filter(|v| v.is_final))
        })
        .await
        .unwrap();
        assert_eq!(status.status, "accepted");
        assert_eq!(status.transactions[0].payload, "{\"hello\":1}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_what_it_finalized() {
    let mut t = start(3, &[]).await;
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    claim_at_once(&t.net, "deploy", &[(0, "a".into()), (1, "b".into())]).await;
    let before = winners(&t.net, "deploy").await.unwrap();
    let vertex = before[2].vertex.clone();
    let spec = t.net.kill(2);
    t.net.restart(2, spec).await.unwrap();
    let node = &t.net.nodes[2];
    // Straight from disk, before it has talked to anyone.
    let after = node.client.task("deploy").await.unwrap();
    assert_eq!(after.winner.as_ref(), Some(&before[2]));
    let v = node.client.vertex(&vertex).await.unwrap();
    assert_eq!((v.status.as_str(), v.is_final), ("accepted", true));
    // And it still takes part: a new claim settles on all three.
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    claim_at_once(&t.net, "deploy-2", &[(2, "c".into()), (0, "d".into())]).await;
    let all = winners(&t.net, "deploy-2").await.unwrap();
    assert!(all.iter().all(|w| *w == all[0]), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gossiping_forged_vertices_is_graylisted_and_the_rest_still_decide() {
    // An explicit validator set: in development mode (peers seen) the rogue
    // would become a validator whose silence, a quarter of the weight,
    // keeps polls short of alpha-confidence.
    let t = start_with_validators(3, &[]).await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let mut rogue = RoguePeer::new(&net.options.network).unwrap();
    let target = net.nodes[0].tcp_addr().unwrap();
    rogue.connect_consensus(&target).await.unwrap();
    // A well-formed vertex whose signature does not match its content.
    let key = NodeKey::generate().unwrap();
    let tx = Transaction {
        key: "task:forged".into(),
        payload: b"{}".to_vec(),
    };
    let mut wire = Vertex::sign(&key, vec![], 1, 0, vec![tx])
        .unwrap()
        .into_wire();
    wire.signature[0] ^= 0xff;
    rogue
        .publish_vertex_bytes(codec::encode(&wire).unwrap())
        .unwrap();
    let rogue_node = key_of(&rogue);
    let client = net.nodes[0].client.clone();
    let pump = tokio::spawn(async move {
        rogue.pump(Duration::from_secs(30)).await;
    });
    wait::until("node 0 to graylist the rogue", DECIDE_TIMEOUT, || async {
        let status = client.consensus().await?;
        Ok(status
            .graylisted
            .iter()
            .any(|g| g.node_id == rogue_node)
            .then_some(()))
    })
    .await
    .unwrap();
    claim_at_once(net, "after-forgery", &[(0, "x".into()), (1, "y".into())]).await;
    let all = winners(net, "after-forgery").await.unwrap();
    assert!(all.iter().all(|w| *w == all[0]));
    let status = client.consensus().await.unwrap();
    assert_eq!(status.validators.count, 3);
    assert!(status.validators.sybil_resistant);
    assert!(
        status
            .validators
            .members
            .iter()
            .all(|v| v.node_id != rogue_node),
        "the rogue is not a validator"
    );
    pump.abort();
}

fn key_of(rogue: &RoguePeer) -> String {
    rogue.key.node_id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_claims_a_task_and_waits_for_the_winner() {
    // A node with no peers at all is a one-node mesh: it decides alone.
    let t = start(1, &[]).await;
    let bin = agentmesh_testnet::binary::build_for_tests().unwrap();
    let api = t.net.nodes[0].info.api.to_string();
    let token = &t.net.nodes[0].info.api_token_file;
    let out = tokio::process::Command::new(&bin)
        .env("AGENTMESH_API_TOKEN_FILE", token)
        .args([
            "claim",
            "nightly",
            "--claimant",
            "cli-agent",
            "--wait",
            "60",
            "--api",
            &api,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["status"], "claimed");
    assert_eq!(info["winner"]["claimant"], "cli-agent");
    let out = tokio::process::Command::new(&bin)
        .env("AGENTMESH_API_TOKEN_FILE", token)
        .args(["claim", "nightly", "--claimant", "other", "--api", &api])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already claimed by cli-agent"), "{stderr}");
    let out = tokio::process::Command::new(&bin)
        .env("AGENTMESH_API_TOKEN_FILE", token)
        .args(["propose", "no-equals-sign", "--api", &api])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=PAYLOAD"));
}
