//! What crosses a real network, with each node on its own host (network
//! namespace): blocked UDP, packet loss, partitions, crashes. Skipped, with
//! the reason printed, only where namespaces cannot be created (not root).

mod common;

use agentmesh_node::types::{PeerInfo, Transport};
use agentmesh_testnet::collect::Collector;
use agentmesh_testnet::hosts::{self, Hosts};
use agentmesh_testnet::{demo, wait, Testnet};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Fast failure detection, so faults are noticed within seconds.
const FAST: &[&str] = agentmesh_testnet::partition::FAST_FAILURE_DETECTION;
const LONG: Duration = Duration::from_secs(60);

/// One multi-host test at a time: each runs several nodes on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct HostNet {
    net: Testnet,
    hosts: Arc<Hosts>,
    _dir: tempfile::TempDir,
}

async fn start_hosts(n: usize, before_start: impl FnOnce(&Hosts)) -> Option<HostNet> {
    if let Some(why) = hosts::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let hosts = Arc::new(Hosts::create(n).expect("creating namespaced hosts"));
    before_start(&hosts);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::options(n, &dir);
    opts.hosts = Some(hosts.clone());
    opts.extra_args = FAST.iter().map(|s| s.to_string()).collect();
    let net = Testnet::start(opts)
        .await
        .expect("starting nodes on the hosts");
    if let Err(e) = net.wait_full_mesh(LONG).await {
        let logs: String = (0..n)
            .map(|i| format!("--- node {i}:\n{}", net.nodes[i].log_tail(40)))
            .collect();
        panic!("mesh across hosts: {e:#}\n{logs}");
    }
    Some(HostNet {
        net,
        hosts,
        _dir: dir,
    })
}

fn view(peers: &[PeerInfo], peer_id: &str) -> Option<PeerInfo> {
    peers.iter().find(|p| p.peer_id == peer_id).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_blocked_two_hosts_use_tcp_then_return_to_quic() {
    let _serial = SERIAL.lock().await;
    let Some(h) = start_hosts(3, |hosts| hosts.block_udp(1, 2).unwrap()).await else {
        return;
    };
    let net = &h.net;
    // Whichever of hosts 1 and 2 dialled the other saw QUIC fail and TCP work.
    let (a, b) = wait::until("a breaker between hosts 1 and 2 to open", LONG, || async {
        for (a, b) in [(1, 2), (2, 1)] {
            let peers = net.nodes[a].client.peers().await?;
            if let Some(p) = view(&peers, &net.nodes[b].info.peer_id) {
                if p.breaker == "open" {
                    assert_eq!(p.transport, Transport::Tcp);
                    return Ok(Some((a, b)));
                }
            }
        }
        Ok(None)
    })
    .await
    .unwrap();
    // Both ends use TCP; hosts 0-1 and 0-2 still use QUIC.
    let b_view = view(
        &net.nodes[b].client.peers().await.unwrap(),
        &net.nodes[a].info.peer_id,
    )
    .unwrap();
    assert_eq!(b_view.transport, Transport::Tcp);
    let zero = view(
        &net.nodes[a].client.peers().await.unwrap(),
        &net.nodes[0].info.peer_id,
    )
    .unwrap();
    assert_eq!(zero.transport, Transport::Quic);
    let report = demo::exchange(net, "coordination", 2, LONG).await.unwrap();
    assert_eq!(report.received, vec![6; 3]);

    // UDP works again: after the cooldown, trials succeed and QUIC is back.
    h.hosts.heal().unwrap();
    wait::until("host a to go back to QUIC for b", LONG, || async {
        let peers = net.nodes[a].client.peers().await?;
        Ok(view(&peers, &net.nodes[b].info.peer_id)
            .filter(|p| p.breaker == "closed" && p.transport == Transport::Quic)
            .map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| {
        panic!("{e:#}; node {a} log:\n{}", net.nodes[a].log_tail(30));
    });
    let report = demo::exchange(net, "coordination", 1, LONG).await.unwrap();
    assert_eq!(report.received, vec![3; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_despite_ten_percent_packet_loss() {
    let _serial = SERIAL.lock().await;
    let Some(h) = start_hosts(5, |_| {}).await else {
        return;
    };
    h.hosts.packet_loss(0.10).unwrap();
    let report = demo::exchange(&h.net, "coordination", 4, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(report.received, vec![20; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_mesh_works_on_both_sides_and_heals() {
    let _serial = SERIAL.lock().await;
    let Some(h) = start_hosts(7, |_| {}).await else {
        return;
    };
    let net = &h.net;
    let (left, right) = ([0, 1, 2, 3], [4, 5, 6]);
    let mut left_subs = Collector::subscribe(net, &left, "coordination")
        .await
        .unwrap();
    let mut right_subs = Collector::subscribe(net, &right, "coordination")
        .await
        .unwrap();
    net.wait_topic("coordination", LONG).await.unwrap();
    h.hosts.partition(&left, &right).unwrap();
    // Each side notices the other is gone.
    for (side, others) in [(&left[..], right.len()), (&right[..], left.len())] {
        for &i in side {
            net.wait_connected(i, net.nodes.len() - 1 - others, LONG)
                .await
                .unwrap();
        }
    }
    // Both sides keep working inside themselves.
    let l = net.nodes[1]
        .client
        .publish("coordination", "text/plain", b"left".to_vec())
        .await
        .unwrap();
    let r = net.nodes[5]
        .client
        .publish("coordination", "text/plain", b"right".to_vec())
        .await
        .unwrap();
    left_subs
        .wait_for_all(&HashSet::from([l.id]), LONG, |_| {})
        .await
        .unwrap();
    right_subs
        .wait_for_all(&HashSet::from([r.id]), LONG, |_| {})
        .await
        .unwrap();
    drop((left_subs, right_subs));
    // Healed: the mesh is whole again and messages cross.
    h.hosts.heal().unwrap();
    net.wait_full_mesh(LONG).await.unwrap();
    let report = demo::exchange(net, "coordination", 1, LONG).await.unwrap();
    assert_eq!(report.received, vec![7; 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_noticed_and_rejoins_after_restart() {
    let _serial = SERIAL.lock().await;
    let Some(mut h) = start_hosts(3, |_| {}).await else {
        return;
    };
    let mut spec = h.net.kill(2);
    for i in 0..2 {
        h.net.wait_connected(i, 1, LONG).await.unwrap();
    }
    spec.bootstrap.clear();
    h.net.restart(2, spec).await.unwrap();
    h.net.wait_full_mesh(LONG).await.unwrap();
    let report = demo::exchange(&h.net, "coordination", 1, LONG)
        .await
        .unwrap();
    assert_eq!(report.received, vec![3; 3]);
}

/// A claim on each side of a silent 4/4 partition of hosts whose nodes all
/// validate (authority certificates): neither half holds α-confidence of
/// the weight, so nothing is decided while it lasts; once it heals, every
/// node reports the same single winner. (`bench partition --hosts 30` runs
/// the same at scale.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_mesh_decides_nothing_until_it_heals() {
    let _serial = SERIAL.lock().await;
    if let Some(why) = hosts::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = agentmesh_testnet::binary::build_for_tests().unwrap();
    let report = agentmesh_testnet::partition::run(&bin, dir.path(), 8, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(report.decided_while_partitioned, 0, "{report:?}");
    assert!(report.one_winner, "{report:?}");
    assert!(report.partitioned_ms >= 10_000);
}
