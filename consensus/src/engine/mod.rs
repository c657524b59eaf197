//! The Avalanche engine as a pure state machine.
//!
//! Callers feed it inputs (a vertex arrived, a query arrived, votes arrived,
//! a query failed, a local proposal, a tick) together with the current time,
//! and collect [`Output`]s to carry out: send a query, answer one, broadcast
//! or fetch vertices, announce decisions, graylist a peer. It owns no
//! sockets, clocks or threads, so the node and the simulator drive the very
//! same code.
//!
//! Model: every undecided ("processing") vertex keeps a streak of
//! consecutive successful polls; every conflict key with more than one
//! candidate vertex keeps Snowball counters. A yes vote for a vertex is a
//! yes vote for all of its undecided ancestors (chits). A vertex is accepted
//! once its parents are accepted and each of its transactions is accepted:
//! an uncontested one after `beta_virtuous` consecutive successes, a
//! contested one after `beta_rogue` consecutive successes in its conflict
//! set. Accepting a vertex rejects its rivals and, transitively, their
//! descendants. Decided vertices leave memory for the [`History`].

mod decide;
mod insert;
mod poll;

use crate::graylist::{Graylist, Misbehaviour};
use crate::history::{Decision, History, HistoryError};
use crate::params::{Params, ParamsError};
use crate::snowball::ConflictSet;
use crate::timeouts::Timeouts;
use crate::validators::ValidatorSet;
use agentmesh_protocol::{NodeId, NodeKey, Transaction, Vertex, VertexError, VertexId};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

pub type PollId = u64;
/// The driver's handle for an inbound request it must answer.
pub type RequestId = u64;

/// What the engine asks its driver to do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send `Query { ids }` to each peer; report answers with
    /// [`Engine::on_votes`] and failures with [`Engine::on_query_failed`].
    Query {
        poll: PollId,
        peers: Vec<NodeId>,
        ids: Vec<VertexId>,
    },
    /// Answer an inbound query.
    Votes {
        to: NodeId,
        request: RequestId,
        votes: Vec<bool>,
        /// Accepted rivals of queried vertices this node rejected.
        hints: Vec<VertexId>,
        /// Some votes or hints rest on decisions read from the history:
        /// the driver must not send them before those are durable.
        decided: bool,
    },
    /// Gossip a vertex this node proposed.
    Broadcast(Vertex),
    /// Ask `from` for these vertices; hand them to [`Engine::on_vertex`].
    Fetch { from: NodeId, ids: Vec<VertexId> },
    /// Answer an inbound fetch.
    Vertices {
        to: NodeId,
        request: RequestId,
        vertices: Vec<Vertex>,
    },
    /// A vertex was finally accepted or rejected.
    Decided { vertex: Vertex, decision: Decision },
    /// A peer is left out of samples until `until_ms`.
    Graylisted {
        peer: NodeId,
        reason: Misbehaviour,
        until_ms: u64,
    },
    /// The history failed a read or a write: the engine has stopped, and
    /// nothing it decided or would vote on that history leaves it.
    Halted(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("{0} undecided transactions are in flight; retry when some are decided")]
    Busy(usize),
    #[error(transparent)]
    Invalid(#[from] VertexError),
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The engine stopped after its history failed.
    #[error("consensus has stopped: {0}")]
    Halted(String),
}

/// Why a vertex handed over by bootstrapping was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapRefusal {
    /// This node rejected it: a quorum of validators and this node
    /// disagree, which consensus safety rules out; reported, never applied.
    #[error("this node rejected vertex {0}, which a quorum of validators reports accepted")]
    Rejected(VertexId),
    #[error("vertex {0} has a parent this node has not accepted")]
    ParentNotAccepted(VertexId),
    /// This node accepted a different vertex for one of its keys.
    #[error("vertex {vertex} conflicts with accepted vertex {winner} on key {key}")]
    Conflict {
        vertex: VertexId,
        winner: VertexId,
        key: String,
    },
    #[error("consensus has stopped: {0}")]
    Halted(String),
}

/// Where a vertex stands, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VertexStatus {
    Unknown,
    /// Waiting for missing ancestors.
    Pending,
    /// Being polled; `confidence` is the weakest consecutive-success streak
    /// among its transactions.
    Processing {
        confidence: u32,
        preferred: bool,
    },
    Accepted,
    Rejected,
}

/// Undecided candidates for one conflict key.
#[derive(Debug)]
enum KeyState {
    Single(VertexId),
    Contested(ConflictSet),
}

#[derive(Debug)]
struct Processing {
    vertex: Vertex,
    height: u64,
    children: Vec<VertexId>,
    /// Consecutive polls in which this vertex got an alpha majority.
    streak: u32,
    /// Polls in which it drew α-preference (successful polls), counted
    /// while it has no rival: if one appears, they are its preference
    /// strength in the new conflict set, as if the set had existed all
    /// along (see `ConflictSet::new`).
    wins: u32,
    /// This node has answered a peer's query with a yes for it (or for a
    /// descendant, which is a yes for it): its initial preference is final
    /// (see `ConflictSet::vouch`).
    vouched: bool,
    /// Conflict keys of its transactions that have rivals, so the common
    /// case (nothing contested) costs nothing per transaction.
    contested: Vec<String>,
}

impl Processing {
    /// Some transaction has no rival (its acceptance follows `streak`).
    fn has_uncontested(&self) -> bool {
        self.vertex.transactions().len() > self.contested.len()
    }
}

#[derive(Debug)]
struct Pending {
    vertex: Vertex,
    missing: HashSet<VertexId>,
    since_ms: u64,
}

#[derive(Debug)]
struct FetchState {
    sent_ms: u64,
    /// Peers asked so far, in order (one per attempt).
    asked: Vec<NodeId>,
    /// Peers not yet asked that claim to hold the vertex (they sent a
    /// vertex naming it as a parent, or named it in a query or a hint): a
    /// retry asks one of them at random before anyone else, since a random
    /// peer may well not have it (half the network, for one side of an
    /// equivocation). At random, so that a peer naming a vertex it does not
    /// serve cannot take every attempt.
    holders: Vec<NodeId>,
    /// A peer named the vertex itself (a query, a hint): it is wanted even
    /// when no pending vertex waits for it, and a lost answer is retried.
    named: bool,
}

/// Tracking state of one poll.
#[derive(Debug)]
struct Poll {
    ids: Vec<VertexId>,
    /// Validators drawn (each once); a voter's index is its bit in the masks.
    voters: Vec<NodeId>,
    /// How many of the `k` draws fell on each voter: its votes count that
    /// many times.
    draws: Vec<u32>,
    /// Voters that answered, failed or were benched.
    answered: u64,
    yes: Vec<u64>,
    sent_ms: u64,
    deadline_ms: u64,
    repoll: bool,
    /// Some vertex it concerns has a rival when it started: its votes may
    /// be struck out as double votes, so it never ends on the fast path.
    contested: bool,
}

/// How many times a local transaction is re-proposed after its vertex was
/// rejected for reasons other than losing its own conflict.
const MAX_REISSUES: u8 = 5;
/// Ids of recently accepted vertices kept as parents for new proposals.
const RECENT_ACCEPTED: usize = 16;
/// Most orphaned local transactions remembered for re-proposal.
const MAX_ORPHANS: usize = 16_384;
/// Sequence numbers reserved per durable write of the next one.
const SEQ_LEASE: u64 = 1024;
/// Expired polls remembered for late answers' round trips.
const MAX_EXPIRED_POLLS: usize = 256;
/// Rejected vertices looked up for rival hints, per answered query.
const MAX_HINT_LOOKUPS: usize = 8;

pub struct Engine<H: History> {
    params: Params,
    key: NodeKey,
    /// This node's membership certificate, carried by the vertices it signs.
    certificate: Option<Vec<u8>>,
    me: NodeId,
    history: H,
    rng: SmallRng,
    validators: ValidatorSet,
    /// Validators other than this node, sorted: whom to fetch from.
    peers: Vec<NodeId>,
    graylist: Graylist,
    timeouts: Timeouts,

    processing: HashMap<VertexId, Processing>,
    /// Transactions in `processing`.
    processing_txs: usize,
    /// Processing vertices without processing children.
    leaves: BTreeSet<VertexId>,
    keys: HashMap<String, KeyState>,
    /// (author, seq) of processing vertices, to catch equivocation early.
    authored: HashMap<(NodeId, u64), VertexId>,
    unpolled: VecDeque<VertexId>,
    recent_accepted: VecDeque<VertexId>,

    pending: HashMap<VertexId, Pending>,
    /// Approximate bytes of `pending`.
    pending_bytes: usize,
    waiting: HashMap<VertexId, Vec<VertexId>>,
    fetching: HashMap<VertexId, FetchState>,

    polls: HashMap<PollId, Poll>,
    /// Recently expired polls and when they were sent, to measure answers
    /// that come late.
    expired: VecDeque<(PollId, u64)>,
    next_poll: PollId,
    /// Smoothed duration of polls that queried peers (ms).
    poll_ms: f64,
    next_repoll_ms: u64,
    /// Memo of "strongly preferred" answers, cleared when a preference moves.
    preferred_memo: HashMap<VertexId, bool>,

    /// The next sequence number to sign with (read from the history on
    /// first use) and the end of the block leased from it.
    next_seq: Option<u64>,
    seq_lease_end: u64,
    reissue: Vec<Transaction>,
    reissued: HashMap<String, u8>,
    /// Local transactions whose vertex was rejected while rivals for the
    /// same key were still undecided.
    orphans: HashMap<String, Transaction>,
    outputs: Vec<Output>,
    /// Vertices rejected on arrival (never processed), when, and the
    /// accepted rivals that beat them: in memory only (see
    /// `reject_unprocessed`).
    rejected_on_arrival: lru::LruCache<VertexId, (u64, Vec<VertexId>)>,
    /// Why the engine stopped: its history failed (see `halt_with`).
    halt: Option<String>,
    stats: EngineStats,
}

/// Vertices rejected on arrival remembered (about 100 bytes each).
const REJECTED_ON_ARRIVAL: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(16_384) {
    Some(n) => n,
    None => unreachable!(),
};

/// Counters for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub polls_started: u64,
    pub polls_succeeded: u64,
    pub accepted_vertices: u64,
    pub rejected_vertices: u64,
    pub accepted_transactions: u64,
    pub queries_answered: u64,
    /// Accepted on a quorum's word while bootstrapping, never polled.
    pub bootstrapped_vertices: u64,
    pub bootstrapped_transactions: u64,
}

impl<H: History> Engine<H> {
    /// Vertices signed from now on carry `certificate` (see
    /// `agentmesh_protocol::membership`).
    pub fn set_certificate(&mut self, certificate: Option<Vec<u8>>) {
        self.certificate = certificate;
    }

    /// `seed` drives peer sampling; the node passes OS randomness, the
    /// simulator a fixed seed.
    pub fn new(
        params: Params,
        key: NodeKey,
        history: H,
        seed: u64,
    ) -> Result<Engine<H>, ParamsError> {
        params.validate()?;
        let me = key.node_id();
        Ok(Engine {
            params,
            key,
            certificate: None,
            me,
            history,
            rng: SmallRng::seed_from_u64(seed),
            validators: ValidatorSet::default(),
            peers: Vec::new(),
            graylist: Graylist::default(),
            timeouts: Timeouts::default(),
            processing: HashMap::new(),
            processing_txs: 0,
            leaves: BTreeSet::new(),
            keys: HashMap::new(),
            authored: HashMap::new(),
            unpolled: VecDeque::new(),
            recent_accepted: VecDeque::new(),
            pending: HashMap::new(),
            pending_bytes: 0,
            waiting: HashMap::new(),
            fetching: HashMap::new(),
            polls: HashMap::new(),
            expired: VecDeque::new(),
            next_poll: 1,
            poll_ms: 0.0,
            next_repoll_ms: 0,
            preferred_memo: HashMap::new(),
            next_seq: None,
            seq_lease_end: 0,
            reissue: Vec::new(),
            reissued: HashMap::new(),
            orphans: HashMap::new(),
            outputs: Vec::new(),
            rejected_on_arrival: lru::LruCache::new(REJECTED_ON_ARRIVAL),
            halt: None,
            stats: EngineStats::default(),
        })
    }

    /// Why the engine stopped, if it did.
    pub fn halted(&self) -> Option<&str> {
        self.halt.as_deref()
    }

    /// Stops the engine for good (until the node restarts): a failed read
    /// answers "none", and a decision or vote resting on it could be wrong.
    pub(super) fn halt_with(&mut self, reason: String) {
        if self.halt.is_none() {
            self.halt = Some(reason.clone());
            self.outputs.push(Output::Halted(reason));
        }
    }

    /// Whether the engine's answers can be trusted: not halted, and no read
    /// of its history failed since (a driver reading the history for its
    /// own views asks this after reading).
    pub fn check_history(&mut self) -> bool {
        self.running()
    }

    /// Whether the engine may act: not halted, and its history sound.
    pub(super) fn running(&mut self) -> bool {
        if self.halt.is_none() {
            if let Some(fault) = self.history.fault() {
                self.halt_with(fault);
            }
        }
        self.halt.is_none()
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn history(&self) -> &H {
        &self.history
    }

    /// The history, for a restart: a new engine over it continues where
    /// this one stopped (what it finalized, its sequence numbers).
    pub fn into_history(self) -> H {
        self.history
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Everything the engine wants done since the last call. Once the
    /// history failed, only the news that the engine halted: whatever was
    /// decided or voted in the call that met the failure may rest on it.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.running();
        let outputs = std::mem::take(&mut self.outputs);
        if self.halt.is_some() {
            return outputs
                .into_iter()
                .filter(|o| matches!(o, Output::Halted(_)))
                .collect();
        }
        outputs
    }

    /// Who votes, from now on: only members are sampled and only their
    /// votes count. This node votes in its own polls only if it is a
    /// member. Polls already in flight keep the voters they drew (see
    /// docs/consensus.md on changes of the set).
    pub fn set_validators(&mut self, validators: ValidatorSet) {
        self.peers = validators
            .iter()
            .map(|(id, _)| id)
            .filter(|id| *id != self.me)
            .collect();
        self.timeouts.retain(|peer| validators.contains(peer));
        self.validators = validators;
    }

    pub fn validators(&self) -> &ValidatorSet {
        &self.validators
    }

    pub fn graylisted(&self, now_ms: u64) -> Vec<(NodeId, u64)> {
        self.graylist.graylisted(now_ms)
    }

    /// The share of validator weight benched now: graylisted validators,
    /// which count as a no in every poll that draws them, unqueried.
    pub fn benched_share(&self, now_ms: u64) -> f64 {
        let total = self.validators.total_weight();
        if total == 0 {
            return 0.0;
        }
        self.benched_weight(now_ms) as f64 / total as f64
    }

    fn benched_weight(&self, now_ms: u64) -> u64 {
        self.graylist
            .graylisted(now_ms)
            .iter()
            .map(|(peer, _)| self.validators.weight(peer))
            .sum()
    }

    /// How long a query to `peer` may take before it counts as a no.
    pub fn query_timeout_ms(&self, peer: &NodeId) -> u64 {
        self.timeouts.timeout_ms(peer, &self.params)
    }

    /// Every undecided vertex and where it stands.
    pub fn undecided(&self) -> Vec<(VertexId, VertexStatus)> {
        let mut all: Vec<_> = self
            .processing
            .keys()
            .chain(self.pending.keys())
            .map(|id| (*id, self.status(id)))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// Anything left to decide or to propose again.
    pub fn is_idle(&self) -> bool {
        self.processing.is_empty() && self.pending.is_empty() && self.reissue.is_empty()
    }

    pub fn processing_len(&self) -> usize {
        self.processing.len()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn polls_in_flight(&self) -> usize {
        self.polls.len()
    }

    /// A local proposal: signs a vertex of `transactions` on the preferred
    /// frontier, gossips it and starts polling it.
    pub fn propose(
        &mut self,
        now_ms: u64,
        transactions: Vec<Transaction>,
    ) -> Result<VertexId, ProposeError> {
        if !self.running() {
            return Err(self.halted_error());
        }
        if !self.has_room(transactions.len(), 1) {
            return Err(ProposeError::Busy(self.processing_txs));
        }
        let parents = self.choose_parents(now_ms);
        let seq = match self.next_seq {
            Some(seq) => seq,
            None => self.history.next_seq(),
        };
        if !self.running() {
            return Err(self.halted_error());
        }
        let vertex = Vertex::sign(&self.key, parents, seq, now_ms, transactions)?
            .with_certificate(self.certificate.as_deref());
        // Sequence numbers are leased from the history in blocks, and the
        // lease is durable before a vertex using it leaves: a node restarted
        // after a crash continues after the lease and never signs two
        // vertices with one number (numbers may be skipped; that is fine).
        if seq >= self.seq_lease_end {
            if let Err(e) = self.history.set_next_seq(seq + SEQ_LEASE) {
                self.halt_with(format!("leasing sequence numbers failed: {e}"));
                return Err(self.halted_error());
            }
            self.seq_lease_end = seq + SEQ_LEASE;
        }
        self.next_seq = Some(seq + 1);
        let id = vertex.id();
        self.outputs.push(Output::Broadcast(vertex.clone()));
        self.receive(now_ms, None, vertex);
        self.issue_polls(now_ms);
        // A read that failed on the way halts the engine, and the
        // broadcast never leaves: the proposal did not happen.
        if !self.running() {
            return Err(self.halted_error());
        }
        Ok(id)
    }

    fn halted_error(&self) -> ProposeError {
        ProposeError::Halted(self.halt.clone().unwrap_or_default())
    }

    /// A vertex arrived from `from` (gossip or fetch), already verified.
    pub fn on_vertex(&mut self, now_ms: u64, from: NodeId, vertex: Vertex) {
        if !self.running() {
            return;
        }
        self.receive(now_ms, Some(from), vertex);
        self.issue_polls(now_ms);
    }

    /// `from` sent a vertex that failed verification.
    pub fn on_invalid_vertex(&mut self, now_ms: u64, from: NodeId) {
        self.misbehaved(now_ms, from, Misbehaviour::InvalidVertex);
    }

    /// Answers a query: one vote per id, yes when this node strongly
    /// prefers the vertex. Unknown ids get a no and are fetched from the
    /// asker, who evidently has them.
    pub fn on_query(&mut self, now_ms: u64, from: NodeId, request: RequestId, ids: &[VertexId]) {
        if !self.running() {
            return;
        }
        let mut unknown = Vec::new();
        let mut hints = Vec::new();
        let mut hint_lookups = 0;
        let mut decided = false;
        let votes: Vec<bool> = ids
            .iter()
            .map(|id| {
                if self.processing.contains_key(id) {
                    return self.strongly_preferred(id);
                }
                match self.decided(id) {
                    Some((Decision::Accepted, _)) => {
                        decided = true;
                        true
                    }
                    Some((Decision::Rejected, _)) => {
                        decided = true;
                        // Each hint costs a read: a few per query, however
                        // many rejected ids it names.
                        if hint_lookups < MAX_HINT_LOOKUPS {
                            hint_lookups += 1;
                            hints.extend(self.rivals_that_won(id));
                        }
                        false
                    }
                    None => {
                        if !self.pending.contains_key(id) {
                            unknown.push(*id);
                        }
                        false
                    }
                }
            })
            .collect();
        // Whoever asks may accept on these votes (any node polls the
        // validators, whether or not it is one itself).
        for (id, yes) in ids.iter().zip(&votes) {
            if *yes {
                self.vouch(id);
            }
        }
        self.stats.queries_answered += 1;
        hints.sort();
        hints.dedup();
        self.outputs.push(Output::Votes {
            to: from,
            request,
            votes,
            hints,
            decided,
        });
        self.fetch(now_ms, from, unknown, true);
    }

    /// Marks `id` and its undecided ancestors as voted for. Each vertex is
    /// marked once, so answering costs O(1) per yes on average.
    fn vouch(&mut self, id: &VertexId) {
        let mut stack = vec![*id];
        while let Some(v) = stack.pop() {
            let Some(p) = self.processing.get_mut(&v) else {
                continue;
            };
            if p.vouched {
                continue;
            }
            p.vouched = true;
            stack.extend(p.vertex.parents().iter().copied());
            for key in &p.contested {
                if let Some(KeyState::Contested(set)) = self.keys.get_mut(key) {
                    set.vouch();
                }
            }
        }
    }

    /// Answers a fetch with the vertices this node holds.
    pub fn on_fetch(&mut self, from: NodeId, request: RequestId, ids: &[VertexId]) {
        if !self.running() {
            return;
        }
        let budget = agentmesh_protocol::consensus_wire::FETCH_RESPONSE_BUDGET;
        let mut used = 0;
        let mut vertices = Vec::new();
        for id in ids {
            let found = match self.processing.get(id) {
                Some(p) => Some(p.vertex.clone()),
                None => match self.pending.get(id) {
                    Some(p) => Some(p.vertex.clone()),
                    None => self.history.vertex(id),
                },
            };
            if let Some(vertex) = found {
                let size = approximate_size(&vertex);
                if used > 0 && used + size > budget {
                    break;
                }
                used += size;
                vertices.push(vertex);
            }
        }
        self.outputs.push(Output::Vertices {
            to: from,
            request,
            vertices,
        });
    }

    /// Periodic work: expire polls, retry fetches, drop stale pending
    /// vertices, re-propose orphaned local transactions, start polls.
    pub fn tick(&mut self, now_ms: u64) {
        if !self.running() {
            return;
        }
        self.expire_polls(now_ms);
        self.retry_fetches(now_ms);
        self.expire_pending(now_ms);
        self.graylist.prune(now_ms);
        if !self.reissue.is_empty() && self.has_room(self.reissue.len(), 1) {
            let mut txs = std::mem::take(&mut self.reissue);
            let mut seen = HashSet::new();
            txs.retain(|tx| seen.insert(tx.key.clone()));
            // One vertex's worth at a time; the rest waits for the next tick.
            let mut size = 0;
            let take = txs
                .iter()
                .take(agentmesh_protocol::vertex::MAX_VERTEX_TRANSACTIONS)
                .take_while(|tx| {
                    size += tx.key.len() + tx.payload.len() + 16;
                    size <= agentmesh_protocol::vertex::MAX_VERTEX_BYTES / 2
                })
                .count()
                .max(1);
            let rest = txs.split_off(take.min(txs.len()));
            match self.propose(now_ms, txs.clone()) {
                Ok(_) => self.reissue = rest,
                Err(ProposeError::Busy(_)) => {
                    txs.extend(rest);
                    self.reissue = txs;
                }
                Err(ProposeError::Invalid(_)) => {
                    // Cannot happen for transactions that were valid in a
                    // vertex before; if it does, they cannot go out again.
                    self.reissue = rest;
                }
                Err(e @ ProposeError::History(_)) => {
                    self.reissue = rest;
                    self.halt_with(format!("could not re-propose transactions: {e}"));
                }
                Err(ProposeError::Halted(_)) => self.reissue = rest,
            }
        }
        self.issue_polls(now_ms);
    }

    /// Where `id` stands here.
    pub fn status(&self, id: &VertexId) -> VertexStatus {
        if let Some(p) = self.processing.get(id) {
            return VertexStatus::Processing {
                confidence: self.confidence(p),
                preferred: self.preferred(p),
            };
        }
        if self.pending.contains_key(id) {
            return VertexStatus::Pending;
        }
        match self.decided(id) {
            Some((Decision::Accepted, _)) => VertexStatus::Accepted,
            Some((Decision::Rejected, _)) => VertexStatus::Rejected,
            None => VertexStatus::Unknown,
        }
    }

    /// The undecided candidates for a conflict key (preferred first).
    pub fn candidates(&self, key: &str) -> Vec<VertexId> {
        match self.keys.get(key) {
            None => Vec::new(),
            Some(KeyState::Single(id)) => vec![*id],
            Some(KeyState::Contested(set)) => {
                let preferred = set.preference();
                let mut all = vec![preferred];
                all.extend(set.members().filter(|m| *m != preferred));
                all
            }
        }
    }

    /// A processing or pending vertex's content (decided ones are in the
    /// history).
    pub fn undecided_vertex(&self, id: &VertexId) -> Option<&Vertex> {
        self.processing
            .get(id)
            .map(|p| &p.vertex)
            .or_else(|| self.pending.get(id).map(|p| &p.vertex))
    }

    /// The accepted rivals recorded with a rejected vertex.
    fn rivals_that_won(&self, id: &VertexId) -> Vec<VertexId> {
        match self.rejected_on_arrival.peek(id) {
            Some((_, rivals)) => rivals.clone(),
            None => self.history.rivals(id),
        }
    }

    /// The decision on `id` and when: recorded in the history, or a
    /// rejection on arrival still remembered.
    pub(super) fn decided(&self, id: &VertexId) -> Option<(Decision, u64)> {
        match self.rejected_on_arrival.peek(id) {
            Some((at_ms, _)) => Some((Decision::Rejected, *at_ms)),
            None => self.history.decision(id),
        }
    }

    fn misbehaved(&mut self, now_ms: u64, peer: NodeId, reason: Misbehaviour) {
        if peer == self.me {
            return;
        }
        // Benching is bounded: past `max_benched_percent` of the weight,
        // a validator is queried and waited for like the rest (so a node
        // whose own link failed does not keep failing polls at once after
        // it recovers, and no run of accusations can bench a quorum away).
        // Only equivocation, signed by the validator itself, is proof
        // enough to bench past the bound: an invalid vertex may come from
        // an honest relay (a stale certificate), silence from a slow link.
        // (Peers outside the validator set weigh nothing: no bound.)
        if reason != Misbehaviour::Equivocation && self.validators.contains(&peer) {
            if self.graylist.is_graylisted(&peer, now_ms) {
                return;
            }
            let total = self.validators.total_weight() as f64;
            let after = (self.benched_weight(now_ms) + self.validators.weight(&peer)) as f64;
            if total > 0.0 && after / total > f64::from(self.params.max_benched_percent) / 100.0 {
                return;
            }
        }
        let duration = match reason {
            // Silence may be a slow or restarting peer: a short pause,
            // doubled for each bench until it answers again.
            Misbehaviour::Silence => self.graylist.silence_bench_ms(
                peer,
                self.params.silence_graylist_ms,
                self.params.graylist_ms,
            ),
            _ => self.params.graylist_ms,
        };
        let until_ms = self.graylist.graylist(peer, now_ms, duration);
        self.outputs.push(Output::Graylisted {
            peer,
            reason,
            until_ms,
        });
    }

    /// Room for `txs` more transactions (in a proposal when `factor` is 1;
    /// remote vertices get twice the room, `factor` 2).
    fn has_room(&self, txs: usize, factor: usize) -> bool {
        self.processing.len() < factor * self.params.max_processing
            && (self.processing_txs == 0
                || self.processing_txs + txs <= factor * self.params.max_processing_transactions)
    }

    fn contested_set(&self, key: &str) -> Option<&ConflictSet> {
        match self.keys.get(key) {
            Some(KeyState::Contested(set)) => Some(set),
            _ => None,
        }
    }

    fn preferred(&self, p: &Processing) -> bool {
        let id = p.vertex.id();
        p.contested.iter().all(|key| {
            self.contested_set(key)
                .is_none_or(|set| set.preference() == id)
        })
    }

    fn confidence(&self, p: &Processing) -> u32 {
        let id = p.vertex.id();
        let contested = p
            .contested
            .iter()
            .filter_map(|key| self.contested_set(key).map(|set| set.streak(&id)))
            .min();
        match (contested, p.has_uncontested()) {
            (Some(c), true) => c.min(p.streak),
            (Some(c), false) => c,
            (None, _) => p.streak,
        }
    }

    /// Preferred, and so are all undecided ancestors. Iterative so a long
    /// chain of undecided vertices cannot exhaust the stack.
    fn strongly_preferred(&mut self, id: &VertexId) -> bool {
        if let Some(answer) = self.preferred_memo.get(id) {
            return *answer;
        }
        let mut stack = vec![(*id, false)];
        while let Some((v, expanded)) = stack.pop() {
            if self.preferred_memo.contains_key(&v) {
                continue;
            }
            let Some(p) = self.processing.get(&v) else {
                continue;
            };
            if !expanded {
                stack.push((v, true));
                for parent in p.vertex.parents() {
                    if self.processing.contains_key(parent)
                        && !self.preferred_memo.contains_key(parent)
                    {
                        stack.push((*parent, false));
                    }
                }
                continue;
            }
            // Parents outside the processing set are accepted: a vertex
            // with a rejected parent is rejected with it.
            let answer = self.preferred(p)
                && p.vertex
                    .parents()
                    .iter()
                    .all(|parent| *self.preferred_memo.get(parent).unwrap_or(&true));
            self.preferred_memo.insert(v, answer);
        }
        *self.preferred_memo.get(id).unwrap_or(&false)
    }

    /// No transaction of this vertex or of its undecided ancestors has a
    /// rival. New vertices build only on such vertices: a vertex built on a
    /// contested one is rejected with it if it loses, which says nothing
    /// about the new vertex's own transactions.
    fn uncontested_ancestry(&self, id: &VertexId) -> bool {
        let mut stack = vec![*id];
        let mut seen = HashSet::new();
        while let Some(v) = stack.pop() {
            let Some(p) = self.processing.get(&v) else {
                continue;
            };
            if !p.contested.is_empty() {
                return false;
            }
            for parent in p.vertex.parents() {
                if seen.insert(*parent) {
                    stack.push(*parent);
                }
            }
        }
        true
    }

    /// Strongly preferred leaves with uncontested ancestry, by authors not
    /// graylisted, highest first;
    /// recently accepted vertices when there are none.
    fn choose_parents(&mut self, now_ms: u64) -> Vec<VertexId> {
        let leaves: Vec<VertexId> = self.leaves.iter().copied().collect();
        let mut chosen: Vec<(u64, VertexId)> = Vec::new();
        for id in leaves {
            let trusted = self
                .processing
                .get(&id)
                .is_some_and(|p| !self.graylist.is_graylisted(&p.vertex.author(), now_ms));
            if trusted && self.strongly_preferred(&id) && self.uncontested_ancestry(&id) {
                if let Some(p) = self.processing.get(&id) {
                    chosen.push((p.height, id));
                }
            }
        }
        chosen.sort_by(|a, b| b.cmp(a));
        chosen.truncate(self.params.max_parents);
        if chosen.is_empty() {
            return self
                .recent_accepted
                .iter()
                .rev()
                .take(self.params.max_parents)
                .copied()
                .collect();
        }
        chosen.into_iter().map(|(_, id)| id).collect()
    }
}

/// A vertex's size in memory, roughly (its encoded size without being
/// encoded).
pub fn approximate_size(vertex: &Vertex) -> usize {
    200 + 40 * vertex.parents().len()
        + vertex
            .transactions()
            .iter()
            .map(|tx| tx.key.len() + tx.payload.len() + 8)
            .sum::<usize>()
}

#[cfg(test)]
mod tests;
