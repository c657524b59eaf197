//! A gossip frame: the unit gossipsub forwards. It carries one or more
//! envelopes of one author, all on channels of one family, and the author's
//! Ed25519 signature (ring) over them. Under load a node packs queued
//! publishes into one frame, so per-message costs of the gossip layer
//! (signature, message id, forwarding) are paid per frame.
//!
//! Gossipsub runs in anonymous mode and identifies frames by the SHA-256 of
//! their bytes, so it drops duplicates *before* the node verifies anything:
//! each distinct frame is verified once per node, not once per copy.

use crate::codec::{self, CodecError};
use crate::envelope::{Envelope, EnvelopeError, ENVELOPE_OVERHEAD};
use crate::ids::NodeId;
use crate::keys::{verify, NodeKey};
use crate::membership::MAX_CERTIFICATE_BYTES;
use serde::{Deserialize, Serialize};

/// Most envelopes in one frame.
pub const MAX_FRAME_ENVELOPES: usize = 256;

/// Byte budget for packing frames; a single envelope larger than this still
/// travels alone in its own frame.
pub const FRAME_PACK_BYTES: usize = 64 * 1024;

/// Signatures cover this prefix and the payload, so a frame signature can
/// never be mistaken for a signature over anything else the key signs.
const SIGNING_DOMAIN: &[u8] = b"agentmesh/frame/v1\0";

/// Frame bytes besides the payload (signature, framing).
const FRAME_OVERHEAD: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("frame holds {0} envelopes; between 1 and {MAX_FRAME_ENVELOPES} are allowed")]
    BadCount(usize),
    #[error("frame signature does not verify for its author")]
    BadSignature,
    #[error("an envelope's sender is not the frame's author")]
    SenderNotAuthor,
}

impl From<CodecError> for FrameError {
    fn from(e: CodecError) -> FrameError {
        FrameError::Envelope(EnvelopeError::Codec(e))
    }
}

/// What the author signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FramePayload {
    pub author: NodeId,
    pub envelopes: Vec<Envelope>,
}

/// The bytes on the wire: the encoded payload and a signature over it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedFrame {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// The author's membership certificate, when the network has an
    /// authority (see `membership`). Not covered by the frame signature: the
    /// authority's signature covers it, and it names its holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<serde_bytes::ByteBuf>,
}

/// Largest encoded frame a node accepts when bodies may be `max_body` bytes.
pub fn max_frame_bytes(max_body: usize) -> usize {
    (max_body + ENVELOPE_OVERHEAD).max(FRAME_PACK_BYTES) + FRAME_OVERHEAD + MAX_CERTIFICATE_BYTES
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + payload.len());
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(payload);
    message
}

/// Signs `payload_bytes` (an encoded [`FramePayload`]) with `key`.
pub fn sign_payload(
    key: &NodeKey,
    payload_bytes: Vec<u8>,
    certificate: Option<&[u8]>,
) -> Result<Vec<u8>, FrameError> {
    let signature = key.sign(&signed_message(&payload_bytes));
    // Encoded from borrows: the same bytes as a `SignedFrame`, without
    // copying the certificate into every frame.
    Ok(codec::encode(&SignedFrameRef {
        payload: serde_bytes::Bytes::new(&payload_bytes),
        signature: serde_bytes::Bytes::new(&signature),
        certificate: certificate.map(serde_bytes::Bytes::new),
    })?)
}

#[derive(Serialize)]
struct SignedFrameRef<'a> {
    payload: &'a serde_bytes::Bytes,
    signature: &'a serde_bytes::Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<&'a serde_bytes::Bytes>,
}

/// Builds the wire bytes of a frame of `envelopes` by `key`'s node, with
/// its membership certificate if it has one.
pub fn encode_frame(
    key: &NodeKey,
    envelopes: &[Envelope],
    certificate: Option<&[u8]>,
) -> Result<Vec<u8>, FrameError> {
    if envelopes.is_empty() || envelopes.len() > MAX_FRAME_ENVELOPES {
        return Err(FrameError::BadCount(envelopes.len()));
    }
    let author = key.node_id();
    if envelopes.iter().any(|e| e.sender != author) {
        return Err(FrameError::SenderNotAuthor);
    }
    // Encoded field by field to avoid cloning the envelopes.
    let payload = codec::encode(&(FramePayloadRef { author, envelopes }))?;
    sign_payload(key, payload, certificate)
}

#[derive(Serialize)]
struct FramePayloadRef<'a> {
    author: NodeId,
    envelopes: &'a [Envelope],
}

/// Decodes a frame, verifies its signature, and validates every envelope
/// (size limits, sender = author). Returns the author and the envelopes,
/// and the certificate the frame carries (not checked here).
pub fn decode_frame(
    bytes: &[u8],
    max_body: usize,
) -> Result<(FramePayload, Option<Vec<u8>>), FrameError> {
    let frame: SignedFrame = codec::decode(bytes, max_frame_bytes(max_body))?;
    let payload: FramePayload = codec::decode(&frame.payload, max_frame_bytes(max_body))?;
    let count = payload.envelopes.len();
    if count == 0 || count > MAX_FRAME_ENVELOPES {
        return Err(FrameError::BadCount(count));
    }
    if !verify(
        &payload.author,
        &signed_message(&frame.payload),
        &frame.signature,
    ) {
        return Err(FrameError::BadSignature);
    }
    for env in &payload.envelopes {
        env.validate(max_body)?;
        if env.sender != payload.author {
            return Err(FrameError::SenderNotAuthor);
        }
    }
    Ok((payload, frame.certificate.map(|c| c.into_vec())))
}

/// Splits `sizes` (upper bounds of encoded envelope sizes, in order) into
/// consecutive runs that fit one frame each; returns the run lengths.
pub fn pack(sizes: &[usize]) -> Vec<usize> {
    let mut runs = Vec::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    for &size in sizes {
        if count > 0 && (count == MAX_FRAME_ENVELOPES || bytes + size > FRAME_PACK_BYTES) {
            runs.push(count);
            count = 0;
            bytes = 0;
        }
        count += 1;
        bytes += size;
    }
    if count > 0 {
        runs.push(count);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, MessageId};
    use proptest::prelude::*;

    fn env(sender: NodeId, body: usize) -> Envelope {
        Envelope {
            channel: Channel::parse("coordination").unwrap(),
            id: MessageId([1; 16]),
            sender,
            timestamp_ms: 3,
            content_type: "text/plain".into(),
            body: vec![b'x'; body],
        }
    }

    #[test]
    fn frames_roundtrip_and_reject_bad_counts_and_bodies() {
        let key = NodeKey::generate().unwrap();
        let me = key.node_id();
        let frame = encode_frame(&key, &[env(me, 10), env(me, 20)], None).unwrap();
        let (payload, certificate) = decode_frame(&frame, 100).unwrap();
        assert_eq!(payload.author, me);
        assert_eq!(payload.envelopes.len(), 2);
        assert_eq!(certificate, None);
        assert!(matches!(
            decode_frame(&frame, 15),
            Err(FrameError::Envelope(_))
        ));
        assert_eq!(encode_frame(&key, &[], None), Err(FrameError::BadCount(0)));
        let with_certificate = encode_frame(&key, &[env(me, 10)], Some(b"certificate")).unwrap();
        let (_, certificate) = decode_frame(&with_certificate, 100).unwrap();
        assert_eq!(certificate.as_deref(), Some(&b"certificate"[..]));
    }

    #[test]
    fn tampered_or_forged_frames_are_rejected() {
        let key = NodeKey::generate().unwrap();
        let other = NodeKey::generate().unwrap();
        let me = key.node_id();
        // Someone else's key signing a payload that claims to be ours.
        let payload = codec::encode(&FramePayload {
            author: me,
            envelopes: vec![env(me, 5)],
        })
        .unwrap();
        let forged = sign_payload(&other, payload.clone(), None).unwrap();
        assert_eq!(decode_frame(&forged, 100), Err(FrameError::BadSignature));
        // A correctly signed payload, altered afterwards.
        let mut frame: SignedFrame =
            codec::decode(&sign_payload(&key, payload, None).unwrap(), 1000).unwrap();
        let last = frame.payload.len() - 1;
        frame.payload[last] ^= 1;
        let tampered = codec::encode(&frame).unwrap();
        assert!(decode_frame(&tampered, 100).is_err());
        // An envelope claiming another sender, signed by the author.
        let payload = codec::encode(&FramePayload {
            author: me,
            envelopes: vec![env(other.node_id(), 5)],
        })
        .unwrap();
        let mixed = sign_payload(&key, payload, None).unwrap();
        assert_eq!(decode_frame(&mixed, 100), Err(FrameError::SenderNotAuthor));
        assert_eq!(
            encode_frame(&key, &[env(other.node_id(), 1)], None),
            Err(FrameError::SenderNotAuthor)
        );
    }

    #[test]
    fn a_max_size_envelope_fits_a_frame() {
        let key = NodeKey::generate().unwrap();
        let max_body = 200_000;
        let certificate = vec![7u8; crate::membership::MAX_CERTIFICATE_BYTES];
        let frame =
            encode_frame(&key, &[env(key.node_id(), max_body)], Some(&certificate)).unwrap();
        assert!(frame.len() <= max_frame_bytes(max_body));
        assert!(decode_frame(&frame, max_body).is_ok());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_frame(&bytes, 256);
        }

        #[test]
        fn packing_keeps_order_and_respects_the_limits(sizes in proptest::collection::vec(1usize..100_000, 0..600)) {
            let runs = pack(&sizes);
            prop_assert_eq!(runs.iter().sum::<usize>(), sizes.len());
            let mut at = 0;
            for run in runs {
                prop_assert!((1..=MAX_FRAME_ENVELOPES).contains(&run));
                let bytes: usize = sizes[at..at + run].iter().sum();
                prop_assert!(run == 1 || bytes <= FRAME_PACK_BYTES);
                at += run;
            }
        }
    }
}
