//! Request-response codec of `/agentmesh/<network>/consensus/1`: one CBOR
//! value per stream, read with a hard size limit.

use agentmesh_protocol::codec;
use agentmesh_protocol::consensus_wire::{
    ConsensusRequest, ConsensusResponse, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;
use std::io;

pub fn consensus_protocol(network: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/agentmesh/{network}/consensus/1"))
        .expect("network names are validated to printable ASCII without spaces")
}

#[derive(Clone, Default)]
pub struct ConsensusCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut bytes).await?;
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("consensus message larger than {max} bytes"),
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

impl request_response::Codec for ConsensusCodec {
    type Protocol = StreamProtocol;
    type Request = ConsensusRequest;
    type Response = ConsensusResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ConsensusRequest> {
        let bytes = read_limited(io, MAX_REQUEST_BYTES).await?;
        ConsensusRequest::decode(&bytes).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ConsensusResponse> {
        let bytes = read_limited(io, MAX_RESPONSE_BYTES).await?;
        ConsensusResponse::decode(&bytes).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: ConsensusRequest,
    ) -> io::Result<()> {
        write_value(io, &request).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: ConsensusResponse,
    ) -> io::Result<()> {
        write_value(io, &response).await
    }
}
