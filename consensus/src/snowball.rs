//! Snowball counters of one contested conflict set, by the standard rules
//! (avalanchego's `nnary_snowball`):
//!
//! - a poll in which a member draws at least α-preference votes is
//!   *successful* for it: its preference strength grows, and the preference
//!   moves to it once its strength exceeds the current preference's;
//! - a successful poll that also reaches α-confidence extends the member's
//!   run of consecutive confident polls (a run of another member ends);
//!   one below α-confidence ends every run;
//! - an unsuccessful poll ends every run and changes nothing else.
//!
//! One departure, argued in docs/consensus.md: strength is bounded. When the
//! winner of a poll is already at the bound, every other member loses one
//! instead, so a majority from long ago (one side of a partition that won
//! polls for minutes) cannot hold a node against the current one for longer
//! than the bound's worth of polls. The preference still moves only to the
//! winner of a successful poll. Safety rests on the confidence runs, which
//! the bound does not touch.
//!
//! The only other thing that sets the preference is the *initial* choice:
//! while no member has won a single poll here and this node has not voted
//! for any of them, the preference is the member with the smallest id.
//! Every node that knows the same rivals therefore starts from the same
//! one, which keeps many-way contests (every node claiming one task at
//! once) live. Once a node has answered a query with a yes for a member,
//! its preference moves only by polls, as in standard Snowball: some other
//! node may have accepted that member on the strength of those votes. A
//! vertex's successful polls from before it had a rival likewise count as
//! its strength when the set forms. So a rival released late (perhaps after
//! some node accepted the first) never takes the preference from a node
//! that vouched for, or saw evidence for, the first; see docs/consensus.md
//! for the safety argument.

use agentmesh_protocol::VertexId;

#[derive(Debug, Clone)]
pub struct ConflictSet {
    /// Members and their preference strength (successful polls).
    members: Vec<(VertexId, u32)>,
    preference: VertexId,
    /// The member of the current run of confident polls.
    last: Option<VertexId>,
    /// Length of that run.
    count: u32,
    /// This node has voted yes for its preference in an answer to a peer:
    /// the initial choice is final.
    vouched: bool,
}

/// What a poll showed for one conflict set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    /// No member reached α-preference.
    Unsuccessful,
    /// `0` reached α-preference but not α-confidence.
    Preferred(VertexId),
    /// `0` reached α-confidence.
    Confident(VertexId),
}

impl ConflictSet {
    /// The set formed when `second` arrives as a rival of `first`, which
    /// had won `first_wins` polls alone (its strength from the start: those
    /// were successful polls for it on this key) and which this node has
    /// voted for to a peer if `first_vouched`. The preference is `first` if
    /// either, else the smaller id.
    pub fn new(
        first: VertexId,
        first_wins: u32,
        first_vouched: bool,
        second: VertexId,
    ) -> ConflictSet {
        let preference = if first_wins > 0 || first_vouched {
            first
        } else {
            first.min(second)
        };
        ConflictSet {
            members: vec![(first, first_wins), (second, 0)],
            preference,
            last: None,
            count: 0,
            vouched: first_vouched,
        }
    }

    /// This node has voted yes for the preference in an answer to a peer:
    /// from now on only polls move it.
    pub fn vouch(&mut self) {
        self.vouched = true;
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

    /// Adds a rival; returns true if the preference moved (only while no
    /// poll has succeeded here and this node has not vouched: the initial
    /// choice).
    pub fn add(&mut self, member: VertexId) -> bool {
        if self.members.iter().any(|(id, _)| *id == member) {
            return false;
        }
        self.members.push((member, 0));
        if !self.vouched && self.untouched() && member < self.preference {
            self.preference = member;
            return true;
        }
        false
    }

    /// Consecutive confident polls of `member` (0 unless it has the run).
    pub fn streak(&self, member: &VertexId) -> u32 {
        if self.last.as_ref() == Some(member) {
            self.count
        } else {
            0
        }
    }

    /// Applies one poll, strengths bounded by `max_strength` (at least 1);
    /// returns true if the preference moved.
    pub fn record(&mut self, result: PollResult, max_strength: u32) -> bool {
        let (winner, confident) = match result {
            PollResult::Unsuccessful => {
                self.count = 0;
                return false;
            }
            PollResult::Preferred(w) => (w, false),
            PollResult::Confident(w) => (w, true),
        };
        let Some(pos) = self.members.iter().position(|(id, _)| *id == winner) else {
            return false;
        };
        if self.members[pos].1 < max_strength.max(1) {
            self.members[pos].1 += 1;
        } else {
            for (at, (_, strength)) in self.members.iter_mut().enumerate() {
                if at != pos {
                    *strength = strength.saturating_sub(1);
                }
            }
        }
        let strength = self.members[pos].1;
        let moved = winner != self.preference && strength > self.strength(&self.preference);
        if moved {
            self.preference = winner;
        }
        if !confident {
            self.count = 0;
        } else if self.last == Some(winner) {
            self.count += 1;
        } else {
            self.last = Some(winner);
            self.count = 1;
        }
        moved
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
        // The strongest remaining member; ties go to the smaller id so
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

    /// No member has won a poll (strength never falls to zero for all
    /// members through polls: the winner keeps what it has; only removing
    /// the members that had won can bring it back).
    fn untouched(&self) -> bool {
        self.members.iter().all(|(_, s)| *s == 0)
    }

    fn strength(&self, member: &VertexId) -> u32 {
        self.members
            .iter()
            .find(|(id, _)| id == member)
            .map_or(0, |(_, c)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAP: u32 = 1_000;

    fn v(n: u8) -> VertexId {
        VertexId([n; 32])
    }

    #[test]
    fn bounded_strength_lets_a_new_majority_take_over_after_the_bound() {
        let (a, b) = (v(1), v(2));
        let mut set = ConflictSet::new(a, 0, false, b);
        for _ in 0..1_000 {
            set.record(PollResult::Preferred(b), 5);
        }
        // b won a thousand polls, but a needs only 5 + 1 to take over.
        for _ in 0..5 {
            set.record(PollResult::Preferred(a), 5);
            assert_eq!(set.preference(), b);
        }
        assert!(set.record(PollResult::Preferred(a), 5));
    }

    #[test]
    fn the_initial_preference_is_the_smallest_id_until_a_poll_succeeds() {
        let mut set = ConflictSet::new(v(5), 0, false, v(3));
        assert_eq!(set.preference(), v(3));
        assert!(set.add(v(1)));
        assert_eq!(set.preference(), v(1));
        set.record(PollResult::Preferred(v(5)), CAP);
        assert_eq!(set.preference(), v(5), "strength 1 against 0");
        assert!(
            !set.add(v(0)),
            "a poll has succeeded: no more initial choice"
        );
        assert_eq!(set.preference(), v(5));
    }

    #[test]
    fn a_late_rival_never_takes_over_a_vertex_that_won_polls_alone() {
        // The first vertex won a poll before its rival arrived: the rival,
        // smaller id or not, starts behind it.
        let set = ConflictSet::new(v(9), 1, false, v(1));
        assert_eq!(set.preference(), v(9));
        assert_eq!(set.strength(&v(9)), 1);
        // Without such evidence the smaller id is the initial choice.
        assert_eq!(ConflictSet::new(v(9), 0, false, v(1)).preference(), v(1));
    }

    #[test]
    fn a_late_rival_never_takes_over_a_vertex_this_node_voted_for() {
        // This node answered yes for v(9) (some peer may have accepted it on
        // those votes) before it won a poll of its own here.
        let mut set = ConflictSet::new(v(9), 0, true, v(1));
        assert_eq!(set.preference(), v(9));
        assert!(!set.add(v(0)), "no initial choice after a vote");
        assert_eq!(set.preference(), v(9));
        // Polls still move it, as in Snowball.
        assert!(set.record(PollResult::Preferred(v(1)), CAP));
        assert_eq!(set.preference(), v(1));

        // The same once it votes for the initial choice of a formed set.
        let mut set = ConflictSet::new(v(5), 0, false, v(3));
        set.vouch();
        assert!(!set.add(v(1)));
        assert_eq!(set.preference(), v(3));
    }

    #[test]
    fn failed_polls_never_move_the_preference() {
        let mut set = ConflictSet::new(v(1), 0, false, v(2));
        set.record(PollResult::Confident(v(2)), CAP);
        set.record(PollResult::Confident(v(2)), CAP);
        assert_eq!(set.streak(&v(2)), 2);
        for _ in 0..100 {
            assert!(!set.record(PollResult::Unsuccessful, CAP));
            assert_eq!(set.preference(), v(2));
        }
        assert_eq!(set.streak(&v(2)), 0);
    }

    #[test]
    fn preference_follows_strength_and_runs_follow_confidence() {
        let (a, b) = (v(1), v(2));
        let mut set = ConflictSet::new(a, 0, false, b);
        assert!(set.record(PollResult::Confident(b), CAP));
        assert_eq!(set.preference(), b);
        set.record(PollResult::Confident(b), CAP);
        assert_eq!(set.streak(&b), 2);
        // Preferred but not confident: the run ends, strength still grows.
        set.record(PollResult::Preferred(b), CAP);
        assert_eq!(set.streak(&b), 0);
        assert!(!set.record(PollResult::Confident(a), CAP));
        assert_eq!(set.preference(), b, "a has 1 success, b has 3");
        assert_eq!(set.streak(&a), 1);
        assert!(set.remove(&b));
        assert_eq!(set.preference(), a);
    }

    proptest! {
        /// Whatever the polls, the preference is always a member with the
        /// greatest strength once any poll succeeded, and it moves only on
        /// a successful poll.
        #[test]
        fn preference_is_always_a_strongest_member(
            polls in proptest::collection::vec((0u8..4, 0u8..3), 0..200),
        ) {
            let mut set = ConflictSet::new(v(0), 0, false, v(1));
            set.add(v(2));
            set.add(v(3));
            for (member, kind) in polls {
                let before = set.preference();
                let result = match kind {
                    0 => PollResult::Unsuccessful,
                    1 => PollResult::Preferred(v(member)),
                    _ => PollResult::Confident(v(member)),
                };
                let moved = set.record(result, CAP);
                prop_assert_eq!(moved, before != set.preference());
                if result == PollResult::Unsuccessful {
                    prop_assert!(!moved);
                }
                let best = set.members.iter().map(|(_, s)| *s).max().unwrap();
                prop_assert_eq!(set.strength(&set.preference()), best);
            }
        }
    }
}
