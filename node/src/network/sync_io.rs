//! Anti-entropy traffic inside the network task: requests from peers go to
//! the pattern service, which answers through [`SyncCommand::Respond`];
//! the service's own requests are sent and their answers (or failures)
//! returned on the oneshot it gave.

use super::relayed_sync::{RelayedSyncBudget, RELAYED_SYNC_BYTES_PER_MINUTE};
use super::Network;
use crate::identity::{node_id_of, peer_id_of};
use agentmesh_protocol::pattern_wire::{SyncRequest, SyncResponse, MAX_SYNC_RESPONSE_BYTES};
use agentmesh_protocol::NodeId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::PeerId;
use std::collections::HashMap;
use std::time::Instant;
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
    /// Requests the pattern service is answering, with the peer when the
    /// request came through a relay (its answer is charged to the budget).
    inbound: HashMap<u64, (ResponseChannel<SyncResponse>, Option<PeerId>)>,
    next_inbound: u64,
    /// Requests sent, with whether an answer's bound was charged for them.
    outbound: HashMap<OutboundRequestId, (SyncReply, bool)>,
    last_peers: Vec<NodeId>,
    /// Bytes moved with peers reached only through a relay.
    pub relayed: RelayedSyncBudget,
}

impl SyncIo {
    pub fn new(events: mpsc::Sender<SyncEvent>) -> SyncIo {
        SyncIo {
            events,
            inbound: HashMap::new(),
            next_inbound: 0,
            outbound: HashMap::new(),
            last_peers: Vec::new(),
            relayed: RelayedSyncBudget::default(),
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
                    let now = Instant::now();
                    let relayed = self.reached_only_through_relay(&peer);
                    if relayed {
                        if !self.sync.relayed.allows(&peer, now) {
                            self.sync.relayed.refused += 1;
                            let _ = reply.send(Err(super::PeerRequestError::RelayBudget(
                                RELAYED_SYNC_BYTES_PER_MINUTE,
                            )));
                            return;
                        }
                        let bound = wire_bytes(&request) + MAX_SYNC_RESPONSE_BYTES;
                        self.sync.relayed.charge(peer, bound, now);
                    }
                    let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                    self.sync.outbound.insert(id, (reply, relayed));
                }
                Err(e) => {
                    let _ = reply.send(Err(super::PeerRequestError::NotAPeer(e.to_string())));
                }
            },
            SyncCommand::Misled { peer } => self.charge(peer, super::guard::Offence::Misleading, 1),
            SyncCommand::Respond { request, response } => {
                if let Some((channel, relayed)) = self.sync.inbound.remove(&request) {
                    self.answer_sync(channel, response, relayed);
                }
            }
        }
    }

    pub(super) fn on_sync_event(
        &mut self,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message,
            } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Some(from) = node_id_of(&peer) else {
                        return;
                    };
                    if !self.admit_request(&peer) {
                        return;
                    }
                    let now = Instant::now();
                    let relayed = self
                        .links
                        .table
                        .is_relayed(&peer, connection_id)
                        .then_some(peer);
                    if relayed.is_some() {
                        if !self.sync.relayed.allows(&peer, now) {
                            self.sync.relayed.refused += 1;
                            let reason =
                                super::PeerRequestError::RelayBudget(RELAYED_SYNC_BYTES_PER_MINUTE);
                            self.refuse_sync(channel, reason.to_string(), None);
                            return;
                        }
                        // The request and the largest answer it may get
                        // are charged now; `Respond` gives back the rest.
                        let bound = wire_bytes(&request) + MAX_SYNC_RESPONSE_BYTES;
                        self.sync.relayed.charge(peer, bound, now);
                    }
                    if matches!(request, SyncRequest::Push { .. })
                        && !self.may_share_patterns(&peer)
                    {
                        let reason = "your membership certificate does not allow sharing patterns";
                        self.refuse_sync(channel, reason.into(), relayed);
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
                            self.sync.inbound.insert(id, (channel, relayed));
                        }
                        Err(_) => {
                            self.refuse_sync(channel, "busy; try again later".into(), relayed)
                        }
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let charged = self.sync.outbound.get(&request_id).is_some_and(|o| o.1);
                    let bytes = wire_bytes(&response);
                    if charged {
                        let unused = MAX_SYNC_RESPONSE_BYTES.saturating_sub(bytes);
                        self.sync.relayed.refund(&peer, unused);
                    } else if self.links.table.is_relayed(&peer, connection_id) {
                        // Sent while a direct connection still existed.
                        self.sync.relayed.charge(peer, bytes, Instant::now());
                    }
                    if let Some((reply, _)) = self.sync.outbound.remove(&request_id) {
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
                if let Some((reply, _)) = self.sync.outbound.remove(&request_id) {
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
        self.sync
            .inbound
            .retain(|_, (channel, _)| channel.is_open());
        self.sync.relayed.prune(Instant::now());
    }

    /// Answers a peer's request with `Refused`.
    fn refuse_sync(
        &mut self,
        channel: ResponseChannel<SyncResponse>,
        reason: String,
        relayed: Option<PeerId>,
    ) {
        self.answer_sync(channel, SyncResponse::Refused { reason }, relayed);
    }

    /// Sends an answer; for a request that came through a relay
    /// (`relayed`), gives back the answer's bound charged on admission
    /// beyond what the answer costs.
    fn answer_sync(
        &mut self,
        channel: ResponseChannel<SyncResponse>,
        response: SyncResponse,
        relayed: Option<PeerId>,
    ) {
        if let Some(peer) = relayed {
            let unused = MAX_SYNC_RESPONSE_BYTES.saturating_sub(wire_bytes(&response));
            self.sync.relayed.refund(&peer, unused);
        }
        // Fails only if the asker gave up.
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, response);
    }

    /// Connected, but with no direct connection: traffic crosses a relay.
    fn reached_only_through_relay(&self, peer: &PeerId) -> bool {
        let table = &self.links.table;
        table.direct_connections(peer) == 0 && !table.relayed_connections(peer).is_empty()
    }
}

/// The size of a sync message on the wire.
fn wire_bytes<T: serde::Serialize>(message: &T) -> usize {
    agentmesh_protocol::codec::encode(message).map_or(0, |b| b.len())
}
