//! Canonical CBOR encoding (ciborium) with a hard size limit on decoding.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("CBOR encoding failed: {0}")]
    Encode(String),
}

/// Encodes `value` as CBOR. Struct fields are written in declaration order,
/// so the same value always yields the same bytes (our canonical form).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Nesting deeper than this is rejected: a peer must not be able to exhaust
/// the stack with deeply nested arrays.
const RECURSION_LIMIT: usize = 64;

/// Decodes CBOR, refusing input longer than `max_len` before looking at it.
/// Trailing bytes after the value are rejected too, so one value has exactly
/// one accepted encoding length.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CodecError> {
    if bytes.len() > max_len {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, RECURSION_LIMIT)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the value",
            reader.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_input_over_the_limit_before_decoding() {
        let bytes = encode(&vec![0u8; 100]).unwrap();
        let err = decode::<Vec<u8>>(&bytes, 10).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { max: 10, .. }));
    }

    #[test]
    fn a_declared_huge_byte_string_fails_without_allocating_it() {
        // Major type 2 (bytes) with an 8-byte length of 2^62, then nothing.
        let bytes = [0x5b, 0x40, 0, 0, 0, 0, 0, 0, 0];
        let err = decode::<serde_bytes::ByteBuf>(&bytes, 1024).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)));
    }

    #[test]
    fn a_declared_huge_array_fails_without_allocating_it() {
        let bytes = [0x9b, 0x40, 0, 0, 0, 0, 0, 0, 0];
        assert!(decode::<Vec<u64>>(&bytes, 1024).is_err());
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let bytes = vec![0x81u8; 1000]; // 1000 nested one-element arrays
        assert!(decode::<ciborium::Value>(&bytes, 4096).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(decode::<u32>(&bytes, 64).is_err());
    }

    proptest! {
        #[test]
        fn roundtrips(v in proptest::collection::vec(any::<(u64, String, Vec<u8>)>(), 0..20)) {
            let bytes = encode(&v).unwrap();
            let back: Vec<(u64, String, Vec<u8>)> = decode(&bytes, bytes.len()).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ciborium::Value>(&bytes, 512);
        }
    }
}
