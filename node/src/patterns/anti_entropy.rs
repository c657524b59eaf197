//! Anti-entropy: reconciles this node's patterns with one peer at a time,
//! when a peer connects and every `interval` with a random connected peer.
//!
//! A round walks the peer's hash tree top-down (root, pages, buckets, then
//! the (id, digest) entries of differing buckets), fetches what the peer
//! holds that this node lacks or holds differently, merges it, and pushes
//! back what the peer lacks and the merged states it held differently.
//! Every step is bounded (16 pages, 4096 buckets, a page of 8192 entries
//! or 256 KiB, 100 patterns per message), so memory does not grow with
//! the store, and a round has a deadline: a peer that answers with endless
//! pages cannot hold the reconciler (rounds run one at a time). Ids a peer
//! lists and then does not deliver are counted, and a peer with more than
//! [`MAX_PHANTOMS_PER_ROUND`] in a round is charged for misleading (an
//! honest peer delivers what it lists; one with a damaged record might
//! miss a few).

use super::SyncStats;
use crate::network::sync_io::SyncCommand;
use crate::network::NetworkHandle;
use agentmesh_protocol::pattern_wire::{
    decode_batch, encode_batch, split_batches, Hash, SyncRequest, SyncResponse,
    ENTRIES_BYTE_BUDGET, MAX_BATCH_PATTERNS, MAX_BUCKETS_PER_REQUEST, MAX_ENTRIES_PER_RESPONSE,
    MAX_PAGES_PER_REQUEST,
};
use agentmesh_protocol::NodeId;
use agentmesh_store::patterns::merkle::{compare_pages, differing};
use agentmesh_store::{PatternStore, StoreError};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Fetch requests kept in flight: hides the round trip behind the merging.
const FETCHES_IN_FLIGHT: usize = 8;
/// Retries of a failed round (after 1, 2, 4, 8 s) before waiting for the
/// next periodic round or reconnection.
const MAX_RETRIES: u32 = 4;
/// Listed-but-undelivered states a peer may cost a round before it is
/// charged.
pub const MAX_PHANTOMS_PER_ROUND: u64 = 16;

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("{0}")]
    Peer(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn unexpected(what: &str, response: &SyncResponse) -> RoundError {
    match response {
        SyncResponse::Refused { reason } => RoundError::Peer(format!("peer refused: {reason}")),
        _ => RoundError::Peer(format!("peer answered {what} with something else")),
    }
}

enum Round {
    InSync,
    Reconciled { fetched: u64, pushed: u64 },
}

pub struct Reconciler {
    /// This node (on connection, the smaller id of a pair starts a round).
    pub local: NodeId,
    pub store: PatternStore,
    pub network: NetworkHandle,
    pub stats: Arc<SyncStats>,
    /// Connected peers, as the pattern service last heard from the network.
    pub peers: watch::Receiver<Vec<NodeId>>,
    pub interval: Duration,
    /// False when this node's membership certificate lacks the `patterns`
    /// scope: it then only fetches (peers would refuse its pushes).
    pub may_push: bool,
    /// How long a round may run.
    pub round_deadline: Duration,
}

impl Reconciler {
    pub async fn run(mut self) {
        let mut known: BTreeSet<NodeId> = BTreeSet::new();
        let mut queue: VecDeque<NodeId> = VecDeque::new();
        // Failed rounds are retried a few times, backing off: a peer that
        // just connected may still be busy, or its connection may have been
        // replaced.
        let mut retries: Vec<(tokio::time::Instant, NodeId, u32)> = Vec::new();
        let mut next_periodic = tokio::time::Instant::now() + self.interval;
        loop {
            let wake = retries
                .iter()
                .map(|(at, _, _)| *at)
                .fold(next_periodic, tokio::time::Instant::min);
            tokio::select! {
                changed = self.peers.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now: BTreeSet<NodeId> = self.peers.borrow_and_update().iter().copied().collect();
                    // Peers that (re)connected: they may have missed, or
                    // hold, changes made while apart. A round moves
                    // patterns both ways, so one end of each pair starts
                    // it: the smaller id.
                    for peer in now.difference(&known).filter(|p| self.local < **p) {
                        if !queue.contains(peer) {
                            queue.push_back(*peer);
                        }
                    }
                    known = now;
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = tokio::time::Instant::now();
                    if now >= next_periodic {
                        next_periodic = now + self.interval;
                        if !known.is_empty() {
                            let pick = RandomState::new().build_hasher().finish() as usize % known.len();
                            queue.extend(known.iter().nth(pick));
                        }
                    }
                    // Due retries stay listed (with their attempt count)
                    // until their round starts below.
                    for (at, peer, _) in &retries {
                        if *at <= now && !queue.contains(peer) {
                            queue.push_back(*peer);
                        }
                    }
                }
            }
            while let Some(peer) = queue.pop_front() {
                let attempts = retries
                    .iter()
                    .position(|(_, p, _)| *p == peer)
                    .map_or(0, |i| retries.swap_remove(i).2);
                if !self.peers.borrow().contains(&peer) {
                    continue;
                }
                if !self.round(peer).await && attempts < MAX_RETRIES {
                    let delay = Duration::from_secs(1 << attempts);
                    retries.push((tokio::time::Instant::now() + delay, peer, attempts + 1));
                }
            }
        }
    }

    /// One round with `peer`; false if it failed.
    async fn round(&self, peer: NodeId) -> bool {
        let started = Instant::now();
        // Outside the round's future: a round cut at its deadline still
        // reports what its peer failed to deliver.
        let phantoms = AtomicU64::new(0);
        let (result, past_deadline) = match tokio::time::timeout(
            self.round_deadline,
            self.reconcile(peer, &phantoms),
        )
        .await
        {
            Ok(result) => (result, false),
            Err(_) => {
                let secs = self.round_deadline.as_secs();
                let error = format!("the round ran past its deadline ({secs} s)");
                (Err(RoundError::Peer(error)), true)
            }
        };
        let elapsed = started.elapsed().as_millis() as u64;
        let phantoms = phantoms.into_inner();
        if phantoms > MAX_PHANTOMS_PER_ROUND {
            tracing::info!(%peer, phantoms, "peer listed pattern states it did not deliver");
            let _ = self.network.sync(SyncCommand::Misled { peer }).await;
        }
        self.stats.anti_entropy(|s| {
            s.rounds += 1;
            s.rounds_past_deadline += past_deadline as u64;
            s.phantom_ids += phantoms;
            s.last_peer = Some(peer.to_string());
            s.last_round_ms = elapsed;
            match &result {
                Ok(Round::InSync) => s.rounds_in_sync += 1,
                Ok(Round::Reconciled { .. }) => {}
                Err(e) => {
                    s.rounds_failed += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        });
        match result {
            Ok(Round::Reconciled { fetched, pushed }) => {
                tracing::info!(%peer, fetched, pushed, ms = elapsed, "patterns reconciled")
            }
            Ok(Round::InSync) => tracing::debug!(%peer, "patterns in sync"),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "anti-entropy round failed");
                return false;
            }
        }
        true
    }

    async fn ask(&self, peer: NodeId, request: SyncRequest) -> Result<SyncResponse, RoundError> {
        let (reply, answer) = oneshot::channel();
        self.network
            .sync(SyncCommand::Ask {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|e| RoundError::Peer(e.to_string()))?;
        answer
            .await
            .map_err(|_| RoundError::Peer("the network task stopped".into()))?
            .map_err(|e| RoundError::Peer(e.to_string()))
    }

    fn received(&self, bytes: usize) {
        self.stats
            .anti_entropy(|s| s.bytes_received += bytes as u64);
    }

    /// `phantoms` counts ids the peer lists and does not deliver.
    async fn reconcile(&self, peer: NodeId, phantoms: &AtomicU64) -> Result<Round, RoundError> {
        let root = self.store.root()?;
        let remote_pages = match self.ask(peer, SyncRequest::Pages { root }).await? {
            SyncResponse::InSync => return Ok(Round::InSync),
            SyncResponse::Pages { pages, .. } => pages,
            other => return Err(unexpected("pages", &other)),
        };
        self.received(remote_pages.len() * 32);
        let remote_pages: Vec<Hash> = remote_pages.into_iter().map(|h| h.into_array()).collect();
        let pages: Vec<u8> = differing(&self.store.pages()?, &remote_pages)
            .into_iter()
            .map(|p| p as u8)
            .collect();
        let (mut fetched, mut pushed) = (0, 0);
        for chunk in pages.chunks(MAX_PAGES_PER_REQUEST) {
            let request = SyncRequest::Buckets {
                pages: chunk.to_vec(),
            };
            let hashes = match self.ask(peer, request).await? {
                SyncResponse::Buckets { hashes } if hashes.len() == chunk.len() => hashes,
                other => return Err(unexpected("buckets", &other)),
            };
            self.received(chunk.len() * 256 * 32);
            let mut buckets = Vec::new();
            for (page, remote) in chunk.iter().zip(hashes) {
                let remote: Vec<Hash> = remote.into_iter().map(|h| h.into_array()).collect();
                let local = self.store.buckets(*page)?;
                buckets.extend(
                    differing(&local, &remote)
                        .into_iter()
                        .map(|b| (*page as u16) << 8 | b as u16),
                );
            }
            for asked in buckets.chunks(MAX_BUCKETS_PER_REQUEST) {
                let (f, p) = self.reconcile_buckets(peer, asked, phantoms).await?;
                fetched += f;
                pushed += p;
            }
        }
        Ok(Round::Reconciled { fetched, pushed })
    }

    /// Compares the entries of `buckets` page by page (a page of the peer's
    /// beside a page of this node's, over the key range both cover) and
    /// moves what differs; returns (fetched, pushed).
    async fn reconcile_buckets(
        &self,
        peer: NodeId,
        buckets: &[u16],
        phantoms: &AtomicU64,
    ) -> Result<(u64, u64), RoundError> {
        let (mut fetched, mut pushed) = (0, 0);
        let mut after: Option<String> = None;
        loop {
            let request = SyncRequest::Entries {
                buckets: buckets.to_vec(),
                after: after.clone(),
            };
            let (remote, remote_complete) = match self.ask(peer, request).await? {
                SyncResponse::Entries { entries, complete } => (entries, complete),
                other => return Err(unexpected("entries", &other)),
            };
            self.received(remote.iter().map(|(id, _)| id.len() + 32).sum());
            let remote: Vec<(String, Hash)> = remote
                .into_iter()
                .map(|(id, h)| (id, h.into_array()))
                .collect();
            let (local, local_complete) = self.store.entries_page(
                buckets,
                after.as_deref(),
                MAX_ENTRIES_PER_RESPONSE,
                ENTRIES_BYTE_BUDGET,
            )?;
            let page = compare_pages(
                buckets,
                after.as_deref(),
                (remote, remote_complete),
                (local, local_complete),
            )
            .map_err(|e| RoundError::Peer(e.to_string()))?;
            let diff = page.diff;
            let wanted: Vec<String> = diff
                .missing
                .into_iter()
                .chain(diff.differing.iter().cloned())
                .collect();
            fetched += self.fetch(peer, wanted, phantoms).await?;
            if self.may_push {
                let to_send: Vec<String> = diff.differing.into_iter().chain(diff.extra).collect();
                pushed += self.push(peer, &to_send).await?;
            }
            match page.next {
                None => return Ok((fetched, pushed)),
                Some(id) => after = Some(id),
            }
        }
    }

    /// Fetches `ids` in batches, a few requests in flight, merging each
    /// batch as it arrives; returns how many states were received.
    async fn fetch(
        &self,
        peer: NodeId,
        ids: Vec<String>,
        phantoms: &AtomicU64,
    ) -> Result<u64, RoundError> {
        let mut queue: VecDeque<Vec<String>> = ids
            .chunks(MAX_BATCH_PATTERNS)
            .map(<[String]>::to_vec)
            .collect();
        // A peer that keeps answering "more" cannot keep us here forever.
        let mut budget = queue.len() * 2 + 8;
        let mut in_flight = FuturesUnordered::new();
        let mut received = 0;
        loop {
            while in_flight.len() < FETCHES_IN_FLIGHT && budget > 0 {
                let Some(ids) = queue.pop_front() else { break };
                budget -= 1;
                let asked: HashSet<String> = ids.iter().cloned().collect();
                let ask = self.ask(peer, SyncRequest::Fetch { ids });
                in_flight.push(async move { (asked, ask.await) });
            }
            let Some((asked, answer)) = in_flight.next().await else {
                break;
            };
            let (batch, mut more) = match answer? {
                SyncResponse::Batch { batch, more } => (batch, more),
                other => return Err(unexpected("fetch", &other)),
            };

            self.received(batch.len());
            let (store, stats) = (self.store.clone(), self.stats.clone());
            // Decoding and merging a batch take a few milliseconds of CPU.
            let (merged, delivered) =
                tokio::task::spawn_blocking(move || -> Result<(usize, Vec<String>), RoundError> {
                    let decoded = decode_batch(&batch).map_err(|e| {
                        stats.replication(|s| s.batches_rejected += 1);
                        RoundError::Peer(format!("bad batch: {e}"))
                    })?;
                    let applied = store.apply(&decoded.patterns)?;
                    stats.rejected(&decoded.invalid, &applied.refused);
                    // Counted as they arrive: a round cut short still moved these.
                    let count = decoded.patterns.len() as u64;
                    stats.anti_entropy(|s| s.patterns_fetched += count);
                    let ids = decoded.patterns.into_iter().map(|p| p.id).collect();
                    Ok((count as usize, ids))
                })
                .await
                .map_err(|e| RoundError::Peer(format!("merging failed: {e}")))??;
            received += merged as u64;
            let owed = phantoms_in(&asked, &delivered, &mut more);
            let total = phantoms.fetch_add(owed, Ordering::Relaxed) + owed;
            if total > MAX_PHANTOMS_PER_ROUND {
                // Ended at once (and charged by `round`): a peer that keeps
                // listing what it does not have gets no more of this round.
                return Err(RoundError::Peer(format!(
                    "the peer listed {total} pattern states it did not deliver"
                )));
            }
            if !more.is_empty() {
                queue.push_back(more);
            }
        }
        Ok(received)
    }

    /// Sends the local states of `ids` to the peer, in batches, a few
    /// requests in flight.
    async fn push(&self, peer: NodeId, ids: &[String]) -> Result<u64, RoundError> {
        let mut chunks = ids.chunks(MAX_BATCH_PATTERNS);
        let mut ready: VecDeque<Vec<Vec<u8>>> = VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        let mut pushed = 0;
        loop {
            while in_flight.len() < FETCHES_IN_FLIGHT {
                if ready.is_empty() {
                    let Some(chunk) = chunks.next() else { break };
                    ready.extend(split_batches(self.store.get_encoded(chunk)?));
                    continue;
                }
                let Some(batch) = ready.pop_front() else {
                    break;
                };
                let count = batch.len() as u64;
                let bytes = encode_batch(&batch);
                self.stats
                    .anti_entropy(|s| s.bytes_sent += bytes.len() as u64);
                let ask = self.ask(peer, SyncRequest::Push { batch: bytes });
                in_flight.push(async move { (count, ask.await) });
            }
            let Some((count, answer)) = in_flight.next().await else {
                break;
            };
            match answer? {
                SyncResponse::Pushed { .. } => {
                    pushed += count;
                    self.stats.anti_entropy(|s| s.patterns_pushed += count);
                }
                other => return Err(unexpected("push", &other)),
            }
        }
        Ok(pushed)
    }
}

/// Ids of a fetch the peer listed but did not deliver. Only states with an
/// asked id count as delivered (an undecodable item names no id; an
/// unasked state is not an answer), and `more` is trimmed to asked ids
/// still owed; an answer that delivers nothing and only defers is owed in
/// full (an honest peer always fits at least one state in a batch).
fn phantoms_in(asked: &HashSet<String>, delivered: &[String], more: &mut Vec<String>) -> u64 {
    let delivered: HashSet<&String> = delivered.iter().filter(|id| asked.contains(*id)).collect();
    more.retain(|id| asked.contains(id) && !delivered.contains(id));
    more.sort();
    more.dedup();
    if delivered.is_empty() {
        let owed = asked.len() as u64;
        more.clear();
        return owed;
    }
    (asked.len() - delivered.len() - more.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::phantoms_in;
    use std::collections::HashSet;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_asked_states_count_as_delivered_and_more_is_what_is_still_owed() {
        let asked: HashSet<String> = ids(&["a", "b", "c", "d"]).into_iter().collect();
        // Honest: two states, the rest deferred.
        let mut more = ids(&["c", "d"]);
        assert_eq!(phantoms_in(&asked, &ids(&["a", "b"]), &mut more), 0);
        assert_eq!(more, ids(&["c", "d"]));
        // Unasked states and unasked or repeated deferrals do not pay.
        let mut more = ids(&["x", "a", "c", "c"]);
        assert_eq!(phantoms_in(&asked, &ids(&["a", "z", "a"]), &mut more), 2);
        assert_eq!(more, ids(&["c"]));
        // Nothing delivered, everything deferred: owed in full, not asked
        // again.
        let mut more = ids(&["a", "b", "c", "d"]);
        assert_eq!(phantoms_in(&asked, &[], &mut more), 4);
        assert!(more.is_empty());
        // Nothing at all.
        assert_eq!(phantoms_in(&asked, &[], &mut Vec::new()), 4);
    }
}
