//! JSON types of the pattern endpoints.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/patterns`: creates the pattern, or writes its next version
/// when the id exists (every content field and the tag set are replaced).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternInput {
    /// Chosen by the node (random) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Template or example, any JSON.
    #[serde(default)]
    pub body: serde_json::Value,
    /// A JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub author_agent: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PatternStats {
    pub uses: u64,
    pub successes: u64,
    pub failures: u64,
    /// Uses per node id (hex): the G-Counter entries behind `uses`.
    pub uses_by_node: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PatternView {
    pub id: String,
    pub version: u64,
    pub timestamp_ms: u64,
    /// The node whose write of this version won (hex node id).
    pub author_node: String,
    pub author_agent: String,
    pub kind: String,
    pub name: String,
    pub description: String,
    pub framework: Option<String>,
    pub language: Option<String>,
    pub tags: Vec<String>,
    pub body: serde_json::Value,
    pub metadata: serde_json::Value,
    pub stats: PatternStats,
    /// Changes seen per node (hex node id): the pattern's vector clock.
    pub clock: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PatternList {
    pub patterns: Vec<PatternView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// `POST /v1/patterns/{id}/outcomes`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeInput {
    pub success: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicationStats {
    pub batches_sent: u64,
    pub patterns_sent: u64,
    pub bytes_sent: u64,
    pub batches_received: u64,
    pub patterns_received: u64,
    pub bytes_received: u64,
    /// Received states that changed what this node holds.
    pub patterns_applied: u64,
    /// Received states this node already held (duplicates, older states).
    pub patterns_unchanged: u64,
    /// Batches refused whole: bad frame, checksum, compression or encoding.
    pub batches_rejected: u64,
    /// Patterns refused one by one (invalid content).
    pub patterns_rejected: u64,
    /// Batches this node's subscription missed by falling behind
    /// (anti-entropy brings what they held).
    pub batches_missed: u64,
    /// Local changes not queued for gossip because the queue was full.
    pub changes_not_queued: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AntiEntropyStats {
    /// Reconciliations this node started, finished and failed.
    pub rounds: u64,
    pub rounds_in_sync: u64,
    pub rounds_failed: u64,
    pub last_error: Option<String>,
    pub last_peer: Option<String>,
    pub last_round_ms: u64,
    pub patterns_fetched: u64,
    pub patterns_pushed: u64,
    /// Payload bytes of hash, entry and batch answers received and of the
    /// batches pushed.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Requests of peers answered.
    pub requests_served: u64,
    /// Rounds cut short by `patterns.anti_entropy_round_secs`.
    pub rounds_past_deadline: u64,
    /// Pattern states peers listed in a round and then did not deliver;
    /// a peer with more than 16 in a round is charged for misleading.
    pub phantom_ids: u64,
}

/// `GET /v1/sync`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncStatus {
    pub patterns: u64,
    /// Root of the hash tree over all patterns (hex): equal on two nodes
    /// when they hold the same patterns in the same states.
    pub root: String,
    pub replication: ReplicationStats,
    pub anti_entropy: AntiEntropyStats,
    /// Times listings met a damaged stored record (one that no longer
    /// decodes) and skipped it, since start-up; each is marked so that
    /// anti-entropy fetches a peer's state to replace it.
    pub corrupt_records_skipped: u64,
}
