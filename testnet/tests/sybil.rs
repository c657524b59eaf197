//! 300 throwaway identities from 12 loopback addresses attack one node of
//! an open network (real processes): the node keeps the honest peers it
//! dialled, stays within its peer limits and per-address limits, keeps
//! carrying honest messages both ways, bans the addresses garbage came
//! from, and its memory stays bounded.

mod common;

use agentmesh_testnet::sybil_bench::{sybil_attack, SybilOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_sybils_take_no_honest_slot() {
    let dir = tempfile::tempdir().unwrap();
    let options = common::options(3, &dir);
    // 12 addresses (25 identities each), 8 of which send garbage: in 30 s
    // enough of their identities win a slot, misbehave and are banned for
    // their addresses to be banned too.
    let o = SybilOptions {
        attack_secs: 30,
        addresses: 12,
        misbehaving_addresses: 8,
        ..SybilOptions::default()
    };
    let r = sybil_attack(options, &o).await.expect("the attack ran");
    println!("{}", serde_json::to_string(&r).unwrap());
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {r}"));
    let limits = &r["limits"];
    // The honest peers it dialled stayed connected throughout.
    assert_eq!(n("honest_peers_min"), 3, "{r}");
    assert!(
        n("max_connected") <= limits["max_peers"].as_u64().unwrap(),
        "{r}"
    );
    assert!(
        n("max_inbound") <= limits["max_inbound"].as_u64().unwrap(),
        "{r}"
    );
    assert!(
        n("max_per_ip") <= limits["max_peers_per_ip"].as_u64().unwrap(),
        "{r}"
    );
    // Honest messages kept flowing both ways.
    assert_eq!(r["honest_messages_delivered"], true, "{r}");
    // The garbage senders were banned, and then their addresses.
    assert!(n("bans_issued") >= 5, "{r}");
    assert!(n("ip_bans_issued") >= 1, "{r}");
    let refused = &r["refused_connections"];
    assert!(
        refused["per_ip"].as_u64().unwrap() + refused["inbound_full"].as_u64().unwrap() > 0,
        "{r}"
    );
    // Bounded memory: a node with a handful of peers, whatever dials it.
    let rss = r["peak_rss_mb"].as_f64().unwrap();
    assert!(rss < 400.0, "peak RSS {rss} MB: {r}");
}
