//! The agent API: HTTP/JSON on loopback (axum). It only translates HTTP into
//! network commands and network events into responses and SSE streams.

mod channels;
mod consensus;
mod error;

use crate::consensus::ConsensusHandle;
use crate::network::NetworkHandle;
use agentmesh_protocol::NodeId;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
pub use error::ApiError;

#[derive(Clone)]
pub struct ApiState {
    pub network: NetworkHandle,
    pub consensus: ConsensusHandle,
    /// This node's id, recorded in the task claims made through it.
    pub node_id: NodeId,
    pub max_message_bytes: usize,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/channels", get(channels::list))
        .route("/v1/messages", post(channels::publish_batch))
        .route("/v1/channels/{name}/messages", post(channels::publish))
        .route("/v1/channels/{name}/events", get(channels::events))
        .route("/v1/transactions", post(consensus::propose))
        .route("/v1/vertices/{id}", get(consensus::vertex))
        .route("/v1/tasks/{id}/claim", post(consensus::claim))
        .route("/v1/tasks/{id}", get(consensus::task))
        .route("/v1/consensus", get(consensus::status))
        .fallback(|| async {
            ApiError::not_found("no such endpoint; see the API reference in README.md")
        })
        .with_state(state)
}

async fn status(State(s): State<ApiState>) -> Result<Json<crate::types::Status>, ApiError> {
    Ok(Json(s.network.status().await?))
}

async fn peers(State(s): State<ApiState>) -> Result<Json<Vec<crate::types::PeerInfo>>, ApiError> {
    Ok(Json(s.network.peers().await?))
}
