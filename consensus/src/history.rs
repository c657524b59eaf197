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
    /// An accepted vertex's content (rejected vertices keep none: see
    /// docs/consensus.md on bounded history).
    fn vertex(&self, id: &VertexId) -> Option<Vertex>;
    /// The accepted vertex holding the transaction with this conflict key.
    fn winner(&self, key: &str) -> Option<VertexId>;
    /// The accepted rivals recorded with a rejected vertex.
    fn rivals(&self, id: &VertexId) -> Vec<VertexId>;
    /// The accepted vertex `author` signed with sequence number `seq`.
    fn authored(&self, author: &NodeId, seq: u64) -> Option<VertexId>;
    /// Records an accepted vertex and the winner of each of its conflict
    /// keys. Must be visible to the next read (durable at the driver's
    /// next flush).
    fn accept(&mut self, vertex: &Vertex, at_ms: u64) -> Result<(), HistoryError>;
    /// Records a rejected vertex: its id, when, and up to a few accepted
    /// rivals that beat it.
    fn reject(
        &mut self,
        id: &VertexId,
        at_ms: u64,
        rivals: &[VertexId],
    ) -> Result<(), HistoryError>;
    /// Accepted vertices recorded so far.
    fn accepted_len(&self) -> u64;
    /// Up to `limit` ids of accepted vertices in the order this node
    /// accepted them, from position `from`, and the log's end.
    fn accepted_page(&self, from: u64, limit: usize) -> (Vec<VertexId>, u64);
    /// The next sequence number this node signs with.
    fn next_seq(&self) -> u64;
    fn set_next_seq(&mut self, seq: u64) -> Result<(), HistoryError>;
    /// Why the history can no longer be trusted, once a read, a write or a
    /// flush failed: the reads above then answer "none", which the engine
    /// must not act on (it halts; see `Engine::take_outputs`). Once a fault
    /// is latched, `accept`, `reject` and `set_next_seq` must refuse to
    /// write.
    fn fault(&self) -> Option<String> {
        None
    }
}

/// History in memory, for the simulator and tests.
#[derive(Default)]
pub struct MemoryHistory {
    decisions: HashMap<VertexId, (Decision, u64)>,
    vertices: HashMap<VertexId, Vertex>,
    rivals: HashMap<VertexId, Vec<VertexId>>,
    winners: HashMap<String, VertexId>,
    authored: HashMap<(NodeId, u64), VertexId>,
    accepted_log: Vec<VertexId>,
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
    fn rivals(&self, id: &VertexId) -> Vec<VertexId> {
        self.rivals.get(id).cloned().unwrap_or_default()
    }
    fn authored(&self, author: &NodeId, seq: u64) -> Option<VertexId> {
        self.authored.get(&(*author, seq)).copied()
    }
    fn accept(&mut self, vertex: &Vertex, at_ms: u64) -> Result<(), HistoryError> {
        let id = vertex.id();
        self.decisions.insert(id, (Decision::Accepted, at_ms));
        self.vertices.insert(id, vertex.clone());
        self.authored.insert((vertex.author(), vertex.seq()), id);
        for tx in vertex.transactions() {
            self.winners.insert(tx.key.clone(), id);
        }
        self.accepted_log.push(id);
        Ok(())
    }
    fn reject(
        &mut self,
        id: &VertexId,
        at_ms: u64,
        rivals: &[VertexId],
    ) -> Result<(), HistoryError> {
        self.decisions.insert(*id, (Decision::Rejected, at_ms));
        if !rivals.is_empty() {
            self.rivals.insert(*id, rivals.to_vec());
        }
        Ok(())
    }
    fn accepted_len(&self) -> u64 {
        self.accepted_log.len() as u64
    }
    fn accepted_page(&self, from: u64, limit: usize) -> (Vec<VertexId>, u64) {
        let from = (from as usize).min(self.accepted_log.len());
        let page = self.accepted_log[from..]
            .iter()
            .take(limit)
            .copied()
            .collect();
        (page, self.accepted_log.len() as u64)
    }
    fn next_seq(&self) -> u64 {
        self.next_seq
    }
    fn set_next_seq(&mut self, seq: u64) -> Result<(), HistoryError> {
        self.next_seq = seq;
        Ok(())
    }
}
