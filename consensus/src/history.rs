//! What the engine has decided, kept outside its memory: the node stores it
//! in sled, the simulator in maps. Reads and writes are synchronous and
//! local; the engine stays free of sockets, clocks and threads.

use agentmesh_protocol::{NodeId, Vertex, VertexId};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accepted,
    Rejected,
}

#[derive(Debug, thiserror::Error)]
#[error("consensus history: {0}")]
pub struct HistoryError(pub String);

pub trait History {
    /// The decision on a vertex and when it was made (ms).
    fn decision(&self, id: &VertexId) -> Option<(Decision, u64)>;
    /// A decided vertex's content.
    fn vertex(&self, id: &VertexId) -> Option<Vertex>;
    /// The accepted vertex holding the transaction with this conflict key.
    fn winner(&self, key: &str) -> Option<VertexId>;
    /// The decided vertex `author` signed with sequence number `seq`.
    fn authored(&self, author: &NodeId, seq: u64) -> Option<VertexId>;
    /// Records a decision (and, for accepted vertices, the winner of each
    /// of its conflict keys). Must be durable before the next read.
    fn record(
        &mut self,
        vertex: &Vertex,
        decision: Decision,
        at_ms: u64,
    ) -> Result<(), HistoryError>;
    /// The next sequence number this node signs with.
    fn next_seq(&self) -> u64;
    fn set_next_seq(&mut self, seq: u64) -> Result<(), HistoryError>;
    /// Why the history can no longer be trusted, once a read, a write or a
    /// flush failed: the reads above then answer "none", which the engine
    /// must not act on (it halts; see `Engine::take_outputs`). Once a fault
    /// is latched, `record` and `set_next_seq` must refuse to write.
    fn fault(&self) -> Option<String> {
        None
    }
}

/// History in memory, for the simulator and tests.
#[derive(Default)]
pub struct MemoryHistory {
    decisions: HashMap<VertexId, (Decision, u64)>,
    vertices: HashMap<VertexId, Vertex>,
    winners: HashMap<String, VertexId>,
    authored: HashMap<(NodeId, u64), VertexId>,
    next_seq: u64,
}

impl MemoryHistory {
    pub fn decisions(&self) -> &HashMap<VertexId, (Decision, u64)> {
        &self.decisions
    }
    pub fn winners(&self) -> &HashMap<String, VertexId> {
        &self.winners
    }
}

impl History for MemoryHistory {
    fn decision(&self, id: &VertexId) -> Option<(Decision, u64)> {
        self.decisions.get(id).copied()
    }
    fn vertex(&self, id: &VertexId) -> Option<Vertex> {
        self.vertices.get(id).cloned()
    }
    fn winner(&self, key: &str) -> Option<VertexId> {
        self.winners.get(key).copied()
    }
    fn authored(&self, author: &NodeId, seq: u64) -> Option<VertexId> {
        self.authored.get(&(*author, seq)).copied()
    }
    fn record(
        &mut self,
        vertex: &Vertex,
        decision: Decision,
        at_ms: u64,
    ) -> Result<(), HistoryError> {
        self.decisions.insert(vertex.id(), (decision, at_ms));
        self.vertices.insert(vertex.id(), vertex.clone());
        self.authored
            .insert((vertex.author(), vertex.seq()), vertex.id());
        if decision == Decision::Accepted {
            for tx in vertex.transactions() {
                self.winners.insert(tx.key.clone(), vertex.id());
            }
        }
        Ok(())
    }
    fn next_seq(&self) -> u64 {
        self.next_seq
    }
    fn set_next_seq(&mut self, seq: u64) -> Result<(), HistoryError> {
        self.next_seq = seq;
        Ok(())
    }
}
