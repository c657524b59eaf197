//! The agent API: HTTP/JSON on loopback (axum). It only translates HTTP into
//! network commands and network events into responses and SSE streams.

mod channels;
mod error;

use crate::network::NetworkHandle;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
pub use error::ApiError;

#[derive(Clone)]
pub struct ApiState {
    pub network: NetworkHandle,
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
