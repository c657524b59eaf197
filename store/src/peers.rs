//! Peers this node has known, so that a restarted node can rejoin the mesh
//! without being given bootstrap peers again; and the validators it has
//! known, so that a restarted node counts them before they reconnect.

use crate::{StoreError, MAX_RECORD_BYTES};
use agentmesh_protocol::{codec, NodeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// Addresses as multiaddr strings, most preferred first.
    pub addrs: Vec<String>,
    /// When we last had a confirmed connection, ms since the Unix epoch.
    pub last_seen_ms: u64,
}

/// A validator as last seen: its weight (from its membership certificate)
/// and when that certificate expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownValidator {
    pub weight: u64,
    pub expires_ms: Option<u64>,
    /// When this node last had it connected, ms since the Unix epoch.
    pub last_seen_ms: u64,
}

/// What [`NodeRecords::all`] read: the good records, and one error per
/// damaged one.
pub struct KnownPeers<T = KnownPeer> {
    pub peers: Vec<(NodeId, T)>,
    pub damaged: Vec<StoreError>,
}

/// A tree of records keyed by node id.
pub struct NodeRecords<T> {
    tree: sled::Tree,
    record: PhantomData<fn() -> T>,
}

impl<T> Clone for NodeRecords<T> {
    fn clone(&self) -> Self {
        NodeRecords {
            tree: self.tree.clone(),
            record: PhantomData,
        }
    }
}

/// The `peers` tree: node id → [`KnownPeer`].
pub type PeerBook = NodeRecords<KnownPeer>;
/// The `validators` tree: node id → [`KnownValidator`].
pub type ValidatorBook = NodeRecords<KnownValidator>;

impl<T: Serialize + DeserializeOwned> NodeRecords<T> {
    pub(crate) fn new(tree: sled::Tree) -> NodeRecords<T> {
        NodeRecords {
            tree,
            record: PhantomData,
        }
    }

    pub fn put(&self, id: &NodeId, peer: &T) -> Result<(), StoreError> {
        let bytes = codec::encode(peer).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.tree.insert(id.as_bytes(), bytes)?;
        Ok(())
    }

    pub fn remove(&self, id: &NodeId) -> Result<(), StoreError> {
        self.tree.remove(id.as_bytes())?;
        Ok(())
    }

    /// All known peers. A damaged record is skipped (and reported in the
    /// returned error list) rather than making the whole book unreadable.
    pub fn all(&self) -> Result<KnownPeers<T>, StoreError> {
        let mut peers = Vec::new();
        let mut damaged = Vec::new();
        for item in self.tree.iter() {
            let (key, value) = item?;
            let key_hex = hex::encode(&key);
            let Some(id) = NodeId::from_slice(&key) else {
                damaged.push(StoreError::Corrupt {
                    key: key_hex,
                    reason: "key is not a 32-byte node id".into(),
                });
                continue;
            };
            match codec::decode::<T>(&value, MAX_RECORD_BYTES) {
                Ok(peer) => peers.push((id, peer)),
                Err(e) => damaged.push(StoreError::Corrupt {
                    key: key_hex,
                    reason: e.to_string(),
                }),
            }
        }
        Ok(KnownPeers { peers, damaged })
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Removes the records `keep` refuses; returns how many went. Damaged
    /// records are left for [`NodeRecords::all`] to report.
    pub fn retain(&self, keep: impl Fn(&T) -> bool) -> Result<usize, StoreError> {
        let stale: Vec<NodeId> = self
            .all()?
            .peers
            .into_iter()
            .filter(|(_, record)| !keep(record))
            .map(|(id, _)| id)
            .collect();
        for id in &stale {
            self.remove(id)?;
        }
        Ok(stale.len())
    }
}

impl PeerBook {
    /// Keeps the `max` most recently seen peers and forgets the rest.
    /// Returns how many were removed.
    pub fn prune(&self, max: usize) -> Result<usize, StoreError> {
        let mut peers = self.all()?.peers;
        if peers.len() <= max {
            return Ok(0);
        }
        peers.sort_by_key(|(_, p)| std::cmp::Reverse(p.last_seen_ms));
        let stale = peers.split_off(max);
        for (id, _) in &stale {
            self.remove(id)?;
        }
        Ok(stale.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn peer(seen: u64) -> KnownPeer {
        KnownPeer {
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{seen}")],
            last_seen_ms: seen,
        }
    }

    #[test]
    fn peers_survive_reopening_and_prune_keeps_the_most_recent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let book = store.peers().unwrap();
            for i in 0..5u8 {
                book.put(&NodeId([i; 32]), &peer(i as u64)).unwrap();
            }
            assert_eq!(book.prune(3).unwrap(), 2);
        }
        let store = Store::open(dir.path()).unwrap();
        let KnownPeers { mut peers, damaged } = store.peers().unwrap().all().unwrap();
        assert!(damaged.is_empty());
        peers.sort_by_key(|(_, p)| p.last_seen_ms);
        let seen: Vec<u64> = peers.iter().map(|(_, p)| p.last_seen_ms).collect();
        assert_eq!(seen, vec![2, 3, 4]);
    }

    #[test]
    fn retain_removes_only_the_refused_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let book = store.validators().unwrap();
        for (n, expires_ms) in [(1u8, Some(10)), (2, Some(1_000)), (3, None)] {
            let record = KnownValidator {
                weight: 1,
                expires_ms,
                last_seen_ms: 5,
            };
            book.put(&NodeId([n; 32]), &record).unwrap();
        }
        let removed = book
            .retain(|v| v.expires_ms.is_none_or(|at| at > 100))
            .unwrap();
        assert_eq!(removed, 1);
        let mut left: Vec<u8> = book
            .all()
            .unwrap()
            .peers
            .iter()
            .map(|(id, _)| id.0[0])
            .collect();
        left.sort();
        assert_eq!(left, [2, 3]);
    }

    #[test]
    fn a_damaged_record_is_reported_and_the_rest_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let book = store.peers().unwrap();
        book.put(&NodeId([1; 32]), &peer(1)).unwrap();
        book.tree
            .insert([2u8; 32], &b"\xff\xff garbage"[..])
            .unwrap();
        book.tree.insert(b"short", &b""[..]).unwrap();
        let KnownPeers { peers, damaged } = book.all().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(damaged.len(), 2);
    }
}
