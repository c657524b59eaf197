//! Bootstrapping: catching up on accepted history from the validators
//! without polling it again. A pure state machine like the engine: the
//! driver carries out its requests and hands it the replies.
//!
//! Modelled on avalanchego's bootstrapper (accepted frontier, then
//! ancestors in bounded batches, then execution without polling), with the
//! frontier replaced by each node's *accepted log*: the ids it accepted, in
//! the order it accepted them, which is parents-first. The walk:
//!
//! 1. **Probe**: ask every validator how long its log is. The length that
//!    validators holding a majority of the answering weight reach is the
//!    target, which no single liar can move; the source is drawn among the
//!    logs that reach it (the others are fallbacks, each read from the top).
//! 2. **List**: read one page (up to 1,024 ids) of the source's log, drop
//!    repeated ids and the ids accepted here already (a restarted walk skips
//!    quickly). A source that fails, or whose log ends while this node
//!    holds fewer accepted vertices than the target, is replaced by the
//!    next; pages per source are bounded by the target.
//! 3. **Confirm**: ask every validator which of the remaining ids it has
//!    accepted; an id is confirmed when validators holding more than half of
//!    the other validators' weight say so (each counted once, at its current
//!    weight). With less than a third of the weight Byzantine, a confirmed
//!    id was accepted by an honest validator, and by consensus safety every
//!    honest node accepts it: a lying source can omit vertices (they then
//!    reach this node through consensus) but never insert one.
//! 4. **Fetch** the confirmed vertices (from the source, else from a
//!    validator that confirmed them), at most 256 per request and 4 MiB per
//!    response, a few requests at a time. A parent this node has not
//!    accepted is fetched too: an ancestor of an accepted vertex is
//!    accepted, and the child's id commits to it. The network layer checks
//!    every vertex's id and signature before it gets here.
//! 5. **Apply** parents first, as soon as a vertex's parents are in; the
//!    driver hands each vertex to [`crate::Engine::accept_bootstrapped`],
//!    which records it as accepted (durable at the next flush) unpolled.
//!
//! Memory is bounded: one page of ids, at most [`MAX_BATCH`] vertices and
//! [`MAX_BATCH_BYTES`] of fetched content waiting for their parents, and a
//! few responses in flight. Every request times out. Progress is what was
//! recorded, so a walk interrupted by a crash starts again from the top and
//! skips what it already has.

use crate::validators::ValidatorSet;
use agentmesh_protocol::consensus_wire::{MAX_FETCH_IDS, MAX_LOG_IDS};
use agentmesh_protocol::{NodeId, Vertex, VertexId};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{HashMap, HashSet, VecDeque};

/// The driver's handle on a request, echoed with its reply.
pub type Tag = u64;

/// Most vertices of one page held at once (its ids and missing ancestors).
pub const MAX_BATCH: usize = 4096;
/// Most bytes of fetched vertices held while they wait for their parents.
pub const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;
/// Fetch requests in flight at once (each answer is at most 5 MiB).
const MAX_FETCHES_IN_FLIGHT: usize = 4;
/// Peers asked for one vertex before it is given up for this walk.
const MAX_FETCH_TRIES: usize = 3;
/// A fetch answer at least this large was cut short by the responder's
/// budget: the peer may be asked for the rest without that counting as a
/// try (a smaller partial answer counts, so a peer cannot drip vertices
/// one at a time forever).
const FULL_ANSWER_BYTES: u64 = (agentmesh_protocol::consensus_wire::FETCH_RESPONSE_BUDGET
    - agentmesh_protocol::vertex::MAX_VERTEX_BYTES) as u64;
/// A request without a reply by then counts as failed (the network layer
/// times requests out sooner; this also covers a reply lost on the way).
const REQUEST_TIMEOUT_MS: u64 = 15_000;
/// How long to wait before probing again when no validator answered.
const RETRY_MS: u64 = 5_000;
/// How long the validator set must stay unchanged before the walk starts:
/// a node that just started connects to its peers one by one, and a
/// quorum counted among the first to answer would be a quorum of few...
const SETTLE_MS: u64 = 2_000;
/// ...but a set that keeps changing does not keep the walk from starting.
const MAX_SETTLE_MS: u64 = 30_000;
/// Probe rounds without any answer before the walk is given up.
const MAX_PROBE_ROUNDS: u32 = 3;
/// Pages in a row with nothing confirmed before a source's walk ends.
const MAX_BARREN_PAGES: u32 = 3;
/// Pages read from one source beyond what the target length needs.
const EXTRA_PAGES: u64 = 16;

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
    /// Ids of this page not accepted here, once each, in log order.
    ids: Vec<VertexId>,
    confirmers: HashMap<VertexId, HashSet<NodeId>>,
    /// Outstanding acceptance queries.
    asked: HashMap<Tag, NodeId>,
    /// Vertices to fetch, not delivered yet, and the peers tried for each.
    wanted: HashMap<VertexId, Vec<NodeId>>,
    /// Wanted vertices not requested at the moment.
    queue: VecDeque<VertexId>,
    /// Delivered vertices waiting for their parents: their size and how
    /// many parents are still missing.
    got: HashMap<VertexId, (Vertex, u64, usize)>,
    /// Missing parent → held vertices waiting for it.
    children: HashMap<VertexId, Vec<VertexId>>,
    got_bytes: u64,
    /// Vertices handed out during this page.
    placed: HashSet<VertexId>,
    fetches: HashMap<Tag, (NodeId, Vec<VertexId>)>,
}

pub struct Bootstrapper {
    me: NodeId,
    rng: SmallRng,
    validators: ValidatorSet,
    next_tag: Tag,
    /// Every request awaiting its reply: the peer asked and when.
    outstanding: HashMap<Tag, (NodeId, u64)>,
    probes: HashMap<Tag, NodeId>,
    /// Sources by log length, longest first; the first is in use.
    sources: Vec<(u64, NodeId)>,
    /// The log length validators holding a majority of the answering
    /// weight reach.
    target_end: u64,
    /// Pages read from the current source.
    pages_read: u64,
    /// Vertices accepted here, as the driver last said (see
    /// [`Bootstrapper::set_accepted_len`]): a source whose log ends while
    /// this node holds fewer than the target length omitted something (or
    /// its vertices could not be applied), and the next one is read.
    accepted_len: u64,
    listing: Option<Tag>,
    page: Page,
    /// When the validator set last changed, and when it first had others.
    set_changed_ms: u64,
    first_validators_ms: Option<u64>,
    barren_pages: u32,
    probe_rounds: u32,
    retry_at_ms: u64,
    requests: Vec<(Tag, NodeId, BootstrapRequest)>,
    ready: Vec<Vertex>,
    progress: BootstrapProgress,
}

type IsAccepted<'a> = &'a dyn Fn(&VertexId) -> bool;

impl Bootstrapper {
    pub fn new(me: NodeId, seed: u64) -> Bootstrapper {
        Bootstrapper {
            me,
            rng: SmallRng::seed_from_u64(seed),
            validators: ValidatorSet::default(),
            next_tag: 1,
            outstanding: HashMap::new(),
            probes: HashMap::new(),
            sources: Vec::new(),
            target_end: 0,
            pages_read: 0,
            accepted_len: 0,
            listing: None,
            page: Page::default(),
            set_changed_ms: 0,
            first_validators_ms: None,
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
    /// validators to ask and the walk has not ended, which it does in
    /// bounded time). Otherwise they would be polled one by one, the very
    /// thing bootstrapping avoids; those still undecided come back after
    /// the walk, named by queries and by their descendants (avalanchego
    /// likewise drops consensus messages while it bootstraps).
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

    fn others_weight(&self) -> u64 {
        self.validators
            .iter()
            .filter(|(id, _)| *id != self.me)
            .map(|(_, w)| w)
            .sum()
    }

    fn send(&mut self, now_ms: u64, peer: NodeId, request: BootstrapRequest) -> Tag {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.requests.push((tag, peer, request));
        self.outstanding.insert(tag, (peer, now_ms));
        tag
    }

    /// Periodic work: fails overdue requests, and starts the walk once
    /// there are validators to ask and their set has settled.
    /// `validators` is the current set.
    pub fn tick(&mut self, now_ms: u64, validators: &ValidatorSet, is_accepted: IsAccepted) {
        if validators.version() != self.validators.version() || self.validators.is_empty() {
            if validators.version() != self.validators.version() {
                self.set_changed_ms = now_ms;
            }
            self.validators = validators.clone();
        }
        let mut overdue: Vec<(Tag, NodeId)> = self
            .outstanding
            .iter()
            .filter(|(_, (_, sent))| now_ms >= sent + REQUEST_TIMEOUT_MS)
            .map(|(tag, (peer, _))| (*tag, *peer))
            .collect();
        overdue.sort();
        for (tag, peer) in overdue {
            self.on_reply(now_ms, tag, peer, BootstrapReply::Failed, is_accepted);
        }
        if self.others().is_empty() {
            return;
        }
        let first = *self.first_validators_ms.get_or_insert(now_ms);
        let settled = now_ms >= self.set_changed_ms + SETTLE_MS || now_ms >= first + MAX_SETTLE_MS;
        if self.progress.phase != Phase::Waiting || now_ms < self.retry_at_ms || !settled {
            return;
        }
        self.progress.started_ms.get_or_insert(now_ms);
        self.progress.phase = Phase::Probing;
        for peer in self.others() {
            let tag = self.send(now_ms, peer, BootstrapRequest::LogLength);
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
        is_accepted: IsAccepted,
    ) {
        // Only a reply to a request still awaited, from the peer asked:
        // anything else is late, repeated or unasked, and ignored.
        if self.outstanding.get(&tag).map(|(peer, _)| *peer) != Some(from) {
            return;
        }
        self.outstanding.remove(&tag);
        if self.probes.remove(&tag).is_some() {
            if let BootstrapReply::Log { end, .. } = reply {
                self.sources.push((end, from));
            }
            if self.probes.is_empty() {
                self.choose_source(now_ms);
            }
        } else if self.listing == Some(tag) {
            self.listing = None;
            self.on_page(now_ms, reply, is_accepted);
        } else if self.page.asked.remove(&tag).is_some() {
            if let BootstrapReply::Accepted(flags) = reply {
                self.on_confirmations(from, &flags);
            }
            self.maybe_fetch(now_ms, is_accepted);
        } else if let Some((_, asked)) = self.page.fetches.remove(&tag) {
            let vertices = match reply {
                BootstrapReply::Vertices(vertices) => vertices,
                _ => Vec::new(),
            };
            self.on_vertices(from, asked, vertices, is_accepted);
            self.after_fetch(now_ms, is_accepted);
        }
    }

    fn choose_source(&mut self, now_ms: u64) {
        if self.sources.is_empty() {
            // Nobody answered: try again a few times, then give up
            // (validators that cannot serve their history, say of an
            // older version, must not keep this node out of consensus).
            self.probe_rounds += 1;
            if self.probe_rounds >= MAX_PROBE_ROUNDS {
                return self.finish(now_ms);
            }
            self.progress.phase = Phase::Waiting;
            self.retry_at_ms = now_ms + RETRY_MS;
            return;
        }
        self.sources.sort_by_key(|s| std::cmp::Reverse(s.0));
        let answering: u64 = self
            .sources
            .iter()
            .map(|(_, p)| self.validators.weight(p))
            .sum();
        let mut reached = 0;
        self.target_end = 0;
        for (end, peer) in &self.sources {
            reached += self.validators.weight(peer);
            if reached * 2 > answering {
                self.target_end = *end;
                break;
            }
        }
        self.progress.end = self.target_end;
        if self.target_end == 0 || self.accepted_len >= self.target_end {
            return self.finish(now_ms);
        }
        // Sources that reach the target, in random order (so a liar
        // claiming an endless log is not always read first, and one peer
        // is not the one everybody reads from), then the shorter ones.
        let target = self.target_end;
        self.sources.shuffle(&mut self.rng);
        self.sources
            .sort_by_key(|s| std::cmp::Reverse(s.0.min(target)));
        self.start_source(now_ms);
    }

    /// Reads the first source from the top.
    fn start_source(&mut self, now_ms: u64) {
        self.progress.position = 0;
        self.pages_read = 0;
        self.barren_pages = 0;
        self.list(now_ms);
    }

    /// How many vertices this node has accepted; the driver says so before
    /// each call (a walk is complete when it holds the target length).
    pub fn set_accepted_len(&mut self, accepted: u64) {
        self.accepted_len = accepted;
    }

    /// The current source's log is over (it ended, ran out of its page
    /// budget or kept listing nothing confirmable): done if this node now
    /// holds the target length, else the next source.
    fn end_of_source(&mut self, now_ms: u64) {
        if self.accepted_len + self.ready.len() as u64 >= self.target_end {
            self.finish(now_ms)
        } else {
            self.next_source(now_ms)
        }
    }

    /// The current source failed or misbehaved: the next one, from the top
    /// (logs list the same accepted vertices in different orders).
    fn next_source(&mut self, now_ms: u64) {
        if !self.sources.is_empty() {
            self.sources.remove(0);
        }
        if self.sources.is_empty() {
            // What was walked stays accepted; the rest reaches this node
            // through consensus.
            return self.finish(now_ms);
        }
        self.start_source(now_ms);
    }

    fn finish(&mut self, now_ms: u64) {
        self.progress.phase = Phase::Done;
        self.progress.finished_ms = Some(now_ms);
        self.page = Page::default();
        self.probes.clear();
        self.listing = None;
        self.outstanding.clear();
    }

    fn list(&mut self, now_ms: u64) {
        let Some((_, source)) = self.sources.first().copied() else {
            return self.finish(now_ms);
        };
        let budget = self.target_end.div_ceil(MAX_LOG_IDS as u64) + EXTRA_PAGES;
        if self.pages_read >= budget {
            return self.end_of_source(now_ms);
        }
        self.pages_read += 1;
        self.progress.phase = Phase::Listing;
        self.progress.source = Some(source);
        let from = self.progress.position;
        self.listing = Some(self.send(now_ms, source, BootstrapRequest::Log { from }));
    }

    /// A page with nothing confirmed in it: a few in a row end the source
    /// (at the tail of a busy log, the others may not have accepted the
    /// newest entries yet; a source listing made-up ids gets no further).
    fn barren(&mut self, now_ms: u64) {
        self.barren_pages += 1;
        if self.barren_pages < MAX_BARREN_PAGES {
            self.list(now_ms)
        } else {
            self.end_of_source(now_ms)
        }
    }

    fn on_page(&mut self, now_ms: u64, reply: BootstrapReply, is_accepted: IsAccepted) {
        let BootstrapReply::Log { ids, .. } = reply else {
            return self.next_source(now_ms);
        };
        if ids.is_empty() {
            return self.end_of_source(now_ms);
        }
        self.progress.position += ids.len() as u64;
        let mut seen = HashSet::new();
        let mut unknown = Vec::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            if is_accepted(&id) {
                self.progress.known += 1;
            } else {
                unknown.push(id);
            }
        }
        if unknown.is_empty() {
            // Nothing new: normal for a restarted node (the page budget
            // bounds a source that lists the same ids again and again).
            return self.list(now_ms);
        }
        self.page = Page {
            ids: unknown.clone(),
            ..Page::default()
        };
        self.progress.phase = Phase::Confirming;
        for peer in self.others() {
            let tag = self.send(
                now_ms,
                peer,
                BootstrapRequest::Accepted {
                    ids: unknown.clone(),
                },
            );
            self.page.asked.insert(tag, peer);
        }
        self.maybe_fetch(now_ms, is_accepted);
    }

    fn on_confirmations(&mut self, from: NodeId, flags: &[bool]) {
        if flags.len() != self.page.ids.len() {
            return;
        }
        for (id, yes) in self.page.ids.iter().zip(flags) {
            if *yes {
                self.page.confirmers.entry(*id).or_default().insert(from);
            }
        }
    }

    /// Validators holding more than half of the weight of the validators
    /// other than this node (each once, at its current weight) accepted it.
    fn confirmed(&self, id: &VertexId) -> bool {
        let weight: u64 = self.page.confirmers.get(id).map_or(0, |peers| {
            peers.iter().map(|p| self.validators.weight(p)).sum()
        });
        weight * 2 > self.others_weight()
    }

    /// Once every validator answered (or every id is confirmed), fetches
    /// the confirmed ids.
    fn maybe_fetch(&mut self, now_ms: u64, is_accepted: IsAccepted) {
        let all_confirmed = self.page.ids.iter().all(|id| self.confirmed(id));
        if !self.page.asked.is_empty() && !all_confirmed {
            return;
        }
        for tag in self.page.asked.keys() {
            self.outstanding.remove(tag);
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
            return self.barren(now_ms);
        }
        self.barren_pages = 0;
        self.progress.phase = Phase::Fetching;
        for id in confirmed {
            self.page.wanted.insert(id, Vec::new());
            self.page.queue.push_back(id);
        }
        self.issue_fetches(now_ms, is_accepted);
        self.after_fetch(now_ms, is_accepted);
    }

    /// Sends fetches for queued ids while few are in flight and little is
    /// held, each id to the next peer to try: the source, then validators
    /// that confirmed it, then any.
    fn issue_fetches(&mut self, now_ms: u64, is_accepted: IsAccepted) {
        let source = self.sources.first().map(|(_, s)| *s);
        let others = self.others();
        while self.page.fetches.len() < MAX_FETCHES_IN_FLIGHT
            && self.page.got_bytes < MAX_BATCH_BYTES
            && !self.page.queue.is_empty()
        {
            let mut by_peer: HashMap<NodeId, Vec<VertexId>> = HashMap::new();
            while let Some(id) = self.page.queue.pop_front() {
                if is_accepted(&id) || !self.page.wanted.contains_key(&id) {
                    self.page.wanted.remove(&id);
                    continue;
                }
                let tried = self.page.wanted.get(&id).cloned().unwrap_or_default();
                let confirmers: Vec<NodeId> = self
                    .page
                    .confirmers
                    .get(&id)
                    .map(|c| c.iter().copied().collect())
                    .unwrap_or_default();
                let next = source
                    .into_iter()
                    .chain(confirmers)
                    .chain(others.iter().copied())
                    .find(|p| !tried.contains(p));
                match next.filter(|_| tried.len() < MAX_FETCH_TRIES) {
                    Some(peer)
                        if !by_peer.contains_key(&peer)
                            && self.page.fetches.len() + by_peer.len() >= MAX_FETCHES_IN_FLIGHT =>
                    {
                        // No room for another request now.
                        self.page.queue.push_front(id);
                        break;
                    }
                    Some(peer) => {
                        if let Some(tried) = self.page.wanted.get_mut(&id) {
                            tried.push(peer);
                        }
                        let ids = by_peer.entry(peer).or_default();
                        ids.push(id);
                        if ids.len() >= MAX_FETCH_IDS {
                            break;
                        }
                    }
                    None => {
                        self.page.wanted.remove(&id);
                    }
                }
            }
            if by_peer.is_empty() {
                return;
            }
            let mut by_peer: Vec<_> = by_peer.into_iter().collect();
            by_peer.sort();
            for (peer, ids) in by_peer {
                let tag = self.send(now_ms, peer, BootstrapRequest::Fetch { ids: ids.clone() });
                self.page.fetches.insert(tag, (peer, ids));
            }
        }
    }

    fn on_vertices(
        &mut self,
        from: NodeId,
        asked: Vec<VertexId>,
        vertices: Vec<Vertex>,
        is_accepted: IsAccepted,
    ) {
        let mut delivered_bytes = 0;
        for vertex in vertices {
            let id = vertex.id();
            // Only what was asked of this peer and is still wanted.
            if !asked.contains(&id) || !self.page.wanted.contains_key(&id) {
                continue;
            }
            let size = vertex.encode().len() as u64;
            self.progress.fetched_vertices += 1;
            self.progress.fetched_bytes += size;
            delivered_bytes += size;
            self.page.wanted.remove(&id);
            let mut missing = 0;
            for parent in vertex.parents() {
                if self.page.placed.contains(parent) || is_accepted(parent) {
                    continue;
                }
                missing += 1;
                self.page.children.entry(*parent).or_default().push(id);
                let known =
                    self.page.got.contains_key(parent) || self.page.wanted.contains_key(parent);
                let held = self.page.wanted.len() + self.page.got.len();
                if !known && held < MAX_BATCH {
                    self.page.wanted.insert(*parent, Vec::new());
                    self.page.queue.push_back(*parent);
                }
            }
            self.page.got.insert(id, (vertex, size, missing));
            self.page.got_bytes += size;
            if missing == 0 {
                self.place(id);
            }
        }
        // Asked and not delivered: asked again, of the next peer; of the
        // same one without that counting as a try only if its answer was
        // cut short by its response budget.
        let cut_short = delivered_bytes >= FULL_ANSWER_BYTES;
        for id in asked.iter().rev() {
            if let Some(tried) = self.page.wanted.get_mut(id) {
                if cut_short {
                    tried.retain(|p| *p != from);
                }
                self.page.queue.push_front(*id);
            }
        }
    }

    /// Hands out a held vertex whose parents are all in, then every held
    /// descendant that this completes (each vertex once: linear in what is
    /// held).
    fn place(&mut self, id: VertexId) {
        let mut ready = vec![id];
        while let Some(id) = ready.pop() {
            let Some((vertex, size, _)) = self.page.got.remove(&id) else {
                continue;
            };
            self.page.got_bytes -= size;
            self.page.placed.insert(id);
            self.progress.ready_vertices += 1;
            self.ready.push(vertex);
            for child in self.page.children.remove(&id).unwrap_or_default() {
                if let Some((_, _, missing)) = self.page.got.get_mut(&child) {
                    *missing -= 1;
                    if *missing == 0 {
                        ready.push(child);
                    }
                }
            }
        }
    }

    /// More fetches, or the page is over: what could not be fetched or
    /// ordered is counted as missed, and the next page is read.
    fn after_fetch(&mut self, now_ms: u64, is_accepted: IsAccepted) {
        self.issue_fetches(now_ms, is_accepted);
        if !self.page.fetches.is_empty() || self.progress.phase != Phase::Fetching {
            return;
        }
        self.progress.missed += (self.page.got.len() + self.page.wanted.len()) as u64;
        self.page = Page::default();
        self.list(now_ms);
    }
}

#[cfg(test)]
mod tests;
