//! The local model: recommendations, outcomes, status, training, and
//! checkpoint export and import.

use super::error::ApiError;
use super::{json_body_limited, ApiState, MAX_BODY_BYTES};
use crate::model::{ModelError, Outcome, TrainingInfo};
use crate::types::ErrorBody;
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
            ModelError::Store(_) | ModelError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendInput {
    pub context: Context,
    /// How many patterns (1 to 100).
    #[serde(default = "default_k")]
    #[schema(default = 5, minimum = 1, maximum = 100)]
    pub k: usize,
}

fn default_k() -> usize {
    5
}

#[utoipa::path(post, path = "/v1/recommend", operation_id = "recommend", tag = "model",
    request_body = RecommendInput,
    responses((status = 200, description = "Patterns that fit, from the model or the rules", body = Answer), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody)))]
pub async fn recommend(State(s): State<ApiState>, body: Body) -> Result<Json<Answer>, ApiError> {
    let input: RecommendInput = json_body_limited(body, MAX_BODY_BYTES).await?;
    Ok(Json(s.model.recommend(&input.context, input.k)?))
}

/// An outcome the model learns from (`types::OutcomeInput` is a pattern's).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LearnOutcomeInput)]
pub struct OutcomeInput {
    pub context: Context,
    pub pattern: String,
    pub success: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OutcomeReply {
    #[serde(flatten)]
    pub effect: OutcomeEffect,
    pub model_version: u64,
}

#[utoipa::path(post, path = "/v1/outcomes", operation_id = "learn_outcome", tag = "model",
    request_body = OutcomeInput,
    responses((status = 200, description = "Stored, counted and learned", body = OutcomeReply), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody)))]
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
    // Acknowledged means durable: the outcome record and the pattern's
    // counts.
    s.patterns.make_durable().await?;
    Ok(Json(OutcomeReply {
        effect,
        model_version: s.model.version(),
    }))
}

#[utoipa::path(get, path = "/v1/model", operation_id = "model_status", tag = "model",
    responses((status = 200, description = "The local model", body = crate::model::ModelStatus), (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn status(State(s): State<ApiState>) -> Json<crate::model::ModelStatus> {
    Json(s.model.status())
}

/// Training samples sent inline are bounded by this body size.
const MAX_TRAIN_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainInput {
    /// Samples besides the stored successful outcomes.
    #[serde(default)]
    pub samples: Vec<Sample>,
    pub max_epochs: Option<usize>,
}

#[utoipa::path(post, path = "/v1/model/train", operation_id = "train_model", tag = "model",
    request_body = TrainInput,
    responses((status = 200, description = "The training report", body = TrainingInfo), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 408, description = "Took over 600 s", body = ErrorBody),
        (status = 409, description = "Another training runs", body = ErrorBody),
        (status = 500, description = "The node's own fault", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody)))]
pub async fn train(State(s): State<ApiState>, body: Body) -> Result<Json<TrainingInfo>, ApiError> {
    let input: TrainInput = json_body_limited(body, MAX_TRAIN_BODY_BYTES).await?;
    Ok(Json(s.model.train(input.samples, input.max_epochs).await?))
}

#[utoipa::path(get, path = "/v1/model/checkpoint", operation_id = "export_checkpoint", tag = "model",
    responses((status = 200, description = "The model checkpoint (CBOR)", content_type = "application/cbor", body = super::Binary), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No model yet", body = ErrorBody)))]
pub async fn export(State(s): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let model = s.model.clone();
    let bytes = tokio::task::spawn_blocking(move || model.export())
        .await
        .map_err(join_failed)??;
    Ok(([(header::CONTENT_TYPE, "application/cbor")], bytes))
}

/// The version an imported checkpoint was installed as.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportReply {
    pub version: u64,
}

#[utoipa::path(put, path = "/v1/model/checkpoint", operation_id = "import_checkpoint", tag = "model",
    request_body(content = super::Binary, description = "A checkpoint as `GET` exports it", content_type = "application/cbor"),
    responses((status = 200, description = "Installed; its version", body = ImportReply), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 413, description = "Checkpoint too large", body = ErrorBody)))]
pub async fn import(State(s): State<ApiState>, body: Body) -> Result<Json<ImportReply>, ApiError> {
    let limit = agentmesh_protocol::model_wire::MAX_MODEL_BYTES as usize;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("checkpoint over {limit} bytes")))?;
    let model = s.model.clone();
    let version = tokio::task::spawn_blocking(move || model.import(&bytes))
        .await
        .map_err(join_failed)??;
    Ok(Json(ImportReply { version }))
}
