//! Shared patterns: create/update, get, list by tag or kind, outcomes, and
//! the replication status.

use super::{json_body, ApiError, ApiState};
use crate::patterns::views::view;
use crate::types::{ErrorBody, OutcomeInput, PatternInput, PatternList, PatternView, SyncStatus};
use agentmesh_store::patterns::{EditError, Filter};
use agentmesh_store::StoreError;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

/// Default and largest page of a listing.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        }
    }
}

impl From<EditError> for ApiError {
    fn from(e: EditError) -> ApiError {
        match e {
            EditError::Invalid(e) => ApiError::bad_request(format!("invalid pattern: {e}")),
            EditError::NotFound(_) => ApiError::not_found(e.to_string()),
            EditError::Store(e) => e.into(),
        }
    }
}

#[utoipa::path(post, path = "/v1/patterns", operation_id = "put_pattern", tag = "patterns",
    request_body = PatternInput,
    responses((status = 201, description = "Created", body = PatternView), (status = 200, description = "Updated (next version)", body = PatternView), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside this node's membership scopes", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody)))]
pub async fn put(
    State(s): State<ApiState>,
    body: Body,
) -> Result<(StatusCode, Json<PatternView>), ApiError> {
    let input: PatternInput = json_body(body).await?;
    s.require_scope(|v| v.may_share_patterns(), "sharing patterns")?;
    let (pattern, created) = s.patterns.put(input).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&pattern))))
}

#[utoipa::path(get, path = "/v1/patterns/{id}", operation_id = "get_pattern", tag = "patterns",
    params(("id" = String, Path, description = "Pattern id")),
    responses((status = 200, description = "The pattern", body = PatternView), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "Unknown", body = ErrorBody)))]
pub async fn get(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PatternView>, ApiError> {
    match s.patterns.get(&id)? {
        Some(p) => Ok(Json(view(&p))),
        None => Err(ApiError::not_found(format!("no pattern with id {id:?}"))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Patterns with this tag.
    tag: Option<String>,
    /// Patterns of this kind.
    kind: Option<String>,
    /// Start after this id (the `next` of the previous page).
    after: Option<String>,
    /// Page size, 1 to 1000 (100 if absent).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/patterns", operation_id = "list_patterns", tag = "patterns",
    params(ListQuery),
    responses((status = 200, description = "A page of patterns; pass `next` as `after` for the next", body = PatternList), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn list(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PatternList>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(format!("{e} (the query takes tag, kind, after and limit)"))
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let filter = Filter {
        tag: q.tag,
        kind: q.kind,
        after: q.after,
        limit,
    };
    let patterns = s.patterns.list(&filter)?;
    let next = (patterns.len() == limit)
        .then(|| patterns.last().map(|p| p.id.clone()))
        .flatten();
    Ok(Json(PatternList {
        patterns: patterns.iter().map(view).collect(),
        next,
    }))
}

#[utoipa::path(post, path = "/v1/patterns/{id}/outcomes", operation_id = "pattern_outcome", tag = "patterns",
    params(("id" = String, Path, description = "Pattern id")),
    request_body = OutcomeInput,
    responses((status = 200, description = "The pattern with its statistics", body = PatternView), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside this node's membership scopes", body = ErrorBody),
        (status = 404, description = "Unknown", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody)))]
pub async fn outcome(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<PatternView>, ApiError> {
    let input: OutcomeInput = json_body(body).await?;
    s.require_scope(|v| v.may_share_patterns(), "sharing patterns")?;
    Ok(Json(view(
        &s.patterns.record_outcome(&id, input.success).await?,
    )))
}

#[utoipa::path(get, path = "/v1/sync", operation_id = "sync_status", tag = "patterns",
    responses((status = 200, description = "Replication and anti-entropy status", body = SyncStatus), (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn sync_status(State(s): State<ApiState>) -> Result<Json<SyncStatus>, ApiError> {
    Ok(Json(s.patterns.status()?))
}
