//! Crashes under load: a node killed with SIGKILL at unforeseen moments
//! while the mesh decides contested claims comes back never contradicting
//! a decision it reported before the kill (its `consensus:finalized`
//! events and its task answers), and with every such decision still on
//! disk. CI runs 20 kills; `AGENTMESH_CRASH_KILLS=100` (and
//! `AGENTMESH_CRASH_SEED`) make a campaign of it.

mod common;

use agentmesh_node::client::{ApiClient, SubscriptionItem};
use common::{start, MESH_TIMEOUT};
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const VICTIM: usize = 2;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Claims on fresh tasks, two rivals each, through the nodes that stay up,
/// until `stop` is set: the load the victim is killed under.
fn keep_claiming(clients: Vec<ApiClient>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let task = format!("load-{n}");
            let agents: Vec<String> = (0..clients.len()).map(|i| format!("agent-{i}")).collect();
            let claims = clients
                .iter()
                .zip(&agents)
                .map(|(c, agent)| c.claim(&task, agent));
            // Busy answers (503) are part of the load, not a failure.
            let _ = futures::future::join_all(claims).await;
            n += 1;
        }
        n
    })
}

/// What the victim announced on `consensus:finalized`: decision per
/// vertex, and the accepted vertex per task key.
#[derive(Default)]
struct Reported {
    decisions: HashMap<String, String>,
    winners: HashMap<String, String>,
}

/// Records the victim's announcements until its stream ends (the kill),
/// counting them in `seen` as they arrive. Nothing else talks to the
/// victim meanwhile: an API call would flush its decisions first.
async fn watch(
    mut events: impl futures::Stream<Item = Result<SubscriptionItem, agentmesh_node::client::ClientError>>
        + Unpin,
    reported: Arc<Mutex<Reported>>,
    seen: tokio::sync::watch::Sender<usize>,
) {
    while let Some(Ok(item)) = events.next().await {
        let SubscriptionItem::Message(m) = item else {
            continue;
        };
        let (Some(vertex), Some(decision)) =
            (m.body["vertex"].as_str(), m.body["decision"].as_str())
        else {
            continue;
        };
        let mut r = reported.lock().unwrap();
        let earlier = r.decisions.insert(vertex.to_string(), decision.to_string());
        assert!(
            earlier.as_deref().is_none_or(|e| e == decision),
            "the victim announced {vertex} {earlier:?} and then {decision}"
        );
        if decision == "accepted" {
            for tx in m.body["transactions"].as_array().into_iter().flatten() {
                if let Some(key) = tx["key"].as_str().and_then(|k| k.strip_prefix("task:")) {
                    r.winners.insert(key.to_string(), vertex.to_string());
                }
            }
        }
        seen.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_never_contradicts_what_it_reported() {
    let kills = env_or("AGENTMESH_CRASH_KILLS", 20);
    let seed = env_or("AGENTMESH_CRASH_SEED", 0x5eed_c0de);
    eprintln!("crash campaign: {kills} kills, seed {seed}");
    // Seeded: the kill moments of a run can be replayed.
    let mut moments = SmallRng::seed_from_u64(seed);
    let mut t = start(3, &[]).await;
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let survivors = vec![t.net.nodes[0].client.clone(), t.net.nodes[1].client.clone()];
    let load = keep_claiming(survivors, stop.clone());

    let (mut decisions, mut winners) = (0, 0);
    let reported = Arc::new(Mutex::new(Reported::default()));
    for round in 0..kills {
        let victim = t.net.nodes[VICTIM].client.clone();
        // The victim claims too, so some of what it reports is its own.
        let _ = victim.claim(&format!("victim-{round}"), "victim").await;
        let events = victim.subscribe("consensus:finalized").await.unwrap();
        let (seen_tx, mut seen) = tokio::sync::watch::channel(0usize);
        let watcher = tokio::spawn(watch(events, reported.clone(), seen_tx));
        // Killed after a random number of announcements (0 to 7), then at
        // a random moment up to 50 ms later: between or during flushes,
        // votes and writes.
        let enough = moments.random_range(0..8);
        let _ =
            tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|n| *n >= enough)).await;
        tokio::time::sleep(Duration::from_millis(moments.random_range(0..50))).await;
        let spec = t.net.kill(VICTIM);
        watcher.await.unwrap();
        t.net.restart(VICTIM, spec).await.unwrap();

        // From disk (peers cannot undo a decision): everything it announced
        // is still decided the same way, and every task it announced a
        // winner for has that winner.
        let victim = &t.net.nodes[VICTIM].client;
        let r = std::mem::take(&mut *reported.lock().unwrap());
        for (vertex, decision) in &r.decisions {
            let info = victim.vertex(vertex).await.unwrap_or_else(|e| {
                panic!("round {round}: the victim announced {vertex} {decision}, now: {e}")
            });
            assert_eq!(
                (info.status.as_str(), info.is_final),
                (decision.as_str(), true),
                "round {round}: {vertex}"
            );
        }
        for (task, vertex) in &r.winners {
            let winner = victim.task(task).await.unwrap().winner;
            assert_eq!(
                winner.map(|w| w.vertex).as_ref(),
                Some(vertex),
                "round {round}: winner of {task}"
            );
        }
        decisions += r.decisions.len();
        winners += r.winners.len();
        t.net.wait_connected(VICTIM, 2, MESH_TIMEOUT).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let claimed = load.await.unwrap();
    assert!(
        decisions > 0,
        "the victim reported no decision over {kills} rounds ({claimed} tasks claimed)"
    );
    eprintln!(
        "{kills} kills: {} decisions and {} winners the victim reported, all kept; {claimed} tasks claimed",
        decisions, winners
    );
}
