//! Publishing. Publish requests that are queued together are packed into
//! gossip frames per channel family (see `agentmesh_protocol::frame`): at
//! light load a frame holds one message and nothing waits; under load the
//! gossip layer's per-message costs are shared by many messages.

use super::{now_ms, topic_for, Network, PublishError, PublishRequest};
use crate::network::router::Delivery;
use crate::types::{PublishReceipt, RemoteDelivery};
use agentmesh_protocol::envelope::ENVELOPE_OVERHEAD;
use agentmesh_protocol::frame::{encode_frame, pack};
use agentmesh_protocol::{Channel, Envelope, MessageId};
use libp2p::gossipsub;
use std::sync::Arc;
use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<PublishReceipt, PublishError>>;

impl Network {
    /// Publishes the requests in order; each gets its own receipt or error.
    pub(super) fn publish_all(&mut self, requests: Vec<PublishRequest>) {
        // Group by family, keeping each family's messages in request order.
        let mut groups: Vec<(String, Vec<(Envelope, Reply)>)> = Vec::new();
        for request in requests {
            let (envelope, reply) = match self.envelope_for(request) {
                Ok(pair) => pair,
                Err((e, reply)) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            let family = envelope.channel.family().to_string();
            match groups.iter_mut().find(|(f, _)| *f == family) {
                Some((_, members)) => members.push((envelope, reply)),
                None => groups.push((family, vec![(envelope, reply)])),
            }
        }
        for (family, members) in groups {
            // Upper bounds of the encoded sizes, so packed frames stay
            // within budget without encoding anything twice.
            let sizes: Vec<usize> = members
                .iter()
                .map(|(e, _)| e.body.len() + ENVELOPE_OVERHEAD)
                .collect();
            let mut members = members.into_iter();
            for run in pack(&sizes) {
                let frame: Vec<(Envelope, Reply)> = members.by_ref().take(run).collect();
                self.publish_frame(&family, frame);
            }
        }
    }

    /// An envelope sent by this node now, with a fresh random id (None if
    /// the system RNG fails).
    pub(super) fn own_envelope(
        &self,
        channel: Channel,
        content_type: String,
        body: Vec<u8>,
    ) -> Option<Envelope> {
        Some(Envelope {
            channel,
            id: MessageId::random()?,
            sender: self.local_node,
            timestamp_ms: now_ms(),
            content_type,
            body,
        })
    }

    fn envelope_for(
        &self,
        request: PublishRequest,
    ) -> Result<(Envelope, Reply), (PublishError, Reply)> {
        let PublishRequest {
            channel,
            content_type,
            body,
            reply,
        } = request;
        if let Some(scopes) = self.membership.own_scopes() {
            if !scopes.may_publish(&channel) {
                let granted = scopes.certificate.scopes.join(",");
                return Err((
                    PublishError::Forbidden(format!(
                        "this node's membership certificate does not allow publishing on {channel} (scopes: {granted})"
                    )),
                    reply,
                ));
            }
        }
        let Some(envelope) = self.own_envelope(channel, content_type, body) else {
            return Err((PublishError::Failed("system RNG failed".into()), reply));
        };
        match envelope.validate(self.settings.config.network.max_message_bytes) {
            Ok(()) => Ok((envelope, reply)),
            Err(e) => Err((PublishError::Invalid(e.to_string()), reply)),
        }
    }

    fn publish_frame(&mut self, family: &str, members: Vec<(Envelope, Reply)>) {
        let (envelopes, replies): (Vec<Envelope>, Vec<Reply>) = members.into_iter().unzip();
        let outcome = self.send_frame(family, &envelopes);
        for (envelope, reply) in envelopes.into_iter().zip(replies) {
            let result = outcome.clone().map(|(remote, remote_subscribers)| {
                self.totals.published += 1;
                self.counters.published(&envelope.channel);
                let (id, channel, timestamp_ms) = (
                    envelope.id.to_string(),
                    envelope.channel.to_string(),
                    envelope.timestamp_ms,
                );
                let delivery = Arc::new(Delivery {
                    envelope,
                    received_ms: now_ms(),
                });
                let local_subscribers = self.router.deliver(delivery);
                self.totals.delivered_locally += local_subscribers as u64;
                PublishReceipt {
                    id,
                    channel,
                    timestamp_ms,
                    local_subscribers,
                    remote,
                    remote_subscribers,
                }
            });
            let _ = reply.send(result);
        }
    }

    /// Hands one frame to gossipsub. Having no subscribed peer is not an
    /// error: local subscribers still get the messages and the receipt says so.
    fn send_frame(
        &mut self,
        family: &str,
        envelopes: &[Envelope],
    ) -> Result<(RemoteDelivery, usize), PublishError> {
        let bytes = encode_frame(&self.key, envelopes, self.membership.own_certificate())
            .map_err(|e| PublishError::Failed(e.to_string()))?;
        let topic = topic_for(&self.settings.config.node.network, family);
        let remote_subscribers = self.remote_subscribers(&topic.hash());
        let size = bytes.len();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => Ok((RemoteDelivery::Sent, remote_subscribers)),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                Ok((RemoteDelivery::NoRemoteSubscribers, remote_subscribers))
            }
            Err(gossipsub::PublishError::MessageTooLarge) => Err(PublishError::TooLarge(size)),
            Err(gossipsub::PublishError::AllQueuesFull(n)) => Err(PublishError::QueuesFull(n)),
            Err(e) => Err(PublishError::Failed(e.to_string())),
        }
    }
}
