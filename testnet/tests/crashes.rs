//! Crashes under load: a node killed with SIGKILL at unforeseen moments
//! while the mesh decides contested claims comes back never contradicting
//! a decision it reported before the kill (its `consensus:finalized`
//! events and its task answers), and with every such decision still on
//! disk. CI runs a few kills; `AGENTMESH_CRASH_KILLS=25` (and
//! `AGENTMESH_CRASH_SEED`) make a campaign of it.

mod common;

use agentmesh_node::client::{ApiClient, SubscriptionItem};
use agentmesh_node::types::ClaimInfo;
use common::{start, MESH_TIMEOUT};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const VICTIM: usize = 2;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small seeded generator: the kill moments of a run can be replayed.
struct Moments(u64);

impl Moments {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
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

/// The decisions the victim announces, until it dies or `enough` arrived.
async fn reported_decisions(
    client: &ApiClient,
    enough: usize,
    into: &mut HashMap<String, String>,
) -> usize {
    let Ok(mut events) = client.subscribe("consensus:finalized").await else {
        return 0;
    };
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen < enough {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(Ok(SubscriptionItem::Message(m)))) = next else {
            break;
        };
        let (Some(vertex), Some(decision)) =
            (m.body["vertex"].as_str(), m.body["decision"].as_str())
        else {
            continue;
        };
        let earlier = into.insert(vertex.to_string(), decision.to_string());
        assert!(
            earlier.as_deref().is_none_or(|e| e == decision),
            "the victim announced {vertex} {earlier:?} and then {decision}"
        );
        seen += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_never_contradicts_what_it_reported() {
    let kills = env_or("AGENTMESH_CRASH_KILLS", 4);
    let seed = env_or("AGENTMESH_CRASH_SEED", 0x5eed_c0de) | 1;
    eprintln!("crash campaign: {kills} kills, seed {seed}");
    let mut moments = Moments(seed);
    let mut t = start(3, &[]).await;
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let survivors = vec![t.net.nodes[0].client.clone(), t.net.nodes[1].client.clone()];
    let load = keep_claiming(survivors, stop.clone());

    let mut decisions: HashMap<String, String> = HashMap::new();
    let mut winners: HashMap<String, ClaimInfo> = HashMap::new();
    for round in 0..kills {
        let victim = t.net.nodes[VICTIM].client.clone();
        // The victim claims too, so some of what it reports is its own.
        let task = format!("victim-{round}");
        let _ = victim.claim(&task, "victim").await;
        // Killed after a random number of announced decisions (0 to 7),
        // then at a random moment up to 50 ms later: between or during
        // flushes, votes and writes.
        let enough = moments.next(8) as usize;
        reported_decisions(&victim, enough, &mut decisions).await;
        for task in [
            format!("victim-{round}"),
            format!("load-{}", moments.next(5)),
        ] {
            if let Ok(info) = victim.task(&task).await {
                if let Some(w) = info.winner {
                    winners.insert(task, w);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(moments.next(50))).await;
        let spec = t.net.kill(VICTIM);
        t.net.restart(VICTIM, spec).await.unwrap();

        // Straight from disk, before it has talked to anyone: everything it
        // reported is still decided, the same way.
        let victim = &t.net.nodes[VICTIM].client;
        for (vertex, decision) in &decisions {
            let info = victim.vertex(vertex).await.unwrap_or_else(|e| {
                panic!("round {round}: the victim reported {vertex} {decision}, now: {e}")
            });
            assert_eq!(
                (info.status.as_str(), info.is_final),
                (decision.as_str(), true),
                "round {round}: {vertex}"
            );
        }
        for (task, winner) in &winners {
            let now = victim.task(task).await.unwrap().winner;
            assert_eq!(
                now.as_ref(),
                Some(winner),
                "round {round}: winner of {task}"
            );
        }
        t.net.wait_connected(VICTIM, 2, MESH_TIMEOUT).await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let claimed = load.await.unwrap();
    assert!(
        !decisions.is_empty(),
        "the victim reported no decision over {kills} rounds ({claimed} tasks claimed)"
    );
    eprintln!(
        "{kills} kills: {} decisions and {} winners the victim reported, all kept; {claimed} tasks claimed",
        decisions.len(),
        winners.len()
    );
}
