//! JSON types of the agent API, shared by the server, the CLI client and the
//! testnet driver, so that both ends always agree.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub peer_id: String,
    pub node_id: String,
    pub network: String,
    pub version: String,
    pub uptime_secs: u64,
    pub listen_addrs: Vec<String>,
    pub external_addrs: Vec<String>,
    pub connected_peers: usize,
    pub known_peers: usize,
    pub routing_table_peers: usize,
    pub quic: bool,
    pub tcp: bool,
    pub messages: MessageCounters,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MessageCounters {
    pub published: u64,
    /// Messages from peers that passed validation.
    pub received: u64,
    /// Messages from peers that failed validation.
    pub rejected: u64,
    /// Deliveries to local subscribers (one per subscriber family stream).
    pub delivered_locally: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Tcp,
    Other,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub remote_addr: String,
    pub transport: Transport,
    /// `outbound` when this node dialled, `inbound` when the peer did.
    pub direction: String,
    pub established_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RttInfo {
    pub last_ms: f64,
    /// Mean of the most recent samples (up to 16).
    pub mean_ms: f64,
    pub samples: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: String,
    /// The transport of the oldest open connection (the one in use).
    pub transport: Transport,
    pub connections: Vec<ConnectionInfo>,
    pub listen_addrs: Vec<String>,
    pub agent_version: Option<String>,
    pub rtt: Option<RttInfo>,
    pub ping_failures: u32,
    /// Messages from this peer that failed validation.
    pub rejected_messages: u64,
    /// This peer's QUIC circuit breaker: `closed` (QUIC first), `open`
    /// (TCP only) or `half_open` (trial QUIC dials).
    pub breaker: String,
    pub quic_failures: u64,
    pub quic_successes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelFamilyInfo {
    /// The family (first segment of channel names) this topic carries.
    pub family: String,
    pub topic: String,
    pub local_subscribers: usize,
    /// Connected peers subscribed to this topic.
    pub remote_subscribers: usize,
    /// Peers in this node's gossipsub mesh for the topic.
    pub mesh_peers: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelCountersInfo {
    pub channel: String,
    pub published: u64,
    pub received: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Channels {
    /// Topic families with local or remote subscribers.
    pub subscribed: Vec<ChannelFamilyInfo>,
    pub counters: Vec<ChannelCountersInfo>,
}

/// What happened to a published message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RemoteDelivery {
    /// Handed to gossipsub for the listed number of subscribed peers.
    Sent,
    /// No connected peer subscribes to this channel's topic: the message
    /// reached local subscribers only and will not be retried.
    NoRemoteSubscribers,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishReceipt {
    pub id: String,
    pub channel: String,
    pub timestamp_ms: u64,
    pub local_subscribers: usize,
    pub remote: RemoteDelivery,
    pub remote_subscribers: usize,
}

/// `POST /v1/messages`: several JSON messages in one request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishBatch {
    pub messages: Vec<BatchMessage>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchMessage {
    pub channel: String,
    /// Any JSON value; published with content type `application/json`.
    pub body: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchReceipts {
    pub receipts: Vec<PublishReceipt>,
}

/// One message as a subscriber sees it (the `data` of a `message` SSE event).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageEvent {
    pub id: String,
    pub channel: String,
    pub sender: String,
    pub timestamp_ms: u64,
    /// When this node received it, ms since the Unix epoch.
    pub received_ms: u64,
    pub content_type: String,
    /// `json` (body is the JSON value), `text` (body is a string) or
    /// `base64` (body is base64 of the raw bytes).
    pub encoding: String,
    pub body: serde_json::Value,
}

/// The `data` of a `lagged` SSE event: the subscriber was too slow and this
/// many messages were dropped for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LaggedEvent {
    pub missed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
