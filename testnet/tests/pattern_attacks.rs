//! A member that answers anti-entropy with endless made-up pages (every
//! hash differs, each page of entries names one pattern that does not
//! exist and says more follow, no fetch delivers anything): the victim's
//! rounds end at their deadline, it keeps listing and taking writes
//! meanwhile, and the attacker is charged until it is banned.

mod common;

use agentmesh_testnet::rogue::RoguePeer;
use common::{pattern_input, start};
use std::time::{Duration, Instant};

const ROUND_SECS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_endless_made_up_pages_is_cut_off_and_charged() {
    let round = ROUND_SECS.to_string();
    let t = start(
        1,
        &[
            "--patterns-anti-entropy-secs",
            "1",
            "--patterns-anti-entropy-round-secs",
            &round,
        ],
    )
    .await;
    let node = t.net.nodes[0].client.clone();
    let mut rogue = RoguePeer::new(&t.net.options.network).unwrap();
    rogue.sync_lies = true;
    let tcp = t.net.nodes[0].tcp_addr().unwrap();
    rogue.connect_consensus(&tcp).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(180);
    let mut writes = 0u32;
    loop {
        rogue.pump(Duration::from_millis(500)).await;
        // The victim keeps working while its rounds are held up.
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
        let misleading = security.offences.get("misleading").copied().unwrap_or(0);
        assert!(
            sync.anti_entropy.last_round_ms <= (ROUND_SECS + 2) * 1000,
            "a round ran {} ms, past its {ROUND_SECS} s deadline",
            sync.anti_entropy.last_round_ms
        );
        if sync.anti_entropy.rounds_past_deadline >= 1
            && misleading >= 1
            && security.bans_issued >= 1
        {
            eprintln!(
                "after {} made-up ids: {} rounds past the deadline, {} ids not delivered, charged {misleading} times, banned",
                rogue.ghosts_listed,
                sync.anti_entropy.rounds_past_deadline,
                sync.anti_entropy.phantom_ids
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attacker was not cut off and banned: {:?}, offences {:?}, bans {}",
            sync.anti_entropy,
            security.offences,
            security.bans_issued
        );
    }
    assert_eq!(node.sync_status().await.unwrap().patterns, writes as u64);
}
