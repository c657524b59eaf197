//! Request-response codec shared by the node's protocols: one CBOR value
//! per stream, read with a hard size limit and decoded by the protocol's
//! own bounded decoder.

use agentmesh_protocol::codec;
use agentmesh_protocol::consensus_wire::{self, ConsensusRequest, ConsensusResponse};
use agentmesh_protocol::membership::{self, Hello, HelloReply};
use agentmesh_protocol::model_wire::{self, ModelRequest, ModelResponse};
use agentmesh_protocol::pattern_wire::{self, SyncRequest, SyncResponse};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use std::io;
use std::marker::PhantomData;

/// Why received bytes are not a valid message (the protocol's own error).
pub type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// One request-response protocol's messages and limits.
pub trait Messages: Send + 'static {
    const NAME: &'static str;
    const MAX_REQUEST_BYTES: usize;
    const MAX_RESPONSE_BYTES: usize;
    type Request: serde::Serialize + Send + Sync + std::fmt::Debug;
    type Response: serde::Serialize + Send + Sync + std::fmt::Debug;
    fn decode_request(bytes: &[u8]) -> Result<Self::Request, DecodeError>;
    fn decode_response(bytes: &[u8]) -> Result<Self::Response, DecodeError>;
}

/// `/agentmesh/<network>/consensus/1`: queries and vertex fetches.
pub struct ConsensusMessages;

impl Messages for ConsensusMessages {
    const NAME: &'static str = "consensus";
    const MAX_REQUEST_BYTES: usize = consensus_wire::MAX_REQUEST_BYTES;
    const MAX_RESPONSE_BYTES: usize = consensus_wire::MAX_RESPONSE_BYTES;
    type Request = ConsensusRequest;
    type Response = ConsensusResponse;
    fn decode_request(bytes: &[u8]) -> Result<ConsensusRequest, DecodeError> {
        ConsensusRequest::decode(bytes).map_err(Into::into)
    }
    fn decode_response(bytes: &[u8]) -> Result<ConsensusResponse, DecodeError> {
        ConsensusResponse::decode(bytes).map_err(Into::into)
    }
}

/// `/agentmesh/<network>/sync/1`: pattern anti-entropy.
pub struct SyncMessages;

impl Messages for SyncMessages {
    const NAME: &'static str = "sync";
    const MAX_REQUEST_BYTES: usize = pattern_wire::MAX_SYNC_REQUEST_BYTES;
    const MAX_RESPONSE_BYTES: usize = pattern_wire::MAX_SYNC_RESPONSE_BYTES;
    type Request = SyncRequest;
    type Response = SyncResponse;
    fn decode_request(bytes: &[u8]) -> Result<SyncRequest, DecodeError> {
        SyncRequest::decode(bytes).map_err(Into::into)
    }
    fn decode_response(bytes: &[u8]) -> Result<SyncResponse, DecodeError> {
        SyncResponse::decode(bytes).map_err(Into::into)
    }
}

/// `/agentmesh/<network>/membership/1`: the certificate handshake.
pub struct MembershipMessages;

impl Messages for MembershipMessages {
    const NAME: &'static str = "membership";
    const MAX_REQUEST_BYTES: usize = membership::MAX_HELLO_BYTES;
    const MAX_RESPONSE_BYTES: usize = membership::MAX_HELLO_BYTES;
    type Request = Hello;
    type Response = HelloReply;
    fn decode_request(bytes: &[u8]) -> Result<Hello, DecodeError> {
        Hello::decode(bytes).map_err(Into::into)
    }
    fn decode_response(bytes: &[u8]) -> Result<HelloReply, DecodeError> {
        HelloReply::decode(bytes).map_err(Into::into)
    }
}

/// `/agentmesh/<network>/model/1`: chunks of a shared model.
pub struct ModelMessages;

impl Messages for ModelMessages {
    const NAME: &'static str = "model";
    const MAX_REQUEST_BYTES: usize = model_wire::MAX_REQUEST_BYTES;
    const MAX_RESPONSE_BYTES: usize = model_wire::MAX_RESPONSE_BYTES;
    type Request = ModelRequest;
    type Response = ModelResponse;
    fn decode_request(bytes: &[u8]) -> Result<ModelRequest, DecodeError> {
        ModelRequest::decode(bytes).map_err(Into::into)
    }
    fn decode_response(bytes: &[u8]) -> Result<ModelResponse, DecodeError> {
        ModelResponse::decode(bytes).map_err(Into::into)
    }
}

pub fn protocol_name<M: Messages>(network: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/agentmesh/{network}/{}/1", M::NAME))
        .expect("network names are validated to printable ASCII without spaces")
}

pub struct CborCodec<M>(PhantomData<M>);

impl<M> Default for CborCodec<M> {
    fn default() -> Self {
        CborCodec(PhantomData)
    }
}

impl<M> Clone for CborCodec<M> {
    fn clone(&self) -> Self {
        CborCodec(PhantomData)
    }
}

async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    name: &str,
) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut bytes).await?;
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} message larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn write_value<T: AsyncWrite + Unpin + Send, V: serde::Serialize>(
    io: &mut T,
    value: &V,
) -> io::Result<()> {
    let bytes = codec::encode(value).map_err(invalid)?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl<M: Messages> request_response::Codec for CborCodec<M> {
    type Protocol = StreamProtocol;
    type Request = M::Request;
    type Response = M::Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<M::Request> {
        let bytes = read_limited(io, M::MAX_REQUEST_BYTES, M::NAME).await?;
        M::decode_request(&bytes).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<M::Response> {
        let bytes = read_limited(io, M::MAX_RESPONSE_BYTES, M::NAME).await?;
        M::decode_response(&bytes).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: M::Request,
    ) -> io::Result<()> {
        write_value(io, &request).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: M::Response,
    ) -> io::Result<()> {
        write_value(io, &response).await
    }
}
