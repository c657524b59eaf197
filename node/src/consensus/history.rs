//! The engine's history on disk (the store's redb history database).

use super::faults::{Fault, FaultSwitch};
use agentmesh_consensus::{Decision, History, HistoryError};
use agentmesh_protocol::{NodeId, Vertex, VertexId};
use agentmesh_store::{DecisionLog, StoreError};
use std::sync::Arc;

pub struct DiskHistory {
    log: DecisionLog,
    /// Injected failures, in tests (see `faults`).
    faults: Option<Arc<FaultSwitch>>,
    /// The first read or write that failed: from then on the engine halts
    /// (a failed read would otherwise pass for "not decided here").
    fault: std::sync::OnceLock<String>,
}

impl DiskHistory {
    pub fn new(log: DecisionLog, faults: Option<Arc<FaultSwitch>>) -> DiskHistory {
        DiskHistory {
            log,
            faults,
            fault: std::sync::OnceLock::new(),
        }
    }

    fn injected(&self, op: Fault) -> Result<(), StoreError> {
        match &self.faults {
            Some(switch) => switch.check(op),
            None => Ok(()),
        }
    }

    /// The value read, or `None` with the fault latched.
    fn read<T>(&self, what: &str, result: Result<Option<T>, StoreError>) -> Option<T> {
        let result = self.injected(Fault::Read).and(result);
        result.unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading {what} from the consensus history failed");
            let _ = self.fault.set(format!("reading {what} failed: {e}"));
            None
        })
    }

    /// Refuses to write once the history failed (or while a write fault is
    /// injected, which latches like a real one).
    fn writable(&self) -> Result<(), HistoryError> {
        if let Some(fault) = self.fault.get() {
            return Err(HistoryError(fault.clone()));
        }
        self.written("the history", self.injected(Fault::Write))
    }

    /// The write's outcome, with a failure latched.
    fn written(&self, what: &str, result: Result<(), StoreError>) -> Result<(), HistoryError> {
        result.map_err(|e| {
            let reason = format!("writing {what} failed: {e}");
            let _ = self.fault.set(reason.clone());
            HistoryError(reason)
        })
    }

    /// Decided vertices on disk.
    pub fn decided(&self) -> u64 {
        self.log.len()
    }

    /// Makes recorded decisions durable, off the async threads (an
    /// fsync). A failure is latched like any other: a retried fsync may
    /// report success for data the kernel dropped.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let result = match self.injected(Fault::Flush) {
            Ok(()) => {
                let commit = self.log.durable_commit();
                tokio::task::spawn_blocking(move || commit.commit())
                    .await
                    .unwrap_or_else(|e| Err(StoreError::Interrupted(e.to_string())))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            let _ = self
                .fault
                .set(format!("flushing decisions to disk failed: {e}"));
        }
        result
    }
}

impl History for DiskHistory {
    fn decision(&self, id: &VertexId) -> Option<(Decision, u64)> {
        self.read("a decision", self.log.decision(id)).map(|d| {
            let decision = if d.accepted {
                Decision::Accepted
            } else {
                Decision::Rejected
            };
            (decision, d.at_ms)
        })
    }

    fn vertex(&self, id: &VertexId) -> Option<Vertex> {
        self.read("a vertex", self.log.vertex(id))
    }

    fn winner(&self, key: &str) -> Option<VertexId> {
        self.read("a conflict winner", self.log.winner(key))
    }

    fn rivals(&self, id: &VertexId) -> Vec<VertexId> {
        self.read("a rejected vertex's rivals", self.log.decision(id))
            .map(|d| d.rivals)
            .unwrap_or_default()
    }

    fn authored(&self, author: &NodeId, seq: u64) -> Option<VertexId> {
        self.read("a sequence number", self.log.authored(author, seq))
    }

    fn accept(&mut self, vertex: &Vertex, at_ms: u64) -> Result<(), HistoryError> {
        self.writable()?;
        let result = self.log.accept(vertex, at_ms);
        self.written("an acceptance", result)
    }

    fn reject(
        &mut self,
        id: &VertexId,
        at_ms: u64,
        rivals: &[VertexId],
    ) -> Result<(), HistoryError> {
        self.writable()?;
        let result = self.log.reject(id, at_ms, rivals);
        self.written("a rejection", result)
    }

    fn accepted_len(&self) -> u64 {
        self.log.accepted_len()
    }

    fn accepted_page(&self, from: u64, limit: usize) -> (Vec<VertexId>, u64) {
        self.read(
            "the accepted log",
            self.log.accepted_page(from, limit).map(Some),
        )
        .unwrap_or_default()
    }

    fn next_seq(&self) -> u64 {
        self.log.next_seq().unwrap_or_else(|e| {
            // Never reuse a number: start far beyond anything plausible
            // (and the engine halts on the fault before signing with it).
            tracing::error!(error = %e, "cannot read the next sequence number");
            let _ = self
                .fault
                .set(format!("reading the next sequence number failed: {e}"));
            u64::MAX / 2
        })
    }

    fn fault(&self) -> Option<String> {
        self.fault.get().cloned()
    }

    fn set_next_seq(&mut self, seq: u64) -> Result<(), HistoryError> {
        self.writable()?;
        let result = self.log.set_next_seq(seq);
        self.written("the sequence number lease", result)
    }
}
