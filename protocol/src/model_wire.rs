//! Mesh learning on the wire. A node announces its model on
//! `learning:model` (a signed frame like any channel message, so the
//! announcement is the author's word); the model itself — tens of
//! megabytes, far over a gossip message — is fetched from the author in
//! chunks over `/agentmesh/<network>/model/1`, and only used if its
//! SHA-256 matches the announced digest.

use crate::codec::{self, CodecError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;

pub use crate::membership::MODEL_CHANNEL;
/// Content type of an announcement.
pub const ANNOUNCEMENT_CONTENT_TYPE: &str = "application/agentmesh-model-announcement+cbor";
/// Bytes of the model per chunk.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Largest model a node fetches.
pub const MAX_MODEL_BYTES: u64 = 128 << 20;
/// Most patterns an announced model may know: the model's own cap
/// (`agentmesh_neural::classifier::MAX_LABELS`; the node checks at
/// compile time that the two agree).
pub const MAX_LABELS: u64 = 10_000;
const MAX_ANNOUNCEMENT_BYTES: usize = 1024;

/// Why an announcement is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnnouncementError {
    /// Not a well-formed announcement (too long, malformed CBOR).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The announced model is empty or over [`MAX_MODEL_BYTES`].
    #[error("announced model of {0} bytes")]
    Size(u64),
    /// More patterns than [`MAX_LABELS`].
    #[error("{0} patterns announced")]
    TooManyPatterns(u64),
    /// A feature norm that is not finite and positive.
    #[error("announced feature norm {0}")]
    Norm(f32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnnouncement {
    pub version: u64,
    /// Samples the model learned from (merges weigh by this).
    pub samples: u64,
    /// Patterns it knows (the label map itself is in the checkpoint).
    pub classes: u64,
    pub feature_dim: u64,
    /// L2 norm of the model's text features. Builds from before the norm
    /// setting send none, and their models are at 1 ([`Self::norm`]).
    /// Weights learned at another norm do not average with these, so
    /// peers skip such models before fetching them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_norm: Option<f32>,
    /// Size and SHA-256 of the encoded checkpoint.
    pub bytes: u64,
    pub digest: ByteArray<32>,
}

impl ModelAnnouncement {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// The announced model's feature norm (1 where none is given).
    pub fn norm(&self) -> f32 {
        self.feature_norm.unwrap_or(1.0)
    }

    pub fn decode(bytes: &[u8]) -> Result<ModelAnnouncement, AnnouncementError> {
        let a: ModelAnnouncement = codec::decode(bytes, MAX_ANNOUNCEMENT_BYTES)?;
        if a.bytes == 0 || a.bytes > MAX_MODEL_BYTES {
            return Err(AnnouncementError::Size(a.bytes));
        }
        if a.classes > MAX_LABELS {
            return Err(AnnouncementError::TooManyPatterns(a.classes));
        }
        if !(a.norm().is_finite() && a.norm() > 0.0) {
            return Err(AnnouncementError::Norm(a.norm()));
        }
        Ok(a)
    }
}

/// A chunk of the model with this digest, from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    pub digest: ByteArray<32>,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelResponse {
    Chunk {
        total: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The node no longer holds that model (it has a newer one), or shares
    /// none.
    Unavailable { reason: String },
}

pub const MAX_REQUEST_BYTES: usize = 256;
pub const MAX_RESPONSE_BYTES: usize = CHUNK_BYTES + 1024;

impl ModelRequest {
    pub fn decode(bytes: &[u8]) -> Result<ModelRequest, CodecError> {
        codec::decode(bytes, MAX_REQUEST_BYTES)
    }
}

impl ModelResponse {
    pub fn decode(bytes: &[u8]) -> Result<ModelResponse, CodecError> {
        codec::decode(bytes, MAX_RESPONSE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_absurd_ones_are_refused() {
        let a = ModelAnnouncement {
            version: 3,
            samples: 10,
            classes: 2,
            feature_dim: 1024,
            feature_norm: Some(2.0),
            bytes: 1000,
            digest: ByteArray::new([7; 32]),
        };
        assert_eq!(ModelAnnouncement::decode(&a.encode().unwrap()).unwrap(), a);
        // An older build's announcement has no norm: its model is at 1.
        let older = ModelAnnouncement {
            feature_norm: None,
            ..a.clone()
        };
        let read = ModelAnnouncement::decode(&older.encode().unwrap()).unwrap();
        assert_eq!((read.feature_norm, read.norm()), (None, 1.0));
        for norm in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let absurd = ModelAnnouncement {
                feature_norm: Some(norm),
                ..a.clone()
            };
            let refused = ModelAnnouncement::decode(&absurd.encode().unwrap()).unwrap_err();
            assert!(matches!(refused, AnnouncementError::Norm(_)), "{refused:?}");
            assert!(refused.to_string().contains("feature norm"), "{refused}");
        }
        let huge = ModelAnnouncement {
            bytes: MAX_MODEL_BYTES + 1,
            ..a.clone()
        };
        assert_eq!(
            ModelAnnouncement::decode(&huge.encode().unwrap()),
            Err(AnnouncementError::Size(MAX_MODEL_BYTES + 1))
        );
        assert!(matches!(
            ModelAnnouncement::decode(b"\xff\x00"),
            Err(AnnouncementError::Codec(_))
        ));
        let chunk = ModelResponse::Chunk {
            total: 5,
            bytes: vec![1, 2, 3],
        };
        assert_eq!(
            ModelResponse::decode(&codec::encode(&chunk).unwrap()).unwrap(),
            chunk
        );
    }
}
