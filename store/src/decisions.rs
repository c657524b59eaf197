//! Consensus decisions on disk: decided vertices with their status, the
//! (author, seq) index used to detect equivocation, and this node's next
//! sequence number; plus the in-memory index of conflict-key winners,
//! rebuilt from the accepted vertices when the log is opened.
//!
//! Write order makes a crash safe: content and indexes first, the status
//! last, and readers treat a vertex without a status as undecided.

use crate::winners::WinnerIndex;
use crate::{StoreError, MAX_RECORD_BYTES};
use agentmesh_protocol::{codec, NodeId, Vertex, VertexId, WireVertex};

const NEXT_SEQ: &[u8] = b"next_seq";

pub struct DecisionLog {
    status: sled::Tree,
    vertices: sled::Tree,
    authored: sled::Tree,
    meta: sled::Tree,
    winners: WinnerIndex,
    /// Decided vertices (sled's own count scans the whole tree).
    decided: usize,
}

/// A decided vertex's status: accepted or rejected, and when (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredDecision {
    pub accepted: bool,
    pub at_ms: u64,
}

fn authored_key(author: &NodeId, seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(author.as_bytes());
    key[32..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Whether the stored accepted vertex `id` has a transaction with conflict
/// key `key` (decoded only: the content was verified before it was
/// stored). A read that fails, or content missing or damaged, is an error:
/// answering "no" would let a rival of the winner in.
fn holds_key(vertices: &sled::Tree, id: &VertexId, key: &str) -> Result<bool, StoreError> {
    let bytes = vertices
        .get(id.0)?
        .ok_or_else(|| corrupt(&id.0, "accepted vertex is missing its content"))?;
    let wire: WireVertex =
        codec::decode(&bytes, MAX_RECORD_BYTES).map_err(|e| corrupt(&id.0, e))?;
    Ok(wire.vertex.transactions.iter().any(|tx| tx.key == key))
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: hex::encode(key),
        reason: reason.to_string(),
    }
}

impl DecisionLog {
    pub(crate) fn open(db: &sled::Db) -> Result<DecisionLog, StoreError> {
        let mut log = DecisionLog {
            status: db.open_tree("consensus_status")?,
            vertices: db.open_tree("consensus_vertices")?,
            authored: db.open_tree("consensus_authored")?,
            meta: db.open_tree("consensus_meta")?,
            winners: WinnerIndex::default(),
            decided: 0,
        };
        log.rebuild_winners()?;
        Ok(log)
    }

    fn rebuild_winners(&mut self) -> Result<(), StoreError> {
        let mut accepted = Vec::new();
        for item in self.status.iter() {
            let (key, value) = item?;
            self.decided += 1;
            if value.first() == Some(&1) {
                if let Ok(id) = <[u8; 32]>::try_from(key.as_ref()) {
                    accepted.push(VertexId(id));
                }
            }
        }
        for id in accepted {
            match self.vertex(&id)? {
                Some(vertex) => self.index_winners(&vertex),
                None => return Err(corrupt(&id.0, "accepted vertex is missing its content")),
            }
        }
        Ok(())
    }

    fn index_winners(&mut self, vertex: &Vertex) {
        for tx in vertex.transactions() {
            self.winners.insert(&tx.key, vertex.id());
        }
    }

    pub fn record(
        &mut self,
        vertex: &Vertex,
        accepted: bool,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let id = vertex.id();
        let bytes = codec::encode(vertex.wire()).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.vertices.insert(id.0, bytes)?;
        self.authored
            .insert(authored_key(&vertex.author(), vertex.seq()), &id.0)?;
        if accepted {
            self.index_winners(vertex);
        }
        let mut status = [0u8; 9];
        status[0] = accepted as u8;
        status[1..].copy_from_slice(&at_ms.to_be_bytes());
        if self.status.insert(id.0, &status)?.is_none() {
            self.decided += 1;
        }
        Ok(())
    }

    pub fn decision(&self, id: &VertexId) -> Result<Option<StoredDecision>, StoreError> {
        let Some(value) = self.status.get(id.0)? else {
            return Ok(None);
        };
        if value.len() != 9 || value[0] > 1 {
            return Err(corrupt(&id.0, "status record is not 9 bytes"));
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&value[1..]);
        Ok(Some(StoredDecision {
            accepted: value[0] == 1,
            at_ms: u64::from_be_bytes(at),
        }))
    }

    /// A decided vertex, re-verified (a damaged record is an error, not a
    /// vertex with a wrong id).
    pub fn vertex(&self, id: &VertexId) -> Result<Option<Vertex>, StoreError> {
        let Some(value) = self.vertices.get(id.0)? else {
            return Ok(None);
        };
        let wire: WireVertex =
            codec::decode(&value, MAX_RECORD_BYTES).map_err(|e| corrupt(&id.0, e))?;
        let vertex = Vertex::verify(wire).map_err(|e| corrupt(&id.0, e))?;
        if vertex.id() != *id {
            return Err(corrupt(&id.0, "vertex content does not match its id"));
        }
        Ok(Some(vertex))
    }

    /// The accepted vertex holding a transaction with conflict key `key`.
    pub fn winner(&self, key: &str) -> Result<Option<VertexId>, StoreError> {
        for candidate in self.winners.candidates(key) {
            if holds_key(&self.vertices, &candidate, key)? {
                return Ok(Some(candidate));
            }
        }
        Ok(None)
    }

    /// Conflict keys with a known winner.
    pub fn winners(&self) -> usize {
        self.winners.count()
    }

    pub fn authored(&self, author: &NodeId, seq: u64) -> Result<Option<VertexId>, StoreError> {
        self.id_at(&self.authored, &authored_key(author, seq))
    }

    fn id_at(&self, tree: &sled::Tree, key: &[u8]) -> Result<Option<VertexId>, StoreError> {
        let Some(value) = tree.get(key)? else {
            return Ok(None);
        };
        <[u8; 32]>::try_from(value.as_ref())
            .map(|b| Some(VertexId(b)))
            .map_err(|_| corrupt(key, "vertex id is not 32 bytes"))
    }

    pub fn next_seq(&self) -> Result<u64, StoreError> {
        match self.meta.get(NEXT_SEQ)? {
            None => Ok(1),
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(NEXT_SEQ, "next sequence number is not 8 bytes")),
        }
    }

    /// Durable before it returns: a sequence number is never reused.
    pub fn set_next_seq(&self, seq: u64) -> Result<(), StoreError> {
        self.meta.insert(NEXT_SEQ, &seq.to_be_bytes())?;
        self.meta.flush()?;
        Ok(())
    }

    /// Makes every recorded decision durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.status.flush_async().await?;
        Ok(())
    }

    /// Decided vertices on disk.
    pub fn len(&self) -> usize {
        self.decided
    }

    pub fn is_empty(&self) -> bool {
        self.decided == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use agentmesh_protocol::{NodeKey, Transaction};

    #[test]
    fn decisions_survive_reopening_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate().unwrap();
        let tx = Transaction {
            key: "task:1".into(),
            payload: b"a".to_vec(),
        };
        let v = Vertex::sign(&key, vec![], 3, 10, vec![tx]).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut log = store.decisions().unwrap();
            assert_eq!(log.next_seq().unwrap(), 1);
            log.record(&v, true, 42).unwrap();
            log.set_next_seq(4).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let log = store.decisions().unwrap();
        assert_eq!(
            log.decision(&v.id()).unwrap(),
            Some(StoredDecision {
                accepted: true,
                at_ms: 42
            })
        );
        assert_eq!(log.vertex(&v.id()).unwrap().unwrap().id(), v.id());
        assert_eq!(
            log.winner("task:1").unwrap(),
            Some(v.id()),
            "rebuilt on open"
        );
        assert_eq!(log.winner("task:2").unwrap(), None);
        assert_eq!(log.authored(&key.node_id(), 3).unwrap(), Some(v.id()));
        assert_eq!(log.next_seq().unwrap(), 4);
        log.vertices.insert(v.id().0, &b"garbage"[..]).unwrap();
        assert!(matches!(
            log.vertex(&v.id()),
            Err(StoreError::Corrupt { .. })
        ));
        // A damaged winner is an error, never "no winner" (which would let
        // a rival of it in).
        assert!(matches!(
            log.winner("task:1"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
