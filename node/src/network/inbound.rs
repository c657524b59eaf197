//! Validation of gossip frames from peers, before gossipsub may forward them.

use super::{now_ms, Network};
use crate::network::router::Delivery;
use agentmesh_protocol::{decode_frame, Envelope};
use libp2p::{gossipsub, PeerId};
use std::sync::Arc;

impl Network {
    pub(super) fn family_of_topic(&self, topic: &gossipsub::TopicHash) -> Option<String> {
        topic
            .as_str()
            .strip_prefix(&self.topic_prefix)
            .map(str::to_string)
    }

    /// A frame is accepted only if it decodes within the limits, its
    /// author's signature verifies, every envelope is the author's, and every
    /// channel belongs to the topic's family.
    fn check_frame(&self, message: &gossipsub::Message) -> Result<Vec<Envelope>, String> {
        let family = self
            .family_of_topic(&message.topic)
            .ok_or("topic is not an agentmesh channel")?;
        let payload = decode_frame(&message.data, self.settings.max_message_bytes)
            .map_err(|e| e.to_string())?;
        if let Some(envelope) = payload
            .envelopes
            .iter()
            .find(|e| e.channel.family() != family)
        {
            return Err(format!(
                "channel {} does not belong to topic family {family}",
                envelope.channel
            ));
        }
        Ok(payload.envelopes)
    }

    /// Tells gossipsub whether a message may be forwarded (and whether its
    /// sender behaved).
    pub(super) fn report_validation(
        &mut self,
        id: &gossipsub::MessageId,
        source: &PeerId,
        valid: bool,
    ) {
        let acceptance = if valid {
            gossipsub::MessageAcceptance::Accept
        } else {
            gossipsub::MessageAcceptance::Reject
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, acceptance);
    }

    pub(super) fn on_gossip_message(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let verdict = self.check_frame(&message);
        self.report_validation(&id, &source, verdict.is_ok());
        match verdict {
            Ok(envelopes) => {
                let received_ms = now_ms();
                for envelope in envelopes {
                    self.totals.received += 1;
                    // Clocks of different hosts differ: never below zero.
                    let latency_ms = received_ms.saturating_sub(envelope.timestamp_ms);
                    self.metrics
                        .delivery_latency
                        .observe(latency_ms as f64 / 1e3);
                    self.counters.received(&envelope.channel);
                    let delivery = Arc::new(Delivery {
                        envelope,
                        received_ms,
                    });
                    self.totals.delivered_locally += self.router.deliver(delivery) as u64;
                }
            }
            Err(reason) => {
                tracing::debug!(peer = %source, %reason, "rejected a gossip frame");
                self.totals.rejected += 1;
                self.counters
                    .rejected(self.family_of_topic(&message.topic).as_deref());
                self.table.rejected(&source);
            }
        }
    }
}
