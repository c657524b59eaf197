//! Consensus decisions on disk, in their own redb database
//! (`consensus.redb` inside the store's directory).
//!
//! - `status`: every decided vertex's status (accepted or rejected, when)
//!   and, for a rejected one, the accepted rivals that beat it (the hints a
//!   query answer carries);
//! - `vertices`: the content of accepted vertices only (a rejected vertex
//!   keeps its id and status: its content would let any proposer fill every
//!   node's disk);
//! - `winners`: conflict key → the accepted vertex holding it;
//! - `accepted`: the accepted log, this node's acceptance order (parents
//!   before children), which bootstrapping nodes page through;
//! - `authored`: (author, seq) of accepted vertices, to catch equivocation;
//! - `meta`: the next sequence number, counters, the layout.
//!
//! Why not sled, like the rest of the store: sled 0.34 keeps what it
//! stores resident whatever its cache setting (3 million winners cost a
//! test program 212 MB; redb holds 21 MB with the same writes, and takes
//! them 2.6 times faster), and the history is the one store that grows for
//! as long as the node runs.
//!
//! Each decision is one redb transaction: its content, indexes, status and
//! counters commit together or not at all. Commits are not durable on
//! their own ([`Durability::None`]); [`DurableCommit::commit`] makes
//! everything committed before it durable, and the node answers for a
//! decision only after that. Nothing is rebuilt or re-verified at start-up:
//! after a clean stop, opening costs the same whatever the history's length
//! (after a crash, redb walks the file once to rebuild its allocator).

use crate::{StoreError, MAX_RECORD_BYTES};
use agentmesh_protocol::{codec, NodeId, Vertex, VertexId, WireVertex};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use std::sync::Arc;

type Bytes = &'static [u8];
const STATUS: TableDefinition<Bytes, Bytes> = TableDefinition::new("status");
const VERTICES: TableDefinition<Bytes, Bytes> = TableDefinition::new("vertices");
const WINNERS: TableDefinition<Bytes, Bytes> = TableDefinition::new("winners");
const ACCEPTED: TableDefinition<u64, Bytes> = TableDefinition::new("accepted");
const AUTHORED: TableDefinition<Bytes, Bytes> = TableDefinition::new("authored");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_SEQ: &str = "next_seq";
const DECIDED: &str = "decided";
const LAYOUT: &str = "layout";
/// Version 2: winners and the accepted log on disk, rejected vertices
/// without content. Version 1 (sled, no layout key) kept the winner index
/// in memory, rebuilt at every start.
const CURRENT_LAYOUT: u64 = 2;
/// Accepted rivals recorded with a rejected vertex.
pub const MAX_RECORDED_RIVALS: usize = 8;
/// Records copied per transaction when a sled history is moved over.
const MIGRATION_CHUNK: usize = 10_000;
/// The sled trees earlier versions kept the history in, and the tables
/// they move to.
const SLED_TREES: [(&str, TableDefinition<Bytes, Bytes>); 4] = [
    ("consensus_status", STATUS),
    ("consensus_vertices", VERTICES),
    ("consensus_winners", WINNERS),
    ("consensus_authored", AUTHORED),
];
const SLED_ACCEPTED: &str = "consensus_accepted";
const SLED_META: &str = "consensus_meta";

pub struct DecisionLog {
    db: Arc<Database>,
    /// Decided vertices (kept in `meta`: counting scans the table).
    decided: u64,
    /// The next position in the accepted log.
    log_end: u64,
}

/// Makes every decision committed before it durable; cloneable and `Send`,
/// so the node can run it off its async threads.
#[derive(Clone)]
pub struct DurableCommit(Arc<Database>);

impl DurableCommit {
    pub(crate) fn new(db: Arc<Database>) -> DurableCommit {
        DurableCommit(db)
    }

    /// Blocks for an fsync.
    pub fn commit(&self) -> Result<(), StoreError> {
        let mut tx = self.0.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }
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

fn vertex_id(key: &[u8], value: &[u8]) -> Result<VertexId, StoreError> {
    <[u8; 32]>::try_from(value)
        .map(VertexId)
        .map_err(|_| corrupt(key, "vertex id is not 32 bytes"))
}

/// A stored vertex, re-verified (a damaged record is an error, not a
/// vertex with a wrong id).
fn decode_vertex(id: &VertexId, value: &[u8]) -> Result<Vertex, StoreError> {
    let wire: WireVertex = codec::decode(value, MAX_RECORD_BYTES).map_err(|e| corrupt(&id.0, e))?;
    let vertex = Vertex::verify(wire).map_err(|e| corrupt(&id.0, e))?;
    if vertex.id() != *id {
        return Err(corrupt(&id.0, "vertex content does not match its id"));
    }
    Ok(vertex)
}

fn meta_value(tx: &WriteTransaction, key: &str) -> Result<Option<u64>, StoreError> {
    Ok(tx.open_table(META)?.get(key)?.map(|v| v.value()))
}

/// One commit, not yet durable; dropped (rolled back) if `write` fails.
fn write<T>(
    db: &Database,
    write: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::None)?;
    let value = write(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// Winners, the accepted log and the (author, seq) slot of an accepted
/// vertex at log position `position`.
fn index_accepted(tx: &WriteTransaction, vertex: &Vertex, position: u64) -> Result<(), StoreError> {
    let id = vertex.id();
    let mut winners = tx.open_table(WINNERS)?;
    for t in vertex.transactions() {
        winners.insert(t.key.as_bytes(), &id.0[..])?;
    }
    tx.open_table(AUTHORED)?
        .insert(&authored_key(&vertex.author(), vertex.seq())[..], &id.0[..])?;
    tx.open_table(ACCEPTED)?.insert(position, &id.0[..])?;
    Ok(())
}

impl DecisionLog {
    /// Opens the history in `db`, first moving over one that an earlier
    /// version kept in `sled` (and indexing it if it predates layout 2).
    pub(crate) fn open(db: Arc<Database>, sled: &sled::Db) -> Result<DecisionLog, StoreError> {
        let tx = db.begin_write()?;
        for table in [STATUS, VERTICES, WINNERS, AUTHORED] {
            tx.open_table(table)?;
        }
        tx.open_table(ACCEPTED)?;
        let layout = meta_value(&tx, LAYOUT)?;
        tx.commit()?;
        match layout {
            Some(CURRENT_LAYOUT) => {}
            None => migrate_from_sled(&db, sled)?,
            Some(other) => {
                return Err(corrupt(
                    LAYOUT.as_bytes(),
                    format!(
                    "the consensus history has layout {other}; this build reads {CURRENT_LAYOUT}"
                ),
                ))
            }
        }
        // The history is in redb now: drop sled's copy (a crash before
        // this left both, and the copy is complete once the layout is set).
        for name in SLED_TREES
            .iter()
            .map(|(name, _)| *name)
            .chain([SLED_ACCEPTED, SLED_META])
        {
            sled.drop_tree(name)?;
        }
        let read = db.begin_read()?;
        let decided = read
            .open_table(META)?
            .get(DECIDED)?
            .map_or(0, |v| v.value());
        let log_end = read
            .open_table(ACCEPTED)?
            .last()?
            .map_or(0, |(k, _)| k.value() + 1);
        drop(read);
        Ok(DecisionLog {
            db,
            decided,
            log_end,
        })
    }

    /// A handle that makes committed decisions durable.
    pub fn durable_commit(&self) -> DurableCommit {
        DurableCommit(self.db.clone())
    }

    /// Records an accepted vertex: its content, its winners, its place in
    /// the accepted log, its status.
    pub fn accept(&mut self, vertex: &Vertex, at_ms: u64) -> Result<(), StoreError> {
        let id = vertex.id();
        let bytes = codec::encode(vertex.wire()).map_err(|e| StoreError::Encode(e.to_string()))?;
        let mut status = Vec::with_capacity(9);
        status.push(1);
        status.extend_from_slice(&at_ms.to_be_bytes());
        let position = self.log_end;
        let decided = write(&self.db, |tx| {
            tx.open_table(VERTICES)?.insert(&id.0[..], &bytes[..])?;
            index_accepted(tx, vertex, position)?;
            set_status(tx, &id, &status, self.decided)
        })?;
        self.decided = decided;
        self.log_end = position + 1;
        Ok(())
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
        self.decided = write(&self.db, |tx| set_status(tx, id, &status, self.decided))?;
        Ok(())
    }

    pub fn decision(&self, id: &VertexId) -> Result<Option<StoredDecision>, StoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(STATUS)?;
        let Some(value) = table.get(&id.0[..])? else {
            return Ok(None);
        };
        let value = value.value();
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

    /// An accepted vertex, re-verified. Rejected vertices have no content.
    pub fn vertex(&self, id: &VertexId) -> Result<Option<Vertex>, StoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(VERTICES)?;
        let value = table.get(&id.0[..])?;
        value.map(|v| decode_vertex(id, v.value())).transpose()
    }

    /// The accepted vertex holding a transaction with conflict key `key`.
    pub fn winner(&self, key: &str) -> Result<Option<VertexId>, StoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(WINNERS)?;
        let value = table.get(key.as_bytes())?;
        value
            .map(|v| vertex_id(key.as_bytes(), v.value()))
            .transpose()
    }

    pub fn authored(&self, author: &NodeId, seq: u64) -> Result<Option<VertexId>, StoreError> {
        let key = authored_key(author, seq);
        let read = self.db.begin_read()?;
        let table = read.open_table(AUTHORED)?;
        let value = table.get(&key[..])?;
        value.map(|v| vertex_id(&key, v.value())).transpose()
    }

    /// Up to `limit` ids of the accepted log from position `from`, and the
    /// log's end (its next position).
    pub fn accepted_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<VertexId>, u64), StoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(ACCEPTED)?;
        let mut ids = Vec::new();
        for item in table.range(from..)?.take(limit) {
            let (key, value) = item?;
            ids.push(vertex_id(&key.value().to_be_bytes(), value.value())?);
        }
        Ok((ids, self.log_end))
    }

    /// Accepted vertices recorded (the end of the accepted log).
    pub fn accepted_len(&self) -> u64 {
        self.log_end
    }

    pub fn next_seq(&self) -> Result<u64, StoreError> {
        let read = self.db.begin_read()?;
        let value = read.open_table(META)?.get(NEXT_SEQ)?.map(|v| v.value());
        Ok(value.unwrap_or(1))
    }

    /// Durable before it returns: a sequence number is never reused.
    pub fn set_next_seq(&self, seq: u64) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.open_table(META)?.insert(NEXT_SEQ, seq)?;
        tx.commit()?;
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

/// Sets a vertex's status and, if it was undecided, the decided count;
/// returns the count.
fn set_status(
    tx: &WriteTransaction,
    id: &VertexId,
    status: &[u8],
    decided: u64,
) -> Result<u64, StoreError> {
    let earlier = tx.open_table(STATUS)?.insert(&id.0[..], status)?.is_some();
    if earlier {
        return Ok(decided);
    }
    tx.open_table(META)?.insert(DECIDED, decided + 1)?;
    Ok(decided + 1)
}

/// Moves a history an earlier version kept in sled into `db` (a no-op for
/// a new node), indexing it first if it predates layout 2, and records the
/// layout last, durably: until then a crash leaves the copy to be redone.
fn migrate_from_sled(db: &Database, sled: &sled::Db) -> Result<(), StoreError> {
    let names = sled.tree_names();
    let present = |name: &str| names.iter().any(|n| n.as_ref() == name.as_bytes());
    let mut sled_layout = None;
    if present(SLED_META) {
        let meta = sled.open_tree(SLED_META)?;
        for key in [NEXT_SEQ, DECIDED, LAYOUT] {
            if let Some(value) = meta.get(key)? {
                let value = <[u8; 8]>::try_from(value.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt(key.as_bytes(), "counter is not 8 bytes"))?;
                if key == LAYOUT {
                    sled_layout = Some(value);
                } else {
                    write(db, |tx| {
                        Ok(tx.open_table(META)?.insert(key, value).map(|_| ())?)
                    })?;
                }
            }
        }
    }
    for (name, table) in SLED_TREES {
        if present(name) {
            copy_tree(db, &sled.open_tree(name)?, |tx, k, v| {
                tx.open_table(table)?.insert(k, v)?;
                Ok(())
            })?;
        }
    }
    if present(SLED_ACCEPTED) {
        copy_tree(db, &sled.open_tree(SLED_ACCEPTED)?, |tx, k, v| {
            let position = <[u8; 8]>::try_from(k)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(k, "accepted log position is not 8 bytes"))?;
            tx.open_table(ACCEPTED)?.insert(position, v)?;
            Ok(())
        })?;
    }
    match sled_layout {
        Some(CURRENT_LAYOUT) => {}
        Some(other) => {
            return Err(corrupt(
                LAYOUT.as_bytes(),
                format!(
                "the sled consensus history has layout {other}; this build reads {CURRENT_LAYOUT}"
            ),
            ))
        }
        None if present("consensus_status") => index_layout_1(db)?,
        None => {}
    }
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    tx.open_table(META)?.insert(LAYOUT, CURRENT_LAYOUT)?;
    tx.commit()?;
    Ok(())
}

/// Copies a sled tree in bounded transactions.
fn copy_tree(
    db: &Database,
    tree: &sled::Tree,
    insert: impl Fn(&WriteTransaction, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut items = tree.iter().peekable();
    while items.peek().is_some() {
        write(db, |tx| {
            for item in items.by_ref().take(MIGRATION_CHUNK) {
                let (key, value) = item?;
                insert(tx, &key, &value)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// A history written before winners were kept on disk: indexes every
/// accepted vertex once (verified, as it was then at every start), counts
/// the decided ones, so later starts read nothing but counters, and drops
/// the content that version kept of rejected vertices.
fn index_layout_1(db: &Database) -> Result<(), StoreError> {
    let mut decided = 0u64;
    let mut accepted: Vec<(u64, VertexId)> = Vec::new();
    let mut rejected: Vec<VertexId> = Vec::new();
    {
        let read = db.begin_read()?;
        for item in read.open_table(STATUS)?.iter()? {
            let (key, value) = item?;
            let (key, value) = (key.value(), value.value());
            decided += 1;
            if value.first() == Some(&1) {
                let at_ms = value
                    .get(1..9)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                accepted.push((at_ms, vertex_id(key, key)?));
            } else {
                rejected.push(vertex_id(key, key)?);
            }
        }
    }
    for chunk in rejected.chunks(MIGRATION_CHUNK) {
        write(db, |tx| {
            let mut vertices = tx.open_table(VERTICES)?;
            for id in chunk {
                vertices.remove(&id.0[..])?;
            }
            Ok(())
        })?;
    }
    // The accepted log must list parents first (bootstrapping peers read
    // it in order): in acceptance time order, each vertex after its
    // accepted parents.
    accepted.sort();
    let ids: std::collections::HashSet<VertexId> = accepted.iter().map(|(_, id)| *id).collect();
    let mut placed = std::collections::HashSet::new();
    let read_vertex = |id: &VertexId| -> Result<Vertex, StoreError> {
        let read = db.begin_read()?;
        let table = read.open_table(VERTICES)?;
        let value = table
            .get(&id.0[..])?
            .ok_or_else(|| corrupt(&id.0, "accepted vertex is missing its content"))?;
        decode_vertex(id, value.value())
    };
    for (_, root) in &accepted {
        // Iterative depth-first walk: (vertex, parents pushed yet). Only ids
        // are stacked and each vertex is read again when it is placed: a
        // chain can be as deep as the history, and stacking content would
        // hold all of it in memory at once.
        let mut stack = vec![(*root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if placed.contains(&id) {
                continue;
            }
            let vertex = read_vertex(&id)?;
            if expanded {
                let position = placed.len() as u64;
                write(db, |tx| index_accepted(tx, &vertex, position))?;
                placed.insert(id);
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
    write(db, |tx| {
        Ok(tx.open_table(META)?.insert(DECIDED, decided).map(|_| ())?)
    })
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
        overwrite(&log, VERTICES, &v.id().0, b"garbage");
        assert!(matches!(
            log.vertex(&v.id()),
            Err(StoreError::Corrupt { .. })
        ));
        // A damaged winner entry is an error, never "no winner" (which
        // would let a rival of it in).
        overwrite(&log, WINNERS, b"task:1", b"short");
        assert!(matches!(
            log.winner("task:1"),
            Err(StoreError::Corrupt { .. })
        ));
        overwrite(&log, STATUS, &v.id().0, b"\x01short");
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
            // That version kept a rejected vertex's content too.
            let loser = vertex(&key, 99, "task:old3");
            db.open_tree("consensus_vertices")
                .unwrap()
                .insert(loser.id().0, codec::encode(loser.wire()).unwrap())
                .unwrap();
            let mut status = vec![0u8];
            status.extend_from_slice(&8u64.to_be_bytes());
            db.open_tree("consensus_status")
                .unwrap()
                .insert(loser.id().0, status)
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let log = store.decisions().unwrap();
        assert_eq!(log.winner("task:old3").unwrap(), Some(chain[3].id()));
        assert_eq!(log.len(), 21);
        let loser = vertex(&key, 99, "task:old3");
        assert!(!log.decision(&loser.id()).unwrap().unwrap().accepted);
        assert_eq!(
            log.vertex(&loser.id()).unwrap(),
            None,
            "its content is dropped"
        );
        let (order, end) = log.accepted_page(0, 100).unwrap();
        assert_eq!(end, 20);
        assert_eq!(order, chain.iter().map(|v| v.id()).collect::<Vec<_>>());
        assert_eq!(layout(&log), Some(CURRENT_LAYOUT));
        assert!(
            store
                .db
                .tree_names()
                .iter()
                .all(|n| !n.starts_with(b"consensus_")),
            "sled's copy is dropped"
        );
    }

    #[test]
    fn a_layout_2_history_in_sled_moves_to_redb_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate().unwrap();
        let won = vertex(&key, 3, "task:1");
        let lost = vertex(&key, 4, "task:1");
        {
            // As the previous version wrote it, in sled.
            let db = sled::open(dir.path()).unwrap();
            let tree = |name: &str| db.open_tree(name).unwrap();
            tree("consensus_vertices")
                .insert(won.id().0, codec::encode(won.wire()).unwrap())
                .unwrap();
            let mut accepted = vec![1u8];
            accepted.extend_from_slice(&7u64.to_be_bytes());
            tree("consensus_status")
                .insert(won.id().0, accepted)
                .unwrap();
            let mut rejected = vec![0u8];
            rejected.extend_from_slice(&8u64.to_be_bytes());
            rejected.extend_from_slice(&won.id().0);
            tree("consensus_status")
                .insert(lost.id().0, rejected)
                .unwrap();
            tree("consensus_winners")
                .insert("task:1", &won.id().0)
                .unwrap();
            tree("consensus_accepted")
                .insert(0u64.to_be_bytes(), &won.id().0)
                .unwrap();
            tree("consensus_authored")
                .insert(authored_key(&key.node_id(), 3), &won.id().0)
                .unwrap();
            let meta = tree("consensus_meta");
            meta.insert(NEXT_SEQ, &9u64.to_be_bytes()).unwrap();
            meta.insert(DECIDED, &2u64.to_be_bytes()).unwrap();
            meta.insert(LAYOUT, &2u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let log = store.decisions().unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log.next_seq().unwrap(), 9);
        assert_eq!(log.winner("task:1").unwrap(), Some(won.id()));
        assert_eq!(log.accepted_page(0, 10).unwrap(), (vec![won.id()], 1));
        assert_eq!(log.authored(&key.node_id(), 3).unwrap(), Some(won.id()));
        assert_eq!(log.vertex(&won.id()).unwrap().unwrap().id(), won.id());
        assert_eq!(
            log.decision(&lost.id()).unwrap().unwrap().rivals,
            vec![won.id()]
        );
        assert!(store
            .db
            .tree_names()
            .iter()
            .all(|n| !n.starts_with(b"consensus_")));
        drop(log);
        drop(store);
        // Opened again: nothing moved twice, nothing lost.
        let store = Store::open(dir.path()).unwrap();
        let log = store.decisions().unwrap();
        assert_eq!((log.len(), log.accepted_len()), (2, 1));
        assert_eq!(log.winner("task:1").unwrap(), Some(won.id()));
    }

    #[test]
    fn a_failed_decision_leaves_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::generate().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = store.decisions().unwrap();
        let v = vertex(&key, 1, "task:1");
        let result = write(&log.db, |tx| {
            tx.open_table(VERTICES)?.insert(&v.id().0[..], &b"x"[..])?;
            index_accepted(tx, &v, 0)?;
            Err::<(), _>(StoreError::Encode("injected".into()))
        });
        assert!(result.is_err());
        assert_eq!(log.winner("task:1").unwrap(), None, "rolled back whole");
        assert_eq!(log.accepted_page(0, 10).unwrap(), (vec![], 0));
        log.accept(&v, 5).unwrap();
        assert_eq!((log.len(), log.accepted_len()), (1, 1));
    }

    fn overwrite(
        log: &DecisionLog,
        table: TableDefinition<Bytes, Bytes>,
        key: &[u8],
        value: &[u8],
    ) {
        write(&log.db, |tx| {
            tx.open_table(table)?.insert(key, value)?;
            Ok(())
        })
        .unwrap();
    }

    fn layout(log: &DecisionLog) -> Option<u64> {
        let read = log.db.begin_read().unwrap();
        let table = read.open_table(META).unwrap();
        let value = table.get(LAYOUT).unwrap();
        value.map(|v| v.value())
    }
}
