//! Vertices that arrive while the node bootstraps: held back from the
//! engine (which would poll them one by one, ancestry and all, the very
//! thing bootstrapping avoids) and handed to it once the walk is over, so
//! none is lost and every node ends up holding the same undecided set.
//! Bounded: each vertex once, and beyond the bounds the oldest go first
//! (the likeliest to have been accepted by the walk itself); dropped ones
//! come back when queries or descendants name them.

use agentmesh_protocol::{NodeId, Vertex, VertexId};
use std::collections::{HashSet, VecDeque};

/// Most vertices held.
const MAX_HELD: usize = 4096;
/// Most bytes held (vertices are up to 1 MiB each).
const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub struct Held {
    vertices: VecDeque<(NodeId, Vertex)>,
    ids: HashSet<VertexId>,
    bytes: usize,
    /// Deliveries held, and those dropped over the bounds.
    pub held: u64,
    pub dropped: u64,
}

impl Held {
    pub fn hold(&mut self, from: NodeId, vertex: Vertex) {
        if !self.ids.insert(vertex.id()) {
            return;
        }
        let size = agentmesh_consensus::engine::approximate_size(&vertex);
        while !self.vertices.is_empty()
            && (self.vertices.len() >= MAX_HELD || self.bytes + size > MAX_HELD_BYTES)
        {
            if let Some((_, oldest)) = self.vertices.pop_front() {
                self.ids.remove(&oldest.id());
                self.bytes -= agentmesh_consensus::engine::approximate_size(&oldest);
                self.dropped += 1;
            }
        }
        self.held += 1;
        self.bytes += size;
        self.vertices.push_back((from, vertex));
    }

    /// Everything held, in arrival order.
    pub fn release(&mut self) -> Vec<(NodeId, Vertex)> {
        self.bytes = 0;
        self.ids.clear();
        self.vertices.drain(..).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.vertices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_protocol::{NodeKey, Transaction};

    #[test]
    fn holds_each_vertex_once_in_order_and_drops_the_oldest_over_the_bound() {
        let key = NodeKey::generate().unwrap();
        let from = key.node_id();
        let mut held = Held::default();
        for i in 0..(MAX_HELD as u64 + 5) {
            let tx = Transaction {
                key: format!("k{i}"),
                payload: vec![],
            };
            let vertex = Vertex::sign(&key, vec![], i, 0, vec![tx]).unwrap();
            // Fetched again and again while the walk runs: held once.
            held.hold(from, vertex.clone());
            held.hold(from, vertex);
        }
        assert_eq!(held.dropped, 5);
        let out = held.release();
        assert_eq!(out.len(), MAX_HELD);
        assert_eq!(out[0].1.seq(), 5, "the oldest went first");
        assert_eq!(
            out[MAX_HELD - 1].1.seq(),
            MAX_HELD as u64 + 4,
            "arrival order"
        );
        assert!(held.is_empty());
    }
}
