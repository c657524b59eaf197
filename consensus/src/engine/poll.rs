//! Polls: sampling voters, batching vertex ids into queries, counting votes
//! transitively, and updating streaks and Snowball counters.

use super::{Engine, KeyState, Output, Poll, PollId};
use crate::graylist::Misbehaviour;
use crate::history::{Decision, History};
use crate::snowball::PollResult;
use agentmesh_protocol::{NodeId, VertexId};
use rand::Rng;
use std::collections::{HashMap, HashSet};

impl Poll {
    /// The votes behind `mask`: each voter counts as often as it was drawn.
    fn weight(&self, mask: u64) -> usize {
        self.draws
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, draws)| *draws as usize)
            .sum()
    }

    /// Draws of voters that have not answered (nor failed) yet.
    fn outstanding_weight(&self) -> usize {
        self.draws
            .iter()
            .enumerate()
            .filter(|(bit, _)| self.answered & (1 << bit) == 0)
            .map(|(_, draws)| *draws as usize)
            .sum()
    }
}

/// See [`Engine::poll_slots`].
const TARGET_POLL_RATE: f64 = 50.0;
const MIN_POLL_SLOTS: usize = 4;

impl<H: History> Engine<H> {
    /// Starts polls while there is room: new vertices first, then the
    /// undecided frontier again.
    pub(super) fn issue_polls(&mut self, now_ms: u64) {
        let mut started = 0;
        let slots = self.poll_slots();
        while self.polls.len() < slots && started < slots {
            let mut ids = Vec::new();
            while ids.len() < self.params.batch_size {
                let Some(id) = self.unpolled.pop_front() else {
                    break;
                };
                if self.processing.contains_key(&id) {
                    ids.push(id);
                }
            }
            let repoll = ids.is_empty();
            if repoll {
                if self.processing.is_empty() || now_ms < self.next_repoll_ms {
                    break;
                }
                ids = self.repoll_batch();
                if ids.is_empty() {
                    break;
                }
            }
            started += 1;
            let ids = self.with_preferred_rivals(ids);
            self.start_poll(now_ms, ids, repoll);
        }
    }

    /// Polls allowed in flight: enough to keep about [`TARGET_POLL_RATE`]
    /// polls a second going at the polls' measured duration, between
    /// [`MIN_POLL_SLOTS`] and `max_polls_in_flight`. On a fast network a few
    /// suffice (more only queue behind each other and lengthen every round
    /// trip); where round trips take seconds, more polls overlap, so a
    /// conflict still sees enough polls to finish a confidence run soon.
    pub(super) fn poll_slots(&self) -> usize {
        let wanted = (TARGET_POLL_RATE * self.poll_ms / 1000.0).ceil() as usize;
        wanted
            .max(MIN_POLL_SLOTS)
            .min(self.params.max_polls_in_flight)
    }

    /// The undecided vertices closest to the accepted part of the DAG, in
    /// an order among equal heights drawn afresh each time; of those, the
    /// ones this node prefers first. Asking about them directly (not only
    /// through descendants) matters: a virtuous vertex below a contested
    /// one gets yes votes from both sides of the conflict only when it is
    /// asked about itself. The shuffle and the preference keep a flood of
    /// rivals nobody prefers (they stay in the frontier, as nothing builds
    /// on them) from taking every place in the batch; a rival that does get
    /// in brings its set's preferred member along (`with_preferred_rivals`).
    fn repoll_batch(&mut self) -> Vec<VertexId> {
        let batch = self.params.batch_size;
        let salt: u64 = self.rng.random();
        let mut lowest: Vec<(u64, u64, VertexId)> = self
            .processing
            .iter()
            .map(|(id, p)| (p.height, shuffled(id, salt), *id))
            .collect();
        // Preference is judged for a few batches' worth only.
        let pool = (4 * batch).min(lowest.len());
        if pool < lowest.len() {
            lowest.select_nth_unstable(pool);
            lowest.truncate(pool);
        }
        let mut ranked: Vec<(u64, bool, u64, VertexId)> = lowest
            .into_iter()
            .map(|(height, order, id)| (height, !self.strongly_preferred(&id), order, id))
            .collect();
        ranked.sort_unstable();
        ranked.truncate(batch);
        ranked.into_iter().map(|(_, _, _, id)| id).collect()
    }

    /// `ids` and the preferred member of every conflict set they are in: a
    /// poll about a rival alone would show nothing for the member the
    /// voters prefer, end its confidence run, and let a stream of rivals
    /// (one per poll) keep a key from ever being decided.
    fn with_preferred_rivals(&self, mut ids: Vec<VertexId>) -> Vec<VertexId> {
        let room = agentmesh_protocol::consensus_wire::MAX_QUERY_IDS;
        let asked: HashSet<VertexId> = ids.iter().copied().collect();
        let mut extra = Vec::new();
        for id in &ids {
            let Some(p) = self.processing.get(id) else {
                continue;
            };
            for key in &p.contested {
                if let Some(KeyState::Contested(set)) = self.keys.get(key) {
                    let preferred = set.preference();
                    if !asked.contains(&preferred) && !extra.contains(&preferred) {
                        extra.push(preferred);
                    }
                }
            }
        }
        extra.truncate(room.saturating_sub(ids.len()));
        ids.extend(extra);
        ids
    }

    fn start_poll(&mut self, now_ms: u64, ids: Vec<VertexId>, repoll: bool) {
        // k weighted draws with replacement from the whole validator set:
        // benched validators are drawn like the rest and count as a no.
        let drawn = self.validators.sample(&mut self.rng, self.params.k);
        let contested = !self
            .contested_keys(&self.ancestry_by_height(ids.clone()))
            .is_empty();
        let poll_id = self.next_poll;
        self.next_poll += 1;
        self.stats.polls_started += 1;
        let mut deadline_ms = now_ms;
        let mut poll = Poll {
            yes: vec![0; ids.len()],
            ids,
            voters: drawn.iter().map(|(id, _)| *id).collect(),
            draws: drawn.iter().map(|(_, n)| *n).collect(),
            answered: 0,
            sent_ms: now_ms,
            deadline_ms,
            repoll,
            contested,
        };
        let mut peers = Vec::with_capacity(poll.voters.len());
        for (bit, voter) in poll.voters.iter().enumerate() {
            if *voter == self.me {
                poll.answered |= 1 << bit;
                for (i, id) in poll.ids.iter().enumerate() {
                    if self.strongly_preferred(id) {
                        poll.yes[i] |= 1 << bit;
                    }
                }
            } else if self.graylist.is_graylisted(voter, now_ms) {
                // Benched: a no, at once, without a query.
                poll.answered |= 1 << bit;
            } else {
                deadline_ms =
                    deadline_ms.max(now_ms + self.timeouts.timeout_ms(voter, &self.params));
                peers.push(*voter);
            }
        }
        poll.deadline_ms = deadline_ms;
        if !peers.is_empty() {
            self.outputs.push(Output::Query {
                poll: poll_id,
                peers,
                ids: poll.ids.clone(),
            });
        }
        self.polls.insert(poll_id, poll);
        self.end_if_done(now_ms, poll_id);
    }

    /// Votes from `from` for poll `poll`, one per queried id, and hints of
    /// accepted rivals (fetched from `from` when unknown here).
    pub fn on_votes(
        &mut self,
        now_ms: u64,
        from: NodeId,
        poll_id: PollId,
        votes: &[bool],
        hints: &[VertexId],
    ) {
        if !self.running() {
            return;
        }
        let Some(poll) = self.polls.get(&poll_id) else {
            // Finished early, or timed out: a late answer still tells how
            // long this validator takes.
            if let Some((_, sent_ms)) = self.expired.iter().find(|(id, _)| *id == poll_id) {
                if self.validators.contains(&from) {
                    self.timeouts
                        .answered(from, now_ms.saturating_sub(*sent_ms));
                }
            }
            return;
        };
        let Some(bit) = poll.voters.iter().position(|v| *v == from) else {
            return;
        };
        if poll.answered & (1 << bit) != 0 {
            return;
        }
        let ids = poll.ids.clone();
        let rtt_ms = now_ms.saturating_sub(poll.sent_ms);
        self.timeouts.answered(from, rtt_ms);
        self.graylist.answered(&from);
        let unknown: Vec<VertexId> = hints
            .iter()
            .filter(|h| {
                !self.processing.contains_key(h)
                    && !self.pending.contains_key(h)
                    && self.decided(h).is_none()
            })
            .copied()
            .collect();
        self.fetch(now_ms, from, unknown, true);
        let mut counted = Vec::with_capacity(votes.len());
        if votes.len() != ids.len() {
            self.misbehaved(now_ms, from, Misbehaviour::InconsistentVotes);
        } else {
            for (id, vote) in ids.iter().zip(votes) {
                counted.push(*vote && !self.contradicts_finalized(now_ms, from, id));
            }
        }
        let Some(poll) = self.polls.get_mut(&poll_id) else {
            return;
        };
        poll.answered |= 1 << bit;
        for (i, vote) in counted.into_iter().enumerate() {
            if vote {
                poll.yes[i] |= 1 << bit;
            }
        }
        self.end_if_done(now_ms, poll_id);
        self.issue_polls(now_ms);
    }

    /// A yes for a vertex this node rejected long enough ago that every
    /// honest node has seen the outcome too.
    fn contradicts_finalized(&mut self, now_ms: u64, from: NodeId, id: &VertexId) -> bool {
        if self.processing.contains_key(id) {
            return false;
        }
        let Some((Decision::Rejected, at_ms)) = self.decided(id) else {
            return false;
        };
        if now_ms < at_ms + self.params.contradiction_grace_ms {
            return false;
        }
        if self
            .graylist
            .contradicted(from, now_ms, self.params.contradiction_strikes)
        {
            self.misbehaved(now_ms, from, Misbehaviour::ContradictsFinalized);
        }
        true
    }

    /// The query to `peer` for `poll` failed: the peer votes no. A peer that
    /// was `silent` (connected, but did not answer in time) earns a silence
    /// strike; one that could not be reached at all (no connection, the
    /// connection dropped) does not: that is a network fault, not conduct.
    pub fn on_query_failed(&mut self, now_ms: u64, peer: NodeId, poll_id: PollId, silent: bool) {
        if !self.running() {
            return;
        }
        let Some(poll) = self.polls.get_mut(&poll_id) else {
            return;
        };
        let Some(bit) = poll.voters.iter().position(|v| *v == peer) else {
            return;
        };
        if poll.answered & (1 << bit) != 0 {
            return;
        }
        poll.answered |= 1 << bit;
        if silent {
            self.silent(now_ms, peer);
        }
        self.end_if_done(now_ms, poll_id);
        self.issue_polls(now_ms);
    }

    fn silent(&mut self, now_ms: u64, peer: NodeId) {
        if self.graylist.silent(peer, self.params.silence_strikes) {
            self.misbehaved(now_ms, peer, Misbehaviour::Silence);
        }
    }

    pub(super) fn expire_polls(&mut self, now_ms: u64) {
        let mut expired: Vec<PollId> = self
            .polls
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for poll_id in expired {
            let Some(poll) = self.polls.remove(&poll_id) else {
                continue;
            };
            for (bit, voter) in poll.voters.iter().enumerate() {
                if poll.answered & (1 << bit) == 0 {
                    self.silent(now_ms, *voter);
                }
            }
            if self.expired.len() >= super::MAX_EXPIRED_POLLS {
                self.expired.pop_front();
            }
            self.expired.push_back((poll_id, poll.sent_ms));
            self.finish_poll(now_ms, poll);
        }
    }

    /// Applies a finished poll: votes flow to undecided ancestors, streaks
    /// and Snowball counters move, and vertices that qualify are accepted.
    fn finish_poll(&mut self, now_ms: u64, poll: Poll) {
        if poll.voters.iter().any(|v| *v != self.me) {
            let took = now_ms.saturating_sub(poll.sent_ms) as f64;
            self.poll_ms = 0.9 * self.poll_ms + 0.1 * took;
        }
        let (touched, mut masks) = self.transitive_votes(&poll);
        let contested = self.contested_keys(&touched);
        let liars = self.double_voters(&contested, &masks);
        if liars != 0 {
            for (bit, voter) in poll.voters.iter().enumerate() {
                if liars & (1 << bit) != 0 {
                    self.misbehaved(now_ms, *voter, Misbehaviour::InconsistentVotes);
                }
            }
            for mask in masks.values_mut() {
                *mask &= !liars;
            }
        }
        let (alpha_preference, alpha_confidence, max_strength) = (
            self.params.alpha_preference,
            self.params.alpha_confidence,
            self.params.max_preference_strength,
        );
        // A poll says something about a vertex it asked about, or one that
        // drew some votes through descendants. An ancestor nobody voted for
        // only because its descendants were unknown or disliked keeps its
        // streak (otherwise a stream of unpopular children would keep
        // resetting honest ancestors).
        let asked: HashSet<VertexId> = poll.ids.iter().copied().collect();
        let concerned = |id: &VertexId, mask: u64| mask != 0 || asked.contains(id);
        let mut progress = false;
        for id in &touched {
            let mask = masks.get(id).copied().unwrap_or(0);
            let votes = poll.weight(mask);
            let won = votes >= alpha_confidence;
            if let Some(p) = self.processing.get_mut(id) {
                if votes >= alpha_preference {
                    p.wins = p.wins.saturating_add(1);
                }
                if won {
                    p.streak += 1;
                } else if concerned(id, mask) {
                    p.streak = 0;
                }
                progress |= won;
            }
        }
        let mut moved = false;
        for key in &contested {
            if let Some(KeyState::Contested(set)) = self.keys.get_mut(key) {
                // Double voters are stripped above, so at most one member
                // can hold a majority of the draws.
                let best = set
                    .members()
                    .map(|m| (poll.weight(masks.get(&m).copied().unwrap_or(0)), m))
                    .filter(|(votes, _)| *votes >= alpha_preference)
                    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
                let any_concerned = set
                    .members()
                    .any(|m| concerned(&m, masks.get(&m).copied().unwrap_or(0)));
                let result = match best {
                    Some((votes, winner)) if votes >= alpha_confidence => {
                        PollResult::Confident(winner)
                    }
                    Some((_, winner)) => PollResult::Preferred(winner),
                    None if !any_concerned => continue,
                    None => PollResult::Unsuccessful,
                };
                moved |= set.record(result, max_strength);
            }
        }
        if moved {
            self.preferred_memo.clear();
        }
        if progress {
            self.stats.polls_succeeded += 1;
        } else if poll.repoll {
            self.next_repoll_ms = now_ms + self.params.repoll_delay_ms;
        }
        self.accept_ready(now_ms, touched);
    }

    /// The vertices a poll concerns (the ids asked about and their undecided
    /// ancestors, parents first) and each one's yes votes: a vote for a
    /// vertex is a vote for its undecided ancestors.
    fn transitive_votes(&self, poll: &Poll) -> (Vec<VertexId>, HashMap<VertexId, u64>) {
        let mut masks: HashMap<VertexId, u64> = HashMap::new();
        for (id, yes) in poll.ids.iter().zip(&poll.yes) {
            if self.processing.contains_key(id) {
                *masks.entry(*id).or_default() |= *yes;
            }
        }
        let touched = self.ancestry_by_height(masks.keys().copied().collect());
        // Children before parents: a parent collects its children's votes.
        for id in touched.iter().rev() {
            let mask = masks.get(id).copied().unwrap_or(0);
            if mask == 0 {
                continue;
            }
            if let Some(p) = self.processing.get(id) {
                for parent in p.vertex.parents() {
                    if self.processing.contains_key(parent) {
                        *masks.entry(*parent).or_default() |= mask;
                    }
                }
            }
        }
        (touched, masks)
    }

    /// A poll may end before every answer is in only when no answer still
    /// out could change anything it decides: for every vertex it concerns,
    /// ancestors included, whether it reaches α-preference and
    /// α-confidence, and whether it drew any vote at all (which decides
    /// whether an ancestor's streak is reset). Partial counts never feed a
    /// decision the full count would not have made.
    fn may_end_early(&self, poll: &Poll) -> bool {
        let (ap, ac) = (self.params.alpha_preference, self.params.alpha_confidence);
        if !poll.contested && poll.yes.iter().all(|m| poll.weight(*m) >= ac) {
            // Ancestors hold supersets of these votes, and with no conflict
            // in reach no voter's votes can be struck out as a double vote.
            return true;
        }
        let out = poll.outstanding_weight();
        let fixed = |w: usize| w >= ac || w + out < ap || (w >= ap && w + out < ac);
        let (touched, mut masks) = self.transitive_votes(poll);
        // Counted as `finish_poll` will count them: without double voters.
        let liars = self.double_voters(&self.contested_keys(&touched), &masks);
        for mask in masks.values_mut() {
            *mask &= !liars;
        }
        touched.iter().all(|id| {
            let mask = masks.get(id).copied().unwrap_or(0);
            fixed(poll.weight(mask)) && (mask != 0 || poll.ids.contains(id))
        })
    }

    fn end_if_done(&mut self, now_ms: u64, poll_id: PollId) {
        let Some(poll) = self.polls.get(&poll_id) else {
            return;
        };
        if poll.outstanding_weight() == 0 || self.may_end_early(poll) {
            if let Some(poll) = self.polls.remove(&poll_id) {
                self.finish_poll(now_ms, poll);
            }
        }
    }

    /// `roots` and their undecided ancestors, parents before children.
    fn ancestry_by_height(&self, roots: Vec<VertexId>) -> Vec<VertexId> {
        let mut seen: HashSet<VertexId> = roots.iter().copied().collect();
        let mut stack = roots;
        let mut all = Vec::new();
        while let Some(id) = stack.pop() {
            let Some(p) = self.processing.get(&id) else {
                continue;
            };
            all.push((p.height, id));
            for parent in p.vertex.parents() {
                if self.processing.contains_key(parent) && seen.insert(*parent) {
                    stack.push(*parent);
                }
            }
        }
        all.sort();
        all.into_iter().map(|(_, id)| id).collect()
    }

    fn contested_keys(&self, touched: &[VertexId]) -> Vec<String> {
        let mut keys = HashSet::new();
        for id in touched {
            if let Some(p) = self.processing.get(id) {
                keys.extend(p.contested.iter().cloned());
            }
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();
        keys
    }

    /// Voters that said yes (directly or through descendants) to two rival
    /// vertices: no honest node prefers both sides of a conflict at once.
    fn double_voters(&self, contested: &[String], masks: &HashMap<VertexId, u64>) -> u64 {
        let mut liars = 0;
        for key in contested {
            if let Some(KeyState::Contested(set)) = self.keys.get(key) {
                let mut seen = 0u64;
                for member in set.members() {
                    let mask = masks.get(&member).copied().unwrap_or(0);
                    liars |= seen & mask;
                    seen |= mask;
                }
            }
        }
        liars
    }
}

/// A per-call reordering of ids (the first 8 bytes of an id are uniform:
/// it is a hash).
fn shuffled(id: &VertexId, salt: u64) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&id.0[..8]);
    (u64::from_le_bytes(head) ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
