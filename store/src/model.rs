//! The local model's records: its latest checkpoint (opaque bytes, checked
//! by whoever decodes them) and the outcomes agents reported, in order, so
//! that the next full training learns from them.

use crate::StoreError;

const CHECKPOINT_KEY: &[u8] = b"checkpoint";

#[derive(Clone)]
pub struct ModelStore {
    db: sled::Db,
    checkpoint: sled::Tree,
    outcomes: sled::Tree,
}

impl ModelStore {
    pub(crate) fn open(db: &sled::Db) -> Result<ModelStore, StoreError> {
        Ok(ModelStore {
            db: db.clone(),
            checkpoint: db.open_tree("model")?,
            outcomes: db.open_tree("model_outcomes")?,
        })
    }

    pub fn save_checkpoint(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.checkpoint.insert(CHECKPOINT_KEY, bytes)?;
        self.checkpoint.flush()?;
        Ok(())
    }

    pub fn checkpoint(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.checkpoint.get(CHECKPOINT_KEY)?.map(|v| v.to_vec()))
    }

    /// Appends one encoded outcome; returns its sequence number (sled's
    /// id generator: unique and increasing, also across restarts and
    /// concurrent callers).
    pub fn append_outcome(&self, bytes: &[u8]) -> Result<u64, StoreError> {
        let seq = self.db.generate_id()?;
        self.outcomes.insert(seq.to_be_bytes(), bytes)?;
        Ok(seq)
    }

    /// How many outcomes are stored (a scan: call it rarely).
    pub fn outcome_count(&self) -> usize {
        self.outcomes.len()
    }

    /// Stored outcomes after sequence number `after` (all with `None`),
    /// oldest first, with their sequence numbers.
    pub fn outcomes_after(&self, after: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        self.outcomes
            .range(start.to_be_bytes()..)
            .map(|item| {
                let (k, v) = item?;
                let seq = <[u8; 8]>::try_from(k.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        key: format!("{k:?}"),
                        reason: "an outcome key is not 8 bytes".into(),
                    })?;
                Ok((seq, v.to_vec()))
            })
            .collect()
    }
}
