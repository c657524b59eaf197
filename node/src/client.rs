//! A client for the agent API, used by the CLI and the testnet driver.

use crate::types::{
    BatchReceipts, Channels, ClaimRequest, ConsensusStatus, ErrorBody, LaggedEvent, MessageEvent,
    OutcomeInput, PatternInput, PatternList, PatternView, PeerInfo, ProposeReceipt, ProposeRequest,
    PublishBatch, PublishReceipt, Status, SyncStatus, TaskInfo, TransactionBody, VertexInfo,
};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agentmesh API at {addr} ({source}); is `agentmesh run` running there?"
    )]
    Unreachable {
        addr: SocketAddr,
        source: reqwest::Error,
    },
    #[error("the node answered {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
}

/// One item of a subscription stream.
#[derive(Debug, Clone)]
pub enum SubscriptionItem {
    Message(MessageEvent),
    /// This many messages were dropped because the reader was too slow.
    Lagged(u64),
}

/// The HTTP client the API client uses.
pub type Http = reqwest::Client;

#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client without a token: it reaches only the health probe.
    pub fn new(addr: SocketAddr) -> ApiClient {
        ApiClient::with_token(addr, None)
    }

    /// A client that sends `token` as `Authorization: Bearer` on every
    /// request.
    pub fn with_token(addr: SocketAddr, token: Option<&str>) -> ApiClient {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) =
            token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .default_headers(headers)
            .build()
            .expect("a client without TLS or proxies always builds");
        ApiClient { addr, http }
    }

    /// A client with the token read from `path` (the node's token file).
    pub fn with_token_file(addr: SocketAddr, path: &std::path::Path) -> std::io::Result<ApiClient> {
        let token = std::fs::read_to_string(path)?;
        Ok(ApiClient::with_token(addr, Some(token.trim())))
    }

    /// The HTTP client underneath, token included, for requests this API
    /// has no method for.
    pub fn http(&self) -> Http {
        self.http.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.addr,
            source,
        }
    }

    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        Err(ClientError::Rejected { status, message })
    }

    async fn read_json<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let response = self.check(response).await?;
        response
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.get_query(path, &[]).await
    }

    async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let response = self
            .http
            .get(self.url(path))
            .query(query)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.read_json(response).await
    }

    async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.read_json(response).await
    }

    pub async fn propose(
        &self,
        transactions: Vec<TransactionBody>,
    ) -> Result<ProposeReceipt, ClientError> {
        self.post_json("/v1/transactions", &ProposeRequest { transactions })
            .await
    }

    pub async fn vertex(&self, id: &str) -> Result<VertexInfo, ClientError> {
        self.get(&format!("/v1/vertices/{id}")).await
    }

    pub async fn claim(&self, task: &str, claimant: &str) -> Result<ProposeReceipt, ClientError> {
        let body = ClaimRequest {
            claimant: claimant.to_string(),
        };
        self.post_json(&format!("/v1/tasks/{task}/claim"), &body)
            .await
    }

    pub async fn task(&self, task: &str) -> Result<TaskInfo, ClientError> {
        self.get(&format!("/v1/tasks/{task}")).await
    }

    /// Creates or updates a pattern.
    pub async fn put_pattern(&self, input: &PatternInput) -> Result<PatternView, ClientError> {
        self.post_json("/v1/patterns", input).await
    }

    pub async fn pattern(&self, id: &str) -> Result<PatternView, ClientError> {
        self.get(&format!("/v1/patterns/{id}")).await
    }

    /// One page of patterns, optionally by tag and/or kind.
    pub async fn patterns(
        &self,
        tag: Option<&str>,
        kind: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PatternList, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        for (name, value) in [("tag", tag), ("kind", kind), ("after", after)] {
            if let Some(v) = value {
                query.push((name, v.to_string()));
            }
        }
        self.get_query("/v1/patterns", &query).await
    }

    pub async fn pattern_outcome(
        &self,
        id: &str,
        success: bool,
    ) -> Result<PatternView, ClientError> {
        self.post_json(
            &format!("/v1/patterns/{id}/outcomes"),
            &OutcomeInput { success },
        )
        .await
    }

    /// The top `k` patterns for a context, and who chose them.
    pub async fn recommend(
        &self,
        context: &agentmesh_neural::Context,
        k: usize,
    ) -> Result<agentmesh_neural::recommender::Answer, ClientError> {
        self.post_json(
            "/v1/recommend",
            &serde_json::json!({ "context": context, "k": k }),
        )
        .await
    }

    /// Reports what came of using a pattern in a context.
    pub async fn report_outcome(
        &self,
        context: &agentmesh_neural::Context,
        pattern: &str,
        success: bool,
    ) -> Result<serde_json::Value, ClientError> {
        self.post_json(
            "/v1/outcomes",
            &serde_json::json!({ "context": context, "pattern": pattern, "success": success }),
        )
        .await
    }

    /// The local model's status (`GET /v1/model`).
    pub async fn model_status(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/model").await
    }

    /// The model's checkpoint as `GET /v1/model/checkpoint` exports it.
    pub async fn export_model(&self) -> Result<Vec<u8>, ClientError> {
        let response = self
            .http
            .get(self.url("/v1/model/checkpoint"))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let response = self.check(response).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(bytes.to_vec())
    }

    /// Installs a checkpoint (`PUT /v1/model/checkpoint`).
    pub async fn import_model(
        &self,
        checkpoint: Vec<u8>,
    ) -> Result<serde_json::Value, ClientError> {
        let response = self
            .http
            .put(self.url("/v1/model/checkpoint"))
            .header("content-type", "application/cbor")
            .body(checkpoint)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.read_json(response).await
    }

    /// Trains the node's model on its stored outcomes plus `samples`.
    pub async fn train_model(
        &self,
        samples: &[agentmesh_neural::Sample],
        max_epochs: Option<usize>,
    ) -> Result<serde_json::Value, ClientError> {
        let response = self
            .http
            .post(self.url("/v1/model/train"))
            .json(&serde_json::json!({ "samples": samples, "max_epochs": max_epochs }))
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.read_json(response).await
    }

    pub async fn sync_status(&self) -> Result<SyncStatus, ClientError> {
        self.get("/v1/sync").await
    }

    pub async fn consensus(&self) -> Result<ConsensusStatus, ClientError> {
        self.get("/v1/consensus").await
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/v1/status").await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        self.get("/v1/peers").await
    }

    pub async fn channels(&self) -> Result<Channels, ClientError> {
        self.get("/v1/channels").await
    }

    pub async fn publish(
        &self,
        channel: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<PublishReceipt, ClientError> {
        let response = self
            .http
            .post(self.url(&format!("/v1/channels/{channel}/messages")))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.read_json(response).await
    }

    /// Publishes several JSON messages in one request (`POST /v1/messages`).
    pub async fn publish_many(
        &self,
        batch: &PublishBatch,
    ) -> Result<Vec<PublishReceipt>, ClientError> {
        let receipts: BatchReceipts = self.post_json("/v1/messages", batch).await?;
        Ok(receipts.receipts)
    }

    /// Subscribes to a channel or prefix pattern. When this returns, the
    /// node has registered the subscription: later messages will be seen.
    pub async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<
        impl Stream<Item = Result<SubscriptionItem, ClientError>> + Unpin + use<>,
        ClientError,
    > {
        let response = self
            .http
            .get(self.url(&format!("/v1/channels/{pattern}/events")))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let response = self.check(response).await?;
        let bytes = response.bytes_stream();
        let stream = futures::stream::unfold(
            (
                bytes,
                SseParser::default(),
                std::collections::VecDeque::new(),
            ),
            |(mut bytes, mut parser, mut ready)| async move {
                loop {
                    if let Some(item) = ready.pop_front() {
                        return Some((item, (bytes, parser, ready)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => {
                            ready.extend(parser.feed(&chunk).into_iter().filter_map(to_item))
                        }
                        Some(Err(e)) => {
                            return Some((
                                Err(ClientError::Protocol(e.to_string())),
                                (bytes, parser, ready),
                            ))
                        }
                        None => return None,
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }
}

fn to_item(event: SseEvent) -> Option<Result<SubscriptionItem, ClientError>> {
    let parse_err =
        |e: serde_json::Error| ClientError::Protocol(format!("bad {} event: {e}", event.event));
    match event.event.as_str() {
        "message" => Some(
            serde_json::from_str(&event.data)
                .map(SubscriptionItem::Message)
                .map_err(parse_err),
        ),
        "lagged" => Some(
            serde_json::from_str::<LaggedEvent>(&event.data)
                .map(|l| SubscriptionItem::Lagged(l.missed))
                .map_err(parse_err),
        ),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Incremental parser for the `text/event-stream` format (the subset the
/// node emits: `event:`, `data:`, `id:` and comment lines).
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    out.push(SseEvent {
                        event: if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        },
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.event.clear();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_string(),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_are_reassembled() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: mess").is_empty());
        assert!(p.feed(b"age\nid: 1\ndata: {\"a\"").is_empty());
        let events = p.feed(b":1}\n\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "message".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }
}
