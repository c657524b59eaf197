//! agentmesh storage: one sled database per node, one typed tree per kind of
//! record, and the consensus history in a redb database beside it (see
//! `decisions` for why). Values are CBOR (see `agentmesh-protocol`).

mod bans;
mod decisions;
mod model;
pub mod patterns;
mod peers;

pub use bans::{Ban, BanList};
pub use decisions::{DecisionLog, DurableCommit, StoredDecision, MAX_RECORDED_RIVALS};
pub use model::{ModelStore, OutcomeMark, StoredCheckpoint};

pub use patterns::PatternStore;
pub use peers::{KnownPeer, KnownPeers, KnownValidator, NodeRecords, PeerBook, ValidatorBook};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// sled reports a held lock only as an `Other` I/O error with this text
/// and the `flock` error's debug form (sled 0.34 `config.rs`). Other lock
/// failures (no lock support on the file system) are not waited out.
fn is_lock_contention(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if {
        let text = io.to_string();
        text.starts_with("could not acquire lock") && text.contains("WouldBlock")
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("consensus history storage error: {0}")]
    History(#[from] redb::Error),
    #[error("stored record under {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("encoding a record failed: {0}")]
    Encode(String),
    #[error("a storage task stopped before it finished: {0}")]
    Interrupted(String),
    #[error(
        "the database at {path} is locked by another process (is another node using this data directory?)"
    )]
    Locked { path: String },
}

/// redb reports each operation's failure as its own type; all of them are
/// a [`StoreError::History`].
macro_rules! history_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> StoreError {
                StoreError::History(e.into())
            }
        }
    )*};
}
history_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The consensus history's file, inside the store's directory.
const HISTORY_FILE: &str = "consensus.redb";
/// redb's page cache (its default is 1 GiB): the history is read mostly
/// by key, once per decision, and a node must stay small.
const HISTORY_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Largest stored record we will decode; records are written by this node,
/// so anything larger means the file was damaged.
pub(crate) const MAX_RECORD_BYTES: usize = 2 << 20;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    history: Arc<redb::Database>,
    patterns: PatternStore,
    /// One per database: it keeps the outcome count.
    model: ModelStore,
}

/// How long an open waits for another holder of the database's lock to
/// let go before it reports the database as locked.
const LOCK_WAIT: Duration = Duration::from_secs(3);

impl Store {
    /// Opens (or creates) the database at `path`. One process at a time
    /// holds it; see [`StoreError::Locked`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_waiting(path, LOCK_WAIT)
    }

    /// sled 0.34 lets go of its file lock on a background thread after the
    /// last handle is dropped (spacejam/sled#1234), so a database closed a
    /// moment ago in this process can still be locked: the open is tried
    /// again until `wait` has passed.
    fn open_waiting(path: &Path, wait: Duration) -> Result<Store, StoreError> {
        let config = sled::Config::new()
            .path(path)
            // The node flushes explicitly on shutdown; this bounds loss on a crash.
            .flush_every_ms(Some(1000))
            // sled's page cache would otherwise grow to 1 GiB; decided
            // vertices are read rarely, so a small cache keeps nodes small.
            .cache_capacity(8 * 1024 * 1024);
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if is_lock_contention(&e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e.into()),
            }
        };
        // sled's lock is held: the history's cannot be held by another node.
        let history = redb::Database::builder()
            .set_cache_size(HISTORY_CACHE_BYTES)
            .create(path.join(HISTORY_FILE))
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                    path: path.display().to_string(),
                },
                e => e.into(),
            })?;
        let patterns = PatternStore::open(&db)?;
        let model = ModelStore::open(&db, model::MAX_STORED_OUTCOMES)?;
        Ok(Store {
            db,
            history: Arc::new(history),
            patterns,
            model,
        })
    }

    pub fn peers(&self) -> Result<PeerBook, StoreError> {
        Ok(PeerBook::new(self.db.open_tree("peers")?))
    }

    pub fn validators(&self) -> Result<ValidatorBook, StoreError> {
        Ok(ValidatorBook::new(self.db.open_tree("validators")?))
    }

    pub fn bans(&self) -> Result<BanList, StoreError> {
        Ok(BanList::new(self.db.open_tree("bans")?))
    }

    pub fn decisions(&self) -> Result<DecisionLog, StoreError> {
        DecisionLog::open(self.history.clone(), &self.db)
    }

    /// The model's records (one per database: it keeps the outcome count).
    pub fn model(&self) -> ModelStore {
        self.model.clone()
    }

    /// The pattern store (one per database: it holds the write lock).
    pub fn patterns(&self) -> PatternStore {
        self.patterns.clone()
    }

    /// Writes everything buffered to disk (the consensus history too).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        DurableCommit::new(self.history.clone()).commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_held_elsewhere_is_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path()).unwrap();
        let started = Instant::now();
        let wait = Duration::from_millis(300);
        match Store::open_waiting(dir.path(), wait) {
            Err(e @ StoreError::Locked { .. }) => {
                assert!(e.to_string().contains("another node"), "{e}")
            }
            Err(e) => panic!("not reported as locked: {e}"),
            Ok(_) => panic!("opened a database another handle holds"),
        }
        assert!(started.elapsed() >= wait, "gave up before its wait");
        drop(held);
    }

    #[test]
    fn a_database_closed_a_moment_ago_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20u32 {
            let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
            // Enough written that sled has I/O in flight when dropped.
            let tree = store.db.open_tree("blobs").unwrap();
            for key in 0..2000u32 {
                tree.insert(key.to_be_bytes(), vec![round as u8; 512])
                    .unwrap();
            }
            drop(tree);
            drop(store);
        }
    }
}
