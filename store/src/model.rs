//! The local model's records: its latest checkpoint (opaque bytes, checked
//! by whoever decodes them) and the outcomes agents reported, in order, so
//! that the next full training learns from them.

use crate::StoreError;

const CHECKPOINT_KEY: &[u8] = b"checkpoint";

#[derive(Clone)]
pub struct ModelStore {
    checkpoint: sled::Tree,
    outcomes: sled::Tree,
}

impl ModelStore {
    pub(crate) fn open(db: &sled::Db) -> Result<ModelStore, StoreError> {
        Ok(ModelStore {
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

    /// Appends one encoded outcome.
    pub fn append_outcome(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let seq = self
            .outcomes
            .last()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, |k| u64::from_be_bytes(k) + 1);
        self.outcomes.insert(seq.to_be_bytes(), bytes)?;
        Ok(())
    }

    pub fn outcome_count(&self) -> usize {
        self.outcomes.len()
    }

    /// Every stored outcome, oldest first.
    pub fn outcomes(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.outcomes
            .iter()
            .values()
            .map(|v| Ok(v?.to_vec()))
            .collect()
    }
}
