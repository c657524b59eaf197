//! The local model: recommendations, outcomes, status, training, and
//! checkpoint export and import.

use super::error::ApiError;
use super::{json_body_limited, ApiState, MAX_BODY_BYTES};
use crate::model::{ModelError, Outcome, TrainingInfo};
use agentmesh_neural::recommender::{Answer, OutcomeEffect};
use agentmesh_neural::{Context, Sample};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> ApiError {
        let status = match &e {
            ModelError::Invalid(_) => StatusCode::BAD_REQUEST,
            ModelError::Busy => StatusCode::CONFLICT,
            ModelError::Unavailable(_) => StatusCode::NOT_FOUND,
            ModelError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

/// A blocking task that panicked: the node's fault, not the caller's.
fn join_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("the model task failed: {e}"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendInput {
    pub context: Context,
    #[serde(default = "default_k")]
    pub k: usize,
}

fn default_k() -> usize {
    5
}

pub async fn recommend(State(s): State<ApiState>, body: Body) -> Result<Json<Answer>, ApiError> {
    let input: RecommendInput = json_body_limited(body, MAX_BODY_BYTES).await?;
    Ok(Json(s.model.recommend(&input.context, input.k)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeInput {
    pub context: Context,
    pub pattern: String,
    pub success: bool,
}

#[derive(Serialize)]
pub struct OutcomeReply {
    #[serde(flatten)]
    pub effect: OutcomeEffect,
    pub model_version: u64,
}

pub async fn outcome(
    State(s): State<ApiState>,
    body: Body,
) -> Result<Json<OutcomeReply>, ApiError> {
    let input: OutcomeInput = json_body_limited(body, MAX_BODY_BYTES).await?;
    let model = s.model.clone();
    // A gradient step and a sled write: off the async runtime.
    let effect = tokio::task::spawn_blocking(move || {
        model.outcome(Outcome {
            context: input.context,
            pattern: input.pattern,
            success: input.success,
            at_ms: crate::clock::now_ms(),
        })
    })
    .await
    .map_err(join_failed)??;
    Ok(Json(OutcomeReply {
        effect,
        model_version: s.model.version(),
    }))
}

pub async fn status(State(s): State<ApiState>) -> Json<crate::model::ModelStatus> {
    Json(s.model.status())
}

/// Training samples sent inline are bounded by this body size.
const MAX_TRAIN_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrainInput {
    /// Samples besides the stored successful outcomes.
    #[serde(default)]
    pub samples: Vec<Sample>,
    pub max_epochs: Option<usize>,
}

pub async fn train(State(s): State<ApiState>, body: Body) -> Result<Json<TrainingInfo>, ApiError> {
    let input: TrainInput = json_body_limited(body, MAX_TRAIN_BODY_BYTES).await?;
    Ok(Json(s.model.train(input.samples, input.max_epochs).await?))
}

pub async fn export(State(s): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let model = s.model.clone();
    let bytes = tokio::task::spawn_blocking(move || model.export())
        .await
        .map_err(join_failed)??;
    Ok(([(header::CONTENT_TYPE, "application/cbor")], bytes))
}

pub async fn import(
    State(s): State<ApiState>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = agentmesh_protocol::model_wire::MAX_MODEL_BYTES as usize;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("checkpoint over {limit} bytes")))?;
    let model = s.model.clone();
    let version = tokio::task::spawn_blocking(move || model.import(&bytes))
        .await
        .map_err(join_failed)??;
    Ok(Json(serde_json::json!({ "version": version })))
}
