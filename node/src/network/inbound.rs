//! Validation of gossip frames from peers, before gossipsub may forward them.

use super::guard::Offence;
use super::validation::{Checked, Job};
use super::{now_ms, Network};
use crate::network::router::Delivery;
use agentmesh_protocol::Envelope;
use libp2p::{gossipsub, PeerId};
use std::sync::Arc;

/// Why a frame was not accepted.
pub(super) struct Refusal {
    pub reason: String,
    /// What to charge the sending peer with; `None` when the fault lies
    /// elsewhere (an author over its rate is charged separately).
    pub offence: Option<Offence>,
}

/// A frame's envelopes must be stamped less than this before the
/// receiver's clock...
pub const FRAME_MAX_AGE_MS: u64 = 45_000;
/// ...and no more than this after it (the clock-skew allowance). Together
/// they stay within gossipsub's duplicate cache (60 s, which remembers a
/// frame's id from its first arrival): a replay after the cache has
/// forgotten it is at least 60 s past its first arrival, so at least
/// 45 s past its stamp, and refused. Hosts' clocks must agree within 15 s.
pub const FRAME_MAX_AHEAD_MS: u64 = 15_000;

/// Whether a frame stamped `stamp_ms` may be accepted at `now_ms`.
pub fn fresh(stamp_ms: u64, now_ms: u64) -> bool {
    stamp_ms <= now_ms.saturating_add(FRAME_MAX_AHEAD_MS)
        && now_ms.saturating_sub(stamp_ms) < FRAME_MAX_AGE_MS
}

impl Refusal {
    pub(super) fn new(offence: Option<Offence>, reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
            offence,
        }
    }
}

impl Network {
    pub(super) fn family_of_topic(&self, topic: &gossipsub::TopicHash) -> Option<String> {
        topic
            .as_str()
            .strip_prefix(&self.topic_prefix)
            .map(str::to_string)
    }

    /// Gossip from `source`: accepted only from admitted members; held
    /// while `source`'s membership handshake is under way.
    pub(super) fn on_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        if !self.membership.is_admitted(&source) {
            if self.membership.is_pending(&source) {
                if !self.membership.hold(&source, id.clone(), message) {
                    self.report(&id, &source, gossipsub::MessageAcceptance::Ignore);
                }
            } else {
                // A refused or banned peer's last words: dropped unjudged
                // (ignored, not rejected: honest members may relay the
                // same bytes and must not be charged for them).
                self.totals.rejected += 1;
                self.report(&id, &source, gossipsub::MessageAcceptance::Ignore);
            }
            return;
        }
        let job = if self.is_consensus_topic(&message.topic) {
            Job::Vertex {
                source,
                id,
                data: message.data,
            }
        } else {
            Job::Frame {
                source,
                id,
                family: self.family_of_topic(&message.topic),
                message,
                max_message_bytes: self.settings.config.network.max_message_bytes,
            }
        };
        if let Err((source, id)) = self.validation.submit(job) {
            // Overloaded: shed, without charging anyone.
            self.totals.shed += 1;
            self.report(&id, &source, gossipsub::MessageAcceptance::Ignore);
        }
    }

    /// A message back from the validation pool.
    pub(super) fn on_checked(&mut self, checked: Checked) {
        self.validation.done(&checked);
        let source = checked.source();
        if !self.membership.is_admitted(&source) {
            // Refused or banned while its message was being checked.
            let id = checked.id().clone();
            self.report(&id, &source, gossipsub::MessageAcceptance::Ignore);
            return;
        }
        match checked {
            Checked::Frame {
                source,
                id,
                message,
                result,
            } => self.on_gossip_message(source, id, message, result),
            Checked::Vertex {
                source, id, result, ..
            } => self.on_vertex_gossip(source, id, result),
        }
    }

    /// The stateful checks of a frame that decoded, verified and is fresh
    /// (see [`super::validation::check_frame`]): its author is not banned,
    /// is a member allowed to publish on every channel, and is within its
    /// rate.
    fn admit_frame(
        &mut self,
        checked: Result<super::validation::CheckedFrame, Refusal>,
    ) -> Result<Vec<Envelope>, Refusal> {
        let (payload, certificate) = checked?;
        if self.guard.is_banned(&payload.author) {
            return Err(Refusal::new(
                None,
                format!("author {} is banned", payload.author),
            ));
        }
        let scopes = self
            .membership
            .check(&payload.author, certificate.as_deref(), now_ms())
            .map_err(|e| {
                Refusal::new(
                    Some(Offence::Unauthorised),
                    format!("author {} is not a member: {e}", payload.author),
                )
            })?;
        if let Some(scopes) = scopes {
            if let Some(envelope) = payload
                .envelopes
                .iter()
                .find(|e| !scopes.may_publish(&e.channel))
            {
                return Err(Refusal::new(
                    Some(Offence::Unauthorised),
                    format!(
                        "author {} may not publish on {}",
                        payload.author, envelope.channel
                    ),
                ));
            }
        }
        if let Err(excess) = self
            .guard
            .admit_messages(&payload.author, payload.envelopes.len())
        {
            self.charge(payload.author, Offence::OverRate, excess);
            return Err(Refusal::new(
                None,
                format!("author {} is over its message rate", payload.author),
            ));
        }
        Ok(payload.envelopes)
    }

    pub(super) fn report(
        &mut self,
        id: &gossipsub::MessageId,
        source: &PeerId,
        acceptance: gossipsub::MessageAcceptance,
    ) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, acceptance);
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
        self.report(id, source, acceptance);
    }

    fn on_gossip_message(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
        checked: Result<super::validation::CheckedFrame, Refusal>,
    ) {
        let verdict = self.admit_frame(checked);
        // A refusal that charges nobody is not the relay's fault: ignored
        // (not forwarded), not rejected.
        let acceptance = match &verdict {
            Ok(_) => gossipsub::MessageAcceptance::Accept,
            Err(refusal) if refusal.offence.is_none() => gossipsub::MessageAcceptance::Ignore,
            Err(_) => gossipsub::MessageAcceptance::Reject,
        };
        self.report(&id, &source, acceptance);
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
            Err(refusal) => {
                tracing::debug!(peer = %source, reason = %refusal.reason, "rejected a gossip frame");
                self.totals.rejected += 1;
                self.counters
                    .rejected(self.family_of_topic(&message.topic).as_deref());
                self.links.table.rejected(&source);
                if let Some(offence) = refusal.offence {
                    self.charge_peer(&source, offence);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freshness_window_is_45_s_back_and_15_s_ahead() {
        let now = 1_000_000;
        assert!(fresh(now, now));
        assert!(fresh(now - FRAME_MAX_AGE_MS + 1, now));
        assert!(!fresh(now - FRAME_MAX_AGE_MS, now));
        assert!(fresh(now + FRAME_MAX_AHEAD_MS, now));
        assert!(!fresh(now + FRAME_MAX_AHEAD_MS + 1, now));
        // A replay once the duplicate cache (60 s from first arrival) has
        // forgotten the frame, even of a frame stamped at the limit ahead.
        let stamped = now + FRAME_MAX_AHEAD_MS;
        assert!(!fresh(stamped, now + 60_000));
        assert!(!fresh(0, u64::MAX) && fresh(u64::MAX, u64::MAX));
    }
}
