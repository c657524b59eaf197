//! Consensus traffic inside the network task: vertices gossiped on the
//! consensus topic, queries and fetches over request-response. The consensus
//! service (crate::consensus) drives the engine on the other end of the
//! channels; this module only moves and checks bytes.

use super::guard::Offence;
use super::{now_ms, Network};
use crate::identity::{node_id_of, peer_id_of};
use crate::network::router::Delivery;
use agentmesh_consensus::bootstrap::Tag;
use agentmesh_consensus::{BootstrapReply, BootstrapRequest};
use agentmesh_protocol::consensus_wire::{ConsensusRequest, ConsensusResponse};
use agentmesh_protocol::{Channel, NodeId, Vertex, VertexError, VertexId};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::{gossipsub, PeerId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the network hands the consensus service.
#[derive(Debug)]
pub enum ConsensusEvent {
    /// A verified vertex from gossip, relayed by `from`.
    Vertex { from: NodeId, vertex: Vertex },
    /// `from` sent a vertex that failed verification.
    InvalidVertex { from: NodeId, reason: String },
    Query {
        from: NodeId,
        request: u64,
        ids: Vec<VertexId>,
    },
    Fetch {
        from: NodeId,
        request: u64,
        ids: Vec<VertexId>,
    },
    Votes {
        from: NodeId,
        poll: u64,
        votes: Vec<bool>,
        hints: Vec<VertexId>,
        rtt: Duration,
    },
    /// Verified vertices from a fetch response.
    Vertices { from: NodeId, vertices: Vec<Vertex> },
    /// `silent`: the peer was connected but did not answer in time (as
    /// opposed to unreachable).
    QueryFailed {
        peer: NodeId,
        poll: u64,
        silent: bool,
    },
    /// The connected, admitted peers and their say in consensus, whenever
    /// that changes.
    Peers(Vec<PeerVote>),
    /// A peer bootstrapping asks for a page of the accepted log.
    LogRequest { request: u64, position: u64 },
    /// A peer bootstrapping asks which of `ids` this node accepted.
    AcceptedQuery { request: u64, ids: Vec<VertexId> },
    /// The reply to this node's bootstrapping request `tag` (vertices
    /// verified).
    Bootstrap {
        tag: Tag,
        from: NodeId,
        reply: BootstrapReply,
    },
}

/// A connected, admitted peer's say in consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerVote {
    pub node: NodeId,
    /// Its validator weight: from its certificate in a network with an
    /// authority (0: it does not validate), 1 in an open network.
    pub weight: u64,
    /// When its certificate expires (ms since the Unix epoch); `None` in an
    /// open network.
    pub expires_ms: Option<u64>,
}

/// What the consensus service asks the network to do.
#[derive(Debug)]
pub enum ConsensusCommand {
    Query {
        poll: u64,
        peers: Vec<NodeId>,
        ids: Vec<VertexId>,
    },
    Fetch {
        peer: NodeId,
        ids: Vec<VertexId>,
    },
    Respond {
        request: u64,
        response: ConsensusResponse,
    },
    /// Gossip an encoded vertex.
    Broadcast(Vec<u8>),
    /// A bootstrapping request; the reply comes back tagged.
    Bootstrap {
        tag: Tag,
        peer: NodeId,
        request: BootstrapRequest,
    },
    /// Deliver an event to local subscribers of `channel` (not gossiped:
    /// every node reports its own decisions).
    Local {
        channel: Channel,
        content_type: String,
        body: Vec<u8>,
    },
}

enum Outbound {
    Query {
        peer: NodeId,
        poll: u64,
        sent: Instant,
    },
    Fetch,
    Bootstrap {
        tag: Tag,
        peer: NodeId,
    },
}

/// Events waiting for the consensus service, per queue; beyond this they
/// are dropped and counted (the engine recovers through fetches and
/// timeouts) rather than stalling the network task.
pub const CONSENSUS_EVENT_QUEUE: usize = 16_384;

/// The two queues from the network to the consensus service: vertices
/// (large, slow to process) apart from everything else (queries, votes,
/// failures, peers), so a queue full of vertices neither delays answers to
/// queries nor makes votes be dropped.
pub struct ConsensusSenders {
    control: mpsc::Sender<ConsensusEvent>,
    vertices: mpsc::Sender<ConsensusEvent>,
}

pub struct ConsensusReceivers {
    pub control: mpsc::Receiver<ConsensusEvent>,
    pub vertices: mpsc::Receiver<ConsensusEvent>,
}

pub fn consensus_channels() -> (ConsensusSenders, ConsensusReceivers) {
    let (control, control_rx) = mpsc::channel(CONSENSUS_EVENT_QUEUE);
    let (vertices, vertices_rx) = mpsc::channel(CONSENSUS_EVENT_QUEUE);
    (
        ConsensusSenders { control, vertices },
        ConsensusReceivers {
            control: control_rx,
            vertices: vertices_rx,
        },
    )
}

pub struct ConsensusIo {
    events: ConsensusSenders,
    topic: gossipsub::IdentTopic,
    inbound: HashMap<u64, ResponseChannel<ConsensusResponse>>,
    next_inbound: u64,
    outbound: HashMap<OutboundRequestId, Outbound>,
    node_ids: HashMap<PeerId, NodeId>,
    peer_ids: HashMap<NodeId, PeerId>,
    last_peers: Vec<PeerVote>,
    pub dropped_events: u64,
}

pub fn consensus_topic(network: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("/agentmesh/{network}/consensus/vertices"))
}

impl ConsensusIo {
    pub fn new(network: &str, events: ConsensusSenders) -> ConsensusIo {
        ConsensusIo {
            events,
            topic: consensus_topic(network),
            inbound: HashMap::new(),
            next_inbound: 0,
            outbound: HashMap::new(),
            node_ids: HashMap::new(),
            peer_ids: HashMap::new(),
            last_peers: Vec::new(),
            dropped_events: 0,
        }
    }

    pub fn topic(&self) -> &gossipsub::IdentTopic {
        &self.topic
    }

    /// Hands an event to the consensus service; false if its queue is full
    /// (the event is dropped and counted).
    fn emit(&mut self, event: ConsensusEvent) -> bool {
        let queue = match event {
            // Bootstrapping replies take the control queue: few are in
            // flight, and one dropped behind a flood of gossip would stall
            // the walk until its timeout.
            ConsensusEvent::Vertex { .. } | ConsensusEvent::Vertices { .. } => {
                &self.events.vertices
            }
            _ => &self.events.control,
        };
        let sent = queue.try_send(event).is_ok();
        if !sent {
            self.dropped_events += 1;
        }
        sent
    }

    fn node_of(&mut self, peer: &PeerId) -> Option<NodeId> {
        if let Some(node) = self.node_ids.get(peer) {
            return Some(*node);
        }
        let node = node_id_of(peer)?;
        if self.node_ids.len() > 100_000 {
            self.node_ids.clear();
        }
        self.node_ids.insert(*peer, node);
        Some(node)
    }

    fn peer_of(&mut self, node: &NodeId) -> Option<PeerId> {
        if let Some(peer) = self.peer_ids.get(node) {
            return Some(*peer);
        }
        let peer = peer_id_of(node).ok()?;
        if self.peer_ids.len() > 100_000 {
            self.peer_ids.clear();
        }
        self.peer_ids.insert(*node, peer);
        Some(peer)
    }
}

impl Network {
    pub(super) fn is_consensus_topic(&self, topic: &gossipsub::TopicHash) -> bool {
        *topic == self.consensus.topic().hash()
    }

    /// A gossiped vertex: verified before gossipsub may forward it.
    pub(super) fn on_vertex_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        decoded: Result<Vertex, VertexError>,
    ) {
        let verdict = self.admit_vertex(decoded);
        self.report_validation(&id, &source, verdict.is_ok());
        let Some(from) = self.consensus.node_of(&source) else {
            return;
        };
        match verdict {
            Ok(vertex) => {
                self.consensus.emit(ConsensusEvent::Vertex { from, vertex });
            }
            Err((offence, reason)) => {
                tracing::debug!(peer = %source, %reason, "rejected a gossiped vertex");
                self.links.table.rejected(&source);
                self.charge_peer(&source, offence);
                self.consensus
                    .emit(ConsensusEvent::InvalidVertex { from, reason });
            }
        }
    }

    /// A received vertex is used only if it verified and its author may
    /// propose; otherwise, what to charge the sender with and why.
    fn admit_vertex(
        &mut self,
        verified: Result<Vertex, VertexError>,
    ) -> Result<Vertex, (Offence, String)> {
        let vertex = verified.map_err(|e| (Offence::Malformed, e.to_string()))?;
        self.membership
            .check_proposer(&vertex)
            .map_err(|refused| (Offence::Unauthorised, refused.to_string()))?;
        Ok(vertex)
    }

    pub(super) fn on_consensus_command(&mut self, command: ConsensusCommand) {
        match command {
            ConsensusCommand::Query { poll, peers, ids } => {
                let sent = Instant::now();
                for node in peers {
                    let Some(peer) = self.consensus.peer_of(&node) else {
                        self.consensus.emit(ConsensusEvent::QueryFailed {
                            peer: node,
                            poll,
                            silent: false,
                        });
                        continue;
                    };
                    let request = ConsensusRequest::Query { ids: ids.clone() };
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .consensus
                        .send_request(&peer, request);
                    self.consensus.outbound.insert(
                        id,
                        Outbound::Query {
                            peer: node,
                            poll,
                            sent,
                        },
                    );
                }
            }
            ConsensusCommand::Fetch { peer, ids } => {
                if let Some(peer) = self.consensus.peer_of(&peer) {
                    let request = ConsensusRequest::Fetch { ids };
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .consensus
                        .send_request(&peer, request);
                    self.consensus.outbound.insert(id, Outbound::Fetch);
                }
            }
            ConsensusCommand::Bootstrap { tag, peer, request } => {
                self.send_bootstrap_request(tag, peer, request)
            }
            ConsensusCommand::Respond { request, response } => {
                if let Some(channel) = self.consensus.inbound.remove(&request) {
                    // Fails only if the asker gave up; nothing to do then.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .consensus
                        .send_response(channel, response);
                }
            }
            ConsensusCommand::Broadcast(bytes) => {
                let topic = self.consensus.topic().clone();
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    // Alone in the mesh: peers fetch it when they hear of it.
                    tracing::debug!(error = %e, "vertex not gossiped");
                }
            }
            ConsensusCommand::Local {
                channel,
                content_type,
                body,
            } => {
                let Some(envelope) = self.own_envelope(channel, content_type, body) else {
                    return;
                };
                let delivery = Arc::new(Delivery {
                    envelope,
                    received_ms: now_ms(),
                });
                self.totals.delivered_locally += self.router.deliver(delivery) as u64;
            }
        }
    }

    /// Sends a bootstrapping request; its reply (or failure) comes back
    /// tagged.
    fn send_bootstrap_request(&mut self, tag: Tag, peer: NodeId, request: BootstrapRequest) {
        let Some(peer_id) = self.consensus.peer_of(&peer) else {
            self.consensus.emit(ConsensusEvent::Bootstrap {
                tag,
                from: peer,
                reply: BootstrapReply::Failed,
            });
            return;
        };
        let request = match request {
            BootstrapRequest::LogLength => ConsensusRequest::AcceptedLog { from: u64::MAX },
            BootstrapRequest::Log { from } => ConsensusRequest::AcceptedLog { from },
            BootstrapRequest::Accepted { ids } => ConsensusRequest::Accepted { ids },
            BootstrapRequest::Fetch { ids } => ConsensusRequest::Fetch { ids },
        };
        let id = self
            .swarm
            .behaviour_mut()
            .consensus
            .send_request(&peer_id, request);
        self.consensus
            .outbound
            .insert(id, Outbound::Bootstrap { tag, peer });
    }

    pub(super) fn on_consensus_event(
        &mut self,
        event: request_response::Event<ConsensusRequest, ConsensusResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                let Some(from) = self.consensus.node_of(&peer) else {
                    return;
                };
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        if !self.admit_request(&peer) {
                            // Dropping the channel fails the peer's request.
                            drop(channel);
                            return;
                        }
                        let id = self.consensus.next_inbound;
                        self.consensus.next_inbound += 1;
                        self.consensus.inbound.insert(id, channel);
                        let event = match request {
                            ConsensusRequest::Query { ids } => ConsensusEvent::Query {
                                from,
                                request: id,
                                ids,
                            },
                            ConsensusRequest::Fetch { ids } => ConsensusEvent::Fetch {
                                from,
                                request: id,
                                ids,
                            },
                            ConsensusRequest::AcceptedLog { from: position } => {
                                ConsensusEvent::LogRequest {
                                    request: id,
                                    position,
                                }
                            }
                            ConsensusRequest::Accepted { ids } => {
                                ConsensusEvent::AcceptedQuery { request: id, ids }
                            }
                        };
                        self.consensus.emit(event);
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => self.on_consensus_response(peer, from, request_id, response),
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => match self.consensus.outbound.remove(&request_id) {
                Some(Outbound::Bootstrap { tag, peer }) => {
                    tracing::debug!(%peer, %error, "bootstrapping request failed");
                    self.consensus.emit(ConsensusEvent::Bootstrap {
                        tag,
                        from: peer,
                        reply: BootstrapReply::Failed,
                    });
                }
                Some(Outbound::Query { peer, poll, .. }) => {
                    tracing::debug!(%peer, %error, "consensus query failed");
                    // Unsupported protocol: connected but cannot vote, as
                    // good as silent.
                    let silent = matches!(
                        error,
                        request_response::OutboundFailure::Timeout
                            | request_response::OutboundFailure::UnsupportedProtocols
                    );
                    self.consensus
                        .emit(ConsensusEvent::QueryFailed { peer, poll, silent });
                }
                _ => {}
            },
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound consensus request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_consensus_response(
        &mut self,
        peer: PeerId,
        from: NodeId,
        request_id: OutboundRequestId,
        response: ConsensusResponse,
    ) {
        let outbound = self.consensus.outbound.remove(&request_id);
        match (outbound, response) {
            (
                Some(Outbound::Query { poll, sent, .. }),
                ConsensusResponse::Votes { votes, hints },
            ) => {
                self.consensus.emit(ConsensusEvent::Votes {
                    from,
                    poll,
                    votes,
                    hints,
                    rtt: sent.elapsed(),
                });
            }
            (Some(Outbound::Fetch), ConsensusResponse::Vertices { vertices }) => {
                let good = self.admit_vertices(peer, from, vertices);
                self.consensus.emit(ConsensusEvent::Vertices {
                    from,
                    vertices: good,
                });
            }
            (Some(Outbound::Bootstrap { tag, peer: asked }), response) => {
                let reply = match response {
                    ConsensusResponse::AcceptedLog { ids, end } => BootstrapReply::Log { ids, end },
                    ConsensusResponse::Accepted { accepted } => BootstrapReply::Accepted(accepted),
                    ConsensusResponse::Vertices { vertices } => {
                        BootstrapReply::Vertices(self.verified_history(peer, vertices))
                    }
                    ConsensusResponse::Votes { .. } => BootstrapReply::Failed,
                };
                self.consensus.emit(ConsensusEvent::Bootstrap {
                    tag,
                    from: asked,
                    reply,
                });
            }
            (Some(Outbound::Query { poll, .. }), _) => {
                // Answered a query with something else: a vote list that
                // does not match, as far as the engine is concerned.
                self.consensus.emit(ConsensusEvent::Votes {
                    from,
                    poll,
                    votes: Vec::new(),
                    hints: Vec::new(),
                    rtt: Duration::ZERO,
                });
            }
            _ => {}
        }
    }

    /// The vertices of a fetch response that verify and whose authors may
    /// propose; the sender is charged for each of the others.
    fn admit_vertices(
        &mut self,
        peer: PeerId,
        from: NodeId,
        vertices: Vec<agentmesh_protocol::WireVertex>,
    ) -> Vec<Vertex> {
        let mut good = Vec::with_capacity(vertices.len());
        for wire in vertices {
            match self.admit_vertex(Vertex::verify(wire)) {
                Ok(v) => good.push(v),
                Err((offence, reason)) => {
                    self.links.table.rejected(&peer);
                    self.charge_peer(&peer, offence);
                    self.consensus
                        .emit(ConsensusEvent::InvalidVertex { from, reason });
                }
            }
        }
        good
    }

    /// Vertices fetched while bootstrapping whose id and signature verify.
    /// Their authors' membership is not checked again: each is accepted
    /// history, confirmed by a quorum (or an ancestor of such a vertex),
    /// and the certificate it carried may have expired since. Content that
    /// does not verify is never honest, and the sender is charged for it.
    fn verified_history(
        &mut self,
        peer: PeerId,
        vertices: Vec<agentmesh_protocol::WireVertex>,
    ) -> Vec<Vertex> {
        let mut good = Vec::with_capacity(vertices.len());
        for wire in vertices {
            match Vertex::verify(wire) {
                Ok(v) => good.push(v),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "a peer served an invalid vertex");
                    self.links.table.rejected(&peer);
                    self.charge_peer(&peer, Offence::Malformed);
                }
            }
        }
        good
    }

    /// Tells the consensus and pattern services when the set of connected
    /// peers changed, and forgets inbound requests whose askers gave up.
    pub(super) fn maintain_consensus(&mut self) {
        let admitted: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| self.membership.is_admitted(p))
            .copied()
            .collect();
        let mut peers = Vec::with_capacity(admitted.len());
        // Reconciling with a peer that may not share patterns would only
        // fetch what this node then refuses.
        let mut sharing = Vec::with_capacity(admitted.len());
        for peer in admitted {
            let Some(node) = self.consensus.node_of(&peer) else {
                continue;
            };
            let (weight, expires_ms) = match self.membership.scopes_of(&peer) {
                Some(Some(verified)) => (
                    verified.validator_weight().unwrap_or(0),
                    Some(verified.certificate.expires_ms),
                ),
                _ => (1, None),
            };
            peers.push(PeerVote {
                node,
                weight,
                expires_ms,
            });
            if self.may_share_patterns(&peer) {
                sharing.push(node);
            }
        }
        peers.sort();
        sharing.sort();
        self.maintain_sync(&sharing);
        // Remembered only once delivered, so a dropped update is sent again.
        if peers != self.consensus.last_peers
            && self.consensus.emit(ConsensusEvent::Peers(peers.clone()))
        {
            self.consensus.last_peers = peers;
        }
        self.consensus
            .inbound
            .retain(|_, channel| channel.is_open());
    }
}
