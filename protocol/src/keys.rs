//! Ed25519 node keys (ring). The key is kept as its 32-byte seed, which is
//! also what libp2p's Ed25519 identity is built from, so the same key signs
//! transport handshakes and agentmesh data.

use crate::ids::NodeId;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the system random number generator failed")]
    Random,
    #[error("invalid Ed25519 seed: {0}")]
    InvalidSeed(String),
}

pub struct NodeKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, KeyError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        NodeKey::from_seed(seed)
    }

    pub fn from_seed(seed: [u8; 32]) -> Result<NodeKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| KeyError::InvalidSeed(e.to_string()))?;
        Ok(NodeKey { seed, pair })
    }

    /// The secret seed. Handle with care: whoever has it is this node.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    pub fn node_id(&self) -> NodeId {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.pair.public_key().as_ref());
        NodeId(id)
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// Checks an Ed25519 signature by `signer` over `message`.
pub fn verify(signer: &NodeId, message: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, signer.as_bytes())
        .verify(message, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_signed_message_and_key() {
        let key = NodeKey::generate().unwrap();
        let other = NodeKey::generate().unwrap();
        let sig = key.sign(b"hello");
        assert!(verify(&key.node_id(), b"hello", &sig));
        assert!(!verify(&key.node_id(), b"hellO", &sig));
        assert!(!verify(&other.node_id(), b"hello", &sig));
    }

    #[test]
    fn same_seed_same_identity() {
        let a = NodeKey::generate().unwrap();
        let b = NodeKey::from_seed(*a.seed()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
    }
}
