//! Pattern replication on the wire: checksummed, optionally compressed
//! batches (gossiped on `learning:patterns` and returned by anti-entropy
//! fetches), and the anti-entropy request-response messages.

use crate::codec::{self, CodecError};
use crate::ids::sha256;
use crate::pattern::{Pattern, PatternError, MAX_ID_LEN, MAX_PATTERN_BYTES};
use serde::{Deserialize, Serialize};
pub use serde_bytes::ByteArray;

/// Most patterns in one batch.
pub const MAX_BATCH_PATTERNS: usize = 100;
/// Most payload bytes (uncompressed CBOR) in one batch; a batch is closed
/// before it would grow past this, except that one pattern always fits.
pub const BATCH_BYTE_BUDGET: usize = 192 * 1024;
/// Largest payload a receiver decompresses or decodes.
pub const MAX_BATCH_PAYLOAD: usize = BATCH_BYTE_BUDGET + MAX_PATTERN_BYTES;
/// Payloads larger than this are compressed (LZ4) when that saves bytes.
pub const COMPRESS_ABOVE: usize = 1024;

const FRAME_VERSION: u8 = 1;

/// A batch as sent: the payload is the CBOR array of patterns, LZ4
/// compressed or not; the checksum is over the uncompressed payload.
#[derive(Serialize, Deserialize)]
struct BatchFrame {
    version: u8,
    compressed: bool,
    #[serde(with = "serde_bytes")]
    checksum: [u8; 32],
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("not a pattern batch: {0}")]
    Frame(CodecError),
    #[error("unsupported batch version {0}")]
    Version(u8),
    #[error("checksum mismatch")]
    Checksum,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("undecodable payload: {0}")]
    Payload(CodecError),
    #[error("{0} patterns in one batch (limit {MAX_BATCH_PATTERNS})")]
    TooMany(usize),
}

/// Encodes already-encoded patterns (see [`Pattern::encode`]) as one
/// batch. The payload is a CBOR array of byte strings, one encoded pattern
/// each, so a receiver decodes (and may reject) every pattern on its own.
pub fn encode_batch(encoded: &[Vec<u8>]) -> Vec<u8> {
    let items: Vec<&serde_bytes::Bytes> =
        encoded.iter().map(|p| serde_bytes::Bytes::new(p)).collect();
    let payload = codec::encode(&items).expect("byte strings always encode");
    let checksum = sha256(&payload);
    let (compressed, payload) = if payload.len() > COMPRESS_ABOVE {
        let mut packed = (payload.len() as u32).to_le_bytes().to_vec();
        packed.extend_from_slice(&lz4_flex::block::compress(&payload));
        if packed.len() < payload.len() {
            (true, packed)
        } else {
            (false, payload)
        }
    } else {
        (false, payload)
    };
    let frame = BatchFrame {
        version: FRAME_VERSION,
        compressed,
        checksum,
        payload,
    };
    codec::encode(&frame).expect("a batch frame always encodes")
}

/// A batch whose frame and checksum were good. Patterns that failed
/// validation are listed apart, with the reason, so the receiver can apply
/// the others and count these.
#[derive(Debug)]
pub struct DecodedBatch {
    pub patterns: Vec<Pattern>,
    pub invalid: Vec<PatternError>,
}

/// Checks the frame, decompresses (never beyond [`MAX_BATCH_PAYLOAD`]),
/// verifies the checksum and decodes every pattern.
pub fn decode_batch(bytes: &[u8]) -> Result<DecodedBatch, BatchError> {
    let frame: BatchFrame =
        codec::decode(bytes, MAX_BATCH_PAYLOAD + 256).map_err(BatchError::Frame)?;
    if frame.version != FRAME_VERSION {
        return Err(BatchError::Version(frame.version));
    }
    let payload = if frame.compressed {
        let Some((size, packed)) = frame.payload.split_first_chunk::<4>() else {
            return Err(BatchError::Decompress("missing size".into()));
        };
        let size = u32::from_le_bytes(*size) as usize;
        if size > MAX_BATCH_PAYLOAD {
            return Err(BatchError::TooLarge(size));
        }
        lz4_flex::block::decompress(packed, size)
            .map_err(|e| BatchError::Decompress(e.to_string()))?
    } else {
        frame.payload
    };
    if sha256(&payload) != frame.checksum {
        return Err(BatchError::Checksum);
    }
    // Each item is decoded and validated alone, so one bad pattern does not
    // take the batch's good ones with it.
    let items: Vec<serde_bytes::ByteBuf> =
        codec::decode(&payload, MAX_BATCH_PAYLOAD).map_err(BatchError::Payload)?;
    if items.len() > MAX_BATCH_PATTERNS {
        return Err(BatchError::TooMany(items.len()));
    }
    let mut batch = DecodedBatch {
        patterns: Vec::with_capacity(items.len()),
        invalid: Vec::new(),
    };
    for item in items {
        match Pattern::decode(&item) {
            Ok(p) => batch.patterns.push(p),
            Err(e) => batch.invalid.push(e),
        }
    }
    Ok(batch)
}

/// Splits encoded patterns into batches of at most [`MAX_BATCH_PATTERNS`]
/// and about [`BATCH_BYTE_BUDGET`] bytes.
pub fn split_batches(encoded: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut batches = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    for p in encoded {
        if !current.is_empty()
            && (current.len() == MAX_BATCH_PATTERNS || bytes + p.len() > BATCH_BYTE_BUDGET)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += p.len();
        current.push(p);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// A 32-byte hash (of a page, a bucket or a pattern state).
pub type Hash = [u8; 32];

/// Buckets per page and pages per store: a pattern id hashes to one of
/// 256 × 256 buckets (the first two bytes of SHA-256 of the id).
pub const FANOUT: usize = 256;
/// Most pages asked about in one `Buckets` request.
pub const MAX_PAGES_PER_REQUEST: usize = 16;
/// Most buckets asked about in one `Entries` request.
pub const MAX_BUCKETS_PER_REQUEST: usize = MAX_PAGES_PER_REQUEST * FANOUT;
/// Most (id, digest) entries in one `Entries` response, and most bytes
/// of them (ids are up to 128 bytes): a page of entries always fits the
/// response limit.
pub const MAX_ENTRIES_PER_RESPONSE: usize = 8192;
pub const ENTRIES_BYTE_BUDGET: usize = 256 * 1024;
pub const MAX_SYNC_REQUEST_BYTES: usize = MAX_BATCH_PAYLOAD + 64 * 1024;
pub const MAX_SYNC_RESPONSE_BYTES: usize = MAX_BATCH_PAYLOAD + 64 * 1024;

/// Anti-entropy, asked by the node that reconciles (pull, then push).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// The 256 page hashes, unless the asker's root is already equal.
    Pages {
        #[serde(with = "serde_bytes")]
        root: Hash,
    },
    /// The 256 bucket hashes of each of these pages.
    Buckets { pages: Vec<u8> },
    /// (id, digest) of the patterns in these buckets, in key order (bucket,
    /// then id), starting after the entry of `after`; one page at most.
    Entries {
        buckets: Vec<u16>,
        after: Option<String>,
    },
    /// These patterns, as a batch.
    Fetch { ids: Vec<String> },
    /// A batch the asker holds newer states of: merge it.
    Push {
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    InSync,
    Pages {
        #[serde(with = "serde_bytes")]
        root: Hash,
        pages: Vec<serde_bytes::ByteArray<32>>,
    },
    Buckets {
        hashes: Vec<Vec<serde_bytes::ByteArray<32>>>,
    },
    /// A page of entries; `complete` when it reaches the end of the asked
    /// buckets (otherwise ask again after its last entry).
    Entries {
        entries: Vec<(String, serde_bytes::ByteArray<32>)>,
        complete: bool,
    },
    /// The asked patterns that fit one batch; `more` are the asked ids
    /// that did not fit (ask again).
    Batch {
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
        more: Vec<String>,
    },
    Pushed {
        applied: u32,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncWireError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Limit(String),
}

impl SyncRequest {
    pub fn decode(bytes: &[u8]) -> Result<SyncRequest, SyncWireError> {
        let request: SyncRequest = codec::decode(bytes, MAX_SYNC_REQUEST_BYTES)?;
        let over = |what: &str, n: usize, max: usize| {
            (n > max).then(|| SyncWireError::Limit(format!("{n} {what} (limit {max})")))
        };
        let problem = match &request {
            SyncRequest::Pages { .. } | SyncRequest::Push { .. } => None,
            SyncRequest::Buckets { pages } => over("pages", pages.len(), MAX_PAGES_PER_REQUEST),
            SyncRequest::Entries { buckets, after } => {
                over("buckets", buckets.len(), MAX_BUCKETS_PER_REQUEST).or_else(|| {
                    after
                        .as_ref()
                        .is_some_and(|id| id.len() > MAX_ID_LEN)
                        .then(|| SyncWireError::Limit("id too long".into()))
                })
            }
            SyncRequest::Fetch { ids } => {
                over("ids", ids.len(), MAX_BATCH_PATTERNS).or_else(|| {
                    ids.iter()
                        .any(|id| id.len() > MAX_ID_LEN)
                        .then(|| SyncWireError::Limit("id too long".into()))
                })
            }
        };
        match problem {
            Some(e) => Err(e),
            None => Ok(request),
        }
    }
}

impl SyncResponse {
    pub fn decode(bytes: &[u8]) -> Result<SyncResponse, SyncWireError> {
        let response: SyncResponse = codec::decode(bytes, MAX_SYNC_RESPONSE_BYTES)?;
        let bad = match &response {
            SyncResponse::Pages { pages, .. } => pages.len() != FANOUT,
            SyncResponse::Buckets { hashes } => {
                hashes.len() > MAX_PAGES_PER_REQUEST || hashes.iter().any(|h| h.len() != FANOUT)
            }
            SyncResponse::Entries { entries, complete } => {
                entries.len() > MAX_ENTRIES_PER_RESPONSE
                    || entries.iter().any(|(id, _)| id.len() > MAX_ID_LEN)
                    || (entries.is_empty() && !complete)
            }
            SyncResponse::Batch { more, .. } => more.len() > MAX_BATCH_PATTERNS,
            _ => false,
        };
        if bad {
            return Err(SyncWireError::Limit("response of the wrong shape".into()));
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::pattern::{Content, Edit};
    use proptest::prelude::*;

    fn pattern(i: usize, body_len: usize) -> Pattern {
        let edit = Edit {
            content: Content {
                kind: "snippet".into(),
                name: format!("pattern {i}"),
                description: "a".repeat(body_len),
                framework: None,
                language: Some("rust".into()),
                author_agent: "a".into(),
                body: "{}".into(),
                metadata: "{}".into(),
            },
            tags: vec!["t".into()],
        };
        Pattern::create(format!("p{i}"), edit, NodeId([1; 32]), 7).unwrap()
    }

    fn encoded(n: usize, body_len: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| pattern(i, body_len).encode().unwrap())
            .collect()
    }

    #[test]
    fn batches_round_trip_compressed_or_not() {
        for (n, len) in [(1, 0), (30, 2000), (100, 10)] {
            let bytes = encode_batch(&encoded(n, len));
            let batch = decode_batch(&bytes).unwrap();
            assert_eq!(batch.patterns.len(), n);
            assert!(batch.invalid.is_empty());
            assert_eq!(batch.patterns[0], pattern(0, len));
        }
        // Repetitive text compresses.
        let big = encoded(30, 2000);
        let raw: usize = big.iter().map(Vec::len).sum();
        assert!(encode_batch(&big).len() < raw / 4);
    }

    #[test]
    fn a_wrong_checksum_is_rejected() {
        let bytes = encode_batch(&encoded(3, 5));
        let mut frame: BatchFrame = codec::decode(&bytes, usize::MAX).unwrap();
        frame.checksum[0] ^= 1;
        let forged = codec::encode(&frame).unwrap();
        assert_eq!(decode_batch(&forged).unwrap_err(), BatchError::Checksum);
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_allocating() {
        let frame = BatchFrame {
            version: 1,
            compressed: true,
            checksum: [0; 32],
            payload: [&u32::MAX.to_le_bytes()[..], &[0u8; 16]].concat(),
        };
        let bytes = codec::encode(&frame).unwrap();
        assert!(matches!(decode_batch(&bytes), Err(BatchError::TooLarge(_))));
    }

    #[test]
    fn invalid_patterns_are_set_apart() {
        let mut bad = pattern(1, 0);
        bad.content.value.body = "{".into();
        let items = vec![
            pattern(0, 0).encode().unwrap(),
            codec::encode(&bad).unwrap(),
            b"garbage".to_vec(),
        ];
        let batch = decode_batch(&encode_batch(&items)).unwrap();
        assert_eq!(batch.patterns.len(), 1);
        assert_eq!(batch.invalid.len(), 2);
    }

    #[test]
    fn batches_respect_count_and_byte_limits() {
        let batches = split_batches(encoded(250, 10));
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        let batches = split_batches(encoded(60, 6000));
        assert!(batches.len() > 1);
        for b in &batches {
            assert!(b.iter().map(Vec::len).sum::<usize>() <= BATCH_BYTE_BUDGET);
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
            let _ = SyncRequest::decode(&bytes);
            let _ = SyncResponse::decode(&bytes);
        }
    }
}
