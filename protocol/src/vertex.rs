//! Consensus vertices: a signed batch of transactions with parent links.
//!
//! A vertex's id is the SHA-256 of the canonical CBOR of its unsigned part,
//! computed by the receiver from the decoded fields (never from received
//! bytes), so one vertex has exactly one id. The author signs the id with its
//! Ed25519 key. A [`Vertex`] value can only be built by signing or by
//! verifying, so code holding one knows its id and signature are right.

use crate::codec::{self, CodecError};
use crate::ids::{sha256, NodeId};
use crate::keys::{verify, NodeKey};
use crate::membership::MAX_CERTIFICATE_BYTES;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// Most parents of one vertex.
pub const MAX_PARENTS: usize = 16;
/// Most transactions in one vertex.
pub const MAX_VERTEX_TRANSACTIONS: usize = 1024;
/// Longest conflict key, in bytes.
pub const MAX_CONFLICT_KEY_BYTES: usize = 256;
/// Largest transaction payload, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Largest encoded vertex (unsigned part plus signature), in bytes.
pub const MAX_VERTEX_BYTES: usize = 1024 * 1024;

/// Signatures cover this prefix and the vertex id, so a vertex signature
/// can never be mistaken for a signature over anything else the key signs.
const SIGNING_DOMAIN: &[u8] = b"agentmesh/vertex/v1\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VertexError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("vertex has {0} parents; at most {MAX_PARENTS} are allowed")]
    TooManyParents(usize),
    #[error("vertex lists parent {0} twice")]
    DuplicateParent(VertexId),
    #[error("vertex has {0} transactions; between 1 and {MAX_VERTEX_TRANSACTIONS} are allowed")]
    BadTransactionCount(usize),
    #[error("transaction conflict key must be 1 to {MAX_CONFLICT_KEY_BYTES} bytes, got {0}")]
    BadConflictKey(usize),
    #[error("transaction payload of {0} bytes exceeds {MAX_PAYLOAD_BYTES} bytes")]
    PayloadTooLarge(usize),
    #[error("two transactions in one vertex share the conflict key {0:?}")]
    DuplicateConflictKey(String),
    #[error("vertex signature does not verify for its author")]
    BadSignature,
}

/// SHA-256 of a vertex's canonical unsigned encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VertexId(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl fmt::Display for VertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for VertexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V({})", &hex::encode(self.0)[..10])
    }
}

impl FromStr for VertexId {
    type Err = String;
    fn from_str(s: &str) -> Result<VertexId, String> {
        let bytes = hex::decode(s).map_err(|_| format!("{s:?} is not a hex vertex id"))?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(VertexId)
            .map_err(|_| format!("a vertex id is 64 hex digits, got {}", s.len()))
    }
}

/// One transaction. Two different transactions with the same conflict key
/// conflict: at most one of them is ever accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transaction {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Transaction {
    pub fn validate(&self) -> Result<(), VertexError> {
        if self.key.is_empty() || self.key.len() > MAX_CONFLICT_KEY_BYTES {
            return Err(VertexError::BadConflictKey(self.key.len()));
        }
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(VertexError::PayloadTooLarge(self.payload.len()));
        }
        Ok(())
    }
}

/// The signed content of a vertex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsignedVertex {
    pub parents: Vec<VertexId>,
    pub author: NodeId,
    /// Per-author sequence number; an author never signs two vertices with
    /// the same one (doing so is equivocation).
    pub seq: u64,
    pub timestamp_ms: u64,
    pub transactions: Vec<Transaction>,
}

impl UnsignedVertex {
    fn validate(&self) -> Result<(), VertexError> {
        if self.parents.len() > MAX_PARENTS {
            return Err(VertexError::TooManyParents(self.parents.len()));
        }
        let mut seen = HashSet::with_capacity(self.parents.len());
        for parent in &self.parents {
            if !seen.insert(parent) {
                return Err(VertexError::DuplicateParent(*parent));
            }
        }
        let count = self.transactions.len();
        if count == 0 || count > MAX_VERTEX_TRANSACTIONS {
            return Err(VertexError::BadTransactionCount(count));
        }
        let mut keys = HashSet::with_capacity(count);
        for tx in &self.transactions {
            tx.validate()?;
            if !keys.insert(tx.key.as_str()) {
                return Err(VertexError::DuplicateConflictKey(tx.key.clone()));
            }
        }
        Ok(())
    }

    fn id(&self) -> Result<VertexId, VertexError> {
        let bytes = codec::encode(self)?;
        if bytes.len() + 80 + MAX_CERTIFICATE_BYTES > MAX_VERTEX_BYTES {
            return Err(CodecError::TooLarge {
                len: bytes.len() + 80 + MAX_CERTIFICATE_BYTES,
                max: MAX_VERTEX_BYTES,
            }
            .into());
        }
        Ok(VertexId(sha256(&bytes)))
    }
}

/// A vertex as it travels: the unsigned part and the author's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVertex {
    pub vertex: UnsignedVertex,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The author's membership certificate, when the network has an
    /// authority. Outside the id and the signature: the authority's
    /// signature covers it, and it names its holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<serde_bytes::ByteBuf>,
}

/// A verified vertex: well formed, id computed, signature checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertex {
    id: VertexId,
    wire: WireVertex,
}

fn signed_message(id: &VertexId) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + 32);
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(&id.0);
    message
}

impl Vertex {
    /// Builds and signs a vertex by `key`'s node.
    pub fn sign(
        key: &NodeKey,
        parents: Vec<VertexId>,
        seq: u64,
        timestamp_ms: u64,
        transactions: Vec<Transaction>,
    ) -> Result<Vertex, VertexError> {
        let vertex = UnsignedVertex {
            parents,
            author: key.node_id(),
            seq,
            timestamp_ms,
            transactions,
        };
        vertex.validate()?;
        let id = vertex.id()?;
        let signature = key.sign(&signed_message(&id)).to_vec();
        Ok(Vertex {
            id,
            wire: WireVertex {
                vertex,
                signature,
                certificate: None,
            },
        })
    }

    /// Checks a received vertex: structure, size, and signature.
    pub fn verify(wire: WireVertex) -> Result<Vertex, VertexError> {
        wire.vertex.validate()?;
        let id = wire.vertex.id()?;
        if !verify(&wire.vertex.author, &signed_message(&id), &wire.signature) {
            return Err(VertexError::BadSignature);
        }
        Ok(Vertex { id, wire })
    }

    /// Decodes and verifies a vertex from its wire bytes.
    pub fn decode(bytes: &[u8]) -> Result<Vertex, VertexError> {
        Vertex::verify(codec::decode(bytes, MAX_VERTEX_BYTES)?)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Encoding a validated in-memory value cannot fail: every field is
        // a plain CBOR type and the size was checked when it was built.
        codec::encode(&self.wire).unwrap_or_default()
    }

    pub fn id(&self) -> VertexId {
        self.id
    }
    pub fn parents(&self) -> &[VertexId] {
        &self.wire.vertex.parents
    }
    pub fn author(&self) -> NodeId {
        self.wire.vertex.author
    }
    pub fn seq(&self) -> u64 {
        self.wire.vertex.seq
    }
    pub fn timestamp_ms(&self) -> u64 {
        self.wire.vertex.timestamp_ms
    }
    pub fn transactions(&self) -> &[Transaction] {
        &self.wire.vertex.transactions
    }
    /// Attaches the author's membership certificate (see `membership`).
    pub fn with_certificate(mut self, certificate: Option<&[u8]>) -> Vertex {
        self.wire.certificate = certificate.map(|c| serde_bytes::ByteBuf::from(c.to_vec()));
        self
    }
    pub fn certificate(&self) -> Option<&[u8]> {
        self.wire.certificate.as_deref().map(|c| c.as_slice())
    }
    pub fn wire(&self) -> &WireVertex {
        &self.wire
    }
    pub fn into_wire(self) -> WireVertex {
        self.wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tx(key: &str) -> Transaction {
        Transaction {
            key: key.into(),
            payload: b"x".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_verifies() {
        let key = NodeKey::generate().unwrap();
        let v = Vertex::sign(&key, vec![VertexId([1; 32])], 7, 99, vec![tx("task:1")]).unwrap();
        let back = Vertex::decode(&v.encode()).unwrap();
        assert_eq!(back.id(), v.id());
        assert_eq!(back.author(), key.node_id());
        assert_eq!(back.seq(), 7);
    }

    #[test]
    fn tampered_content_or_signature_is_rejected() {
        let key = NodeKey::generate().unwrap();
        let v = Vertex::sign(&key, vec![], 1, 1, vec![tx("a")]).unwrap();
        let mut wire = v.wire().clone();
        wire.vertex.transactions[0].payload = b"y".to_vec();
        assert_eq!(Vertex::verify(wire), Err(VertexError::BadSignature));
        let mut wire = v.wire().clone();
        wire.signature[0] ^= 1;
        assert_eq!(Vertex::verify(wire), Err(VertexError::BadSignature));
        let mut wire = v.into_wire();
        wire.vertex.author = NodeKey::generate().unwrap().node_id();
        assert_eq!(Vertex::verify(wire), Err(VertexError::BadSignature));
    }

    #[test]
    fn malformed_vertices_are_rejected() {
        let key = NodeKey::generate().unwrap();
        let p = VertexId([2; 32]);
        let cases = [
            (vec![p, p], vec![tx("a")]),
            (vec![], vec![]),
            (vec![], vec![tx("a"), tx("a")]),
            (vec![], vec![tx("")]),
            (vec![VertexId([0; 32]); MAX_PARENTS + 1], vec![tx("a")]),
        ];
        for (parents, txs) in cases {
            assert!(Vertex::sign(&key, parents, 1, 1, txs).is_err());
        }
        let big = Transaction {
            key: "k".into(),
            payload: vec![0; MAX_PAYLOAD_BYTES + 1],
        };
        assert_eq!(
            Vertex::sign(&key, vec![], 1, 1, vec![big]),
            Err(VertexError::PayloadTooLarge(MAX_PAYLOAD_BYTES + 1))
        );
    }

    #[test]
    fn vertex_ids_parse_from_hex() {
        let id = VertexId([0xab; 32]);
        assert_eq!(id.to_string().parse::<VertexId>(), Ok(id));
        assert!("xyz".parse::<VertexId>().is_err());
        assert!("abcd".parse::<VertexId>().is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Vertex::decode(&bytes);
        }
    }
}
