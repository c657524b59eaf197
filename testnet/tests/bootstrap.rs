//! Bootstrapping over real processes: five nodes finalize transactions
//! while node 4 is stopped; node 4 restarts, then a brand-new node joins,
//! and both report the same winner as everyone else for every key
//! asked about, having accepted that history on a quorum's word instead of
//! polling it (the counters show which). CI finalizes 20,000 transactions;
//! `AGENTMESH_BOOTSTRAP_TXS=200000` runs the full check.

mod common;

use agentmesh_node::client::ApiClient;
use agentmesh_node::types::{Claim, ConsensusStatus, TransactionBody};
use common::{start, MESH_TIMEOUT};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use std::time::{Duration, Instant};

const DOWN: usize = 4;
/// Transactions per proposal.
const BATCH: usize = 50;
/// Keys whose winners are compared one by one (all of them when fewer).
const SAMPLE: usize = 400;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn claim(i: usize) -> TransactionBody {
    let payload = serde_json::to_string(&Claim {
        claimant: format!("agent-{i}"),
        node: "bootstrap-test".into(),
    })
    .unwrap();
    TransactionBody {
        key: format!("task:boot-{i}"),
        payload,
    }
}

/// Proposes `total` claims on distinct tasks through `clients`, two
/// requests in flight per client, retrying while they are busy (503).
async fn propose_all(clients: &[ApiClient], total: usize) {
    let batches: Vec<Vec<usize>> = (0..total)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[usize]>::to_vec)
        .collect();
    let lanes = clients.len() * 2;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let client = clients[lane % clients.len()].clone();
        let mine: Vec<Vec<usize>> = batches.iter().skip(lane).step_by(lanes).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for batch in mine {
                let txs: Vec<TransactionBody> = batch.iter().map(|i| claim(*i)).collect();
                let deadline = Instant::now() + Duration::from_secs(120);
                while let Err(e) = client.propose(txs.clone()).await {
                    assert!(
                        Instant::now() < deadline,
                        "proposals refused for 2 min: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn status_until(
    client: &ApiClient,
    what: &str,
    timeout: Duration,
    done: impl Fn(&ConsensusStatus) -> bool,
) -> ConsensusStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(status) = client.consensus().await {
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {timeout:?}; status now: bootstrap {:?}, accepted on disk {}",
                status.bootstrap,
                status.accepted_on_disk
            );
        }
        assert!(Instant::now() < deadline, "{what}: no status");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The winning vertex of each sampled task, as `client` reports it.
async fn winners(client: &ApiClient, tasks: &[usize]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(tasks.len());
    for i in tasks {
        let info = client.task(&format!("boot-{i}")).await.unwrap();
        out.push(info.winner.map(|w| w.vertex));
    }
    out
}

/// Node `i` caught up: bootstrapping done, the same accepted history as
/// node 0, the same winners; returns its status.
async fn caught_up(
    t: &common::TestNet,
    i: usize,
    expected: &ConsensusStatus,
    sample: &[usize],
) -> ConsensusStatus {
    let client = &t.net.nodes[i].client;
    let started = Instant::now();
    let status = status_until(client, "bootstrapped", Duration::from_secs(600), |s| {
        s.bootstrap.state == "done" && s.accepted_on_disk >= expected.accepted_on_disk
    })
    .await;
    eprintln!(
        "node {i} caught up in {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        status.bootstrap
    );
    let reference = winners(&t.net.nodes[0].client, sample).await;
    assert!(
        reference.iter().all(Option::is_some),
        "every sampled task has a winner"
    );
    assert_eq!(
        winners(client, sample).await,
        reference,
        "node {i}'s winners"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_and_a_new_node_catch_up_without_polling() {
    let total = env_or("AGENTMESH_BOOTSTRAP_TXS", 20_000);
    let mut t = start(5, &[]).await;
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let spec = t.net.kill(DOWN);
    let up: Vec<ApiClient> = (0..DOWN).map(|i| t.net.nodes[i].client.clone()).collect();

    let started = Instant::now();
    propose_all(&up, total).await;
    for client in &up {
        status_until(
            client,
            "everything finalized",
            Duration::from_secs(900),
            |s| s.accepted_transactions >= total as u64 && s.processing == 0,
        )
        .await;
    }
    let finished = up[0].consensus().await.unwrap();
    eprintln!(
        "{total} transactions finalized in {:.1} s ({} vertices on disk)",
        started.elapsed().as_secs_f64(),
        finished.accepted_on_disk
    );
    let mut rng = SmallRng::seed_from_u64(7);
    let all: Vec<usize> = (0..total).collect();
    let sample: Vec<usize> = all.choose_multiple(&mut rng, SAMPLE).copied().collect();

    t.net.restart(DOWN, spec).await.unwrap();
    let back = caught_up(&t, DOWN, &finished, &sample).await;
    assert!(
        back.bootstrap.accepted_transactions >= total as u64,
        "the history came by bootstrapping: {:?}",
        back.bootstrap
    );
    assert!(
        back.accepted_transactions < total as u64 / 10,
        "and was not polled again: {} transactions accepted by polls",
        back.accepted_transactions
    );

    t.net.add_node(&[]).await.unwrap();
    let fresh = caught_up(&t, 5, &finished, &sample).await;
    assert!(
        fresh.bootstrap.accepted_transactions >= total as u64
            && fresh.accepted_transactions < total as u64 / 10,
        "a new node bootstraps too: {:?}, {} accepted by polls",
        fresh.bootstrap,
        fresh.accepted_transactions
    );
    eprintln!(
        "bootstrap figures: restarted node {:.1} s, {} vertices, {} bytes; new node {:.1} s, {} vertices, {} bytes",
        back.bootstrap.seconds,
        back.bootstrap.fetched_vertices,
        back.bootstrap.fetched_bytes,
        fresh.bootstrap.seconds,
        fresh.bootstrap.fetched_vertices,
        fresh.bootstrap.fetched_bytes
    );
}
