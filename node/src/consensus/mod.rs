//! The consensus driver of a node: the pure engine (agentmesh-consensus)
//! fed by the network and the API, its history in sled.

pub mod faults;
mod held;
mod history;
mod service;
pub mod validators;
pub mod views;

pub use history::DiskHistory;
pub use service::{ConsensusService, Request, FINALIZED_CHANNEL, REQUEST_QUEUE};

use crate::types::{ConsensusStatus, TaskInfo, VertexInfo};
use agentmesh_consensus::ProposeError;
use agentmesh_protocol::{Transaction, VertexId};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum ConsensusStopped {
    #[error("the consensus service has stopped")]
    Stopped,
    /// The history failed: the node votes, decides and reports no more.
    #[error("consensus has stopped: {0} (restart the node once its disk is sound)")]
    Halted(String),
}

/// Why consensus halted, once it did; shared by the service (which sets
/// it) and its handles (which tell callers).
pub type HaltReason = Arc<std::sync::OnceLock<String>>;

/// A cheap, cloneable way to talk to the consensus service.
#[derive(Clone)]
pub struct ConsensusHandle {
    requests: mpsc::Sender<Request>,
    halted: HaltReason,
}

impl ConsensusHandle {
    pub fn new(requests: mpsc::Sender<Request>, halted: HaltReason) -> ConsensusHandle {
        ConsensusHandle { requests, halted }
    }

    /// Why the service answered nothing: halted, or gone.
    fn stopped(&self) -> ConsensusStopped {
        match self.halted.get() {
            Some(reason) => ConsensusStopped::Halted(reason.clone()),
            None => ConsensusStopped::Stopped,
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ConsensusStopped> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Proposes transactions; the id of the vertex that carries them, or
    /// why not ([`ProposeError::Busy`] when the node is saturated).
    pub async fn propose(
        &self,
        transactions: Vec<Transaction>,
    ) -> Result<Result<VertexId, Arc<ProposeError>>, ConsensusStopped> {
        self.ask(|reply| Request::Propose {
            transactions,
            reply,
        })
        .await
    }

    pub async fn vertex(&self, id: VertexId) -> Result<Option<VertexInfo>, ConsensusStopped> {
        self.ask(|reply| Request::Vertex { id, reply }).await
    }

    pub async fn task(&self, task: String) -> Result<TaskInfo, ConsensusStopped> {
        self.ask(|reply| Request::Task { task, reply }).await
    }

    pub async fn status(&self) -> Result<ConsensusStatus, ConsensusStopped> {
        self.ask(Request::Status).await
    }
}
