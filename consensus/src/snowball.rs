//! Snowball counters of one contested conflict set.

use agentmesh_protocol::VertexId;

/// The members (undecided vertices holding a transaction with the same
/// conflict key) and the Snowball state over them.
#[derive(Debug, Clone)]
pub struct ConflictSet {
    /// Members and their confidence (successful polls in total).
    members: Vec<(VertexId, u32)>,
    preference: VertexId,
    last: Option<VertexId>,
    /// Consecutive successful polls of `last`.
    count: u32,
    /// Consecutive polls in which no member got an alpha majority.
    failures: u32,
}

/// Failed polls in a row after which the preference follows the plurality
/// whatever the confidences (see [`ConflictSet::record_failure`]).
pub const STALLED_AFTER: u32 = 8;

impl ConflictSet {
    pub fn new(first: VertexId, second: VertexId) -> ConflictSet {
        ConflictSet {
            members: vec![(first, 0), (second, 0)],
            preference: first,
            last: None,
            count: 0,
            failures: 0,
        }
    }

    pub fn members(&self) -> impl Iterator<Item = VertexId> + '_ {
        self.members.iter().map(|(id, _)| *id)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn preference(&self) -> VertexId {
        self.preference
    }

    pub fn add(&mut self, member: VertexId) {
        if !self.members.iter().any(|(id, _)| *id == member) {
            self.members.push((member, 0));
        }
    }

    /// Consecutive successes of `member` (0 unless it won the last poll).
    pub fn streak(&self, member: &VertexId) -> u32 {
        if self.last.as_ref() == Some(member) {
            self.count
        } else {
            0
        }
    }

    /// `winner` got an alpha majority; returns true if the preference moved.
    pub fn record_success(&mut self, winner: VertexId) -> bool {
        let Some(pos) = self.members.iter().position(|(id, _)| *id == winner) else {
            return false;
        };
        self.members[pos].1 += 1;
        self.failures = 0;
        let confidence = self.members[pos].1;
        let preferred = self.confidence(&self.preference);
        let moved = winner != self.preference && confidence > preferred;
        if moved {
            self.preference = winner;
        }
        if self.last == Some(winner) {
            self.count += 1;
        } else {
            self.last = Some(winner);
            self.count = 1;
        }
        moved
    }

    /// No member got an alpha majority. The streak ends; and if another
    /// member drew more votes than the preference (ties to the smaller id)
    /// and has at least its confidence, or the set has failed
    /// [`STALLED_AFTER`] polls in a row that each sampled the whole
    /// population, the preference moves to it. (In a sampled network the
    /// plurality of one sample is noise; following it there after every
    /// stall makes preferences flap, and sampling noise breaks ties anyway.)
    /// Without this, a network small enough that every poll samples every
    /// node could stay split forever: with no sampling noise, no side ever
    /// reaches alpha, and nodes whose earlier successes went to different
    /// members would each keep their own. Acceptance still needs `beta`
    /// consecutive alpha majorities, so safety does not rest on it.
    /// Returns true if the preference moved.
    pub fn record_failure(&mut self, votes: &[(VertexId, usize)], whole_population: bool) -> bool {
        self.count = 0;
        self.failures = self.failures.saturating_add(1);
        let stalled = whole_population && self.failures >= STALLED_AFTER;
        let rank = |(id, n): &(VertexId, usize)| (*n, std::cmp::Reverse(*id));
        let Some(top) = votes.iter().max_by_key(|v| rank(v)) else {
            return false;
        };
        let current = votes
            .iter()
            .find(|(id, _)| *id == self.preference)
            .map_or((0, std::cmp::Reverse(self.preference)), rank);
        if top.0 != self.preference
            && rank(top) > current
            && top.1 > 0
            && (stalled || self.confidence(&top.0) >= self.confidence(&self.preference))
        {
            self.preference = top.0;
            return true;
        }
        false
    }

    /// Removes a rejected member; returns true if the preference moved.
    pub fn remove(&mut self, member: &VertexId) -> bool {
        self.members.retain(|(id, _)| id != member);
        if self.last.as_ref() == Some(member) {
            self.last = None;
            self.count = 0;
        }
        if self.preference != *member {
            return false;
        }
        // The most confident remaining member; ties go to the smaller id so
        // every node picks the same one from the same counts.
        if let Some((id, _)) = self
            .members
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        {
            self.preference = *id;
        }
        true
    }

    fn confidence(&self, member: &VertexId) -> u32 {
        self.members
            .iter()
            .find(|(id, _)| id == member)
            .map_or(0, |(_, c)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_split_follows_the_plurality_despite_confidence() {
        let (a, b) = (VertexId([1; 32]), VertexId([2; 32]));
        let mut set = ConflictSet::new(a, b);
        // Earlier successes went to `a` here, while most nodes prefer `b`.
        set.record_success(a);
        set.record_success(a);
        let split = [(a, 3), (b, 4)];
        // Samples of part of the network never trigger it.
        let mut sampled = set.clone();
        for _ in 0..2 * STALLED_AFTER {
            assert!(!sampled.record_failure(&split, false));
        }
        for _ in 1..STALLED_AFTER {
            assert!(!set.record_failure(&split, true));
            assert_eq!(set.preference(), a);
        }
        assert!(set.record_failure(&split, true));
        assert_eq!(set.preference(), b);
    }

    #[test]
    fn preference_follows_confidence_and_streaks_reset() {
        let (a, b) = (VertexId([1; 32]), VertexId([2; 32]));
        let mut set = ConflictSet::new(a, b);
        assert_eq!(set.preference(), a);
        assert!(set.record_success(b));
        assert_eq!(set.preference(), b);
        assert_eq!(set.streak(&b), 1);
        set.record_success(b);
        assert_eq!(set.streak(&b), 2);
        set.record_failure(&[], false);
        assert_eq!(set.streak(&b), 0);
        set.record_success(a);
        assert_eq!(set.preference(), b, "a has 1 success, b has 2");
        assert_eq!(set.streak(&a), 1);
        assert!(set.remove(&b));
        assert_eq!(set.preference(), a);
    }
}
