//! Bookkeeping for connected peers: connections with their transport,
//! rolling RTT, ping failures, identify data and rejected messages.

use crate::config::{is_quic, is_tcp};
use crate::types::{ConnectionInfo, PeerInfo, RttInfo, Transport};
use libp2p::{core::ConnectedPoint, swarm::ConnectionId, Multiaddr, PeerId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const RTT_WINDOW: usize = 16;

/// RTT samples over a sliding window.
#[derive(Debug, Default, Clone)]
pub struct RollingRtt {
    samples: VecDeque<Duration>,
}

impl RollingRtt {
    pub fn record(&mut self, rtt: Duration) {
        if self.samples.len() == RTT_WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(rtt);
    }

    pub fn info(&self) -> Option<RttInfo> {
        let last = *self.samples.back()?;
        let total: Duration = self.samples.iter().sum();
        Some(RttInfo {
            last_ms: last.as_secs_f64() * 1e3,
            mean_ms: total.as_secs_f64() * 1e3 / self.samples.len() as f64,
            samples: self.samples.len(),
        })
    }
}

pub fn transport_of(addr: &Multiaddr) -> Transport {
    if super::nat::is_relayed(addr) {
        Transport::Relayed
    } else if is_quic(addr) {
        Transport::Quic
    } else if is_tcp(addr) {
        Transport::Tcp
    } else {
        Transport::Other
    }
}

#[derive(Debug)]
struct Connection {
    remote_addr: Multiaddr,
    /// Through a relay: the remote address of an inbound relayed
    /// connection is only `/p2p/<peer>`; its local one says so.
    relayed: bool,
    outbound: bool,
    since: Instant,
}

impl Connection {
    fn transport(&self) -> Transport {
        if self.relayed {
            Transport::Relayed
        } else {
            transport_of(&self.remote_addr)
        }
    }
}

#[derive(Debug, Default)]
struct PeerEntry {
    connections: Vec<(ConnectionId, Connection)>,
    listen_addrs: Vec<Multiaddr>,
    agent_version: Option<String>,
    rtt: RollingRtt,
    ping_failures: u32,
    rejected_messages: u64,
    /// This node dialled one of its connections (it chose this peer).
    dialled: bool,
}

/// Connections to one peer set up closer together than this are taken for
/// a simultaneous dial by both ends (see [`PeerTable::duplicate_to_close`]).
const SIMULTANEOUS_DIAL_WINDOW: Duration = Duration::from_secs(3);

/// The per-process part of an agentmesh agent version
/// (`agentmesh/<version> run/<nonce>`).
pub fn run_of(agent_version: &str) -> Option<&str> {
    agent_version.rsplit_once(" run/").map(|(_, run)| run)
}

/// Two connections of one transport to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    /// Both ends dialled at once: close this one (both ends pick the same).
    Race(ConnectionId),
    /// Set up further apart than a simultaneous dial: a reconnection
    /// while the older one still looked open here, or a connection made
    /// for a purpose of its own (an AutoNAT dial-back). What to do is
    /// decided once the newer one's identify tells whether the peer
    /// restarted (see `superseded`).
    Later,
}

/// Connected peers only: an entry goes when its last connection closes, so
/// the table is bounded by the connection limit.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<PeerId, PeerEntry>,
}

impl PeerTable {
    pub fn connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        let conn = Connection {
            remote_addr: endpoint.get_remote_address().clone(),
            relayed: endpoint.is_relayed(),
            outbound: endpoint.is_dialer(),
            since: Instant::now(),
        };
        let entry = self.peers.entry(peer).or_default();
        entry.dialled |= conn.outbound;
        entry.connections.push((id, conn));
    }

    /// Records a closed connection. When it was the peer's last, returns
    /// whether this node had dialled the peer (on any of its connections).
    pub fn closed(&mut self, peer: &PeerId, id: ConnectionId) -> Option<bool> {
        let entry = self.peers.get_mut(peer)?;
        entry.connections.retain(|(c, _)| *c != id);
        if entry.connections.is_empty() {
            return self.peers.remove(peer).map(|e| e.dialled);
        }
        None
    }

    /// Records what a peer announced; true if it announced another run
    /// (process) than before while this node still had a connection to the
    /// old one: the peer restarted.
    pub fn identified(
        &mut self,
        peer: &PeerId,
        agent_version: String,
        listen_addrs: Vec<Multiaddr>,
    ) -> bool {
        let Some(entry) = self.peers.get_mut(peer) else {
            return false;
        };
        let restarted = match (&entry.agent_version, run_of(&agent_version)) {
            (Some(before), Some(now)) => run_of(before).is_some_and(|b| b != now),
            _ => false,
        };
        entry.agent_version = Some(agent_version);
        entry.listen_addrs = listen_addrs;
        restarted
    }

    pub fn ping_ok(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.rtt.record(rtt);
            entry.ping_failures = 0;
        }
    }

    /// Counts a failed ping and returns the consecutive failures so far.
    pub fn ping_failed(&mut self, peer: &PeerId) -> u32 {
        match self.peers.get_mut(peer) {
            Some(entry) => {
                entry.ping_failures += 1;
                entry.ping_failures
            }
            None => 0,
        }
    }

    pub fn rejected(&mut self, peer: &PeerId) {
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.rejected_messages += 1;
        }
    }

    /// Peers that identified themselves and whose oldest open connection
    /// was set up before `cutoff`.
    pub fn identified_before(&self, cutoff: Instant) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, e)| {
                e.agent_version.is_some()
                    && e.connections.iter().map(|(_, c)| c.since).min() < Some(cutoff)
            })
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Open connections to `peer`.
    /// Peers connected only inbound (this node dialled none of their
    /// connections, even one since closed as a duplicate), with when their
    /// oldest connection was set up.
    pub fn inbound_only(&self) -> Vec<(PeerId, Instant)> {
        self.peers
            .iter()
            .filter(|(_, e)| !e.dialled)
            .filter_map(|(peer, e)| {
                let since = e.connections.iter().map(|(_, c)| c.since).min()?;
                Some((*peer, since))
            })
            .collect()
    }

    /// The IP address `peer`'s oldest direct connection comes from (none
    /// while it is reached through relays only). Direct ones only: while
    /// a hole-punched connection replaces a relayed one, both are open,
    /// and the relayed one, older, shows no IP of the peer's own.
    pub fn remote_ip(&self, peer: &PeerId) -> Option<std::net::IpAddr> {
        let entry = self.peers.get(peer)?;
        entry
            .connections
            .iter()
            .filter_map(|(_, c)| {
                Some((c.since, super::peer_manager::addrs::ip_of(&c.remote_addr)?))
            })
            .min_by_key(|(since, _)| *since)
            .map(|(_, ip)| ip)
    }

    /// Whether this node dialled one of `peer`'s connections.
    pub fn dialled(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|e| e.dialled)
    }

    pub fn connections(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |e| e.connections.len())
    }

    /// If `peer` has two connections of the same transport, what to close.
    /// Two set up within [`SIMULTANEOUS_DIAL_WINDOW`] are a simultaneous
    /// dial: both ends keep the connection dialled by the smaller peer id
    /// (the oldest, if one side dialled both). Further apart: see
    /// [`Duplicate::Later`]. A relayed and a direct connection are not
    /// duplicates: the relayed one is closed when hole punching succeeds.
    pub fn duplicate_to_close(&self, peer: &PeerId, local: &PeerId) -> Option<Duplicate> {
        let entry = self.peers.get(peer)?;
        let smaller_dialed = |c: &Connection| {
            let dialer = if c.outbound { local } else { peer };
            dialer == local.min(peer)
        };
        for (i, (id_a, a)) in entry.connections.iter().enumerate() {
            for (id_b, b) in &entry.connections[i + 1..] {
                let transport = a.transport();
                if transport != b.transport() {
                    continue;
                }
                let apart = a.since.max(b.since) - a.since.min(b.since);
                if apart > SIMULTANEOUS_DIAL_WINDOW {
                    return Some(Duplicate::Later);
                }
                // Keep a over b if a was dialled by the smaller id and b was
                // not, or if both were and a is older.
                let keep_a = match (smaller_dialed(a), smaller_dialed(b)) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => a.since <= b.since,
                };
                return Some(Duplicate::Race(if keep_a { *id_b } else { *id_a }));
            }
        }
        None
    }

    /// Connections of `peer` older than `newer` by more than a
    /// simultaneous dial, of the same transport: once `newer` is known to
    /// come from the same process, they are redundant (the peer dialled
    /// again because it lost them, or `newer` is a dial-back).
    pub fn superseded(&self, peer: &PeerId, newer: ConnectionId) -> Vec<ConnectionId> {
        let Some(entry) = self.peers.get(peer) else {
            return Vec::new();
        };
        let Some((_, new)) = entry.connections.iter().find(|(id, _)| *id == newer) else {
            return Vec::new();
        };
        entry
            .connections
            .iter()
            .filter(|(id, c)| {
                *id != newer
                    && c.transport() == new.transport()
                    && c.since + SIMULTANEOUS_DIAL_WINDOW < new.since
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Connections of `peer` that go through a relay.
    pub fn relayed_connections(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.peers.get(peer).map_or_else(Vec::new, |e| {
            e.connections
                .iter()
                .filter(|(_, c)| c.transport() == Transport::Relayed)
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// Whether `peer`'s connection `id` goes through a relay.
    pub fn is_relayed(&self, peer: &PeerId, id: ConnectionId) -> bool {
        self.peers.get(peer).is_some_and(|e| {
            e.connections
                .iter()
                .any(|(c, conn)| *c == id && conn.transport() == Transport::Relayed)
        })
    }

    /// The addresses this node reached `peer` at by dialling it directly.
    pub fn dialled_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).map_or_else(Vec::new, |e| {
            e.connections
                .iter()
                .filter(|(_, c)| c.outbound && c.transport() != Transport::Relayed)
                .map(|(_, c)| c.remote_addr.clone())
                .collect()
        })
    }

    /// Connections of `peer` that do not go through a relay.
    pub fn direct_connections(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |e| {
            e.connections
                .iter()
                .filter(|(_, c)| c.transport() != Transport::Relayed)
                .count()
        })
    }

    /// Open connections that go through a relay, to any peer.
    pub fn relayed_connection_count(&self) -> usize {
        self.peers
            .values()
            .flat_map(|e| &e.connections)
            .filter(|(_, c)| c.transport() == Transport::Relayed)
            .count()
    }

    pub fn has_quic(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|e| {
            e.connections
                .iter()
                .any(|(_, c)| c.transport() == Transport::Quic)
        })
    }

    pub fn non_quic_connections(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.peers.get(peer).map_or_else(Vec::new, |e| {
            e.connections
                .iter()
                .filter(|(_, c)| c.transport() != Transport::Quic)
                .map(|(id, _)| *id)
                .collect()
        })
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn info(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(peer, e)| PeerInfo {
                peer_id: peer.to_string(),
                transport: e
                    .connections
                    .iter()
                    .min_by_key(|(_, c)| c.since)
                    .map(|(_, c)| c.transport())
                    .unwrap_or(Transport::Other),
                connections: e
                    .connections
                    .iter()
                    .map(|(_, c)| ConnectionInfo {
                        remote_addr: c.remote_addr.to_string(),
                        transport: c.transport(),
                        direction: if c.outbound { "outbound" } else { "inbound" }.into(),
                        established_secs: now.duration_since(c.since).as_secs(),
                    })
                    .collect(),
                listen_addrs: e.listen_addrs.iter().map(|a| a.to_string()).collect(),
                agent_version: e.agent_version.clone(),
                rtt: e.rtt.info(),
                ping_failures: e.ping_failures,
                rejected_messages: e.rejected_messages,
                // Filled in by the network task, which owns the breakers.
                breaker: String::new(),
                quic_failures: 0,
                quic_successes: 0,
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_window_keeps_the_latest_samples() {
        let mut rtt = RollingRtt::default();
        assert!(rtt.info().is_none());
        for ms in 1..=20u64 {
            rtt.record(Duration::from_millis(ms));
        }
        let info = rtt.info().unwrap();
        assert_eq!(info.samples, RTT_WINDOW);
        assert_eq!(info.last_ms, 20.0);
        // mean of 5..=20
        assert!((info.mean_ms - 12.5).abs() < 1e-9);
    }

    #[test]
    fn transports_are_told_apart_by_address() {
        let q: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        let t: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert_eq!(transport_of(&q), Transport::Quic);
        assert_eq!(transport_of(&t), Transport::Tcp);
    }

    #[test]
    fn both_ends_close_the_same_duplicate() {
        let (x, y) = (PeerId::random(), PeerId::random());
        let tcp = |port: u16| -> Multiaddr { format!("/ip4/10.0.0.1/tcp/{port}").parse().unwrap() };
        let dialer = |port| ConnectedPoint::Dialer {
            address: tcp(port),
            role_override: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::Reuse,
        };
        let listener = |port| ConnectedPoint::Listener {
            local_addr: tcp(1),
            send_back_addr: tcp(port),
        };
        // x dialled y (connection 1) while y dialled x (connection 2).
        let mut at_x = PeerTable::default();
        at_x.connected(y, ConnectionId::new_unchecked(1), &dialer(7));
        at_x.connected(y, ConnectionId::new_unchecked(2), &listener(8));
        let mut at_y = PeerTable::default();
        at_y.connected(x, ConnectionId::new_unchecked(2), &dialer(8));
        at_y.connected(x, ConnectionId::new_unchecked(1), &listener(7));
        let Some(Duplicate::Race(closed_at_x)) = at_x.duplicate_to_close(&y, &x) else {
            panic!("a race")
        };
        let Some(Duplicate::Race(closed_at_y)) = at_y.duplicate_to_close(&x, &y) else {
            panic!("a race")
        };
        // The same underlying connection (same ids here by construction).
        assert_eq!(closed_at_x, closed_at_y);
        let kept_dialer = if closed_at_x == ConnectionId::new_unchecked(1) {
            y
        } else {
            x
        };
        assert_eq!(kept_dialer, x.min(y));
    }

    #[test]
    fn a_connection_long_after_another_is_not_a_race_and_supersedes_it() {
        let (x, y) = (PeerId::random(), PeerId::random());
        let (old, new) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        let quic = |port: u16| -> Multiaddr {
            format!("/ip4/10.0.0.1/udp/{port}/quic-v1").parse().unwrap()
        };
        let mut table = PeerTable::default();
        // Whichever end dialled the old connection, the newer one
        // supersedes it (once identify shows the same process).
        for old_outbound in [true, false] {
            let old_end = if old_outbound {
                ConnectedPoint::Dialer {
                    address: quic(7),
                    role_override: libp2p::core::Endpoint::Dialer,
                    port_use: libp2p::core::transport::PortUse::Reuse,
                }
            } else {
                ConnectedPoint::Listener {
                    local_addr: quic(1),
                    send_back_addr: quic(7),
                }
            };
            table.connected(y, old, &old_end);
            table.peers.get_mut(&y).unwrap().connections[0].1.since -= Duration::from_secs(10);
            table.connected(
                y,
                new,
                &ConnectedPoint::Listener {
                    local_addr: quic(1),
                    send_back_addr: quic(9),
                },
            );
            assert_eq!(table.duplicate_to_close(&y, &x), Some(Duplicate::Later));
            assert_eq!(table.superseded(&y, new), vec![old]);
            assert!(table.superseded(&y, old).is_empty());
            table.closed(&y, old);
            table.closed(&y, new);
        }
        // A relayed connection and a direct one are never duplicates.
        let relayed: Multiaddr = format!("/ip4/10.0.0.5/udp/4001/quic-v1/p2p/{x}/p2p-circuit")
            .parse()
            .unwrap();
        table.connected(
            y,
            old,
            &ConnectedPoint::Listener {
                local_addr: relayed.clone(),
                send_back_addr: relayed,
            },
        );
        table.peers.get_mut(&y).unwrap().connections[0].1.since -= Duration::from_secs(10);
        table.connected(
            y,
            new,
            &ConnectedPoint::Listener {
                local_addr: quic(1),
                send_back_addr: quic(9),
            },
        );
        assert_eq!(table.duplicate_to_close(&y, &x), None);
        assert!(table.superseded(&y, new).is_empty());
        assert_eq!(table.relayed_connections(&y), vec![old]);
        assert_eq!(table.relayed_connection_count(), 1);
        // Neither was dialled directly by this node.
        assert!(table.dialled_addrs(&y).is_empty());
        // Where the peer is seen: at its direct connection, though the
        // relayed one is older; nowhere once only the relayed one is left.
        assert_eq!(
            table.remote_ip(&y),
            super::super::peer_manager::addrs::ip_of(&quic(9))
        );
        table.closed(&y, new);
        assert_eq!(table.remote_ip(&y), None);
    }

    #[test]
    fn a_new_run_of_a_connected_peer_is_a_restart() {
        let mut table = PeerTable::default();
        let peer = PeerId::random();
        let ep = ConnectedPoint::Listener {
            local_addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            send_back_addr: "/ip4/127.0.0.1/tcp/2".parse().unwrap(),
        };
        table.connected(peer, ConnectionId::new_unchecked(1), &ep);
        assert!(!table.identified(&peer, "agentmesh/0.1.0 run/aa".into(), vec![]));
        assert!(!table.identified(&peer, "agentmesh/0.1.0 run/aa".into(), vec![]));
        assert!(table.identified(&peer, "agentmesh/0.1.0 run/bb".into(), vec![]));
        // Other software has no run: never taken for a restart.
        assert!(!table.identified(&peer, "rust-libp2p/0.47".into(), vec![]));
    }

    #[test]
    fn identified_peers_are_listed_by_their_oldest_connection() {
        let mut table = PeerTable::default();
        let (old, young, anonymous) = (PeerId::random(), PeerId::random(), PeerId::random());
        let ep = ConnectedPoint::Listener {
            local_addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            send_back_addr: "/ip4/127.0.0.1/tcp/2".parse().unwrap(),
        };
        for (n, peer) in [old, young, anonymous].into_iter().enumerate() {
            table.connected(peer, ConnectionId::new_unchecked(n), &ep);
        }
        // `old` also has a newer connection: its oldest one counts.
        table.connected(old, ConnectionId::new_unchecked(9), &ep);
        for peer in [old, anonymous] {
            table.peers.get_mut(&peer).unwrap().connections[0].1.since -= Duration::from_secs(30);
        }
        for peer in [old, young] {
            table.identified(&peer, "agentmesh/0.1.0 run/aa".into(), vec![]);
        }
        let cutoff = Instant::now() - Duration::from_secs(10);
        // `anonymous` never identified itself: not listed however old.
        assert_eq!(table.identified_before(cutoff), vec![old]);
        table.closed(&old, ConnectionId::new_unchecked(0));
        assert!(table.identified_before(cutoff).is_empty());
    }

    #[test]
    fn a_peer_leaves_the_table_with_its_last_connection() {
        let mut table = PeerTable::default();
        let peer = PeerId::random();
        let ep = ConnectedPoint::Listener {
            local_addr: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            send_back_addr: "/ip4/127.0.0.1/tcp/2".parse().unwrap(),
        };
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        table.connected(peer, a, &ep);
        table.connected(peer, b, &ep);
        table.closed(&peer, a);
        assert_eq!(table.len(), 1);
        assert_eq!(table.info()[0].connections.len(), 1);
        table.closed(&peer, b);
        assert!(table.is_empty());
    }
}
