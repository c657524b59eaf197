//! Bootstrapping: catching up on accepted history from the validators
//! without polling it again. A pure state machine like the engine: the
//! driver carries out its requests and hands it the replies.
//!
//! Modelled on avalanchego's bootstrapper (accepted frontier, then
//! ancestors in bounded batches, then execution without polling), with the
//! frontier replaced by each node's *accepted log*: the ids it accepted, in
//! the order it accepted them, which is parents-first. The walk:
//!
//! 1. **Probe**: ask every validator how long its log is; the longest is the
//!    source (the others are fallbacks).
//! 2. **List**: read one page (up to 1,024 ids) of the source's log and drop
//!    the ids accepted here already (a restarted walk skips quickly).
//! 3. **Confirm**: ask every validator which of the remaining ids it has
//!    accepted; an id is confirmed when validators holding more than half of
//!    the other validators' weight say so. With less than a third of the
//!    weight Byzantine, a confirmed id was accepted by an honest validator,
//!    and by consensus safety every honest node accepts it: a lying source
//!    can omit vertices (they then reach this node through consensus, or a
//!    later walk from another source) but never insert one.
//! 4. **Fetch** the confirmed vertices (from the source, else from a
//!    validator that confirmed them), at most 256 per request and 4 MiB per
//!    response. A parent this node has not accepted is fetched too: an
//!    ancestor of an accepted vertex is accepted, and the child's id commits
//!    to it. The network layer verifies every vertex (id, signature,
//!    membership) before it gets here.
//! 5. **Apply** in parents-first order; the driver hands each vertex to
//!    [`crate::Engine::accept_bootstrapped`], which records it as accepted
//!    (durable at the next flush) without polling it.
//!
//! Memory is bounded by one page: 1,024 ids plus at most [`MAX_BATCH`]
//! fetched vertices. Progress is what was recorded, so a walk interrupted
//! by a crash starts again from the top and skips what it already has.

use crate::validators::ValidatorSet;
use agentmesh_protocol::consensus_wire::MAX_FETCH_IDS;
use agentmesh_protocol::{NodeId, Vertex, VertexId};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{HashMap, HashSet};

/// The driver's handle on a request, echoed with its reply.
pub type Tag = u64;

/// Most vertices fetched for one page (its ids and missing ancestors).
pub const MAX_BATCH: usize = 4096;
/// Peers asked for one vertex before it is given up for this walk.
const MAX_FETCH_TRIES: usize = 3;
/// How long to wait before probing again when no validator answered.
const RETRY_MS: u64 = 5_000;
/// How long the validator set must stay unchanged before the walk starts:
/// a node that just started connects to its peers one by one, and a
/// quorum counted among the first to answer would be a quorum of few.
const SETTLE_MS: u64 = 2_000;
/// Probe rounds without any answer before the walk is given up.
const MAX_PROBE_ROUNDS: u32 = 3;
/// Pages in a row with nothing confirmed before a source is dropped (a
/// source listing made-up ids would otherwise keep the walk going).
const MAX_BARREN_PAGES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapRequest {
    /// The length of the peer's accepted log.
    LogLength,
    /// A page of the peer's accepted log.
    Log { from: u64 },
    /// Which of these the peer has accepted.
    Accepted { ids: Vec<VertexId> },
    /// These vertices' content.
    Fetch { ids: Vec<VertexId> },
}

#[derive(Debug, Clone)]
pub enum BootstrapReply {
    Log {
        ids: Vec<VertexId>,
        end: u64,
    },
    Accepted(Vec<bool>),
    /// Verified vertices.
    Vertices(Vec<Vertex>),
    /// The request failed or was answered with something else.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// No validator to ask yet.
    #[default]
    Waiting,
    Probing,
    Listing,
    Confirming,
    Fetching,
    Done,
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Probing => "probing",
            Phase::Listing => "listing",
            Phase::Confirming => "confirming",
            Phase::Fetching => "fetching",
            Phase::Done => "done",
        }
    }
}

/// Where the walk stands.
#[derive(Debug, Clone, Default)]
pub struct BootstrapProgress {
    pub phase: Phase,
    pub source: Option<NodeId>,
    /// Position in the source's log and its length.
    pub position: u64,
    pub end: u64,
    /// Vertices fetched and their encoded size.
    pub fetched_vertices: u64,
    pub fetched_bytes: u64,
    /// Vertices handed out to be accepted.
    pub ready_vertices: u64,
    /// Log entries already accepted here.
    pub known: u64,
    /// Log entries a quorum did not confirm (left to consensus).
    pub unconfirmed: u64,
    /// Confirmed vertices that could not be fetched or ordered.
    pub missed: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

#[derive(Default)]
struct Page {
    /// Ids of this page not accepted here, in log order.
    ids: Vec<VertexId>,
    confirmations: HashMap<VertexId, u64>,
    confirmers: HashMap<VertexId, Vec<NodeId>>,
    /// Outstanding acceptance queries.
    asked: HashMap<Tag, NodeId>,
    /// Vertices to fetch and the peers tried for each.
    wanted: HashMap<VertexId, Vec<NodeId>>,
    got: HashMap<VertexId, Vertex>,
    fetches: HashMap<Tag, (NodeId, Vec<VertexId>)>,
}

pub struct Bootstrapper {
    me: NodeId,
    rng: SmallRng,
    validators: ValidatorSet,
    next_tag: Tag,
    probes: HashMap<Tag, NodeId>,
    /// Sources by log length, longest first; the first is in use.
    sources: Vec<(u64, NodeId)>,
    listing: Option<(Tag, NodeId)>,
    page: Page,
    /// When the validator set last changed.
    set_changed_ms: u64,
    barren_pages: u32,
    probe_rounds: u32,
    retry_at_ms: u64,
    requests: Vec<(Tag, NodeId, BootstrapRequest)>,
    ready: Vec<Vertex>,
    progress: BootstrapProgress,
}

impl Bootstrapper {
    pub fn new(me: NodeId, seed: u64) -> Bootstrapper {
        Bootstrapper {
            me,
            rng: SmallRng::seed_from_u64(seed),
            validators: ValidatorSet::default(),
            next_tag: 1,
            probes: HashMap::new(),
            sources: Vec::new(),
            listing: None,
            page: Page::default(),
            set_changed_ms: 0,
            barren_pages: 0,
            probe_rounds: 0,
            retry_at_ms: 0,
            requests: Vec::new(),
            ready: Vec::new(),
            progress: BootstrapProgress::default(),
        }
    }

    pub fn progress(&self) -> &BootstrapProgress {
        &self.progress
    }

    pub fn is_done(&self) -> bool {
        self.progress.phase == Phase::Done
    }

    /// Whether the driver should keep vertices from gossip and fetches
    /// away from the engine: while there is history to walk (there are
    /// validators to ask and the walk has not ended). Otherwise they
    /// would be polled one by one, the very thing bootstrapping avoids;
    /// those still undecided come back after the walk, named by queries
    /// and by their descendants (as avalanchego drops consensus messages
    /// while it bootstraps).
    pub fn holds_consensus(&self) -> bool {
        !self.is_done() && self.validators.iter().any(|(id, _)| id != self.me)
    }

    /// Requests to send: (tag, peer, request).
    pub fn take_requests(&mut self) -> Vec<(Tag, NodeId, BootstrapRequest)> {
        std::mem::take(&mut self.requests)
    }

    /// Confirmed vertices to accept, parents first.
    pub fn take_ready(&mut self) -> Vec<Vertex> {
        std::mem::take(&mut self.ready)
    }

    fn others(&self) -> Vec<NodeId> {
        self.validators
            .iter()
            .map(|(id, _)| id)
            .filter(|id| *id != self.me)
            .collect()
    }

    fn send(&mut self, peer: NodeId, request: BootstrapRequest) -> Tag {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.requests.push((tag, peer, request));
        tag
    }

    /// Periodic work: starts (or restarts) the walk once there are
    /// validators to ask and their set has settled. `validators` is the
    /// current set.
    pub fn tick(&mut self, now_ms: u64, validators: &ValidatorSet) {
        if validators.version() != self.validators.version() || self.validators.is_empty() {
            if validators.version() != self.validators.version() {
                self.set_changed_ms = now_ms;
            }
            self.validators = validators.clone();
        }
        if self.progress.phase != Phase::Waiting
            || now_ms < self.retry_at_ms
            || now_ms < self.set_changed_ms + SETTLE_MS
        {
            return;
        }
        let others = self.others();
        if others.is_empty() {
            return;
        }
        self.progress.started_ms.get_or_insert(now_ms);
        self.progress.phase = Phase::Probing;
        for peer in others {
            let tag = self.send(peer, BootstrapRequest::LogLength);
            self.probes.insert(tag, peer);
        }
    }

    /// A reply to request `tag` from `from`. `is_accepted` says whether this
    /// node has accepted a vertex (including what it was handed earlier).
    pub fn on_reply(
        &mut self,
        now_ms: u64,
        tag: Tag,
        from: NodeId,
        reply: BootstrapReply,
        is_accepted: &dyn Fn(&VertexId) -> bool,
    ) {
        if self.probes.get(&tag) == Some(&from) {
            self.probes.remove(&tag);
            if let BootstrapReply::Log { end, .. } = reply {
                self.sources.push((end, from));
            }
            if self.probes.is_empty() {
                self.choose_source(now_ms);
            }
        } else if self.listing == Some((tag, from)) {
            self.listing = None;
            self.on_page(now_ms, reply, is_accepted);
        } else if self.page.asked.get(&tag) == Some(&from) {
            self.page.asked.remove(&tag);
            if let BootstrapReply::Accepted(flags) = reply {
                self.on_confirmations(from, &flags);
            }
            self.maybe_fetch(now_ms, is_accepted);
        } else if self.page.fetches.get(&tag).is_some_and(|(p, _)| *p == from) {
            let Some((_, asked)) = self.page.fetches.remove(&tag) else {
                return;
            };
            let vertices = match reply {
                BootstrapReply::Vertices(vertices) => vertices,
                _ => Vec::new(),
            };
            self.on_vertices(asked, vertices, is_accepted);
            if self.page.fetches.is_empty() {
                self.finish_page(now_ms, is_accepted);
            }
        }
        // Anything else is a late or unasked reply: ignored.
    }

    fn choose_source(&mut self, now_ms: u64) {
        // Longest first; ties in random order so one peer is not always
        // the one everybody reads from.
        self.sources.shuffle(&mut self.rng);
        self.sources.sort_by_key(|s| std::cmp::Reverse(s.0));
        match self.sources.first() {
            None => {
                // Nobody answered: try again a few times, then give up
                // (validators that cannot serve their history, say of an
                // older version, must not keep this node out of consensus).
                self.probe_rounds += 1;
                if self.probe_rounds >= MAX_PROBE_ROUNDS {
                    self.finish(now_ms)
                } else {
                    self.wait(now_ms)
                }
            }
            Some((0, _)) => self.finish(now_ms),
            Some((end, _)) => {
                self.progress.end = *end;
                self.progress.position = 0;
                self.list(now_ms);
            }
        }
    }

    fn wait(&mut self, now_ms: u64) {
        self.progress.phase = Phase::Waiting;
        self.retry_at_ms = now_ms + RETRY_MS;
        self.sources.clear();
    }

    fn finish(&mut self, now_ms: u64) {
        self.progress.phase = Phase::Done;
        self.progress.finished_ms = Some(now_ms);
        self.page = Page::default();
    }

    fn list(&mut self, now_ms: u64) {
        let Some((_, source)) = self.sources.first().copied() else {
            // Every source failed: what was walked stays accepted, and the
            // rest reaches this node through consensus.
            return self.finish(now_ms);
        };
        self.progress.phase = Phase::Listing;
        self.progress.source = Some(source);
        let tag = self.send(
            source,
            BootstrapRequest::Log {
                from: self.progress.position,
            },
        );
        self.listing = Some((tag, source));
    }

    fn on_page(
        &mut self,
        now_ms: u64,
        reply: BootstrapReply,
        is_accepted: &dyn Fn(&VertexId) -> bool,
    ) {
        let BootstrapReply::Log { ids, end } = reply else {
            // The source failed: the next one continues from the same
            // position (logs differ in order, not in what is accepted;
            // anything skipped reaches this node through consensus).
            self.sources.remove(0);
            return self.list(now_ms);
        };
        self.progress.end = self.progress.end.max(end);
        if ids.is_empty() {
            return self.finish(now_ms);
        }
        self.progress.position += ids.len() as u64;
        let (known, unknown): (Vec<VertexId>, Vec<VertexId>) =
            ids.into_iter().partition(|id| is_accepted(id));
        self.progress.known += known.len() as u64;
        if unknown.is_empty() {
            return self.list(now_ms);
        }
        self.page = Page {
            ids: unknown.clone(),
            ..Page::default()
        };
        self.progress.phase = Phase::Confirming;
        for peer in self.others() {
            let tag = self.send(
                peer,
                BootstrapRequest::Accepted {
                    ids: unknown.clone(),
                },
            );
            self.page.asked.insert(tag, peer);
        }
    }

    fn on_confirmations(&mut self, from: NodeId, flags: &[bool]) {
        if flags.len() != self.page.ids.len() {
            return;
        }
        let weight = self.validators.weight(&from);
        for (id, yes) in self.page.ids.iter().zip(flags) {
            if *yes {
                *self.page.confirmations.entry(*id).or_insert(0) += weight;
                self.page.confirmers.entry(*id).or_default().push(from);
            }
        }
    }

    /// More than half of the weight of the validators other than this node.
    fn confirmed(&self, id: &VertexId) -> bool {
        let others: u64 = self
            .validators
            .iter()
            .filter(|(id, _)| *id != self.me)
            .map(|(_, w)| w)
            .sum();
        self.page.confirmations.get(id).copied().unwrap_or(0) * 2 > others
    }

    /// Once every validator answered (or every id is confirmed), fetches
    /// the confirmed ids.
    fn maybe_fetch(&mut self, now_ms: u64, is_accepted: &dyn Fn(&VertexId) -> bool) {
        let all_confirmed = self.page.ids.iter().all(|id| self.confirmed(id));
        if !self.page.asked.is_empty() && !all_confirmed {
            return;
        }
        self.page.asked.clear();
        let confirmed: Vec<VertexId> = self
            .page
            .ids
            .iter()
            .filter(|id| self.confirmed(id))
            .copied()
            .collect();
        self.progress.unconfirmed += (self.page.ids.len() - confirmed.len()) as u64;
        if confirmed.is_empty() {
            self.barren_pages += 1;
            if self.barren_pages >= MAX_BARREN_PAGES {
                self.barren_pages = 0;
                self.sources.remove(0);
            }
            return self.list(now_ms);
        }
        self.barren_pages = 0;
        self.progress.phase = Phase::Fetching;
        for id in &confirmed {
            self.page.wanted.insert(*id, Vec::new());
        }
        self.request_wanted(confirmed, is_accepted);
        if self.page.fetches.is_empty() {
            self.finish_page(now_ms, is_accepted);
        }
    }

    /// Asks for `ids` (already in `wanted`), each from the next peer to
    /// try: the source, then validators that confirmed it, then any.
    fn request_wanted(&mut self, ids: Vec<VertexId>, is_accepted: &dyn Fn(&VertexId) -> bool) {
        let source = self.sources.first().map(|(_, s)| *s);
        let others = self.others();
        let mut by_peer: HashMap<NodeId, Vec<VertexId>> = HashMap::new();
        for id in ids {
            if is_accepted(&id) {
                self.page.wanted.remove(&id);
                continue;
            }
            let tried = self.page.wanted.get(&id).cloned().unwrap_or_default();
            if tried.len() >= MAX_FETCH_TRIES {
                self.page.wanted.remove(&id);
                continue;
            }
            let confirmers = self.page.confirmers.get(&id).cloned().unwrap_or_default();
            let next = source
                .into_iter()
                .chain(confirmers)
                .chain(others.iter().copied())
                .find(|p| !tried.contains(p));
            match next {
                Some(peer) => {
                    if let Some(tried) = self.page.wanted.get_mut(&id) {
                        tried.push(peer);
                    }
                    by_peer.entry(peer).or_default().push(id);
                }
                None => {
                    self.page.wanted.remove(&id);
                }
            }
        }
        let mut by_peer: Vec<_> = by_peer.into_iter().collect();
        by_peer.sort();
        for (peer, ids) in by_peer {
            for chunk in ids.chunks(MAX_FETCH_IDS) {
                let tag = self.send(
                    peer,
                    BootstrapRequest::Fetch {
                        ids: chunk.to_vec(),
                    },
                );
                self.page.fetches.insert(tag, (peer, chunk.to_vec()));
            }
        }
    }

    fn on_vertices(
        &mut self,
        asked: Vec<VertexId>,
        vertices: Vec<Vertex>,
        is_accepted: &dyn Fn(&VertexId) -> bool,
    ) {
        let mut parents = Vec::new();
        for vertex in vertices {
            let id = vertex.id();
            // Only what was asked of this peer: anything else is unasked.
            if !asked.contains(&id) || self.page.got.contains_key(&id) {
                continue;
            }
            self.progress.fetched_vertices += 1;
            self.progress.fetched_bytes += vertex.encode().len() as u64;
            for parent in vertex.parents() {
                let known = is_accepted(parent)
                    || self.page.got.contains_key(parent)
                    || self.page.wanted.contains_key(parent);
                if !known && self.page.wanted.len() + self.page.got.len() < MAX_BATCH {
                    self.page.wanted.insert(*parent, Vec::new());
                    parents.push(*parent);
                }
            }
            self.page.wanted.remove(&id);
            self.page.got.insert(id, vertex);
        }
        // Asked and not delivered (a response budget cut it short, or the
        // peer lacks it): asked again of the next peer.
        let mut again: Vec<VertexId> = asked
            .into_iter()
            .filter(|id| self.page.wanted.contains_key(id))
            .collect();
        again.extend(parents);
        if !again.is_empty() {
            self.request_wanted(again, is_accepted);
        }
    }

    /// Hands out the fetched vertices parents-first and reads the next page.
    fn finish_page(&mut self, now_ms: u64, is_accepted: &dyn Fn(&VertexId) -> bool) {
        let mut waiting: Vec<Vertex> = std::mem::take(&mut self.page.got).into_values().collect();
        waiting.sort_by_key(|v| v.id());
        let mut placed: HashSet<VertexId> = HashSet::new();
        loop {
            let before = placed.len();
            let mut still = Vec::new();
            for vertex in waiting {
                let ready = vertex
                    .parents()
                    .iter()
                    .all(|p| placed.contains(p) || is_accepted(p));
                if ready {
                    placed.insert(vertex.id());
                    self.ready.push(vertex);
                } else {
                    still.push(vertex);
                }
            }
            waiting = still;
            if waiting.is_empty() || placed.len() == before {
                break;
            }
        }
        self.progress.missed += (waiting.len() + self.page.wanted.len()) as u64;
        self.progress.ready_vertices += placed.len() as u64;
        self.page = Page::default();
        self.list(now_ms);
    }
}

#[cfg(test)]
mod tests;
