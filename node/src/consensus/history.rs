//! The engine's history in sled.

use agentmesh_consensus::{Decision, History, HistoryError};
use agentmesh_protocol::{NodeId, Vertex, VertexId};
use agentmesh_store::{DecisionLog, StoreError};

pub struct SledHistory {
    log: DecisionLog,
}

impl SledHistory {
    pub fn new(log: DecisionLog) -> SledHistory {
        SledHistory { log }
    }

    /// Decided vertices on disk.
    pub fn decided(&self) -> usize {
        self.log.len()
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.log.flush().await
    }
}

/// A failed read is logged and treated as "not decided here": the engine
/// then polls or fetches instead of trusting damaged data.
fn logged<T>(what: &str, result: Result<Option<T>, StoreError>) -> Option<T> {
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading {what} from the consensus history failed");
        None
    })
}

impl History for SledHistory {
    fn decision(&self, id: &VertexId) -> Option<(Decision, u64)> {
        logged("a decision", self.log.decision(id)).map(|d| {
            let decision = if d.accepted {
                Decision::Accepted
            } else {
                Decision::Rejected
            };
            (decision, d.at_ms)
        })
    }

    fn vertex(&self, id: &VertexId) -> Option<Vertex> {
        logged("a vertex", self.log.vertex(id))
    }

    fn winner(&self, key: &str) -> Option<VertexId> {
        logged("a conflict winner", self.log.winner(key))
    }

    fn authored(&self, author: &NodeId, seq: u64) -> Option<VertexId> {
        logged("a sequence number", self.log.authored(author, seq))
    }

    fn record(
        &mut self,
        vertex: &Vertex,
        decision: Decision,
        at_ms: u64,
    ) -> Result<(), HistoryError> {
        self.log
            .record(vertex, decision == Decision::Accepted, at_ms)
            .map_err(|e| HistoryError(e.to_string()))
    }

    fn next_seq(&self) -> u64 {
        self.log.next_seq().unwrap_or_else(|e| {
            // Never reuse a number: start far beyond anything plausible.
            tracing::error!(error = %e, "cannot read the next sequence number");
            u64::MAX / 2
        })
    }

    fn set_next_seq(&mut self, seq: u64) -> Result<(), HistoryError> {
        self.log
            .set_next_seq(seq)
            .map_err(|e| HistoryError(e.to_string()))
    }
}
