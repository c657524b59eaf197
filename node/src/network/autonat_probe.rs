//! AutoNAT v2's client, shown only the address candidates worth testing.
//!
//! identify reports, as a candidate external address, whatever address any
//! connected peer says it sees this node at, strangers included, and the
//! client keeps every candidate for good and tests each one (each test
//! costs a server a dial, and a failed one counts towards "private"). So
//! candidates pass only when:
//!
//! - they are plain `/ip4|ip6/<ip>/tcp/<port>` or `.../udp/<port>/quic-v1`
//!   addresses on a port this node listens on: peers connected through a
//!   relay see a relayed address (or a bare `/p2p/<id>`), which says
//!   nothing about NAT, and anything else is not where this node listens;
//! - a member this node dialled itself saw it at that IP
//!   ([`Probe::vouch`]; the caller decides who may vouch). A candidate
//!   that arrives first waits, in a small buffer, for such a word;
//! - fewer than [`MAX_CANDIDATES`] have passed so far.

use super::peer_manager::addrs::ip_of;
use libp2p::autonat::v2::client;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NewExternalAddrCandidate,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::task::{Context, Poll};

/// Most candidates ever passed to the client (it never forgets one), and
/// most waiting for a member's word.
pub const MAX_CANDIDATES: usize = 32;
/// Most IPs members vouched for that are remembered.
const MAX_VOUCHED: usize = 16;

#[derive(Default)]
pub struct Probe {
    inner: client::Behaviour,
    vouched: VecDeque<IpAddr>,
    waiting: VecDeque<Multiaddr>,
    passed: HashSet<Multiaddr>,
    /// Ports this node listens on, by listener address.
    listening: HashSet<Multiaddr>,
}

impl Probe {
    /// An admitted member saw this node at `ip`.
    pub fn vouch(&mut self, ip: IpAddr) {
        if self.vouched.contains(&ip) {
            return;
        }
        if self.vouched.len() == MAX_VOUCHED {
            self.vouched.pop_front();
        }
        self.vouched.push_back(ip);
        let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|a| ip_of(a) == Some(ip));
        self.waiting = still.into();
        for addr in ready {
            self.pass(addr);
        }
    }

    fn candidate(&mut self, addr: &Multiaddr) {
        let on_our_port = port_of(addr)
            .is_some_and(|port| self.listening.iter().any(|l| port_of(l) == Some(port)));
        if !worth_testing(addr) || !on_our_port {
            return;
        }
        // A peer sees the transport its connection runs on, QUIC first:
        // the node's other transport at the same IP is tested as well, or
        // a node whose connections all run QUIC would never confirm (and
        // so never announce) its TCP address, and peers that cannot use
        // UDP could not reach it.
        let siblings = self.other_transport_at(addr);
        for candidate in std::iter::once(addr.clone()).chain(siblings) {
            self.consider(candidate);
        }
    }

    /// `addr`'s IP with each port this node listens on by the other
    /// transport (TCP for a QUIC address and the reverse), on listeners of
    /// the same IP family bound to all interfaces or to that very IP.
    fn other_transport_at(&self, addr: &Multiaddr) -> Vec<Multiaddr> {
        let (Some(ip), Some((quic, _))) = (addr.iter().next(), port_of(addr)) else {
            return Vec::new();
        };
        let covers = |listener: &Multiaddr| match (listener.iter().next(), &ip) {
            (Some(Protocol::Ip4(l)), Protocol::Ip4(seen)) => l.is_unspecified() || l == *seen,
            (Some(Protocol::Ip6(l)), Protocol::Ip6(seen)) => l.is_unspecified() || l == *seen,
            _ => false,
        };
        let mut out: Vec<Multiaddr> = self
            .listening
            .iter()
            .filter(|l| covers(l))
            .filter_map(port_of)
            .filter(|(other_quic, _)| *other_quic != quic)
            .map(|(other_quic, port)| {
                let at = Multiaddr::empty().with(ip.clone());
                if other_quic {
                    at.with(Protocol::Udp(port)).with(Protocol::QuicV1)
                } else {
                    at.with(Protocol::Tcp(port))
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn consider(&mut self, addr: Multiaddr) {
        if self.passed.contains(&addr) {
            return;
        }
        if ip_of(&addr).is_some_and(|ip| self.vouched.contains(&ip)) {
            self.pass(addr);
        } else if !self.waiting.contains(&addr) {
            if self.waiting.len() == MAX_CANDIDATES {
                self.waiting.pop_front();
            }
            self.waiting.push_back(addr);
        }
    }

    fn pass(&mut self, addr: Multiaddr) {
        if self.passed.len() >= MAX_CANDIDATES || !self.passed.insert(addr.clone()) {
            return;
        }
        self.inner
            .on_swarm_event(FromSwarm::NewExternalAddrCandidate(
                NewExternalAddrCandidate { addr: &addr },
            ));
    }
}

/// Whether a candidate is a plain direct TCP or QUIC address (worth a
/// dial-back).
pub fn worth_testing(addr: &Multiaddr) -> bool {
    port_of(addr).is_some()
}

/// The port of `/ip4|ip6/<ip>/tcp/<port>` or `/ip4|ip6/<ip>/udp/<port>/quic-v1`,
/// told apart by transport; None for any other shape.
fn port_of(addr: &Multiaddr) -> Option<(bool, u16)> {
    let parts: Vec<Protocol> = addr.iter().collect();
    match parts.as_slice() {
        [Protocol::Ip4(_) | Protocol::Ip6(_), Protocol::Tcp(port)] => Some((false, *port)),
        [Protocol::Ip4(_) | Protocol::Ip6(_), Protocol::Udp(port), Protocol::QuicV1] => {
            Some((true, *port))
        }
        _ => None,
    }
}

impl NetworkBehaviour for Probe {
    type ConnectionHandler = <client::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = client::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::NewExternalAddrCandidate(c) => {
                self.candidate(c.addr);
                return;
            }
            FromSwarm::NewListenAddr(l) => {
                self.listening.insert(l.addr.clone());
            }
            FromSwarm::ExpiredListenAddr(l) => {
                self.listening.remove(l.addr);
            }
            _ => {}
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// A probe on a node listening at `tcp` and `quic` ports.
    fn listening_on(tcp: u16, quic: u16) -> Probe {
        let mut probe = Probe::default();
        probe
            .listening
            .insert(a(&format!("/ip4/0.0.0.0/tcp/{tcp}")));
        probe
            .listening
            .insert(a(&format!("/ip4/0.0.0.0/udp/{quic}/quic-v1")));
        probe
    }

    #[test]
    fn candidates_wait_for_a_member_and_are_bounded() {
        let mut probe = listening_on(4001, 4001);
        // A stranger's claims: none reaches the client.
        for i in 0..100u32 {
            probe.candidate(&a(&format!("/ip4/198.51.{}.{}/tcp/4001", i / 256, i % 256)));
        }
        assert!(probe.passed.is_empty());
        assert_eq!(probe.waiting.len(), MAX_CANDIDATES);
        // A member saw us at 203.0.113.5: its candidates pass, now or later.
        probe.candidate(&a("/ip4/203.0.113.5/udp/4001/quic-v1"));
        probe.vouch("203.0.113.5".parse().unwrap());
        probe.candidate(&a("/ip4/203.0.113.5/tcp/4001"));
        assert_eq!(probe.passed.len(), 2);
        // Other shapes and ports at that IP never pass.
        for junk in [
            "/ip4/203.0.113.5/tcp/4001/ws",
            "/ip4/203.0.113.5/udp/4001/quic",
            "/ip4/203.0.113.5/tcp/4002",
            "/ip4/203.0.113.5/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ] {
            probe.candidate(&a(junk));
        }
        assert_eq!(probe.passed.len(), 2);
        // However many a member vouches for, at most MAX_CANDIDATES pass.
        for i in 0..40u32 {
            let ip = format!("192.0.2.{i}");
            probe.vouch(ip.parse().unwrap());
            probe.candidate(&a(&format!("/ip4/{ip}/tcp/4001")));
        }
        assert_eq!(probe.passed.len(), MAX_CANDIDATES);
        assert!(probe.vouched.len() <= MAX_VOUCHED);
    }

    #[test]
    fn the_other_transport_is_tested_at_the_ip_a_peer_saw() {
        let mut probe = listening_on(4002, 4001);
        probe.vouch("203.0.113.5".parse().unwrap());
        // Seen over QUIC only: TCP, on the port it listens on, is tested too.
        probe.candidate(&a("/ip4/203.0.113.5/udp/4001/quic-v1"));
        let mut passed: Vec<String> = probe.passed.iter().map(|p| p.to_string()).collect();
        passed.sort();
        assert_eq!(
            passed,
            [
                "/ip4/203.0.113.5/tcp/4002",
                "/ip4/203.0.113.5/udp/4001/quic-v1"
            ]
        );
        // A claim on a port it does not listen on brings no sibling.
        probe.candidate(&a("/ip4/203.0.113.5/udp/5000/quic-v1"));
        assert_eq!(probe.passed.len(), 2);
        // Nor does a listener of the other family, or one bound elsewhere.
        let mut probe = Probe::default();
        for l in [
            "/ip4/127.0.0.1/tcp/4003",
            "/ip6/::/tcp/4004",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
        ] {
            probe.listening.insert(a(l));
        }
        probe.vouch("203.0.113.5".parse().unwrap());
        probe.candidate(&a("/ip4/203.0.113.5/udp/4001/quic-v1"));
        assert_eq!(probe.passed.len(), 1);
    }

    #[test]
    fn only_direct_ip_addresses_are_tested() {
        assert!(worth_testing(&a("/ip4/203.0.113.5/udp/4001/quic-v1")));
        assert!(!worth_testing(&a(
            "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
        )));
        assert!(!worth_testing(&a(
            "/ip4/203.0.113.5/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
        )));
    }
}
