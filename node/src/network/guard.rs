//! Protection from misbehaving peers: per-author message and per-peer
//! request rate limits (governor), a score that offences lower and time
//! restores, and bans that outlive restarts.
//!
//! Offences are charged to whoever can be held to them: malformed, badly
//! signed or unauthorised data to the peer that sent it (members validate
//! before they forward, so an honest peer never relays such data), and
//! excess messages to their author (a busy honest relay must not pay for a
//! flooding author).

use super::{now_ms, Network};
use crate::identity::{node_id_of, peer_id_of};
use agentmesh_protocol::NodeId;
use agentmesh_store::{Ban, BanList};
use governor::{DefaultKeyedRateLimiter, Quota};
use libp2p::PeerId;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Points a score recovers per second, back up to zero.
const RECOVERY_PER_SEC: f64 = 1.0;
/// Most bans kept (in memory and on disk). Past it, a new ban evicts the
/// one closest to expiring, so throwaway identities cannot grow the ban
/// store without bound; the peer manager's address bans catch what a flood
/// of fresh identities from one place would otherwise get past.
pub const MAX_BANS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offence {
    /// Undecodable, or breaking a size or count limit.
    Malformed,
    /// A signature that does not verify.
    BadSignature,
    /// Outside the sender's membership scopes.
    Unauthorised,
    /// Above the rate limit (charged per excess message or request).
    OverRate,
    /// Named data it then did not deliver (pattern states listed in
    /// anti-entropy and never sent), keeping this node busy.
    Misleading,
}

impl Offence {
    fn penalty(self) -> f64 {
        match self {
            Offence::Malformed | Offence::Unauthorised | Offence::Misleading => 20.0,
            Offence::BadSignature => 50.0,
            Offence::OverRate => 1.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Offence::Malformed => "malformed",
            Offence::BadSignature => "bad_signature",
            Offence::Unauthorised => "unauthorised",
            Offence::OverRate => "over_rate",
            Offence::Misleading => "misleading",
        }
    }

    pub const ALL: [Offence; 5] = [
        Offence::Malformed,
        Offence::BadSignature,
        Offence::Unauthorised,
        Offence::OverRate,
        Offence::Misleading,
    ];
}

struct Score {
    value: f64,
    updated: Instant,
}

impl Score {
    fn current(&self, now: Instant) -> f64 {
        let recovered = now.duration_since(self.updated).as_secs_f64() * RECOVERY_PER_SEC;
        (self.value + recovered).min(0.0)
    }
}

pub struct Guard {
    messages: DefaultKeyedRateLimiter<NodeId>,
    requests: DefaultKeyedRateLimiter<PeerId>,
    scores: HashMap<NodeId, Score>,
    bans: HashMap<NodeId, Ban>,
    ban_list: BanList,
    ban_duration: Duration,
    /// A score at or below minus this gets the peer banned.
    ban_threshold: f64,
    /// Offences seen, by kind (for `/metrics`).
    pub offences: HashMap<Offence, u64>,
    pub bans_issued: u64,
    last_cleanup: Instant,
    max_bans: usize,
}

fn quota(rate: NonZeroU32) -> Quota {
    // Bursts of two seconds' worth pass, so a peer that was quiet may
    // catch up without being throttled.
    Quota::per_second(rate).allow_burst(rate.saturating_mul(NonZeroU32::new(2).unwrap()))
}

impl Guard {
    pub fn new(settings: &crate::config::Settings, ban_list: BanList) -> Guard {
        let mut bans = HashMap::new();
        match ban_list.active(now_ms()) {
            Ok((active, damaged)) => {
                if damaged > 0 {
                    tracing::warn!(damaged, "dropped damaged ban records");
                }
                bans.extend(active);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the ban list"),
        }
        Guard {
            messages: DefaultKeyedRateLimiter::keyed(quota(
                settings.config.peers.peer_message_rate,
            )),
            requests: DefaultKeyedRateLimiter::keyed(quota(
                settings.config.peers.peer_request_rate,
            )),
            scores: HashMap::new(),
            bans,
            ban_list,
            ban_duration: settings.config.peers.ban_secs.duration(),
            ban_threshold: f64::from(settings.config.peers.ban_threshold.get()),
            offences: HashMap::new(),
            bans_issued: 0,
            last_cleanup: Instant::now(),
            max_bans: MAX_BANS,
        }
    }

    /// Bans in force (loaded at start-up and issued since).
    pub fn banned(&self) -> impl Iterator<Item = (&NodeId, &Ban)> {
        self.bans.iter()
    }

    pub fn is_banned(&self, node: &NodeId) -> bool {
        self.bans.contains_key(node)
    }

    /// May `author` have `count` more messages accepted now? The excess is
    /// the number refused.
    pub fn admit_messages(&self, author: &NodeId, count: usize) -> Result<(), u32> {
        let n =
            NonZeroU32::new(count.clamp(1, u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
        match self.messages.check_key_n(author, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(n.get()),
        }
    }

    pub fn admit_request(&self, peer: &PeerId) -> bool {
        self.requests.check_key(peer).is_ok()
    }

    /// Lowers `node`'s score; returns true if that gets it banned.
    pub fn charge(&mut self, node: NodeId, offence: Offence, times: u32) -> bool {
        *self.offences.entry(offence).or_default() += u64::from(times);
        if self.is_banned(&node) {
            return false;
        }
        let now = Instant::now();
        let score = self.scores.entry(node).or_insert(Score {
            value: 0.0,
            updated: now,
        });
        score.value = score.current(now) - offence.penalty() * f64::from(times);
        score.updated = now;
        score.value <= -self.ban_threshold
    }

    #[cfg(test)]
    fn score(&self, node: &NodeId) -> f64 {
        self.scores
            .get(node)
            .map_or(0.0, |s| s.current(Instant::now()))
    }

    /// Records a ban (on disk first, so a crash right after keeps it).
    /// Returns it, and the ban evicted to make room (if any).
    fn ban(&mut self, node: NodeId, reason: String) -> (Ban, Option<NodeId>) {
        let ban = Ban {
            until_ms: now_ms().saturating_add(self.ban_duration.as_millis() as u64),
            reason,
        };
        let evicted = if self.bans.len() >= self.max_bans && !self.bans.contains_key(&node) {
            let soonest = self
                .bans
                .iter()
                .min_by_key(|(_, b)| b.until_ms)
                .map(|(n, _)| *n);
            if let Some(old) = soonest {
                self.bans.remove(&old);
                if let Err(e) = self.ban_list.remove(&old) {
                    tracing::warn!(node = %old, error = %e, "cannot remove an evicted ban");
                }
            }
            soonest
        } else {
            None
        };
        if let Err(e) = self.ban_list.put(&node, &ban) {
            tracing::warn!(%node, error = %e, "cannot store a ban; it lasts until restart");
        }
        self.scores.remove(&node);
        self.bans.insert(node, ban.clone());
        self.bans_issued += 1;
        (ban, evicted)
    }

    /// Lifts bans that ran out; returns who was forgiven. Also forgets
    /// rate-limiter and score state nobody needs any more.
    fn expire(&mut self) -> Vec<NodeId> {
        let now = now_ms();
        let expired: Vec<NodeId> = self
            .bans
            .iter()
            .filter(|(_, ban)| ban.until_ms <= now)
            .map(|(node, _)| *node)
            .collect();
        for node in &expired {
            self.bans.remove(node);
            if let Err(e) = self.ban_list.remove(node) {
                tracing::warn!(%node, error = %e, "cannot remove an expired ban");
            }
        }
        if self.last_cleanup.elapsed() > Duration::from_secs(60) {
            self.last_cleanup = Instant::now();
            self.messages.retain_recent();
            self.requests.retain_recent();
            let now = Instant::now();
            self.scores.retain(|_, s| s.current(now) < 0.0);
        }
        expired
    }
}

impl Network {
    /// Blocks the bans loaded from disk (called once at start-up).
    pub(super) fn apply_stored_bans(&mut self) {
        let banned: Vec<NodeId> = self.guard.banned().map(|(node, _)| *node).collect();
        for node in banned {
            if let Ok(peer) = peer_id_of(&node) {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
        if !self.guard.bans.is_empty() {
            tracing::info!(
                banned = self.guard.bans.len(),
                "peers banned before the restart stay banned"
            );
        }
    }

    pub(super) fn security_status(&self) -> crate::types::SecurityStatus {
        let own = self.membership.own_scopes();
        let mut bans: Vec<crate::types::BanInfo> = self
            .guard
            .banned()
            .map(|(node, ban)| crate::types::BanInfo {
                peer_id: peer_id_of(node).map_or_else(|_| node.to_string(), |p| p.to_string()),
                until_ms: ban.until_ms,
                reason: ban.reason.clone(),
            })
            .collect();
        bans.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        bans.truncate(100);
        crate::types::SecurityStatus {
            validators: crate::consensus::validators::describe_source(
                self.settings.validator_set.is_some(),
                !self.membership.is_open(),
            )
            .into(),
            membership: if self.membership.is_open() {
                "open"
            } else {
                "authority"
            }
            .into(),
            scopes: own
                .as_ref()
                .map(|v| v.certificate.scopes.clone())
                .unwrap_or_default(),
            certificate_expires_ms: own.as_ref().map(|v| v.certificate.expires_ms),
            refused_peers: self.membership.refused,
            pending_handshakes: self.membership.pending_count(),
            handshakes_turned_away: self.membership.turned_away,
            held_messages: self.membership.held_count(),
            held_bytes: self.membership.held_bytes(),
            last_handshake_ms: self.membership.last_handshake_ms,
            banned_peers: self.guard.bans.len(),
            bans_issued: self.guard.bans_issued,
            offences: Offence::ALL
                .iter()
                .map(|o| {
                    (
                        o.name().to_string(),
                        self.guard.offences.get(o).copied().unwrap_or(0),
                    )
                })
                .collect(),
            bans,
            peer_manager: self.peer_manager_status(),
        }
    }

    /// Charges `offence` to `node`; bans it when its score runs out.
    pub(super) fn charge(&mut self, node: NodeId, offence: Offence, times: u32) {
        if self.guard.charge(node, offence, times) {
            if let Ok(peer) = peer_id_of(&node) {
                self.ban(
                    peer,
                    format!(
                        "score fell to the ban threshold (last offence: {})",
                        offence.name()
                    ),
                );
            }
        }
    }

    /// Whether to serve a request from `peer`: only members within their
    /// request rate are answered (excess requests count against the peer).
    pub(super) fn admit_request(&mut self, peer: &PeerId) -> bool {
        if !self.membership.is_admitted(peer) {
            return false;
        }
        if self.guard.admit_request(peer) {
            return true;
        }
        if let Some(node) = node_id_of(peer) {
            self.charge(node, Offence::OverRate, 1);
        }
        false
    }

    pub(super) fn charge_peer(&mut self, peer: &PeerId, offence: Offence) {
        if let Some(node) = node_id_of(peer) {
            self.charge(node, offence, 1);
        }
    }

    /// Bans `peer` for the configured time: its connections are closed, new
    /// ones refused, and frames it authored rejected wherever they come from.
    pub(super) fn ban(&mut self, peer: PeerId, reason: String) {
        let Some(node) = node_id_of(&peer) else {
            return;
        };
        let (ban, evicted) = self.guard.ban(node, reason);
        tracing::warn!(%peer, reason = %ban.reason, until_ms = ban.until_ms, "banned a peer");
        if let Some(old) = evicted.and_then(|n| peer_id_of(&n).ok()) {
            if !self.membership.is_cooling(&old) {
                self.swarm.behaviour_mut().blocked.unblock_peer(old);
            }
        }
        self.strike_addresses_of(&peer);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.forget_peer(&peer);
        self.membership_disconnected(&peer, None);
    }

    pub(super) fn expire_bans(&mut self) {
        for node in self.guard.expire() {
            if let Ok(peer) = peer_id_of(&node) {
                tracing::info!(%peer, "ban expired");
                if !self.membership.is_cooling(&peer) {
                    self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u32) -> crate::config::Settings {
        let mut s = crate::config::Settings::from_config(&Default::default()).unwrap();
        s.config.peers.peer_message_rate = NonZeroU32::new(rate).unwrap();
        s.config.peers.peer_request_rate = NonZeroU32::new(rate).unwrap();
        s
    }

    fn guard(rate: u32) -> (Guard, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = agentmesh_store::Store::open(dir.path()).unwrap();
        let g = Guard::new(&settings(rate), store.bans().unwrap());
        (g, dir)
    }

    #[test]
    fn messages_above_the_burst_are_refused_per_author() {
        let (g, _dir) = guard(100);
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        // A burst of two seconds' worth passes, then the limit bites.
        assert_eq!(g.admit_messages(&a, 150), Ok(()));
        assert_eq!(g.admit_messages(&a, 50), Ok(()));
        assert_eq!(g.admit_messages(&a, 10), Err(10));
        // Another author is not affected.
        assert_eq!(g.admit_messages(&b, 200), Ok(()));
    }

    #[test]
    fn offences_add_up_to_a_ban_and_scores_recover() {
        let (mut g, _dir) = guard(100);
        let a = NodeId([1; 32]);
        assert!(!g.charge(a, Offence::Malformed, 1));
        assert!(g.score(&a) < -19.9, "{}", g.score(&a));
        assert!(!g.charge(a, Offence::OverRate, 50));
        assert!(g.charge(a, Offence::BadSignature, 1));
        assert_eq!(g.offences[&Offence::OverRate], 50);
        // Time restores a score towards zero, never above.
        let old = Score {
            value: -10.0,
            updated: Instant::now() - Duration::from_secs(30),
        };
        assert_eq!(old.current(Instant::now()), 0.0);
    }

    #[test]
    fn the_ban_store_is_bounded_and_evicts_the_soonest_to_expire() {
        let (mut g, _dir) = guard(10);
        g.max_bans = 50;
        for i in 0..50u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            let _ = g.ban(NodeId(id), "sybil".into());
        }
        let first = {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&0u32.to_le_bytes());
            NodeId(id)
        };
        // Make the first ban the soonest to expire, whatever the clock did.
        g.bans.get_mut(&first).unwrap().until_ms = 1;
        let (_, evicted) = g.ban(NodeId([0xff; 32]), "one more".into());
        assert_eq!(evicted, Some(first));
        assert_eq!(g.bans.len(), 50);
        let (on_disk, _) = g.ban_list.active(0).unwrap();
        assert_eq!(on_disk.len(), 50);
    }

    #[test]
    fn bans_are_reloaded_by_a_new_guard() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeId([1; 32]);
        // (Reopening the database itself is the store's own test.)
        let store = agentmesh_store::Store::open(dir.path()).unwrap();
        let _ = Guard::new(&settings(10), store.bans().unwrap()).ban(a, "flooding".into());
        let g = Guard::new(&settings(10), store.bans().unwrap());
        assert!(g.is_banned(&a));
    }
}
