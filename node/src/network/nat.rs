//! Hosts behind NAT: whether this node is reachable, the relay slots it
//! holds while it is not, and hole punching.
//!
//! - **Reachability.** Peers tell this node the address they see it at
//!   (identify); AutoNAT v2 asks a peer to dial that address back on a new
//!   connection. A dial-back that arrives confirms the address, and only
//!   confirmed or configured addresses make the node `public`. Failed
//!   dial-backs with none confirmed make it `private`.
//! - **Relays.** A private node reserves a slot on up to `nat.max_relays`
//!   relays: the configured ones first, then admitted members that offer
//!   the relay service. Its `/p2p-circuit` addresses then reach its peers
//!   through identify and Kademlia like any other address.
//! - **Relay service.** Offered only while this node is public by a direct
//!   address (a relayed one would make it a relay through a relay).
//! - **Hole punching.** DCUtR runs on every relayed connection; once a
//!   direct connection is up, the relayed one is closed.

use super::Network;
use crate::config::ReachabilityMode;
use crate::types::NatStatus;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{autonat, dcutr, relay, Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// How long a relay whose reservation failed is left alone before it is
/// asked again.
const RELAY_RETRY: Duration = Duration::from_secs(30);

/// New relayed connections made to try hole punching again after it
/// failed, per peer.
const MAX_PUNCH_RETRIES: u32 = 2;
/// Wait before such a connection, times the retry's number; the peer with
/// the larger id waits [`PUNCH_RETRY_STAGGER`] more, so that the two ends
/// do not both dial at once (see [`Nat::punch_failed`]).
const PUNCH_RETRY_DELAY: Duration = Duration::from_secs(4);
const PUNCH_RETRY_STAGGER: Duration = Duration::from_secs(10);

/// Distinct peers that must have dialled an address back before it counts
/// as confirmed. One, because libp2p's AutoNAT v2 client tests each
/// candidate once: one lying member (say, one that answers from the socket
/// this node already talks to) can make a node behind NAT think it is
/// public (docs/nat.md, "Not done yet").
pub const MIN_CONFIRMATIONS: usize = 1;

/// Whether an address goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    Unknown,
    Public,
    Private,
}

impl Reachability {
    pub fn name(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

/// Where UPnP port mapping stands (`nat.upnp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upnp {
    Off,
    Searching,
    /// A gateway answered and mapped at least one address.
    Found,
    /// No gateway answered the search.
    NoGateway,
    /// The gateway's own external address is private (behind another
    /// NAT): a mapping on it would not make this node reachable.
    NotRoutable,
}

#[derive(Debug)]
struct Reservation {
    listener: ListenerId,
    accepted: bool,
}

/// What the node knows about its own reachability and its relays.
#[derive(Debug)]
pub struct Nat {
    mode: ReachabilityMode,
    max_relays: usize,
    probes_ok: u64,
    probes_failed: u64,
    /// Who dialled each tested address back (only candidates the probe
    /// passed are tested: at most `autonat_probe::MAX_CANDIDATES`).
    confirmations: HashMap<Multiaddr, HashSet<PeerId>>,
    /// `network.external_addresses`, and addresses the gateway mapped
    /// (UPnP): reachable as far as the operator or the gateway says.
    configured: Vec<Multiaddr>,
    /// Mapped addresses, each with the listen address it forwards to.
    mapped: HashMap<Multiaddr, Multiaddr>,
    upnp: Upnp,
    /// Relays that may be asked for a slot, with the address to reach
    /// them: configured ones (never forgotten) and members that offer the
    /// service (forgotten when they stop or leave).
    relays: HashMap<PeerId, (Multiaddr, bool)>,
    reservations: HashMap<PeerId, Reservation>,
    /// Relays not to ask again before the given time.
    resting: HashMap<PeerId, Instant>,
    reservations_failed: u64,
    /// Keys this node's order of member relays.
    order: std::collections::hash_map::RandomState,
    hole_punches_ok: u64,
    hole_punches_failed: u64,
    /// Peers whose hole punch failed: retries made, and when the next is
    /// due (connected peers only: forgotten when they leave).
    punch_retries: HashMap<PeerId, (u32, Option<Instant>)>,
    /// As a relay: peers holding a slot (until they disconnect: libp2p's
    /// `ReservationClosed` fires for any of a peer's connections closing,
    /// so it cannot be counted on), circuits open now.
    served_reservations: HashSet<PeerId>,
    served_circuits: usize,
    /// Reservation and circuit requests the relay service refused.
    served_denied: u64,
    serving: bool,
}

impl Nat {
    pub fn new(
        mode: ReachabilityMode,
        max_relays: usize,
        configured_relays: &[(PeerId, Multiaddr)],
        external: &[Multiaddr],
    ) -> Nat {
        Nat {
            mode,
            max_relays,
            probes_ok: 0,
            probes_failed: 0,
            confirmations: HashMap::new(),
            configured: external.to_vec(),
            mapped: HashMap::new(),
            upnp: Upnp::Off,
            relays: configured_relays
                .iter()
                .map(|(peer, addr)| (*peer, (addr.clone(), true)))
                .collect(),
            reservations: HashMap::new(),
            resting: HashMap::new(),
            reservations_failed: 0,
            order: std::collections::hash_map::RandomState::new(),
            hole_punches_ok: 0,
            hole_punches_failed: 0,
            punch_retries: HashMap::new(),
            served_reservations: HashSet::new(),
            served_circuits: 0,
            served_denied: 0,
            serving: false,
        }
    }

    /// Direct addresses this node is reachable at: configured, mapped by
    /// the gateway, or dialled back by [`MIN_CONFIRMATIONS`] peers.
    pub fn confirmed(&self) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = self.configured.clone();
        out.extend(self.mapped.keys().cloned());
        out.extend(
            self.confirmations
                .iter()
                .filter(|(_, servers)| servers.len() >= MIN_CONFIRMATIONS)
                .map(|(addr, _)| addr.clone()),
        );
        out.sort();
        out.dedup();
        out
    }

    pub fn reachability(&self) -> Reachability {
        match self.mode {
            ReachabilityMode::Public => Reachability::Public,
            ReachabilityMode::Private => Reachability::Private,
            ReachabilityMode::Auto if !self.confirmed().is_empty() => Reachability::Public,
            ReachabilityMode::Auto if self.probes_failed > 0 => Reachability::Private,
            ReachabilityMode::Auto => Reachability::Unknown,
        }
    }

    /// A dial-back test of `addr` by `server` came out `ok` or not.
    pub fn on_probe(&mut self, addr: &Multiaddr, server: PeerId, ok: bool) {
        if ok {
            self.probes_ok += 1;
            self.confirmations
                .entry(addr.clone())
                .or_default()
                .insert(server);
        } else {
            self.probes_failed += 1;
        }
    }

    /// UPnP is on: the gateway is being searched for (once, at start-up:
    /// libp2p's behaviour does not search again).
    pub fn upnp_searching(&mut self) {
        self.upnp = Upnp::Searching;
    }

    /// What the UPnP behaviour found: a mapped address counts as confirmed
    /// (the gateway forwards it to this node), an expired one no longer.
    pub fn on_upnp(&mut self, event: &libp2p::upnp::Event) {
        match event {
            libp2p::upnp::Event::NewExternalAddr {
                local_addr,
                external_addr,
            } => {
                self.upnp = Upnp::Found;
                self.mapped
                    .insert(external_addr.clone(), local_addr.clone());
            }
            libp2p::upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                self.mapping_gone(external_addr);
            }
            libp2p::upnp::Event::GatewayNotFound => self.upnp = Upnp::NoGateway,
            libp2p::upnp::Event::NonRoutableGateway => self.upnp = Upnp::NotRoutable,
        }
    }

    /// A listen address went away: libp2p's UPnP behaviour then removes
    /// its mappings without a word, so they are forgotten here. Returns the
    /// mapped addresses that went with it (no longer external addresses).
    pub fn listen_addr_gone(&mut self, local: &Multiaddr) -> Vec<Multiaddr> {
        let gone: Vec<Multiaddr> = self
            .mapped
            .iter()
            .filter(|(_, l)| *l == local)
            .map(|(external, _)| external.clone())
            .collect();
        for external in &gone {
            self.mapping_gone(external);
        }
        gone
    }

    /// A dial-back of a mapped address came in through the mapping: it
    /// proves nothing once the mapping is gone.
    fn mapping_gone(&mut self, external: &Multiaddr) {
        self.mapped.remove(external);
        self.confirmations.remove(external);
    }

    fn upnp_name(&self) -> &'static str {
        match self.upnp {
            Upnp::Off => "off",
            Upnp::Searching => "searching",
            Upnp::Found if !self.mapped.is_empty() => "mapped",
            Upnp::Found => "mapping expired",
            Upnp::NoGateway => "no gateway",
            Upnp::NotRoutable => "gateway not routable",
        }
    }

    /// A member's identify said whether it offers the relay service, and
    /// where it can be dialled. identify arrives per connection: over one
    /// through a relay (`via_relay`) it shows no usable direct address,
    /// which says nothing against the one a direct connection showed, so
    /// it changes nothing but "no service". Over a direct connection it
    /// is the member's word: no direct address, no relay.
    pub fn relay_seen(&mut self, peer: PeerId, serves: bool, via_relay: bool, addrs: &[Multiaddr]) {
        if self
            .relays
            .get(&peer)
            .is_some_and(|(_, configured)| *configured)
        {
            return;
        }
        match addrs.iter().find(|a| !is_relayed(a)) {
            Some(addr) if serves => {
                self.relays.insert(peer, (addr.clone(), false));
            }
            None if serves && via_relay => {}
            _ => {
                self.relays.remove(&peer);
            }
        }
    }

    /// A peer left: it is no longer a relay to pick (a slot this node held
    /// on it ends with its listener), nor holds a slot here.
    pub fn peer_gone(&mut self, peer: &PeerId) {
        self.served_reservations.remove(peer);
        self.punch_retries.remove(peer);
        if self
            .relays
            .get(peer)
            .is_some_and(|(_, configured)| !*configured)
        {
            self.relays.remove(peer);
        }
    }

    /// Relays to ask for a slot now, with the circuit listen address on
    /// each: while private, up to `max_relays` slots in all, configured
    /// relays first, then members picked at random.
    pub fn relays_to_reserve(
        &self,
        reachability: Reachability,
        now: Instant,
    ) -> Vec<(PeerId, Multiaddr)> {
        if reachability != Reachability::Private {
            return Vec::new();
        }
        let wanted = self.max_relays.saturating_sub(self.reservations.len());
        if wanted == 0 {
            return Vec::new();
        }
        let mut picks: Vec<(bool, PeerId, Multiaddr)> = self
            .relays
            .iter()
            .filter(|(peer, _)| !self.reservations.contains_key(peer))
            .filter(|(peer, _)| self.resting.get(peer).is_none_or(|until| *until <= now))
            .map(|(peer, (addr, configured))| {
                let circuit = addr
                    .clone()
                    .with(Protocol::P2p(*peer))
                    .with(Protocol::P2pCircuit);
                (*configured, *peer, circuit)
            })
            .collect();
        // Configured ones first, members in an order of this node's own
        // (a hash keyed at random when it started): peer ids are cheap to
        // grind, so a fixed order would let one member make itself every
        // NATed node's relay.
        picks.sort_by_key(|(configured, peer, _)| (!configured, self.order.hash_one(peer)));
        picks
            .into_iter()
            .take(wanted)
            .map(|(_, peer, addr)| (peer, addr))
            .collect()
    }

    /// Whether this node holds (or is asking for) a slot on `relay`.
    pub fn holds_slot_on(&self, relay: &PeerId) -> bool {
        self.reservations.contains_key(relay)
    }

    pub fn reserving(&mut self, relay: PeerId, listener: ListenerId) {
        self.reservations.insert(
            relay,
            Reservation {
                listener,
                accepted: false,
            },
        );
    }

    /// A reservation that could not even start (no transport for it).
    pub fn reservation_failed(&mut self, relay: PeerId, now: Instant) {
        self.reservations_failed += 1;
        self.rest(relay, now);
    }

    /// Leaves `relay` alone for a while; forgets those rested long enough.
    fn rest(&mut self, relay: PeerId, now: Instant) {
        self.resting.retain(|_, until| *until > now);
        self.resting.insert(relay, now + RELAY_RETRY);
    }

    pub fn reservation_accepted(&mut self, relay: PeerId) -> bool {
        match self.reservations.get_mut(&relay) {
            Some(r) => !std::mem::replace(&mut r.accepted, true),
            None => false,
        }
    }

    /// A listener closed: if it was a relay slot, the relay is rested
    /// (unless the slot was given up on purpose) and another is picked.
    pub fn listener_closed(&mut self, listener: ListenerId, now: Instant) -> Option<PeerId> {
        let relay = self
            .reservations
            .iter()
            .find(|(_, r)| r.listener == listener)
            .map(|(peer, _)| *peer)?;
        self.reservations.remove(&relay);
        self.reservations_failed += 1;
        self.rest(relay, now);
        Some(relay)
    }

    /// Slots to give up: all of them once the node is public.
    pub fn take_reservations_to_drop(&mut self, reachability: Reachability) -> Vec<ListenerId> {
        if reachability != Reachability::Public {
            return Vec::new();
        }
        self.reservations.drain().map(|(_, r)| r.listener).collect()
    }

    /// Whether the relay service should be offered, and if that changed.
    pub fn set_serving(&mut self, serving: bool) -> bool {
        std::mem::replace(&mut self.serving, serving) != serving
    }

    pub fn on_relay_service(&mut self, event: &relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.served_reservations.insert(*src_peer_id);
            }
            relay::Event::ReservationTimedOut { src_peer_id } => {
                self.served_reservations.remove(src_peer_id);
            }
            relay::Event::CircuitReqAccepted { .. } => self.served_circuits += 1,
            relay::Event::CircuitClosed { .. } => {
                self.served_circuits = self.served_circuits.saturating_sub(1)
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                self.served_denied += 1;
                tracing::debug!(peer = %src_peer_id, ?status, "relay slot refused");
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                self.served_denied += 1;
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay circuit refused");
            }
            _ => {}
        }
    }

    pub fn on_hole_punch(&mut self, ok: bool) {
        if ok {
            self.hole_punches_ok += 1;
        } else {
            self.hole_punches_failed += 1;
        }
    }

    /// Hole punching with `peer` failed: whether (and when) to make a new
    /// relayed connection, on which DCUtR tries again. A punch fails when
    /// the NATs do not allow it, but also when both ends dialled each other
    /// through the relay at once (Kademlia lookups that found each other
    /// together): two punches at the same moment spoil each other. So the
    /// retry is staggered by peer id, the smaller one first, and a peer
    /// gets `MAX_PUNCH_RETRIES` (2) in all (a symmetric NAT costs that many
    /// circuits, then stays relayed).
    pub fn punch_failed(&mut self, peer: PeerId, local: &PeerId, now: Instant) -> Option<Instant> {
        let (made, due) = self.punch_retries.entry(peer).or_insert((0, None));
        if *made >= MAX_PUNCH_RETRIES || due.is_some() {
            return None;
        }
        *made += 1;
        let stagger = if *local > peer {
            PUNCH_RETRY_STAGGER
        } else {
            Duration::ZERO
        };
        *due = Some(now + PUNCH_RETRY_DELAY * *made + stagger);
        *due
    }

    /// Peers whose hole punching retry is due now.
    pub fn punch_retries_due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut out = Vec::new();
        for (peer, (_, due)) in &mut self.punch_retries {
            if due.is_some_and(|at| at <= now) {
                *due = None;
                out.push(*peer);
            }
        }
        out
    }

    pub fn status(
        &self,
        reachability: Reachability,
        confirmed: Vec<String>,
        relayed_addrs: Vec<String>,
        relayed_connections: usize,
    ) -> NatStatus {
        let mut relays: Vec<String> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.accepted)
            .map(|(peer, _)| peer.to_string())
            .collect();
        relays.sort();
        NatStatus {
            reachability: reachability.name().into(),
            mode: match self.mode {
                ReachabilityMode::Auto => "auto",
                ReachabilityMode::Public => "public",
                ReachabilityMode::Private => "private",
            }
            .into(),
            confirmed_addrs: confirmed,
            upnp: self.upnp_name().into(),
            probes_ok: self.probes_ok,
            probes_failed: self.probes_failed,
            relays,
            relayed_addrs,
            reservations_failed: self.reservations_failed,
            hole_punches_ok: self.hole_punches_ok,
            hole_punches_failed: self.hole_punches_failed,
            relayed_connections,
            relay_service: self.serving,
            relay_reservations: self.served_reservations.len(),
            relay_circuits: self.served_circuits,
            relay_denied: self.served_denied,
            relayed_sync_deferred: 0,
        }
    }
}

impl Network {
    pub(super) fn reachability(&self) -> Reachability {
        self.nat.reachability()
    }

    /// Run on every maintenance tick: relay slots and the relay service
    /// follow the node's reachability.
    pub(super) fn maintain_nat(&mut self, now: Instant) {
        let reachability = self.reachability();
        let serving =
            reachability == Reachability::Public && self.swarm.behaviour().relay.is_enabled();
        if self.nat.set_serving(serving) {
            if let Some(relay) = self.swarm.behaviour_mut().relay.as_mut() {
                tracing::info!(
                    serving,
                    "relay service {}",
                    if serving { "offered" } else { "withdrawn" }
                );
                relay.set_serving(serving);
            }
        }
        for listener in self.nat.take_reservations_to_drop(reachability) {
            tracing::info!("publicly reachable; giving up relay slots");
            self.swarm.remove_listener(listener);
        }
        for peer in self.nat.punch_retries_due(now) {
            self.retry_hole_punch(peer);
        }
        for (relay, addr) in self.nat.relays_to_reserve(reachability, now) {
            match self.swarm.listen_on(addr.clone()) {
                Ok(listener) => {
                    tracing::info!(%relay, %addr, "not publicly reachable; reserving a relay slot");
                    self.nat.reserving(relay, listener);
                }
                Err(error) => {
                    tracing::warn!(%relay, %addr, %error, "cannot reserve a relay slot");
                    self.nat.reservation_failed(relay, now);
                }
            }
        }
    }

    /// With `nat.reachability = "public"` the operator says the node's
    /// listen addresses reach it: they are announced as they come up
    /// (relayed ones are announced by the relay client once reserved).
    pub(super) fn announce_if_public(&mut self, listen_addr: &Multiaddr) {
        use super::peer_manager::addrs::{reach, Reach};
        // Not loopback or link-local ones: nobody elsewhere reaches them,
        // and identify keeps only 20 external addresses, dropping the
        // oldest (the configured ones) first.
        let useful = !matches!(reach(listen_addr), Reach::Host | Reach::Link);
        if self.nat.mode == ReachabilityMode::Public && !is_relayed(listen_addr) && useful {
            self.swarm.add_external_address(listen_addr.clone());
        }
    }

    /// identify announces external addresses only, and pushes on its own
    /// only when listen addresses change: peers hear of a confirmed or
    /// expired one from this push. A node with a newly confirmed direct
    /// address also looks for peers again, since peers that looked before
    /// could not find it. Not for a relayed one: NATed nodes reserve at
    /// about the same moment, and looking up at once, they would dial
    /// each other through relays at once, two relayed connections whose
    /// hole punches spoil each other (seen over TCP).
    pub(super) fn external_addrs_changed(&mut self, address: &Multiaddr, confirmed: bool) {
        tracing::info!(%address, confirmed, "announced addresses changed");
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        self.swarm.behaviour_mut().identify.push(peers);
        if confirmed && !is_relayed(address) {
            self.links.discovery.restart(Instant::now());
        }
    }

    /// A new relayed connection to `peer`, if it is still reached through
    /// relays only: DCUtR runs on every new relayed connection (the peer
    /// it was dialled to starts it), and the older relayed connection is
    /// closed as superseded once the new one is identified.
    fn retry_hole_punch(&mut self, peer: PeerId) {
        let relayed = self.links.table.relayed_connections(&peer).len();
        if relayed == 0 || self.links.table.direct_connections(&peer) > 0 {
            return;
        }
        tracing::info!(%peer, "trying hole punching again: a new relayed connection");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .build();
        if let Err(error) = self.swarm.dial(opts) {
            tracing::debug!(%peer, %error, "hole punching retry not dialled");
        }
    }

    pub(super) fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        let ok = event.result.is_ok();
        self.nat.on_probe(&event.tested_addr, event.server, ok);
        match event.result {
            Ok(()) => {
                tracing::info!(addr = %event.tested_addr, server = %event.server, "address confirmed by a dial-back")
            }
            Err(error) => {
                tracing::info!(addr = %event.tested_addr, server = %event.server, %error, "address not reachable from outside")
            }
        }
    }

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } => {
                if self.nat.reservation_accepted(relay_peer_id) {
                    tracing::info!(relay = %relay_peer_id, "relay slot reserved; reachable through it");
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "connected to a peer through a relay")
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "a peer connected through a relay")
            }
        }
    }

    pub(super) fn on_hole_punch(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(_) => {
                self.nat.on_hole_punch(true);
                tracing::info!(%peer, "hole punched: direct connection up; closing the relayed one");
                self.close_relayed_if_direct(peer, Instant::now());
            }
            Err(error) => {
                self.nat.on_hole_punch(false);
                let local = *self.swarm.local_peer_id();
                // DCUtR may report after the peer (and its relayed
                // connection) left: nothing to retry, nothing to remember.
                let still_relayed = !self.links.table.relayed_connections(&peer).is_empty();
                let retry = still_relayed
                    .then(|| self.nat.punch_failed(peer, &local, Instant::now()))
                    .flatten();
                match retry {
                    Some(at) => {
                        tracing::info!(%peer, %error, retry_in = ?at.saturating_duration_since(Instant::now()), "hole punching failed; staying relayed, will try again on a new relayed connection")
                    }
                    None => tracing::info!(%peer, %error, "hole punching failed; staying relayed"),
                }
            }
        }
    }

    pub(super) fn on_listener_closed(&mut self, listener: ListenerId, reason: &str) {
        if let Some(relay) = self.nat.listener_closed(listener, Instant::now()) {
            tracing::warn!(%relay, reason, "relay slot lost; another relay will be picked");
        }
    }

    pub(super) fn nat_status(&self) -> NatStatus {
        let reachability = self.reachability();
        let confirmed = self.nat.confirmed().iter().map(|a| a.to_string()).collect();
        let relayed_addrs = self
            .listening
            .addrs
            .iter()
            .filter(|a| is_relayed(a))
            .map(|a| a.to_string())
            .collect();
        let mut status = self.nat.status(
            reachability,
            confirmed,
            relayed_addrs,
            self.links.table.relayed_connection_count(),
        );
        status.relayed_sync_deferred = self.sync.relayed.refused;
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn reachability_needs_a_dial_back_or_a_configured_address() {
        let at = addr("/ip4/203.0.113.5/udp/4001/quic-v1");
        let mut nat = Nat::new(ReachabilityMode::Auto, 2, &[], &[]);
        assert_eq!(nat.reachability(), Reachability::Unknown);
        nat.on_probe(&addr("/ip4/203.0.113.5/tcp/4001"), peer(), false);
        assert_eq!(nat.reachability(), Reachability::Private);
        // A confirmed address outweighs failures.
        nat.on_probe(&at, peer(), true);
        assert_eq!(nat.reachability(), Reachability::Public);
        assert_eq!(nat.confirmed(), vec![at.clone()]);
        let configured = Nat::new(ReachabilityMode::Auto, 2, &[], std::slice::from_ref(&at));
        assert_eq!(configured.reachability(), Reachability::Public);
        let forced = Nat::new(ReachabilityMode::Private, 2, &[], &[at]);
        assert_eq!(forced.reachability(), Reachability::Private);
    }

    #[test]
    fn an_address_the_gateway_maps_makes_the_node_public_until_the_mapping_expires() {
        let now = Instant::now();
        let relay = peer();
        let mut nat = Nat::new(
            ReachabilityMode::Auto,
            1,
            &[(relay, addr("/ip4/203.0.113.9/tcp/4001"))],
            &[],
        );
        nat.upnp_searching();
        assert_eq!(
            nat.status(Reachability::Unknown, vec![], vec![], 0).upnp,
            "searching"
        );
        nat.on_probe(&addr("/ip4/203.0.113.5/tcp/4001"), peer(), false);
        assert_eq!(nat.relays_to_reserve(nat.reachability(), now).len(), 1);
        let mapped = addr("/ip4/198.51.100.7/tcp/4001");
        let local = addr("/ip4/192.168.1.20/tcp/4001");
        nat.on_upnp(&libp2p::upnp::Event::NewExternalAddr {
            local_addr: local.clone(),
            external_addr: mapped.clone(),
        });
        assert_eq!(nat.reachability(), Reachability::Public);
        assert_eq!(nat.confirmed(), vec![mapped.clone()]);
        assert!(nat.relays_to_reserve(nat.reachability(), now).is_empty());
        // AutoNAT's dial-back of the same address came in through the
        // mapping, and goes with it.
        nat.on_probe(&mapped, peer(), true);
        assert_eq!(
            nat.status(Reachability::Public, vec![], vec![], 0).upnp,
            "mapped"
        );
        // The gateway stopped renewing it: back to private, relays again.
        nat.on_upnp(&libp2p::upnp::Event::ExpiredExternalAddr {
            local_addr: local.clone(),
            external_addr: mapped.clone(),
        });
        assert_eq!(nat.reachability(), Reachability::Private);
        assert_eq!(nat.relays_to_reserve(nat.reachability(), now).len(), 1);
        assert_eq!(
            nat.status(Reachability::Private, vec![], vec![], 0).upnp,
            "mapping expired"
        );
        // A mapping whose listen address goes away is forgotten too.
        nat.on_upnp(&libp2p::upnp::Event::NewExternalAddr {
            local_addr: local.clone(),
            external_addr: mapped.clone(),
        });
        assert_eq!(nat.reachability(), Reachability::Public);
        assert!(nat
            .listen_addr_gone(&addr("/ip4/192.168.1.20/udp/4001/quic-v1"))
            .is_empty());
        assert_eq!(nat.listen_addr_gone(&local), vec![mapped.clone()]);
        assert_eq!(nat.reachability(), Reachability::Private);
        let mut lost = Nat::new(ReachabilityMode::Auto, 1, &[], &[]);
        lost.upnp_searching();
        lost.on_upnp(&libp2p::upnp::Event::NonRoutableGateway);
        assert_eq!(
            lost.status(Reachability::Unknown, vec![], vec![], 0).upnp,
            "gateway not routable"
        );
        let off = Nat::new(ReachabilityMode::Auto, 1, &[], &[]);
        assert_eq!(
            off.status(Reachability::Unknown, vec![], vec![], 0).upnp,
            "off"
        );
    }

    #[test]
    fn a_private_node_reserves_on_configured_relays_first_and_rests_failed_ones() {
        let now = Instant::now();
        let (configured, member_a, member_b) = (peer(), peer(), peer());
        let mut nat = Nat::new(
            ReachabilityMode::Auto,
            2,
            &[(configured, addr("/ip4/10.0.0.1/tcp/4001"))],
            &[],
        );
        nat.relay_seen(
            member_a,
            true,
            false,
            &[addr("/ip4/10.0.0.2/udp/4001/quic-v1")],
        );
        nat.relay_seen(
            member_b,
            true,
            false,
            &[addr("/ip4/10.0.0.3/udp/4001/quic-v1")],
        );
        assert!(nat.relays_to_reserve(Reachability::Public, now).is_empty());
        assert!(nat.relays_to_reserve(Reachability::Unknown, now).is_empty());
        let picks = nat.relays_to_reserve(Reachability::Private, now);
        assert_eq!(picks.len(), 2);
        assert_eq!(picks[0].0, configured);
        assert!(is_relayed(&picks[0].1));
        assert_eq!(
            picks[0].1.to_string(),
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{configured}/p2p-circuit")
        );
        // Both slots taken: nothing more to reserve.
        let ids: Vec<ListenerId> = picks.iter().map(|_| ListenerId::next()).collect();
        for ((relay, _), id) in picks.iter().zip(&ids) {
            nat.reserving(*relay, *id);
        }
        assert!(nat.relays_to_reserve(Reachability::Private, now).is_empty());
        // The configured relay's slot is lost: it rests, the third one is picked.
        assert_eq!(nat.listener_closed(ids[0], now), Some(configured));
        let picks = nat.relays_to_reserve(Reachability::Private, now);
        assert_eq!(picks.len(), 1);
        assert_ne!(picks[0].0, configured);
        assert!(nat
            .relays_to_reserve(Reachability::Private, now + RELAY_RETRY)
            .iter()
            .any(|(p, _)| *p == configured));
        // Once public, every slot is given up.
        assert_eq!(nat.take_reservations_to_drop(Reachability::Public).len(), 1);
    }

    #[test]
    fn a_failed_hole_punch_is_retried_twice_the_smaller_peer_id_first() {
        let now = Instant::now();
        let mut nat = Nat::new(ReachabilityMode::Auto, 2, &[], &[]);
        let (a, b) = (peer(), peer());
        let (small, large) = if a < b { (a, b) } else { (b, a) };
        // Each end schedules its retry: the larger id waits longer, so the
        // two do not dial each other through the relay at once.
        let first_small = nat.punch_failed(large, &small, now).unwrap();
        let mut other = Nat::new(ReachabilityMode::Auto, 2, &[], &[]);
        let first_large = other.punch_failed(small, &large, now).unwrap();
        assert!(first_small + Duration::from_secs(5) < first_large);
        // One retry pending at a time; none due before its time.
        assert_eq!(nat.punch_failed(large, &small, now), None);
        assert!(nat.punch_retries_due(now).is_empty());
        assert_eq!(nat.punch_retries_due(first_small), vec![large]);
        assert!(nat.punch_retries_due(first_small).is_empty());
        // The second retry waits longer; after it, the peer stays relayed.
        let second = nat.punch_failed(large, &small, now).unwrap();
        assert!(second > first_small);
        assert_eq!(nat.punch_retries_due(second), vec![large]);
        assert_eq!(nat.punch_failed(large, &small, now), None);
        // A peer that leaves and comes back gets its retries again.
        nat.peer_gone(&large);
        assert!(nat.punch_failed(large, &small, now).is_some());
    }

    #[test]
    fn members_that_stop_relaying_or_leave_are_not_picked_but_configured_relays_stay() {
        let now = Instant::now();
        let (configured, member) = (peer(), peer());
        let mut nat = Nat::new(
            ReachabilityMode::Private,
            4,
            &[(configured, addr("/ip4/10.0.0.1/tcp/4001"))],
            &[],
        );
        nat.relay_seen(member, true, false, &[addr("/ip4/10.0.0.2/tcp/4001")]);
        assert_eq!(nat.relays_to_reserve(Reachability::Private, now).len(), 2);
        nat.relay_seen(member, false, false, &[addr("/ip4/10.0.0.2/tcp/4001")]);
        assert_eq!(nat.relays_to_reserve(Reachability::Private, now).len(), 1);
        nat.relay_seen(member, true, false, &[addr("/ip4/10.0.0.2/tcp/4001")]);
        nat.peer_gone(&member);
        nat.peer_gone(&configured);
        nat.relay_seen(configured, false, false, &[]);
        let picks = nat.relays_to_reserve(Reachability::Private, now);
        assert_eq!(picks.len(), 1);
        assert_eq!(picks[0].0, configured);
        // A member known only by relayed addresses is no relay.
        let relayed = addr(&format!(
            "/ip4/10.0.0.1/tcp/4001/p2p/{configured}/p2p-circuit"
        ));
        nat.relay_seen(member, true, false, std::slice::from_ref(&relayed));
        assert_eq!(nat.relays_to_reserve(Reachability::Private, now).len(), 1);
        // Once seen at a direct address, a later identify over a relayed
        // connection (no direct address usable from there) keeps it.
        nat.relay_seen(member, true, false, &[addr("/ip4/10.0.0.2/tcp/4001")]);
        nat.relay_seen(member, true, true, &[relayed]);
        nat.relay_seen(member, true, true, &[]);
        assert_eq!(nat.relays_to_reserve(Reachability::Private, now).len(), 2);
        // Over a direct connection, no direct address means no relay.
        nat.relay_seen(member, true, false, &[]);
        assert_eq!(nat.relays_to_reserve(Reachability::Private, now).len(), 1);
    }
}
