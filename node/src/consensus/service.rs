//! The consensus driver: a task that owns the engine, feeds it network
//! events, API requests and ticks, and carries out what it returns.

use super::history::DiskHistory;
use super::validators::Validators;
use super::views;
use crate::clock::now_ms;
use crate::network::consensus_io::{ConsensusCommand, ConsensusEvent, ConsensusReceivers};
use crate::network::NetworkHandle;
use crate::types::{
    BootstrapView, ConsensusStatus, GraylistEntry, Percentiles, TaskInfo, ValidatorEntry,
    ValidatorsView, VertexInfo,
};
use agentmesh_consensus::bootstrap::{Phase, Tag};
use agentmesh_consensus::{
    BootstrapReply, Bootstrapper, Decision, Engine, History, Output, ProposeError, VertexStatus,
};
use agentmesh_protocol::consensus_wire::ConsensusResponse;
use agentmesh_protocol::consensus_wire::MAX_LOG_IDS;
use agentmesh_protocol::{Channel, Transaction, VertexId};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often the engine's clock advances without other input.
const TICK: Duration = Duration::from_millis(10);
/// Validators listed by `GET /v1/consensus` (the count says how many exist).
const MAX_LISTED_VALIDATORS: usize = 200;
/// Decisions become durable (and visible) at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Latency samples kept for percentiles.
const SAMPLES: usize = 20_000;
/// Requests from the API waiting for the service.
pub const REQUEST_QUEUE: usize = 1024;
/// How often bootstrapping progress is logged while it runs.
const BOOTSTRAP_LOG_EVERY_MS: u64 = 5_000;

pub const FINALIZED_CHANNEL: &str = "consensus:finalized";

/// Where a proposal's outcome goes: the vertex id, or why not (shared:
/// proposals batched into one vertex get the same answer).
pub type ProposeReply = oneshot::Sender<Result<VertexId, Arc<ProposeError>>>;

pub enum Request {
    Propose {
        transactions: Vec<Transaction>,
        reply: ProposeReply,
    },
    Vertex {
        id: VertexId,
        reply: oneshot::Sender<Option<VertexInfo>>,
    },
    Task {
        task: String,
        reply: oneshot::Sender<TaskInfo>,
    },
    Status(oneshot::Sender<ConsensusStatus>),
}

pub struct ConsensusService {
    engine: Engine<DiskHistory>,
    network: NetworkHandle,
    events: ConsensusReceivers,
    requests: mpsc::Receiver<Request>,
    validators: Validators,
    rtt_ms: VecDeque<f64>,
    finality_ms: VecDeque<f64>,
    finalized_channel: Channel,
    /// Decisions recorded but not yet flushed to disk, and the events that
    /// announce them: nothing is shown as final before it is durable, so a
    /// node killed at any moment keeps every decision it reported.
    unflushed: Vec<ConsensusCommand>,
    dirty: bool,
    /// Set when the engine halted (its history failed).
    halted: super::HaltReason,
    /// Flushes that failed, for the status.
    flush_failures: u64,
    bootstrap: Bootstrapper,
    /// Confirmed vertices the engine refused (logged; see
    /// `BootstrapRefusal`).
    bootstrap_refused: u64,
    /// Vertices delivered while bootstrapping, for the engine afterwards.
    held: super::held::Held,
    /// When bootstrapping progress was last logged, and in what phase.
    bootstrap_logged: (u64, Phase),
    /// Commands to send before the engine's outputs.
    outbox: Vec<ConsensusCommand>,
}

fn push_sample(samples: &mut VecDeque<f64>, value: f64) {
    if samples.len() == SAMPLES {
        samples.pop_front();
    }
    samples.push_back(value);
}

fn percentiles(samples: &VecDeque<f64>) -> Percentiles {
    let mut sorted: Vec<f64> = samples.iter().copied().collect();
    if sorted.is_empty() {
        return Percentiles::default();
    }
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    Percentiles {
        samples: sorted.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

impl ConsensusService {
    pub fn new(
        engine: Engine<DiskHistory>,
        network: NetworkHandle,
        events: ConsensusReceivers,
        requests: mpsc::Receiver<Request>,
        validators: Validators,
        halted: super::HaltReason,
    ) -> ConsensusService {
        let me = engine.node_id();
        let mut service = ConsensusService {
            engine,
            network,
            events,
            requests,
            validators,
            rtt_ms: VecDeque::new(),
            finality_ms: VecDeque::new(),
            finalized_channel: Channel::parse(FINALIZED_CHANNEL).expect("a valid channel name"),
            unflushed: Vec::new(),
            dirty: false,
            halted,
            flush_failures: 0,
            bootstrap: Bootstrapper::new(me, {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            }),
            bootstrap_refused: 0,
            held: super::held::Held::default(),
            bootstrap_logged: (0, Phase::Waiting),
            outbox: Vec::new(),
        };
        service.refresh_peers();
        service
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peer_refresh = tokio::time::interval(Duration::from_secs(1));
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.events.control.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                event = self.events.vertices.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
                request = self.requests.recv() => match request {
                    Some(request) => {
                        // Answers reflect only durable decisions.
                        if self.flush().await.is_err() {
                            break;
                        }
                        self.on_requests(request)
                    }
                    None => break,
                },
                _ = flush.tick() => {
                    if self.flush().await.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let now = now_ms();
                    self.engine.tick(now);
                    self.bootstrap_tick(now);
                }
                _ = peer_refresh.tick() => self.refresh_peers(),
            }
            if self.execute().await.is_err() {
                break;
            }
        }
        tracing::info!("consensus service stopped");
    }

    fn on_event(&mut self, event: ConsensusEvent) {
        let now = now_ms();
        match event {
            ConsensusEvent::Vertex { from, vertex } if self.bootstrap.holds_consensus() => {
                self.held.hold(from, vertex)
            }
            ConsensusEvent::Vertices { from, vertices } if self.bootstrap.holds_consensus() => {
                for vertex in vertices {
                    self.held.hold(from, vertex);
                }
            }
            ConsensusEvent::Vertex { from, vertex } => self.engine.on_vertex(now, from, vertex),
            ConsensusEvent::InvalidVertex { from, reason } => {
                tracing::warn!(peer = %from, %reason, "peer sent an invalid vertex");
                self.engine.on_invalid_vertex(now, from);
            }
            ConsensusEvent::Query { from, request, ids } => {
                self.engine.on_query(now, from, request, &ids)
            }
            ConsensusEvent::Fetch { from, request, ids } => {
                self.engine.on_fetch(from, request, &ids)
            }
            ConsensusEvent::Votes {
                from,
                poll,
                votes,
                hints,
                rtt,
            } => {
                push_sample(&mut self.rtt_ms, rtt.as_secs_f64() * 1000.0);
                self.engine.on_votes(now, from, poll, &votes, &hints);
            }
            ConsensusEvent::Vertices { from, vertices } => {
                for vertex in vertices {
                    self.engine.on_vertex(now, from, vertex);
                }
            }
            ConsensusEvent::QueryFailed { peer, poll, silent } => {
                self.engine.on_query_failed(now, peer, poll, silent)
            }
            ConsensusEvent::Peers(peers) => {
                self.validators.set_connected(peers);
                self.refresh_peers();
            }
            ConsensusEvent::LogRequest { request, position } => {
                let (ids, end) = if position == u64::MAX {
                    (Vec::new(), self.engine.history().accepted_len())
                } else {
                    self.engine.history().accepted_page(position, MAX_LOG_IDS)
                };
                self.answer_from_history(request, ConsensusResponse::AcceptedLog { ids, end });
            }
            ConsensusEvent::AcceptedQuery { request, ids } => {
                let accepted = ids
                    .iter()
                    .map(|id| self.engine.status(id) == VertexStatus::Accepted)
                    .collect();
                self.answer_from_history(request, ConsensusResponse::Accepted { accepted });
            }
            ConsensusEvent::Bootstrap { tag, from, reply } => {
                self.on_bootstrap_reply(now, tag, from, reply)
            }
        }
    }

    /// Answers a bootstrapping peer with what was read from the history:
    /// only once it is durable (the peer accepts on it), and never from a
    /// history that failed a read (the asker's request then fails).
    fn answer_from_history(&mut self, request: u64, response: ConsensusResponse) {
        if !self.trusted() {
            return;
        }
        let command = ConsensusCommand::Respond { request, response };
        if self.dirty {
            self.unflushed.push(command);
        } else {
            self.outbox.push(command);
        }
    }

    fn bootstrap_tick(&mut self, now: u64) {
        if !self.held.is_empty() && !self.bootstrap.holds_consensus() {
            for (from, vertex) in self.held.release() {
                self.engine.on_vertex(now, from, vertex);
            }
        }
        if self.bootstrap.is_done() && self.bootstrap_logged.1 == Phase::Done {
            return;
        }
        self.bootstrap
            .set_accepted_len(self.engine.history().accepted_len());
        let engine = &self.engine;
        let is_accepted = |id: &VertexId| engine.status(id) == VertexStatus::Accepted;
        self.bootstrap.tick(now, engine.validators(), &is_accepted);
        self.apply_bootstrapped(now);
    }

    fn on_bootstrap_reply(
        &mut self,
        now: u64,
        tag: Tag,
        from: agentmesh_protocol::NodeId,
        reply: BootstrapReply,
    ) {
        self.bootstrap
            .set_accepted_len(self.engine.history().accepted_len());
        let engine = &self.engine;
        let is_accepted = |id: &VertexId| engine.status(id) == VertexStatus::Accepted;
        self.bootstrap.on_reply(now, tag, from, reply, &is_accepted);
        self.apply_bootstrapped(now);
    }

    /// Accepts what the walk confirmed, then sends its requests.
    fn apply_bootstrapped(&mut self, now: u64) {
        for vertex in self.bootstrap.take_ready() {
            if let Err(refusal) = self.engine.accept_bootstrapped(now, vertex) {
                tracing::warn!(%refusal, "bootstrapping: a confirmed vertex was not accepted");
                self.bootstrap_refused += 1;
            }
        }
        self.bootstrap_io(now);
    }

    /// Sends the bootstrapper's requests and logs its progress.
    fn bootstrap_io(&mut self, now: u64) {
        for (tag, peer, request) in self.bootstrap.take_requests() {
            self.outbox
                .push(ConsensusCommand::Bootstrap { tag, peer, request });
        }
        let progress = self.bootstrap.progress();
        let (logged_at, logged_phase) = self.bootstrap_logged;
        let running = !matches!(progress.phase, Phase::Waiting | Phase::Done);
        let log = (progress.phase == Phase::Done && logged_phase != Phase::Done)
            || (logged_phase == Phase::Waiting && running)
            || (running && now >= logged_at + BOOTSTRAP_LOG_EVERY_MS);
        if log {
            let stats = self.engine.stats();
            tracing::info!(
                state = progress.phase.as_str(),
                fetched_vertices = progress.fetched_vertices,
                fetched_bytes = progress.fetched_bytes,
                accepted_vertices = stats.bootstrapped_vertices,
                remaining = progress.end.saturating_sub(progress.position),
                unconfirmed = progress.unconfirmed,
                "bootstrapping"
            );
            self.bootstrap_logged = (now, progress.phase);
        }
    }

    fn bootstrap_view(&self, now: u64) -> BootstrapView {
        let p = self.bootstrap.progress();
        let stats = self.engine.stats();
        let seconds = match p.started_ms {
            Some(start) => p.finished_ms.unwrap_or(now).saturating_sub(start) as f64 / 1000.0,
            None => 0.0,
        };
        BootstrapView {
            state: p.phase.as_str().to_string(),
            source: p.source.map(|s| s.to_string()),
            position: p.position,
            end: p.end,
            remaining: p.end.saturating_sub(p.position),
            fetched_vertices: p.fetched_vertices,
            fetched_bytes: p.fetched_bytes,
            accepted_vertices: stats.bootstrapped_vertices,
            accepted_transactions: stats.bootstrapped_transactions,
            known: p.known,
            unconfirmed: p.unconfirmed,
            missed: p.missed + self.bootstrap_refused,
            held_vertices: self.held.held,
            dropped_held_vertices: self.held.dropped,
            seconds,
        }
    }

    /// Gives the engine the validator set when it changed (peers came or
    /// went, a certificate expired, a validator aged out).
    fn refresh_peers(&mut self) {
        if let Some(set) = self.validators.refresh(self.engine.validators()) {
            self.engine.set_validators(set);
        }
    }

    /// Handles `first` and whatever else is queued. Proposals waiting
    /// together share vertices (up to the per-vertex limit, keys distinct).
    fn on_requests(&mut self, first: Request) {
        let mut proposals = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Propose {
                    transactions,
                    reply,
                } => proposals.push((transactions, reply)),
                other => self.on_query_request(other),
            }
            if proposals.len() < REQUEST_QUEUE {
                next = self.requests.try_recv().ok();
            }
        }
        self.propose_together(proposals);
    }

    fn propose_together(&mut self, proposals: Vec<(Vec<Transaction>, ProposeReply)>) {
        use agentmesh_protocol::vertex::{MAX_VERTEX_BYTES, MAX_VERTEX_TRANSACTIONS};
        let size_of = |txs: &[Transaction]| -> usize {
            txs.iter()
                .map(|tx| tx.key.len() + tx.payload.len() + 16)
                .sum()
        };
        let mut batch: Vec<Transaction> = Vec::new();
        let mut bytes = 0;
        let mut keys: HashSet<String> = HashSet::new();
        let mut waiting = Vec::new();
        for (transactions, reply) in proposals {
            // Requests are only combined while the vertex stays well inside
            // the size limit: a request that fits alone never fails because
            // it arrived together with another.
            let size = size_of(&transactions);
            let fits = batch.len() + transactions.len() <= MAX_VERTEX_TRANSACTIONS
                && bytes + size <= MAX_VERTEX_BYTES / 2
                && transactions.iter().all(|tx| !keys.contains(&tx.key));
            if !fits && !batch.is_empty() {
                self.propose_batch(std::mem::take(&mut batch), std::mem::take(&mut waiting));
                keys.clear();
                bytes = 0;
            }
            keys.extend(transactions.iter().map(|tx| tx.key.clone()));
            bytes += size;
            batch.extend(transactions);
            waiting.push(reply);
        }
        if !batch.is_empty() {
            self.propose_batch(batch, waiting);
        }
    }

    fn propose_batch(&mut self, batch: Vec<Transaction>, replies: Vec<ProposeReply>) {
        let result = self.engine.propose(now_ms(), batch).map_err(Arc::new);
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }

    fn on_query_request(&mut self, request: Request) {
        match request {
            // A halted engine's history is not trusted, nor a view built
            // from a read that failed: those go unanswered, and the caller
            // is told why (ConsensusStopped::Halted).
            Request::Vertex { id, reply } => {
                if self.trusted() {
                    let view = views::vertex_info(&self.engine, &id);
                    if self.trusted() {
                        let _ = reply.send(view);
                    }
                }
            }
            Request::Task { task, reply } => {
                if self.trusted() {
                    let view = views::task_info(&self.engine, &task);
                    if self.trusted() {
                        let _ = reply.send(view);
                    }
                }
            }
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Propose { .. } => {}
        }
    }

    /// Whether the history can be trusted; if not, the reason is shared at
    /// once, before any unanswered request reaches its caller.
    fn trusted(&mut self) -> bool {
        if self.engine.check_history() {
            return true;
        }
        if let Some(reason) = self.engine.halted() {
            let _ = self.halted.set(reason.to_string());
        }
        false
    }

    fn status(&self) -> ConsensusStatus {
        let stats = self.engine.stats();
        let now = now_ms();
        let validators = self.engine.validators();
        ConsensusStatus {
            peers_sampled_from: self.validators.tracked(),
            validators: ValidatorsView {
                source: self.validators.source_name().to_string(),
                sybil_resistant: self.validators.sybil_resistant(),
                version: validators.version(),
                count: validators.len(),
                total_weight: validators.total_weight(),
                benched_share: self.engine.benched_share(now),
                members: validators
                    .iter()
                    .take(MAX_LISTED_VALIDATORS)
                    .map(|(id, weight)| ValidatorEntry {
                        node_id: id.to_string(),
                        weight,
                    })
                    .collect(),
            },
            processing: self.engine.processing_len(),
            pending: self.engine.pending_len(),
            polls_in_flight: self.engine.polls_in_flight(),
            polls_started: stats.polls_started,
            polls_succeeded: stats.polls_succeeded,
            queries_answered: stats.queries_answered,
            accepted_vertices: stats.accepted_vertices,
            rejected_vertices: stats.rejected_vertices,
            accepted_transactions: stats.accepted_transactions,
            decided_on_disk: self.engine.history().decided(),
            accepted_on_disk: self.engine.history().accepted_len(),
            graylisted: self
                .engine
                .graylisted(now)
                .into_iter()
                .map(|(peer, until_ms)| GraylistEntry {
                    node_id: peer.to_string(),
                    until_ms,
                })
                .collect(),
            finality_ms: percentiles(&self.finality_ms),
            query_rtt_ms: percentiles(&self.rtt_ms),
            halted: self.engine.halted().map(str::to_string),
            flush_failures: self.flush_failures,
            bootstrap: self.bootstrap_view(now),
        }
    }

    /// Flushes recorded decisions, then announces them. A failed flush is
    /// logged and retried; events wait for it.
    async fn flush(&mut self) -> Result<(), crate::network::NetworkStopped> {
        if !self.dirty {
            return Ok(());
        }
        if self.engine.halted().is_some() {
            // Nothing resting on decisions goes out of a halted node.
            self.unflushed.clear();
            self.dirty = false;
            return Ok(());
        }
        if let Err(e) = self.engine.history().flush().await {
            // The history latched the failure: the engine halts at its next
            // call, and what waited for this flush never goes out.
            self.flush_failures += 1;
            tracing::error!(error = %e, "cannot flush consensus decisions to disk");
            self.engine.check_history();
            return Ok(());
        }
        self.dirty = false;
        for command in std::mem::take(&mut self.unflushed) {
            self.network.consensus(command).await?;
        }
        Ok(())
    }

    /// Carries out the engine's outputs. Fails only when the network task
    /// has stopped.
    async fn execute(&mut self) -> Result<(), crate::network::NetworkStopped> {
        for command in std::mem::take(&mut self.outbox) {
            self.network.consensus(command).await?;
        }
        let outputs = self.engine.take_outputs();
        // Decisions of this batch count as unflushed before any vote of it
        // is sent.
        if outputs.iter().any(|o| matches!(o, Output::Decided { .. })) {
            self.dirty = true;
        }
        for output in outputs {
            let command = match output {
                Output::Query { poll, peers, ids } => ConsensusCommand::Query { poll, peers, ids },
                Output::Votes {
                    request,
                    votes,
                    hints,
                    decided,
                    ..
                } => {
                    let answer = ConsensusCommand::Respond {
                        request,
                        response: ConsensusResponse::Votes { votes, hints },
                    };
                    // A vote that rests on a decision waits until the
                    // decision is on disk: a crash must not make this node
                    // forget what it voted for.
                    if decided && self.dirty {
                        self.unflushed.push(answer);
                        continue;
                    }
                    answer
                }
                Output::Broadcast(vertex) => ConsensusCommand::Broadcast(vertex.encode()),
                Output::Fetch { from, ids } => ConsensusCommand::Fetch { peer: from, ids },
                Output::Vertices {
                    request, vertices, ..
                } => ConsensusCommand::Respond {
                    request,
                    response: ConsensusResponse::Vertices {
                        vertices: vertices.into_iter().map(|v| v.into_wire()).collect(),
                    },
                },
                Output::Decided { vertex, decision } => {
                    let now = now_ms();
                    if vertex.author() == self.engine.node_id() && decision == Decision::Accepted {
                        let started = vertex.timestamp_ms();
                        push_sample(&mut self.finality_ms, now.saturating_sub(started) as f64);
                    }
                    self.dirty = true;
                    self.unflushed.push(ConsensusCommand::Local {
                        channel: self.finalized_channel.clone(),
                        content_type: "application/json".into(),
                        body: views::decided_event(&vertex, decision, now),
                    });
                    continue;
                }
                Output::Graylisted {
                    peer,
                    reason,
                    until_ms,
                } => {
                    tracing::warn!(%peer, reason = reason.as_str(), until_ms, "graylisted a peer");
                    continue;
                }
                Output::Halted(reason) => {
                    // The engine does nothing more; the node stays up, says
                    // why in the log and the status, and refuses requests.
                    tracing::error!(%reason, "consensus history failed: this node stops voting and deciding");
                    let _ = self.halted.set(reason);
                    continue;
                }
            };
            self.network.consensus(command).await?;
        }
        Ok(())
    }
}
