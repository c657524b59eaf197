use super::*;
use crate::history::MemoryHistory;
use crate::validators::ValidatorSet;

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32]).unwrap()
}

fn tx(k: &str) -> Transaction {
    Transaction {
        key: k.into(),
        payload: vec![1],
    }
}

/// An engine whose validator set is itself alone.
fn engine(n: u8) -> Engine<MemoryHistory> {
    let mut e = Engine::new(
        Params::default(),
        key(n),
        MemoryHistory::default(),
        n as u64,
    )
    .unwrap();
    set_peers(&mut e, vec![]);
    e
}

/// Makes `peers` and the engine itself the validators, weight 1 each.
fn set_peers(e: &mut Engine<MemoryHistory>, peers: Vec<NodeId>) {
    let me = e.node_id();
    e.set_validators(ValidatorSet::equal_weights(
        1,
        peers.into_iter().chain([me]),
    ));
}

#[test]
fn nothing_is_final_on_insertion_and_a_lone_node_decides_by_polling_itself() {
    let mut e = engine(1);
    let id = e.propose(0, vec![tx("task:1")]).unwrap();
    assert!(matches!(e.status(&id), VertexStatus::Processing { .. }));
    let mut now = 0;
    while e.status(&id) != VertexStatus::Accepted && now < 10_000 {
        now += 10;
        e.tick(now);
    }
    assert_eq!(e.status(&id), VertexStatus::Accepted);
    assert!(e.take_outputs().iter().any(|o| matches!(
        o,
        Output::Decided {
            decision: Decision::Accepted,
            ..
        }
    )));
}

#[test]
fn a_peer_with_peers_queries_them_and_counts_their_votes() {
    let mut e = engine(1);
    let peer = key(2).node_id();
    set_peers(&mut e, vec![peer]);
    let id = e.propose(0, vec![tx("a")]).unwrap();
    let outputs = e.take_outputs();
    let poll = outputs
        .iter()
        .find_map(|o| match o {
            Output::Query { poll, peers, ids } if peers == &vec![peer] && ids == &vec![id] => {
                Some(*poll)
            }
            _ => None,
        })
        .expect("a query to the peer");
    // Half of the draws fall on the peer: its no vote fails the poll.
    e.on_votes(1, peer, poll, &[false], &[]);
    assert_eq!(
        e.status(&id),
        VertexStatus::Processing {
            confidence: 0,
            preferred: true
        }
    );
}

#[test]
fn equivocation_and_bad_vertices_graylist_the_peer() {
    let mut e = engine(1);
    let rogue = key(3);
    set_peers(&mut e, vec![rogue.node_id()]);
    let a = Vertex::sign(&rogue, vec![], 1, 0, vec![tx("x")]).unwrap();
    let b = Vertex::sign(&rogue, vec![], 1, 0, vec![tx("y")]).unwrap();
    e.on_vertex(0, rogue.node_id(), a);
    e.on_vertex(0, rogue.node_id(), b);
    assert_eq!(e.graylisted(1).len(), 1);
    let reasons: Vec<_> = e
        .take_outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::Graylisted { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec![Misbehaviour::Equivocation]);
    let other = key(4).node_id();
    e.on_invalid_vertex(0, other);
    assert!(e.graylisted(1).iter().any(|(p, _)| *p == other));
    // Graylisted peers are not sampled: only self votes now, and self alone
    // is not a quorum of a three-node population.
    let z = Vertex::sign(&key(5), vec![], 1, 0, vec![tx("z")]).unwrap();
    let z_id = z.id();
    e.on_vertex(2, other, z);
    let queried: Vec<_> = e
        .take_outputs()
        .into_iter()
        .filter(|o| matches!(o, Output::Query { .. }))
        .collect();
    assert!(queried.is_empty(), "{queried:?}");
    for now in 3..200 {
        e.tick(now * 10);
    }
    assert!(
        matches!(
            e.status(&z_id),
            VertexStatus::Processing { confidence: 0, .. }
        ),
        "{:?}",
        e.status(&z_id)
    );
}

#[test]
fn unknown_parents_are_fetched_from_the_sender_and_queries_answer_no() {
    let mut e = engine(1);
    let peer = key(2);
    let parent = Vertex::sign(&peer, vec![], 1, 0, vec![tx("p")]).unwrap();
    let child = Vertex::sign(&peer, vec![parent.id()], 2, 0, vec![tx("c")]).unwrap();
    e.on_vertex(0, peer.node_id(), child.clone());
    assert_eq!(e.status(&child.id()), VertexStatus::Pending);
    let fetched = e.take_outputs().into_iter().any(
        |o| matches!(o, Output::Fetch { from, ids } if from == peer.node_id() && ids == vec![parent.id()]),
    );
    assert!(fetched);
    e.on_query(1, peer.node_id(), 7, &[child.id()]);
    assert!(e
        .take_outputs()
        .iter()
        .any(|o| matches!(o, Output::Votes { request: 7, votes, .. } if votes == &vec![false])));
    e.on_vertex(2, peer.node_id(), parent);
    assert!(matches!(
        e.status(&child.id()),
        VertexStatus::Processing { .. }
    ));
}

#[test]
fn sequence_numbers_are_leased_durably_and_never_repeat() {
    let mut e = engine(1);
    let mut seqs = Vec::new();
    for i in 0..5 {
        let id = e.propose(i, vec![tx(&format!("k{i}"))]).unwrap();
        seqs.push(e.undecided_vertex(&id).unwrap().seq());
    }
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "{seqs:?}");
    // What a restarted node would start from lies beyond every number used.
    assert!(e.history().next_seq() > *seqs.iter().max().unwrap());
}

/// The ids of the fetches among `outputs`, by the peer asked.
fn fetches(outputs: Vec<Output>) -> Vec<(NodeId, Vec<VertexId>)> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Fetch { from, ids } => Some((from, ids)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_missing_parent_is_asked_again_of_a_peer_that_showed_it_holds_it() {
    let mut e = engine(1);
    // Many peers: a retry drawn at random would rarely pick the holder.
    let peers: Vec<NodeId> = (2..30).map(|n| key(n).node_id()).collect();
    set_peers(&mut e, peers);
    let author = key(40);
    let parent = Vertex::sign(&author, vec![], 1, 0, vec![tx("p")]).unwrap();
    let child = Vertex::sign(&author, vec![parent.id()], 2, 0, vec![tx("c")]).unwrap();
    // A peer that names the parent but never delivers it is asked first.
    let (liar, holder) = (key(2).node_id(), key(3).node_id());
    e.on_query(0, liar, 1, &[parent.id()]);
    assert_eq!(fetches(e.take_outputs()), vec![(liar, vec![parent.id()])]);
    // Then a peer relays a child: it holds the parent, but the parent is
    // already being fetched, so it is not asked twice at once.
    e.on_vertex(10, holder, child.clone());
    assert!(fetches(e.take_outputs()).is_empty());
    // Naming it again does not put the peer already asked back in line.
    e.on_query(20, liar, 2, &[parent.id()]);
    let timeout = Params::default().fetch_timeout_ms;
    e.tick(timeout + 1);
    assert_eq!(fetches(e.take_outputs()), vec![(holder, vec![parent.id()])]);
    // The holder's answer is lost too: the last attempt goes to a peer
    // asked by no one yet.
    e.tick(2 * timeout + 2);
    let last = fetches(e.take_outputs());
    assert_eq!(last.len(), 1);
    assert!(![liar, holder].contains(&last[0].0), "{last:?}");
    e.on_vertex(2 * timeout + 3, last[0].0, parent);
    assert!(matches!(
        e.status(&child.id()),
        VertexStatus::Processing { .. }
    ));
}

#[test]
fn a_vertex_named_in_a_query_is_asked_again_when_the_answer_is_lost() {
    let mut e = engine(1);
    let (asker, other) = (key(2).node_id(), key(3).node_id());
    set_peers(&mut e, vec![asker, other]);
    let unknown = Vertex::sign(&key(40), vec![], 1, 0, vec![tx("u")]).unwrap();
    e.on_query(0, asker, 1, &[unknown.id()]);
    assert_eq!(fetches(e.take_outputs()), vec![(asker, vec![unknown.id()])]);
    // Nothing waits for it, yet a peer polls it: it is wanted, and asked
    // again of the peer that named it (never of a random one).
    let timeout = Params::default().fetch_timeout_ms;
    let mut asked_again = Vec::new();
    for round in 1..=5 {
        e.tick(round * (timeout + 1));
        asked_again.extend(fetches(e.take_outputs()));
    }
    // A bounded number of times, then given up (named again, it is
    // asked for again).
    assert_eq!(
        asked_again,
        vec![(asker, vec![unknown.id()]); super::insert::MAX_FETCH_ATTEMPTS - 1]
    );
    e.on_query(6 * timeout, asker, 2, &[unknown.id()]);
    assert_eq!(fetches(e.take_outputs()), vec![(asker, vec![unknown.id()])]);
}

/// The peers a poll's queries went to, over `outputs`.
fn queried(outputs: &[Output]) -> Vec<(PollId, Vec<NodeId>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Query { poll, peers, .. } => Some((*poll, peers.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn only_validators_are_asked_and_only_their_votes_count() {
    let mut e = engine(1);
    let validator = key(2).node_id();
    let outsider = key(3).node_id();
    // The engine itself does not vote here: its one validator decides.
    e.set_validators(ValidatorSet::equal_weights(1, [validator]));
    let id = e.propose(0, vec![tx("a")]).unwrap();
    let polls = queried(&e.take_outputs());
    assert!(!polls.is_empty());
    for (_, peers) in &polls {
        assert_eq!(peers, &vec![validator], "only the validator is asked");
    }
    // An outsider's yes votes, for every poll, change nothing.
    for (poll, _) in &polls {
        e.on_votes(1, outsider, *poll, &[true], &[]);
    }
    assert_eq!(
        e.status(&id),
        VertexStatus::Processing {
            confidence: 0,
            preferred: true
        }
    );
    // The validator's yes makes every draw a yes.
    for (poll, _) in &polls {
        e.on_votes(2, validator, *poll, &[true], &[]);
    }
    assert!(matches!(
        e.status(&id),
        VertexStatus::Processing { confidence: c, .. } if c >= 1
    ));
}

#[test]
fn a_benched_validator_counts_as_no_without_being_asked() {
    let mut e = engine(1);
    let silent = key(2).node_id();
    set_peers(&mut e, vec![silent]);
    let params = Params::default();
    // Unanswered queries until the validator is benched.
    let mut now = 0;
    let mut benched = false;
    for _ in 0..10 {
        e.propose(now, vec![tx(&format!("k{now}"))]).unwrap();
        now += params.query_timeout_max_ms + 1;
        e.tick(now);
        if e.take_outputs()
            .iter()
            .any(|o| matches!(o, Output::Graylisted { peer, .. } if *peer == silent))
        {
            benched = true;
            break;
        }
    }
    // Half the weight may not be benched (the bound is 20%): it stays
    // asked, and its silence keeps every poll short of alpha-confidence.
    assert!(!benched, "half of the weight was benched");
    assert_eq!(e.benched_share(now), 0.0);

    // An accusation it could not prove (an invalid vertex may come from an
    // honest relay) does not bench half the weight either.
    let mut e = engine(1);
    let rogue_key = key(3);
    let rogue = rogue_key.node_id();
    set_peers(&mut e, vec![rogue]);
    e.on_invalid_vertex(0, rogue);
    assert_eq!(e.benched_share(1), 0.0);
    // A validator that equivocates (proof, signed by itself; no bound
    // applies) is drawn like the rest but never asked, and counts as a no:
    // with half the weight benched, nothing this node proposes is accepted.
    for payload in ["x", "y"] {
        let v = Vertex::sign(&rogue_key, vec![], 1, 0, vec![tx(payload)]).unwrap();
        e.on_vertex(0, rogue, v);
    }
    // (The first of the two was polled before the second exposed it.)
    e.take_outputs();
    let id = e.propose(1, vec![tx("benched")]).unwrap();
    let mut now = 1;
    while now < params.graylist_ms / 2 {
        for (_, peers) in queried(&e.take_outputs()) {
            assert!(!peers.contains(&rogue), "a benched validator is not asked");
        }
        now += 10;
        e.tick(now);
    }
    assert!(matches!(e.status(&id), VertexStatus::Processing { .. }));
    assert!((e.benched_share(now) - 0.5).abs() < 1e-9);
}

/// What `e` answers about `ids` to a query from `from`.
fn answers(e: &mut Engine<MemoryHistory>, from: NodeId, ids: &[VertexId]) -> Vec<bool> {
    e.take_outputs();
    e.on_query(0, from, 7, ids);
    e.take_outputs()
        .into_iter()
        .find_map(|o| match o {
            Output::Votes { votes, .. } => Some(votes),
            _ => None,
        })
        .expect("a query is answered")
}

#[test]
fn a_late_rival_never_takes_a_preference_this_node_voted_for() {
    let (author, rival_author, asker) = (key(2), key(3), key(4));
    let first = Vertex::sign(&author, vec![], 1, 0, vec![tx("task:x")]).unwrap();
    // A rival with a smaller id: the initial choice among rivals that
    // arrive together.
    let rival = (0..64)
        .map(|n| {
            let payload = Transaction {
                key: "task:x".into(),
                payload: vec![n],
            };
            Vertex::sign(&rival_author, vec![], 1, 0, vec![payload]).unwrap()
        })
        .find(|v| v.id() < first.id())
        .expect("one of 64 ids is smaller");
    let validators = vec![author.node_id(), rival_author.node_id(), asker.node_id()];

    // Without a vote of its own, a node takes the smaller id.
    let mut quiet = engine(1);
    set_peers(&mut quiet, validators.clone());
    quiet.on_vertex(0, author.node_id(), first.clone());
    quiet.on_vertex(0, rival_author.node_id(), rival.clone());
    let ids = [first.id(), rival.id()];
    assert_eq!(answers(&mut quiet, asker.node_id(), &ids), [false, true]);

    // Once it has told a validator yes for the first (which that validator
    // may have accepted on such votes), only polls can move it.
    let mut voted = engine(1);
    set_peers(&mut voted, validators);
    voted.on_vertex(0, author.node_id(), first.clone());
    assert_eq!(answers(&mut voted, asker.node_id(), &[first.id()]), [true]);
    voted.on_vertex(0, rival_author.node_id(), rival.clone());
    assert_eq!(answers(&mut voted, asker.node_id(), &ids), [true, false]);

    // The same whoever asked: a node outside the validator set polls the
    // validators too, and may accept on their votes.
    let mut asked_by_outsider = engine(1);
    set_peers(
        &mut asked_by_outsider,
        vec![author.node_id(), rival_author.node_id()],
    );
    asked_by_outsider.on_vertex(0, author.node_id(), first.clone());
    assert_eq!(
        answers(&mut asked_by_outsider, asker.node_id(), &[first.id()]),
        [true]
    );
    asked_by_outsider.on_vertex(0, rival_author.node_id(), rival);
    assert_eq!(
        answers(&mut asked_by_outsider, author.node_id(), &ids),
        [true, false]
    );
}

#[test]
fn a_poll_about_a_rival_also_asks_about_the_preferred_member() {
    let mut e = engine(1);
    let (author, rival_author) = (key(2), key(3));
    set_peers(&mut e, vec![author.node_id(), rival_author.node_id()]);
    let first = Vertex::sign(&author, vec![], 1, 0, vec![tx("task:x")]).unwrap();
    e.on_vertex(0, author.node_id(), first.clone());
    // Answering a validator's query freezes the initial choice.
    answers(&mut e, author.node_id(), &[first.id()]);
    // The first vertex's polls (unanswered) time out.
    let base = 2 * Params::default().query_timeout_max_ms;
    e.tick(base);
    e.take_outputs();
    let mut rival_polls = 0;
    for n in 0..4 {
        let payload = Transaction {
            key: "task:x".into(),
            payload: vec![n],
        };
        let rival = Vertex::sign(&rival_author, vec![], 1 + n as u64, 0, vec![payload]).unwrap();
        e.on_vertex(0, rival_author.node_id(), rival.clone());
        e.tick(base + 1 + n as u64);
        let queries: Vec<(PollId, Vec<NodeId>, Vec<VertexId>)> = e
            .take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Query { poll, peers, ids } => Some((poll, peers, ids)),
                _ => None,
            })
            .collect();
        // Everyone answers (no), so the next poll can start.
        for (poll, peers, ids) in &queries {
            for peer in peers {
                e.on_votes(
                    base + 2 + n as u64,
                    *peer,
                    *poll,
                    &vec![false; ids.len()],
                    &[],
                );
            }
        }
        let asked: Vec<&Vec<VertexId>> = queries.iter().map(|(_, _, ids)| ids).collect();
        let with_rival = asked.iter().filter(|ids| ids.contains(&rival.id()));
        for ids in with_rival {
            rival_polls += 1;
            assert!(ids.contains(&first.id()), "rival {n} asked alone: {ids:?}");
        }
    }
    assert!(rival_polls >= 4, "each rival was polled: {rival_polls}");
}

/// A history whose reads and writes can be made to fail, as a damaged disk
/// would: the failed read answers "none" and the fault is latched.
#[derive(Default)]
struct FaultyHistory {
    inner: MemoryHistory,
    failing: std::cell::Cell<bool>,
    failing_writes: std::cell::Cell<bool>,
    fault: std::cell::RefCell<Option<String>>,
}

impl FaultyHistory {
    fn writable(&self) -> Result<(), HistoryError> {
        if self.failing.get() || self.failing_writes.get() || self.fault().is_some() {
            return Err(HistoryError("write failed: I/O error".into()));
        }
        Ok(())
    }

    fn read<T>(&self, value: impl FnOnce() -> Option<T>) -> Option<T> {
        if self.failing.get() {
            *self.fault.borrow_mut() = Some("read failed: I/O error".into());
            return None;
        }
        value()
    }
}

impl History for FaultyHistory {
    fn decision(&self, id: &VertexId) -> Option<(Decision, u64)> {
        self.read(|| self.inner.decision(id))
    }
    fn vertex(&self, id: &VertexId) -> Option<Vertex> {
        self.read(|| self.inner.vertex(id))
    }
    fn winner(&self, key: &str) -> Option<VertexId> {
        self.read(|| self.inner.winner(key))
    }
    fn rivals(&self, id: &VertexId) -> Vec<VertexId> {
        self.read(|| Some(self.inner.rivals(id)))
            .unwrap_or_default()
    }
    fn authored(&self, author: &NodeId, seq: u64) -> Option<VertexId> {
        self.read(|| self.inner.authored(author, seq))
    }
    fn accept(&mut self, v: &Vertex, at_ms: u64) -> Result<(), HistoryError> {
        self.writable()?;
        self.inner.accept(v, at_ms)
    }
    fn reject(
        &mut self,
        id: &VertexId,
        at_ms: u64,
        rivals: &[VertexId],
    ) -> Result<(), HistoryError> {
        self.writable()?;
        self.inner.reject(id, at_ms, rivals)
    }
    fn accepted_len(&self) -> u64 {
        self.inner.accepted_len()
    }
    fn accepted_page(&self, from: u64, limit: usize) -> (Vec<VertexId>, u64) {
        self.inner.accepted_page(from, limit)
    }
    fn next_seq(&self) -> u64 {
        self.inner.next_seq()
    }
    fn set_next_seq(&mut self, seq: u64) -> Result<(), HistoryError> {
        self.inner.set_next_seq(seq)
    }
    fn fault(&self) -> Option<String> {
        self.fault.borrow().clone()
    }
}

#[test]
fn a_failed_history_read_halts_the_engine_instead_of_voting_on_it() {
    let mut e = Engine::new(Params::default(), key(1), FaultyHistory::default(), 1).unwrap();
    let me = e.node_id();
    let peer = key(2).node_id();
    e.set_validators(ValidatorSet::equal_weights(1, [me]));
    let id = e.propose(0, vec![tx("task:1")]).unwrap();
    let mut now = 0;
    while e.status(&id) != VertexStatus::Accepted && now < 10_000 {
        now += 10;
        e.tick(now);
    }
    assert_eq!(e.status(&id), VertexStatus::Accepted);
    e.take_outputs();
    // Sound, it votes yes for what it accepted.
    e.on_query(now, peer, 7, &[id]);
    assert!(e.take_outputs().iter().any(|o| matches!(
        o,
        Output::Votes { votes, .. } if votes == &vec![true]
    )));

    // The disk fails: the read says "none", which would be a no vote (and
    // a fetch) for an accepted vertex. Nothing of that leaves the engine.
    e.history().failing.set(true);
    e.on_query(now, peer, 8, &[id]);
    let outputs = e.take_outputs();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert!(matches!(&outputs[0], Output::Halted(r) if r.contains("I/O error")));
    assert!(e.halted().is_some());
    // Halted for good: no votes, no proposals, no polls, even once reads
    // work again (the node must restart on a checked disk).
    e.history().failing.set(false);
    e.on_query(now, peer, 9, &[id]);
    e.tick(now + 10);
    assert!(e.take_outputs().is_empty());
    assert!(matches!(
        e.propose(now, vec![tx("task:2")]),
        Err(ProposeError::Halted(_))
    ));
}

#[test]
fn a_failed_history_write_halts_the_engine_and_announces_nothing() {
    let mut e = Engine::new(Params::default(), key(1), FaultyHistory::default(), 1).unwrap();
    let me = e.node_id();
    e.set_validators(ValidatorSet::equal_weights(1, [me]));
    e.propose(0, vec![tx("task:1")]).unwrap();
    e.take_outputs();
    // Writes fail from the moment the vertex would be recorded.
    e.history().failing_writes.set(true);
    let mut now = 0;
    while e.halted().is_none() && now < 10_000 {
        now += 10;
        e.tick(now);
    }
    let outputs = e.take_outputs();
    assert!(e.halted().is_some_and(|r| r.contains("write failed")));
    assert!(
        outputs.iter().all(|o| matches!(o, Output::Halted(_))),
        "nothing decided is announced: {outputs:?}"
    );
}

#[test]
fn a_bootstrapped_vertex_is_accepted_unpolled_beats_its_rivals_and_frees_its_waiters() {
    let mut e = engine(1);
    let peer = key(2).node_id();
    set_peers(&mut e, vec![peer, key(3).node_id()]);
    let rival = Vertex::sign(&key(2), vec![], 1, 0, vec![tx("task:1")]).unwrap();
    e.on_vertex(0, peer, rival.clone());
    assert!(matches!(
        e.status(&rival.id()),
        VertexStatus::Processing { .. }
    ));
    let winner = Vertex::sign(&key(3), vec![], 1, 0, vec![tx("task:1")]).unwrap();
    let child = Vertex::sign(&key(3), vec![winner.id()], 2, 0, vec![tx("task:2")]).unwrap();
    e.on_vertex(0, peer, child.clone());
    assert_eq!(e.status(&child.id()), VertexStatus::Pending);

    let orphan = Vertex::sign(&key(3), vec![VertexId([9; 32])], 3, 0, vec![tx("task:3")]).unwrap();
    assert_eq!(
        e.accept_bootstrapped(1, orphan.clone()),
        Err(BootstrapRefusal::ParentNotAccepted(orphan.id()))
    );
    e.accept_bootstrapped(1, winner.clone()).unwrap();
    assert_eq!(e.status(&winner.id()), VertexStatus::Accepted);
    assert_eq!(e.status(&rival.id()), VertexStatus::Rejected);
    assert_eq!(e.history().winner("task:1"), Some(winner.id()));
    assert!(matches!(
        e.status(&child.id()),
        VertexStatus::Processing { .. }
    ));
    let stats = e.stats();
    assert_eq!(
        (stats.bootstrapped_vertices, stats.accepted_vertices),
        (1, 0)
    );
    // Twice is fine; a vertex this node rejected is refused.
    e.accept_bootstrapped(2, winner).unwrap();
    assert_eq!(
        e.accept_bootstrapped(2, rival.clone()),
        Err(BootstrapRefusal::Rejected(rival.id()))
    );
}
