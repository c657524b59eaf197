//! The peer manager: which connections the node keeps.
//!
//! - [`gate::Gate`] refuses connections beyond the inbound/outbound split,
//!   the per-IP and per-subnet limits, and from banned addresses.
//! - A heartbeat prunes back to `target_peers`: inbound peers only (the
//!   node's own choices stay), worst first — strangers still proving
//!   membership (longest waiting first), then the lowest gossipsub score,
//!   newest first among equals, so tenure protects.
//! - An address that several refused or banned identities came from (or
//!   that left while proving membership) is banned itself for a while:
//!   throwaway keys are free, addresses are not. IPv6 addresses count by
//!   /64, the block one host can rotate within.

pub mod addrs;
pub mod gate;

use super::Network;
use crate::config::Settings;
use libp2p::PeerId;
use lru::LruCache;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// How often excess peers are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(5);
/// Distinct refused or banned identities from one address, within
/// `STRIKE_WINDOW`, that get the address banned.
const STRIKES_TO_BAN_IP: usize = 3;
const STRIKE_WINDOW: Duration = Duration::from_secs(600);
/// How long a pruned peer may not reconnect: long enough for the slot to
/// go to someone else.
pub const PRUNED_COOL_OFF: Duration = Duration::from_secs(30);
/// Addresses whose strikes are tracked at once.
const MAX_STRIKE_ADDRS: usize = 4096;

/// A connected peer the heartbeat may prune (one the node did not dial).
#[derive(Debug, Clone)]
pub struct PruneCandidate {
    pub peer: PeerId,
    /// Through the membership handshake.
    pub admitted: bool,
    /// gossipsub's score of it.
    pub score: f64,
    /// When its oldest connection was set up.
    pub since: Instant,
}

/// Which of `candidates` to disconnect so that `connected` comes down to
/// `target`, worst first.
pub fn choose_prunes(
    mut candidates: Vec<PruneCandidate>,
    connected: usize,
    target: usize,
) -> Vec<PeerId> {
    let excess = connected.saturating_sub(target);
    if excess == 0 {
        return Vec::new();
    }
    candidates.sort_by(|a, b| {
        // Strangers first, the longest waiting of them first (an honest
        // handshake takes milliseconds); then members by score, and the
        // newest of equals first.
        a.admitted.cmp(&b.admitted).then_with(|| match a.admitted {
            false => a.since.cmp(&b.since),
            true => a
                .score
                .total_cmp(&b.score)
                .then_with(|| b.since.cmp(&a.since)),
        })
    });
    candidates
        .into_iter()
        .take(excess)
        .map(|c| c.peer)
        .collect()
}

pub struct PeerManager {
    target: usize,
    last_prune: Instant,
    /// Distinct identities struck per address, and since when counted.
    strikes: LruCache<IpAddr, (Vec<PeerId>, Instant)>,
    ip_ban_duration: Duration,
    pub pruned: u64,
    pub ip_bans_issued: u64,
}

impl PeerManager {
    pub fn new(settings: &Settings) -> PeerManager {
        PeerManager {
            target: settings.config.peers.target_peers.get(),
            last_prune: Instant::now(),
            strikes: LruCache::new(NonZeroUsize::new(MAX_STRIKE_ADDRS).expect("non-zero")),
            ip_ban_duration: settings.config.peers.ban_secs.duration(),
            pruned: 0,
            ip_bans_issued: 0,
        }
    }

    /// Counts a strike of `peer` against `ip` (an identity counts once);
    /// true when that earns the address a ban.
    fn strike(&mut self, ip: IpAddr, peer: PeerId, now: Instant) -> bool {
        let key = gate::ban_key(ip);
        let entry = self.strikes.get_or_insert_mut(key, || (Vec::new(), now));
        if now.duration_since(entry.1) > STRIKE_WINDOW {
            *entry = (Vec::new(), now);
        }
        if !entry.0.contains(&peer) {
            entry.0.push(peer);
        }
        if entry.0.len() >= STRIKES_TO_BAN_IP {
            self.strikes.pop(&key);
            return true;
        }
        false
    }
}

impl Network {
    /// The peer-manager heartbeat: prunes excess inbound peers.
    pub(super) fn manage_peers(&mut self, now: Instant) {
        if now.duration_since(self.peer_manager.last_prune) < PRUNE_INTERVAL {
            return;
        }
        self.peer_manager.last_prune = now;
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let candidates = self
            .links
            .table
            .inbound_only()
            .into_iter()
            .map(|(peer, since)| PruneCandidate {
                peer,
                admitted: self.membership.is_admitted(&peer),
                score: gossipsub.peer_score(&peer).unwrap_or(0.0),
                since,
            })
            .collect();
        for peer in choose_prunes(candidates, self.links.table.len(), self.peer_manager.target) {
            tracing::debug!(%peer, "pruning an excess peer");
            self.peer_manager.pruned += 1;
            self.cool_off(peer, now + PRUNED_COOL_OFF);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    pub(super) fn peer_manager_status(&self) -> crate::types::PeerManagerStatus {
        let gate = &self.swarm.behaviour().gate;
        crate::types::PeerManagerStatus {
            inbound: gate.inbound_count(),
            outbound: gate.outbound_count(),
            pruned: self.peer_manager.pruned,
            ip_bans: gate.ip_bans(),
            ip_bans_issued: self.peer_manager.ip_bans_issued,
            refused_connections: gate::Refusal::ALL
                .iter()
                .map(|r| (r.name().to_string(), gate.refused(*r)))
                .collect(),
        }
    }

    /// Counts a strike against the addresses `peer` connected from (it was
    /// refused or banned); bans an address that collected enough.
    pub(super) fn strike_addresses_of(&mut self, peer: &PeerId) {
        for ip in self.swarm.behaviour().gate.counted_ips_of(peer) {
            self.strike_address(ip, *peer);
        }
    }

    /// Counts a strike of `peer` against `ip` (not for exempt addresses).
    pub(super) fn strike_address(&mut self, ip: IpAddr, peer: PeerId) {
        if self.swarm.behaviour().gate.is_exempt(&ip) {
            return;
        }
        let now = Instant::now();
        if self.peer_manager.strike(ip, peer, now) {
            let until = now + self.peer_manager.ip_ban_duration;
            if self.swarm.behaviour_mut().gate.ban_ip(ip, until) {
                self.peer_manager.ip_bans_issued += 1;
                tracing::warn!(%ip, "banned an address that several refused or banned identities came from");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidate(admitted: bool, score: f64, age_secs: u64, now: Instant) -> PruneCandidate {
        PruneCandidate {
            peer: PeerId::random(),
            admitted,
            score,
            since: now - Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn strangers_go_first_then_the_worst_scored_then_the_newest() {
        let now = Instant::now();
        let old_member = candidate(true, 0.0, 100, now);
        let new_member = candidate(true, 0.0, 1, now);
        let low_member = candidate(true, -5.0, 200, now);
        let good_member = candidate(true, 3.0, 2, now);
        let waiting_stranger = candidate(false, 0.0, 9, now);
        let fresh_stranger = candidate(false, 0.0, 0, now);
        let all = vec![
            old_member.clone(),
            new_member.clone(),
            low_member.clone(),
            good_member.clone(),
            waiting_stranger.clone(),
            fresh_stranger.clone(),
        ];
        let order = choose_prunes(all.clone(), 6, 0);
        assert_eq!(
            order,
            vec![
                waiting_stranger.peer,
                fresh_stranger.peer,
                low_member.peer,
                new_member.peer,
                old_member.peer,
                good_member.peer
            ]
        );
        assert_eq!(choose_prunes(all.clone(), 10, 7).len(), 3);
        assert!(choose_prunes(all, 5, 7).is_empty());
    }

    #[test]
    fn three_identities_struck_within_the_window_ban_an_address() {
        let settings = Settings::from_config(&Default::default()).unwrap();
        let mut pm = PeerManager::new(&settings);
        let ip: IpAddr = "203.0.113.4".parse().unwrap();
        let now = Instant::now();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        // One identity refused again and again is one strike (an honest
        // node with a bad certificate redialling).
        for _ in 0..10 {
            assert!(!pm.strike(ip, a, now));
        }
        assert!(!pm.strike(ip, b, now));
        // Strikes older than the window are forgotten.
        let later = now + STRIKE_WINDOW + Duration::from_secs(1);
        assert!(!pm.strike(ip, c, later));
        assert!(!pm.strike(ip, a, later));
        assert!(pm.strike(ip, b, later));
        // IPv6 addresses of one /64 count together.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!pm.strike(v6("2001:db8:0:1::1"), a, now));
        assert!(!pm.strike(v6("2001:db8:0:1::2"), b, now));
        assert!(pm.strike(v6("2001:db8:0:1:ffff::3"), c, now));
    }

    proptest! {
        /// The heartbeat never prunes more than the excess, never a peer
        /// that was not offered, and never keeps a stranger while pruning
        /// a member.
        #[test]
        fn prunes_only_the_excess_and_strangers_before_members(
            peers in proptest::collection::vec((any::<bool>(), -100.0f64..100.0, 0u64..1000), 0..60),
            connected_extra in 0usize..20,
            target in 0usize..80,
        ) {
            let now = Instant::now() + Duration::from_secs(2000);
            let candidates: Vec<_> = peers
                .iter()
                .map(|(admitted, score, age)| candidate(*admitted, *score, *age, now))
                .collect();
            let connected = candidates.len() + connected_extra;
            let pruned = choose_prunes(candidates.clone(), connected, target);
            prop_assert!(pruned.len() <= connected.saturating_sub(target));
            prop_assert!(pruned.len() <= candidates.len());
            let admitted = |p: &PeerId| candidates.iter().find(|c| c.peer == *p).unwrap().admitted;
            let any_member_pruned = pruned.iter().any(admitted);
            let stranger_kept = candidates
                .iter()
                .any(|c| !c.admitted && !pruned.contains(&c.peer));
            prop_assert!(!(any_member_pruned && stranger_kept));
        }
    }
}
