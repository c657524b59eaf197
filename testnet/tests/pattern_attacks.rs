//! Members that hold up anti-entropy rounds with endless made-up pages
//! (every hash differs, each page of entries names one pattern the victim
//! lacks and says more follow):
//! - one that never delivers what it lists has each round ended at the
//!   17th undelivered id and is charged until it is banned, at the default
//!   round deadline;
//! - one that delivers a fresh pattern for every id (data a member may
//!   write) has its rounds cut at the deadline and is not charged.
//!
//! Meanwhile the victim keeps listing and taking writes.

mod common;

use agentmesh_node::client::ApiClient;
use agentmesh_testnet::rogue::{RoguePeer, SyncLie};
use common::{pattern_input, start, TestNet};
use std::time::{Duration, Instant};

/// Pumps the rogue, writing and listing on the victim between pumps,
/// until `done` holds; returns the number of writes.
async fn attack(
    t: &TestNet,
    lie: SyncLie,
    round_secs: u64,
    done: impl Fn(&agentmesh_node::types::SyncStatus, &agentmesh_node::types::SecurityStatus) -> bool,
) -> u32 {
    let node: ApiClient = t.net.nodes[0].client.clone();
    let mut rogue = RoguePeer::new(&t.net.options.network).unwrap();
    rogue.sync_lies = Some(lie);
    let tcp = t.net.nodes[0].tcp_addr().unwrap();
    rogue.connect_consensus(&tcp).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut writes = 0u32;
    loop {
        rogue.pump(Duration::from_millis(500)).await;
        node.put_pattern(&pattern_input(&format!("w{writes}"), "attacked"))
            .await
            .unwrap();
        writes += 1;
        let listed = node
            .patterns(Some("attacked"), None, None, 1000)
            .await
            .unwrap();
        assert_eq!(listed.patterns.len() as u32, writes);
        let sync = node.sync_status().await.unwrap();
        let security = node.status().await.unwrap().security;
        assert!(
            sync.anti_entropy.last_round_ms <= (round_secs + 2) * 1000,
            "a round ran {} ms, past its {round_secs} s deadline",
            sync.anti_entropy.last_round_ms
        );
        if done(&sync, &security) {
            eprintln!(
                "{lie:?}: {} made-up ids listed; {:?}; offences {:?}; bans {}",
                rogue.ghosts_listed, sync.anti_entropy, security.offences, security.bans_issued
            );
            return writes;
        }
        assert!(
            Instant::now() < deadline,
            "{lie:?}: the attack was not contained: {:?}, offences {:?}, bans {}",
            sync.anti_entropy,
            security.offences,
            security.bans_issued
        );
    }
}

fn misleading(security: &agentmesh_node::types::SecurityStatus) -> u64 {
    security.offences.get("misleading").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_listing_patterns_it_never_delivers_is_charged_and_banned() {
    // Default round deadline (60 s); rounds every 5 s rather than 30 s.
    let t = start(1, &["--patterns-anti-entropy-secs", "5"]).await;
    attack(&t, SyncLie::Phantoms, 60, |_, security| {
        misleading(security) >= 1 && security.bans_issued >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_a_round_with_new_patterns_is_cut_off_at_the_deadline() {
    let t = start(
        1,
        &[
            "--patterns-anti-entropy-secs",
            "1",
            "--patterns-anti-entropy-round-secs",
            "3",
        ],
    )
    .await;
    attack(&t, SyncLie::Flood, 3, |sync, security| {
        assert_eq!(
            misleading(security),
            0,
            "charged for delivering what it listed"
        );
        sync.anti_entropy.rounds_past_deadline >= 2 && sync.anti_entropy.patterns_fetched > 0
    })
    .await;
}
