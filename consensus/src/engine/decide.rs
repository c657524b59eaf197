//! Decisions: accepting a vertex rejects its rivals; rejecting a vertex
//! rejects its descendants. Decided vertices leave memory for the history.

use super::{Engine, KeyState, Output, Processing, MAX_ORPHANS, MAX_REISSUES, RECENT_ACCEPTED};
use crate::history::{Decision, History};
use agentmesh_protocol::{Vertex, VertexId};
use std::collections::VecDeque;

impl<H: History> Engine<H> {
    /// Accepts every vertex in `candidates` (and then their descendants)
    /// that meets the acceptance rule, parents first.
    pub(super) fn accept_ready(&mut self, now_ms: u64, candidates: Vec<VertexId>) {
        let mut queue: VecDeque<VertexId> = candidates.into();
        while let Some(id) = queue.pop_front() {
            if !self.acceptable(&id) {
                continue;
            }
            let Some(p) = self.processing.remove(&id) else {
                continue;
            };
            self.processing_txs -= p.vertex.transactions().len();
            queue.extend(p.children.iter().copied());
            self.accept(now_ms, p, true);
        }
    }

    /// Accepts a vertex that validators holding a quorum of weight report
    /// accepted (see [`crate::bootstrap`]), without polling it: an accepted
    /// vertex's ancestors are accepted, and consensus safety means no
    /// honest node decides otherwise. Its parents must be accepted here
    /// already. Rivals still undecided here are rejected, as for any
    /// acceptance; vertices waiting for it move on.
    pub fn accept_bootstrapped(
        &mut self,
        now_ms: u64,
        vertex: Vertex,
    ) -> Result<(), super::BootstrapRefusal> {
        use super::BootstrapRefusal;
        if !self.running() {
            return Err(BootstrapRefusal::Halted(
                self.halt.clone().unwrap_or_default(),
            ));
        }
        let id = vertex.id();
        match self.decided(&id) {
            Some((Decision::Accepted, _)) => return Ok(()),
            Some((Decision::Rejected, _)) => return Err(BootstrapRefusal::Rejected(id)),
            None => {}
        }
        if vertex
            .parents()
            .iter()
            .any(|p| self.history.decision(p).map(|(d, _)| d) != Some(Decision::Accepted))
        {
            return Err(BootstrapRefusal::ParentNotAccepted(id));
        }
        for tx in vertex.transactions() {
            if let Some(winner) = self.history.winner(&tx.key).filter(|w| *w != id) {
                return Err(BootstrapRefusal::Conflict {
                    vertex: id,
                    winner,
                    key: tx.key.clone(),
                });
            }
        }
        self.fetching.remove(&id);
        if !self.processing.contains_key(&id) {
            if let Some(pending) = self.take_pending(&id) {
                self.unlink_pending(&id, &pending.missing);
            }
            // In the processing set for a moment, so that its keys' other
            // candidates become its rivals and lose to it below.
            self.add_processing(vertex);
        }
        let Some(p) = self.processing.remove(&id) else {
            return Ok(());
        };
        self.processing_txs -= p.vertex.transactions().len();
        let children = p.children.clone();
        self.accept(now_ms, p, false);
        self.release_waiters(now_ms, &id);
        self.accept_ready(now_ms, children);
        Ok(())
    }

    fn acceptable(&self, id: &VertexId) -> bool {
        let Some(p) = self.processing.get(id) else {
            return false;
        };
        // A parent still processing is not accepted yet; one outside the
        // processing set is accepted (rejection would have removed us).
        if p.vertex
            .parents()
            .iter()
            .any(|parent| self.processing.contains_key(parent))
        {
            return false;
        }
        (!p.has_uncontested() || p.streak >= self.params.beta_virtuous)
            && p.contested.iter().all(|key| {
                self.contested_set(key)
                    .is_none_or(|set| set.streak(id) >= self.params.beta_rogue)
            })
    }

    /// `polled`: accepted by this node's own polls (else on a quorum's
    /// word while bootstrapping; counted apart).
    fn accept(&mut self, now_ms: u64, p: Processing, polled: bool) {
        let id = p.vertex.id();
        self.leaves.remove(&id);
        self.forget_authored(&p.vertex);
        let mut losers = Vec::new();
        for tx in p.vertex.transactions() {
            if let Some(KeyState::Contested(set)) = self.keys.remove(&tx.key) {
                losers.extend(set.members().filter(|m| *m != id));
            }
            self.reissued.remove(&tx.key);
            self.orphans.remove(&tx.key);
        }
        self.recent_accepted.push_back(id);
        if self.recent_accepted.len() > RECENT_ACCEPTED {
            self.recent_accepted.pop_front();
        }
        let txs = p.vertex.transactions().len() as u64;
        if polled {
            self.stats.accepted_vertices += 1;
            self.stats.accepted_transactions += txs;
        } else {
            self.stats.bootstrapped_vertices += 1;
            self.stats.bootstrapped_transactions += txs;
        }
        self.record_accepted(now_ms, p.vertex);
        self.preferred_memo.clear();
        for loser in losers {
            self.reject(now_ms, loser, Some(id));
        }
    }

    /// Rejects a processing vertex and everything that descends from it;
    /// `winner`, the accepted rival that beat it, is recorded with it (a
    /// hint for askers who never saw the winner).
    pub(super) fn reject(&mut self, now_ms: u64, id: VertexId, winner: Option<VertexId>) {
        let mut queue = VecDeque::from([id]);
        let mut rivals: Vec<VertexId> = winner.into_iter().collect();
        while let Some(id) = queue.pop_front() {
            let Some(p) = self.processing.remove(&id) else {
                continue;
            };
            self.processing_txs -= p.vertex.transactions().len();
            self.leaves.remove(&id);
            self.forget_authored(&p.vertex);
            for tx in p.vertex.transactions() {
                let now_empty = match self.keys.get_mut(&tx.key) {
                    Some(KeyState::Contested(set)) => {
                        set.remove(&id);
                        set.is_empty()
                    }
                    Some(KeyState::Single(single)) => *single == id,
                    None => false,
                };
                if now_empty {
                    self.keys.remove(&tx.key);
                    // The last candidate is gone: a local transaction that
                    // was waiting on its rivals goes out again.
                    if let Some(orphan) = self.orphans.remove(&tx.key) {
                        self.reissue.push(orphan);
                    }
                }
            }
            for parent in p.vertex.parents() {
                if let Some(parent_state) = self.processing.get_mut(parent) {
                    parent_state.children.retain(|c| *c != id);
                    if parent_state.children.is_empty() {
                        self.leaves.insert(*parent);
                    }
                }
            }
            queue.extend(p.children.iter().copied());
            for waiter in self.waiting.remove(&id).unwrap_or_default() {
                if let Some(pending) = self.take_pending(&waiter) {
                    self.unlink_pending(&waiter, &pending.missing);
                    self.reject_unprocessed(now_ms, pending.vertex, Vec::new());
                }
            }
            self.plan_reissue(&p.vertex);
            self.stats.rejected_vertices += 1;
            // Descendants are rejected for their parent, not a rival.
            self.record_rejected(now_ms, p.vertex, std::mem::take(&mut rivals));
        }
        self.preferred_memo.clear();
    }

    /// Rejects a vertex that never entered the processing set (a parent was
    /// rejected, or it conflicts with an accepted transaction: `rivals`),
    /// and the pending vertices waiting for it.
    ///
    /// Another node's vertex rejected so is remembered in memory only, in a
    /// bounded cache, and not announced: the rejection follows from
    /// decisions already recorded (a winner, a rejected parent), so a
    /// vertex that comes back after it left the cache is rejected again the
    /// same way, and a proposer sending vertices that are dead on arrival
    /// costs no node any disk. This node's own vertices are recorded.
    pub(super) fn reject_unprocessed(
        &mut self,
        now_ms: u64,
        vertex: Vertex,
        rivals: Vec<VertexId>,
    ) {
        let mut queue = VecDeque::from([(vertex, rivals)]);
        while let Some((vertex, rivals)) = queue.pop_front() {
            let id = vertex.id();
            self.forget_authored(&vertex);
            for waiter in self.waiting.remove(&id).unwrap_or_default() {
                if let Some(pending) = self.take_pending(&waiter) {
                    self.unlink_pending(&waiter, &pending.missing);
                    queue.push_back((pending.vertex, Vec::new()));
                }
            }
            self.plan_reissue(&vertex);
            self.stats.rejected_vertices += 1;
            if vertex.author() == self.me {
                // This node's own proposal: recorded and announced like
                // any decision (its own disk pays for it).
                self.record_rejected(now_ms, vertex, rivals);
            } else {
                self.rejected_on_arrival.put(id, (now_ms, rivals));
            }
        }
    }

    /// A rejected local vertex's transactions whose keys are still open go
    /// out again in a new vertex (a vertex can be rejected for its parents
    /// alone, which says nothing against its own transactions).
    fn plan_reissue(&mut self, vertex: &Vertex) {
        if vertex.author() != self.me {
            return;
        }
        for tx in vertex.transactions() {
            if self.history.winner(&tx.key).is_some() {
                continue;
            }
            if self.keys.contains_key(&tx.key) {
                // Rivals are still undecided; if they all fail, it goes out
                // again then.
                if self.orphans.len() < MAX_ORPHANS {
                    self.orphans.insert(tx.key.clone(), tx.clone());
                }
                continue;
            }
            if self.reissued.len() >= MAX_ORPHANS {
                // Bounded: forgetting attempt counts only allows a few
                // extra re-proposals of keys that never settled.
                self.reissued.clear();
            }
            let attempts = self.reissued.entry(tx.key.clone()).or_insert(0);
            if *attempts < MAX_REISSUES {
                *attempts += 1;
                self.reissue.push(tx.clone());
            }
        }
    }

    fn record_accepted(&mut self, now_ms: u64, vertex: Vertex) {
        // Nothing is written once a read failed: this decision may rest on it.
        if !self.running() {
            return;
        }
        if let Err(e) = self.history.accept(&vertex, now_ms) {
            self.halt_with(e.to_string());
        }
        self.outputs.push(Output::Decided {
            vertex,
            decision: Decision::Accepted,
        });
    }

    fn record_rejected(&mut self, now_ms: u64, vertex: Vertex, rivals: Vec<VertexId>) {
        if !self.running() {
            return;
        }
        if let Err(e) = self.history.reject(&vertex.id(), now_ms, &rivals) {
            self.halt_with(e.to_string());
        }
        self.outputs.push(Output::Decided {
            vertex,
            decision: Decision::Rejected,
        });
    }
}
