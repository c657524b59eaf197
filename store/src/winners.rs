//! Which accepted vertex holds each decided conflict key, in memory.
//!
//! One sled entry per transaction made every accepted transaction cost a
//! B-tree insert on every node (the largest single cost under load). The
//! index is instead rebuilt from the accepted vertices at start-up and kept
//! compact, about 8 bytes per transaction: a keyed 32-bit hash of the
//! conflict key and the position of the accepted vertex in a list. Hashes
//! may repeat; a lookup returns every vertex whose entry matches and the
//! caller confirms which of them holds the key.
//!
//! New entries go to a small hash map; when it fills up they are sorted
//! into a run, and runs of similar size are merged (as in a log-structured
//! merge tree), so there are O(log n) runs to binary-search and no large
//! table ever has to double in place.

use agentmesh_protocol::VertexId;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// Entries gathered before they are sorted into a run.
const RECENT_LIMIT: usize = 65_536;

type Entry = (u32, u32);

pub struct WinnerIndex {
    hasher: RandomState,
    recent: HashMap<u32, u32>,
    /// Recent entries whose hash was already in `recent`.
    recent_repeats: Vec<Entry>,
    /// Sorted runs, larger first.
    runs: Vec<Box<[Entry]>>,
    vertices: Vec<VertexId>,
    positions: HashMap<VertexId, u32>,
    count: usize,
}

impl Default for WinnerIndex {
    fn default() -> WinnerIndex {
        WinnerIndex {
            // Keyed per process so peers cannot craft colliding keys.
            hasher: RandomState::new(),
            recent: HashMap::new(),
            recent_repeats: Vec::new(),
            runs: Vec::new(),
            vertices: Vec::new(),
            positions: HashMap::new(),
            count: 0,
        }
    }
}

fn merge(a: &[Entry], b: &[Entry]) -> Box<[Entry]> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out.into_boxed_slice()
}

impl WinnerIndex {
    fn hash(&self, key: &str) -> u32 {
        // The low half of a keyed 64-bit SipHash.
        self.hasher.hash_one(key) as u32
    }

    fn position(&mut self, vertex: VertexId) -> u32 {
        if let Some(p) = self.positions.get(&vertex) {
            return *p;
        }
        let p = self.vertices.len() as u32;
        self.vertices.push(vertex);
        self.positions.insert(vertex, p);
        p
    }

    /// Records that `vertex` won `key`.
    pub fn insert(&mut self, key: &str, vertex: VertexId) {
        let position = self.position(vertex);
        let hash = self.hash(key);
        match self.recent.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.recent_repeats.push((hash, position))
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
        }
        self.count += 1;
        if self.recent.len() >= RECENT_LIMIT {
            self.seal_recent();
        }
    }

    fn seal_recent(&mut self) {
        let mut run: Vec<Entry> = self.recent.drain().collect();
        run.append(&mut self.recent_repeats);
        run.sort_unstable();
        self.runs.push(run.into_boxed_slice());
        // Merge while the newest run is as large as the one before it (a
        // binary counter): O(log n) runs, each entry copied O(log n) times.
        while self.runs.len() >= 2 {
            let n = self.runs.len();
            if self.runs[n - 1].len() < self.runs[n - 2].len() {
                break;
            }
            let newer = self.runs.pop().unwrap_or_default();
            let older = self.runs.pop().unwrap_or_default();
            self.runs.push(merge(&older, &newer));
        }
        self.recent.shrink_to(RECENT_LIMIT);
    }

    /// Every vertex that may hold `key`'s winner; the caller confirms.
    pub fn candidates(&self, key: &str) -> Vec<VertexId> {
        let hash = self.hash(key);
        let mut positions = Vec::new();
        if let Some(p) = self.recent.get(&hash) {
            positions.push(*p);
        }
        positions.extend(
            self.recent_repeats
                .iter()
                .filter(|(h, _)| *h == hash)
                .map(|(_, p)| *p),
        );
        for run in &self.runs {
            let start = run.partition_point(|(h, _)| *h < hash);
            positions.extend(
                run[start..]
                    .iter()
                    .take_while(|(h, _)| *h == hash)
                    .map(|(_, p)| *p),
            );
        }
        positions.sort_unstable();
        positions.dedup();
        positions
            .into_iter()
            .map(|p| self.vertices[p as usize])
            .collect()
    }

    /// Keys indexed.
    pub fn count(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_winner_across_runs_and_merges() {
        let mut index = WinnerIndex::default();
        let vertices: Vec<VertexId> = (0..40u8).map(|i| VertexId([i; 32])).collect();
        let n = RECENT_LIMIT * 3 + 123;
        for i in 0..n {
            index.insert(&format!("key:{i}"), vertices[i % 40]);
        }
        assert_eq!(index.count(), n);
        assert!(
            index.runs.len() <= 3,
            "runs are merged: {}",
            index.runs.len()
        );
        for i in (0..n).step_by(997) {
            assert!(index
                .candidates(&format!("key:{i}"))
                .contains(&vertices[i % 40]));
        }
        // A key never inserted rarely matches anything, and never errs.
        let misses = (0..1000)
            .filter(|i| !index.candidates(&format!("absent:{i}")).is_empty())
            .count();
        assert!(misses < 10, "{misses} false candidates of 1000");
    }
}
