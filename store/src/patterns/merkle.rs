//! The hash tree anti-entropy compares: every pattern id falls in one of
//! 256 × 256 buckets (the first two bytes of SHA-256 of the id); a bucket's
//! hash covers the (id, state digest) entries in it, a page's hash its 256
//! bucket hashes, the root the 256 page hashes. Empty buckets and pages hash
//! to zeros, so two stores agree on every empty range for free.
//!
//! The entries live in sled (`bucket ‖ id → digest`); only the bucket and
//! page hashes are cached in memory (about 2 MiB however many patterns
//! there are), recomputed lazily for buckets written since.

use agentmesh_protocol::pattern_wire::{Hash, FANOUT};
use agentmesh_protocol::sha256;

pub const BUCKETS: usize = FANOUT * FANOUT;
pub const ZERO: Hash = [0; 32];

/// Above this many stale buckets one scan of all entries is cheaper than a
/// range read per bucket.
const FULL_SCAN_ABOVE: usize = 2048;

pub fn bucket_of(id: &str) -> u16 {
    let h = sha256(id.as_bytes());
    u16::from_be_bytes([h[0], h[1]])
}

pub fn entry_key(id: &str) -> Vec<u8> {
    let mut key = bucket_of(id).to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// Incremental hash over a bucket's entries, in key order.
#[derive(Default)]
struct BucketHasher {
    bytes: Vec<u8>,
}

impl BucketHasher {
    fn add(&mut self, id: &[u8], digest: &[u8]) {
        self.bytes
            .extend_from_slice(&(id.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(id);
        self.bytes.extend_from_slice(digest);
    }

    fn finish(self) -> Hash {
        if self.bytes.is_empty() {
            ZERO
        } else {
            sha256(&self.bytes)
        }
    }
}

fn hash_of_hashes(hashes: &[Hash]) -> Hash {
    if hashes.iter().all(|h| *h == ZERO) {
        return ZERO;
    }
    sha256(&hashes.concat())
}

pub struct HashCache {
    buckets: Vec<Hash>,
    stale_buckets: Vec<bool>,
    stale_count: usize,
    pages: Vec<Option<Hash>>,
    root: Option<Hash>,
}

impl HashCache {
    /// Everything stale: the first question computes it from the entries.
    pub fn new() -> HashCache {
        HashCache {
            buckets: vec![ZERO; BUCKETS],
            stale_buckets: vec![true; BUCKETS],
            stale_count: BUCKETS,
            pages: vec![None; FANOUT],
            root: None,
        }
    }

    pub fn invalidate(&mut self, bucket: u16) {
        let b = bucket as usize;
        if !self.stale_buckets[b] {
            self.stale_buckets[b] = true;
            self.stale_count += 1;
        }
        self.pages[b / FANOUT] = None;
        self.root = None;
    }

    fn refresh(&mut self, entries: &sled::Tree) -> sled::Result<()> {
        if self.stale_count == 0 {
            return Ok(());
        }
        if self.stale_count > FULL_SCAN_ABOVE {
            self.rebuild(entries)?;
            return Ok(());
        }
        for b in 0..BUCKETS {
            if self.stale_buckets[b] {
                let mut hasher = BucketHasher::default();
                for item in entries.scan_prefix((b as u16).to_be_bytes()) {
                    let (key, digest) = item?;
                    hasher.add(&key[2..], &digest);
                }
                self.buckets[b] = hasher.finish();
            }
        }
        self.stale_buckets.iter_mut().for_each(|s| *s = false);
        self.stale_count = 0;
        Ok(())
    }

    /// Recomputes every bucket hash in one scan of the entries; returns
    /// how many entries (patterns) there are.
    pub fn rebuild(&mut self, entries: &sled::Tree) -> sled::Result<u64> {
        let mut fresh = vec![ZERO; BUCKETS];
        let mut count = 0;
        let mut current: Option<(usize, BucketHasher)> = None;
        for item in entries.iter() {
            let (key, digest) = item?;
            count += 1;
            let bucket = u16::from_be_bytes([key[0], key[1]]) as usize;
            if current.as_ref().is_some_and(|(b, _)| *b != bucket) {
                let (b, hasher) = current.take().expect("checked above");
                fresh[b] = hasher.finish();
            }
            current
                .get_or_insert_with(|| (bucket, BucketHasher::default()))
                .1
                .add(&key[2..], &digest);
        }
        if let Some((b, hasher)) = current {
            fresh[b] = hasher.finish();
        }
        self.buckets = fresh;
        self.stale_buckets.iter_mut().for_each(|s| *s = false);
        self.stale_count = 0;
        self.pages.iter_mut().for_each(|p| *p = None);
        self.root = None;
        Ok(count)
    }

    pub fn buckets(&mut self, entries: &sled::Tree, page: u8) -> sled::Result<Vec<Hash>> {
        self.refresh(entries)?;
        let start = page as usize * FANOUT;
        Ok(self.buckets[start..start + FANOUT].to_vec())
    }

    pub fn pages(&mut self, entries: &sled::Tree) -> sled::Result<Vec<Hash>> {
        self.refresh(entries)?;
        for p in 0..FANOUT {
            if self.pages[p].is_none() {
                let start = p * FANOUT;
                self.pages[p] = Some(hash_of_hashes(&self.buckets[start..start + FANOUT]));
            }
        }
        Ok(self.pages.iter().map(|p| p.unwrap_or(ZERO)).collect())
    }

    pub fn root(&mut self, entries: &sled::Tree) -> sled::Result<Hash> {
        if let Some(root) = self.root {
            return Ok(root);
        }
        let root = hash_of_hashes(&self.pages(entries)?);
        self.root = Some(root);
        Ok(root)
    }
}

impl Default for HashCache {
    fn default() -> Self {
        HashCache::new()
    }
}

/// Positions where two hash lists differ.
pub fn differing(local: &[Hash], remote: &[Hash]) -> Vec<usize> {
    (0..local.len().max(remote.len()))
        .filter(|&i| local.get(i) != remote.get(i))
        .collect()
}

/// What one side must fetch and what it must send, from both sides'
/// (id, digest) entries of the same buckets, each in key order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EntryDiff {
    /// Ids only the remote holds: fetch them.
    pub missing: Vec<String>,
    /// Ids both hold in different states: fetch and merge, then send the
    /// merged state back (it may hold what the remote lacks).
    pub differing: Vec<String>,
    /// Ids only this side holds: send them.
    pub extra: Vec<String>,
}

pub fn diff_entries(local: &[(String, Hash)], remote: &[(String, Hash)]) -> EntryDiff {
    let key = entry_key;
    let mut diff = EntryDiff::default();
    let (mut i, mut j) = (0, 0);
    while i < local.len() || j < remote.len() {
        let order = match (local.get(i), remote.get(j)) {
            (Some(l), Some(r)) => key(&l.0).cmp(&key(&r.0)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                diff.extra.push(local[i].0.clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                diff.missing.push(remote[j].0.clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if local[i].1 != remote[j].1 {
                    diff.differing.push(local[i].0.clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    diff
}

/// One side's page of entries: key-ordered (id, digest) pairs, and whether
/// it reaches the end of the asked buckets.
pub type EntryPage = (Vec<(String, Hash)>, bool);

/// What comparing a page of the peer's entries with a page of this node's
/// gives: the differences over the key range both pages cover, and where
/// the next pages start (`None`: the buckets are done).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PageComparison {
    pub diff: EntryDiff,
    pub next: Option<String>,
}

/// Why a page of the peer's entries cannot be compared (the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// An incomplete page without any entry in the asked range: paging
    /// would never progress.
    #[error("peer sent an empty page of entries that is not the last")]
    EmptyPage,
    /// The page ends at an id that is not UTF-8.
    #[error("an entry id is not UTF-8")]
    NotUtf8,
}

/// Compares two pages of entries of `buckets` that both start after
/// `after`. The compared range ends where the shorter page ends, so each
/// side's entries past it are compared on the next round. Entries of the
/// peer outside the asked range are dropped; an incomplete remote page
/// without any entry in range is an error (it would never progress).
pub fn compare_pages(
    buckets: &[u16],
    after: Option<&str>,
    remote: EntryPage,
    local: EntryPage,
) -> Result<PageComparison, PageError> {
    let start = after.map(entry_key);
    let (remote, remote_complete) = remote;
    let (local, local_complete) = local;
    let mut remote: Vec<(Vec<u8>, String, Hash)> = remote
        .into_iter()
        .map(|(id, h)| (entry_key(&id), id, h))
        .filter(|(key, _, _)| {
            start.as_ref().is_none_or(|s| key > s)
                && buckets.contains(&u16::from_be_bytes([key[0], key[1]]))
        })
        .collect();
    remote.sort();
    remote.dedup_by(|a, b| a.0 == b.0);
    let remote_end = match remote.last() {
        _ if remote_complete => None,
        Some((key, _, _)) => Some(key.clone()),
        None => return Err(PageError::EmptyPage),
    };
    let local_end = local
        .last()
        .filter(|_| !local_complete)
        .map(|(id, _)| entry_key(id));
    let end = match (remote_end, local_end) {
        (Some(r), Some(l)) => Some(r.min(l)),
        (r, l) => r.or(l),
    };
    let within = |key: &Vec<u8>| end.as_ref().is_none_or(|e| key <= e);
    let remote: Vec<(String, Hash)> = remote
        .into_iter()
        .filter(|(key, _, _)| within(key))
        .map(|(_, id, h)| (id, h))
        .collect();
    let local: Vec<(String, Hash)> = local
        .into_iter()
        .filter(|(id, _)| within(&entry_key(id)))
        .collect();
    let next = match end {
        None => None,
        Some(key) => Some(String::from_utf8(key[2..].to_vec()).map_err(|_| PageError::NotUtf8)?),
    };
    Ok(PageComparison {
        diff: diff_entries(&local, &remote),
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ids: &[(&str, u8)]) -> Vec<(String, Hash)> {
        let mut v: Vec<(String, Hash)> = ids
            .iter()
            .map(|(id, d)| (id.to_string(), [*d; 32]))
            .collect();
        v.sort_by_key(|(id, _)| entry_key(id));
        v
    }

    #[test]
    fn entry_diffs_name_what_to_fetch_and_send() {
        let local = entries(&[("a", 1), ("b", 2), ("c", 3)]);
        let remote = entries(&[("b", 2), ("c", 4), ("d", 5)]);
        let diff = diff_entries(&local, &remote);
        assert_eq!(diff.missing, vec!["d".to_string()]);
        assert_eq!(diff.differing, vec!["c".to_string()]);
        assert_eq!(diff.extra, vec!["a".to_string()]);
        assert_eq!(diff_entries(&local, &local), EntryDiff::default());
    }

    /// Two sides page through their entries with small, different page
    /// sizes; the differences found page by page are exactly the
    /// differences of the whole sets.
    #[test]
    fn paged_comparison_finds_what_a_whole_comparison_finds() {
        use proptest::prelude::*;
        proptest!(|(
            ids in proptest::collection::btree_map(0u16..400, (any::<bool>(), any::<bool>(), 0u8..3), 0..300),
            remote_page in 1usize..40,
            local_page in 1usize..40,
        )| {
            let (mut local, mut remote) = (Vec::new(), Vec::new());
            for (n, (in_local, in_remote, digest)) in &ids {
                let id = format!("id-{n}");
                if *in_local { local.push((id.clone(), [*digest; 32])); }
                if *in_remote { remote.push((id.clone(), [digest.wrapping_add(*n as u8 % 2); 32])); }
            }
            local.sort_by_key(|(id, _)| entry_key(id));
            remote.sort_by_key(|(id, _)| entry_key(id));
            let buckets: Vec<u16> = (0..=u16::MAX).collect();
            let page = |all: &[(String, Hash)], after: &Option<String>, size: usize| -> EntryPage {
                let start = after.as_deref().map(entry_key);
                let rest: Vec<_> = all.iter().filter(|(id, _)| start.as_ref().is_none_or(|s| entry_key(id) > *s)).cloned().collect();
                let complete = rest.len() <= size;
                (rest.into_iter().take(size).collect(), complete)
            };
            let mut found = EntryDiff::default();
            let mut after = None;
            for _ in 0..1000 {
                let cmp = compare_pages(&buckets, after.as_deref(), page(&remote, &after, remote_page), page(&local, &after, local_page)).unwrap();
                found.missing.extend(cmp.diff.missing);
                found.differing.extend(cmp.diff.differing);
                found.extra.extend(cmp.diff.extra);
                after = cmp.next;
                if after.is_none() { break; }
            }
            prop_assert!(after.is_none(), "paging did not finish");
            prop_assert_eq!(found, diff_entries(&local, &remote));
        });
    }

    #[test]
    fn differing_positions() {
        assert_eq!(differing(&[ZERO, [1; 32]], &[ZERO, [2; 32]]), vec![1]);
    }
}
