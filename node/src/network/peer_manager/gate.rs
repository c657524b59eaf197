//! The connection gate: a `NetworkBehaviour` that refuses connections the
//! peer manager's limits do not allow, before any other protocol sees them.
//!
//! - Inbound connections are capped below the total, so that strangers
//!   dialling in can never take the slots the node keeps for the peers it
//!   chooses itself (outbound): an eclipse needs the node's own choices.
//! - Inbound connections per IP and per subnet are capped, so one host (or
//!   one /24) with throwaway identities takes a few slots, not all.
//! - Banned IPs are refused before the handshake.
//!
//! Addresses in the exempt networks (loopback by default: a local testnet
//! runs every node on one address) are subject to neither per-address
//! limits nor IP bans. Total, per-peer and pending limits are
//! `libp2p-connection-limits`' job.

use super::addrs::{ip_of, relay_ip_of, subnet_of};
use ipnet::IpNet;
use libp2p::core::{transport::PortUse, ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::{
    behaviour::{ConnectionClosed, ConnectionEstablished, ListenFailure},
    dummy, CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;
use lru::LruCache;
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::task::{Context, Poll};
use std::time::Instant;

/// Most IP bans kept; beyond it the least recently issued is dropped.
const MAX_IP_BANS: usize = 4096;

#[derive(Debug, Clone)]
pub struct GateLimits {
    /// Most established connections in all.
    pub max_peers: usize,
    /// Most established inbound connections (less than `max_peers`: the
    /// rest is kept for connections this node dials).
    pub max_inbound: usize,
    /// Most inbound connections (pending or established) from one IP.
    pub max_per_ip: usize,
    /// Most inbound connections from one subnet (/24, /48).
    pub max_per_subnet: usize,
    /// Addresses to which neither per-address limits nor IP bans apply.
    pub exempt: Vec<IpNet>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    #[error("the address is banned")]
    IpBanned,
    #[error("inbound slots are full")]
    InboundFull,
    #[error("all peer slots are full")]
    Full,
    #[error("too many connections from this address")]
    PerIp,
    #[error("too many connections from this subnet")]
    PerSubnet,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::IpBanned => "ip_banned",
            Refusal::InboundFull => "inbound_full",
            Refusal::Full => "full",
            Refusal::PerIp => "per_ip",
            Refusal::PerSubnet => "per_subnet",
        }
    }

    pub const ALL: [Refusal; 5] = [
        Refusal::IpBanned,
        Refusal::InboundFull,
        Refusal::Full,
        Refusal::PerIp,
        Refusal::PerSubnet,
    ];
}

/// The key bans and strikes are kept under: the address itself for IPv4,
/// its /64 for IPv6 (one host may rotate through a whole /64).
pub fn ban_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => IpNet::new(ip, 64).map_or(ip, |n| n.trunc().addr()),
    }
}

struct Inbound {
    peer: Option<PeerId>,
    /// The counted address, if per-address limits apply to it.
    counted: Option<IpAddr>,
    /// Through a relay: `counted` is the relay's address, which the
    /// peer's misbehaviour must not strike (a Sybil behind a relay would
    /// get the relay, and every peer behind it, banned).
    relayed: bool,
}

pub struct Gate {
    limits: GateLimits,
    /// Inbound connections, pending (no peer yet) or established.
    inbound: HashMap<ConnectionId, Inbound>,
    established_inbound: usize,
    outbound: HashSet<ConnectionId>,
    per_ip: HashMap<IpAddr, usize>,
    per_subnet: HashMap<IpNet, usize>,
    /// Inbound connections through each relay (by its address), held to
    /// `max_per_subnet`: apart from the relay's own.
    per_relay: HashMap<IpAddr, usize>,
    /// Banned addresses and until when.
    ip_bans: LruCache<IpAddr, Instant>,
    refused: HashMap<Refusal, u64>,
    to_close: VecDeque<(PeerId, ConnectionId)>,
}

impl Gate {
    pub fn new(limits: GateLimits) -> Gate {
        Gate {
            limits,
            inbound: HashMap::new(),
            established_inbound: 0,
            outbound: HashSet::new(),
            per_ip: HashMap::new(),
            per_subnet: HashMap::new(),
            per_relay: HashMap::new(),
            ip_bans: LruCache::new(NonZeroUsize::new(MAX_IP_BANS).expect("non-zero")),
            refused: HashMap::new(),
            to_close: VecDeque::new(),
        }
    }

    pub fn limits(&self) -> &GateLimits {
        &self.limits
    }

    pub fn is_exempt(&self, ip: &IpAddr) -> bool {
        self.limits.exempt.iter().any(|net| net.contains(ip))
    }

    /// Refuses `ip` until `until` and closes its inbound connections.
    /// Exempt addresses are never banned. Returns whether it was banned.
    pub fn ban_ip(&mut self, ip: IpAddr, until: Instant) -> bool {
        if self.is_exempt(&ip) {
            return false;
        }
        let key = ban_key(ip);
        self.ip_bans.put(key, until);
        for (id, conn) in &self.inbound {
            if let (Some(peer), Some(counted)) = (conn.peer, conn.counted) {
                if ban_key(counted) == key {
                    self.to_close.push_back((peer, *id));
                }
            }
        }
        true
    }

    pub fn is_ip_banned(&mut self, ip: &IpAddr, now: Instant) -> bool {
        let key = ban_key(*ip);
        // `peek`: a lookup does not make a ban the last to be evicted.
        match self.ip_bans.peek(&key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.ip_bans.pop(&key);
                false
            }
            None => false,
        }
    }

    pub fn ip_bans(&self) -> usize {
        self.ip_bans.len()
    }

    pub fn inbound_count(&self) -> usize {
        self.established_inbound
    }

    pub fn outbound_count(&self) -> usize {
        self.outbound.len()
    }

    /// The non-exempt addresses `peer` is connected from (inbound,
    /// directly).
    pub fn counted_ips_of(&self, peer: &PeerId) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .inbound
            .values()
            .filter(|c| c.peer.as_ref() == Some(peer) && !c.relayed)
            .filter_map(|c| c.counted)
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Connections refused so far, by reason.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused.get(&reason).copied().unwrap_or(0)
    }

    fn refuse(&mut self, reason: Refusal) -> ConnectionDenied {
        *self.refused.entry(reason).or_default() += 1;
        ConnectionDenied::new(reason)
    }

    /// The address per-address limits count for a connection from
    /// `remote` to `local`, or None where they do not apply. A connection
    /// through a relay counts under the relay's address: its peers share
    /// it, so one relay brings in at most `max_peers_per_subnet` of them
    /// (a relay stands for many hosts), and a banned relay address brings
    /// in none.
    fn counted_ip(&self, local: &Multiaddr, remote: &Multiaddr) -> Option<IpAddr> {
        relay_ip_of(local)
            .or_else(|| ip_of(remote))
            .filter(|ip| !self.is_exempt(ip))
    }

    fn release(&mut self, id: &ConnectionId) {
        let Some(conn) = self.inbound.remove(id) else {
            return;
        };
        if conn.peer.is_some() {
            self.established_inbound -= 1;
        }
        match conn.counted {
            Some(ip) if conn.relayed => decrement(&mut self.per_relay, &ip),
            Some(ip) => {
                decrement(&mut self.per_ip, &ip);
                decrement(&mut self.per_subnet, &subnet_of(ip));
            }
            None => {}
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let counted = self.counted_ip(local, remote);
        let relayed = relay_ip_of(local).is_some();
        if let Some(ip) = counted.filter(|_| relayed) {
            // Peers through one relay: as many as one subnet may bring.
            if self.is_ip_banned(&ip, Instant::now()) {
                return Err(self.refuse(Refusal::IpBanned));
            }
            if self.per_relay.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_subnet {
                return Err(self.refuse(Refusal::PerIp));
            }
            *self.per_relay.entry(ip).or_default() += 1;
        } else if let Some(ip) = counted {
            if self.is_ip_banned(&ip, Instant::now()) {
                return Err(self.refuse(Refusal::IpBanned));
            }
            if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip {
                return Err(self.refuse(Refusal::PerIp));
            }
            let subnet = subnet_of(ip);
            if self.per_subnet.get(&subnet).copied().unwrap_or(0) >= self.limits.max_per_subnet {
                return Err(self.refuse(Refusal::PerSubnet));
            }
            *self.per_ip.entry(ip).or_default() += 1;
            *self.per_subnet.entry(subnet).or_default() += 1;
        }
        self.inbound.insert(
            connection_id,
            Inbound {
                peer: None,
                counted,
                relayed,
            },
        );
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Banned while its handshake was under way.
        let counted = self.inbound.get(&connection_id).and_then(|c| c.counted);
        if counted.is_some_and(|ip| self.is_ip_banned(&ip, Instant::now())) {
            self.release(&connection_id);
            return Err(self.refuse(Refusal::IpBanned));
        }
        if self.established_inbound >= self.limits.max_inbound
            || self.established_inbound + self.outbound.len() >= self.limits.max_peers
        {
            self.release(&connection_id);
            return Err(self.refuse(Refusal::InboundFull));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.established_inbound + self.outbound.len() >= self.limits.max_peers {
            return Err(self.refuse(Refusal::Full));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => match endpoint {
                ConnectedPoint::Listener { .. } => {
                    if let Some(conn) = self.inbound.get_mut(&connection_id) {
                        if conn.peer.is_none() {
                            self.established_inbound += 1;
                        }
                        conn.peer = Some(peer_id);
                    }
                }
                ConnectedPoint::Dialer { .. } => {
                    self.outbound.insert(connection_id);
                }
            },
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.release(&connection_id);
                self.outbound.remove(&connection_id);
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.release(&connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.to_close.pop_front() {
            Some((peer_id, id)) => Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(id),
            }),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_inbound: usize, max_per_ip: usize, max_per_subnet: usize) -> Gate {
        Gate::new(GateLimits {
            max_inbound,
            max_peers: max_inbound + 4,
            max_per_ip,
            max_per_subnet,
            exempt: vec!["127.0.0.1/32".parse().unwrap()],
        })
    }

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/4001").parse().unwrap()
    }

    fn local() -> Multiaddr {
        addr("10.0.0.1")
    }

    /// Runs a connection from `ip` through the gate as the swarm would.
    fn connect(g: &mut Gate, ip: &str) -> Result<ConnectionId, Refusal> {
        connect_between(g, local(), addr(ip), PeerId::random()).map(|(id, _)| id)
    }

    /// Runs a connection from `remote` (peer `peer`) to `local` through
    /// the gate as the swarm would.
    fn connect_between(
        g: &mut Gate,
        local: Multiaddr,
        remote: Multiaddr,
        peer: PeerId,
    ) -> Result<(ConnectionId, PeerId), Refusal> {
        let id = ConnectionId::new_unchecked(rand_id());
        let refusal = |e: ConnectionDenied| e.downcast::<Refusal>().unwrap();
        g.handle_pending_inbound_connection(id, &local, &remote)
            .map_err(refusal)?;
        g.handle_established_inbound_connection(id, peer, &local, &remote)
            .map_err(refusal)?;
        let endpoint = ConnectedPoint::Listener {
            local_addr: local,
            send_back_addr: remote,
        };
        g.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
        Ok((id, peer))
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn close(g: &mut Gate, id: ConnectionId, ip: &str) {
        let endpoint = ConnectedPoint::Listener {
            local_addr: local(),
            send_back_addr: addr(ip),
        };
        g.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: PeerId::random(),
            connection_id: id,
            endpoint: &endpoint,
            cause: None,
            remaining_established: 0,
        }));
    }

    #[test]
    fn one_address_gets_its_share_and_a_closed_connection_frees_it() {
        let mut g = gate(100, 3, 100);
        let ids: Vec<_> = (0..3)
            .map(|_| connect(&mut g, "203.0.113.5").unwrap())
            .collect();
        assert_eq!(connect(&mut g, "203.0.113.5"), Err(Refusal::PerIp));
        assert!(connect(&mut g, "203.0.113.6").is_ok());
        close(&mut g, ids[0], "203.0.113.5");
        assert!(connect(&mut g, "203.0.113.5").is_ok());
        assert_eq!(g.refused(Refusal::PerIp), 1);
    }

    #[test]
    fn peers_through_one_relay_share_its_address_limit_but_are_not_struck_there() {
        let mut g = gate(100, 2, 3);
        let relay = "/ip4/203.0.113.9/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit";
        let relayed = |g: &mut Gate| {
            let peer = PeerId::random();
            let remote: Multiaddr = format!("/p2p/{peer}").parse().unwrap();
            connect_between(g, relay.parse().unwrap(), remote, peer).map(|(_, p)| p)
        };
        let peers: Vec<PeerId> = (0..3).map(|_| relayed(&mut g).unwrap()).collect();
        assert_eq!(relayed(&mut g), Err(Refusal::PerIp));
        // The relay's own address and its subnet are unaffected; no
        // relayed peer names the relay's address for strikes.
        assert!(connect(&mut g, "203.0.113.9").is_ok());
        assert!(connect(&mut g, "203.0.113.10").is_ok());
        assert!(g.counted_ips_of(&peers[0]).is_empty());
    }

    #[test]
    fn a_subnet_is_capped_and_exempt_addresses_are_not() {
        let mut g = gate(100, 2, 5);
        for i in 0..5 {
            connect(&mut g, &format!("198.51.100.{i}")).unwrap();
        }
        assert_eq!(connect(&mut g, "198.51.100.77"), Err(Refusal::PerSubnet));
        assert!(connect(&mut g, "198.51.101.1").is_ok());
        for _ in 0..20 {
            connect(&mut g, "127.0.0.1").unwrap();
        }
    }

    #[test]
    fn inbound_slots_run_out_whatever_the_address() {
        let mut g = gate(10, 100, 100);
        for _ in 0..10 {
            connect(&mut g, "127.0.0.1").unwrap();
        }
        assert_eq!(connect(&mut g, "127.0.0.1"), Err(Refusal::InboundFull));
        assert_eq!(g.inbound_count(), 10);
        // A refused connection leaves no count behind.
        assert_eq!(connect(&mut g, "203.0.113.1"), Err(Refusal::InboundFull));
        assert!(g.per_ip.is_empty());
    }

    #[test]
    fn a_banned_address_is_refused_and_its_connections_closed() {
        let mut g = gate(100, 10, 100);
        let id = connect(&mut g, "203.0.113.9").unwrap();
        assert!(g.ban_ip(
            "203.0.113.9".parse().unwrap(),
            Instant::now() + std::time::Duration::from_secs(60)
        ));
        assert_eq!(g.to_close.len(), 1);
        assert_eq!(g.to_close[0].1, id);
        assert_eq!(connect(&mut g, "203.0.113.9"), Err(Refusal::IpBanned));
        // An expired ban lets it in again; exempt addresses are never banned.
        g.ban_ip("203.0.113.9".parse().unwrap(), Instant::now());
        assert!(connect(&mut g, "203.0.113.9").is_ok());
        assert!(!g.ban_ip("127.0.0.1".parse().unwrap(), Instant::now()));
    }
}
