//! Membership certificates: a network authority (an Ed25519 key) vouches
//! that a node id is a member until some time, with some scopes.
//!
//! A certificate is the CBOR encoding of [`Certificate`] plus the
//! authority's signature over a domain prefix and those bytes. It is
//! self-contained: whoever knows the authority's public key can check it
//! without asking anyone, so it can travel inside frames and vertices and be
//! checked by nodes that never met its holder.

use crate::channel::{Channel, ChannelPattern};
use crate::codec::{self, CodecError};
use crate::ids::{sha256, NodeId};
use crate::keys::{verify, NodeKey};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest encoded certificate accepted (scopes included).
pub const MAX_CERTIFICATE_BYTES: usize = 4096;

/// Most scopes one certificate may grant.
pub const MAX_SCOPES: usize = 64;

/// The channel on which nodes share pattern states (needs [`Scope::Patterns`]).
pub const PATTERNS_CHANNEL: &str = "learning:patterns";
/// The channel on which nodes share model updates (needs [`Scope::Model`]).
pub const MODEL_CHANNEL: &str = "learning:model";

const SIGNING_DOMAIN: &[u8] = b"agentmesh/membership/v1\0";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("certificate is malformed: {0}")]
    Malformed(#[from] CodecError),
    #[error("certificate was issued by another authority (key id {found}, expected {expected})")]
    OtherAuthority { found: String, expected: String },
    #[error("certificate signature does not verify for the authority")]
    BadSignature,
    #[error("certificate expired at {expires_ms} (now {now_ms}, unix ms)")]
    Expired { expires_ms: u64, now_ms: u64 },
    #[error("certificate is not valid before {issued_ms} (now {now_ms}, unix ms)")]
    NotYetValid { issued_ms: u64, now_ms: u64 },
    #[error("certificate belongs to node {holder}, not to {presenter}")]
    WrongHolder { holder: NodeId, presenter: NodeId },
    #[error("invalid scope {0:?}: expected 'all', 'propose', 'validate', 'model', 'patterns' or 'publish:<channel pattern or *>'")]
    BadScope(String),
    #[error("certificate grants {0} scopes; at most {MAX_SCOPES} are allowed")]
    TooManyScopes(usize),
    #[error("certificate grants no scope")]
    NoScope,
    #[error("a validator weight of {0} needs the 'validate' (or 'all') scope")]
    WeightWithoutValidate(u64),
    #[error("validator weight {0} is out of range: 1 to {MAX_VALIDATOR_WEIGHT}")]
    BadWeight(u64),
}

/// Largest validator weight a certificate may carry (the consensus
/// engine's bound).
pub const MAX_VALIDATOR_WEIGHT: u64 = 1_000_000;

/// What a member may do. Reading (subscribing, answering queries, syncing
/// patterns from others) needs no scope: any member may.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything below.
    All,
    /// Publish on channels matching the pattern (`None` = every channel),
    /// except the reserved `learning:` channels below.
    Publish(Option<ChannelPattern>),
    /// Propose consensus vertices.
    Propose,
    /// Vote in consensus, with the certificate's weight.
    Validate,
    /// Share model updates (publish on `learning:model`).
    Model,
    /// Share pattern states (publish on `learning:patterns`, push patterns
    /// during anti-entropy).
    Patterns,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, CertificateError> {
        let bad = || CertificateError::BadScope(text.to_string());
        match text {
            "all" => Ok(Scope::All),
            "propose" => Ok(Scope::Propose),
            "validate" => Ok(Scope::Validate),
            "model" => Ok(Scope::Model),
            "patterns" => Ok(Scope::Patterns),
            _ => match text.strip_prefix("publish:") {
                Some("*") => Ok(Scope::Publish(None)),
                Some(pattern) => ChannelPattern::parse(pattern)
                    .map(|p| Scope::Publish(Some(p)))
                    .map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }

    /// Parses a comma-separated list (`publish:metrics:*,propose`).
    pub fn parse_list(text: &str) -> Result<Vec<Scope>, CertificateError> {
        let scopes = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        check_count(scopes.len())?;
        Ok(scopes)
    }
}

fn check_count(count: usize) -> Result<(), CertificateError> {
    match count {
        0 => Err(CertificateError::NoScope),
        n if n > MAX_SCOPES => Err(CertificateError::TooManyScopes(n)),
        _ => Ok(()),
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Propose => f.write_str("propose"),
            Scope::Validate => f.write_str("validate"),
            Scope::Model => f.write_str("model"),
            Scope::Patterns => f.write_str("patterns"),
            Scope::Publish(None) => f.write_str("publish:*"),
            Scope::Publish(Some(p)) => write!(f, "publish:{p}"),
        }
    }
}

/// What the authority signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The member's node id (its Ed25519 public key; the peer id is derived
    /// from it).
    pub holder: NodeId,
    /// Scopes as text (see [`Scope::parse`]), validated when decoded.
    pub scopes: Vec<String>,
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// First 8 bytes of SHA-256 of the authority's public key.
    #[serde(with = "serde_bytes")]
    pub authority: [u8; 8],
    /// Voting weight in consensus: 0 for a member that does not validate.
    /// Absent in certificates issued before validator sets existed; see
    /// [`Verified::validator_weight`] for how those are read. (An optional
    /// field: older builds ignore it, and older certificates decode.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedCertificate {
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// An authority public key as operators write it: 64 hex characters.
pub fn parse_public_key(text: &str) -> Option<NodeId> {
    hex::decode(text.trim())
        .ok()
        .and_then(|bytes| NodeId::from_slice(&bytes))
}

/// The key id certificates name their authority by.
pub fn authority_key_id(authority: &NodeId) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&sha256(authority.as_bytes())[..8]);
    id
}

/// Issues a certificate signed by `authority`; returns its wire bytes. Its
/// validator weight is 1 if the scopes include `validate` or `all`, else 0
/// (see [`issue_weighted`]).
pub fn issue(
    authority: &NodeKey,
    holder: NodeId,
    scopes: &[Scope],
    issued_ms: u64,
    expires_ms: u64,
) -> Result<Vec<u8>, CertificateError> {
    issue_weighted(authority, holder, scopes, None, issued_ms, expires_ms)
}

/// Issues a certificate with a validator weight: `weight` needs the
/// `validate` (or `all`) scope; without one, a validator gets weight 1 and
/// any other member 0.
pub fn issue_weighted(
    authority: &NodeKey,
    holder: NodeId,
    scopes: &[Scope],
    weight: Option<u64>,
    issued_ms: u64,
    expires_ms: u64,
) -> Result<Vec<u8>, CertificateError> {
    check_count(scopes.len())?;
    let validates = scopes
        .iter()
        .any(|s| *s == Scope::All || *s == Scope::Validate);
    let weight = match weight {
        Some(w) if !validates => return Err(CertificateError::WeightWithoutValidate(w)),
        Some(w) if !(1..=MAX_VALIDATOR_WEIGHT).contains(&w) => {
            return Err(CertificateError::BadWeight(w))
        }
        Some(w) => w,
        None => u64::from(validates),
    };
    let certificate = Certificate {
        holder,
        scopes: scopes.iter().map(Scope::to_string).collect(),
        issued_ms,
        expires_ms,
        authority: authority_key_id(&authority.node_id()),
        weight: Some(weight),
    };
    let body = codec::encode(&certificate)?;
    let signature = authority.sign(&signed_message(&body)).to_vec();
    let bytes = codec::encode(&SignedCertificate { body, signature })?;
    if bytes.len() > MAX_CERTIFICATE_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_CERTIFICATE_BYTES,
        }
        .into());
    }
    Ok(bytes)
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + body.len());
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(body);
    message
}

/// A certificate whose signature and scopes have been checked. Whether it
/// is still valid *now*, and for whom, is asked with [`Verified::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub certificate: Certificate,
    pub scopes: Vec<Scope>,
}

/// Decodes `bytes` and checks the authority's signature and the scopes.
/// Time and holder are not checked here (see [`Verified::check`]), so the
/// result can be cached.
pub fn verify_certificate(bytes: &[u8], authority: &NodeId) -> Result<Verified, CertificateError> {
    let signed: SignedCertificate = codec::decode(bytes, MAX_CERTIFICATE_BYTES)?;
    let certificate: Certificate = codec::decode(&signed.body, MAX_CERTIFICATE_BYTES)?;
    let expected = authority_key_id(authority);
    if certificate.authority != expected {
        return Err(CertificateError::OtherAuthority {
            found: hex::encode(certificate.authority),
            expected: hex::encode(expected),
        });
    }
    if !verify(authority, &signed_message(&signed.body), &signed.signature) {
        return Err(CertificateError::BadSignature);
    }
    check_count(certificate.scopes.len())?;
    let scopes = certificate
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Verified {
        certificate,
        scopes,
    })
}

/// Decodes a certificate without checking its signature (for display).
pub fn read_unverified(bytes: &[u8]) -> Result<Certificate, CertificateError> {
    let signed: SignedCertificate = codec::decode(bytes, MAX_CERTIFICATE_BYTES)?;
    Ok(codec::decode(&signed.body, MAX_CERTIFICATE_BYTES)?)
}

impl Verified {
    /// Valid at `now_ms` for `presenter`?
    pub fn check(&self, presenter: &NodeId, now_ms: u64) -> Result<(), CertificateError> {
        let c = &self.certificate;
        if c.holder != *presenter {
            return Err(CertificateError::WrongHolder {
                holder: c.holder,
                presenter: *presenter,
            });
        }
        if now_ms >= c.expires_ms {
            return Err(CertificateError::Expired {
                expires_ms: c.expires_ms,
                now_ms,
            });
        }
        // A minute of grace for clocks that differ between hosts.
        if c.issued_ms > now_ms.saturating_add(60_000) {
            return Err(CertificateError::NotYetValid {
                issued_ms: c.issued_ms,
                now_ms,
            });
        }
        Ok(())
    }

    fn has(&self, wanted: impl Fn(&Scope) -> bool) -> bool {
        self.scopes.iter().any(|s| *s == Scope::All || wanted(s))
    }

    /// May the holder publish on `channel`? The reserved `learning:`
    /// channels need their own scopes; `publish:` scopes never grant them.
    pub fn may_publish(&self, channel: &Channel) -> bool {
        match channel.as_str() {
            PATTERNS_CHANNEL => self.has(|s| *s == Scope::Patterns),
            MODEL_CHANNEL => self.has(|s| *s == Scope::Model),
            _ => self.has(|s| match s {
                Scope::Publish(None) => true,
                Scope::Publish(Some(pattern)) => pattern.matches(channel),
                _ => false,
            }),
        }
    }

    pub fn may_propose(&self) -> bool {
        self.has(|s| *s == Scope::Propose)
    }

    pub fn may_share_patterns(&self) -> bool {
        self.has(|s| *s == Scope::Patterns)
    }

    /// The holder's voting weight in consensus; `None` if it does not
    /// validate. A certificate with a weight validates with it when it
    /// grants `validate` (or `all`). One issued before validator sets (no
    /// weight field) keeps the right it had then: holders of `all` or
    /// `propose` voted, with weight 1, and still do.
    pub fn validator_weight(&self) -> Option<u64> {
        match self.certificate.weight {
            None => self.has(|s| *s == Scope::Propose).then_some(1),
            Some(0) => None,
            Some(w) => self
                .has(|s| *s == Scope::Validate)
                .then_some(w.min(MAX_VALIDATOR_WEIGHT)),
        }
    }
}

/// The membership handshake: right after connecting, each side sends its
/// certificate (none in an open network) and the other answers with its
/// own, or says why it refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub certificate: Option<serde_bytes::ByteBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Welcome {
        certificate: Option<serde_bytes::ByteBuf>,
    },
    Refused {
        reason: String,
    },
}

/// Largest handshake message either way.
pub const MAX_HELLO_BYTES: usize = MAX_CERTIFICATE_BYTES + 1024;

impl Hello {
    pub fn decode(bytes: &[u8]) -> Result<Hello, CodecError> {
        codec::decode(bytes, MAX_HELLO_BYTES)
    }
}

impl HelloReply {
    pub fn decode(bytes: &[u8]) -> Result<HelloReply, CodecError> {
        codec::decode(bytes, MAX_HELLO_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_seed([n; 32]).unwrap()
    }

    fn channel(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    fn issued(scopes: &str) -> Verified {
        let authority = key(1);
        let bytes = issue(
            &authority,
            key(2).node_id(),
            &Scope::parse_list(scopes).unwrap(),
            1_000,
            2_000,
        )
        .unwrap();
        verify_certificate(&bytes, &authority.node_id()).unwrap()
    }

    #[test]
    fn a_certificate_verifies_for_its_holder_until_it_expires() {
        let v = issued("publish:*");
        let holder = key(2).node_id();
        assert_eq!(v.check(&holder, 1_500), Ok(()));
        assert!(matches!(
            v.check(&holder, 2_000),
            Err(CertificateError::Expired { .. })
        ));
        assert!(matches!(
            v.check(&key(3).node_id(), 1_500),
            Err(CertificateError::WrongHolder { .. })
        ));
        // A minute of grace for clocks that differ between hosts.
        assert_eq!(v.check(&holder, 900), Ok(()));
        let early = issue(&key(1), holder, &[Scope::All], 100_000, 200_000).unwrap();
        let early = verify_certificate(&early, &key(1).node_id()).unwrap();
        assert!(matches!(
            early.check(&holder, 30_000),
            Err(CertificateError::NotYetValid { .. })
        ));
    }

    #[test]
    fn another_authority_or_a_changed_body_is_refused() {
        let bytes = issue(&key(1), key(2).node_id(), &[Scope::All], 0, 10).unwrap();
        assert!(matches!(
            verify_certificate(&bytes, &key(9).node_id()),
            Err(CertificateError::OtherAuthority { .. })
        ));
        // Re-sign a widened scope list with another key but claim the
        // authority's key id: the signature check catches it.
        let forged = Certificate {
            holder: key(2).node_id(),
            scopes: vec!["all".into()],
            issued_ms: 0,
            expires_ms: u64::MAX,
            authority: authority_key_id(&key(1).node_id()),
            weight: None,
        };
        let body = codec::encode(&forged).unwrap();
        let signature = key(2).sign(&signed_message(&body)).to_vec();
        let bytes = codec::encode(&SignedCertificate { body, signature }).unwrap();
        assert_eq!(
            verify_certificate(&bytes, &key(1).node_id()),
            Err(CertificateError::BadSignature)
        );
        assert!(matches!(
            verify_certificate(b"\x01\x02", &key(1).node_id()),
            Err(CertificateError::Malformed(_))
        ));
    }

    /// Signs a certificate body as the authority would have before
    /// validator weights existed (no weight field).
    fn legacy(scopes: &[&str]) -> Verified {
        let body = Certificate {
            holder: key(2).node_id(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            issued_ms: 0,
            expires_ms: u64::MAX,
            authority: authority_key_id(&key(1).node_id()),
            weight: None,
        };
        let body = codec::encode(&body).unwrap();
        let signature = key(1).sign(&signed_message(&body)).to_vec();
        let bytes = codec::encode(&SignedCertificate { body, signature }).unwrap();
        verify_certificate(&bytes, &key(1).node_id()).unwrap()
    }

    #[test]
    fn validator_weights_come_from_the_validate_scope_and_old_certificates_keep_their_vote() {
        let holder = key(2).node_id();
        let weighted = |scopes: &[Scope], weight| {
            issue_weighted(&key(1), holder, scopes, weight, 0, 10)
                .map(|b| verify_certificate(&b, &key(1).node_id()).unwrap())
        };
        assert_eq!(issued("validate").validator_weight(), Some(1));
        assert_eq!(issued("all").validator_weight(), Some(1));
        assert_eq!(issued("propose,publish:*").validator_weight(), None);
        assert_eq!(
            weighted(&[Scope::Validate, Scope::Propose], Some(7))
                .unwrap()
                .validator_weight(),
            Some(7)
        );
        assert_eq!(
            weighted(&[Scope::Propose], Some(3)),
            Err(CertificateError::WeightWithoutValidate(3))
        );
        assert_eq!(
            weighted(&[Scope::Validate], Some(0)),
            Err(CertificateError::BadWeight(0))
        );
        // Issued before weights: `all` and `propose` voted then, with
        // weight 1, and still do; other members did not.
        assert_eq!(legacy(&["propose"]).validator_weight(), Some(1));
        assert_eq!(legacy(&["all"]).validator_weight(), Some(1));
        assert_eq!(legacy(&["publish:*", "model"]).validator_weight(), None);
    }

    #[test]
    fn scopes_limit_channels_proposals_and_learning() {
        let v = issued("publish:metrics:*,publish:chat");
        assert!(v.may_publish(&channel("metrics:cpu")));
        assert!(v.may_publish(&channel("chat")));
        assert!(!v.may_publish(&channel("chatter")));
        assert!(!v.may_publish(&channel("coordination")));
        assert!(!v.may_propose());
        assert!(!v.may_publish(&channel(PATTERNS_CHANNEL)));

        let v = issued("publish:*");
        assert!(v.may_publish(&channel("anything:at:all")));
        assert!(!v.may_publish(&channel(MODEL_CHANNEL)));
        assert!(!v.may_publish(&channel(PATTERNS_CHANNEL)));

        let v = issued("propose,model,patterns");
        assert!(v.may_propose() && v.may_share_patterns());
        assert!(v.may_publish(&channel(MODEL_CHANNEL)));
        assert!(!v.may_publish(&channel("coordination")));

        let v = issued("all");
        assert!(v.may_propose() && v.may_publish(&channel(MODEL_CHANNEL)));
    }

    #[test]
    fn bad_scope_lists_are_named() {
        for bad in [
            "",
            " , ",
            "publish",
            "publish:",
            "publish:a*",
            "admin",
            "publish:a b",
        ] {
            assert!(Scope::parse_list(bad).is_err(), "{bad:?}");
        }
        let e = Scope::parse_list("propose,root").unwrap_err();
        assert!(e.to_string().contains("\"root\""), "{e}");
    }

    proptest! {
        #[test]
        fn scopes_round_trip_through_text(names in proptest::collection::vec("[a-z]{1,6}(:[a-z]{1,6}){0,2}", 1..5), star in any::<bool>()) {
            let text = names
                .iter()
                .map(|n| if star { format!("publish:{n}:*") } else { format!("publish:{n}") })
                .collect::<Vec<_>>()
                .join(",");
            let scopes = Scope::parse_list(&text).unwrap();
            let back: Vec<String> = scopes.iter().map(Scope::to_string).collect();
            prop_assert_eq!(back.join(","), text);
        }

        #[test]
        fn any_flipped_byte_is_refused_or_unchanged(index in 0usize..400, bit in 0u8..8) {
            let bytes = issue(&key(1), key(2).node_id(), &[Scope::Propose], 5, 50).unwrap();
            let mut damaged = bytes.clone();
            let i = index % damaged.len();
            damaged[i] ^= 1 << bit;
            // Either refused, or (a CBOR-equivalent change) the same certificate.
            if let Ok(v) = verify_certificate(&damaged, &key(1).node_id()) {
                let original = verify_certificate(&bytes, &key(1).node_id()).unwrap();
                prop_assert_eq!(v, original);
            }
        }
    }
}
