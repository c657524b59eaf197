//! Agreement: proposing transactions, vertex status, task claims.

use super::{json_body, ApiError, ApiState};
use crate::consensus::{views::task_key, ConsensusStopped};
use crate::types::{
    Claim, ClaimRequest, ConsensusStatus, ErrorBody, ProposeReceipt, ProposeRequest, TaskInfo,
    VertexInfo,
};
use agentmesh_consensus::ProposeError;
use agentmesh_protocol::vertex::{
    MAX_CONFLICT_KEY_BYTES, MAX_PAYLOAD_BYTES, MAX_VERTEX_TRANSACTIONS,
};
use agentmesh_protocol::{Transaction, VertexId};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use std::collections::HashSet;

/// Longest task id and claimant name.
const MAX_NAME_BYTES: usize = 128;

impl From<ConsensusStopped> for ApiError {
    fn from(e: ConsensusStopped) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        }
    }
}

fn check_transactions(request: &ProposeRequest) -> Result<Vec<Transaction>, ApiError> {
    let count = request.transactions.len();
    if count == 0 || count > MAX_VERTEX_TRANSACTIONS {
        return Err(ApiError::bad_request(format!(
            "between 1 and {MAX_VERTEX_TRANSACTIONS} transactions per request, got {count}"
        )));
    }
    let mut keys = HashSet::new();
    let mut out = Vec::with_capacity(count);
    for (i, tx) in request.transactions.iter().enumerate() {
        if tx.key.is_empty() || tx.key.len() > MAX_CONFLICT_KEY_BYTES {
            return Err(ApiError::bad_request(format!(
                "transactions[{i}].key must be 1 to {MAX_CONFLICT_KEY_BYTES} bytes"
            )));
        }
        if tx.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(ApiError::too_large(format!(
                "transactions[{i}].payload is over {MAX_PAYLOAD_BYTES} bytes"
            )));
        }
        if !keys.insert(tx.key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "transactions[{i}].key {:?} appears twice; one request may not conflict with itself",
                tx.key
            )));
        }
        out.push(Transaction {
            key: tx.key.clone(),
            payload: tx.payload.clone().into_bytes(),
        });
    }
    Ok(out)
}

async fn propose_checked(
    s: &ApiState,
    transactions: Vec<Transaction>,
) -> Result<(StatusCode, Json<ProposeReceipt>), ApiError> {
    s.require_scope(|v| v.may_propose(), "proposing transactions")?;
    let count = transactions.len();
    match s.consensus.propose(transactions).await? {
        Ok(id) => Ok((
            StatusCode::ACCEPTED,
            Json(ProposeReceipt {
                vertex: id.to_string(),
                transactions: count,
                status: "processing".into(),
            }),
        )),
        Err(e) => Err(ApiError {
            status: match *e {
                ProposeError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                ProposeError::Invalid(_) => StatusCode::BAD_REQUEST,
                ProposeError::History(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ProposeError::Halted(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            message: e.to_string(),
        }),
    }
}

/// `POST /v1/transactions`: `{"transactions": [{"key": "...", "payload": "..."}]}`.
#[utoipa::path(post, path = "/v1/transactions", operation_id = "propose", tag = "consensus",
    request_body = ProposeRequest,
    responses((status = 202, description = "Accepted for consensus", body = ProposeReceipt), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside this node's membership scopes", body = ErrorBody),
        (status = 503, description = "Shutting down or too busy: retry later", body = ErrorBody),
        (status = 413, description = "Body or payload too large", body = ErrorBody),
        (status = 500, description = "The node cannot write its consensus history", body = ErrorBody)))]
pub async fn propose(
    State(s): State<ApiState>,
    body: Body,
) -> Result<(StatusCode, Json<ProposeReceipt>), ApiError> {
    let request: ProposeRequest = json_body(body).await?;
    let transactions = check_transactions(&request)?;
    propose_checked(&s, transactions).await
}

/// `GET /v1/vertices/{id}`.
#[utoipa::path(get, path = "/v1/vertices/{id}", operation_id = "get_vertex", tag = "consensus",
    params(("id" = String, Path, description = "Vertex id, 64 hex digits")),
    responses((status = 200, description = "The vertex and where consensus stands on it", body = VertexInfo), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown here", body = ErrorBody),
        (status = 503, description = "Consensus has stopped (the reason is named)", body = ErrorBody)))]
pub async fn vertex(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<VertexInfo>, ApiError> {
    let id: VertexId = id.parse().map_err(ApiError::bad_request)?;
    s.consensus
        .vertex(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("vertex {id} is unknown to this node")))
}

fn check_name(what: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {MAX_NAME_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

/// `POST /v1/tasks/{id}/claim`: `{"claimant": "agent-7"}`. 409 if the task
/// already has a final winner.
#[utoipa::path(post, path = "/v1/tasks/{id}/claim", operation_id = "claim_task", tag = "consensus",
    params(("id" = String, Path, description = "Task id")),
    request_body = ClaimRequest,
    responses((status = 202, description = "The claim is proposed", body = ProposeReceipt), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 409, description = "The task already has a final winner (named)", body = ErrorBody), (status = 503, description = "Shutting down or too busy: retry later", body = ErrorBody),
        (status = 403, description = "Outside this node's membership scopes", body = ErrorBody),
        (status = 413, description = "Body or payload too large", body = ErrorBody),
        (status = 500, description = "The node cannot write its consensus history", body = ErrorBody)))]
pub async fn claim(
    State(s): State<ApiState>,
    Path(task): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<ProposeReceipt>), ApiError> {
    check_name("task id", &task)?;
    let request: ClaimRequest = json_body(body).await?;
    check_name("claimant", &request.claimant)?;
    let current = s.consensus.task(task.clone()).await?;
    if let Some(winner) = current.winner {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "task {task} is already claimed by {} (through node {})",
                winner.claimant, winner.node
            ),
        });
    }
    let claim = Claim {
        claimant: request.claimant,
        node: s.node_id.to_string(),
    };
    let payload = serde_json::to_vec(&claim).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tx = Transaction {
        key: task_key(&task),
        payload,
    };
    propose_checked(&s, vec![tx]).await
}

/// `GET /v1/tasks/{id}`.
#[utoipa::path(get, path = "/v1/tasks/{id}", operation_id = "get_task", tag = "consensus",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, description = "Who holds the task, or the undecided claims", body = TaskInfo), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "Consensus has stopped (the reason is named)", body = ErrorBody)))]
pub async fn task(
    State(s): State<ApiState>,
    Path(task): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    check_name("task id", &task)?;
    Ok(Json(s.consensus.task(task).await?))
}

/// `GET /v1/consensus`.
#[utoipa::path(get, path = "/v1/consensus", operation_id = "consensus_status", tag = "consensus",
    responses((status = 200, description = "Engine state, counters, validators, latency percentiles", body = ConsensusStatus), (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn status(State(s): State<ApiState>) -> Result<Json<ConsensusStatus>, ApiError> {
    Ok(Json(s.consensus.status().await?))
}
