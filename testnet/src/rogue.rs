//! A misbehaving peer for tests and benchmarks: a bare libp2p swarm that
//! joins a node's network, publishes whatever bytes it is told to (channel
//! frames, forged vertices), bypassing every check an honest node makes
//! before sending, and votes "no" on every consensus query. With
//! `sync_lies` set it also keeps anti-entropy rounds going: every hash
//! differs and every page of entries names one made-up pattern and says
//! more follow; fetches deliver nothing ([`SyncLie::Phantoms`]) or a fresh
//! valid state for each id ([`SyncLie::Flood`]).

use agentmesh_node::identity;
use agentmesh_node::network::cbor_codec::{
    protocol_name, CborCodec, ConsensusMessages, MembershipMessages, SyncMessages,
};
use agentmesh_node::network::consensus_io::consensus_topic;
use agentmesh_node::network::{behaviour, topic_for};
use agentmesh_protocol::consensus_wire::{ConsensusRequest, ConsensusResponse};
use agentmesh_protocol::membership::{Hello, HelloReply};
use agentmesh_protocol::pattern_wire::{SyncRequest, SyncResponse};
use agentmesh_protocol::{sha256, NodeKey};
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, noise, request_response, tcp, yamux, Multiaddr, PeerId, Swarm};
use std::time::Duration;

#[derive(NetworkBehaviour)]
struct RogueBehaviour {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    consensus: request_response::Behaviour<CborCodec<ConsensusMessages>>,
    sync: request_response::Behaviour<CborCodec<SyncMessages>>,
    membership: request_response::Behaviour<CborCodec<MembershipMessages>>,
}

/// How a rogue keeps anti-entropy rounds going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncLie {
    /// Lists patterns it never delivers.
    Phantoms,
    /// Delivers a fresh valid pattern for every made-up id it lists: data
    /// a member may write, without end.
    Flood,
}

/// A valid pattern state with id `id`, written by the rogue.
fn made_up_state(key: &NodeKey, id: &str) -> Option<Vec<u8>> {
    use agentmesh_protocol::pattern::{Content, Edit, Pattern};
    let edit = Edit {
        content: Content {
            kind: "ghost".into(),
            name: id.into(),
            description: String::new(),
            framework: None,
            language: None,
            author_agent: "rogue".into(),
            body: "null".into(),
            metadata: "{}".into(),
        },
        tags: Vec::new(),
    };
    Pattern::create(id.into(), edit, key.node_id(), 1)
        .ok()?
        .encode()
        .ok()
}

pub struct RoguePeer {
    swarm: Swarm<RogueBehaviour>,
    network: String,
    pub peer_id: PeerId,
    /// The rogue's node key (its libp2p identity is built from the same seed).
    pub key: NodeKey,
    /// The membership certificate it presents when it connects (if any).
    pub certificate: Option<Vec<u8>>,
    /// Keep the node waiting for the handshake until [`RoguePeer::finish_handshake`].
    pub stall_handshake: bool,
    /// Gossip messages it has received (a fenced non-member gets none).
    pub gossip_received: usize,
    /// Answer anti-entropy requests with endless made-up pages (see the
    /// module doc); otherwise they go unanswered.
    pub sync_lies: Option<SyncLie>,
    /// Made-up ids handed out so far.
    pub ghosts_listed: u64,
    stalled: Vec<(
        PeerId,
        Option<request_response::ResponseChannel<HelloReply>>,
    )>,
}

impl RoguePeer {
    pub fn new(network: &str) -> Result<RoguePeer> {
        let key = NodeKey::generate()?;
        let keypair = identity::libp2p_keypair(&key)?;
        let peer_id = keypair.public().to_peer_id();
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )?
            // QUIC dials leave from the socket it listens on: listening on
            // another loopback address (127.0.0.x) makes its connections
            // come from that address, as from another host.
            .with_quic()
            .with_behaviour(|key| {
                let gossip_config = gossipsub::ConfigBuilder::default()
                    // Large enough to send what honest nodes refuse.
                    .max_transmit_size(8 << 20)
                    .validation_mode(gossipsub::ValidationMode::Anonymous)
                    // As the nodes do: without it, anonymous messages all
                    // share one id and only the first one is ever sent.
                    .message_id_fn(|m| gossipsub::MessageId::from(sha256(&m.data).to_vec()))
                    .heartbeat_interval(Duration::from_millis(200))
                    .build()?;
                Ok(RogueBehaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        behaviour::identify_protocol_version(network),
                        key.public(),
                    )),
                    gossipsub: gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Anonymous,
                        gossip_config,
                    )?,
                    consensus: request_response::Behaviour::with_codec(
                        CborCodec::default(),
                        [(
                            protocol_name::<ConsensusMessages>(network),
                            request_response::ProtocolSupport::Full,
                        )],
                        request_response::Config::default(),
                    ),
                    sync: request_response::Behaviour::with_codec(
                        CborCodec::default(),
                        [(
                            protocol_name::<SyncMessages>(network),
                            request_response::ProtocolSupport::Full,
                        )],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(20)),
                    ),
                    membership: request_response::Behaviour::with_codec(
                        CborCodec::default(),
                        [(
                            protocol_name::<MembershipMessages>(network),
                            request_response::ProtocolSupport::Full,
                        )],
                        request_response::Config::default(),
                    ),
                })
            })
            .map_err(|e| anyhow!("{e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        Ok(RoguePeer {
            swarm,
            network: network.to_string(),
            peer_id,
            key,
            certificate: None,
            stall_handshake: false,
            gossip_received: 0,
            sync_lies: None,
            ghosts_listed: 0,
            stalled: Vec::new(),
        })
    }

    fn hello_certificate(&self) -> Option<serde_bytes::ByteBuf> {
        self.certificate
            .as_ref()
            .map(|c| serde_bytes::ByteBuf::from(c.clone()))
    }

    /// Takes part in the membership handshake, presenting `certificate`
    /// (valid or not): sends it on a new connection and answers the node's.
    /// Returns the events the caller may care about.
    fn handshake(
        &mut self,
        event: SwarmEvent<RogueBehaviourEvent>,
    ) -> Option<SwarmEvent<RogueBehaviourEvent>> {
        match event {
            SwarmEvent::Behaviour(RogueBehaviourEvent::Membership(
                request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { channel, .. },
                    ..
                },
            )) => {
                if self.stall_handshake {
                    self.stalled.push((peer, Some(channel)));
                } else {
                    self.answer_hello(channel);
                }
                None
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => {
                if self.stall_handshake {
                    self.stalled.push((peer_id, None));
                } else {
                    self.send_hello(peer_id);
                }
                Some(event)
            }
            other => Some(other),
        }
    }

    fn answer_hello(&mut self, channel: request_response::ResponseChannel<HelloReply>) {
        let reply = HelloReply::Welcome {
            certificate: self.hello_certificate(),
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .membership
            .send_response(channel, reply);
    }

    fn send_hello(&mut self, peer: PeerId) {
        let hello = Hello {
            certificate: self.hello_certificate(),
        };
        self.swarm
            .behaviour_mut()
            .membership
            .send_request(&peer, hello);
    }

    /// Completes the handshakes held back by `stall_handshake`.
    pub fn finish_handshake(&mut self) {
        self.stall_handshake = false;
        for (peer, channel) in std::mem::take(&mut self.stalled) {
            match channel {
                Some(channel) => self.answer_hello(channel),
                None => self.send_hello(peer),
            }
        }
    }

    /// The next swarm event the caller may care about (handshake traffic
    /// is handled on the way).
    async fn next_event(&mut self) -> SwarmEvent<RogueBehaviourEvent> {
        loop {
            let event = self.swarm.select_next_some().await;
            if let SwarmEvent::Behaviour(RogueBehaviourEvent::Gossipsub(
                gossipsub::Event::Message { .. },
            )) = &event
            {
                self.gossip_received += 1;
            }
            if let Some(event) = self.handshake(event) {
                return event;
            }
        }
    }

    /// Connects to `target` (a TCP multiaddr ending in `/p2p/<id>`) and waits
    /// until the target announces a subscription to `family`'s topic.
    pub async fn connect(&mut self, target: &str, family: &str) -> Result<()> {
        let topic = topic_for(&self.network, family);
        self.connect_topic(target, topic).await
    }

    /// Like [`RoguePeer::connect`], for the consensus vertex topic.
    pub async fn connect_consensus(&mut self, target: &str) -> Result<()> {
        let topic = consensus_topic(&self.network);
        self.connect_topic(target, topic).await
    }

    /// Gossips raw bytes as if they were a vertex.
    pub fn publish_vertex_bytes(&mut self, data: Vec<u8>) -> Result<()> {
        let topic = consensus_topic(&self.network);
        self.publish_on(topic, data)
    }

    fn publish_on(&mut self, topic: gossipsub::IdentTopic, data: Vec<u8>) -> Result<()> {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, data)
            .map(|_| ())
            .map_err(|e| anyhow!("rogue publish failed: {e}"))
    }

    async fn connect_topic(&mut self, target: &str, topic: gossipsub::IdentTopic) -> Result<()> {
        let family = topic.to_string();
        let addr: Multiaddr = target.parse().context("target address")?;
        self.swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        self.swarm.dial(addr)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, self.next_event())
                .await
                .map_err(|_| anyhow!("rogue peer: target never subscribed to {family}"))?;
            match event {
                SwarmEvent::Behaviour(RogueBehaviourEvent::Gossipsub(
                    gossipsub::Event::Subscribed { topic: t, .. },
                )) if t == topic.hash() => return Ok(()),
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    bail!("rogue peer cannot connect: {error}")
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => bail!("rogue peer: the target closed the connection"),
                _ => {}
            }
        }
    }

    /// Listens on loopback, so that identify tells the peers it meets an
    /// address to route to.
    pub fn listen(&mut self) -> Result<()> {
        self.swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        Ok(())
    }

    /// Listens on `addr` (e.g. `/ip4/127.0.0.7/udp/0/quic-v1`).
    pub fn listen_on(&mut self, addr: &str) -> Result<()> {
        self.swarm.listen_on(addr.parse()?)?;
        Ok(())
    }

    /// Joins `family`'s topic (announced to peers as they connect).
    pub fn subscribe(&mut self, family: &str) -> Result<()> {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic_for(&self.network, family))?;
        Ok(())
    }

    /// Starts a dial to `target`; [`RoguePeer::pump`] carries it out.
    pub fn dial(&mut self, target: &Multiaddr) -> Result<()> {
        self.swarm.dial(target.clone())?;
        Ok(())
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer)
    }

    /// Publishes raw bytes on `family`'s topic.
    pub fn publish_raw(&mut self, family: &str, data: Vec<u8>) -> Result<()> {
        let topic = topic_for(&self.network, family);
        self.publish_on(topic, data)
    }

    /// Sends an anti-entropy request to `peer` (connected already), bypassing
    /// the limits an honest node keeps; the answer, or why there was none.
    pub async fn ask_sync(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
    ) -> Result<Result<SyncResponse, request_response::OutboundFailure>> {
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let event = tokio::time::timeout_at(deadline, self.next_event())
                .await
                .map_err(|_| anyhow!("rogue peer: no answer to a sync request"))?;
            match event {
                SwarmEvent::Behaviour(RogueBehaviourEvent::Sync(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    },
                )) if request_id == id => return Ok(Ok(response)),
                SwarmEvent::Behaviour(RogueBehaviourEvent::Sync(
                    request_response::Event::OutboundFailure {
                        request_id, error, ..
                    },
                )) if request_id == id => return Ok(Err(error)),
                _ => {}
            }
        }
    }

    /// An answer that keeps an anti-entropy round going without ever
    /// delivering a pattern.
    fn lie_about_patterns(&mut self, lie: SyncLie, request: SyncRequest) -> SyncResponse {
        let noise = |i: usize| serde_bytes::ByteArray::new(sha256(&i.to_be_bytes()));
        match request {
            SyncRequest::Pages { .. } => SyncResponse::Pages {
                root: sha256(b"lies"),
                pages: (0..256).map(noise).collect(),
            },
            SyncRequest::Buckets { pages } => SyncResponse::Buckets {
                hashes: pages
                    .iter()
                    .map(|_| (0..256).map(noise).collect())
                    .collect(),
            },
            SyncRequest::Entries { buckets, after } => {
                // One made-up id in the first asked bucket, after `after`
                // (ids of a bucket are in byte order, and these grow).
                let bucket = buckets.first().copied().unwrap_or(0);
                let id = loop {
                    self.ghosts_listed += 1;
                    let id = format!("ghost-{:012}", self.ghosts_listed);
                    if agentmesh_store::patterns::merkle::bucket_of(&id) == bucket
                        && after.as_deref().is_none_or(|a| id.as_str() > a)
                    {
                        break id;
                    }
                };
                SyncResponse::Entries {
                    entries: vec![(
                        id.clone(),
                        serde_bytes::ByteArray::new(sha256(id.as_bytes())),
                    )],
                    complete: false,
                }
            }
            SyncRequest::Fetch { ids } => {
                let states = match lie {
                    SyncLie::Phantoms => Vec::new(),
                    SyncLie::Flood => ids
                        .iter()
                        .filter_map(|id| made_up_state(&self.key, id))
                        .collect(),
                };
                SyncResponse::Batch {
                    batch: agentmesh_protocol::pattern_wire::encode_batch(&states),
                    more: Vec::new(),
                }
            }
            SyncRequest::Push { .. } => SyncResponse::Pushed { applied: 0 },
        }
    }

    /// Drives the swarm for `duration` so queued messages go out. Consensus
    /// queries get contrary answers: "no" to everything asked, which no
    /// node can tell apart from a slow honest peer; fetches get nothing,
    /// and bootstrapping peers an empty history.
    pub async fn pump(&mut self, duration: Duration) {
        let _ = tokio::time::timeout(duration, async {
            loop {
                let event = self.next_event().await;
                if let SwarmEvent::Behaviour(RogueBehaviourEvent::Sync(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) = event
                {
                    if let Some(lie) = self.sync_lies {
                        let response = self.lie_about_patterns(lie, request);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .send_response(channel, response);
                    }
                    continue;
                }
                if let SwarmEvent::Behaviour(RogueBehaviourEvent::Consensus(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) = event
                {
                    let response = match request {
                        ConsensusRequest::Query { ids } => ConsensusResponse::Votes {
                            votes: vec![false; ids.len()],
                            hints: Vec::new(),
                        },
                        ConsensusRequest::Fetch { .. } => ConsensusResponse::Vertices {
                            vertices: Vec::new(),
                        },
                        // Bootstrapping peers: an empty history, nothing
                        // accepted.
                        ConsensusRequest::AcceptedLog { .. } => ConsensusResponse::AcceptedLog {
                            ids: Vec::new(),
                            end: 0,
                        },
                        ConsensusRequest::Accepted { ids } => ConsensusResponse::Accepted {
                            accepted: vec![false; ids.len()],
                        },
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .consensus
                        .send_response(channel, response);
                }
            }
        })
        .await;
    }
}
