//! Publishing to and subscribing to channels.

use super::{ApiError, ApiState};
use crate::network::router::Delivery;
use crate::types::{
    BatchReceipts, Channels, ErrorBody, LaggedEvent, MessageEvent, PublishBatch, PublishReceipt,
};
use agentmesh_protocol::{Channel, ChannelPattern};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use base64::Engine;
use futures::Stream;
use std::convert::Infallible;
use std::sync::Arc;

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == "application/json" || essence.ends_with("+json")
}

#[utoipa::path(get, path = "/v1/channels", operation_id = "list_channels", tag = "channels",
    responses((status = 200, description = "Channel families with subscribers and mesh sizes; per-channel counters", body = Channels), (status = 401, description = "No valid token", body = ErrorBody)))]
pub async fn list(State(s): State<ApiState>) -> Result<Json<Channels>, ApiError> {
    Ok(Json(s.network.channels().await?))
}

/// `POST /v1/channels/{name}/messages`: the request body is the message
/// body, the request's Content-Type its content type.
#[utoipa::path(post, path = "/v1/channels/{name}/messages", operation_id = "publish_message", tag = "channels",
    params(("name" = String, Path, description = "Channel, e.g. `coordination` or `task:assigned`")),
    request_body(content = super::Binary, description = "The message body; the request's Content-Type is its content type (JSON types must be valid JSON)", content_type = "*/*"),
    responses((status = 200, description = "Published", body = PublishReceipt), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside this node's membership scopes", body = ErrorBody),
        (status = 413, description = "Body over network.max_message_bytes", body = ErrorBody), (status = 503, description = "Shutting down or too busy: retry later", body = ErrorBody)))]
pub async fn publish(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<crate::types::PublishReceipt>, ApiError> {
    let channel = Channel::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => DEFAULT_CONTENT_TYPE.to_string(),
        Some(v) => v
            .to_str()
            .map_err(|_| ApiError::bad_request("Content-Type header is not ASCII"))?
            .to_string(),
    };
    let body = axum::body::to_bytes(body, s.max_message_bytes)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "message body is larger than max_message_bytes ({} bytes)",
                s.max_message_bytes
            ))
        })?;
    if body.is_empty() {
        return Err(ApiError::bad_request("message body is empty"));
    }
    if is_json(&content_type) {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    }
    let receipt = s
        .network
        .publish(channel, content_type, body.to_vec())
        .await??;
    Ok(Json(receipt))
}

/// Most messages in one `POST /v1/messages` request.
pub const MAX_BATCH_MESSAGES: usize = 1024;

/// Most bytes in one `POST /v1/messages` request (or one message's worth,
/// if `max_message_bytes` is larger).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// `POST /v1/messages`: `{"messages": [{"channel": "...", "body": <JSON>}, ...]}`.
/// All messages are checked before any is published; the answer lists one
/// receipt per message, in order.
#[utoipa::path(post, path = "/v1/messages", operation_id = "publish_batch", tag = "channels",
    request_body = PublishBatch,
    responses((status = 200, description = "One receipt per message, in order", body = BatchReceipts), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Outside this node's membership scopes", body = ErrorBody),
        (status = 413, description = "Batch too large", body = ErrorBody), (status = 503, description = "Shutting down or too busy: retry later", body = ErrorBody)))]
pub async fn publish_batch(
    State(s): State<ApiState>,
    body: Body,
) -> Result<Json<BatchReceipts>, ApiError> {
    let limit = MAX_BATCH_BYTES.max(s.max_message_bytes + 1024);
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("batch is larger than {limit} bytes")))?;
    let batch: PublishBatch = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("body is not a valid batch: {e}")))?;
    if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH_MESSAGES {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH_MESSAGES} messages, not {}",
            batch.messages.len()
        )));
    }
    let mut messages = Vec::with_capacity(batch.messages.len());
    for (i, m) in batch.messages.into_iter().enumerate() {
        let channel = Channel::parse(&m.channel)
            .map_err(|e| ApiError::bad_request(format!("message {i}: {e}")))?;
        let body = serde_json::to_vec(&m.body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if body.len() > s.max_message_bytes {
            return Err(ApiError::too_large(format!(
                "message {i}: body is larger than max_message_bytes ({} bytes)",
                s.max_message_bytes
            )));
        }
        messages.push((channel, "application/json".to_string(), body));
    }
    let results = s.network.publish_many(messages).await?;
    let total = results.len();
    let mut receipts = Vec::with_capacity(total);
    for result in results {
        match result {
            Ok(receipt) => receipts.push(receipt),
            // Messages before this one went out: say so, or the agent
            // cannot know what to retry.
            Err(e) => {
                let mut error = ApiError::from(e);
                let sent = match receipts.len() {
                    0 => "none was published".to_string(),
                    n => format!("messages 0 to {} were published", n - 1),
                };
                error.message = format!(
                    "message {} of {total}: {}; {sent}",
                    receipts.len(),
                    error.message
                );
                return Err(error);
            }
        }
    }
    Ok(Json(BatchReceipts { receipts }))
}

/// `GET /v1/channels/{pattern}/events`: server-sent events, one `message`
/// event per message (data: [`MessageEvent`]), and a `lagged` event if the
/// client read too slowly and messages were dropped for it.
#[utoipa::path(get, path = "/v1/channels/{pattern}/events", operation_id = "channel_events", tag = "channels",
    params(("pattern" = String, Path, description = "Channel name, or a prefix pattern ending in `:*`")),
    responses((status = 200, description = "Server-sent events: `message` (data: MessageEvent) and `lagged` (data: LaggedEvent)", content_type = "text/event-stream", body = MessageEvent), (status = 400, description = "Bad input (the error names it)", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "Too many event streams open", body = ErrorBody)))]
pub async fn events(
    State(s): State<ApiState>,
    Path(pattern): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let pattern =
        ChannelPattern::parse(&pattern).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Held by the stream: the place is free again when the client leaves.
    let place = s.guard.event_stream()?;
    let subscription = s.network.subscribe(pattern).await?;
    let stream = futures::stream::unfold((subscription, place), |(mut sub, place)| async move {
        let item = sub.next().await?;
        let event = match item {
            Ok(delivery) => message_event(&delivery),
            Err(missed) => Event::default()
                .event("lagged")
                .json_data(LaggedEvent { missed })
                .unwrap_or_default(),
        };
        Some((Ok(event), (sub, place)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn message_event(d: &Arc<Delivery>) -> Event {
    let env = &d.envelope;
    let (encoding, body) = encode_body(&env.content_type, &env.body);
    let data = MessageEvent {
        id: env.id.to_string(),
        channel: env.channel.to_string(),
        sender: env.sender.to_string(),
        timestamp_ms: env.timestamp_ms,
        received_ms: d.received_ms,
        content_type: env.content_type.clone(),
        encoding: encoding.into(),
        body,
    };
    Event::default()
        .event("message")
        .id(data.id.clone())
        .json_data(data)
        .unwrap_or_default()
}

/// JSON bodies are embedded as JSON, text as a string, anything else (or a
/// body that does not match its declared type) as base64.
fn encode_body(content_type: &str, body: &[u8]) -> (&'static str, serde_json::Value) {
    if is_json(content_type) {
        if let Ok(v) = serde_json::from_slice(body) {
            return ("json", v);
        }
    } else if content_type.starts_with("text/") {
        if let Ok(s) = std::str::from_utf8(body) {
            return ("text", serde_json::Value::String(s.to_string()));
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    ("base64", serde_json::Value::String(b64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_shown_in_the_most_readable_faithful_form() {
        assert_eq!(encode_body("application/json", b"{\"a\":1}").0, "json");
        assert_eq!(
            encode_body("application/vnd.x+json; charset=utf-8", b"[1]").0,
            "json"
        );
        assert_eq!(encode_body("application/json", b"{nope").0, "base64");
        assert_eq!(encode_body("text/plain", b"hi").1, serde_json::json!("hi"));
        assert_eq!(encode_body("text/plain", &[0xff]).0, "base64");
        assert_eq!(
            encode_body("application/octet-stream", &[1, 2]).1,
            serde_json::json!("AQI=")
        );
    }
}
