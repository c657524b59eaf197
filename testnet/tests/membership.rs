//! Membership and misbehaviour over real node processes: in a network with
//! an authority only certificate holders take part, within their scopes;
//! a flooding peer is throttled, then banned, and stays banned across a
//! restart.

mod common;

use agentmesh_node::client::{ApiClient, ClientError};
use agentmesh_node::identity::node_id_of;
use agentmesh_node::types::{SecurityStatus, TransactionBody};
use agentmesh_protocol::{
    encode_frame, Channel, Envelope, MessageId, NodeKey, Transaction, Vertex,
};
use agentmesh_testnet::authority::{peer_id_of_dir, Authority};
use agentmesh_testnet::collect::Collector;
use agentmesh_testnet::rogue::RoguePeer;
use agentmesh_testnet::{binary, Testnet, TestnetOptions};
use common::{start, MESH_TIMEOUT};
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Members {
    net: Testnet,
    authority: Authority,
    dir: tempfile::TempDir,
}

/// A testnet whose node i holds a certificate with `scopes[i]`, issued
/// through the CLI.
async fn members(scopes: &[&str]) -> Members {
    members_with(scopes, &[]).await
}

/// Like [`members`], node 0 also given `node0_args`.
async fn members_with(scopes: &[&str], node0_args: &[String]) -> Members {
    let dir = tempfile::tempdir().unwrap();
    let bin = binary::build_for_tests().unwrap();
    let authority = Authority::create(&bin, &dir.path().join("ca")).unwrap();
    let mut opts = TestnetOptions::new(scopes.len(), dir.path(), &bin);
    for (i, scopes) in scopes.iter().enumerate() {
        let peer = peer_id_of_dir(&bin, &opts.spec(i).data_dir).unwrap();
        let out = dir.path().join(format!("node-{i}.cert"));
        let cert = authority.issue(&peer, scopes, "1h", &out).unwrap();
        opts.node_args.push(authority.member_args(&cert));
    }
    opts.node_args[0].extend(node0_args.iter().cloned());
    let net = Testnet::start(opts).await.unwrap();
    Members {
        net,
        authority,
        dir,
    }
}

/// A bare peer holding a certificate with `scopes` (valid for an hour),
/// and the certificate.
fn certified_member(m: &Members, scopes: &str) -> (RoguePeer, Vec<u8>) {
    let mut member = RoguePeer::new(&m.net.options.network).unwrap();
    let holder = node_id_of(&member.peer_id).unwrap();
    let cert = m
        .authority
        .issue_at(holder, scopes, now_ms(), now_ms() + 3_600_000)
        .unwrap();
    member.certificate = Some(cert.clone());
    (member, cert)
}

/// Keeps node 1 publishing on chat until `member` receives gossip (only
/// an admitted member does).
async fn wait_for_chat_gossip(net: &Testnet, member: &mut RoguePeer, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while member.gossip_received == 0 {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let _ = net.nodes[1]
            .client
            .publish("chat:general", "text/plain", b"to members".to_vec())
            .await;
        member.pump(Duration::from_millis(200)).await;
    }
}

async fn security(client: &ApiClient) -> SecurityStatus {
    client.status().await.unwrap().security
}

fn frame(key: &NodeKey, channel: &str, body: &str, certificate: Option<&[u8]>) -> Vec<u8> {
    frame_at(key, channel, body, certificate, now_ms())
}

fn frame_at(
    key: &NodeKey,
    channel: &str,
    body: &str,
    certificate: Option<&[u8]>,
    timestamp_ms: u64,
) -> Vec<u8> {
    let envelope = Envelope {
        channel: Channel::parse(channel).unwrap(),
        id: MessageId::random().unwrap(),
        sender: key.node_id(),
        timestamp_ms,
        content_type: "text/plain".into(),
        body: body.as_bytes().to_vec(),
    };
    encode_frame(key, &[envelope], certificate).unwrap()
}

/// Keeps the rogue's swarm running until `done` holds (or fails after
/// `TIMEOUT`, naming `what`).
async fn pump_until<F, Fut>(rogue: &mut RoguePeer, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        rogue.pump(Duration::from_millis(50)).await;
    }
}

/// Publishes on `channel` from node `from` and waits until every
/// subscriber of `collector` has it; returns every sender seen meanwhile.
async fn sentinel(
    net: &Testnet,
    from: usize,
    channel: &str,
    collector: &mut Collector,
    senders: &mut HashSet<String>,
) {
    let receipt = net.nodes[from]
        .client
        .publish(channel, "text/plain", b"sentinel".to_vec())
        .await
        .unwrap();
    let expected = HashSet::from([receipt.id]);
    collector
        .wait_for_all(&expected, TIMEOUT, |r| {
            senders.insert(r.event.sender.clone());
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: One authority network and its members, every scope checked on the same
// running nodes.
async fn members_talk_within_their_scopes_and_non_members_are_refused() {
    let m = members(&["all", "all", "publish:chat:*"]).await;
    let net = &m.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    for node in &net.nodes {
        let s = security(&node.client).await;
        assert_eq!(s.membership, "authority");
        assert_eq!(s.refused_peers, 0);
    }
    let mut chat = Collector::subscribe(net, &[0, 1], "chat:*").await.unwrap();
    let mut coordination = Collector::subscribe(net, &[0, 1], "coordination")
        .await
        .unwrap();
    net.wait_remote_subscribers(2, "chat", 2, MESH_TIMEOUT)
        .await
        .unwrap();
    net.wait_remote_subscribers(0, "coordination", 1, MESH_TIMEOUT)
        .await
        .unwrap();

    // The limited member talks on chat, but may not publish elsewhere or
    // propose: its own node refuses before peers would.
    let mut senders = HashSet::new();
    sentinel(net, 2, "chat:general", &mut chat, &mut senders).await;
    let node2 = &net.nodes[2].client;
    match node2
        .publish("coordination", "text/plain", b"x".to_vec())
        .await
    {
        Err(ClientError::Rejected {
            status: 403,
            message,
        }) => {
            assert!(message.contains("coordination"), "{message}")
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let tx = TransactionBody {
        key: "task:x".into(),
        payload: "{}".into(),
    };
    assert!(matches!(
        node2.propose(vec![tx]).await,
        Err(ClientError::Rejected { status: 403, .. })
    ));

    // Outsiders: no certificate, an expired one, someone else's.
    let target = net.nodes[0].tcp_addr().unwrap();
    let client0 = net.nodes[0].client.clone();
    let mut rogue_senders = HashSet::new();
    let someone_elses = std::fs::read(m.dir.path().join("node-1.cert")).unwrap();
    for (n, kind) in ["none", "expired", "someone else's"]
        .into_iter()
        .enumerate()
    {
        let mut rogue = RoguePeer::new(&net.options.network).unwrap();
        let holder = node_id_of(&rogue.peer_id).unwrap();
        rogue.certificate = match kind {
            "none" => None,
            "expired" => Some(
                m.authority
                    .issue_at(holder, "all", now_ms() - 7_200_000, now_ms() - 3_600_000)
                    .unwrap(),
            ),
            _ => Some(someone_elses.clone()),
        };
        rogue_senders.insert(rogue.key.node_id().to_string());
        // It keeps the node waiting for its certificate while it publishes:
        // the node holds its messages until it has judged the certificate.
        rogue.stall_handshake = true;
        rogue.listen().unwrap();
        rogue.connect(&target, "chat").await.unwrap();
        let cert = rogue.certificate.clone();
        for i in 0..5 {
            let body = format!("intruder {i}");
            let data = frame(&rogue.key, "chat:general", &body, cert.as_deref());
            rogue.publish_raw("chat", data).unwrap();
        }
        pump_until(&mut rogue, "node 0 to hold the outsider's messages", || {
            let client0 = client0.clone();
            async move { security(&client0).await.held_messages == 5 }
        })
        .await;
        // While it waits to be judged, its addresses (identify has told
        // them) reach neither Kademlia nor the peer book.
        let status = client0.status().await.unwrap();
        assert_eq!(
            (status.routing_table_peers, status.known_peers),
            (2, 2),
            "only the two other members are routed to and remembered"
        );
        // Nor does gossip reach it: members' chat (published on node 1
        // and forwarded by node 0, and node 0's own), though it subscribed.
        sentinel(net, 1, "chat:general", &mut chat, &mut senders).await;
        sentinel(net, 0, "chat:general", &mut chat, &mut senders).await;
        rogue.pump(Duration::from_millis(500)).await;
        assert_eq!(rogue.gossip_received, 0, "a pending non-member got gossip");
        rogue.finish_handshake();
        let what = format!("node 0 to refuse the outsider with {kind} certificate");
        pump_until(&mut rogue, &what, || {
            let client0 = client0.clone();
            async move {
                let s = security(&client0).await;
                s.refused_peers == n as u64 + 1 && s.held_messages == 0
            }
        })
        .await;
        if n == 0 {
            // Refused, it may not come straight back.
            assert!(
                rogue.connect(&target, "chat").await.is_err(),
                "a refused peer reconnected at once"
            );
        }
    }
    // Everything the outsiders sent was judged before they were refused;
    // a later message from a member arriving proves none got through.
    sentinel(net, 2, "chat:general", &mut chat, &mut senders).await;
    assert!(
        senders.is_disjoint(&rogue_senders),
        "a non-member's message was delivered"
    );

    // A member with a valid certificate publishing outside its scopes: its
    // chat messages are delivered everywhere, the rest rejected.
    let (mut member, cert) = certified_member(&m, "publish:chat:*");
    member.connect(&target, "chat").await.unwrap();
    let in_scope = frame(&member.key, "chat:general", "within scope", Some(&cert));
    member.publish_raw("chat", in_scope).unwrap();
    let member_id = member.key.node_id().to_string();
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = 0;
    while seen < 2 {
        assert!(
            Instant::now() < deadline,
            "the member's chat message was not delivered"
        );
        member.pump(Duration::from_millis(50)).await;
        while let Some(r) = chat.next(Duration::from_millis(1)).await {
            seen += usize::from(r.event.sender == member_id);
        }
    }
    // Once admitted, a member gets gossip (what the fence withheld above
    // is real traffic).
    wait_for_chat_gossip(
        net,
        &mut member,
        "the admitted member to receive chat gossip",
    )
    .await;
    let out_of_scope = frame(&member.key, "coordination", "outside scope", Some(&cert));
    member.publish_raw("coordination", out_of_scope).unwrap();
    // A vertex from a member without the propose scope.
    let tx = Transaction {
        key: "task:sneaky".into(),
        payload: b"{}".to_vec(),
    };
    let vertex = Vertex::sign(&member.key, vec![], 1, now_ms(), vec![tx])
        .unwrap()
        .with_certificate(Some(&cert));
    let _ = member.publish_vertex_bytes(vertex.encode());
    pump_until(
        &mut member,
        "node 0 to reject the out-of-scope frame",
        || {
            let client0 = client0.clone();
            async move { security(&client0).await.offences["unauthorised"] >= 1 }
        },
    )
    .await;
    let mut coordination_senders = HashSet::new();
    sentinel(
        net,
        0,
        "coordination",
        &mut coordination,
        &mut coordination_senders,
    )
    .await;
    assert!(
        !coordination_senders.contains(&member.key.node_id().to_string()),
        "an out-of-scope message was delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_throttled_then_banned_and_stays_banned_after_a_restart() {
    let mut t = start(3, &["--peer-message-rate", "100"]).await;
    t.net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let mut chat = Collector::subscribe(&t.net, &[0, 2], "chat:*")
        .await
        .unwrap();
    t.net
        .wait_remote_subscribers(1, "chat", 2, MESH_TIMEOUT)
        .await
        .unwrap();
    let target = t.net.nodes[0].tcp_addr().unwrap();
    let mut rogue = RoguePeer::new(&t.net.options.network).unwrap();
    rogue.connect(&target, "chat").await.unwrap();
    let rogue_node = rogue.key.node_id().to_string();

    // 2,000 messages at once, in frames of 50: ten times the burst allowed.
    let flood = 2_000;
    for f in 0..flood / 50 {
        let envelopes: Vec<Envelope> = (0..50)
            .map(|i| Envelope {
                channel: Channel::parse("chat:flood").unwrap(),
                id: MessageId::random().unwrap(),
                sender: rogue.key.node_id(),
                timestamp_ms: now_ms(),
                content_type: "text/plain".into(),
                body: format!("flood {f}/{i}").into_bytes(),
            })
            .collect();
        let data = encode_frame(&rogue.key, &envelopes, None).unwrap();
        rogue.publish_raw("chat", data).unwrap();
    }
    let client0 = t.net.nodes[0].client.clone();
    pump_until(&mut rogue, "node 0 to ban the flooding peer", || {
        let client0 = client0.clone();
        async move { security(&client0).await.banned_peers == 1 }
    })
    .await;
    let s = security(&client0).await;
    assert!(s.offences["over_rate"] > 0, "{s:?}");
    assert_eq!(s.bans[0].peer_id, rogue.peer_id.to_string());
    assert!(
        s.bans[0].reason.contains("over_rate"),
        "{}",
        s.bans[0].reason
    );

    // An honest member publishing meanwhile is not affected.
    let mut expected = HashSet::new();
    for i in 0..50 {
        let receipt = t.net.nodes[1]
            .client
            .publish(
                "chat:honest",
                "text/plain",
                format!("honest {i}").into_bytes(),
            )
            .await
            .unwrap();
        expected.insert(receipt.id);
    }
    let mut from_rogue = 0;
    chat.wait_for_all(&expected, TIMEOUT, |r| {
        if r.event.sender == rogue_node {
            from_rogue += 1;
        }
    })
    .await
    .unwrap();
    // Throttled: of the flood, at most the burst and what the rate allowed
    // got through (to each of the two subscribers).
    assert!(
        from_rogue < flood,
        "{from_rogue} of {flood} flood messages were delivered"
    );

    // The ban is on disk: a crash and restart does not forgive it.
    let spec = t.net.kill(0);
    t.net.restart(0, spec).await.unwrap();
    let s = security(&t.net.nodes[0].client).await;
    assert_eq!(s.banned_peers, 1, "{s:?}");
    let target = t.net.nodes[0].tcp_addr().unwrap();
    assert!(
        rogue.connect(&target, "chat").await.is_err(),
        "a banned peer reconnected after the restart"
    );
}

/// In a network with an authority, the validators are the holders of the
/// `validate` scope: a member without it is never sampled (it answers no
/// query), yet its claims are decided by the others like anyone's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_validate_scope_vote() {
    let m = members(&["validate,propose", "validate,propose", "all", "propose"]).await;
    let net = &m.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let validators: HashSet<String> = net.nodes[..3]
        .iter()
        .map(|n| n.info.node_id.clone())
        .collect();
    for node in &net.nodes {
        let listed = agentmesh_testnet::wait::until("the validator set", TIMEOUT, || async {
            let set = node.client.consensus().await?.validators;
            let listed: HashSet<String> = set.members.iter().map(|v| v.node_id.clone()).collect();
            Ok((listed == validators).then_some(set))
        })
        .await
        .unwrap();
        assert!(listed.sybil_resistant, "{listed:?}");
        assert!(listed.source.contains("certificates"), "{listed:?}");
        assert_eq!(listed.total_weight, 3);
    }
    let claimants: Vec<(usize, String)> = (0..4).map(|i| (i, format!("agent-{i}"))).collect();
    agentmesh_testnet::claims::claim_at_once(net, "job-7", &claimants)
        .await
        .unwrap();
    let winners = agentmesh_testnet::claims::final_winners(net, "job-7", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(winners.iter().all(|w| *w == winners[0]), "{winners:?}");
    let outsider = net.nodes[3].client.consensus().await.unwrap();
    assert_eq!(
        outsider.queries_answered, 0,
        "a member without the validate scope was sampled"
    );
    for node in &net.nodes[..3] {
        assert!(node.client.consensus().await.unwrap().queries_answered > 0);
    }
}

/// Frames stamped two minutes ago (a replay once gossipsub's duplicate
/// cache has forgotten them) or a minute ahead are dropped; the member that
/// relays them is not charged for it, however many it relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_early_frames_are_dropped_without_charging_the_relay() {
    let m = members(&["all", "all"]).await;
    let net = &m.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let mut chat = Collector::subscribe(net, &[0, 1], "chat:*").await.unwrap();
    net.wait_remote_subscribers(1, "chat", 1, MESH_TIMEOUT)
        .await
        .unwrap();
    let mut relay = RoguePeer::new(&net.options.network).unwrap();
    let holder = node_id_of(&relay.peer_id).unwrap();
    let cert = m
        .authority
        .issue_at(holder, "all", now_ms(), now_ms() + 3_600_000)
        .unwrap();
    relay.certificate = Some(cert.clone());
    relay
        .connect(&net.nodes[0].tcp_addr().unwrap(), "chat")
        .await
        .unwrap();
    let relay_id = relay.key.node_id().to_string();
    // More than enough to be banned if each counted as an offence.
    for i in 0..60 {
        let stamp = if i % 2 == 0 {
            now_ms() - 120_000
        } else {
            now_ms() + 60_000
        };
        let data = frame_at(
            &relay.key,
            "chat:general",
            &format!("stale {i}"),
            Some(&cert),
            stamp,
        );
        relay.publish_raw("chat", data).unwrap();
    }
    let client0 = net.nodes[0].client.clone();
    pump_until(&mut relay, "node 0 to drop the 60 frames", || {
        let client0 = client0.clone();
        async move { client0.status().await.unwrap().messages.rejected >= 60 }
    })
    .await;
    // Its fresh frame is still delivered everywhere: it was not banned.
    let fresh = frame(&relay.key, "chat:general", "fresh", Some(&cert));
    relay.publish_raw("chat", fresh).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut bodies = Vec::new();
    while bodies
        .iter()
        .filter(|b: &&String| b.as_str() == "fresh")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the fresh frame was not delivered: {bodies:?}"
        );
        relay.pump(Duration::from_millis(50)).await;
        while let Some(r) = chat.next(Duration::from_millis(1)).await {
            if r.event.sender == relay_id {
                bodies.push(r.event.body.as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert!(
        bodies.iter().all(|b| b == "fresh"),
        "a stale or early frame was delivered: {bodies:?}"
    );
    let s = security(&client0).await;
    assert_eq!(s.banned_peers, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalling_strangers_hold_at_most_the_handshake_places_and_members_still_join() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node0.toml");
    std::fs::write(&config, "[membership]\nmax_pending_handshakes = 4\n").unwrap();
    let m = members_with(
        &["all", "all"],
        &["--config".into(), config.display().to_string()],
    )
    .await;
    let net = &m.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let target: libp2p::Multiaddr = net.nodes[0].tcp_addr().unwrap().parse().unwrap();
    let client0 = net.nodes[0].client.clone();
    let _chat = Collector::subscribe(net, &[0], "chat:*").await.unwrap();

    // Twelve strangers that never finish the handshake keep dialling.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut strangers = Vec::new();
    for _ in 0..12 {
        let mut rogue = RoguePeer::new(&net.options.network).unwrap();
        rogue.stall_handshake = true;
        let (target, stop) = (target.clone(), stop.clone());
        strangers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = rogue.dial(&target);
                rogue.pump(Duration::from_millis(300)).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut most = 0;
    while Instant::now() < deadline {
        let s = security(&client0).await;
        most = most.max(s.pending_handshakes);
        assert!(
            s.pending_handshakes <= 4,
            "{} handshakes under way",
            s.pending_handshakes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        most, 4,
        "the strangers should have filled the handshake places"
    );
    let s = security(&client0).await;
    assert!(
        s.handshakes_turned_away + s.refused_peers > 0,
        "nobody was turned away or refused: {s:?}"
    );

    // A member still gets in: it displaces a stranger that has waited
    // longer than any honest handshake takes.
    let (mut member, _) = certified_member(&m, "all");
    // Turned away while every stranger's wait is still short, it retries,
    // as a node redials its bootstrap peers.
    let deadline = Instant::now() + 2 * TIMEOUT;
    while let Err(e) = member.connect(&target.to_string(), "chat").await {
        assert!(
            Instant::now() < deadline,
            "the member never got in: {e}; {:?}",
            security(&client0).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_chat_gossip(
        net,
        &mut member,
        "the member to be admitted while strangers stalled",
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in strangers {
        s.await.unwrap();
    }
}
