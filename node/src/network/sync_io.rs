//! Anti-entropy traffic inside the network task: requests from peers go to
//! the pattern service, which answers through [`SyncCommand::Respond`];
//! the service's own requests are sent and their answers (or failures)
//! returned on the oneshot it gave.

use super::Network;
use crate::identity::{node_id_of, peer_id_of};
use agentmesh_protocol::pattern_wire::{SyncRequest, SyncResponse};
use agentmesh_protocol::NodeId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::PeerId;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug)]
pub enum SyncEvent {
    Request {
        from: NodeId,
        request: u64,
        body: SyncRequest,
    },
    /// The connected peers, whenever the set changes.
    Peers(Vec<NodeId>),
}

pub type SyncReply = oneshot::Sender<Result<SyncResponse, super::PeerRequestError>>;

#[derive(Debug)]
pub enum SyncCommand {
    Ask {
        peer: NodeId,
        request: SyncRequest,
        reply: SyncReply,
    },
    Respond {
        request: u64,
        response: SyncResponse,
    },
    /// The peer listed states in a round and did not deliver them.
    Misled { peer: NodeId },
}

/// Requests waiting for the pattern service; beyond this a peer is told
/// the node is busy (it retries in a later round).
pub const SYNC_EVENT_QUEUE: usize = 256;

pub struct SyncIo {
    events: mpsc::Sender<SyncEvent>,
    inbound: HashMap<u64, ResponseChannel<SyncResponse>>,
    next_inbound: u64,
    outbound: HashMap<OutboundRequestId, SyncReply>,
    last_peers: Vec<NodeId>,
}

impl SyncIo {
    pub fn new(events: mpsc::Sender<SyncEvent>) -> SyncIo {
        SyncIo {
            events,
            inbound: HashMap::new(),
            next_inbound: 0,
            outbound: HashMap::new(),
            last_peers: Vec::new(),
        }
    }
}

impl Network {
    pub(super) fn on_sync_command(&mut self, command: SyncCommand) {
        match command {
            SyncCommand::Ask {
                peer,
                request,
                reply,
            } => match peer_id_of(&peer) {
                Ok(peer) => {
                    let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                    self.sync.outbound.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(super::PeerRequestError::NotAPeer(e.to_string())));
                }
            },
            SyncCommand::Misled { peer } => self.charge(peer, super::guard::Offence::Misleading, 1),
            SyncCommand::Respond { request, response } => {
                if let Some(channel) = self.sync.inbound.remove(&request) {
                    // Fails only if the asker gave up.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response);
                }
            }
        }
    }

    pub(super) fn on_sync_event(
        &mut self,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Some(from) = node_id_of(&peer) else {
                        return;
                    };
                    if !self.admit_request(&peer) {
                        return;
                    }
                    if matches!(request, SyncRequest::Push { .. })
                        && !self.may_share_patterns(&peer)
                    {
                        let refused = SyncResponse::Refused {
                            reason: "your membership certificate does not allow sharing patterns"
                                .into(),
                        };
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .send_response(channel, refused);
                        // Not charged: an honest node may hold patterns it
                        // has no scope to share.
                        return;
                    }
                    let id = self.sync.next_inbound;
                    self.sync.next_inbound += 1;
                    let event = SyncEvent::Request {
                        from,
                        request: id,
                        body: request,
                    };
                    match self.sync.events.try_send(event) {
                        Ok(()) => {
                            self.sync.inbound.insert(id, channel);
                        }
                        Err(_) => {
                            let busy = SyncResponse::Refused {
                                reason: "busy; try again later".into(),
                            };
                            let _ = self.swarm.behaviour_mut().sync.send_response(channel, busy);
                        }
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.sync.outbound.remove(&request_id) {
                        // Hashes, entries and states all say what this node
                        // should hold: only from a peer that may share.
                        let carries_patterns = !matches!(
                            response,
                            SyncResponse::InSync
                                | SyncResponse::Pushed { .. }
                                | SyncResponse::Refused { .. }
                        );
                        let answer = if carries_patterns && !self.may_share_patterns(&peer) {
                            Err(super::PeerRequestError::NotAllowed("sharing patterns"))
                        } else {
                            Ok(response)
                        };
                        let _ = reply.send(answer);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.sync.outbound.remove(&request_id) {
                    let _ = reply.send(Err(error.into()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                // Undecodable requests end here: the peer's stream is closed.
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Whether `peer` may hand this node pattern states (any admitted peer in
    /// an open network).
    pub(super) fn may_share_patterns(&self, peer: &PeerId) -> bool {
        match self.membership.scopes_of(peer) {
            Some(Some(scopes)) => scopes.may_share_patterns(),
            Some(None) => true,
            None => false,
        }
    }

    /// Tells the pattern service about peer changes (it reconciles with
    /// peers that join) and forgets requests whose askers gave up.
    pub(super) fn maintain_sync(&mut self, peers: &[NodeId]) {
        if peers != self.sync.last_peers
            && self
                .sync
                .events
                .try_send(SyncEvent::Peers(peers.to_vec()))
                .is_ok()
        {
            self.sync.last_peers = peers.to_vec();
        }
        self.sync.inbound.retain(|_, channel| channel.is_open());
    }
}
