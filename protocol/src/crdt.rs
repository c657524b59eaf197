//! State-based CRDTs for replicated patterns: vector clocks, grow-only
//! counters, a last-writer-wins register and an observed-remove set.
//!
//! Every type's `merge` is a join: commutative, associative and idempotent,
//! so replicas that have seen the same updates hold the same state in
//! whatever order and however often the updates arrived. Replicas are named
//! by [`NodeId`]; all maps are ordered so the CBOR encoding of a state is
//! canonical (its digest is what anti-entropy compares).

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// How two vector clocks relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// Every event of the left clock is in the right one, and more.
    Before,
    After,
    Concurrent,
}

/// Events seen per replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VectorClock(pub BTreeMap<NodeId, u64>);

impl VectorClock {
    pub fn get(&self, node: &NodeId) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Records one more event of `node`; returns its number (from 1).
    pub fn tick(&mut self, node: NodeId) -> u64 {
        let n = self.0.entry(node).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn merge(&mut self, other: &VectorClock) {
        for (node, &n) in &other.0 {
            let mine = self.0.entry(*node).or_insert(0);
            *mine = (*mine).max(n);
        }
    }

    pub fn compare(&self, other: &VectorClock) -> Causality {
        let (mut less, mut greater) = (false, false);
        for node in self.0.keys().chain(other.0.keys()) {
            match self.get(node).cmp(&other.get(node)) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A grow-only counter: each replica increments its own entry; the value
/// is the sum, merging takes the larger count per replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GCounter(pub BTreeMap<NodeId, u64>);

impl GCounter {
    pub fn increment(&mut self, node: NodeId, by: u64) {
        let n = self.0.entry(node).or_insert(0);
        *n = n.saturating_add(by);
    }

    pub fn value(&self) -> u64 {
        self.0.values().fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    pub fn merge(&mut self, other: &GCounter) {
        for (node, &n) in &other.0 {
            let mine = self.0.entry(*node).or_insert(0);
            *mine = (*mine).max(n);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What orders writes to a [`LwwRegister`]: version first, then the
/// writer's clock, then the writer's id, so that every replica picks the
/// same winner without coordination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub version: u64,
    pub timestamp_ms: u64,
    pub author: NodeId,
}

/// A last-writer-wins register. Two writes with equal stamps (only a
/// misbehaving writer produces them) are ordered by value, so merging stays
/// commutative even then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister<T> {
    pub stamp: Stamp,
    pub value: T,
}

impl<T: Ord + Clone> LwwRegister<T> {
    pub fn new(stamp: Stamp, value: T) -> Self {
        LwwRegister { stamp, value }
    }

    /// Takes `other` if it wins; true if the value changed.
    pub fn merge(&mut self, other: &LwwRegister<T>) -> bool {
        let wins = match other.stamp.cmp(&self.stamp) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => other.value > self.value,
        };
        if wins {
            self.stamp = other.stamp;
            self.value = other.value.clone();
        }
        wins
    }
}

/// A unique add event: (replica, that replica's event number).
pub type Dot = (NodeId, u64);

/// An observed-remove set without tombstones (ORSWOT): each present element
/// carries the dots of the adds that put it there; the set's own vector
/// clock remembers every dot it has seen, so a dot missing from a replica
/// that has seen it was removed there, and stays removed after a merge.
/// A remove wins only over the adds it observed; a concurrent add survives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet<E: Ord> {
    pub entries: BTreeMap<E, BTreeSet<Dot>>,
    pub clock: VectorClock,
}

impl<E: Ord> Default for OrSet<E> {
    fn default() -> Self {
        OrSet {
            entries: BTreeMap::new(),
            clock: VectorClock::default(),
        }
    }
}

impl<E: Ord + Clone> OrSet<E> {
    /// Adds `element` as `node`; the new dot replaces the ones this replica
    /// has seen for it.
    pub fn add(&mut self, node: NodeId, element: E) {
        let dot = (node, self.clock.tick(node));
        self.entries.insert(element, BTreeSet::from([dot]));
    }

    /// Removes `element` as observed here (its dots stay in the clock).
    pub fn remove(&mut self, element: &E) -> bool {
        self.entries.remove(element).is_some()
    }

    pub fn contains(&self, element: &E) -> bool {
        self.entries.contains_key(element)
    }

    pub fn elements(&self) -> impl Iterator<Item = &E> {
        self.entries.keys()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn seen(clock: &VectorClock, dot: &Dot) -> bool {
        clock.get(&dot.0) >= dot.1
    }

    pub fn merge(&mut self, other: &OrSet<E>) {
        let mut merged = BTreeMap::new();
        let empty = BTreeSet::new();
        let elements: BTreeSet<&E> = self.entries.keys().chain(other.entries.keys()).collect();
        for element in elements {
            let mine = self.entries.get(element).unwrap_or(&empty);
            let theirs = other.entries.get(element).unwrap_or(&empty);
            // A dot both hold stays; a dot only one holds stays unless the
            // other has seen it (and so removed it).
            let dots: BTreeSet<Dot> = mine
                .iter()
                .filter(|d| theirs.contains(d) || !Self::seen(&other.clock, d))
                .chain(
                    theirs
                        .iter()
                        .filter(|d| !mine.contains(d) && !Self::seen(&self.clock, d)),
                )
                .copied()
                .collect();
            if !dots.is_empty() {
                merged.insert(element.clone(), dots);
            }
        }
        self.entries = merged;
        self.clock.merge(&other.clock);
    }

    /// Most dots on any one element.
    pub fn max_dots(&self) -> usize {
        self.entries.values().map(BTreeSet::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    #[test]
    fn clocks_compare_causally() {
        let mut a = VectorClock::default();
        let mut b = VectorClock::default();
        assert_eq!(a.compare(&b), Causality::Equal);
        a.tick(node(1));
        assert_eq!(a.compare(&b), Causality::After);
        assert_eq!(b.compare(&a), Causality::Before);
        b.tick(node(2));
        assert_eq!(a.compare(&b), Causality::Concurrent);
        b.merge(&a);
        assert_eq!(a.compare(&b), Causality::Before);
    }

    #[test]
    fn a_concurrent_add_survives_a_remove() {
        let mut a = OrSet::default();
        a.add(node(1), "x");
        let mut b = a.clone();
        // b removes what it saw; a adds "x" again concurrently.
        b.remove(&"x");
        a.add(node(1), "x");
        let mut ab = a.clone();
        ab.merge(&b);
        assert!(ab.contains(&"x"));
        // A remove of an add that was observed sticks.
        let mut c = OrSet::default();
        c.add(node(1), "y");
        let mut d = c.clone();
        d.remove(&"y");
        c.merge(&d);
        assert!(!c.contains(&"y"));
    }

    #[test]
    fn the_register_prefers_version_then_time_then_author() {
        let stamp = |version, timestamp_ms, author| Stamp {
            version,
            timestamp_ms,
            author: node(author),
        };
        let mut r = LwwRegister::new(stamp(2, 10, 1), "old");
        assert!(!r.merge(&LwwRegister::new(stamp(1, 99, 9), "older version")));
        assert!(r.merge(&LwwRegister::new(stamp(2, 11, 0), "later")));
        assert!(r.merge(&LwwRegister::new(stamp(2, 11, 5), "higher author")));
        assert_eq!(r.value, "higher author");
    }

    /// One replica's operation in a random history.
    #[derive(Clone, Debug)]
    enum Op {
        Count(u8),
        Write(u8, u8),
        AddTag(u8),
        RemoveTag(u8),
        /// Merge the state of another replica into this one.
        Pull(usize),
    }

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Replica {
        counter: GCounter,
        register: Option<LwwRegister<u8>>,
        tags: OrSet<u8>,
        clock: VectorClock,
    }

    impl Replica {
        fn merge(&mut self, other: &Replica) {
            self.counter.merge(&other.counter);
            match (&mut self.register, &other.register) {
                (Some(mine), Some(theirs)) => {
                    mine.merge(theirs);
                }
                (None, Some(theirs)) => self.register = Some(theirs.clone()),
                _ => {}
            }
            self.tags.merge(&other.tags);
            self.clock.merge(&other.clock);
        }

        fn apply(&mut self, me: NodeId, op: &Op, others: &[Replica], time: u64) {
            self.clock.tick(me);
            match *op {
                Op::Count(n) => self.counter.increment(me, n as u64),
                Op::Write(version, value) => {
                    let version =
                        self.register.as_ref().map_or(0, |r| r.stamp.version) + version as u64 % 2;
                    let register = LwwRegister::new(
                        Stamp {
                            version,
                            timestamp_ms: time,
                            author: me,
                        },
                        value,
                    );
                    match &mut self.register {
                        Some(r) => {
                            r.merge(&register);
                        }
                        None => self.register = Some(register),
                    }
                }
                Op::AddTag(t) => self.tags.add(me, t % 6),
                Op::RemoveTag(t) => {
                    self.tags.remove(&(t % 6));
                }
                Op::Pull(i) => {
                    if !others.is_empty() {
                        let other = others[i % others.len()].clone();
                        self.merge(&other);
                    }
                }
            }
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Count),
            (any::<u8>(), any::<u8>()).prop_map(|(v, x)| Op::Write(v, x)),
            any::<u8>().prop_map(Op::AddTag),
            any::<u8>().prop_map(Op::RemoveTag),
            any::<usize>().prop_map(Op::Pull),
        ]
    }

    /// Runs each replica's operations, interleaved by `schedule`.
    fn run(ops: &[Vec<Op>], schedule: &[usize]) -> Vec<Replica> {
        let mut replicas = vec![Replica::default(); ops.len()];
        let mut next = vec![0usize; ops.len()];
        for (time, &pick) in schedule.iter().enumerate() {
            let r = pick % ops.len();
            if let Some(op) = ops[r].get(next[r]) {
                next[r] += 1;
                let snapshot = replicas.clone();
                replicas[r].apply(node(r as u8), op, &snapshot, time as u64);
            }
        }
        // Whatever was not scheduled runs at the end.
        for r in 0..ops.len() {
            while let Some(op) = ops[r].get(next[r]) {
                next[r] += 1;
                let snapshot = replicas.clone();
                replicas[r].apply(node(r as u8), op, &snapshot, 1_000 + next[r] as u64);
            }
        }
        replicas
    }

    proptest! {
        /// 3 to 5 replicas run random operations (with partial merges along
        /// the way); merging all final states in any order gives one state.
        #[test]
        fn replicas_converge_whatever_the_merge_order(
            ops in (3usize..=5).prop_flat_map(|n| proptest::collection::vec(
                proptest::collection::vec(op(), 0..12), n)),
            schedule in proptest::collection::vec(any::<usize>(), 0..60),
            order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let replicas = run(&ops, &schedule);
            let mut forward = Replica::default();
            for r in &replicas { forward.merge(r); }
            let mut shuffled = Replica::default();
            for &i in order.iter().filter(|&&i| i < replicas.len()) {
                shuffled.merge(&replicas[i]);
            }
            // Pairwise merges in a tree, and repeated merges, agree too.
            let mut tree = replicas[0].clone();
            let mut rest = replicas[1].clone();
            for r in &replicas[2..] { rest.merge(r); }
            tree.merge(&rest);
            tree.merge(&replicas[1]);
            prop_assert_eq!(&forward, &shuffled);
            prop_assert_eq!(&forward, &tree);
            let mut again = forward.clone();
            again.merge(&forward);
            prop_assert_eq!(&again, &forward);
            // Counts from all replicas add up.
            let counted: u64 = ops.iter().flatten().map(|o| match o {
                Op::Count(n) => *n as u64,
                _ => 0,
            }).sum();
            prop_assert_eq!(forward.counter.value(), counted);
        }

        #[test]
        fn merges_commute(
            a in proptest::collection::vec(op(), 0..10),
            b in proptest::collection::vec(op(), 0..10),
        ) {
            let replicas = run(&[a, b], &[]);
            let mut ab = replicas[0].clone();
            ab.merge(&replicas[1]);
            let mut ba = replicas[1].clone();
            ba.merge(&replicas[0]);
            prop_assert_eq!(ab, ba);
        }
    }
}
