//! The agent API: HTTP/JSON on loopback (axum). It only translates HTTP into
//! network commands and network events into responses and SSE streams.

mod channels;
mod consensus;
mod error;
mod guard;
mod model;
mod patterns;

use crate::consensus::ConsensusHandle;
use crate::network::NetworkHandle;
use crate::patterns::Patterns;
use agentmesh_protocol::NodeId;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
pub use error::ApiError;
pub use guard::{load_or_create_token, Guard, TOKEN_FILE};
use serde::de::DeserializeOwned;

#[derive(Clone)]
pub struct ApiState {
    pub network: NetworkHandle,
    pub consensus: ConsensusHandle,
    pub patterns: Patterns,
    pub metrics: crate::metrics::Metrics,
    /// This node's id, recorded in the task claims made through it.
    pub node_id: NodeId,
    pub max_message_bytes: usize,
    /// This node's membership scopes (`None`: open network).
    pub own_scopes: Option<std::sync::Arc<agentmesh_protocol::membership::Verified>>,
    pub model: crate::model::ModelHandle,
    /// Token, Host allowlist, event-stream places.
    pub guard: Guard,
}

impl ApiState {
    /// Refuses (403) what this node's certificate does not allow, before
    /// peers would refuse it.
    pub fn require_scope(
        &self,
        allowed: impl Fn(&agentmesh_protocol::membership::Verified) -> bool,
        what: &str,
    ) -> Result<(), ApiError> {
        match &self.own_scopes {
            Some(scopes) if !allowed(scopes) => Err(ApiError {
                status: axum::http::StatusCode::FORBIDDEN,
                message: format!(
                    "this node's membership certificate does not allow {what} (scopes: {})",
                    scopes.certificate.scopes.join(",")
                ),
            }),
            _ => Ok(()),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    let guard = state.guard.clone();
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/health", get(health))
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
        .route("/v1/patterns", post(patterns::put).get(patterns::list))
        .route("/v1/patterns/{id}", get(patterns::get))
        .route("/v1/patterns/{id}/outcomes", post(patterns::outcome))
        .route("/v1/sync", get(patterns::sync_status))
        .route("/v1/recommend", post(model::recommend))
        .route("/v1/outcomes", post(model::outcome))
        .route("/v1/model", get(model::status))
        .route("/v1/model/train", post(model::train))
        .route(
            "/v1/model/checkpoint",
            get(model::export).put(model::import),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint; see docs/api.md") })
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .with_state(state)
}

/// The health probe: the one route that needs no token (it tells nothing
/// but that the API is up).
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true }))
}

async fn status(State(s): State<ApiState>) -> Result<Json<crate::types::Status>, ApiError> {
    Ok(Json(s.network.status().await?))
}

/// The live dashboard: one page that polls this API.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

/// Prometheus scrape: libp2p's metrics and the node's, in the text format.
async fn metrics(State(s): State<ApiState>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let snapshot = crate::metrics::Snapshot {
        status: s.network.status().await?,
        channels: s.network.channels().await?,
        peers: s.network.peers().await?,
        consensus: s.consensus.status().await?,
        sync: s.patterns.status()?,
        model: s.model.status(),
    };
    let text = s.metrics.encode(snapshot).map_err(|e| ApiError {
        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("encoding the metrics failed: {e}"),
    })?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

async fn peers(State(s): State<ApiState>) -> Result<Json<Vec<crate::types::PeerInfo>>, ApiError> {
    Ok(Json(s.network.peers().await?))
}

/// Largest request body of the JSON endpoints.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Reads a JSON body, naming what is wrong with it.
pub(crate) async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    json_body_limited(body, MAX_BODY_BYTES).await
}

pub(crate) async fn json_body_limited<T: DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("request body over {limit} bytes")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!("request body is not what this endpoint takes: {e}"))
    })
}
