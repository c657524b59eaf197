//! The pattern service task: gossips local changes in batches, merges the
//! batches peers gossip, and answers peers' anti-entropy requests.

use super::{SyncStats, BATCH_CONTENT_TYPE, PATTERNS_CHANNEL};
use crate::network::router::Delivery;
use crate::network::sync_io::{SyncCommand, SyncEvent};
use crate::network::{NetworkHandle, NetworkStopped, PublishError};
use agentmesh_protocol::pattern_wire::{
    decode_batch, encode_batch, split_batches, ByteArray, SyncRequest, SyncResponse,
    BATCH_BYTE_BUDGET, ENTRIES_BYTE_BUDGET, MAX_ENTRIES_PER_RESPONSE,
};
use agentmesh_protocol::{Channel, ChannelPattern, NodeId};
use agentmesh_store::{PatternStore, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Changed ids that close a gossip batch early.
const FLUSH_AT: usize = agentmesh_protocol::pattern_wire::MAX_BATCH_PATTERNS;

pub struct PatternService {
    pub store: PatternStore,
    /// This node: its own batches come back from the channel and are skipped.
    pub node: NodeId,
    pub network: NetworkHandle,
    pub stats: Arc<SyncStats>,
    /// Ids changed through the API, to gossip.
    pub changes: mpsc::Receiver<String>,
    pub sync_events: mpsc::Receiver<SyncEvent>,
    /// Where connected-peer updates go (to the reconciler).
    pub peers: watch::Sender<Vec<NodeId>>,
    pub gossip_delay: Duration,
}

impl PatternService {
    pub async fn run(mut self) {
        let pattern = ChannelPattern::parse(PATTERNS_CHANNEL).expect("a valid channel name");
        let Ok(mut subscription) = self.network.subscribe(pattern).await else {
            return;
        };
        let mut flush = tokio::time::interval(self.gossip_delay);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = BTreeSet::new();
        let result: Result<(), NetworkStopped> = async {
            loop {
                tokio::select! {
                    delivery = subscription.next() => self.on_delivery(delivery)?,
                    event = self.sync_events.recv() => match event {
                        Some(event) => self.on_sync_event(event).await?,
                        None => return Ok(()),
                    },
                    change = self.changes.recv() => match change {
                        Some(id) => {
                            pending.insert(id);
                            if pending.len() >= FLUSH_AT {
                                self.flush(&mut pending).await?;
                            }
                        }
                        None => return Ok(()),
                    },
                    _ = flush.tick() => self.flush(&mut pending).await?,
                }
            }
        }
        .await;
        if result.is_err() {
            tracing::debug!("pattern service stopped with the network");
        }
    }

    fn on_delivery(
        &mut self,
        delivery: Option<Result<Arc<Delivery>, u64>>,
    ) -> Result<(), NetworkStopped> {
        match delivery {
            None => Err(NetworkStopped),
            Some(Err(missed)) => {
                self.stats.replication(|s| s.batches_missed += missed);
                Ok(())
            }
            Some(Ok(d)) => {
                // Our own batches come back to local subscribers.
                if d.envelope.sender != self.node {
                    self.on_batch(&d.envelope.sender, &d.envelope.body);
                }
                Ok(())
            }
        }
    }

    fn on_batch(&self, from: &NodeId, bytes: &[u8]) {
        let batch = match decode_batch(bytes) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "rejected a pattern batch");
                self.stats.replication(|s| s.batches_rejected += 1);
                return;
            }
        };
        let received = (batch.patterns.len() + batch.invalid.len()) as u64;
        self.stats.replication(|s| {
            s.batches_received += 1;
            s.bytes_received += bytes.len() as u64;
            s.patterns_received += received;
        });
        match self.store.apply(&batch.patterns) {
            Ok(a) => {
                self.stats.rejected(&batch.invalid, &a.refused);
                self.stats.replication(|s| {
                    s.patterns_applied += a.changed;
                    s.patterns_unchanged += a.unchanged;
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot store gossiped patterns"),
        }
    }

    /// Gossips the pending changes, in batches that fit the network's
    /// message limit (halved until they do).
    async fn flush(&self, pending: &mut BTreeSet<String>) -> Result<(), NetworkStopped> {
        if pending.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = std::mem::take(pending).into_iter().collect();
        let encoded = match self.store.get_encoded(&ids) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read changed patterns for gossip");
                return Ok(());
            }
        };
        let channel = Channel::parse(PATTERNS_CHANNEL).expect("a valid channel name");
        let mut queue = split_batches(encoded);
        while let Some(batch) = queue.pop() {
            let bytes = encode_batch(&batch);
            let size = bytes.len() as u64;
            match self
                .network
                .publish(channel.clone(), BATCH_CONTENT_TYPE.into(), bytes)
                .await?
            {
                Ok(_) => self.stats.replication(|s| {
                    s.batches_sent += 1;
                    s.patterns_sent += batch.len() as u64;
                    s.bytes_sent += size;
                }),
                Err(PublishError::TooLarge(_)) if batch.len() > 1 => {
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    queue.push(first);
                    queue.push(second);
                }
                // No peer to send to, or queues full: anti-entropy carries
                // these changes when peers reconcile.
                Err(e) => tracing::debug!(error = %e, "pattern batch not gossiped"),
            }
        }
        Ok(())
    }

    async fn on_sync_event(&mut self, event: SyncEvent) -> Result<(), NetworkStopped> {
        match event {
            SyncEvent::Peers(peers) => {
                self.peers.send_replace(peers);
                Ok(())
            }
            SyncEvent::Request {
                from,
                request,
                body,
            } => {
                let response = self.answer(&from, body).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot answer a sync request");
                    SyncResponse::Refused {
                        reason: "storage error".into(),
                    }
                });
                self.stats.anti_entropy(|s| s.requests_served += 1);
                self.network
                    .sync(SyncCommand::Respond { request, response })
                    .await
            }
        }
    }

    fn answer(&self, from: &NodeId, request: SyncRequest) -> Result<SyncResponse, StoreError> {
        let store = &self.store;
        Ok(match request {
            SyncRequest::Pages { root } => {
                let ours = store.root()?;
                if ours == root {
                    SyncResponse::InSync
                } else {
                    SyncResponse::Pages {
                        root: ours,
                        pages: store.pages()?.into_iter().map(ByteArray::new).collect(),
                    }
                }
            }
            SyncRequest::Buckets { pages } => SyncResponse::Buckets {
                hashes: pages
                    .iter()
                    .map(|p| Ok(store.buckets(*p)?.into_iter().map(ByteArray::new).collect()))
                    .collect::<Result<_, StoreError>>()?,
            },
            SyncRequest::Entries { buckets, after } => {
                let (entries, complete) = store.entries_page(
                    &buckets,
                    after.as_deref(),
                    MAX_ENTRIES_PER_RESPONSE,
                    ENTRIES_BYTE_BUDGET,
                )?;
                SyncResponse::Entries {
                    entries: entries
                        .into_iter()
                        .map(|(id, d)| (id, ByteArray::new(d)))
                        .collect(),
                    complete,
                }
            }
            SyncRequest::Fetch { ids } => {
                let (mut batch, mut bytes, mut more) = (Vec::new(), 0, Vec::new());
                for id in ids {
                    let Some(encoded) = store.get_raw(&id)? else {
                        continue;
                    };
                    // What does not fit is asked for again.
                    if !batch.is_empty() && bytes + encoded.len() > BATCH_BYTE_BUDGET {
                        more.push(id);
                    } else {
                        bytes += encoded.len();
                        batch.push(encoded);
                    }
                }
                SyncResponse::Batch {
                    batch: encode_batch(&batch),
                    more,
                }
            }
            SyncRequest::Push { batch } => match decode_batch(&batch) {
                Ok(decoded) => {
                    let applied = store.apply(&decoded.patterns)?;
                    self.stats.rejected(&decoded.invalid, &applied.refused);
                    SyncResponse::Pushed {
                        applied: applied.changed as u32,
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %from, error = %e, "rejected a pushed batch");
                    self.stats.replication(|s| s.batches_rejected += 1);
                    SyncResponse::Refused {
                        reason: e.to_string(),
                    }
                }
            },
        })
    }
}
