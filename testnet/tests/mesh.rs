//! The mesh over real node processes: discovery through one bootstrap peer,
//! exactly-once delivery, transports, restarts.

mod common;

use agentmesh_node::types::{BatchMessage, PublishBatch, RemoteDelivery, Transport};
use agentmesh_testnet::collect::Collector;
use agentmesh_testnet::{demo, wait, NodeProcess};
use common::{start, MESH_TIMEOUT};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_find_each_other_through_one_bootstrap_peer_and_deliver_exactly_once() {
    let t = start(5, &[]).await;
    let net = &t.net;
    // Only node 0 was given to the others: every other link was discovered.
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    for node in &net.nodes[1..] {
        assert_eq!(
            node.spec.bootstrap.len(),
            2,
            "bootstrapped to node 0's two addresses only"
        );
        assert!(node
            .spec
            .bootstrap
            .iter()
            .all(|b| b.ends_with(&net.nodes[0].info.peer_id)));
    }
    let report = demo::exchange(net, "coordination", 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(report.published, 10);
    assert_eq!(report.received, vec![10; 5], "every node got every message");
    assert_eq!(report.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: One scenario on one mesh: each subscription kind is checked on the same
// running nodes.
async fn several_local_subscribers_and_prefix_subscriptions_each_get_their_messages() {
    let t = start(3, &[]).await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    // Two subscribers on node 1 for metrics:*, one on node 2 for metrics:cpu only.
    let mut prefix = Collector::subscribe(net, &[1, 1], "metrics:*")
        .await
        .unwrap();
    let mut exact = Collector::subscribe(net, &[2], "metrics:cpu")
        .await
        .unwrap();
    net.wait_remote_subscribers(0, "metrics", 2, MESH_TIMEOUT)
        .await
        .unwrap();
    let cpu = net.nodes[0]
        .client
        .publish(
            "metrics:cpu",
            "application/json",
            b"{\"load\":0.5}".to_vec(),
        )
        .await
        .unwrap();
    let disk = net.nodes[0]
        .client
        .publish("metrics:disk", "application/json", b"{\"free\":1}".to_vec())
        .await
        .unwrap();
    assert_eq!(cpu.remote, RemoteDelivery::Sent);
    prefix
        .wait_for_all(
            &HashSet::from([cpu.id.clone(), disk.id.clone()]),
            Duration::from_secs(20),
            |_| {},
        )
        .await
        .unwrap();
    exact
        .wait_for_all(
            &HashSet::from([cpu.id.clone()]),
            Duration::from_secs(20),
            |_| {},
        )
        .await
        .unwrap();
    // The exact subscriber must not see metrics:disk: publish a later
    // metrics:cpu message and check nothing else arrived before it.
    let fence = net.nodes[0]
        .client
        .publish("metrics:cpu", "text/plain", b"fence".to_vec())
        .await
        .unwrap();
    exact
        .wait_for_all(
            &HashSet::from([fence.id.clone()]),
            Duration::from_secs(20),
            |_| {},
        )
        .await
        .unwrap();
    assert!(
        !exact.counts[0].contains_key(&disk.id),
        "metrics:cpu subscriber got metrics:disk"
    );
    assert!(prefix.duplicates().is_empty() && exact.duplicates().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quic_joins_over_tcp_while_quic_nodes_use_quic() {
    let mut t = start(2, &[]).await;
    t.net.add_node(&["--quic=false"]).await.unwrap();
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let tcp_node = net.nodes[2].info.peer_id.clone();
    let quic_peer = net.nodes[1].info.peer_id.clone();
    let peers = net.nodes[0].client.peers().await.unwrap();
    let by_id = |id: &str| peers.iter().find(|p| p.peer_id == id).unwrap().clone();
    assert_eq!(by_id(&quic_peer).transport, Transport::Quic);
    assert_eq!(by_id(&tcp_node).transport, Transport::Tcp);
    assert!(by_id(&tcp_node)
        .connections
        .iter()
        .all(|c| c.transport == Transport::Tcp));
    // RTT is measured per peer once a ping has gone through.
    wait::until(
        "an RTT sample for the TCP peer",
        Duration::from_secs(40),
        || async {
            let peers = net.nodes[0].client.peers().await?;
            Ok(peers
                .iter()
                .find(|p| p.peer_id == tcp_node)
                .and_then(|p| p.rtt.clone()))
        },
    )
    .await
    .unwrap();
    let report = demo::exchange(net, "coordination", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(report.received, vec![3; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_peer_id_and_rejoins_without_bootstrap_flags() {
    let mut t = start(3, &[]).await;
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let old = t.net.nodes.pop().unwrap();
    let old_id = old.info.peer_id.clone();
    let mut spec = old.spec.clone();
    old.stop(Duration::from_secs(10)).await.unwrap();
    spec.bootstrap.clear();
    let bin = agentmesh_testnet::binary::build_for_tests().unwrap();
    let restarted = NodeProcess::start(&bin, spec, false).await.unwrap();
    assert_eq!(restarted.info.peer_id, old_id);
    t.net.nodes.push(restarted);
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let report = demo::exchange(&t.net, "coordination", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(report.received, vec![3; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_says_when_nobody_else_subscribes() {
    let t = start(1, &[]).await;
    let node = &t.net.nodes[0];
    let mut local = Collector::subscribe(&t.net, &[0], "task:*").await.unwrap();
    let receipt = node
        .client
        .publish(
            "task:assigned",
            "application/json",
            b"{\"task\":1}".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(receipt.remote, RemoteDelivery::NoRemoteSubscribers);
    assert_eq!(receipt.remote_subscribers, 0);
    assert_eq!(receipt.local_subscribers, 1);
    local
        .wait_for_all(
            &HashSet::from([receipt.id]),
            Duration::from_secs(10),
            |_| {},
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_messages_reaches_every_node() {
    let t = start(3, &[]).await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let all: Vec<usize> = (0..3).collect();
    let mut collector = Collector::subscribe(net, &all, "task:*").await.unwrap();
    net.wait_topic("task", MESH_TIMEOUT).await.unwrap();
    let batch = PublishBatch {
        messages: (0..300)
            .map(|i| BatchMessage {
                channel: if i % 2 == 0 {
                    "task:assigned"
                } else {
                    "task:completed"
                }
                .into(),
                body: serde_json::json!({ "task": i }),
            })
            .collect(),
    };
    let receipts = net.nodes[1].client.publish_many(&batch).await.unwrap();
    assert_eq!(receipts.len(), 300);
    assert!(receipts.iter().all(|r| r.remote == RemoteDelivery::Sent));
    let ids: HashSet<String> = receipts.into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 300, "every message has its own id");
    collector
        .wait_for_all(&ids, Duration::from_secs(30), |_| {})
        .await
        .unwrap();
    assert!(collector.duplicates().is_empty());
}
