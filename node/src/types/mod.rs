//! JSON types of the agent API, shared by the server, the CLI client and the
//! testnet driver, so that both ends always agree.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Consensus events (vertices, queries, votes) dropped because the
    /// consensus service's queue was full.
    pub consensus_events_dropped: u64,
    pub security: SecurityStatus,
    /// Reachability, relays and hole punching (see docs/nat.md).
    #[serde(default)]
    pub nat: NatStatus,
}

/// Whether other hosts can dial this node, and how it is reached if not.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NatStatus {
    /// `public` (an address of this node was dialled back by a peer, or is
    /// configured), `private` (dial-backs failed: reached through relays),
    /// or `unknown` (not tested yet).
    pub reachability: String,
    /// `auto`, `public` or `private` (`nat.reachability`).
    pub mode: String,
    /// Direct addresses confirmed by dial-backs, configured, or mapped by
    /// the gateway (UPnP).
    pub confirmed_addrs: Vec<String>,
    /// UPnP port mapping (`nat.upnp`): `off`, `searching`, `mapped` (the
    /// gateway forwards an address to this node now), `mapping expired`,
    /// `no gateway` (none answered the search at start-up) or `gateway not
    /// routable` (the gateway is itself behind NAT).
    #[serde(default)]
    pub upnp: String,
    /// AutoNAT dial-backs of this node's addresses that worked and failed.
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// Relays this node holds an accepted slot on.
    pub relays: Vec<String>,
    /// `/p2p-circuit` addresses peers reach this node at.
    pub relayed_addrs: Vec<String>,
    /// Reservation requests that failed (refused, relay gone, unreachable).
    pub reservations_failed: u64,
    /// Relayed connections upgraded to direct ones by hole punching, and
    /// attempts that failed (the connection stays relayed; counted by the
    /// side that retries: the node the relayed connection was dialled to).
    pub hole_punches_ok: u64,
    pub hole_punches_failed: u64,
    /// Connections to peers open now that go through a relay.
    pub relayed_connections: usize,
    /// As a relay: whether the service is offered now, slots held for
    /// others, and circuits relayed now.
    pub relay_service: bool,
    pub relay_reservations: usize,
    pub relay_circuits: usize,
    /// As a relay: slot and circuit requests refused (limits, rates, and
    /// circuits to peers that hold no slot here, such as departed ones).
    #[serde(default)]
    pub relay_denied: u64,
    /// Pattern sync requests held back or refused because the byte budget
    /// for a peer reached only through a relay (1 MiB a minute) was spent.
    #[serde(default)]
    pub relayed_sync_deferred: u64,
}

/// Membership and misbehaviour counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityStatus {
    /// `open` (any peer may join) or `authority` (certificates required).
    pub membership: String,
    /// Who votes in consensus (see `GET /v1/consensus` for the set itself);
    /// says so when it is not Sybil-resistant.
    pub validators: String,
    /// This node's scopes, with an authority.
    pub scopes: Vec<String>,
    /// When this node's certificate expires (unix ms), with an authority.
    pub certificate_expires_ms: Option<u64>,
    /// Peers refused for lacking a valid certificate.
    pub refused_peers: u64,
    /// Peers connected but not yet through the handshake, and the gossip
    /// messages held from them meanwhile.
    pub pending_handshakes: usize,
    /// Newcomers turned away because `max_pending_handshakes` peers were
    /// proving membership already.
    #[serde(default)]
    pub handshakes_turned_away: u64,
    pub held_messages: usize,
    /// Bytes of those held messages (bounded per peer and in total).
    #[serde(default)]
    pub held_bytes: usize,
    /// Milliseconds from connection to admission of the last admitted peer.
    pub last_handshake_ms: Option<f64>,
    /// Bans in force, and issued since start-up.
    pub banned_peers: usize,
    pub bans_issued: u64,
    /// Offences by kind: malformed, bad_signature, unauthorised, over_rate,
    /// misleading.
    pub offences: std::collections::BTreeMap<String, u64>,
    pub bans: Vec<BanInfo>,
    /// The peer manager: connections by direction, peers pruned, addresses
    /// banned, and connections refused by reason (ip_banned, inbound_full,
    /// full, per_ip, per_subnet).
    #[serde(default)]
    pub peer_manager: PeerManagerStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerManagerStatus {
    pub inbound: usize,
    pub outbound: usize,
    pub pruned: u64,
    pub ip_bans: usize,
    pub ip_bans_issued: u64,
    pub refused_connections: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BanInfo {
    pub peer_id: String,
    pub until_ms: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageCounters {
    pub published: u64,
    /// Messages from peers that passed validation.
    pub received: u64,
    /// Messages from peers that failed validation.
    pub rejected: u64,
    /// Deliveries to local subscribers (one per subscriber family stream).
    pub delivered_locally: u64,
    /// Messages from peers dropped unchecked because validation was
    /// overloaded (not forwarded, nobody charged).
    #[serde(default)]
    pub shed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Tcp,
    /// Through a circuit relay (`/p2p-circuit`).
    Relayed,
    Other,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionInfo {
    pub remote_addr: String,
    pub transport: Transport,
    /// `outbound` when this node dialled, `inbound` when the peer did.
    pub direction: String,
    pub established_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RttInfo {
    pub last_ms: f64,
    /// Mean of the most recent samples (up to 16).
    pub mean_ms: f64,
    pub samples: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerInfo {
    pub peer_id: String,
    /// The transport of the oldest open connection (the one in use).
    pub transport: Transport,
    pub connections: Vec<ConnectionInfo>,
    /// The addresses the peer announces (identify): configured, mapped by
    /// its gateway, dialled back by AutoNAT, or relayed. Its other listen
    /// addresses are not announced.
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

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelCountersInfo {
    pub channel: String,
    pub published: u64,
    pub received: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Channels {
    /// Topic families with local or remote subscribers.
    pub subscribed: Vec<ChannelFamilyInfo>,
    pub counters: Vec<ChannelCountersInfo>,
}

/// What happened to a published message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemoteDelivery {
    /// Handed to gossipsub for the listed number of subscribed peers.
    Sent,
    /// No connected peer subscribes to this channel's topic: the message
    /// reached local subscribers only and will not be retried.
    NoRemoteSubscribers,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishReceipt {
    pub id: String,
    pub channel: String,
    pub timestamp_ms: u64,
    pub local_subscribers: usize,
    pub remote: RemoteDelivery,
    pub remote_subscribers: usize,
}

/// `POST /v1/messages`: several JSON messages in one request.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishBatch {
    pub messages: Vec<BatchMessage>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchMessage {
    pub channel: String,
    /// Any JSON value; published with content type `application/json`.
    pub body: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchReceipts {
    pub receipts: Vec<PublishReceipt>,
}

/// One message as a subscriber sees it (the `data` of a `message` SSE event).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LaggedEvent {
    pub missed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// One transaction as agents see it: the payload is UTF-8 text (often JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TransactionBody {
    pub key: String,
    pub payload: String,
}

/// `POST /v1/transactions`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeRequest {
    pub transactions: Vec<TransactionBody>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProposeReceipt {
    pub vertex: String,
    pub transactions: usize,
    pub status: String,
}

/// `GET /v1/vertices/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VertexInfo {
    pub id: String,
    /// pending (ancestors missing), processing, accepted or rejected.
    pub status: String,
    /// Accepted or rejected: the decision will not change.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Weakest consecutive-success streak among its transactions.
    pub confidence: u32,
    pub preferred: bool,
    /// The content below is absent for a rejected vertex: a node keeps a
    /// rejected vertex's id and status only (docs/consensus.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<u64>,
    pub parents: Vec<String>,
    pub transactions: Vec<TransactionBody>,
}

/// `POST /v1/tasks/{id}/claim`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub claimant: String,
}

/// The payload of a task-claim transaction (key `task:<id>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Claim {
    pub claimant: String,
    /// Node id of the node the claim was made through.
    pub node: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ClaimInfo {
    pub claimant: String,
    pub node: String,
    pub vertex: String,
}

/// `GET /v1/tasks/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskInfo {
    pub task: String,
    /// unclaimed, contested (undecided claims) or claimed (final winner).
    pub status: String,
    pub winner: Option<ClaimInfo>,
    /// Undecided claims, the one this node prefers first.
    pub candidates: Vec<ClaimInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GraylistEntry {
    pub node_id: String,
    pub until_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValidatorEntry {
    pub node_id: String,
    pub weight: u64,
}

/// Who votes in this node's polls.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValidatorsView {
    /// Where the set comes from.
    pub source: String,
    /// False when any peer that shows up votes (open mode without a
    /// `validators` setting): a Sybil with many ids can outvote the rest.
    pub sybil_resistant: bool,
    pub version: u64,
    pub count: usize,
    pub total_weight: u64,
    /// Share of the weight benched now (counted as no without a query).
    pub benched_share: f64,
    /// The first validators by id (at most 200).
    pub members: Vec<ValidatorEntry>,
}

/// `GET /v1/consensus`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsensusStatus {
    pub peers_sampled_from: usize,
    pub validators: ValidatorsView,
    pub processing: usize,
    pub pending: usize,
    pub polls_in_flight: usize,
    pub polls_started: u64,
    pub polls_succeeded: u64,
    pub queries_answered: u64,
    pub accepted_vertices: u64,
    pub rejected_vertices: u64,
    pub accepted_transactions: u64,
    pub decided_on_disk: u64,
    /// Accepted vertices on disk (the length of the accepted log that
    /// bootstrapping peers read).
    pub accepted_on_disk: u64,
    pub graylisted: Vec<GraylistEntry>,
    /// Proposal to acceptance of this node's own vertices (ms).
    pub finality_ms: Percentiles,
    /// Query round trips to peers (ms).
    pub query_rtt_ms: Percentiles,
    /// Why consensus stopped, if it did: the history failed a read or a
    /// write, and the node votes, decides and reports no more until it is
    /// restarted.
    #[serde(default)]
    pub halted: Option<String>,
    /// Flushes of decisions to disk that failed (each retried; nothing
    /// resting on them goes out meanwhile).
    #[serde(default)]
    pub flush_failures: u64,
    pub bootstrap: BootstrapView,
}

/// Catching up on accepted history from the validators (see
/// docs/consensus.md, "Bootstrapping").
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootstrapView {
    /// waiting (no validator to ask), probing, listing, confirming,
    /// fetching, or done.
    pub state: String,
    /// The validator whose accepted log is being read.
    pub source: Option<String>,
    /// Entries of the source's log read so far, of `end`.
    pub position: u64,
    pub end: u64,
    pub remaining: u64,
    /// Vertices fetched and their size in bytes.
    pub fetched_vertices: u64,
    pub fetched_bytes: u64,
    /// Vertices accepted on a quorum's word, without polling them.
    pub accepted_vertices: u64,
    pub accepted_transactions: u64,
    /// Log entries this node had accepted already.
    pub known: u64,
    /// Log entries no quorum confirmed (left to consensus).
    pub unconfirmed: u64,
    /// Confirmed vertices that could not be fetched, ordered or accepted.
    pub missed: u64,
    /// Vertices delivered (gossip, fetches) while the walk ran, held back
    /// and handed to consensus after it; and those dropped over the bounds
    /// (4,096 vertices, 64 MiB), which come back when named again.
    pub held_vertices: u64,
    pub dropped_held_vertices: u64,
    /// Seconds from the first probe to the end (or to now).
    pub seconds: f64,
}

mod patterns;
pub use patterns::*;
