//! The local model's records: its latest checkpoint (opaque bytes, checked
//! by whoever decodes them) and the outcomes agents reported, in order, so
//! that the next full training learns from them.

use crate::StoreError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Most outcomes kept; past it the oldest go. The rules learn every stored
/// outcome again at start-up and a full training adds them to its samples,
/// so this bounds the start-up, the training and the disk they take.
pub const MAX_STORED_OUTCOMES: usize = 100_000;

const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const OUTCOMES_THROUGH_KEY: &[u8] = b"outcomes_through";
const CHECK_SLICE_KEY: &[u8] = b"check_slice";

/// A saved checkpoint and what it says of the stored outcomes.
pub struct StoredCheckpoint {
    pub bytes: Vec<u8>,
    pub outcomes: OutcomeMark,
}

/// How far into the stored outcomes a saved model goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeMark {
    /// It accounts for every outcome up to this sequence number.
    Through(u64),
    /// It accounts for none.
    NoneYet,
    /// Not recorded (a checkpoint from before marks, or a damaged mark).
    Unknown,
}

#[derive(Clone)]
pub struct ModelStore {
    db: sled::Db,
    checkpoint: sled::Tree,
    outcomes: sled::Tree,
    /// Outcomes stored (sled counts a tree by walking it).
    outcome_count: Arc<AtomicUsize>,
    outcome_limit: usize,
    /// One trim at a time.
    trimming: Arc<Mutex<()>>,
}

impl ModelStore {
    /// The model's trees in `db`, keeping at most `outcome_limit` outcomes
    /// (at least one). More than that already stored (a database from
    /// before the limit) are trimmed here, at start-up.
    pub(crate) fn open(db: &sled::Db, outcome_limit: usize) -> Result<ModelStore, StoreError> {
        let outcomes = db.open_tree("model_outcomes")?;
        let store = ModelStore {
            db: db.clone(),
            checkpoint: db.open_tree("model")?,
            outcome_count: Arc::new(AtomicUsize::new(outcomes.len())),
            outcomes,
            outcome_limit: outcome_limit.max(1),
            trimming: Arc::default(),
        };
        store.trim_to_limit()?;
        Ok(store)
    }

    /// Outcomes stored now.
    pub fn outcome_count(&self) -> usize {
        self.outcome_count.load(Ordering::Relaxed)
    }

    /// Saves a checkpoint with the sequence number of the last stored
    /// outcome its model accounts for (None: none), in one atomic batch,
    /// so that a restart learns the outcomes after it again.
    pub fn save_checkpoint(
        &self,
        bytes: &[u8],
        outcomes_through: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(CHECKPOINT_KEY, bytes);
        // Empty: none yet (a missing mark means "not recorded").
        let mark = outcomes_through.map_or(Vec::new(), |seq| seq.to_be_bytes().to_vec());
        batch.insert(OUTCOMES_THROUGH_KEY, mark);
        self.checkpoint.apply_batch(batch)?;
        self.checkpoint.flush()?;
        Ok(())
    }

    /// The saved checkpoint, if any.
    pub fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let Some(bytes) = self.checkpoint.get(CHECKPOINT_KEY)? else {
            return Ok(None);
        };
        let outcomes = match self.checkpoint.get(OUTCOMES_THROUGH_KEY)? {
            None => OutcomeMark::Unknown,
            Some(v) if v.is_empty() => OutcomeMark::NoneYet,
            Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(seq) => OutcomeMark::Through(u64::from_be_bytes(seq)),
                Err(_) => OutcomeMark::Unknown,
            },
        };
        Ok(Some(StoredCheckpoint {
            bytes: bytes.to_vec(),
            outcomes,
        }))
    }

    /// Appends one encoded outcome; returns its sequence number (sled's
    /// id generator: unique and increasing, also across restarts and
    /// concurrent callers). The caller trims with
    /// [`ModelStore::trim_outcomes`]: the outcome is stored whatever
    /// becomes of that.
    pub fn append_outcome(&self, bytes: &[u8]) -> Result<u64, StoreError> {
        let seq = self.db.generate_id()?;
        if self.outcomes.insert(seq.to_be_bytes(), bytes)?.is_none() {
            self.outcome_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(seq)
    }

    /// Removes the oldest outcomes once the limit is passed by a hundredth
    /// of it (so that removals come in batches); returns how many went.
    pub fn trim_outcomes(&self) -> Result<usize, StoreError> {
        let slack = (self.outcome_limit / 100).max(1);
        if self.outcome_count() <= self.outcome_limit + slack {
            return Ok(0);
        }
        self.trim_to_limit()
    }

    fn trim_to_limit(&self) -> Result<usize, StoreError> {
        /// Most removals written in one batch.
        const TRIM_BATCH: usize = 10_000;
        // Another caller is trimming: it removes enough for both.
        let Ok(_trimming) = self.trimming.try_lock() else {
            return Ok(0);
        };
        let mut removed = 0;
        loop {
            let excess = self.outcome_count().saturating_sub(self.outcome_limit);
            if excess == 0 {
                return Ok(removed);
            }
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for key in self.outcomes.iter().keys().take(excess.min(TRIM_BATCH)) {
                batch.remove(key?);
                in_batch += 1;
            }
            if in_batch == 0 {
                // Nothing left to remove: the count was off; the tree is
                // empty.
                self.outcome_count.store(0, Ordering::Relaxed);
                return Ok(removed);
            }
            self.outcomes.apply_batch(batch)?;
            self.outcome_count.fetch_sub(in_batch, Ordering::Relaxed);
            removed += in_batch;
        }
    }

    /// Saves the samples merged models are checked against (opaque bytes,
    /// encoded by the node), durably.
    pub fn save_check_slice(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.checkpoint.insert(CHECK_SLICE_KEY, bytes)?;
        self.checkpoint.flush()?;
        Ok(())
    }

    pub fn check_slice(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.checkpoint.get(CHECK_SLICE_KEY)?.map(|v| v.to_vec()))
    }

    /// The latest `limit` stored outcomes, newest first.
    pub fn latest_outcomes(&self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.outcomes
            .iter()
            .values()
            .rev()
            .take(limit)
            .map(|v| Ok(v?.to_vec()))
            .collect()
    }

    /// Stored outcomes after sequence number `after` (all with `None`),
    /// oldest first, with their sequence numbers, read as they are used.
    pub fn outcomes_after(
        &self,
        after: Option<u64>,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + use<> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        self.outcomes.range(start.to_be_bytes()..).map(|item| {
            let (k, v) = item?;
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    key: format!("{k:?}"),
                    reason: "an outcome key is not 8 bytes".into(),
                })?;
            Ok((seq, v.to_vec()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_outcomes_come_newest_first_and_the_check_slice_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let model = store.model();
        assert_eq!(model.check_slice().unwrap(), None);
        for i in 0..5u8 {
            model.append_outcome(&[i]).unwrap();
        }
        assert_eq!(model.latest_outcomes(2).unwrap(), [vec![4u8], vec![3u8]]);
        assert_eq!(model.latest_outcomes(10).unwrap().len(), 5);
        model.save_check_slice(b"slice").unwrap();
        assert_eq!(model.check_slice().unwrap().as_deref(), Some(&b"slice"[..]));
    }

    #[test]
    fn a_checkpoint_keeps_its_outcome_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let model = store.model();
        let mark = || model.checkpoint().unwrap().map(|c| c.outcomes);
        assert_eq!(mark(), None);
        model.save_checkpoint(b"model", None).unwrap();
        assert_eq!(mark(), Some(OutcomeMark::NoneYet));
        let seq = model.append_outcome(b"outcome").unwrap();
        model.save_checkpoint(b"model", Some(seq)).unwrap();
        assert_eq!(mark(), Some(OutcomeMark::Through(seq)));
        // A checkpoint written before marks existed: not "none learned".
        model.checkpoint.remove(OUTCOMES_THROUGH_KEY).unwrap();
        assert_eq!(mark(), Some(OutcomeMark::Unknown));
        let outcomes: Vec<_> = model
            .outcomes_after(None)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(outcomes, vec![(seq, b"outcome".to_vec())]);
        assert_eq!(model.outcomes_after(Some(seq)).count(), 0);
    }

    #[test]
    fn past_the_limit_the_oldest_outcomes_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let kept = |model: &ModelStore| -> Vec<Vec<u8>> {
            model
                .outcomes_after(None)
                .map(|item| item.unwrap().1)
                .collect()
        };
        let model = ModelStore::open(&store.db, 10).unwrap();
        for i in 0..25u8 {
            model.append_outcome(&[i]).unwrap();
            model.trim_outcomes().unwrap();
            // Never more than the limit and its slack (one here).
            assert!(model.outcome_count() <= 11, "{}", model.outcome_count());
            assert_eq!(model.outcome_count(), kept(&model).len());
        }
        // The newest, in order.
        let newest = |n: usize| -> Vec<Vec<u8>> { (25 - n as u8..25).map(|i| vec![i]).collect() };
        assert_eq!(kept(&model), newest(model.outcome_count()));
        // Opened with a lower limit (a database from before it), the
        // excess goes at once.
        let smaller = ModelStore::open(&store.db, 4).unwrap();
        assert_eq!(smaller.outcome_count(), 4);
        assert_eq!(kept(&smaller), newest(4));
    }
}
