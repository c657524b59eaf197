//! Taking vertices in: duplicates, equivocation, missing ancestors (pending
//! and fetched), conflicts with accepted transactions, the processing set.

use super::{Engine, FetchState, KeyState, Output, Pending, Processing};
use crate::graylist::Misbehaviour;
use crate::history::{Decision, History};
use crate::snowball::ConflictSet;
use agentmesh_protocol::{NodeId, Vertex, VertexId};
use rand::seq::IndexedRandom;
use rand::Rng;
use std::collections::{HashMap, HashSet, VecDeque};

/// Bytes of vertices waiting for missing ancestors (vertices are up to 1 MiB
/// each, so the count bound alone would allow gigabytes).
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Most vertices being fetched at once.
const MAX_FETCHING: usize = 16_384;
/// Attempts to fetch one missing vertex before the waiters give up on it.
pub(super) const MAX_FETCH_ATTEMPTS: usize = 3;
/// Peers remembered per fetched vertex as known to hold it.
const MAX_HOLDERS: usize = 4;

impl<H: History> Engine<H> {
    pub(super) fn receive(&mut self, now_ms: u64, from: Option<NodeId>, vertex: Vertex) {
        let id = vertex.id();
        if self.processing.contains_key(&id)
            || self.pending.contains_key(&id)
            || self.decided(&id).is_some()
        {
            return;
        }
        self.fetching.remove(&id);
        self.check_equivocation(now_ms, &vertex);

        let mut missing = HashSet::new();
        for parent in vertex.parents() {
            if self.processing.contains_key(parent) {
                continue;
            }
            match self.decided(parent) {
                Some((Decision::Accepted, _)) => {}
                Some((Decision::Rejected, _)) => {
                    self.reject_unprocessed(now_ms, vertex, Vec::new());
                    return;
                }
                None => {
                    missing.insert(*parent);
                }
            }
        }
        if missing.is_empty() {
            self.insert_ready(now_ms, vertex);
        } else {
            self.add_pending(now_ms, from, vertex, missing);
        }
    }

    /// Frees `vertex`'s (author, seq) slot, unless it belongs to another
    /// vertex (the first of an equivocating pair keeps it).
    pub(super) fn forget_authored(&mut self, vertex: &Vertex) {
        let slot = (vertex.author(), vertex.seq());
        if self.authored.get(&slot) == Some(&vertex.id()) {
            self.authored.remove(&slot);
        }
    }

    fn check_equivocation(&mut self, now_ms: u64, vertex: &Vertex) {
        let slot = (vertex.author(), vertex.seq());
        let other = self
            .authored
            .get(&slot)
            .copied()
            .or_else(|| self.history.authored(&slot.0, slot.1));
        match other {
            Some(other) if other != vertex.id() => {
                self.misbehaved(now_ms, vertex.author(), Misbehaviour::Equivocation)
            }
            Some(_) => {}
            None => {
                self.authored.insert(slot, vertex.id());
            }
        }
    }

    /// Inserts a vertex whose parents are all processing or accepted, then
    /// any pending vertices that were waiting only for it.
    fn insert_ready(&mut self, now_ms: u64, vertex: Vertex) {
        let mut ready = VecDeque::from([vertex]);
        while let Some(vertex) = ready.pop_front() {
            let id = vertex.id();
            // Parents were processing or accepted when this vertex arrived;
            // one may have been rejected since (while this vertex waited for
            // another parent), and then this vertex is rejected with it.
            let parent_rejected = vertex.parents().iter().any(|parent| {
                !self.processing.contains_key(parent)
                    && self.decided(parent).map(|(d, _)| d) != Some(Decision::Accepted)
            });
            if parent_rejected {
                self.reject_unprocessed(now_ms, vertex, Vec::new());
                continue;
            }
            if !self.has_room(vertex.transactions().len(), 2) {
                // Over the hard bound: dropped, fetched again if a later
                // vertex names it.
                self.forget_authored(&vertex);
                self.drop_waiters(&id);
                continue;
            }
            let mut rivals: Vec<VertexId> = Vec::new();
            for tx in vertex.transactions() {
                if let Some(winner) = self.history.winner(&tx.key).filter(|w| *w != id) {
                    rivals.push(winner);
                    // One rival settles it; a few are hints enough.
                    if rivals.len() >= super::MAX_HINT_LOOKUPS {
                        break;
                    }
                }
            }
            if !rivals.is_empty() || self.conflicts_with_own_ancestry(&vertex) {
                rivals.sort();
                rivals.dedup();
                self.reject_unprocessed(now_ms, vertex, rivals);
                continue;
            }
            self.add_processing(vertex);
            ready.extend(self.take_unblocked(&id));
        }
    }

    /// Pending vertices that waited only for `id` (now processing or
    /// accepted), taken out of the pending set.
    fn take_unblocked(&mut self, id: &VertexId) -> Vec<Vertex> {
        let mut unblocked = Vec::new();
        for waiter in self.waiting.remove(id).unwrap_or_default() {
            let Some(p) = self.pending.get_mut(&waiter) else {
                continue;
            };
            p.missing.remove(id);
            if p.missing.is_empty() {
                if let Some(p) = self.take_pending(&waiter) {
                    unblocked.push(p.vertex);
                }
            }
        }
        unblocked
    }

    /// Moves on the pending vertices that waited only for `id`, which was
    /// just accepted.
    pub(super) fn release_waiters(&mut self, now_ms: u64, id: &VertexId) {
        for vertex in self.take_unblocked(id) {
            self.insert_ready(now_ms, vertex);
        }
    }

    /// A transaction of `vertex` has a key that an undecided ancestor also
    /// holds. Such a vertex can never be accepted: accepting it needs its
    /// ancestor accepted, which rejects it. Left in, it would deadlock its
    /// conflict set whenever it is the preferred member (it can never be
    /// strongly preferred, and its rival is not preferred). Every honest
    /// node rejects it alike: ancestry is part of the vertex's content.
    fn conflicts_with_own_ancestry(&self, vertex: &Vertex) -> bool {
        let keys: Vec<&str> = vertex
            .transactions()
            .iter()
            .map(|tx| tx.key.as_str())
            .filter(|key| self.keys.contains_key(*key))
            .collect();
        if keys.is_empty() {
            return false;
        }
        let mut stack: Vec<VertexId> = vertex.parents().to_vec();
        let mut seen: HashSet<VertexId> = stack.iter().copied().collect();
        while let Some(id) = stack.pop() {
            let Some(p) = self.processing.get(&id) else {
                continue;
            };
            if p.vertex
                .transactions()
                .iter()
                .any(|tx| keys.contains(&tx.key.as_str()))
            {
                return true;
            }
            for parent in p.vertex.parents() {
                if seen.insert(*parent) {
                    stack.push(*parent);
                }
            }
        }
        false
    }

    pub(super) fn add_processing(&mut self, vertex: Vertex) {
        let id = vertex.id();
        let mut height = 0;
        for parent in vertex.parents() {
            if let Some(p) = self.processing.get_mut(parent) {
                height = height.max(p.height + 1);
                p.children.push(id);
                self.leaves.remove(parent);
            }
        }
        let mut contested = Vec::new();
        for tx in vertex.transactions() {
            match self.keys.get_mut(&tx.key) {
                None => {
                    self.keys.insert(tx.key.clone(), KeyState::Single(id));
                }
                Some(KeyState::Single(first)) => {
                    let first = *first;
                    let (wins, vouched) = self.processing.get(&first).map_or((0, false), |p| {
                        (p.wins.min(self.params.max_preference_strength), p.vouched)
                    });
                    let set = ConflictSet::new(first, wins, vouched, id);
                    self.keys.insert(tx.key.clone(), KeyState::Contested(set));
                    if let Some(p) = self.processing.get_mut(&first) {
                        p.contested.push(tx.key.clone());
                    }
                    contested.push(tx.key.clone());
                }
                Some(KeyState::Contested(set)) => {
                    set.add(id);
                    contested.push(tx.key.clone());
                }
            }
        }
        if !contested.is_empty() {
            // Preferences now depend on this set.
            self.preferred_memo.clear();
        }
        self.leaves.insert(id);
        self.unpolled.push_back(id);
        self.processing_txs += vertex.transactions().len();
        self.processing.insert(
            id,
            Processing {
                vertex,
                height,
                children: Vec::new(),
                streak: 0,
                wins: 0,
                vouched: false,
                contested,
            },
        );
    }

    fn add_pending(
        &mut self,
        now_ms: u64,
        from: Option<NodeId>,
        vertex: Vertex,
        missing: HashSet<VertexId>,
    ) {
        if self.pending.len() >= self.params.max_pending
            || self.pending_bytes + super::approximate_size(&vertex) > MAX_PENDING_BYTES
        {
            self.forget_authored(&vertex);
            return;
        }
        let id = vertex.id();
        let mut to_fetch = Vec::new();
        for m in &missing {
            self.waiting.entry(*m).or_default().push(id);
            if !self.pending.contains_key(m) {
                to_fetch.push(*m);
            }
        }
        self.pending_bytes += super::approximate_size(&vertex);
        self.pending.insert(
            id,
            Pending {
                vertex,
                missing,
                since_ms: now_ms,
            },
        );
        to_fetch.sort();
        if let Some(from) = from {
            self.fetch(now_ms, from, to_fetch, false);
        }
    }

    /// Asks `from`, which evidently holds them, for `ids` (vertices this
    /// node neither holds nor has decided). Ids already being fetched are
    /// not asked for again; `from` is remembered as a holder for their
    /// retries. `named`: `from` named them itself, rather than as missing
    /// parents of a vertex it sent; such fetches take at most half the
    /// table, so that ids a peer makes up cannot crowd out the parents
    /// pending vertices wait for.
    pub(super) fn fetch(&mut self, now_ms: u64, from: NodeId, ids: Vec<VertexId>, named: bool) {
        if from == self.me {
            return;
        }
        let mut to_ask = Vec::new();
        for id in ids {
            if let Some(state) = self.fetching.get_mut(&id) {
                state.named |= named;
                if !state.asked.contains(&from) && !state.holders.contains(&from) {
                    if state.holders.len() < MAX_HOLDERS {
                        state.holders.push(from);
                    } else {
                        let at = self.rng.random_range(0..MAX_HOLDERS);
                        state.holders[at] = from;
                    }
                }
                continue;
            }
            // Bounded: ids named by peers beyond this are not chased now
            // (they come back if named again).
            let limit = if named {
                MAX_FETCHING / 2
            } else {
                MAX_FETCHING
            };
            if self.fetching.len() >= limit {
                continue;
            }
            self.fetching.insert(
                id,
                FetchState {
                    sent_ms: now_ms,
                    asked: vec![from],
                    holders: Vec::new(),
                    named,
                },
            );
            to_ask.push(id);
        }
        if !to_ask.is_empty() {
            self.push_fetch(from, &to_ask);
        }
    }

    /// Asks `peer` for `ids`, in as many requests as the wire limit needs.
    fn push_fetch(&mut self, peer: NodeId, ids: &[VertexId]) {
        for chunk in ids.chunks(agentmesh_protocol::consensus_wire::MAX_FETCH_IDS) {
            self.outputs.push(Output::Fetch {
                from: peer,
                ids: chunk.to_vec(),
            });
        }
    }

    /// Vertices not delivered in time are asked again; after a few
    /// attempts the vertices waiting for them are dropped. A missing
    /// parent is asked of a holder (see [`FetchState::holders`]), else,
    /// and always at the last attempt, of a random peer not asked yet. A
    /// vertex only named by peers is asked of a holder, else of the peer
    /// that named it first again (its answer may have been lost), never of
    /// a random peer. A vertex neither waited for nor named is not asked
    /// again.
    pub(super) fn retry_fetches(&mut self, now_ms: u64) {
        let timeout = self.params.fetch_timeout_ms;
        // Sorted here and below: iteration order of hash maps differs from
        // run to run, and the simulator must replay a seed exactly.
        let mut overdue: Vec<VertexId> = self
            .fetching
            .iter()
            .filter(|(_, f)| now_ms.saturating_sub(f.sent_ms) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        overdue.sort();
        let candidates: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|p| !self.graylist.is_graylisted(p, now_ms))
            .copied()
            .collect();
        let mut by_peer: HashMap<NodeId, Vec<VertexId>> = HashMap::new();
        for id in overdue {
            let Some(mut state) = self.fetching.remove(&id) else {
                continue;
            };
            let waited = self.waiting.contains_key(&id);
            let peer = if (waited || state.named) && state.asked.len() < MAX_FETCH_ATTEMPTS {
                self.retry_peer(&mut state, waited, &candidates)
            } else {
                None
            };
            match peer {
                Some(peer) => {
                    state.sent_ms = now_ms;
                    state.asked.push(peer);
                    self.fetching.insert(id, state);
                    by_peer.entry(peer).or_default().push(id);
                }
                None => self.drop_waiters(&id),
            }
        }
        let mut by_peer: Vec<_> = by_peer.into_iter().collect();
        by_peer.sort();
        for (peer, ids) in by_peer {
            self.push_fetch(peer, &ids);
        }
    }

    /// Whom to ask next for a vertex (see [`Engine::retry_fetches`]);
    /// `candidates` are the peers not graylisted, sorted.
    fn retry_peer(
        &mut self,
        state: &mut FetchState,
        waited: bool,
        candidates: &[NodeId],
    ) -> Option<NodeId> {
        state
            .holders
            .retain(|p| candidates.binary_search(p).is_ok() && !state.asked.contains(p));
        // A missing parent's last attempt goes to a random peer not asked
        // yet, whoever named it.
        let random_turn = waited && state.asked.len() + 1 == MAX_FETCH_ATTEMPTS;
        if !state.holders.is_empty() && !random_turn {
            let at = self.rng.random_range(0..state.holders.len());
            return Some(state.holders.swap_remove(at));
        }
        if waited {
            let fresh: Vec<NodeId> = candidates
                .iter()
                .filter(|p| !state.asked.contains(p))
                .copied()
                .collect();
            return fresh.choose(&mut self.rng).copied();
        }
        state
            .asked
            .first()
            .copied()
            .filter(|p| candidates.binary_search(p).is_ok())
    }

    pub(super) fn expire_pending(&mut self, now_ms: u64) {
        let timeout = self.params.pending_timeout_ms;
        let mut stale: Vec<VertexId> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.since_ms) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        stale.sort();
        for id in stale {
            self.drop_pending(&id);
        }
    }

    /// Forgets pending vertices (transitively) waiting for `missing`,
    /// without deciding them: they come back if named again.
    fn drop_waiters(&mut self, missing: &VertexId) {
        let mut queue: VecDeque<VertexId> = self.waiting.remove(missing).unwrap_or_default().into();
        while let Some(id) = queue.pop_front() {
            if let Some(p) = self.take_pending(&id) {
                self.forget_authored(&p.vertex);
                self.unlink_pending(&id, &p.missing);
                queue.extend(self.waiting.remove(&id).unwrap_or_default());
            }
        }
    }

    fn drop_pending(&mut self, id: &VertexId) {
        if let Some(p) = self.take_pending(id) {
            self.forget_authored(&p.vertex);
            self.unlink_pending(id, &p.missing);
            self.drop_waiters(id);
        }
    }

    /// Takes a vertex out of the pending set (keeping its byte count right).
    pub(super) fn take_pending(&mut self, id: &VertexId) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        self.pending_bytes -= super::approximate_size(&p.vertex);
        Some(p)
    }

    /// Removes a pending vertex from the waiting lists of its missing parents.
    pub(super) fn unlink_pending(&mut self, id: &VertexId, missing: &HashSet<VertexId>) {
        for m in missing {
            if let Some(list) = self.waiting.get_mut(m) {
                list.retain(|w| w != id);
                if list.is_empty() {
                    self.waiting.remove(m);
                }
            }
        }
    }
}
