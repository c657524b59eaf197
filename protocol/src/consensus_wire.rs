//! Consensus request-response messages (`/agentmesh/<network>/consensus/1`).
//! Vertices themselves are gossiped as [`crate::vertex::WireVertex`] bytes.

use crate::codec::{self, CodecError};
use crate::vertex::{VertexId, WireVertex, MAX_VERTEX_BYTES};
use serde::{Deserialize, Serialize};

/// Most vertex ids in one query.
pub const MAX_QUERY_IDS: usize = 1024;
/// Most vertex ids in one fetch.
pub const MAX_FETCH_IDS: usize = 256;
/// Most ids in one page of an accepted log (32 KiB).
pub const MAX_LOG_IDS: usize = 1024;
/// Byte budget of a fetch response; a responder stops adding vertices when
/// the next one would exceed it (at least one vertex is always sent).
pub const FETCH_RESPONSE_BUDGET: usize = 4 * 1024 * 1024;

/// Largest request a node reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest response a node reads.
pub const MAX_RESPONSE_BYTES: usize = FETCH_RESPONSE_BUDGET + MAX_VERTEX_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsensusRequest {
    /// "Do you strongly prefer each of these vertices?"
    Query { ids: Vec<VertexId> },
    /// "Send me these vertices" (missing ancestors or unknown queried ids).
    Fetch { ids: Vec<VertexId> },
    /// Bootstrapping: "list the vertices you accepted, in the order you
    /// accepted them, from position `from`" (`u64::MAX`: just the log's
    /// length).
    AcceptedLog { from: u64 },
    /// Bootstrapping: "which of these have you accepted (durably)?"
    Accepted { ids: Vec<VertexId> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsensusResponse {
    /// One vote per queried id, in query order, and `hints`: accepted
    /// vertices that beat queried ones, so an asker holding a loser whose
    /// rival it never saw can fetch the rival and settle.
    Votes {
        votes: Vec<bool>,
        hints: Vec<VertexId>,
    },
    /// The requested vertices this node has, in any order.
    Vertices { vertices: Vec<WireVertex> },
    /// Up to [`MAX_LOG_IDS`] ids of the responder's accepted log from the
    /// asked position, and the log's length.
    AcceptedLog { ids: Vec<VertexId>, end: u64 },
    /// One flag per asked id, in order: accepted here.
    Accepted { accepted: Vec<bool> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{what} carries {len} ids; at most {max} are allowed")]
    TooManyIds {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl ConsensusRequest {
    pub fn decode(bytes: &[u8]) -> Result<ConsensusRequest, WireError> {
        let request: ConsensusRequest = codec::decode(bytes, MAX_REQUEST_BYTES)?;
        let (what, len, max) = match &request {
            ConsensusRequest::Query { ids } => ("query", ids.len(), MAX_QUERY_IDS),
            ConsensusRequest::Fetch { ids } => ("fetch", ids.len(), MAX_FETCH_IDS),
            ConsensusRequest::AcceptedLog { .. } => ("log request", 0, 0),
            ConsensusRequest::Accepted { ids } => ("acceptance query", ids.len(), MAX_QUERY_IDS),
        };
        if len > max {
            return Err(WireError::TooManyIds { what, len, max });
        }
        Ok(request)
    }
}

impl ConsensusResponse {
    pub fn decode(bytes: &[u8]) -> Result<ConsensusResponse, WireError> {
        let response: ConsensusResponse = codec::decode(bytes, MAX_RESPONSE_BYTES)?;
        let (what, len, max) = match &response {
            ConsensusResponse::Votes { votes, hints } => {
                ("vote list", votes.len().max(hints.len()), MAX_QUERY_IDS)
            }
            ConsensusResponse::Vertices { .. } => ("vertex list", 0, 0),
            ConsensusResponse::AcceptedLog { ids, .. } => ("log page", ids.len(), MAX_LOG_IDS),
            ConsensusResponse::Accepted { accepted } => {
                ("acceptance list", accepted.len(), MAX_QUERY_IDS)
            }
        };
        if len > max {
            return Err(WireError::TooManyIds { what, len, max });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip_and_are_bounded() {
        let q = ConsensusRequest::Query {
            ids: vec![VertexId([3; 32]); 10],
        };
        let bytes = codec::encode(&q).unwrap();
        assert_eq!(ConsensusRequest::decode(&bytes), Ok(q));
        let big = ConsensusRequest::Fetch {
            ids: vec![VertexId([3; 32]); MAX_FETCH_IDS + 1],
        };
        let err = ConsensusRequest::decode(&codec::encode(&big).unwrap()).unwrap_err();
        assert!(matches!(err, WireError::TooManyIds { what: "fetch", .. }));
        let page = ConsensusResponse::AcceptedLog {
            ids: vec![VertexId([1; 32]); MAX_LOG_IDS + 1],
            end: 5,
        };
        let err = ConsensusResponse::decode(&codec::encode(&page).unwrap()).unwrap_err();
        assert!(matches!(
            err,
            WireError::TooManyIds {
                what: "log page",
                ..
            }
        ));
        let asked = ConsensusRequest::Accepted {
            ids: vec![VertexId([1; 32]); MAX_QUERY_IDS + 1],
        };
        assert!(ConsensusRequest::decode(&codec::encode(&asked).unwrap()).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ConsensusRequest::decode(&bytes);
            let _ = ConsensusResponse::decode(&bytes);
        }
    }
}
