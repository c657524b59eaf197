//! Banned peers, kept on disk so that a restart does not forgive them.

use crate::{StoreError, MAX_RECORD_BYTES};
use agentmesh_protocol::{codec, NodeId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// Unix milliseconds after which the ban no longer applies.
    pub until_ms: u64,
    /// Why, for operators.
    pub reason: String,
}

#[derive(Clone)]
pub struct BanList {
    tree: sled::Tree,
}

impl BanList {
    pub(crate) fn new(tree: sled::Tree) -> BanList {
        BanList { tree }
    }

    pub fn put(&self, id: &NodeId, ban: &Ban) -> Result<(), StoreError> {
        let bytes = codec::encode(ban).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.tree.insert(id.as_bytes(), bytes)?;
        // Bans are rare and must survive a crash right after.
        self.tree.flush()?;
        Ok(())
    }

    pub fn remove(&self, id: &NodeId) -> Result<bool, StoreError> {
        Ok(self.tree.remove(id.as_bytes())?.is_some())
    }

    /// Bans still in force at `now_ms`, and how many damaged records were
    /// found. Expired and damaged records are deleted (a damaged ban cannot
    /// be honoured, and keeping it would report the damage at every start).
    pub fn active(&self, now_ms: u64) -> Result<(Vec<(NodeId, Ban)>, usize), StoreError> {
        let mut active = Vec::new();
        let mut damaged = 0;
        for item in self.tree.iter() {
            let (key, value) = item?;
            let ban =
                NodeId::from_slice(&key).zip(codec::decode::<Ban>(&value, MAX_RECORD_BYTES).ok());
            match ban {
                Some((id, ban)) if ban.until_ms > now_ms => active.push((id, ban)),
                Some(_) => {
                    self.tree.remove(key)?;
                }
                None => {
                    damaged += 1;
                    self.tree.remove(key)?;
                }
            }
        }
        Ok((active, damaged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_survive_reopening_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let bans = store.bans().unwrap();
            let ban = |until_ms| Ban {
                until_ms,
                reason: "flooding".into(),
            };
            bans.put(&a, &ban(1_000)).unwrap();
            bans.put(&b, &ban(5_000)).unwrap();
        }
        let store = crate::Store::open(dir.path()).unwrap();
        let bans = store.bans().unwrap();
        let (active, damaged) = bans.active(2_000).unwrap();
        assert_eq!(damaged, 0);
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].0, b);
        assert_eq!(active[0].1.reason, "flooding");
        // The expired one is gone for good.
        assert_eq!(bans.active(0).unwrap().0.len(), 1);
        assert!(bans.remove(&b).unwrap());
        assert!(bans.active(0).unwrap().0.is_empty());
    }
}
