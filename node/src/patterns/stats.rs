//! Counters of pattern replication and anti-entropy, shared by the tasks
//! that move patterns and read by the API.

use crate::types::{AntiEntropyStats, ReplicationStats};
use agentmesh_protocol::PatternError;
use std::sync::Mutex;

/// One lock around plain structs: updated a few times per batch, so
/// contention is negligible and the snapshot is consistent.
#[derive(Default)]
pub struct SyncStats {
    replication: Mutex<ReplicationStats>,
    anti_entropy: Mutex<AntiEntropyStats>,
}

impl SyncStats {
    pub fn replication(&self, update: impl FnOnce(&mut ReplicationStats)) {
        update(&mut self.replication.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn anti_entropy(&self, update: impl FnOnce(&mut AntiEntropyStats)) {
        update(&mut self.anti_entropy.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Counts (and logs) patterns refused on arrival, from gossip, pushes
    /// or fetches: `invalid` ones, and those whose join with the stored
    /// state would break a limit.
    pub fn rejected(&self, invalid: &[PatternError], refused: &[(String, PatternError)]) {
        for e in invalid {
            tracing::debug!(error = %e, "rejected an invalid pattern from a peer");
        }
        for (id, e) in refused {
            tracing::warn!(%id, error = %e, "kept the stored pattern: merging a peer's state would break a limit");
        }
        let count = (invalid.len() + refused.len()) as u64;
        self.replication(|s| s.patterns_rejected += count);
    }

    pub fn snapshot(&self) -> (ReplicationStats, AntiEntropyStats) {
        (
            self.replication
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            self.anti_entropy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
