//! What the mesh-learning service remembers of each peer: how much of this
//! node's model its models make up (its influence), whether its models
//! were rejected lately, and when one was last taken.
//!
//! **Influence over time.** Merging mixes parameters linearly: after a
//! round in which peer i gets share sᵢ (and all peers together S), what
//! the model owes to peer i is oᵢ' = oᵢ (1 − S) + sᵢ. Each round caps sᵢ
//! at `max_peer_influence` − oᵢ, so oᵢ never exceeds that setting. The
//! count also halves every [`HALF_LIFE_ROUNDS`] sharing intervals: without
//! that, two honest nodes that merged each other once (half each) could
//! never merge again. So the bound is on a decaying count: a peer at the
//! limit gets about 6 % of a merge per round (at the default 0.5),
//! however often it sends an update, where without the cap it would
//! replace the model in a few rounds. Influence is counted once the node has data of
//! its own (an untrained node has nothing to protect) and starts again
//! from zero when the node trains or imports a model. It is kept in
//! memory: a restart forgets it (docs/model.md says so).
//!
//! **Rejections.** A peer whose model is rejected is not fetched from for
//! a cool-down that doubles with each rejection in a row (one sharing
//! interval, then two, four... at most an hour), so a peer that sends a
//! poisoned model every round costs this node a fetch and a check now and
//! then, not every round.
//!
//! **Order.** Peers whose model was taken longest ago go first (ties in a
//! random order): the order is not one a peer can choose by announcing a
//! high version.

use agentmesh_protocol::NodeId;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

/// Longest cool-down after rejections.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(3600);
/// Influence below this is forgotten.
const NEGLIGIBLE: f64 = 1e-6;
/// Peers whose last fetch is remembered (a Sybil cycling through
/// identities cannot grow the map without bound).
const MAX_REMEMBERED: usize = 4096;
/// Sharing intervals over which a peer's counted influence halves.
pub const HALF_LIFE_ROUNDS: u32 = 10;

struct Strikes {
    count: u32,
    until: Instant,
}

pub struct PeerLedger {
    /// The model lineage the influence was counted on.
    lineage: u64,
    /// Each peer's influence when last counted, and when.
    influence: HashMap<NodeId, (f64, Instant)>,
    half_life: Duration,
    strikes: HashMap<NodeId, Strikes>,
    last_taken: HashMap<NodeId, u64>,
    round: u64,
    /// Keyed per process: the tie-break order is not one a peer can know.
    ties: RandomState,
}

/// Scales a round's per-peer caps so that, while influence is counted,
/// the peers of one round together make up at most `max_influence` of the
/// merge: identities never merged before, each with a full cap, do not add
/// up to a takeover.
pub fn round_caps(mut caps: Vec<f64>, max_influence: f64, counting: bool) -> Vec<f64> {
    let total: f64 = caps.iter().sum();
    if counting && total > max_influence {
        caps.iter_mut().for_each(|c| *c *= max_influence / total);
    }
    caps
}

impl PeerLedger {
    /// A ledger for a node sharing every `interval`.
    pub fn new(interval: Duration) -> PeerLedger {
        PeerLedger {
            lineage: 0,
            influence: HashMap::new(),
            half_life: interval.saturating_mul(HALF_LIFE_ROUNDS),
            strikes: HashMap::new(),
            last_taken: HashMap::new(),
            round: 0,
            ties: RandomState::new(),
        }
    }

    /// Forgets every peer's influence if the node trained or imported a
    /// model since (a new `lineage`).
    pub fn on_lineage(&mut self, lineage: u64) {
        if lineage != self.lineage {
            self.lineage = lineage;
            self.influence.clear();
        }
    }

    /// `peer`'s influence at `now`.
    pub fn influence(&self, peer: &NodeId, now: Instant) -> f64 {
        self.influence
            .get(peer)
            .map_or(0.0, |(o, at)| decayed(*o, *at, now, self.half_life))
    }

    /// The most `peer` may weigh in a merge at `now` (1 when influence is
    /// not counted).
    pub fn cap(&self, peer: &NodeId, max_influence: f64, counting: bool, now: Instant) -> f64 {
        if counting {
            (max_influence - self.influence(peer, now)).max(0.0)
        } else {
            1.0
        }
    }

    /// Records a merge installed at `now`: each peer's share of it.
    pub fn merged(&mut self, shares: &[(NodeId, f64)], counting: bool, now: Instant) {
        for (peer, _) in shares {
            self.last_taken.insert(*peer, self.round);
            self.strikes.remove(peer);
        }
        if !counting {
            return;
        }
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        let current: Vec<(NodeId, f64)> = self
            .influence
            .keys()
            .map(|peer| (*peer, self.influence(peer, now)))
            .collect();
        self.influence = current
            .into_iter()
            .map(|(peer, o)| (peer, (o * (1.0 - total), now)))
            .collect();
        for (peer, share) in shares {
            self.influence.entry(*peer).or_insert((0.0, now)).0 += share;
        }
        self.influence.retain(|_, (o, _)| *o > NEGLIGIBLE);
    }

    /// A rejected model: the peer cools down for `interval` × 2^(rejections
    /// in a row − 1), at most [`MAX_COOL_DOWN`].
    pub fn rejected(&mut self, peer: NodeId, now: Instant, interval: Duration) {
        self.last_taken.insert(peer, self.round);
        let count = self.strikes.get(&peer).map_or(0, |s| s.count) + 1;
        let wait = interval
            .saturating_mul(1 << (count - 1).min(16))
            .min(MAX_COOL_DOWN);
        self.strikes.insert(
            peer,
            Strikes {
                count,
                until: now + wait,
            },
        );
    }

    pub fn cooling(&self, peer: &NodeId, now: Instant) -> bool {
        self.strikes.get(peer).is_some_and(|s| now < s.until)
    }

    /// Orders `queue` for fetching (module docs) and starts a new round.
    pub fn order<T>(&mut self, queue: &mut [(NodeId, T)]) {
        self.round += 1;
        let round = self.round;
        queue.sort_by_key(|(peer, _)| {
            let taken = self.last_taken.get(peer).copied().unwrap_or(0);
            (taken, self.ties.hash_one((peer, round)))
        });
        self.forget_old(Instant::now());
    }

    /// Keeps the maps the size of the peers seen lately: strikes long
    /// expired and influence decayed to nothing are dropped, and past
    /// [`MAX_REMEMBERED`] peers the ones taken longest ago are forgotten
    /// (they then count as never taken: first in line, which is what an
    /// identity new to this node gets anyway).
    fn forget_old(&mut self, now: Instant) {
        self.strikes
            .retain(|_, s| now.saturating_duration_since(s.until) < MAX_COOL_DOWN);
        let half_life = self.half_life;
        self.influence
            .retain(|_, (o, at)| decayed(*o, *at, now, half_life) > NEGLIGIBLE);
        if self.last_taken.len() > MAX_REMEMBERED {
            let mut rounds: Vec<u64> = self.last_taken.values().copied().collect();
            rounds.sort_unstable();
            let cut = rounds[rounds.len() - MAX_REMEMBERED / 2];
            self.last_taken.retain(|_, r| *r >= cut);
        }
    }
}

/// Influence `o` counted at `at`, as it stands at `now`.
fn decayed(o: f64, at: Instant, now: Instant, half_life: Duration) -> f64 {
    if half_life.is_zero() {
        return 0.0;
    }
    let halvings = now.saturating_duration_since(at).as_secs_f64() / half_life.as_secs_f64();
    o * 0.5f64.powf(halvings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    proptest! {
        /// However shares are handed out within the caps, no peer's
        /// influence passes the limit; the caps let an honest peer back in
        /// as others dilute it.
        #[test]
        fn no_peer_influence_passes_the_limit(
            rounds in proptest::collection::vec(
                proptest::collection::vec((0u8..4, 0.0f64..1.0), 1..4),
                1..60,
            ),
            limit in 0.05f64..1.0,
        ) {
            let mut ledger = PeerLedger::new(Duration::from_secs(1));
            let now = Instant::now();
            for round in rounds {
                let mut shares: Vec<(NodeId, f64)> = Vec::new();
                let mut left = 1.0;
                for (p, want) in round {
                    if shares.iter().any(|(q, _)| *q == peer(p)) {
                        continue;
                    }
                    let share = want.min(ledger.cap(&peer(p), limit, true, now)).min(left);
                    left -= share;
                    shares.push((peer(p), share));
                }
                ledger.merged(&shares, true, now);
                for p in 0..4 {
                    prop_assert!(ledger.influence(&peer(p), now) <= limit + 1e-9);
                }
            }
        }
    }

    #[test]
    fn the_same_peer_every_round_stays_under_the_limit_and_training_resets_it() {
        let interval = Duration::from_secs(10);
        let mut ledger = PeerLedger::new(interval);
        let start = Instant::now();
        for _ in 0..100 {
            let cap = ledger.cap(&peer(1), 0.5, true, start);
            ledger.merged(&[(peer(1), cap.min(0.5))], true, start);
        }
        assert!((ledger.influence(&peer(1), start) - 0.5).abs() < 1e-9);
        assert_eq!(ledger.cap(&peer(1), 0.5, true, start), 0.0);
        // A half-life later it may make up a quarter again: at most half
        // of the model per half-life, round after round.
        let later = start + interval * HALF_LIFE_ROUNDS;
        assert!((ledger.cap(&peer(1), 0.5, true, later) - 0.25).abs() < 1e-9);
        // Merged every round at its cap, it gets about 6 % of each.
        let mut now = start;
        for _ in 0..100 {
            now += interval;
            let cap = ledger.cap(&peer(1), 0.5, true, now);
            assert!(cap < 0.07, "{cap}");
            ledger.merged(&[(peer(1), cap)], true, now);
        }
        ledger.on_lineage(1);
        assert_eq!(ledger.cap(&peer(1), 0.5, true, now), 0.5);
        // Not counted for a node without data of its own.
        assert_eq!(ledger.cap(&peer(1), 0.5, false, now), 1.0);
    }

    #[test]
    fn rejections_cool_a_peer_down_for_longer_each_time() {
        let (now, interval) = (Instant::now(), Duration::from_secs(10));
        let mut ledger = PeerLedger::new(interval);
        ledger.rejected(peer(1), now, interval);
        assert!(ledger.cooling(&peer(1), now + Duration::from_secs(9)));
        assert!(!ledger.cooling(&peer(1), now + Duration::from_secs(11)));
        ledger.rejected(peer(1), now, interval);
        assert!(ledger.cooling(&peer(1), now + Duration::from_secs(19)));
        for _ in 0..30 {
            ledger.rejected(peer(1), now, interval);
        }
        assert!(!ledger.cooling(&peer(1), now + MAX_COOL_DOWN + Duration::from_secs(1)));
        // A model of its taken later clears the strikes.
        ledger.merged(&[(peer(1), 0.1)], true, now);
        assert!(!ledger.cooling(&peer(1), now));
    }

    #[test]
    fn the_maps_stay_bounded_as_identities_come_and_go() {
        let mut ledger = PeerLedger::new(Duration::from_millis(1));
        for i in 0..3 * MAX_REMEMBERED as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let mut queue = vec![(NodeId(id), ())];
            ledger.order(&mut queue);
            ledger.merged(&[(NodeId(id), 0.01)], true, Instant::now());
            ledger.rejected(
                NodeId(id),
                Instant::now() - MAX_COOL_DOWN * 3,
                Duration::ZERO,
            );
        }
        assert!(ledger.last_taken.len() <= MAX_REMEMBERED);
        assert!(ledger.strikes.len() <= 1);
        // A second later (a thousand half-lives) all influence has decayed.
        ledger.forget_old(Instant::now() + Duration::from_secs(1));
        assert!(ledger.influence.is_empty(), "{}", ledger.influence.len());
    }

    #[test]
    fn peers_taken_longest_ago_go_first_whatever_they_announce() {
        let mut ledger = PeerLedger::new(Duration::from_secs(1));
        let mut queue = vec![(peer(1), 100u64), (peer(2), 1), (peer(3), 50)];
        ledger.order(&mut queue);
        ledger.merged(&[(queue[0].0, 0.1)], false, Instant::now());
        let first = queue[0].0;
        let mut again = vec![(peer(1), 100u64), (peer(2), 1), (peer(3), 50)];
        ledger.order(&mut again);
        assert_ne!(again[0].0, first);
        assert_eq!(again[2].0, first);
    }
}
