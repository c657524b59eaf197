//! The adaptive adversary: it reads the honest nodes' state (the simulator
//! lets it; a real one would learn it from their own votes and queries) and
//! answers each asker to keep honest nodes apart, targets the rule that
//! moves preferences, and times the release of the vertices it signs.

use super::{Msg, Sim, Strategy};
use crate::history::History;
use agentmesh_protocol::{Transaction, Vertex, VertexId};
use rand::Rng;

/// Longest an adaptive node holds an answer (reordering them too).
const MAX_HOLD_MS: u64 = 150;
/// Attacks an adaptive node starts, and how far apart.
const MAX_ATTACKS: u64 = 3;
const ATTACK_EVERY_MS: u64 = 700;
/// Ids tried when grinding a pair of rivals into the order it wants.
const GRIND_TRIES: usize = 16;
/// Late rivals one `LateRival` node signs at most.
const MAX_LATE_RIVALS: u64 = 20;
/// How often a Sybil identity sends votes nobody asked for.
const SYBIL_VOTES_EVERY_MS: u64 = 400;

impl Sim {
    /// Per-asker votes: for each queried vertex that is contested at the
    /// asker, yes only for one member per key: the rival of a value some
    /// honest node already accepted (to pull the others away from it), else
    /// what the asker itself prefers (to keep each camp confident). Never
    /// two rivals in one answer, so the double-vote check does not fire.
    pub(super) fn adaptive_votes(
        &mut self,
        i: usize,
        to: usize,
        mut votes: Vec<bool>,
    ) -> (Vec<bool>, u64) {
        let ids = std::mem::take(&mut self.nodes[i].last_query);
        let honest_asker = self.nodes[to].strategy == Strategy::Honest;
        if honest_asker && votes.len() == ids.len() {
            let mut backed: Vec<String> = Vec::new();
            for (vote, id) in votes.iter_mut().zip(&ids) {
                let Some(target) = self.adaptive_target(to, id) else {
                    continue;
                };
                let (key, wanted) = target;
                *vote = wanted == *id && !backed.contains(&key);
                if *vote {
                    backed.push(key);
                }
            }
        }
        let hold = self.rng.random_range(0..=MAX_HOLD_MS);
        (votes, hold)
    }

    /// For a vertex contested at `asker`: its key and the member the
    /// adversary backs there.
    fn adaptive_target(&self, asker: usize, id: &VertexId) -> Option<(String, VertexId)> {
        let engine = &self.nodes[asker].engine;
        let vertex = engine.undecided_vertex(id)?;
        for tx in vertex.transactions() {
            let candidates = engine.candidates(&tx.key);
            if candidates.len() < 2 {
                continue;
            }
            let accepted = self.accepted_elsewhere(&tx.key);
            let wanted = match accepted {
                Some(winner) => candidates.iter().find(|c| **c != winner).copied()?,
                None => candidates[0],
            };
            return Some((tx.key.clone(), wanted));
        }
        None
    }

    /// The winner of `key` at the first honest node that accepted one.
    fn accepted_elsewhere(&self, key: &str) -> Option<VertexId> {
        let (node, _) = self.accepted_at.get(key)?.first()?;
        self.nodes[*node].engine.history().winner(key)
    }

    /// Periodic moves of adversarial nodes.
    pub(super) fn adversary_tick(&mut self, i: usize) {
        match self.nodes[i].strategy {
            Strategy::Adaptive => self.maybe_attack(i),
            Strategy::LateRival => self.late_rival(i),
            Strategy::Sybil => self.sybil_votes(i),
            _ => {}
        }
    }

    /// Signs a parent P and rivals A, B on one key (ground so that the
    /// smaller id goes to the first half), sends A to one half and B to the
    /// other at once, and P to each node after its own random delay: every
    /// node starts polling the rival it has when P arrives.
    fn maybe_attack(&mut self, i: usize) {
        let due = match self.nodes[i].last_attack_ms {
            None => self.now >= 100,
            Some(at) => self.now >= at + ATTACK_EVERY_MS,
        };
        let done = self.nodes[i].byz_seq - (1 << 40) >= 3 * MAX_ATTACKS;
        if !due || done {
            return;
        }
        self.nodes[i].last_attack_ms = Some(self.now);
        let Some(parent) = self.nodes[i]
            .engine
            .undecided()
            .first()
            .map(|(id, _)| *id)
            .or_else(|| self.latest_accepted(i))
        else {
            return;
        };
        let round = self.nodes[i].byz_seq;
        let p_seq = self.next_byz_seq(i);
        let Some(p) = self.sign_as(i, vec![parent], p_seq, &format!("byz:{i}:{round}:p"), b"p")
        else {
            return;
        };
        let key = format!("byz:{i}:{round}");
        let mut rivals = Vec::new();
        for _ in 0..2 {
            let seq = self.next_byz_seq(i);
            let mut best: Option<Vertex> = None;
            for attempt in 0..GRIND_TRIES {
                let payload = format!("{attempt}").into_bytes();
                let Some(v) = self.sign_as(i, vec![p.id()], seq, &key, &payload) else {
                    return;
                };
                // Keep the smallest id for the first rival, the largest for
                // the second: the halves disagree on the initial choice.
                let better = best.as_ref().is_none_or(|b| {
                    if rivals.is_empty() {
                        v.id() < b.id()
                    } else {
                        v.id() > b.id()
                    }
                });
                if better {
                    best = Some(v);
                }
            }
            rivals.extend(best);
        }
        for tx_owner in [&p, &rivals[0], &rivals[1]] {
            for tx in tx_owner.transactions() {
                self.issued
                    .entry(tx.key.clone())
                    .or_default()
                    .push((i, tx.payload.clone()));
            }
        }
        let n = self.nodes.len();
        for to in (0..n).filter(|t| *t != i) {
            let rival = rivals[to % 2].clone();
            self.send(i, to, Msg::Vertex(rival));
            let release = self.rng.random_range(50..=400);
            self.send_after(release, i, to, Msg::Vertex(p.clone()));
        }
    }

    /// See [`Strategy::LateRival`]: one rival per accepted key, at most
    /// [`MAX_LATE_RIVALS`] per node.
    fn late_rival(&mut self, i: usize) {
        if self.nodes[i].byz_seq - (1 << 40) >= MAX_LATE_RIVALS {
            return;
        }
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].strategy == Strategy::Honest)
            .collect();
        let target = self.accepted_at.iter().find_map(|(key, at)| {
            if self.late_attacked.contains(key) {
                return None;
            }
            let (first, _) = at.first()?;
            let winner = self.nodes[*first].engine.history().winner(key)?;
            let undecided = honest.iter().any(|n| {
                matches!(
                    self.nodes[*n].engine.status(&winner),
                    crate::engine::VertexStatus::Processing { .. }
                )
            });
            undecided.then(|| (key.clone(), winner))
        });
        let Some((key, winner)) = target else {
            return;
        };
        // Remembered so that each key is attacked once.
        self.late_attacked.insert(key.clone());
        let Some(parents) = self.nodes[i]
            .engine
            .history()
            .vertex(&winner)
            .map(|v| v.parents().to_vec())
        else {
            return;
        };
        let seq = self.next_byz_seq(i);
        let mut best: Option<Vertex> = None;
        for attempt in 0..GRIND_TRIES {
            let payload = format!("late {attempt}").into_bytes();
            let Some(v) = self.sign_as(i, parents.clone(), seq, &key, &payload) else {
                return;
            };
            if best.as_ref().is_none_or(|b| v.id() < b.id()) {
                best = Some(v);
            }
        }
        let Some(rival) = best else {
            return;
        };
        for tx in rival.transactions() {
            self.issued
                .entry(tx.key.clone())
                .or_default()
                .push((i, tx.payload.clone()));
        }
        for to in (0..self.nodes.len()).filter(|t| *t != i) {
            self.send(i, to, Msg::Vertex(rival.clone()));
        }
    }

    fn latest_accepted(&self, i: usize) -> Option<VertexId> {
        let history = self.nodes[i].engine.history();
        history
            .decisions()
            .iter()
            .filter(|(_, (d, _))| *d == crate::history::Decision::Accepted)
            .max_by_key(|(id, (_, at))| (*at, **id))
            .map(|(id, _)| *id)
    }

    fn sign_as(
        &self,
        i: usize,
        parents: Vec<VertexId>,
        seq: u64,
        key: &str,
        payload: &[u8],
    ) -> Option<Vertex> {
        let tx = Transaction {
            key: key.to_string(),
            payload: payload.to_vec(),
        };
        Vertex::sign(&self.nodes[i].key, parents, seq, self.now, vec![tx]).ok()
    }

    /// Votes for recent poll numbers of a random honest node, all yes.
    fn sybil_votes(&mut self, i: usize) {
        if self.now % SYBIL_VOTES_EVERY_MS >= self.config.tick_ms {
            return;
        }
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].strategy == Strategy::Honest)
            .collect();
        if honest.is_empty() {
            return;
        }
        let to = honest[self.rng.random_range(0..honest.len())];
        let started = self.nodes[to].engine.stats().polls_started;
        for poll in started.saturating_sub(4)..=started {
            let votes = vec![true; 64];
            self.send(
                i,
                to,
                Msg::Votes {
                    poll,
                    votes,
                    hints: Vec::new(),
                },
            );
        }
    }
}
