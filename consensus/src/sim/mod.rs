//! A deterministic simulator: many engines in one process, a simulated
//! network with seeded latency and loss, Byzantine strategies (adaptive
//! ones among them), silent partitions, restarts and late joiners, and
//! Sybil identities outside the validator set.
//!
//! Everything random (latency, loss, sampling, Byzantine choices, workload)
//! comes from the seed, so a failing seed replays exactly.

mod adaptive;
mod byzantine;
pub mod campaign;
mod faults;
mod report;

pub use byzantine::Strategy;
pub use faults::{Partition, Restart};
pub use report::Report;

use crate::engine::{Engine, Output};
use crate::history::{Decision, MemoryHistory};
use crate::params::Params;
use crate::validators::ValidatorSet;
use agentmesh_protocol::{NodeId, NodeKey, Transaction, Vertex, VertexId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

/// When a lost gossip message arrives after all: gossipsub's IHAVE/IWANT
/// repair takes a few heartbeats (the node's is 500 ms).
const GOSSIP_REPAIR_MS: u64 = 1_500;

/// What a simulation run looks like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub params: Params,
    /// One strategy per node; honest nodes are `Strategy::Honest`.
    pub strategies: Vec<Strategy>,
    /// One-way latency, uniform in this range (ms).
    pub latency_ms: (u64, u64),
    /// Probability that a message is lost.
    pub loss: f64,
    pub tick_ms: u64,
    /// Uncontested transactions each honest node proposes.
    pub virtuous_per_node: usize,
    /// Keys claimed by several honest nodes at about the same time.
    pub contested_keys: usize,
    pub claimants_per_key: usize,
    /// Proposals are spread over this window (ms).
    pub workload_ms: u64,
    /// The run stops here even if undecided vertices remain (ms).
    pub deadline_ms: u64,
    /// Validator weight per node (Sybil nodes are never validators).
    pub weights: Vec<u64>,
    /// Extra proposals: (at ms, node, key, payload).
    pub proposals: Vec<(u64, usize, String, Vec<u8>)>,
    /// Silent partitions: messages across groups vanish, no failure notice.
    pub partitions: Vec<Partition>,
    /// Nodes that go down and come back with their history (or start late,
    /// with none).
    pub restarts: Vec<Restart>,
}

impl SimConfig {
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            params: Params::default(),
            strategies: vec![Strategy::Honest; nodes],
            latency_ms: (5, 50),
            loss: 0.0,
            tick_ms: 10,
            virtuous_per_node: 2,
            contested_keys: 3,
            claimants_per_key: 3,
            workload_ms: 1_000,
            deadline_ms: 60_000,
            weights: vec![1; nodes],
            proposals: Vec::new(),
            partitions: Vec::new(),
            restarts: Vec::new(),
        }
    }

    /// Adds `count` Sybil identities: adversarial nodes outside the
    /// validator set that vote unasked, query, and gossip rivals.
    pub fn with_sybils(mut self, count: usize) -> SimConfig {
        self.strategies
            .extend(std::iter::repeat_n(Strategy::Sybil, count));
        self.weights.extend(std::iter::repeat_n(0, count));
        self
    }

    /// The validator set every node is given.
    pub fn validator_set(&self, ids: &[NodeId]) -> ValidatorSet {
        ValidatorSet::new(
            1,
            ids.iter()
                .zip(&self.weights)
                .filter(|(_, w)| **w > 0)
                .map(|(id, w)| (*id, *w)),
        )
        .expect("simulator weights are valid")
    }

    /// Makes the first `count` nodes after the honest ones follow `strategy`
    /// (nodes are filled from the end).
    pub fn with_byzantine(mut self, strategy: Strategy, count: usize) -> SimConfig {
        let mut placed = 0;
        for s in self.strategies.iter_mut().rev() {
            if placed == count {
                break;
            }
            if *s == Strategy::Honest {
                *s = strategy;
                placed += 1;
            }
        }
        self
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Vertex(Vertex),
    Query {
        poll: u64,
        ids: Vec<VertexId>,
    },
    Votes {
        poll: u64,
        votes: Vec<bool>,
        hints: Vec<VertexId>,
    },
    /// A node goes down (see [`Restart`]).
    Crash,
    /// A node comes back up.
    Restart,
    Fetch {
        ids: Vec<VertexId>,
    },
    Vertices(Vec<Vertex>),
    QueryFailed {
        poll: u64,
        peer: usize,
    },
    /// Proposal of the workload: (transactions).
    Propose(Vec<Transaction>),
    Tick,
}

struct Event {
    to: usize,
    from: usize,
    msg: Msg,
}

pub(crate) struct SimNode {
    pub(crate) engine: Engine<MemoryHistory>,
    pub(crate) key: NodeKey,
    pub(crate) strategy: Strategy,
    pub(crate) byz_seq: u64,
    /// Messages to a node that is down vanish.
    pub(crate) down: bool,
    /// When the adaptive adversary last started an attack.
    pub(crate) last_attack_ms: Option<u64>,
    /// The ids of the query being answered (for per-asker answers).
    pub(crate) last_query: Vec<VertexId>,
}

pub struct Sim {
    config: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    pub(crate) nodes: Vec<SimNode>,
    index: HashMap<NodeId, usize>,
    pub(crate) rng: SmallRng,
    /// Every transaction any node signed, by key: (author, payload) pairs.
    pub(crate) issued: BTreeMap<String, Vec<(usize, Vec<u8>)>>,
    /// When each key was first proposed, for finality times.
    proposed_at: HashMap<String, u64>,
    finality_ms: Vec<u64>,
    messages: u64,
    /// Proposals and vertices scheduled but not yet delivered.
    undelivered_work: usize,
    /// When each honest node accepted a winner for each key.
    pub(crate) accepted_at: BTreeMap<String, Vec<(usize, u64)>>,
    /// Keys the late-rival adversary has attacked (each once).
    pub(crate) late_attacked: HashSet<String>,
    validators: ValidatorSet,
}

fn new_engine(
    params: &Params,
    key: &NodeKey,
    history: MemoryHistory,
    seed: u64,
    validators: &ValidatorSet,
) -> Engine<MemoryHistory> {
    let engine_key = NodeKey::from_seed(*key.seed()).expect("valid seed");
    let mut engine = Engine::new(params.clone(), engine_key, history, seed)
        .expect("simulator parameters are valid");
    engine.set_validators(validators.clone());
    engine
}

fn node_key(seed: u64, i: usize) -> NodeKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    bytes[16] = 0xa7;
    // A 32-byte seed is always a valid Ed25519 seed.
    NodeKey::from_seed(bytes).expect("valid seed")
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let keys: Vec<NodeKey> = (0..config.strategies.len())
            .map(|i| node_key(config.seed, i))
            .collect();
        let ids: Vec<NodeId> = keys.iter().map(NodeKey::node_id).collect();
        let validators = config.validator_set(&ids);
        let nodes = keys
            .into_iter()
            .zip(&config.strategies)
            .map(|(key, strategy)| {
                let engine = new_engine(
                    &config.params,
                    &key,
                    MemoryHistory::default(),
                    rng.random(),
                    &validators,
                );
                SimNode {
                    engine,
                    key,
                    strategy: *strategy,
                    byz_seq: 1 << 40,
                    down: false,
                    last_attack_ms: None,
                    last_query: Vec::new(),
                }
            })
            .collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut sim = Sim {
            config,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes,
            index,
            rng,
            issued: BTreeMap::new(),
            proposed_at: HashMap::new(),
            finality_ms: Vec::new(),
            messages: 0,
            undelivered_work: 0,
            accepted_at: BTreeMap::new(),
            late_attacked: HashSet::new(),
            validators,
        };
        sim.schedule_workload();
        sim.schedule_faults();
        for i in 0..sim.nodes.len() {
            let jitter = sim.rng.random_range(0..sim.config.tick_ms);
            sim.push(jitter, i, i, Msg::Tick);
        }
        sim
    }

    fn schedule_workload(&mut self) {
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].strategy == Strategy::Honest)
            .collect();
        let window = self.config.workload_ms.max(1);
        for &i in &honest {
            for j in 0..self.config.virtuous_per_node {
                let tx = Transaction {
                    key: format!("n{i}:t{j}"),
                    payload: vec![i as u8, j as u8],
                };
                let at = self.rng.random_range(0..window);
                self.push(at, i, i, Msg::Propose(vec![tx]));
            }
        }
        for c in 0..self.config.contested_keys {
            let at = self.rng.random_range(0..window);
            let claimants = self.config.claimants_per_key.min(honest.len());
            for n in rand::seq::index::sample(&mut self.rng, honest.len(), claimants) {
                let i = honest[n];
                let tx = Transaction {
                    key: format!("task:{c}"),
                    payload: format!("claimed by {i}").into_bytes(),
                };
                let skew = self.rng.random_range(0..20);
                self.push(at + skew, i, i, Msg::Propose(vec![tx]));
            }
        }
        for (at, node, key, payload) in self.config.proposals.clone() {
            let tx = Transaction { key, payload };
            self.push(at, node, node, Msg::Propose(vec![tx]));
        }
    }

    fn push(&mut self, delay: u64, to: usize, from: usize, msg: Msg) {
        if matches!(msg, Msg::Propose(_) | Msg::Vertex(_)) {
            self.undelivered_work += 1;
        }
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, Event { to, from, msg });
    }

    /// Sends over the simulated network: latency, and loss.
    pub(super) fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.send_after(0, from, to, msg);
    }

    /// Like [`Sim::send`], `hold` ms later (a Byzantine node holding an
    /// answer).
    pub(super) fn send_after(&mut self, hold: u64, from: usize, to: usize, msg: Msg) {
        self.messages += 1;
        if self.nodes[from].down || self.partitioned(from, to, self.now + hold) {
            // Silently gone: a query is noticed only by its deadline.
            return;
        }
        if self.config.loss > 0.0 && self.rng.random_bool(self.config.loss) {
            match msg {
                Msg::Query { poll, .. } => {
                    // The querier learns of the loss only by its own timeout;
                    // request-response reports a failure at the deadline.
                    let timeout = self.config.params.query_timeout_ms;
                    self.push(
                        hold + timeout,
                        from,
                        to,
                        Msg::QueryFailed { poll, peer: to },
                    );
                }
                Msg::Vertex(_) => {
                    // Gossipsub repairs lost messages from its history
                    // (IHAVE/IWANT) a few heartbeats later.
                    self.push(hold + GOSSIP_REPAIR_MS, to, from, msg);
                }
                _ => {}
            }
            return;
        }
        let (lo, hi) = self.config.latency_ms;
        let delay = self.rng.random_range(lo..=hi.max(lo));
        self.push(hold + delay, to, from, msg);
    }

    /// Hands `vertices` to every node in its own random order, each
    /// apparently relayed by some other node.
    pub fn deliver_shuffled(&mut self, vertices: &[Vertex]) {
        for to in 0..self.nodes.len() {
            let mut order: Vec<usize> = (0..vertices.len()).collect();
            for k in (1..order.len()).rev() {
                let j = self.rng.random_range(0..=k);
                order.swap(k, j);
            }
            for (slot, idx) in order.into_iter().enumerate() {
                let from = (to + 1 + slot) % self.nodes.len();
                let at = slot as u64 * 3;
                self.push(at, to, from, Msg::Vertex(vertices[idx].clone()));
                for tx in vertices[idx].transactions() {
                    self.issued
                        .entry(tx.key.clone())
                        .or_default()
                        .push((usize::MAX, tx.payload.clone()));
                }
            }
        }
    }

    /// Nodes in the run (Sybil identities included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn is_honest(&self, i: usize) -> bool {
        self.nodes[i].strategy == Strategy::Honest
    }

    /// Node `i`'s engine, to look at after a run.
    pub fn engine(&self, i: usize) -> &Engine<MemoryHistory> {
        &self.nodes[i].engine
    }

    pub fn node_id(&self, i: usize) -> NodeId {
        self.nodes[i].key.node_id()
    }

    /// Runs until nothing is undecided anywhere or the deadline passes.
    pub fn run(&mut self) -> Report {
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > self.config.deadline_ms {
                break;
            }
            self.now = at;
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            if matches!(event.msg, Msg::Propose(_) | Msg::Vertex(_)) {
                self.undelivered_work -= 1;
            }
            if matches!(event.msg, Msg::Tick) {
                if self.quiescent() {
                    break;
                }
                let tick = self.config.tick_ms;
                self.push(tick, event.to, event.to, Msg::Tick);
            }
            self.deliver(event);
        }
        Report::collect(self)
    }

    fn rng_next(&mut self) -> u64 {
        self.rng.random()
    }

    fn quiescent(&self) -> bool {
        self.now > self.config.workload_ms + 100
            && self.faults_over()
            && self.undelivered_work == 0
            && self
                .nodes
                .iter()
                .all(|n| n.strategy != Strategy::Honest || n.engine.is_idle())
    }

    fn deliver(&mut self, event: Event) {
        let now = self.now;
        let to = event.to;
        let from_id = self.node_id(event.from);
        match event.msg {
            Msg::Crash => return self.crash(to),
            Msg::Restart => return self.restart(to),
            _ => {}
        }
        if self.nodes[to].down {
            if let Msg::Propose(txs) = event.msg {
                // The agent retries until its node is back.
                self.push(50, to, to, Msg::Propose(txs));
            }
            return;
        }
        if self.partitioned(event.from, to, now) && event.from != to {
            return;
        }
        match event.msg {
            Msg::Crash | Msg::Restart => {}
            Msg::Tick => {
                if self.nodes[to].strategy != Strategy::Sybil {
                    self.nodes[to].engine.tick(now);
                }
                self.adversary_tick(to);
            }
            Msg::Propose(txs) => {
                for tx in &txs {
                    self.issued
                        .entry(tx.key.clone())
                        .or_default()
                        .push((to, tx.payload.clone()));
                    self.proposed_at.entry(tx.key.clone()).or_insert(now);
                }
                // Busy is the engine saying "later": try again shortly.
                if self.nodes[to].engine.propose(now, txs.clone()).is_err() {
                    self.push(50, to, to, Msg::Propose(txs));
                }
            }
            Msg::Vertex(vertex) => {
                self.byzantine_sees(to, &vertex);
                if self.nodes[to].strategy != Strategy::Sybil {
                    self.nodes[to].engine.on_vertex(now, from_id, vertex);
                }
            }
            Msg::Query { poll, ids } => {
                if self.nodes[to].strategy == Strategy::Silent {
                    return;
                }
                self.nodes[to].last_query = ids.clone();
                self.nodes[to].engine.on_query(now, from_id, poll, &ids);
            }
            Msg::Votes { poll, votes, hints } => self.nodes[to]
                .engine
                .on_votes(now, from_id, poll, &votes, &hints),
            Msg::QueryFailed { poll, peer } => {
                let peer = self.node_id(peer);
                self.nodes[to].engine.on_query_failed(now, peer, poll, true);
            }
            Msg::Fetch { ids } => {
                if matches!(self.nodes[to].strategy, Strategy::Silent | Strategy::Sybil) {
                    return;
                }
                self.nodes[to].engine.on_fetch(from_id, 0, &ids);
            }
            Msg::Vertices(vertices) => {
                for vertex in vertices {
                    self.nodes[to].engine.on_vertex(now, from_id, vertex);
                }
            }
        }
        self.route_outputs(to);
    }

    fn route_outputs(&mut self, i: usize) {
        let outputs = self.nodes[i].engine.take_outputs();
        for output in outputs {
            match output {
                Output::Query { poll, peers, ids } => {
                    for peer in peers {
                        let to = self.index[&peer];
                        self.send(
                            i,
                            to,
                            Msg::Query {
                                poll,
                                ids: ids.clone(),
                            },
                        );
                    }
                }
                // The simulator's history is in memory: always durable.
                Output::Votes {
                    to,
                    request,
                    votes,
                    hints,
                    ..
                } => {
                    let to = self.index[&to];
                    let (votes, hold) = self.byzantine_votes(i, to, votes);
                    let msg = Msg::Votes {
                        poll: request,
                        votes,
                        hints,
                    };
                    self.send_after(hold, i, to, msg);
                }
                Output::Broadcast(vertex) => {
                    for to in 0..self.nodes.len() {
                        if to != i {
                            self.send(i, to, Msg::Vertex(vertex.clone()));
                        }
                    }
                }
                Output::Fetch { from, ids } => {
                    let to = self.index[&from];
                    self.send(i, to, Msg::Fetch { ids });
                }
                Output::Vertices { to, vertices, .. } => {
                    let to = self.index[&to];
                    self.send(i, to, Msg::Vertices(vertices));
                }
                Output::Decided { vertex, decision } => {
                    if decision == Decision::Accepted && self.nodes[i].strategy == Strategy::Honest
                    {
                        for tx in vertex.transactions() {
                            self.accepted_at
                                .entry(tx.key.clone())
                                .or_default()
                                .push((i, self.now));
                            if let Some(at) = self.proposed_at.get(&tx.key) {
                                self.finality_ms.push(self.now - at);
                            }
                        }
                    }
                }
                Output::Graylisted { .. } | Output::Halted(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
