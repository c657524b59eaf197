//! The validation pool: decoding and signature checks of gossiped frames
//! and vertices run on worker tasks, off the swarm task, which only routes.
//!
//! What needs no node state runs here: size limits, decoding, the author's
//! signature, the topic family and the freshness window. What needs state
//! (bans, certificates and scopes, rate limits, delivery) runs on the swarm
//! task when the result comes back, before gossipsub is told whether to
//! forward.
//!
//! Jobs are sharded by the peer that sent them, so one peer's messages are
//! checked, and delivered, in the order they arrived. Each worker's queue
//! is bounded in jobs, and all messages in the pool together in bytes:
//! past either bound a message is ignored (not forwarded, its sender not
//! charged) — under overload the node sheds load instead of growing its
//! memory.

use super::guard::Offence;
use super::inbound::{fresh, Refusal};
use super::now_ms;
use agentmesh_protocol::frame::FramePayload;
use agentmesh_protocol::{decode_frame, FrameError, Vertex, VertexError};
use libp2p::{gossipsub, PeerId};
use std::hash::BuildHasher;
use tokio::sync::mpsc;

/// Jobs queued per worker before messages are shed.
const QUEUE_PER_WORKER: usize = 2048;
/// Bytes of messages in the pool (queued, being checked, or checked and
/// not yet taken back) before messages are shed: vertices are up to 1 MiB.
const MAX_POOL_BYTES: usize = 64 << 20;
/// Most workers (the machine's cores beyond that serve the API and
/// consensus).
const MAX_WORKERS: usize = 4;

pub enum Job {
    Frame {
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
        /// The channel family of the message's topic (None: not a channel
        /// topic of this network).
        family: Option<String>,
        max_message_bytes: usize,
    },
    Vertex {
        source: PeerId,
        id: gossipsub::MessageId,
        data: Vec<u8>,
    },
}

/// A decoded, signature-checked frame and the certificate it carried.
pub type CheckedFrame = (FramePayload, Option<Vec<u8>>);

pub enum Checked {
    Frame {
        source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
        result: Result<CheckedFrame, Refusal>,
    },
    Vertex {
        source: PeerId,
        id: gossipsub::MessageId,
        /// The vertex's size on the wire (for the pool's byte budget).
        bytes: usize,
        result: Result<Vertex, VertexError>,
    },
}

impl Checked {
    pub fn source(&self) -> PeerId {
        match self {
            Checked::Frame { source, .. } | Checked::Vertex { source, .. } => *source,
        }
    }

    pub fn id(&self) -> &gossipsub::MessageId {
        match self {
            Checked::Frame { id, .. } | Checked::Vertex { id, .. } => id,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Checked::Frame { message, .. } => message.data.len(),
            Checked::Vertex { bytes, .. } => *bytes,
        }
    }
}

impl Job {
    fn source(&self) -> &PeerId {
        match self {
            Job::Frame { source, .. } | Job::Vertex { source, .. } => source,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Job::Frame { message, .. } => message.data.len(),
            Job::Vertex { data, .. } => data.len(),
        }
    }

    fn run(self) -> Checked {
        match self {
            Job::Frame {
                source,
                id,
                message,
                family,
                max_message_bytes,
            } => {
                let result = check_frame(
                    &message.data,
                    family.as_deref(),
                    max_message_bytes,
                    now_ms(),
                );
                Checked::Frame {
                    source,
                    id,
                    message,
                    result,
                }
            }
            Job::Vertex { source, id, data } => Checked::Vertex {
                source,
                id,
                bytes: data.len(),
                result: Vertex::decode(&data),
            },
        }
    }
}

/// The stateless checks of a frame: it decodes within the limits, its
/// author's signature verifies, every channel belongs to the topic's
/// family, and every envelope is fresh.
pub fn check_frame(
    data: &[u8],
    family: Option<&str>,
    max_message_bytes: usize,
    now: u64,
) -> Result<CheckedFrame, Refusal> {
    let family = family.ok_or_else(|| {
        Refusal::new(
            Some(Offence::Malformed),
            "topic is not an agentmesh channel",
        )
    })?;
    let (payload, certificate) = decode_frame(data, max_message_bytes).map_err(|e| {
        let offence = match e {
            FrameError::BadSignature => Offence::BadSignature,
            _ => Offence::Malformed,
        };
        Refusal::new(Some(offence), e.to_string())
    })?;
    if let Some(envelope) = payload
        .envelopes
        .iter()
        .find(|e| e.channel.family() != family)
    {
        return Err(Refusal::new(
            Some(Offence::Malformed),
            format!(
                "channel {} does not belong to topic family {family}",
                envelope.channel
            ),
        ));
    }
    // Stale or early: the relay may be honest (a replay is the author's
    // frame, signed), so nobody is charged.
    if let Some(envelope) = payload
        .envelopes
        .iter()
        .find(|e| !fresh(e.timestamp_ms, now))
    {
        return Err(Refusal::new(
            None,
            format!(
                "frame of {} stamped {} ms, {} ms from now: outside the freshness window",
                payload.author,
                envelope.timestamp_ms,
                envelope.timestamp_ms as i128 - now as i128
            ),
        ));
    }
    Ok((payload, certificate))
}

pub struct ValidationPool {
    queues: Vec<mpsc::Sender<Job>>,
    pub results: mpsc::Receiver<Checked>,
    hasher: std::collections::hash_map::RandomState,
    /// Bytes of messages submitted and not yet taken back.
    bytes: usize,
}

impl ValidationPool {
    /// Starts the workers on the current tokio runtime.
    pub fn start() -> ValidationPool {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_WORKERS);
        let (results_tx, results) = mpsc::channel(QUEUE_PER_WORKER * workers);
        let queues = (0..workers)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_PER_WORKER);
                let results_tx = results_tx.clone();
                tokio::spawn(async move {
                    while let Some(job) = rx.recv().await {
                        // CPU-bound but short (one signature check); on a
                        // runtime worker of its own, beside the swarm task.
                        if results_tx.send(job.run()).await.is_err() {
                            break;
                        }
                    }
                });
                tx
            })
            .collect();
        ValidationPool {
            queues,
            results,
            hasher: Default::default(),
            bytes: 0,
        }
    }

    /// Queues `job`; if the pool's byte budget or its worker's queue is
    /// full (or the workers have stopped), returns the sender and id of
    /// the message shed.
    pub fn submit(&mut self, job: Job) -> Result<(), (PeerId, gossipsub::MessageId)> {
        let shed = |job: Job| match job {
            Job::Frame { source, id, .. } | Job::Vertex { source, id, .. } => (source, id),
        };
        let bytes = job.bytes();
        if self.bytes + bytes > MAX_POOL_BYTES {
            return Err(shed(job));
        }
        let worker = (self.hasher.hash_one(job.source()) % self.queues.len() as u64) as usize;
        self.queues[worker]
            .try_send(job)
            .map_err(|e| shed(e.into_inner()))?;
        self.bytes += bytes;
        Ok(())
    }

    /// A result was taken back: its bytes leave the budget.
    pub fn done(&mut self, checked: &Checked) {
        self.bytes = self.bytes.saturating_sub(checked.bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_protocol::{encode_frame, Channel, Envelope, NodeKey};

    fn frame(key: &NodeKey, channel: &str, stamp: u64) -> Vec<u8> {
        let envelope = Envelope {
            channel: Channel::parse(channel).unwrap(),
            id: agentmesh_protocol::MessageId::random().unwrap(),
            sender: key.node_id(),
            timestamp_ms: stamp,
            content_type: "text/plain".into(),
            body: b"hi".to_vec(),
        };
        encode_frame(key, &[envelope], None).unwrap()
    }

    #[test]
    fn frames_are_checked_without_node_state() {
        let key = NodeKey::generate().unwrap();
        let now = now_ms();
        let good = frame(&key, "task:x", now);
        let (payload, _) = check_frame(&good, Some("task"), 1024, now).ok().unwrap();
        assert_eq!(payload.author, key.node_id());
        let charged = |r: Result<CheckedFrame, Refusal>| r.err().unwrap().offence;
        // Another family's channel, a broken signature, garbage, no family.
        assert_eq!(
            charged(check_frame(&good, Some("chat"), 1024, now)),
            Some(Offence::Malformed)
        );
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            charged(check_frame(&forged, Some("task"), 1024, now)),
            Some(Offence::BadSignature | Offence::Malformed)
        ));
        assert_eq!(
            charged(check_frame(b"junk", Some("task"), 1024, now)),
            Some(Offence::Malformed)
        );
        assert_eq!(
            charged(check_frame(&good, None, 1024, now)),
            Some(Offence::Malformed)
        );
        // Stale: refused, nobody charged.
        let stale = frame(&key, "task:x", now - 120_000);
        assert_eq!(charged(check_frame(&stale, Some("task"), 1024, now)), None);
    }

    #[tokio::test]
    async fn one_senders_jobs_come_back_in_order() {
        let mut pool = ValidationPool::start();
        let source = PeerId::random();
        for i in 0..100u32 {
            let job = Job::Vertex {
                source,
                id: gossipsub::MessageId::from(i.to_be_bytes().to_vec()),
                data: vec![i as u8],
            };
            assert!(pool.submit(job).is_ok());
        }
        for i in 0..100u32 {
            match pool.results.recv().await.unwrap() {
                Checked::Vertex { id, result, .. } => {
                    assert_eq!(id, gossipsub::MessageId::from(i.to_be_bytes().to_vec()));
                    assert!(result.is_err(), "a one-byte vertex cannot decode");
                }
                Checked::Frame { .. } => panic!("a vertex job came back as a frame"),
            }
        }
    }
}
