//! A node whose disk fails under it: reads of its consensus history fail,
//! or a flush of new decisions does (injected in debug builds through
//! `AGENTMESH_INJECT_HISTORY_FAULTS`). It stops voting, says why (the API
//! answers 503 naming the failure, `/v1/consensus` shows `halted`), never
//! answers "undecided" for a task it decided, and after a restart on a
//! sound disk it reports the same winner as before.

mod common;

use agentmesh_node::client::{ApiClient, ClientError};
use common::{start, MESH_TIMEOUT};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VICTIM: usize = 4;
const VARIABLE: &str = "AGENTMESH_INJECT_HISTORY_FAULTS";

/// The winning vertex of `task` once every one of `clients` reports it.
async fn decided(clients: &[ApiClient], task: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut winners = Vec::new();
        for c in clients {
            if let Ok(info) = c.task(task).await {
                winners.extend(info.winner.map(|w| w.vertex));
            }
        }
        if winners.len() == clients.len() {
            assert!(winners.iter().all(|w| *w == winners[0]), "{winners:?}");
            return winners.remove(0);
        }
        assert!(Instant::now() < deadline, "{task} not decided everywhere");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the victim says it halted, and returns the reason.
async fn halted(victim: &ApiClient) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(reason) = victim.consensus().await.unwrap().halted {
            return reason;
        }
        assert!(Instant::now() < deadline, "the victim never halted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A question about a decided task gets 503 and the reason, never an
/// answer (an "unclaimed" would be a lie).
async fn refuses(victim: &ApiClient, task: &str, why: &str) {
    match victim.task(task).await {
        Err(ClientError::Rejected { status, message }) => {
            assert_eq!(status, 503, "{message}");
            assert!(message.contains(why), "the reason is named: {message}");
        }
        other => panic!("a halted node answered about {task}: {other:?}"),
    }
}

/// Claims `task` through node 0 and waits until the healthy nodes decide it.
async fn claim_on_healthy(t: &common::TestNet, task: &str) -> String {
    t.net.nodes[0].client.claim(task, "agent-a").await.unwrap();
    let healthy: Vec<ApiClient> = (0..VICTIM).map(|i| t.net.nodes[i].client.clone()).collect();
    decided(&healthy, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fails_stops_voting_says_why_and_never_answers_undecided() {
    let mut t = start(5, &[]).await;
    let faults: PathBuf = t.dir.path().join("victim-faults");
    std::fs::write(&faults, "").unwrap();
    let mut spec = t.net.kill(VICTIM);
    spec.env
        .push((VARIABLE.into(), faults.to_string_lossy().into_owned()));
    t.net.restart(VICTIM, spec.clone()).await.unwrap();
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let all: Vec<ApiClient> = t.net.nodes.iter().map(|n| n.client.clone()).collect();
    t.net.nodes[0]
        .client
        .claim("before", "agent-a")
        .await
        .unwrap();
    let before = decided(&all, "before").await;

    // Reads fail: the next read halts consensus on the victim.
    std::fs::write(&faults, "read").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let victim = t.net.nodes[VICTIM].client.clone();
    let _ = victim.task("before").await;
    let reason = halted(&victim).await;
    assert!(reason.contains("injected Read fault"), "{reason}");
    refuses(&victim, "before", "injected Read fault").await;
    // It stops voting: the others decide a new claim, the victim answers
    // none of their queries.
    let answered = victim.consensus().await.unwrap().queries_answered;
    claim_on_healthy(&t, "while-halted").await;
    let status = victim.consensus().await.unwrap();
    assert_eq!(
        status.queries_answered, answered,
        "a halted node votes no more"
    );

    // A sound disk again: after a restart, the same winner as before.
    std::fs::write(&faults, "").unwrap();
    let spec = t.net.kill(VICTIM);
    t.net.restart(VICTIM, spec).await.unwrap();
    let victim = t.net.nodes[VICTIM].client.clone();
    assert_eq!(victim.consensus().await.unwrap().halted, None);
    assert_eq!(
        victim
            .task("before")
            .await
            .unwrap()
            .winner
            .map(|w| w.vertex),
        Some(before)
    );

    // A flush fails: the decisions waiting for it are never shown, and the
    // node halts saying so.
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    std::fs::write(&faults, "flush").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = claim_on_healthy(&t, "flush-fails").await;
    let reason = halted(&victim).await;
    assert!(
        reason.contains("flushing decisions to disk failed"),
        "{reason}"
    );
    refuses(&victim, "flush-fails", "flushing decisions").await;
    let status = victim.consensus().await.unwrap();
    assert!(status.flush_failures >= 1, "{status:?}");

    // After a restart, whatever it holds of that claim is what the mesh
    // decided, or nothing (the flush never happened): never a rival.
    std::fs::write(&faults, "").unwrap();
    let spec = t.net.kill(VICTIM);
    t.net.restart(VICTIM, spec).await.unwrap();
    let info = t.net.nodes[VICTIM]
        .client
        .task("flush-fails")
        .await
        .unwrap();
    assert!(
        info.winner.as_ref().is_none_or(|w| w.vertex == after),
        "{info:?}"
    );
}
