//! Byzantine strategies. A Byzantine node runs a normal engine (so it knows
//! the DAG) and twists what it tells others.

use super::{Msg, Sim};
use agentmesh_protocol::{Transaction, Vertex};
use rand::Rng;

/// Chance that an attacking node answers an honest vertex it sees with an
/// attack. With 20 attackers of 100 nodes, about half of the honest
/// vertices draw one: attackers act about as often as honest nodes propose,
/// and enough honest transactions stay uncontested to check liveness.
const ATTACK_RATE: f64 = 0.03;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Honest,
    /// Votes the opposite of its honest preference, always.
    Contrary,
    /// Flips each vote with probability one half.
    Flip,
    /// Never answers queries or fetches.
    Silent,
    /// Signs two different vertices with one sequence number and sends
    /// each to half of the nodes.
    Equivocate,
    /// Answers every query with all yes, and for honest vertices it sees
    /// issues rivals: the same conflict keys, other payloads.
    ConflictSpam,
    /// Adapts to each asker (see `adaptive.rs`): for contested keys it
    /// votes for what the asker prefers (keeping honest camps apart) and,
    /// once any honest node accepted a value, for its rival; it holds its
    /// answers up to 150 ms (reordering them), and it starts attacks of its
    /// own: rivals ground by id, each sent to half of the nodes, behind a
    /// parent released late and per recipient.
    Adaptive,
    /// Votes like `Adaptive`, and as soon as some honest node has accepted
    /// a vertex that others still poll, signs a rival for its key, ground
    /// to the smallest id of a few tries, and sends it to every node: it
    /// targets the initial-preference rule (smallest id first) on the
    /// nodes that have not decided yet.
    LateRival,
    /// An identity outside the validator set (one of many a Sybil makes):
    /// spams rivals like `ConflictSpam`, sends votes nobody asked for,
    /// never answers fetches. It should change nothing.
    Sybil,
}

impl Sim {
    /// What Byzantine node `i` answers `to` instead of `votes`, and how
    /// long it holds the answer.
    pub(super) fn byzantine_votes(
        &mut self,
        i: usize,
        to: usize,
        mut votes: Vec<bool>,
    ) -> (Vec<bool>, u64) {
        match self.nodes[i].strategy {
            Strategy::Adaptive | Strategy::LateRival => return self.adaptive_votes(i, to, votes),
            Strategy::Contrary => votes.iter_mut().for_each(|v| *v = !*v),
            Strategy::Flip => {
                for v in votes.iter_mut() {
                    if self.rng.random_bool(0.5) {
                        *v = !*v;
                    }
                }
            }
            Strategy::ConflictSpam | Strategy::Sybil => votes.iter_mut().for_each(|v| *v = true),
            Strategy::Honest | Strategy::Silent | Strategy::Equivocate => {}
        }
        (votes, 0)
    }

    /// Lets Byzantine node `i` react to a vertex it received.
    pub(super) fn byzantine_sees(&mut self, i: usize, seen: &Vertex) {
        let strategy = self.nodes[i].strategy;
        let honest_author = self
            .index
            .get(&seen.author())
            .is_none_or(|a| self.nodes[*a].strategy == Strategy::Honest);
        if !honest_author {
            return;
        }
        match strategy {
            Strategy::Equivocate if self.rng.random_bool(ATTACK_RATE) => {
                let seq = self.next_byz_seq(i);
                let key = format!("eq:{i}:{seq}");
                let a = self.byz_vertex(i, vec![seen.id()], seq, &key, b"left");
                let b = self.byz_vertex(i, vec![seen.id()], seq, &key, b"right");
                let n = self.nodes.len();
                for to in (0..n).filter(|t| *t != i) {
                    let v = if to % 2 == 0 { a.clone() } else { b.clone() };
                    self.send(i, to, Msg::Vertex(v));
                }
            }
            Strategy::ConflictSpam | Strategy::Sybil if self.rng.random_bool(ATTACK_RATE) => {
                let seq = self.next_byz_seq(i);
                let txs: Vec<Transaction> = seen
                    .transactions()
                    .iter()
                    .map(|tx| Transaction {
                        key: tx.key.clone(),
                        payload: b"spam".to_vec(),
                    })
                    .collect();
                let Ok(v) = Vertex::sign(
                    &self.nodes[i].key,
                    seen.parents().to_vec(),
                    seq,
                    self.now,
                    txs.clone(),
                ) else {
                    return;
                };
                for tx in txs {
                    self.issued.entry(tx.key).or_default().push((i, tx.payload));
                }
                let n = self.nodes.len();
                for to in (0..n).filter(|t| *t != i) {
                    if self.rng.random_bool(0.5) {
                        self.send(i, to, Msg::Vertex(v.clone()));
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn next_byz_seq(&mut self, i: usize) -> u64 {
        self.nodes[i].byz_seq += 1;
        self.nodes[i].byz_seq
    }

    fn byz_vertex(
        &mut self,
        i: usize,
        parents: Vec<agentmesh_protocol::VertexId>,
        seq: u64,
        key: &str,
        payload: &[u8],
    ) -> Vertex {
        let tx = Transaction {
            key: key.to_string(),
            payload: payload.to_vec(),
        };
        self.issued
            .entry(tx.key.clone())
            .or_default()
            .push((i, tx.payload.clone()));
        Vertex::sign(&self.nodes[i].key, parents, seq, self.now, vec![tx])
            .expect("a one-transaction vertex is valid")
    }
}
