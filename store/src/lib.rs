//! agentmesh storage: one sled database per node, one typed tree per kind of
//! record. Values are CBOR (see `agentmesh-protocol`).

mod bans;
mod decisions;
mod model;
pub mod patterns;
mod peers;
mod winners;

pub use bans::{Ban, BanList};
pub use decisions::{DecisionLog, StoredDecision};
pub use model::ModelStore;

pub use patterns::PatternStore;
pub use peers::{KnownPeer, KnownPeers, PeerBook};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record under {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("encoding a record failed: {0}")]
    Encode(String),
}

/// Largest stored record we will decode; records are written by this node,
/// so anything larger means the file was damaged.
pub(crate) const MAX_RECORD_BYTES: usize = 2 << 20;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    patterns: PatternStore,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            // The node flushes explicitly on shutdown; this bounds loss on a crash.
            .flush_every_ms(Some(1000))
            // sled's page cache would otherwise grow to 1 GiB; decided
            // vertices are read rarely, so a small cache keeps nodes small.
            .cache_capacity(8 * 1024 * 1024)
            .open()?;
        let patterns = PatternStore::open(&db)?;
        Ok(Store { db, patterns })
    }

    pub fn peers(&self) -> Result<PeerBook, StoreError> {
        Ok(PeerBook::new(self.db.open_tree("peers")?))
    }

    pub fn bans(&self) -> Result<BanList, StoreError> {
        Ok(BanList::new(self.db.open_tree("bans")?))
    }

    pub fn decisions(&self) -> Result<DecisionLog, StoreError> {
        DecisionLog::open(&self.db)
    }

    pub fn model(&self) -> Result<ModelStore, StoreError> {
        ModelStore::open(&self.db)
    }

    /// The pattern store (one per database: it holds the write lock).
    pub fn patterns(&self) -> PatternStore {
        self.patterns.clone()
    }

    /// Writes everything buffered to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
