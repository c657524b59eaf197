//! The CBOR envelope every channel message travels in.

use crate::channel::Channel;
use crate::codec::{self, CodecError};
use crate::ids::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted content type, in bytes.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;

/// Bytes an envelope adds around its body (channel, ids, content type and
/// CBOR framing), at most. Used to size transport limits from body limits.
pub const ENVELOPE_OVERHEAD: usize = 512;

/// A message id chosen by the publisher: 16 random bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(#[serde(with = "serde_bytes")] pub [u8; 16]);

impl MessageId {
    /// A fresh random id; `None` only if the system RNG fails.
    pub fn random() -> Option<MessageId> {
        use ring::rand::SecureRandom;
        let mut id = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut id).ok()?;
        Some(MessageId(id))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub channel: Channel,
    pub id: MessageId,
    pub sender: NodeId,
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub timestamp_ms: u64,
    pub content_type: String,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { len: usize, max: usize },
    #[error(
        "content type is empty or longer than {MAX_CONTENT_TYPE_LEN} bytes, or not printable ASCII"
    )]
    InvalidContentType,
}

impl Envelope {
    /// Checks the fields serde cannot: body size and content type shape.
    pub fn validate(&self, max_body: usize) -> Result<(), EnvelopeError> {
        if self.body.len() > max_body {
            return Err(EnvelopeError::BodyTooLarge {
                len: self.body.len(),
                max: max_body,
            });
        }
        let ct = &self.content_type;
        if ct.is_empty()
            || ct.len() > MAX_CONTENT_TYPE_LEN
            || !ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(EnvelopeError::InvalidContentType);
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(codec::encode(self)?)
    }

    /// Decodes and validates an envelope whose body may be at most
    /// `max_body` bytes; the whole encoding is bounded accordingly.
    pub fn decode(bytes: &[u8], max_body: usize) -> Result<Envelope, EnvelopeError> {
        let env: Envelope = codec::decode(bytes, max_body + ENVELOPE_OVERHEAD)?;
        env.validate(max_body)?;
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(body: Vec<u8>) -> Envelope {
        Envelope {
            channel: Channel::parse("task:assigned").unwrap(),
            id: MessageId([7; 16]),
            sender: NodeId([1; 32]),
            timestamp_ms: 1_700_000_000_000,
            content_type: "application/json".into(),
            body,
        }
    }

    #[test]
    fn roundtrip_and_limits() {
        let env = sample(b"{\"task\":1}".to_vec());
        let bytes = env.encode().unwrap();
        assert_eq!(Envelope::decode(&bytes, 1024).unwrap(), env);
        let big = sample(vec![0; 2000]).encode().unwrap();
        assert!(matches!(
            Envelope::decode(&big, 1000),
            Err(EnvelopeError::Codec(CodecError::TooLarge { .. }))
        ));
        let medium = sample(vec![0; 1100]).encode().unwrap();
        assert!(matches!(
            Envelope::decode(&medium, 1000),
            Err(EnvelopeError::BodyTooLarge { len: 1100, .. })
        ));
    }

    #[test]
    fn an_invalid_channel_name_inside_the_envelope_is_rejected() {
        let mut value = ciborium::Value::serialized(&sample(vec![1])).unwrap();
        if let ciborium::Value::Map(fields) = &mut value {
            fields[0].1 = ciborium::Value::Text("bad channel!".into());
        }
        let bytes = codec::encode(&value).unwrap();
        assert!(Envelope::decode(&bytes, 1024).is_err());
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Envelope::decode(&bytes, 256);
        }

        #[test]
        fn any_valid_envelope_roundtrips(body in proptest::collection::vec(any::<u8>(), 0..300), ts in any::<u64>()) {
            let mut env = sample(body);
            env.timestamp_ms = ts;
            let bytes = env.encode().unwrap();
            prop_assert!(bytes.len() <= env.body.len() + ENVELOPE_OVERHEAD);
            prop_assert_eq!(Envelope::decode(&bytes, 300).unwrap(), env);
        }
    }
}
