//! Patterns on disk: the CRDT state per id, indexes by tag and kind, and
//! the (bucket, id) → digest entries that anti-entropy hashes.
//!
//! States are keyed like the entries, by hash bucket then id, so that the
//! patterns of a bucket range (what anti-entropy moves) sit together on
//! disk: a fetch of 100 of them reads a few pages, not 100.
//!
//! Reads go straight to sled from any task. Writes (local edits and merges
//! of remote states) are serialized by one lock, which also guards the
//! cached hash tree. A write changes the state, its tag and kind index
//! entries and its digest entry in one sled transaction: after a crash
//! they agree or the write is absent. Durability is the caller's: sled
//! flushes every second, and [`PatternStore::flush`] makes every write
//! before it durable (the node calls it before it acknowledges a write).
//!
//! Every state written is valid (a local edit that would break a limit is
//! refused, naming it). A record that no longer decodes (damaged on disk)
//! is isolated: listings skip and count it, a merge of a peer's state
//! replaces it, and a local write treats it as absent.

pub mod merkle;

use crate::StoreError;
use agentmesh_protocol::pattern::{digest, Pattern, PatternError};
use agentmesh_protocol::pattern_wire::Hash;
use merkle::{bucket_of, entry_key, HashCache};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Clone)]
pub struct PatternStore {
    inner: Arc<Inner>,
}

struct Inner {
    patterns: sled::Tree,
    by_tag: sled::Tree,
    by_kind: sled::Tree,
    entries: sled::Tree,
    writer: Mutex<HashCache>,
    count: AtomicU64,
    /// Damaged records listings skipped (since start-up).
    corrupt_skipped: AtomicU64,
}

/// Which patterns a listing wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub tag: Option<String>,
    pub kind: Option<String>,
    /// Only ids after this one (for paging).
    pub after: Option<String>,
    pub limit: usize,
}

/// What merging a batch of remote states did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// States that changed what this node holds.
    pub changed: u64,
    /// States this node already held (or held newer).
    pub unchanged: u64,
    /// States whose join with the stored one would break a limit (too many
    /// tags or replicas): the stored state is kept.
    pub refused: Vec<(String, PatternError)>,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Invalid(#[from] PatternError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no pattern with id {0:?}")]
    NotFound(String),
}

fn index_key(label: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(label.len() + id.len() + 1);
    key.extend_from_slice(label.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

/// One state to store in place of `old`, with its encoding.
struct Write {
    old: Option<Pattern>,
    new: Pattern,
    bytes: Vec<u8>,
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Pattern, StoreError> {
    Pattern::decode(bytes).map_err(|e| corrupt(key, e))
}

impl PatternStore {
    pub(crate) fn open(db: &sled::Db) -> Result<PatternStore, StoreError> {
        let entries = db.open_tree("patterns_entries")?;
        // One scan of the small entries tree counts the patterns and builds
        // the hash tree; scanning the patterns themselves would pull every
        // page of the large tree through sled's cache at each start.
        let mut cache = HashCache::new();
        let count = cache.rebuild(&entries)?;
        Ok(PatternStore {
            inner: Arc::new(Inner {
                patterns: db.open_tree("patterns")?,
                by_tag: db.open_tree("patterns_by_tag")?,
                by_kind: db.open_tree("patterns_by_kind")?,
                entries,
                writer: Mutex::new(cache),
                count: AtomicU64::new(count),
                corrupt_skipped: AtomicU64::new(0),
            }),
        })
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Times listings skipped a damaged record since start-up.
    pub fn corrupt_skipped(&self) -> u64 {
        self.inner.corrupt_skipped.load(Ordering::Relaxed)
    }

    /// A damaged record of `id` is skipped (and counted), not fatal to a
    /// listing, and marked for repair.
    fn skip_corrupt(
        &self,
        id: &str,
        read: Result<Option<Pattern>, StoreError>,
    ) -> Result<Option<Pattern>, StoreError> {
        match read {
            Err(StoreError::Corrupt { .. }) => {
                self.inner.corrupt_skipped.fetch_add(1, Ordering::Relaxed);
                self.mark_for_repair(id)?;
                Ok(None)
            }
            other => other,
        }
    }

    /// Zeroes the digest entry of a damaged record: its digest would
    /// otherwise still be that of the good state, equal to the peers', and
    /// anti-entropy would never fetch a replacement. A zero digest differs
    /// from every peer's, so the next round fetches the state and the
    /// merge replaces the record (see `apply`).
    fn mark_for_repair(&self, id: &str) -> Result<(), StoreError> {
        let mut cache = self.lock();
        // Written meanwhile by a merge or an edit: nothing to repair.
        if !matches!(self.get(id), Err(StoreError::Corrupt { .. })) {
            return Ok(());
        }
        self.inner
            .entries
            .insert(entry_key(id), &merkle::ZERO[..])?;
        cache.invalidate(bucket_of(id));
        Ok(())
    }

    /// Makes every write before it durable (sled flushes the whole
    /// database; concurrent callers share the fsync). Blocks: run it off
    /// the async threads. (sled's `flush_async` left some callers waiting
    /// for good under 8 concurrent writers: `tests/pattern_crashes.rs`.)
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.patterns.flush()?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Pattern>, StoreError> {
        match self.inner.patterns.get(entry_key(id))? {
            Some(bytes) => Ok(Some(decode(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// The stored encoding of `id`, for sending.
    pub fn get_raw(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.patterns.get(entry_key(id))?.map(|b| b.to_vec()))
    }

    /// The stored encodings of these ids (absent ones skipped), for sending.
    pub fn get_encoded(&self, ids: &[String]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.get_raw(id)?);
        }
        Ok(out)
    }

    /// Patterns matching `filter`: by tag or kind in id order, otherwise in
    /// storage order (stable, by the hash of the id).
    pub fn list(&self, filter: &Filter) -> Result<Vec<Pattern>, StoreError> {
        let mut out = Vec::new();
        let wanted = |p: &Pattern| {
            filter.tag.as_ref().is_none_or(|t| p.tags.contains(t))
                && filter
                    .kind
                    .as_ref()
                    .is_none_or(|k| &p.content.value.kind == k)
        };
        // The narrowest index available; the pattern itself is checked
        // against the whole filter, so an index entry left behind by a
        // crash never shows a pattern that does not match.
        let (tree, label) = match (&filter.tag, &filter.kind) {
            (Some(tag), _) => (Some(&self.inner.by_tag), tag.as_str()),
            (None, Some(kind)) => (Some(&self.inner.by_kind), kind.as_str()),
            (None, None) => (None, ""),
        };
        match tree {
            Some(tree) => {
                let prefix = index_key(label, "");
                let start = index_key(label, filter.after.as_deref().unwrap_or(""));
                for item in tree.range(start..) {
                    let (key, _) = item?;
                    if !key.starts_with(&prefix) || out.len() >= filter.limit {
                        break;
                    }
                    let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    if filter.after.as_deref() == Some(id.as_str()) {
                        continue;
                    }
                    if let Some(p) = self.skip_corrupt(&id, self.get(&id))?.filter(wanted) {
                        out.push(p);
                    }
                }
            }
            None => {
                // In storage order (by the hash of the id, see `entry_key`).
                let after = filter.after.as_deref().map(entry_key);
                let start = after.clone().unwrap_or_default();
                for item in self.inner.patterns.range(start..) {
                    let (key, bytes) = item?;
                    if out.len() >= filter.limit {
                        break;
                    }
                    if after.as_deref() == Some(&key[..]) {
                        continue;
                    }
                    let id = String::from_utf8_lossy(&key[2..]).into_owned();
                    out.extend(self.skip_corrupt(&id, decode(&key, &bytes).map(Some))?);
                }
            }
        }
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, HashCache> {
        // A panic while holding the lock leaves sled consistent (each write
        // is complete or absent); the cache is only ever marked stale.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A local write: `edit` gets the current state (if any: a damaged
    /// record counts as none) and returns the new one, which is checked
    /// against every limit, stored and returned. A state that would break
    /// a limit is refused and nothing is written.
    pub fn edit(
        &self,
        id: &str,
        edit: impl FnOnce(Option<Pattern>) -> Result<Pattern, EditError>,
    ) -> Result<Pattern, EditError> {
        let mut cache = self.lock();
        let old = match self.get(id) {
            Err(StoreError::Corrupt { .. }) => None,
            read => read?,
        };
        let new = edit(old.clone())?;
        new.validate()?;
        let bytes = new.encode()?;
        let write = [Write { old, new, bytes }];
        self.write_all(&mut cache, &write)?;
        let [Write { new, .. }] = write;
        Ok(new)
    }

    /// Merges remote states (already validated) into what is stored, in
    /// one transaction per batch (a state whose id comes twice commits
    /// what came before it first).
    pub fn apply(&self, states: &[Pattern]) -> Result<Applied, StoreError> {
        let mut cache = self.lock();
        let mut applied = Applied::default();
        let mut pending: Vec<Write> = Vec::new();
        for remote in states {
            if pending.iter().any(|w| w.new.id == remote.id) {
                self.write_all(&mut cache, &std::mem::take(&mut pending))?;
            }
            let old = match self.get(&remote.id) {
                Ok(old) => old,
                // A record that no longer decodes is replaced by the
                // peer's state rather than blocking every later merge.
                Err(StoreError::Corrupt { .. }) => None,
                Err(e) => return Err(e),
            };
            let Some(old) = old else {
                match remote.encode() {
                    Ok(bytes) => {
                        pending.push(Write {
                            old: None,
                            new: remote.clone(),
                            bytes,
                        });
                        applied.changed += 1;
                    }
                    Err(e) => applied.refused.push((remote.id.clone(), e)),
                }
                continue;
            };
            match old.merged(remote) {
                Ok(Some((merged, bytes))) => {
                    pending.push(Write {
                        old: Some(old),
                        new: merged,
                        bytes,
                    });
                    applied.changed += 1;
                }
                Ok(None) => {
                    self.repair_entry(&mut cache, &old)?;
                    applied.unchanged += 1;
                }
                Err(e) => applied.refused.push((remote.id.clone(), e)),
            }
        }
        self.write_all(&mut cache, &pending)?;
        Ok(applied)
    }

    /// Stores each write's state, its index entries and its digest entry,
    /// all of them in one transaction.
    fn write_all(&self, cache: &mut HashCache, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let created = (
            &inner.patterns,
            &inner.by_tag,
            &inner.by_kind,
            &inner.entries,
        )
            .transaction(|(patterns, by_tag, by_kind, entries)| {
                let mut created = 0u64;
                for Write { old, new, bytes } in writes {
                    let key = entry_key(&new.id);
                    if patterns.insert(&key[..], &bytes[..])?.is_none() {
                        created += 1;
                    }
                    let old_tags: BTreeSet<&String> =
                        old.iter().flat_map(|p| p.tags.elements()).collect();
                    let new_tags: BTreeSet<&String> = new.tags.elements().collect();
                    for gone in old_tags.difference(&new_tags) {
                        by_tag.remove(index_key(gone, &new.id))?;
                    }
                    for tag in &new_tags {
                        by_tag.insert(index_key(tag, &new.id), &[][..])?;
                    }
                    let new_kind = &new.content.value.kind;
                    if let Some(old) = old.as_ref().filter(|o| &o.content.value.kind != new_kind) {
                        by_kind.remove(index_key(&old.content.value.kind, &new.id))?;
                    }
                    by_kind.insert(index_key(new_kind, &new.id), &[][..])?;
                    entries.insert(&key[..], &digest(bytes)[..])?;
                }
                Ok::<_, ConflictableTransactionError<Infallible>>(created)
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::Sled(e),
                TransactionError::Abort(never) => match never {},
            })?;
        // Counted by what was on disk, not by `old` (a damaged record
        // replaced here was stored but not readable).
        inner.count.fetch_add(created, Ordering::Relaxed);
        for write in writes {
            cache.invalidate(bucket_of(&write.new.id));
        }
        Ok(())
    }

    /// A store written before writes were transactions can hold a state
    /// whose digest entry (or an index) a crash left stale; merging a state
    /// already held checks the entry and rewrites both when it is off, so
    /// anti-entropy does not fetch the same pattern every round.
    fn repair_entry(&self, cache: &mut HashCache, state: &Pattern) -> Result<(), StoreError> {
        let Some(bytes) = self.inner.patterns.get(entry_key(&state.id))? else {
            return Ok(());
        };
        let key = entry_key(&state.id);
        if self.inner.entries.get(&key)?.as_deref() != Some(&digest(&bytes)[..]) {
            let write = Write {
                old: None,
                new: state.clone(),
                bytes: bytes.to_vec(),
            };
            self.write_all(cache, &[write])?;
        }
        Ok(())
    }

    pub fn root(&self) -> Result<Hash, StoreError> {
        Ok(self.lock().root(&self.inner.entries)?)
    }

    pub fn pages(&self) -> Result<Vec<Hash>, StoreError> {
        Ok(self.lock().pages(&self.inner.entries)?)
    }

    pub fn buckets(&self, page: u8) -> Result<Vec<Hash>, StoreError> {
        Ok(self.lock().buckets(&self.inner.entries, page)?)
    }

    /// A page of the (id, digest) entries of `buckets`, in key order,
    /// starting after the entry of `after`: at most `max_entries` entries
    /// and about `max_bytes` bytes (at least one entry). True when the page
    /// reaches the end of the buckets.
    pub fn entries_page(
        &self,
        buckets: &[u16],
        after: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(String, Hash)>, bool), StoreError> {
        let after = after.map(entry_key);
        let mut out = Vec::new();
        let mut bytes = 0;
        for bucket in buckets {
            let prefix = bucket.to_be_bytes();
            let start = match &after {
                Some(key) if key[..2] > prefix[..] => continue,
                Some(key) if key[..2] == prefix[..] => Bound::Excluded(key.clone()),
                _ => Bound::Included(prefix.to_vec()),
            };
            for item in self.inner.entries.range((start, Bound::Unbounded)) {
                let (key, digest) = item?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let size = key.len() + 32;
                if !out.is_empty() && (out.len() >= max_entries || bytes + size > max_bytes) {
                    return Ok((out, false));
                }
                let id = String::from_utf8(key[2..].to_vec()).map_err(|e| corrupt(&key, e))?;
                let digest: Hash = digest[..].try_into().map_err(|e| corrupt(&key, e))?;
                out.push((id, digest));
                bytes += size;
            }
        }
        Ok((out, true))
    }
}

#[cfg(test)]
mod tests;
