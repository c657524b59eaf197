//! Hosts behind real NAT routers (namespaces with iptables MASQUERADE and a
//! firewall that drops what nobody inside asked for): they learn they are
//! not reachable, reserve slots on the public node, reach each other
//! through it, punch holes where the NAT allows, and everything (gossip,
//! consensus, pattern replication) works either way. Skipped, with the
//! reason printed, only where namespaces cannot be created (not root).

mod common;

use agentmesh_node::types::{NatStatus, PeerInfo, Transport};
use agentmesh_testnet::hosts::{self, Hosts, NatKind, Placement};
use agentmesh_testnet::{claims, demo, patterns, wait, Testnet};
use std::sync::Arc;
use std::time::Duration;

const FAST: &[&str] = agentmesh_testnet::partition::FAST_FAILURE_DETECTION;
const LONG: Duration = Duration::from_secs(90);

/// The tests of this file run one at a time: hole punching times both
/// sides' dials from a measured round trip, and eleven nodes at once on a
/// 2-core machine made it miss (the suite's other binaries run apart).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn view(peers: &[PeerInfo], peer_id: &str) -> Option<PeerInfo> {
    peers.iter().find(|p| p.peer_id == peer_id).cloned()
}

async fn nat_of(net: &Testnet, i: usize) -> anyhow::Result<NatStatus> {
    Ok(net.nodes[i].client.status().await?.nat)
}

fn rt_peers(net: &Testnet, i: usize) -> Vec<PeerInfo> {
    let client = net.nodes[i].client.clone();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(client.peers())
            .unwrap_or_default()
    })
    .join()
    .unwrap()
}

/// Hosts on `placements` and options for one node on each: fast failure
/// detection, and host 0 (public, the bootstrap) with its address
/// configured, QUIC and TCP or (`tcp_only`) TCP alone.
fn on_hosts(
    placements: &[Placement],
    dir: &tempfile::TempDir,
    tcp_only: bool,
) -> (Arc<Hosts>, agentmesh_testnet::TestnetOptions) {
    let hosts = Arc::new(Hosts::create_placed(placements).expect("creating hosts behind NAT"));
    let mut opts = common::options(placements.len(), dir);
    opts.hosts = Some(hosts.clone());
    opts.extra_args = FAST.iter().map(|s| s.to_string()).collect();
    if tcp_only {
        opts.extra_args.push("--quic=false".into());
    }
    opts.node_args = vec![hosts.external_address_args(0, tcp_only)];
    (hosts, opts)
}

fn logs(net: &Testnet) -> String {
    (0..net.nodes.len())
        .map(|i| format!("--- node {i}:\n{}", net.nodes[i].log_tail(25)))
        .collect()
}

/// Host 0 is public (bootstrap and relay, its address configured as an
/// operator would); hosts 1 and 2 sit behind port-restricted cone NATs,
/// host 3 behind a symmetric one; host 4 is public too, and learns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_behind_nat_join_through_a_relay_and_punch_holes_where_they_can() {
    let _alone = ONE_AT_A_TIME.lock().await;
    if let Some(why) = hosts::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_hosts, mut opts) = on_hosts(
        &[
            Placement::Public,
            Placement::Behind(NatKind::PortRestricted),
            Placement::Behind(NatKind::PortRestricted),
            Placement::Behind(NatKind::Symmetric),
            Placement::Public,
        ],
        &dir,
        false,
    );
    // One slot each, so that losing its relay makes a node find another.
    opts.extra_args
        .extend(["--nat-max-relays".to_string(), "1".to_string()]);
    let mut net = Testnet::start(opts).await.expect("starting nodes");

    // Reachability: host 4's address is dialled back, the NATed hosts' are
    // not, so they reserve a slot on the bootstrap node.
    let relays = [
        net.nodes[0].info.peer_id.clone(),
        net.nodes[4].info.peer_id.clone(),
    ];
    wait::until("reachability of every node", LONG, || async {
        for i in [0, 4] {
            let public = nat_of(&net, i).await?;
            if public.reachability != "public" || !public.relay_service {
                return Ok(None);
            }
        }
        for i in 1..4 {
            let nat = nat_of(&net, i).await?;
            if nat.reachability != "private"
                || nat.relays.len() != 1
                || !relays.contains(&nat.relays[0])
                || nat.relayed_addrs.is_empty()
            {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    let learned = nat_of(&net, 4).await.unwrap();
    assert!(learned.probes_ok >= 1, "{learned:?}");
    assert!(!learned.confirmed_addrs.is_empty(), "{learned:?}");
    let served = nat_of(&net, 0).await.unwrap().relay_reservations
        + nat_of(&net, 4).await.unwrap().relay_reservations;
    // Nothing made a NATed host think it is reachable.
    for i in 1..4 {
        let nat = nat_of(&net, i).await.unwrap();
        assert!(nat.confirmed_addrs.is_empty(), "node {i}: {nat:?}");
        assert!(nat.probes_failed >= 1, "node {i}: {nat:?}");
    }
    // Three NATed hosts, one slot each (more for a moment if a slot is
    // being replaced).
    assert!(served >= 3, "{served}");
    // What each node announces: the NATed hosts only their relayed
    // addresses (never their private ones), host 4 only what was dialled
    // back.
    let id = |i: usize| net.nodes[i].info.peer_id.clone();
    let peers = wait::until(
        "the bootstrap to know each host by what it announces",
        LONG,
        || async {
            let peers = net.nodes[0].client.peers().await?;
            let known =
                (1..5).all(|i| view(&peers, &id(i)).is_some_and(|p| !p.listen_addrs.is_empty()));
            Ok(known.then_some(peers))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    for i in 1..4 {
        let announced = view(&peers, &id(i)).unwrap().listen_addrs;
        assert!(
            announced.iter().all(|a| a.contains("/p2p-circuit/")),
            "host {i} announces {announced:?}"
        );
    }
    let confirmed = nat_of(&net, 4).await.unwrap().confirmed_addrs;
    let announced = view(&peers, &id(4)).unwrap().listen_addrs;
    assert!(
        announced.iter().all(|a| confirmed.contains(a)),
        "host 4 announces {announced:?}, confirmed {confirmed:?}"
    );

    // Everyone reaches everyone: the NATed hosts through the relay first.
    net.wait_full_mesh(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));

    // The two cone NATs let a hole be punched: 1 and 2 end up direct, and
    // the relayed connection is closed.
    wait::until(
        "a direct connection between hosts 1 and 2",
        LONG,
        || async {
            let peers = net.nodes[1].client.peers().await?;
            Ok(view(&peers, &id(2))
                .filter(|p| p.transport != Transport::Relayed && p.connections.len() == 1)
                .map(|_| ()))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{:#?}\n{}",
            view(&rt_peers(&net, 1), &id(2)),
            logs(&net)
        )
    });
    let punched: u64 = {
        let mut n = 0;
        for i in 1..3 {
            n += nat_of(&net, i).await.unwrap().hole_punches_ok;
        }
        n
    };
    assert!(punched >= 1);

    // The symmetric NAT defeats hole punching: host 3 stays relayed to the
    // other NATed hosts (once hole punching has had its try), and still
    // works with them. A failure is counted by the side that retries (the
    // one the relayed connection was dialled to): host 3 or the other.
    wait::until("hole punching with host 3 to give up", LONG, || async {
        let mut failed = 0;
        for i in 1..4 {
            failed += nat_of(&net, i).await?.hole_punches_failed;
        }
        Ok((failed >= 2).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    for other in [1, 2] {
        let peers = net.nodes[3].client.peers().await.unwrap();
        let p = view(&peers, &id(other)).expect("connected");
        assert_eq!(
            p.transport,
            Transport::Relayed,
            "host 3 to host {other}: {p:?}"
        );
    }

    let report = demo::exchange(&net, "coordination", 2, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    assert_eq!(report.received, vec![10; 5]);
    claims::contested_claim(&net, "nat-task", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    patterns::spread(&net, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    // The relay that host 3 uses goes away: host 3 (and any other host on
    // it) reserves on the other one and is reached through it again.
    let used = nat_of(&net, 3).await.unwrap().relays[0].clone();
    let (gone, other) = if used == relays[0] {
        (0, &relays[1])
    } else {
        (4, &relays[0])
    };
    let natted: Vec<String> = (1..4).map(id).collect();
    net.kill(gone);
    let index_of = |net: &Testnet, peer: &str| {
        net.nodes
            .iter()
            .position(|n| n.info.peer_id == peer)
            .unwrap()
    };
    wait::until(
        "the NATed hosts to move to the remaining relay",
        LONG,
        || async {
            for peer in &natted {
                let nat = nat_of(&net, index_of(&net, peer)).await?;
                if nat.relays != [other.clone()] {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    net.wait_full_mesh(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    let report = demo::exchange(&net, "coordination", 1, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    assert_eq!(report.received, vec![4; 4]);

    let after: Vec<NatStatus> = {
        let mut v = Vec::new();
        for i in 0..net.nodes.len() {
            v.push(nat_of(&net, i).await.unwrap());
        }
        v
    };
    eprintln!("{after:#?}");
    if std::env::var_os("NAT_TEST_LOGS").is_some() {
        for i in 0..net.nodes.len() {
            eprintln!("--- node {i}:\n{}", net.nodes[i].log_tail(400));
        }
    }
    let symmetric = index_of(&net, &natted[2]);
    assert!(after[symmetric].relayed_connections >= 2, "{after:#?}");
}

/// A host whose router runs a UPnP gateway, with `nat.upnp` on, has its
/// ports mapped: it is public at the router's address, holds no relay
/// slot, and a host behind a symmetric NAT (which no hole can be punched
/// through, and which nothing can dial) reaches it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_gateway_maps_its_ports_is_reached_directly() {
    let _alone = ONE_AT_A_TIME.lock().await;
    if let Some(why) = hosts::upnp_unavailable() {
        // CI installs miniupnpd and requires this test to run.
        assert!(
            std::env::var_os("AGENTMESH_REQUIRE_UPNP").is_none() || hosts::unavailable().is_some(),
            "{why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (hosts, mut opts) = on_hosts(
        &[
            Placement::Public,
            Placement::BehindUpnp(NatKind::PortRestricted),
            Placement::Behind(NatKind::Symmetric),
        ],
        &dir,
        false,
    );
    opts.node_args
        .push(vec!["--nat-upnp".into(), "true".into()]);
    let net = Testnet::start(opts).await.expect("starting nodes");
    let gateway = hosts.public_addr(1);
    let mapped = [
        format!("/ip4/{gateway}/udp/4001/quic-v1"),
        format!("/ip4/{gateway}/tcp/4001"),
    ];
    wait::until("the gateway to map host 1's ports", LONG, || async {
        let nat = nat_of(&net, 1).await?;
        Ok((nat.upnp == "mapped"
            && mapped.iter().all(|a| nat.confirmed_addrs.contains(a))
            && nat.reachability == "public")
            .then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    wait::until("host 2 to reserve a relay slot", LONG, || async {
        let nat = nat_of(&net, 2).await?;
        Ok((nat.reachability == "private" && !nat.relays.is_empty()).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    net.wait_full_mesh(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    let id1 = net.nodes[1].info.peer_id.clone();
    wait::until(
        "a direct connection from host 2 to host 1",
        LONG,
        || async {
            // Dialled by host 2 to the router's address: in through the
            // mapping, since the router lets nothing else in unasked.
            let peers = net.nodes[2].client.peers().await?;
            Ok(view(&peers, &id1).and_then(|p| {
                p.connections
                    .iter()
                    .any(|c| {
                        c.transport != Transport::Relayed
                            && c.direction == "outbound"
                            && mapped.iter().any(|a| c.remote_addr.starts_with(a))
                    })
                    .then_some(())
            }))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{:#?}\n{}",
            view(&rt_peers(&net, 2), &id1),
            logs(&net)
        )
    });
    let one = nat_of(&net, 1).await.unwrap();
    assert!(one.relays.is_empty(), "{one:?}");
    // The bootstrap host sees host 1 at the router's global address.
    let seen = view(&net.nodes[0].client.peers().await.unwrap(), &id1).expect("connected");
    assert!(
        seen.connections
            .iter()
            .any(|c| c.remote_addr.starts_with(&format!("/ip4/{gateway}/"))),
        "{seen:?}"
    );
    assert_eq!(nat_of(&net, 0).await.unwrap().upnp, "off");
    let report = demo::exchange(&net, "coordination", 2, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    assert_eq!(report.received, vec![6; 3]);
}

/// The same with TCP alone (`--quic false` everywhere): hosts behind
/// port-restricted NATs join through the relay over TCP, and punch a TCP
/// hole to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_behind_nat_join_and_punch_holes_over_tcp_alone() {
    let _alone = ONE_AT_A_TIME.lock().await;
    if let Some(why) = hosts::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_hosts, opts) = on_hosts(
        &[
            Placement::Public,
            Placement::Behind(NatKind::PortRestricted),
            Placement::Behind(NatKind::PortRestricted),
        ],
        &dir,
        true,
    );
    let net = Testnet::start(opts).await.expect("starting nodes");
    for i in 1..3 {
        wait::until("a relay slot over TCP", LONG, || async {
            let nat = nat_of(&net, i).await?;
            Ok((nat.reachability == "private" && !nat.relays.is_empty()).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("host {i}: {e:#}\n{}", logs(&net)));
    }
    net.wait_full_mesh(LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    let id2 = net.nodes[2].info.peer_id.clone();
    wait::until(
        "a direct TCP connection between hosts 1 and 2",
        LONG,
        || async {
            let peers = net.nodes[1].client.peers().await?;
            Ok(view(&peers, &id2)
                .filter(|p| p.transport == Transport::Tcp && p.connections.len() == 1)
                .map(|_| ()))
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{:#?}\n{}",
            view(&rt_peers(&net, 1), &id2),
            logs(&net)
        )
    });
    let report = demo::exchange(&net, "coordination", 2, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&net)));
    assert_eq!(report.received, vec![6; 3]);
}
