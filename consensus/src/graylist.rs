//! Misbehaving peers: strikes for silence and contradicting votes, and a
//! graylist of peers left out of samples until a deadline.

use agentmesh_protocol::NodeId;
use std::collections::HashMap;

/// Why a peer was graylisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Sent a vertex with a bad signature or malformed content.
    InvalidVertex,
    /// Signed two different vertices with the same sequence number.
    Equivocation,
    /// Left queries unanswered `silence_strikes` times in a row.
    Silence,
    /// Voted for vertices this node had long rejected.
    ContradictsFinalized,
    /// Voted for two conflicting vertices in one response, or sent a vote
    /// list that does not match the query.
    InconsistentVotes,
}

impl Misbehaviour {
    pub fn as_str(&self) -> &'static str {
        match self {
            Misbehaviour::InvalidVertex => "invalid vertex",
            Misbehaviour::Equivocation => "equivocation",
            Misbehaviour::Silence => "unanswered queries",
            Misbehaviour::ContradictsFinalized => "votes against finalized outcomes",
            Misbehaviour::InconsistentVotes => "inconsistent votes",
        }
    }
}

#[derive(Default, Debug)]
struct Record {
    silent_in_a_row: u32,
    /// Times benched for silence since it last answered: each doubles the
    /// next bench, and one unanswered query benches it again.
    silence_benches: u32,
    contradictions: u32,
    /// When the current run of contradictions began.
    contradictions_since_ms: u64,
    until_ms: u64,
}

/// How long after its last bench a silent peer's bench count is kept (a
/// validator that left for good is forgotten after this).
const SILENCE_MEMORY_MS: u64 = 600_000;

/// Contradicting votes further apart than this are not held together
/// against a peer: an honest but lagging node may cast one now and then.
const CONTRADICTION_WINDOW_MS: u64 = 60_000;

/// Bounded: records of peers that are neither graylisted nor striking are
/// forgotten by [`Graylist::prune`]; the engine records only validators
/// (voters of its polls) and peers that sent it something invalid.
#[derive(Default, Debug)]
pub struct Graylist {
    records: HashMap<NodeId, Record>,
}

impl Graylist {
    pub fn is_graylisted(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.records.get(peer).is_some_and(|r| r.until_ms > now_ms)
    }

    /// Graylists `peer` until `now + duration`; returns the deadline.
    pub fn graylist(&mut self, peer: NodeId, now_ms: u64, duration_ms: u64) -> u64 {
        let record = self.records.entry(peer).or_default();
        record.until_ms = record.until_ms.max(now_ms + duration_ms);
        record.silent_in_a_row = 0;
        record.contradictions = 0;
        record.until_ms
    }

    /// Counts an unanswered query; true when the peer reached `limit`, or
    /// at once when it was benched for silence before and has not answered
    /// since (a validator that stays silent is benched again at its first
    /// unanswered query, not after `limit` more slow polls).
    pub fn silent(&mut self, peer: NodeId, limit: u32) -> bool {
        let record = self.records.entry(peer).or_default();
        record.silent_in_a_row += 1;
        record.silent_in_a_row >= limit || record.silence_benches > 0
    }

    /// How long to bench a silent peer: `base_ms`, doubled for each bench
    /// since it last answered, at most `max_ms`. Counts this bench.
    pub fn silence_bench_ms(&mut self, peer: NodeId, base_ms: u64, max_ms: u64) -> u64 {
        let record = self.records.entry(peer).or_default();
        let doubling = record.silence_benches.min(16);
        record.silence_benches += 1;
        base_ms
            .saturating_mul(1 << doubling)
            .min(max_ms.max(base_ms))
    }

    pub fn answered(&mut self, peer: &NodeId) {
        if let Some(record) = self.records.get_mut(peer) {
            record.silent_in_a_row = 0;
            record.silence_benches = 0;
        }
    }

    /// Counts a contradicting vote; true when the peer reached `limit`
    /// within one window.
    pub fn contradicted(&mut self, peer: NodeId, now_ms: u64, limit: u32) -> bool {
        let record = self.records.entry(peer).or_default();
        if now_ms.saturating_sub(record.contradictions_since_ms) > CONTRADICTION_WINDOW_MS {
            record.contradictions = 0;
            record.contradictions_since_ms = now_ms;
        }
        record.contradictions += 1;
        record.contradictions >= limit
    }

    pub fn graylisted(&self, now_ms: u64) -> Vec<(NodeId, u64)> {
        self.records
            .iter()
            .filter(|(_, r)| r.until_ms > now_ms)
            .map(|(p, r)| (*p, r.until_ms))
            .collect()
    }

    pub fn prune(&mut self, now_ms: u64) {
        self.records.retain(|_, r| {
            r.until_ms > now_ms
                || r.silent_in_a_row > 0
                || (r.silence_benches > 0 && now_ms < r.until_ms.saturating_add(SILENCE_MEMORY_MS))
                || (r.contradictions > 0
                    && now_ms.saturating_sub(r.contradictions_since_ms) <= CONTRADICTION_WINDOW_MS)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_reset_on_answers_and_graylisting_expires() {
        let peer = NodeId([1; 32]);
        let mut g = Graylist::default();
        assert!(!g.silent(peer, 3));
        assert!(!g.silent(peer, 3));
        g.answered(&peer);
        assert!(!g.silent(peer, 3));
        assert!(!g.silent(peer, 3));
        assert!(g.silent(peer, 3));
        // A peer benched for silence is benched again at its next
        // unanswered query, for twice as long, until it answers.
        assert_eq!(g.silence_bench_ms(peer, 10, 35), 10);
        assert!(g.silent(peer, 3));
        assert_eq!(g.silence_bench_ms(peer, 10, 35), 20);
        assert_eq!(g.silence_bench_ms(peer, 10, 35), 35);
        g.answered(&peer);
        assert!(!g.silent(peer, 3));
        assert_eq!(g.silence_bench_ms(peer, 10, 35), 10);
        g.answered(&peer);
        let until = g.graylist(peer, 100, 50);
        assert_eq!(until, 150);
        assert!(g.is_graylisted(&peer, 149));
        assert!(!g.is_graylisted(&peer, 150));
        g.prune(200);
        assert!(g.graylisted(200).is_empty());
        // Contradictions count within a window only.
        assert!(!g.contradicted(peer, 1_000, 2));
        assert!(!g.contradicted(peer, 100_000, 2));
        assert!(g.contradicted(peer, 100_500, 2));
    }
}
