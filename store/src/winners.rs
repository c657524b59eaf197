//! Which accepted vertex holds each decided conflict key, in memory.
//!
//! One sled entry per transaction made every accepted transaction cost a
//! B-tree insert on every node (the largest single cost under load). The
//! index is instead rebuilt from the accepted vertices at start-up and kept
//! compact: a keyed 64-bit hash of the conflict key maps to the position of
//! the accepted vertex in a list, about 16 bytes per transaction. A hit is
//! confirmed against the vertex itself by the caller; the rare keys whose
//! hash is already taken by another key go to an exact map.

use agentmesh_protocol::VertexId;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

pub struct WinnerIndex {
    hasher: RandomState,
    by_hash: HashMap<u64, u32>,
    /// Keys whose hash collided with another key's.
    exact: HashMap<String, u32>,
    vertices: Vec<VertexId>,
    positions: HashMap<VertexId, u32>,
}

impl Default for WinnerIndex {
    fn default() -> WinnerIndex {
        WinnerIndex {
            // Keyed per process so peers cannot craft colliding keys.
            hasher: RandomState::new(),
            by_hash: HashMap::new(),
            exact: HashMap::new(),
            vertices: Vec::new(),
            positions: HashMap::new(),
        }
    }
}

impl WinnerIndex {
    fn position(&mut self, vertex: VertexId) -> u32 {
        if let Some(p) = self.positions.get(&vertex) {
            return *p;
        }
        let p = self.vertices.len() as u32;
        self.vertices.push(vertex);
        self.positions.insert(vertex, p);
        p
    }

    /// Records that `vertex` won `key`. `holds(other, key)` tells whether
    /// an already indexed vertex holds `key` (to tell a collision from a
    /// repeat).
    pub fn insert(&mut self, key: &str, vertex: VertexId, holds: impl Fn(&VertexId, &str) -> bool) {
        let position = self.position(vertex);
        let hash = self.hasher.hash_one(key);
        match self.by_hash.get(&hash) {
            None => {
                self.by_hash.insert(hash, position);
            }
            Some(p) if *p == position => {}
            Some(p) => {
                let other = self.vertices[*p as usize];
                if holds(&other, key) {
                    // The same key again (cannot happen for an accepted
                    // key); keep the first winner.
                    return;
                }
                self.exact.insert(key.to_string(), position);
            }
        }
    }

    /// The vertex that may hold `key`'s winner: from the exact map, or the
    /// hash slot (which the caller must confirm holds `key`).
    pub fn candidates(&self, key: &str) -> Vec<VertexId> {
        let mut out = Vec::with_capacity(2);
        if let Some(p) = self.exact.get(key) {
            out.push(self.vertices[*p as usize]);
        }
        if let Some(p) = self.by_hash.get(&self.hasher.hash_one(key)) {
            out.push(self.vertices[*p as usize]);
        }
        out
    }

    /// Keys indexed.
    pub fn count(&self) -> usize {
        self.by_hash.len() + self.exact.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_winners_and_keeps_colliding_keys_apart() {
        let mut index = WinnerIndex::default();
        let (a, b) = (VertexId([1; 32]), VertexId([2; 32]));
        index.insert("k1", a, |_, _| false);
        index.insert("k2", b, |_, _| false);
        assert!(index.candidates("k1").contains(&a));
        assert!(index.candidates("k2").contains(&b));
        // Force a collision: put k3's hash slot on a, which does not hold k3.
        let hash = index.hasher.hash_one("k3");
        index.by_hash.insert(hash, 0);
        index.insert("k3", b, |v, k| *v == a && k == "k1");
        assert_eq!(index.candidates("k3")[0], b);
    }
}
