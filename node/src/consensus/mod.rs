//! The consensus driver of a node: the pure engine (agentmesh-consensus)
//! fed by the network and the API, its history in sled.

mod history;
mod service;
pub mod validators;
pub mod views;

pub use history::SledHistory;
pub use service::{ConsensusService, Request, FINALIZED_CHANNEL, REQUEST_QUEUE};

use crate::types::{ConsensusStatus, TaskInfo, VertexInfo};
use agentmesh_consensus::ProposeError;
use agentmesh_protocol::{Transaction, VertexId};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
#[error("the consensus service has stopped")]
pub struct ConsensusStopped;

/// A cheap, cloneable way to talk to the consensus service.
#[derive(Clone)]
pub struct ConsensusHandle {
    requests: mpsc::Sender<Request>,
}

impl ConsensusHandle {
    pub fn new(requests: mpsc::Sender<Request>) -> ConsensusHandle {
        ConsensusHandle { requests }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ConsensusStopped> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| ConsensusStopped)?;
        rx.await.map_err(|_| ConsensusStopped)
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
