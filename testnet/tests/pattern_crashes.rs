//! Pattern writes killed mid-flight: a node takes writes from concurrent
//! agents and is killed with SIGKILL at a seeded moment. After it restarts,
//! every write it acknowledged is there (by id and in its tag's listing),
//! and its digests agree with its states: a fresh node reconciling with it
//! reaches the same hash-tree root. `AGENTMESH_PATTERN_WRITES` (5,000)
//! and `AGENTMESH_CRASH_SEED` change the run.

mod common;

use agentmesh_node::client::ApiClient;
use common::{pattern_input, start, MESH_TIMEOUT};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const VICTIM: usize = 0;
const WRITERS: u64 = 8;
const TAG: &str = "crash";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes patterns `next..total` (shared counter) until the node stops
/// answering; records the ids it acknowledged.
fn writer(
    client: ApiClient,
    next: Arc<AtomicU64>,
    total: u64,
    acknowledged: Arc<Mutex<BTreeSet<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= total {
                return;
            }
            let id = format!("p-{n:05}");
            match client.put_pattern(&pattern_input(&id, TAG)).await {
                Ok(view) => {
                    assert_eq!(view.id, id);
                    acknowledged.lock().unwrap().insert(id);
                }
                Err(e) => {
                    // The kill; anything else before it fails the test.
                    eprintln!("writer stops on {id}: {e:?}");
                    return;
                }
            }
        }
    })
}

/// Every id in `tag`'s listing, page by page.
async fn listed(client: &ApiClient, tag: Option<&str>) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .patterns(tag, None, after.as_deref(), 500)
            .await
            .unwrap();
        ids.extend(page.patterns.into_iter().map(|p| p.id));
        match page.next {
            Some(next) => after = Some(next),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_pattern_write_survives_a_kill() {
    let total = env_or("AGENTMESH_PATTERN_WRITES", 5_000);
    let seed = env_or("AGENTMESH_CRASH_SEED", 0x5eed_c0de);
    // Killed after a seeded share (20 to 80 %) of the writes was
    // acknowledged, with the writers still going.
    let kill_after = SmallRng::seed_from_u64(seed).random_range(total / 5..total * 4 / 5);
    let mut t = start(1, &[]).await;
    let victim = t.net.nodes[VICTIM].client.clone();
    let next = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| writer(victim.clone(), next.clone(), total, acknowledged.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while (acknowledged.lock().unwrap().len() as u64) < kill_after {
        assert!(Instant::now() < deadline, "the writes did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spec = t.net.kill(VICTIM);
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    eprintln!(
        "killed after {} acknowledged writes ({} sent)",
        acknowledged.len(),
        next.load(Ordering::Relaxed).min(total)
    );
    t.net.restart(VICTIM, spec).await.unwrap();
    let victim = t.net.nodes[VICTIM].client.clone();

    for id in &acknowledged {
        let view = victim
            .pattern(id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {id} is gone: {e}"));
        assert_eq!(view.tags, vec![TAG.to_string()], "{id}");
    }
    // The tag index and the full listing agree with the states: everything
    // acknowledged, and nothing listed that is not stored.
    let by_tag = listed(&victim, Some(TAG)).await;
    let all = listed(&victim, None).await;
    assert!(
        acknowledged.is_subset(&by_tag),
        "missing from the tag index"
    );
    assert_eq!(by_tag, all, "the tag index disagrees with the states");
    let status = victim.sync_status().await.unwrap();
    assert_eq!(
        status.patterns,
        all.len() as u64,
        "the pattern count drifted"
    );
    assert_eq!(status.corrupt_records_skipped, 0);

    // A fresh node fetches everything by digest: it ends on the victim's
    // root only if each stored digest is the digest of its state.
    let fresh = t.net.add_node(&[]).await.unwrap().client.clone();
    let deadline = Instant::now() + MESH_TIMEOUT * 2;
    loop {
        let (a, b) = (
            victim.sync_status().await.unwrap(),
            fresh.sync_status().await.unwrap(),
        );
        if a.root == b.root && a.patterns == b.patterns {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fresh node never matched the victim: {} vs {} patterns",
            b.patterns,
            a.patterns
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
