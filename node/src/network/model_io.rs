//! Model transfers inside the network task. Chunks of this node's own
//! shared model are served straight from [`ServedModel`] (no round trip to
//! the model service); the service's fetches go out as requests and their
//! answers come back on the oneshot it gave.

use super::Network;
use crate::identity::peer_id_of;
use agentmesh_protocol::model_wire::{ModelRequest, ModelResponse, CHUNK_BYTES};
use agentmesh_protocol::NodeId;
use libp2p::request_response::{self, OutboundRequestId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

/// The encoded checkpoint this node announced, and its SHA-256.
pub struct SharedModel {
    pub digest: [u8; 32],
    pub bytes: Arc<Vec<u8>>,
}

/// Written by the model service, read by the network task.
pub type ServedModel = Arc<RwLock<Option<SharedModel>>>;

pub type ModelReply = oneshot::Sender<Result<ModelResponse, super::PeerRequestError>>;

pub struct ModelFetch {
    pub peer: NodeId,
    pub request: ModelRequest,
    pub reply: ModelReply,
}

pub struct ModelIo {
    served: ServedModel,
    outbound: HashMap<OutboundRequestId, ModelReply>,
}

impl ModelIo {
    pub fn new(served: ServedModel) -> ModelIo {
        ModelIo {
            served,
            outbound: HashMap::new(),
        }
    }

    fn answer(&self, request: &ModelRequest) -> ModelResponse {
        let served = self.served.read().unwrap_or_else(|e| e.into_inner());
        let Some(model) = served.as_ref().filter(|m| m.digest == *request.digest) else {
            return ModelResponse::Unavailable {
                reason: "this node does not share that model (it may have a newer one)".into(),
            };
        };
        let total = model.bytes.len() as u64;
        let start = request.offset.min(total) as usize;
        let end = (start + CHUNK_BYTES).min(model.bytes.len());
        ModelResponse::Chunk {
            total,
            bytes: model.bytes[start..end].to_vec(),
        }
    }
}

impl Network {
    pub(super) fn on_model_fetch(&mut self, fetch: ModelFetch) {
        match peer_id_of(&fetch.peer) {
            // Only over a direct connection that is up: a request to a peer
            // without one would dial it, maybe through a relay.
            Ok(peer) if self.links.table.direct_connections(&peer) == 0 => {
                let _ = fetch.reply.send(Err(super::PeerRequestError::RelayedOnly(
                    "a model transfer",
                )));
            }
            Ok(peer) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .model
                    .send_request(&peer, fetch.request);
                self.model.outbound.insert(id, fetch.reply);
            }
            Err(e) => {
                let _ = fetch
                    .reply
                    .send(Err(super::PeerRequestError::NotAPeer(e.to_string())));
            }
        }
    }

    pub(super) fn on_model_event(
        &mut self,
        event: request_response::Event<ModelRequest, ModelResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message,
                connection_id,
            } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    // Members only, within the request rate.
                    if !self.admit_request(&peer) {
                        return;
                    }
                    // The answer goes back on the request's own connection.
                    let response = if self.links.table.is_relayed(&peer, connection_id) {
                        ModelResponse::Unavailable {
                            reason: "reached only through a relay: models are sent over direct connections".into(),
                        }
                    } else {
                        self.model.answer(&request)
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .model
                        .send_response(channel, response);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.model.outbound.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.model.outbound.remove(&request_id) {
                    let _ = reply.send(Err(error.into()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound model request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
