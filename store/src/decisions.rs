//! Consensus decisions on disk.
//!
//! - `consensus_status`: every decided vertex's status (accepted or
//!   rejected, when) and, for a rejected one, the accepted rivals that beat
//!   it (the hints a query answer carries);
//! - `consensus_vertices`: the content of accepted vertices only (a rejected
//!   vertex keeps its id and status: its content would let any proposer
//!   fill every node's disk);
//! - `consensus_winners`: conflict key → the accepted vertex holding it;
//! - `consensus_accepted`: the accepted log, this node's acceptance order
//!   (parents before children), which bootstrapping nodes page through;
//! - `consensus_authored`: (author, seq) of accepted vertices, to catch
//!   equivocation;
//! - `consensus_meta`: the next sequence number, counters, the layout.
//!
//! Nothing is rebuilt or re-verified at start-up: opening costs the same
//! whatever the history's length. Write order makes a crash safe: content
//! and indexes first, the status last, and readers treat a vertex without
//! a status as undecided. sled recovers a prefix of the writes, so an index
//! entry without its status is harmless, and the reverse cannot happen.

use crate::{StoreError, MAX_RECORD_BYTES};
use agentmesh_protocol::{codec, NodeId, Vertex, VertexId, WireVertex};

const NEXT_SEQ: &[u8] = b"next_seq";
const DECIDED: &[u8] = b"decided";
const LAYOUT: &[u8] = b"layout";
/// Version 2: winners and the accepted log on disk, rejected vertices
/// without content. Version 1 (no layout key) kept the winner index in
/// memory, rebuilt at every start.
const CURRENT_LAYOUT: u64 = 2;
/// Accepted rivals recorded with a rejected vertex.
pub const MAX_RECORDED_RIVALS: usize = 8;

pub struct DecisionLog {
    status: sled::Tree,
    vertices: sled::Tree,
    authored: sled::Tree,
    winners: sled::Tree,
    accepted: sled::Tree,
    meta: sled::Tree,
    /// Decided vertices (sled's own count scans the whole tree).
    decided: u64,
    /// The next position in the accepted log.
    log_end: u64,
}

/// A decided vertex's status: accepted or rejected, and when (ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    pub accepted: bool,
    pub at_ms: u64,
    /// For a rejected vertex, accepted rivals that beat it (may be empty).
    pub rivals: Vec<VertexId>,
}

fn authored_key(author: &NodeId, seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(author.as_bytes());
    key[32..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: hex::encode(key),
        reason: reason.to_string(),
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => <[u8; 8]>::try_from(v.as_ref())
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| corrupt(key, "counter is not 8 bytes")),
    }
}

fn vertex_id(key: &[u8], value: &[u8]) -> Result<VertexId, StoreError> {
    <[u8; 32]>::try_from(value)
        .map(VertexId)
        .map_err(|_| corrupt(key, "vertex id is not 32 bytes"))
}

impl DecisionLog {
    pub(crate) fn open(db: &sled::Db) -> Result<DecisionLog, StoreError> {
        let mut log = DecisionLog {
            status: db.open_tree("consensus_status")?,
            vertices: db.open_tree("consensus_vertices")?,
            authored: db.open_tree("consensus_authored")?,
            winners: db.open_tree("consensus_winners")?,
            accepted: db.open_tree("consensus_accepted")?,
            meta: db.open_tree("consensus_meta")?,
            decided: 0,
            log_end: 0,
        };
        match read_u64(&log.meta, LAYOUT)? {
            Some(CURRENT_LAYOUT) => {}
            None => log.upgrade_from_layout_1()?,
            Some(other) => {
                return Err(corrupt(
                    LAYOUT,
                    format!(
                    "the consensus history has layout {other}; this build reads {CURRENT_LAYOUT}"
                ),
                ))
            }
        }
        log.decided = read_u64(&log.meta, DECIDED)?.unwrap_or(0);
        log.log_end = match log.accepted.last()? {
            Some((key, _)) => <[u8; 8]>::try_from(key.as_ref())
                .map(|b| u64::from_be_bytes(b) + 1)
                .map_err(|_| corrupt(&key, "accepted log position is not 8 bytes"))?,
            None => 0,
        };
        Ok(log)
    }

    /// A history written before winners were kept on disk: indexes every
    /// accepted vertex once (verified, as it was then at every start) and
    /// records the layout, so later starts read nothing but counters.
    fn upgrade_from_layout_1(&mut self) -> Result<(), StoreError> {
        let mut decided = 0u64;
        let mut accepted: Vec<(u64, VertexId)> = Vec::new();
        for item in self.status.iter() {
            let (key, value) = item?;
            decided += 1;
            if value.first() == Some(&1) {
                let at_ms = value
                    .get(1..9)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                accepted.push((at_ms, vertex_id(&key, &key)?));
            }
        }
        // The accepted log must list parents first (bootstrapping peers
        // read it in order): in acceptance time order, each vertex after
        // its accepted parents.
        accepted.sort();
        let ids: std::collections::HashSet<VertexId> = accepted.iter().map(|(_, id)| *id).collect();
        let mut placed = std::collections::HashSet::new();
        for (_, root) in &accepted {
            // Iterative depth-first walk: (vertex, parents pushed yet). Only
            // ids are stacked and each vertex is read again when it is
            // placed: a chain can be as deep as the history, and stacking
            // content would hold all of it in memory at once.
            let mut stack = vec![(*root, false)];
            while let Some((id, expanded)) = stack.pop() {
                if placed.contains(&id) {
                    continue;
                }
                let vertex = self
                    .vertex(&id)?
                    .ok_or_else(|| corrupt(&id.0, "accepted vertex is missing its content"))?;
                if expanded {
                    placed.insert(id);
                    self.index_accepted(&vertex)?;
                    continue;
                }
                stack.push((id, true));
                for parent in vertex.parents() {
                    if ids.contains(parent) && !placed.contains(parent) {
                        stack.push((*parent, false));
                    }
                }
            }
        }
        self.meta.insert(DECIDED, &decided.to_be_bytes())?;
        self.meta.insert(LAYOUT, &CURRENT_LAYOUT.to_be_bytes())?;
        self.meta.flush()?;
        Ok(())
    }

    /// Winners, the accepted log and the (author, seq) slot of an accepted
    /// vertex.
    fn index_accepted(&mut self, vertex: &Vertex) -> Result<(), StoreError> {
        let id = vertex.id();
        let mut batch = sled::Batch::default();
        for tx in vertex.transactions() {
            batch.insert(tx.key.as_bytes(), &id.0);
        }
        self.winners.apply_batch(batch)?;
        self.authored
            .insert(authored_key(&vertex.author(), vertex.seq()), &id.0)?;
        self.accepted.insert(self.log_end.to_be_bytes(), &id.0)?;
        self.log_end += 1;
        Ok(())
    }

    /// Records an accepted vertex: its content, its winners, its place in
    /// the accepted log.
    pub fn accept(&mut self, vertex: &Vertex, at_ms: u64) -> Result<(), StoreError> {
        let id = vertex.id();
        let bytes = codec::encode(vertex.wire()).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.vertices.insert(id.0, bytes)?;
        self.index_accepted(vertex)?;
        let mut status = Vec::with_capacity(9);
        status.push(1);
        status.extend_from_slice(&at_ms.to_be_bytes());
        self.set_status(&id, status)
    }

    /// Records a rejected vertex: its status and the accepted rivals that
    /// beat it (at most [`MAX_RECORDED_RIVALS`]), never its content.
    pub fn reject(
        &mut self,
        id: &VertexId,
        at_ms: u64,
        rivals: &[VertexId],
    ) -> Result<(), StoreError> {
        let rivals = &rivals[..rivals.len().min(MAX_RECORDED_RIVALS)];
        let mut status = Vec::with_capacity(9 + 32 * rivals.len());
        status.push(0);
        status.extend_from_slice(&at_ms.to_be_bytes());
        for rival in rivals {
            status.extend_from_slice(&rival.0);
        }
        self.set_status(id, status)
    }

    fn set_status(&mut self, id: &VertexId, status: Vec<u8>) -> Result<(), StoreError> {
        if self.status.insert(id.0, status)?.is_none() {
            self.decided += 1;
            self.meta.insert(DECIDED, &self.decided.to_be_bytes())?;
        }
        Ok(())
    }

    pub fn decision(&self, id: &VertexId) -> Result<Option<StoredDecision>, StoreError> {
        let Some(value) = self.status.get(id.0)? else {
            return Ok(None);
        };
        let well_formed = value.len() >= 9
            && (value.len() - 9) % 32 == 0
            && (value[0] == 0 || (value[0] == 1 && value.len() == 9));
        if !well_formed {
            return Err(corrupt(&id.0, "status record is malformed"));
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&value[1..9]);
        let rivals = value[9..]
            .chunks_exact(32)
            .map(|c| vertex_id(&id.0, c))
            .collect::<Result<_, _>>()?;
        Ok(Some(StoredDecision {
            accepted: value[0] == 1,
            at_ms: u64::from_be_bytes(at),
            rivals,
        }))
    }

    /// An accepted vertex, re-verified (a damaged record is an error, not a
    /// vertex with a wrong id). Rejected vertices have no content.
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
        let Some(value) = self.winners.get(key.as_bytes())? else {
            return Ok(None);
        };
        vertex_id(key.as_bytes(), &value).map(Some)
    }

    /// Conflict keys with a known winner (counted by scanning: for tests
    /// and tools, not for hot paths).
    pub fn winners(&self) -> usize {
        self.winners.len()
    }

    pub fn authored(&self, author: &NodeId, seq: u64) -> Result<Option<VertexId>, StoreError> {
        let key = authored_key(author, seq);
        match self.authored.get(key)? {
            None => Ok(None),
            Some(value) => vertex_id(&key, &value).map(Some),
        }
    }

    /// Up to `limit` ids of the accepted log from position `from`, and the
    /// log's end (its next position).
    pub fn accepted_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<VertexId>, u64), StoreError> {
        let mut ids = Vec::new();
        for item in self.accepted.range(from.to_be_bytes()..).take(limit) {
            let (key, value) = item?;
            ids.push(vertex_id(&key, &value)?);
        }
        Ok((ids, self.log_end))
    }

    /// Accepted vertices recorded (the end of the accepted log).
    pub fn accepted_len(&self) -> u64 {
        self.log_end
    }

    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(read_u64(&self.meta, NEXT_SEQ)?.unwrap_or(1))
    }

    /// Durable before it returns: a sequence number is never reused.
    pub fn set_next_seq(&self, seq: u64) -> Result<(), StoreError> {
        self.meta.insert(NEXT_SEQ, &seq.to_be_bytes())?;
        self.meta.flush()?;
        Ok(())
    }

    /// Makes every recorded decision durable (sled flushes the whole
    /// database, every tree, at once).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.status.flush_async().await?;
        Ok(())
    }

    /// Decided vertices on disk.
    pub fn len(&self) -> u64 {
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

    fn vertex(key: &NodeKey, seq: u64, task: &str) -> Vertex {
        let tx = Transaction {
            key: task.into(),
            payload: b"a".to_vec(),
        };
        Vertex::sign(key, vec![], seq, 10, vec![tx]).unwrap()
    }

    #[test]
    fn decisions_survive_reopening_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate().unwrap();
        let v = vertex(&key, 3, "task:1");
        let loser = vertex(&key, 4, "task:1");
        {
            let store = Store::open(dir.path()).unwrap();
            let mut log = store.decisions().unwrap();
            assert_eq!(log.next_seq().unwrap(), 1);
            log.accept(&v, 42).unwrap();
            log.reject(&loser.id(), 43, &[v.id()]).unwrap();
            log.set_next_seq(5).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let log = store.decisions().unwrap();
        assert_eq!(log.len(), 2, "the count survives without a scan");
        assert_eq!(
            log.decision(&v.id()).unwrap(),
            Some(StoredDecision {
                accepted: true,
                at_ms: 42,
                rivals: vec![]
            })
        );
        assert_eq!(
            log.decision(&loser.id()).unwrap(),
            Some(StoredDecision {
                accepted: false,
                at_ms: 43,
                rivals: vec![v.id()]
            })
        );
        assert_eq!(log.vertex(&loser.id()).unwrap(), None, "no content kept");
        assert_eq!(log.vertex(&v.id()).unwrap().unwrap().id(), v.id());
        assert_eq!(log.winner("task:1").unwrap(), Some(v.id()));
        assert_eq!(log.winner("task:2").unwrap(), None);
        assert_eq!(log.authored(&key.node_id(), 3).unwrap(), Some(v.id()));
        assert_eq!(log.accepted_page(0, 10).unwrap(), (vec![v.id()], 1));
        assert_eq!(log.next_seq().unwrap(), 5);
        log.vertices.insert(v.id().0, &b"garbage"[..]).unwrap();
        assert!(matches!(
            log.vertex(&v.id()),
            Err(StoreError::Corrupt { .. })
        ));
        // A damaged winner entry is an error, never "no winner" (which
        // would let a rival of it in).
        log.winners.insert("task:1", &b"short"[..]).unwrap();
        assert!(matches!(
            log.winner("task:1"),
            Err(StoreError::Corrupt { .. })
        ));
        log.status.insert(v.id().0, &b"\x01short"[..]).unwrap();
        assert!(matches!(
            log.decision(&v.id()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_accepted_log_pages_in_acceptance_order() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = store.decisions().unwrap();
        let vertices: Vec<Vertex> = (0..5)
            .map(|i| vertex(&key, i, &format!("task:{i}")))
            .collect();
        for v in &vertices {
            log.accept(v, 1).unwrap();
        }
        let (first, end) = log.accepted_page(0, 3).unwrap();
        let (rest, _) = log.accepted_page(3, 3).unwrap();
        assert_eq!(end, 5);
        let all: Vec<VertexId> = first.into_iter().chain(rest).collect();
        assert_eq!(all, vertices.iter().map(|v| v.id()).collect::<Vec<_>>());
        drop(log);
        let log = store.decisions().unwrap();
        assert_eq!(log.accepted_len(), 5, "reopened at the log's end");
    }

    #[test]
    fn a_layout_1_history_is_indexed_once_on_upgrade_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate().unwrap();
        // A chain accepted within one millisecond: time alone cannot order
        // it, and ids are in no particular order.
        let mut chain: Vec<Vertex> = Vec::new();
        for i in 0..20u64 {
            let parents = chain.last().map(|p| vec![p.id()]).unwrap_or_default();
            let tx = Transaction {
                key: format!("task:old{i}"),
                payload: b"a".to_vec(),
            };
            chain.push(Vertex::sign(&key, parents, i, 10, vec![tx]).unwrap());
        }
        {
            // As the previous layout wrote it: content and status only.
            let db = sled::open(dir.path()).unwrap();
            for v in &chain {
                db.open_tree("consensus_vertices")
                    .unwrap()
                    .insert(v.id().0, codec::encode(v.wire()).unwrap())
                    .unwrap();
                let mut status = vec![1u8];
                status.extend_from_slice(&7u64.to_be_bytes());
                db.open_tree("consensus_status")
                    .unwrap()
                    .insert(v.id().0, status)
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let log = store.decisions().unwrap();
        assert_eq!(log.winner("task:old3").unwrap(), Some(chain[3].id()));
        assert_eq!(log.len(), 20);
        let (order, end) = log.accepted_page(0, 100).unwrap();
        assert_eq!(end, 20);
        assert_eq!(order, chain.iter().map(|v| v.id()).collect::<Vec<_>>());
        assert_eq!(read_u64(&log.meta, LAYOUT).unwrap(), Some(CURRENT_LAYOUT));
    }
}
