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
use axum::{Json, Router};
pub use error::ApiError;
pub use guard::{load_or_create_token, Guard, TOKEN_FILE};
use serde::de::DeserializeOwned;
use utoipa_axum::{router::OpenApiRouter, routes};

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

/// The agent API's description: its routes and their types, as
/// `GET /v1/openapi.json` serves it (and docs/openapi.json holds it).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "agentmesh agent API",
        description = "The HTTP/JSON API a node offers the agents on its host. Every route but \
            `GET /v1/health`, `GET /` and `GET /v1/openapi.json` needs `Authorization: Bearer <token>` \
            (the node writes the token to `<data dir>/api-token`). Errors are `{\"error\": \"...\"}`; \
            besides those listed per route, any route may answer 403 (a Host header that is not \
            allowed), 408 (over 60 s) or 415 (a JSON route without a JSON Content-Type). \
            See docs/api.md."
    ),
    modifiers(&BearerToken),
    security(("token" = [])),
    tags(
        (name = "node", description = "The node, its peers and its health"),
        (name = "channels", description = "Publish and subscribe"),
        (name = "consensus", description = "Transactions, vertices and task claims"),
        (name = "patterns", description = "The shared pattern store"),
        (name = "model", description = "Recommendations and the local model")
    )
)]
struct ApiDoc;

/// Raw bytes in a request or response body (a binary string to OpenAPI).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

/// `GET /v1/health`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub ok: bool,
}

/// The bearer token every route but the public ones needs.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, registered with its description: a route cannot exist
/// undocumented, nor a documented one be missing.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(dashboard))
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .routes(routes!(status))
        .routes(routes!(peers))
        .routes(routes!(metrics))
        .routes(routes!(channels::list))
        .routes(routes!(channels::publish_batch))
        .routes(routes!(channels::publish))
        .routes(routes!(channels::events))
        .routes(routes!(consensus::propose))
        .routes(routes!(consensus::vertex))
        .routes(routes!(consensus::claim))
        .routes(routes!(consensus::task))
        .routes(routes!(consensus::status))
        .routes(routes!(patterns::put, patterns::list))
        .routes(routes!(patterns::get))
        .routes(routes!(patterns::outcome))
        .routes(routes!(patterns::sync_status))
        .routes(routes!(model::recommend))
        .routes(routes!(model::outcome))
        .routes(routes!(model::status))
        .routes(routes!(model::train))
        .routes(routes!(model::export, model::import))
}

/// The OpenAPI description of the agent API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = routes().split_for_parts();
    api
}

pub fn router(state: ApiState) -> Router {
    let guard = state.guard.clone();
    let (router, api) = routes().split_for_parts();
    let spec = std::sync::Arc::new(
        api.to_pretty_json()
            .expect("the API description serializes"),
    );
    router
        .layer(axum::Extension(spec))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        .with_state(state)
}

/// The API's OpenAPI 3 description (no token needed: it holds no data).
#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", tag = "node", security(()),
    responses((status = 200, description = "This description", content_type = "application/json")))]
async fn openapi_json(
    axum::Extension(spec): axum::Extension<std::sync::Arc<String>>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        spec.as_ref().clone(),
    )
}

/// The health probe: it needs no token (it tells nothing but that the API
/// is up).
#[utoipa::path(get, path = "/v1/health", operation_id = "health", tag = "node", security(()),
    responses((status = 200, description = "The API is up", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { ok: true })
}

#[utoipa::path(get, path = "/v1/status", operation_id = "node_status", tag = "node",
    responses((status = 200, description = "Identity, addresses, peer counts, message counters, security", body = crate::types::Status),
        (status = 401, description = "No valid token", body = crate::types::ErrorBody)))]
async fn status(State(s): State<ApiState>) -> Result<Json<crate::types::Status>, ApiError> {
    Ok(Json(s.network.status().await?))
}

/// The live dashboard: one page that polls this API.
#[utoipa::path(get, path = "/", operation_id = "dashboard", tag = "node", security(()),
    responses((status = 200, description = "The dashboard page (it reads the token from its link: `agentmesh dashboard`)", content_type = "text/html")))]
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

/// Prometheus scrape: libp2p's metrics and the node's, in the text format.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "node",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"),
        (status = 401, description = "No valid token", body = crate::types::ErrorBody)))]
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

#[utoipa::path(get, path = "/v1/peers", operation_id = "list_peers", tag = "node",
    responses((status = 200, description = "The connected peers", body = Vec<crate::types::PeerInfo>),
        (status = 401, description = "No valid token", body = crate::types::ErrorBody)))]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes the description calls public are the ones the guard lets
    /// through without a token, and every other route asks for it.
    #[test]
    fn the_description_and_the_guard_agree_on_public_routes() {
        let api = openapi();
        let mut public = Vec::new();
        for (path, item) in &api.paths.paths {
            let operations = [&item.get, &item.post, &item.put, &item.delete, &item.head];
            for op in operations.into_iter().flatten() {
                let open = op
                    .security
                    .as_ref()
                    .is_some_and(|s| serde_json::to_value(s).unwrap() == serde_json::json!([{}]));
                if open {
                    public.push(path.as_str());
                }
            }
        }
        public.sort_unstable();
        let mut expected = guard::PUBLIC_PATHS.to_vec();
        expected.sort_unstable();
        assert_eq!(public, expected);
        assert!(
            api.paths.paths.len() >= 23,
            "{} paths",
            api.paths.paths.len()
        );
    }
}
