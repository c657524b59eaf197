//! The validator set: who votes, and with what weight.
//!
//! The engine is given a [`ValidatorSet`] (never "the peers seen lately"):
//! only its members are sampled, and only their votes count. Sampling is
//! weighted and *with replacement*: each of the `k` draws picks a validator
//! with probability weight / total weight, and a validator drawn several
//! times casts its vote that many times. This is what avalanchego's
//! weighted sampler amounts to (stakes are far larger than `k`, so drawing
//! `k` units of stake without replacement is drawing validators with
//! replacement), and it keeps sampling noise in small meshes: with 7
//! validators and `k = 20`, a 3–3–1 split still produces successful polls
//! now and then, which is how Snowball breaks symmetry (see
//! docs/consensus.md).

use agentmesh_protocol::NodeId;
use rand::Rng;

/// Most validators in one set.
pub const MAX_VALIDATORS: usize = 10_000;
/// Largest weight of one validator. With [`MAX_VALIDATORS`], the total fits
/// in a u64 many times over.
pub const MAX_WEIGHT: u64 = 1_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidatorSetError {
    #[error("validator {0} has weight 0; weights are 1 to {MAX_WEIGHT}")]
    ZeroWeight(String),
    #[error("validator {0} has weight {1}; weights are 1 to {MAX_WEIGHT}")]
    TooHeavy(String, u64),
    #[error("validator {0} is listed twice")]
    Duplicate(String),
    #[error("{0} validators; a set holds at most {MAX_VALIDATORS}")]
    TooMany(usize),
}

/// A versioned, weighted set of validators. Members are sorted by id, so
/// equal sets compare equal and sample alike from the same seed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidatorSet {
    version: u64,
    members: Vec<(NodeId, u64)>,
    /// Running sums of weights, for sampling by binary search.
    cumulative: Vec<u64>,
}

impl ValidatorSet {
    /// A set of `members` with their weights, numbered `version` (the
    /// caller's counter: a larger version replaces a smaller one).
    pub fn new(
        version: u64,
        members: impl IntoIterator<Item = (NodeId, u64)>,
    ) -> Result<ValidatorSet, ValidatorSetError> {
        let mut members: Vec<(NodeId, u64)> = members.into_iter().collect();
        if members.len() > MAX_VALIDATORS {
            return Err(ValidatorSetError::TooMany(members.len()));
        }
        members.sort_by_key(|(id, _)| *id);
        for pair in members.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(ValidatorSetError::Duplicate(hex(&pair[0].0)));
            }
        }
        let mut cumulative = Vec::with_capacity(members.len());
        let mut total = 0u64;
        for (id, weight) in &members {
            if *weight == 0 {
                return Err(ValidatorSetError::ZeroWeight(hex(id)));
            }
            if *weight > MAX_WEIGHT {
                return Err(ValidatorSetError::TooHeavy(hex(id), *weight));
            }
            total += weight;
            cumulative.push(total);
        }
        Ok(ValidatorSet {
            version,
            members,
            cumulative,
        })
    }

    /// Every id with weight 1 (duplicates are merged).
    pub fn equal_weights(version: u64, ids: impl IntoIterator<Item = NodeId>) -> ValidatorSet {
        let mut ids: Vec<NodeId> = ids.into_iter().collect();
        ids.sort();
        ids.dedup();
        ids.truncate(MAX_VALIDATORS);
        ValidatorSet::new(version, ids.into_iter().map(|id| (id, 1)))
            .expect("weight 1, no duplicates, within the size bound")
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The weight of `id`; 0 for a non-member.
    pub fn weight(&self, id: &NodeId) -> u64 {
        self.members
            .binary_search_by_key(id, |(m, _)| *m)
            .map_or(0, |at| self.members[at].1)
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.weight(id) > 0
    }

    /// Members and weights, by id.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.members.iter().copied()
    }

    /// `draws` weighted draws with replacement, merged: each distinct
    /// validator drawn and how many times. Empty for an empty set.
    pub fn sample(&self, rng: &mut impl Rng, draws: usize) -> Vec<(NodeId, u32)> {
        let total = self.total_weight();
        let mut drawn: Vec<(NodeId, u32)> = Vec::new();
        if total == 0 {
            return drawn;
        }
        for _ in 0..draws {
            let unit = rng.random_range(0..total);
            // The first member whose running sum exceeds the unit.
            let at = self.cumulative.partition_point(|sum| *sum <= unit);
            let id = self.members[at].0;
            match drawn.iter_mut().find(|(d, _)| *d == id) {
                Some((_, times)) => *times += 1,
                None => drawn.push((id, 1)),
            }
        }
        drawn
    }
}

fn hex(id: &NodeId) -> String {
    id.0.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    #[test]
    fn bad_sets_are_refused_with_the_reason() {
        assert_eq!(
            ValidatorSet::new(1, [(id(1), 0)]),
            Err(ValidatorSetError::ZeroWeight(hex(&id(1))))
        );
        assert!(matches!(
            ValidatorSet::new(1, [(id(1), 1), (id(1), 2)]),
            Err(ValidatorSetError::Duplicate(_))
        ));
        assert!(matches!(
            ValidatorSet::new(1, [(id(1), MAX_WEIGHT + 1)]),
            Err(ValidatorSetError::TooHeavy(_, _))
        ));
    }

    #[test]
    fn non_members_have_no_weight_and_are_never_drawn() {
        let set = ValidatorSet::new(3, [(id(2), 5), (id(1), 1)]).unwrap();
        assert_eq!(set.version(), 3);
        assert_eq!(set.total_weight(), 6);
        assert_eq!(set.weight(&id(2)), 5);
        assert_eq!(set.weight(&id(9)), 0);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            for (drawn, _) in set.sample(&mut rng, 20) {
                assert!(drawn == id(1) || drawn == id(2));
            }
        }
        assert!(ValidatorSet::default().sample(&mut rng, 20).is_empty());
    }

    #[test]
    fn draws_follow_the_weights() {
        let set = ValidatorSet::new(1, [(id(1), 1), (id(2), 3)]).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut heavy = 0u64;
        let rounds = 2_000;
        for _ in 0..rounds {
            for (drawn, times) in set.sample(&mut rng, 20) {
                if drawn == id(2) {
                    heavy += u64::from(times);
                }
            }
        }
        let share = heavy as f64 / (rounds * 20) as f64;
        assert!((share - 0.75).abs() < 0.02, "heavy share {share}");
    }

    proptest! {
        #[test]
        fn a_sample_has_exactly_k_draws_of_members(
            weights in proptest::collection::vec(1u64..=100, 1..30),
            k in 1usize..=64,
            seed in any::<u64>(),
        ) {
            let set = ValidatorSet::new(
                1,
                weights.iter().enumerate().map(|(i, w)| (id(i as u8), *w)),
            ).unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            let drawn = set.sample(&mut rng, k);
            prop_assert_eq!(drawn.iter().map(|(_, t)| *t as usize).sum::<usize>(), k);
            for (d, _) in &drawn {
                prop_assert!(set.contains(d));
            }
            let mut ids: Vec<_> = drawn.iter().map(|(d, _)| *d).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), drawn.len());
        }
    }
}
