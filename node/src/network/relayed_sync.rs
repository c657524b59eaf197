//! Pattern sync through a relay moves a bounded number of bytes.
//!
//! A relay carries circuits for others on its own bandwidth, and closes
//! each one after `nat.relay_circuit_bytes` (16 MiB by default) or
//! `nat.relay_circuit_secs`. One anti-entropy round of a large store (the
//! 100,000-pattern benchmark moves tens of MB) would spend that in one go,
//! and gossip and consensus queries share the circuit. So sync with a peer
//! this node reaches only through a relay gets a byte budget per minute,
//! counted in both directions: requests this node sends and answers it
//! receives, and answers it gives. Past the budget, its own requests fail
//! at once and peers' requests are refused with the reason; the round is
//! retried later, and with a direct connection (after hole punching) no
//! budget applies. Anti-entropy converges either way: a round fetches what
//! differs, so rounds cut short resume where they left off.

use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sync bytes a minute with one peer reached only through a relay: about
/// 60 % of what a default circuit may carry a minute (16 MiB in 10
/// minutes), leaving the rest to gossip and consensus queries.
pub const RELAYED_SYNC_BYTES_PER_MINUTE: usize = 1024 * 1024;

const WINDOW: Duration = Duration::from_secs(60);

/// Bytes spent per relayed peer in the current one-minute window. A
/// request is charged with the largest answer it may get as soon as it is
/// sent or admitted, and the unused part is given back when the answer is
/// known: requests in flight at once cannot overrun the budget.
#[derive(Default)]
pub struct RelayedSyncBudget {
    spent: HashMap<PeerId, (Instant, usize)>,
    /// Requests this node did not send, and requests of peers it refused,
    /// for `/metrics`.
    pub refused: u64,
}

impl RelayedSyncBudget {
    /// Whether `peer` still has budget left in its window at `now`.
    pub fn allows(&self, peer: &PeerId, now: Instant) -> bool {
        match self.spent.get(peer) {
            Some((start, spent)) if now.duration_since(*start) < WINDOW => {
                *spent < RELAYED_SYNC_BYTES_PER_MINUTE
            }
            _ => true,
        }
    }

    /// Counts `bytes` moved with `peer` through a relay. The message that
    /// crosses the budget still goes (messages are bounded, ≤ 0.5 MiB); the
    /// next one waits.
    pub fn charge(&mut self, peer: PeerId, bytes: usize, now: Instant) {
        let entry = self.spent.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(bytes);
    }

    /// Gives back bytes charged in advance (a bound on an answer) that the
    /// answer did not use.
    pub fn refund(&mut self, peer: &PeerId, bytes: usize) {
        if let Some((_, spent)) = self.spent.get_mut(peer) {
            *spent = spent.saturating_sub(bytes);
        }
    }

    /// Forgets windows that ended (peers come and go).
    pub fn prune(&mut self, now: Instant) {
        self.spent
            .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_runs_out_within_a_minute_and_comes_back_after_it() {
        let mut b = RelayedSyncBudget::default();
        let peer = PeerId::random();
        let other = PeerId::random();
        let t0 = Instant::now();
        assert!(b.allows(&peer, t0));
        b.charge(peer, RELAYED_SYNC_BYTES_PER_MINUTE - 1, t0);
        assert!(b.allows(&peer, t0 + Duration::from_secs(1)));
        b.charge(peer, 2, t0 + Duration::from_secs(1));
        assert!(!b.allows(&peer, t0 + Duration::from_secs(59)));
        // Per peer: another relayed peer is not affected.
        assert!(b.allows(&other, t0 + Duration::from_secs(59)));
        // A new window starts a minute after the first charge.
        let later = t0 + WINDOW;
        assert!(b.allows(&peer, later));
        b.charge(peer, 10, later);
        assert!(b.allows(&peer, later));
        // An answer's bound charged in advance, the unused part given back.
        b.charge(peer, RELAYED_SYNC_BYTES_PER_MINUTE, later);
        assert!(!b.allows(&peer, later));
        b.refund(&peer, RELAYED_SYNC_BYTES_PER_MINUTE - 100);
        assert!(b.allows(&peer, later));
        b.prune(later + WINDOW);
        assert!(b.spent.is_empty());
    }
}
