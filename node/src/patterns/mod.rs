//! Shared patterns: local writes through the API, incremental replication
//! on the `learning:patterns` channel, and anti-entropy with one peer at a
//! time. The CRDT merge is in agentmesh-protocol, the storage and hash tree
//! in agentmesh-store; this module moves states between them and the
//! network.

mod anti_entropy;
mod service;
mod stats;
pub mod views;

pub use anti_entropy::Reconciler;
pub use service::PatternService;
pub use stats::SyncStats;

use crate::types::{PatternInput, SyncStatus};
use agentmesh_protocol::pattern::Pattern;
use agentmesh_protocol::{MessageId, NodeId};
use agentmesh_store::patterns::{EditError, Filter};
use agentmesh_store::{PatternStore, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The channel batches of changed patterns are gossiped on.
pub const PATTERNS_CHANNEL: &str = "learning:patterns";
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.agentmesh.patterns+cbor";
/// Local changes waiting to be gossiped; beyond this they are counted and
/// left to anti-entropy.
pub const CHANGE_QUEUE: usize = 65_536;

/// What the API uses: reads go to the store, writes through it and then to
/// the gossip queue.
#[derive(Clone)]
pub struct Patterns {
    store: PatternStore,
    node: NodeId,
    changes: mpsc::Sender<String>,
    stats: Arc<SyncStats>,
    flushes: Arc<GroupFlush>,
}

/// Group commit for acknowledged writes: a write waits for one flush that
/// started after it was stored, and the writers that arrive while a flush
/// runs share the next one (one fsync for many API calls, not one each).
#[derive(Default)]
struct GroupFlush {
    /// Writes stored so far.
    written: AtomicU64,
    /// Writes known durable.
    durable: AtomicU64,
    /// Held by the flush in progress.
    turn: tokio::sync::Mutex<()>,
}

impl Patterns {
    pub fn new(
        store: PatternStore,
        node: NodeId,
        changes: mpsc::Sender<String>,
        stats: Arc<SyncStats>,
    ) -> Patterns {
        Patterns {
            store,
            node,
            changes,
            stats,
            flushes: Arc::default(),
        }
    }

    /// Waits until the write that was the `seq`th is durable.
    async fn durable(&self, seq: u64) -> Result<(), StoreError> {
        let flushes = &self.flushes;
        let _turn = flushes.turn.lock().await;
        if flushes.durable.load(Ordering::Acquire) >= seq {
            return Ok(()); // a flush that started after it covered it
        }
        let covered = flushes.written.load(Ordering::Acquire);
        self.flush().await?;
        flushes.durable.fetch_max(covered, Ordering::Release);
        Ok(())
    }

    /// Makes every write stored before the call durable (group commit).
    pub async fn make_durable(&self) -> Result<(), StoreError> {
        self.durable(self.stored()).await
    }

    /// Counts a stored write; its sequence number for [`Patterns::durable`].
    fn stored(&self) -> u64 {
        self.flushes.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn changed(&self, id: &str) {
        if self.changes.try_send(id.to_string()).is_err() {
            self.stats.replication(|s| s.changes_not_queued += 1);
        }
    }

    /// Creates or updates; also says whether the pattern is new. Durable
    /// when it returns.
    pub async fn put(&self, input: PatternInput) -> Result<(Pattern, bool), EditError> {
        let id = match &input.id {
            Some(id) => id.clone(),
            None => MessageId::random()
                .ok_or_else(|| StoreError::Encode("the system RNG failed".into()))?
                .to_string(),
        };
        let edit = views::edit_of(input);
        let now = crate::clock::now_ms();
        let mut created = false;
        let pattern = self.store.edit(&id, |old| match old {
            Some(mut p) => {
                p.update(edit, self.node, now)?;
                Ok(p)
            }
            None => {
                created = true;
                Ok(Pattern::create(id.clone(), edit, self.node, now)?)
            }
        })?;
        // Gossiped even if the flush fails: the write is stored either way,
        // and a peer holding it can only help.
        self.changed(&pattern.id);
        self.make_durable().await?;
        Ok((pattern, created))
    }

    /// Counts a use and how it went. Durable when it returns.
    pub async fn record_outcome(&self, id: &str, success: bool) -> Result<Pattern, EditError> {
        let pattern = self.count_outcome(id, success)?;
        self.make_durable().await?;
        Ok(pattern)
    }

    /// Counts a use and how it went; durable at the next flush.
    pub fn count_outcome(&self, id: &str, success: bool) -> Result<Pattern, EditError> {
        let pattern = self.store.edit(id, |old| {
            let mut p = old.ok_or_else(|| EditError::NotFound(id.to_string()))?;
            p.record_outcome(self.node, success);
            Ok(p)
        })?;
        self.changed(id);
        Ok(pattern)
    }

    /// Makes every write before it durable (the whole database: the
    /// model's outcome records too).
    async fn flush(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StoreError::Interrupted(e.to_string()))?
    }

    pub fn get(&self, id: &str) -> Result<Option<Pattern>, StoreError> {
        self.store.get(id)
    }

    pub fn list(&self, filter: &Filter) -> Result<Vec<Pattern>, StoreError> {
        self.store.list(filter)
    }

    pub fn status(&self) -> Result<SyncStatus, StoreError> {
        let (replication, anti_entropy) = self.stats.snapshot();
        Ok(SyncStatus {
            patterns: self.store.count(),
            root: hex::encode(self.store.root()?),
            replication,
            anti_entropy,
            corrupt_records_skipped: self.store.corrupt_skipped(),
        })
    }
}
