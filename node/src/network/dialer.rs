//! Dial policy: which addresses to dial a peer on (QUIC first unless the
//! peer's circuit breaker is open), when to run half-open QUIC trials, and
//! when to redial peers whose connections dropped (exponential backoff per
//! peer, reset after a stable connection). No I/O: the network task feeds it
//! events and the current time and carries out what it returns.

use super::backoff::Backoff;
use super::breaker::{BreakerState, CircuitBreaker};
use super::nat::is_relayed;
use super::peer_manager::addrs::{first_ip, ip_of};
use crate::config::is_quic;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A connection that lasted this long resets the peer's redial backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Redials of a lost peer before it is left to discovery.
pub const MAX_REDIALS: u32 = 30;
/// Peers tracked at most (breakers and redial schedules).
const MAX_TRACKED: usize = 4096;
/// Addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 16;

struct Redial {
    backoff: Backoff,
    attempts: u32,
}

pub struct Dialer {
    cooldown: Duration,
    redial_max: Duration,
    quic: bool,
    tcp: bool,
    breakers: HashMap<PeerId, CircuitBreaker>,
    /// Peers to redial, with their schedule.
    redials: HashMap<PeerId, Redial>,
    /// Addresses of each tracked peer that observation backs, QUIC first:
    /// ones it announced on the IP it was seen connecting from, and ones
    /// this node reached it on. A departed peer is redialled on these
    /// only, never on whatever else it claimed.
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// When the current connection to a peer came up.
    connected_since: HashMap<PeerId, Instant>,
}

impl Dialer {
    pub fn new(cooldown: Duration, redial_max: Duration, quic: bool, tcp: bool) -> Dialer {
        Dialer {
            cooldown,
            redial_max,
            quic,
            tcp,
            breakers: HashMap::new(),
            redials: HashMap::new(),
            addrs: HashMap::new(),
            connected_since: HashMap::new(),
        }
    }

    fn breaker(&mut self, peer: PeerId) -> &mut CircuitBreaker {
        if self.breakers.len() >= MAX_TRACKED && !self.breakers.contains_key(&peer) {
            // Forget a peer that is neither connected nor being redialled.
            let idle = self
                .breakers
                .keys()
                .find(|p| !self.connected_since.contains_key(p) && !self.redials.contains_key(p))
                .copied();
            if let Some(idle) = idle {
                self.breakers.remove(&idle);
                self.addrs.remove(&idle);
            }
        }
        let cooldown = self.cooldown;
        self.breakers
            .entry(peer)
            .or_insert_with(|| CircuitBreaker::new(cooldown))
    }

    pub fn allows_quic(&mut self, peer: PeerId, now: Instant) -> bool {
        self.quic && self.breaker(peer).allows_quic(now)
    }

    pub fn breaker_state(&mut self, peer: PeerId, now: Instant) -> (BreakerState, u64, u64) {
        let b = self.breaker(peer);
        (b.state(now), b.quic_failures, b.quic_successes)
    }

    /// Addresses to dial, in order: direct QUIC first when allowed (else
    /// none), direct TCP, then relayed ones. The breaker judges the peer's
    /// own QUIC: a relayed address crosses QUIC only to the relay, and is
    /// what reaches a NATed peer, whose direct dials all fail (and open
    /// its breaker).
    pub fn dial_order(
        &mut self,
        peer: PeerId,
        mut addrs: Vec<Multiaddr>,
        now: Instant,
    ) -> Vec<Multiaddr> {
        let quic_ok = self.allows_quic(peer, now);
        let (quic, tcp) = (self.quic, self.tcp);
        addrs.retain(|a| match (is_relayed(a), is_quic(a)) {
            (true, true) => quic,
            (false, true) => quic_ok,
            (_, false) => tcp,
        });
        addrs.sort_by_key(order_key);
        addrs.dedup();
        addrs
    }

    /// Remembers the addresses `peer` announced on `seen_at`, the IP it
    /// was seen connecting from (with no IP seen, none).
    ///
    /// Relayed addresses are kept when they name, as relay, another peer
    /// this node is directly connected to, at the IP it is connected at
    /// (`relay_ip` says where, or `None`): a NATed peer is reached only at
    /// those, and an address naming some other host would have this node
    /// dial that host.
    pub fn remember_addrs(
        &mut self,
        peer: PeerId,
        announced: &[Multiaddr],
        seen_at: Option<IpAddr>,
        relay_ip: impl Fn(&PeerId) -> Option<IpAddr>,
    ) {
        let mut addrs: Vec<Multiaddr> = announced
            .iter()
            .filter(|a| match relay_of(a) {
                Some(relay) => {
                    relay != peer && relay_ip(&relay).is_some_and(|ip| first_ip(a) == Some(ip))
                }
                None => seen_at.is_some() && ip_of(a) == seen_at,
            })
            .cloned()
            .collect();
        // Addresses this node reached it on stay.
        if let Some(old) = self.addrs.get(&peer) {
            addrs.extend(
                old.iter()
                    .filter(|a| !addrs.contains(a))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        self.store_addrs(peer, addrs);
    }

    fn store_addrs(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>) {
        addrs.sort_by_key(order_key);
        addrs.dedup();
        addrs.truncate(MAX_ADDRS_PER_PEER);
        if self.addrs.len() < MAX_TRACKED || self.addrs.contains_key(&peer) {
            self.addrs.insert(peer, addrs);
        }
    }

    /// This node reached `peer` on `addr`: an address to redial it on.
    fn confirm_addr(&mut self, peer: PeerId, addr: &Multiaddr) {
        let mut addrs = self.known_addrs(&peer);
        if !addrs.contains(addr) {
            addrs.insert(0, addr.clone());
            self.store_addrs(peer, addrs);
        }
    }

    pub fn known_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addrs.get(peer).cloned().unwrap_or_default()
    }

    pub fn quic_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addrs
            .get(peer)
            .map(|a| a.iter().filter(|a| is_direct_quic(a)).cloned().collect())
            .unwrap_or_default()
    }

    /// Records one QUIC failure if any of the failed addresses was QUIC
    /// (one dial is one attempt, however many QUIC addresses it tried).
    fn record_quic_failures(
        &mut self,
        peer: PeerId,
        failed: &[Multiaddr],
        now: Instant,
    ) -> &mut CircuitBreaker {
        let breaker = self.breaker(peer);
        if failed.iter().any(is_direct_quic) {
            breaker.record(false, now);
        }
        breaker
    }

    /// An outbound dial finished with a connection on `addr`, after the
    /// failed attempts `failed`. Returns the breaker state afterwards.
    pub fn dial_succeeded(
        &mut self,
        peer: PeerId,
        addr: &Multiaddr,
        failed: &[Multiaddr],
        now: Instant,
    ) -> BreakerState {
        self.confirm_addr(peer, addr);
        let breaker = self.record_quic_failures(peer, failed, now);
        if is_direct_quic(addr) {
            breaker.record(true, now);
        }
        breaker.state(now)
    }

    /// An outbound dial failed on every address in `failed`.
    pub fn dial_failed(
        &mut self,
        peer: PeerId,
        failed: &[Multiaddr],
        now: Instant,
    ) -> BreakerState {
        self.record_quic_failures(peer, failed, now).state(now)
    }

    /// A trial that needs no dial: a QUIC connection to the peer is up
    /// (it dialled us), so QUIC between us works. Returns the state after.
    pub fn trial_succeeded(&mut self, peer: PeerId, now: Instant) -> BreakerState {
        let breaker = self.breaker(peer);
        breaker.record(true, now);
        breaker.state(now)
    }

    /// A trial dial could not be made or did not connect.
    pub fn trial_failed(&mut self, peer: PeerId, now: Instant) {
        self.breaker(peer).record(false, now);
    }

    /// A trial refused before reaching the network (a local limit).
    pub fn trial_withdrawn(&mut self, peer: PeerId) {
        self.breaker(peer).withdraw_trial();
    }

    /// Peers whose breaker wants a QUIC trial dial now (claimed).
    pub fn trials_due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut due = Vec::new();
        for (peer, breaker) in self.breakers.iter_mut() {
            if breaker.start_trial(now) {
                due.push(*peer);
            }
        }
        due
    }

    pub fn connected(&mut self, peer: PeerId, now: Instant) {
        self.connected_since.entry(peer).or_insert(now);
        self.redials.remove(&peer);
    }

    /// The last connection to `peer` closed without us wanting it to:
    /// schedule redials (sooner if the connection had been stable).
    pub fn lost(&mut self, peer: PeerId, now: Instant) {
        let since = self.connected_since.remove(&peer);
        if self.redials.len() >= MAX_TRACKED {
            return;
        }
        let stable = since.is_some_and(|t| now.duration_since(t) >= STABLE_AFTER);
        let max = self.redial_max;
        let redial = self.redials.entry(peer).or_insert_with(|| Redial {
            backoff: Backoff::new(max, now),
            attempts: 0,
        });
        if stable {
            redial.attempts = 0;
        }
        redial.backoff.restart(now);
    }

    /// We closed the last connection ourselves: no redials.
    pub fn forget(&mut self, peer: &PeerId) {
        self.connected_since.remove(peer);
        self.redials.remove(peer);
        self.addrs.remove(peer);
    }

    /// Peers to redial now; each call counts as one attempt per peer.
    pub fn redials_due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut due = Vec::new();
        self.redials.retain(|peer, r| {
            if !r.backoff.is_due(now) {
                return true;
            }
            if r.attempts >= MAX_REDIALS {
                return false;
            }
            r.attempts += 1;
            r.backoff.schedule_next(now);
            due.push(*peer);
            true
        });
        due
    }

    #[cfg(test)]
    pub fn redial_attempts(&self, peer: &PeerId) -> Option<u32> {
        self.redials.get(peer).map(|r| r.attempts)
    }
}

/// Direct QUIC first, then direct TCP, then relayed addresses.
fn order_key(addr: &Multiaddr) -> u8 {
    match (is_relayed(addr), is_quic(addr)) {
        (false, true) => 0,
        (false, false) => 1,
        (true, _) => 2,
    }
}

/// QUIC straight to the peer: what its breaker judges.
fn is_direct_quic(addr: &Multiaddr) -> bool {
    is_quic(addr) && !is_relayed(addr)
}

/// The relay a relayed address goes through (the peer id before
/// `/p2p-circuit`).
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => relay = Some(id),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_departed_peer_is_redialled_only_where_it_was_seen() {
        let mut d = Dialer::new(Duration::from_secs(60), Duration::from_secs(60), true, true);
        let peer = PeerId::random();
        let announced: Vec<Multiaddr> = vec![
            "/ip4/10.0.0.2/tcp/4001".parse().unwrap(),
            "/ip4/192.0.2.50/tcp/22".parse().unwrap(),
            "/dns4/victim.example/tcp/80".parse().unwrap(),
        ];
        d.remember_addrs(peer, &announced, Some("10.0.0.2".parse().unwrap()), |_| {
            None
        });
        assert_eq!(d.known_addrs(&peer), announced[..1].to_vec());
        // With no connection seen, nothing it claims is kept...
        let other = PeerId::random();
        d.remember_addrs(other, &announced, None, |_| None);
        assert!(d.known_addrs(&other).is_empty());
        // ...but an address this node reached it on is.
        let reached: Multiaddr = "/ip4/198.51.100.1/udp/4001/quic-v1".parse().unwrap();
        d.dial_succeeded(other, &reached, &[], Instant::now());
        assert_eq!(d.known_addrs(&other), vec![reached]);
    }

    fn addrs() -> Vec<Multiaddr> {
        vec![
            "/ip4/10.0.0.2/tcp/4001".parse().unwrap(),
            "/ip4/10.0.0.2/udp/4001/quic-v1".parse().unwrap(),
        ]
    }

    #[test]
    fn quic_first_until_the_breaker_opens_then_tcp_only() {
        let now = Instant::now();
        let peer = PeerId::random();
        let mut d = Dialer::new(Duration::from_secs(5), Duration::from_secs(60), true, true);
        let order = d.dial_order(peer, addrs(), now);
        assert!(is_quic(&order[0]) && !is_quic(&order[1]));
        // QUIC timed out, TCP worked.
        let state = d.dial_succeeded(peer, &addrs()[0], &addrs()[1..], now);
        assert_eq!(state.name(), "open");
        assert_eq!(d.dial_order(peer, addrs(), now), vec![addrs()[0].clone()]);
        // After the cooldown: trials, one at a time.
        let later = now + Duration::from_secs(5);
        assert_eq!(d.trials_due(later), vec![peer]);
        assert!(d.trials_due(later).is_empty());
        for _ in 0..2 {
            d.dial_succeeded(peer, &addrs()[1], &[], later);
            assert_eq!(d.trials_due(later), vec![peer]);
        }
        assert_eq!(
            d.dial_succeeded(peer, &addrs()[1], &[], later).name(),
            "closed"
        );
        assert!(is_quic(&d.dial_order(peer, addrs(), later)[0]));
    }

    #[test]
    fn a_natted_peer_stays_reachable_through_its_relay_when_direct_dials_fail() {
        let now = Instant::now();
        let peer = PeerId::random();
        let relay = PeerId::random();
        let stranger = PeerId::random();
        let via = |r: PeerId, transport: &str| -> Multiaddr {
            format!("/ip4/10.0.0.1/{transport}/p2p/{r}/p2p-circuit/p2p/{peer}")
                .parse()
                .unwrap()
        };
        let mut d = Dialer::new(Duration::from_secs(60), Duration::from_secs(60), true, true);
        let mut announced = addrs();
        announced.push(via(relay, "udp/4001/quic-v1"));
        announced.push(via(relay, "tcp/4001"));
        // Not kept: an address naming a relay this node is not connected
        // to, one naming a connected relay at another host, and one naming
        // the peer itself as relay.
        announced.push(via(stranger, "tcp/4001"));
        let elsewhere: Multiaddr =
            format!("/ip4/192.0.2.9/tcp/80/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .unwrap();
        announced.push(elsewhere.clone());
        announced.push(via(peer, "tcp/4001"));
        let relay_ip =
            |r: &PeerId| (*r == relay || *r == peer).then(|| "10.0.0.1".parse().unwrap());
        d.remember_addrs(
            peer,
            &announced,
            Some("10.0.0.2".parse().unwrap()),
            relay_ip,
        );
        let known = d.known_addrs(&peer);
        assert_eq!(known.len(), 4, "{known:?}");
        assert!(!known.contains(&via(stranger, "tcp/4001")));
        assert!(!known.contains(&elsewhere));
        assert!(!known.contains(&via(peer, "tcp/4001")));
        // Direct dials fail (NAT): the breaker opens on direct QUIC...
        let state = d.dial_succeeded(peer, &via(relay, "tcp/4001"), &addrs(), now);
        assert_eq!(state.name(), "open");
        // ...and the relayed addresses, QUIC to the relay included, stay.
        let order = d.dial_order(peer, known, now);
        assert_eq!(
            order,
            vec![
                addrs()[0].clone(),
                via(relay, "udp/4001/quic-v1"),
                via(relay, "tcp/4001")
            ]
        );
        // A relayed QUIC success is no QUIC trial of the peer itself.
        assert!(d.quic_addrs(&peer).iter().all(|a| !is_relayed(a)));
    }

    #[test]
    fn lost_peers_are_redialled_with_growing_delays_until_they_return() {
        let t0 = Instant::now();
        let peer = PeerId::random();
        let mut d = Dialer::new(Duration::from_secs(5), Duration::from_secs(8), true, true);
        d.connected(peer, t0);
        d.lost(peer, t0 + Duration::from_secs(1));
        assert!(
            d.redials_due(t0 + Duration::from_secs(1)).is_empty(),
            "not at once"
        );
        let mut now = t0 + Duration::from_secs(1);
        let mut attempts = 0;
        while attempts < 5 {
            now += Duration::from_millis(250);
            attempts += d.redials_due(now).len();
        }
        assert_eq!(d.redial_attempts(&peer), Some(5));
        d.connected(peer, now);
        assert_eq!(d.redial_attempts(&peer), None);
        // A peer we dropped on purpose is not redialled.
        d.forget(&peer);
        assert!(d.redials_due(now + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn redials_stop_after_the_limit() {
        let t0 = Instant::now();
        let peer = PeerId::random();
        let mut d = Dialer::new(Duration::from_secs(5), Duration::from_secs(1), true, true);
        d.lost(peer, t0);
        let mut total = 0;
        for s in 1..200 {
            total += d.redials_due(t0 + Duration::from_secs(s * 3)).len();
        }
        assert_eq!(total, MAX_REDIALS as usize);
        assert_eq!(d.redial_attempts(&peer), None);
    }
}
