//! Subscribing on many nodes at once and collecting what each receives.

use crate::mesh::Testnet;
use agentmesh_node::client::SubscriptionItem;
use agentmesh_node::types::MessageEvent;
use anyhow::{bail, Result};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A message as received by one node's subscriber.
#[derive(Debug, Clone)]
pub struct Received {
    pub node: usize,
    pub event: MessageEvent,
    pub at: Instant,
}

/// One subscriber per node (or several), all feeding one queue.
pub struct Collector {
    rx: mpsc::Receiver<(usize, SubscriptionItem, Instant)>,
    tasks: Vec<JoinHandle<()>>,
    /// Per subscriber: message id → times received.
    pub counts: Vec<HashMap<String, u32>>,
    /// Which node each subscriber sits on.
    pub subscriber_node: Vec<usize>,
    /// Messages the nodes dropped because a subscriber read too slowly.
    pub lagged: u64,
}

impl Drop for Collector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Collector {
    /// Subscribes to `pattern` on each listed node; when this returns every
    /// subscription is registered with its node.
    pub async fn subscribe(net: &Testnet, nodes: &[usize], pattern: &str) -> Result<Collector> {
        let (tx, rx) = mpsc::channel::<(usize, SubscriptionItem, Instant)>(1 << 16);
        let mut tasks = Vec::new();
        for (sub_index, &node) in nodes.iter().enumerate() {
            let mut stream = net.nodes[node].client.subscribe(pattern).await?;
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(item)) = stream.next().await {
                    if tx.send((sub_index, item, Instant::now())).await.is_err() {
                        break;
                    }
                }
            }));
        }
        Ok(Collector {
            rx,
            tasks,
            counts: vec![HashMap::new(); nodes.len()],
            subscriber_node: nodes.to_vec(),
            lagged: 0,
        })
    }

    /// Takes the next received message (also counted), or `None` on
    /// timeout. Lag reports are added to [`Collector::lagged`].
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (node, item, at) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            match item {
                SubscriptionItem::Lagged(n) => self.lagged += n,
                SubscriptionItem::Message(event) => {
                    *self.counts[node].entry(event.id.clone()).or_default() += 1;
                    return Some(Received { node, event, at });
                }
            }
        }
    }

    /// Waits until every subscriber has received every id in `expected`,
    /// calling `on_receive` for each arrival. Fails on timeout, naming what
    /// is missing.
    pub async fn wait_for_all(
        &mut self,
        expected: &HashSet<String>,
        timeout: Duration,
        mut on_receive: impl FnMut(&Received),
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let complete = self
                .counts
                .iter()
                .all(|c| expected.iter().all(|id| c.contains_key(id)));
            if complete {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(r) => on_receive(&r),
                None => {
                    let missing: Vec<String> = self
                        .counts
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let n = expected.iter().filter(|id| !c.contains_key(*id)).count();
                            format!(
                                "subscriber {i} (node {}): {n} missing",
                                self.subscriber_node[i]
                            )
                        })
                        .collect();
                    bail!("timed out after {timeout:?}: {}", missing.join(", "));
                }
            }
        }
    }

    /// Message ids some subscriber received more than once.
    pub fn duplicates(&self) -> Vec<(usize, String, u32)> {
        let mut out = Vec::new();
        for (i, c) in self.counts.iter().enumerate() {
            for (id, n) in c {
                if *n > 1 {
                    out.push((i, id.clone(), *n));
                }
            }
        }
        out
    }
}
