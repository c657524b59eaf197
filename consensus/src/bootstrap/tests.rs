use super::*;
use agentmesh_protocol::{NodeKey, Transaction};
use std::cell::RefCell;

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32]).unwrap()
}

/// A chain of `n` vertices by one author, each on the one before, plus
/// `side` childless vertices on the first: accepted vertices that no later
/// vertex references, which fetching ancestry alone never finds.
fn history(n: usize, side: usize) -> Vec<Vertex> {
    let author = key(50);
    let mut out: Vec<Vertex> = Vec::new();
    for i in 0..n + side {
        let parents = match (i, out.first()) {
            (0, _) | (_, None) => vec![],
            (i, Some(first)) if i >= n => vec![first.id()],
            _ => vec![out[i - 1].id()],
        };
        let tx = Transaction {
            key: format!("task:{i}"),
            payload: vec![1],
        };
        out.push(Vertex::sign(&author, parents, i as u64, i as u64, vec![tx]).unwrap());
    }
    out
}

/// A validator's view: its accepted log and whether it lies.
struct Peer {
    id: NodeId,
    log: Vec<Vertex>,
    /// Lists these made-up ids (and serves these vertices) as well, each
    /// `repeat` times.
    forged: Vec<Vertex>,
    repeat: usize,
    /// Claims this log length and lists its first page at every position.
    stuck: Option<u64>,
    silent: bool,
    /// Ids per log page.
    page: usize,
}

impl Peer {
    fn honest(n: u8, log: &[Vertex]) -> Peer {
        Peer {
            id: key(n).node_id(),
            log: log.to_vec(),
            forged: Vec::new(),
            repeat: 1,
            stuck: None,
            silent: false,
            page: 7,
        }
    }

    fn answer(&self, request: &BootstrapRequest) -> BootstrapReply {
        if self.silent {
            return BootstrapReply::Failed;
        }
        let listed: Vec<&Vertex> = self
            .log
            .iter()
            .chain(
                self.forged
                    .iter()
                    .flat_map(|v| std::iter::repeat_n(v, self.repeat)),
            )
            .collect();
        if let (Some(end), BootstrapRequest::LogLength | BootstrapRequest::Log { .. }) =
            (self.stuck, request)
        {
            let ids = match request {
                BootstrapRequest::Log { .. } => {
                    listed.iter().take(self.page).map(|v| v.id()).collect()
                }
                _ => vec![],
            };
            return BootstrapReply::Log { ids, end };
        }
        match request {
            BootstrapRequest::LogLength => BootstrapReply::Log {
                ids: vec![],
                end: listed.len() as u64,
            },
            BootstrapRequest::Log { from } => BootstrapReply::Log {
                ids: listed
                    .iter()
                    .skip(*from as usize)
                    .take(self.page)
                    .map(|v| v.id())
                    .collect(),
                end: listed.len() as u64,
            },
            BootstrapRequest::Accepted { ids } => BootstrapReply::Accepted(
                ids.iter()
                    .map(|id| listed.iter().any(|v| v.id() == *id))
                    .collect(),
            ),
            BootstrapRequest::Fetch { ids } => BootstrapReply::Vertices(
                ids.iter()
                    .filter_map(|id| listed.iter().find(|v| v.id() == *id))
                    .map(|v| (*v).clone())
                    .collect(),
            ),
        }
    }
}

/// Runs a walk by `me` against `peers` to its end; returns what it
/// accepted, in order, and the final progress.
fn walk(peers: &[Peer], start: &[Vertex]) -> (Vec<VertexId>, BootstrapProgress) {
    let me = key(1).node_id();
    let validators = ValidatorSet::equal_weights(1, peers.iter().map(|p| p.id).chain([me]));
    let accepted: RefCell<Vec<VertexId>> = RefCell::new(start.iter().map(|v| v.id()).collect());
    let mut b = Bootstrapper::new(me, 7);
    let mut now = 0;
    while !b.is_done() && now < 1_000_000 {
        b.tick(now, &validators, &|id: &VertexId| {
            accepted.borrow().contains(id)
        });
        for (tag, peer, request) in b.take_requests() {
            let reply = peers
                .iter()
                .find(|p| p.id == peer)
                .map_or(BootstrapReply::Failed, |p| p.answer(&request));
            let is_accepted = |id: &VertexId| accepted.borrow().contains(id);
            b.set_accepted_len(accepted.borrow().len() as u64);
            b.on_reply(now, tag, peer, reply, &is_accepted);
            for vertex in b.take_ready() {
                assert!(
                    vertex
                        .parents()
                        .iter()
                        .all(|p| accepted.borrow().contains(p)),
                    "parents come first"
                );
                accepted.borrow_mut().push(vertex.id());
            }
        }
        now += 1000;
    }
    assert!(b.is_done(), "the walk ends: {:?}", b.progress());
    let progress = b.progress().clone();
    (accepted.into_inner(), progress)
}

#[test]
fn a_fresh_node_gets_all_accepted_history_including_unreferenced_vertices() {
    let all = history(40, 5);
    let peers: Vec<Peer> = (2..6).map(|n| Peer::honest(n, &all)).collect();
    let (accepted, progress) = walk(&peers, &[]);
    let mut want: Vec<VertexId> = all.iter().map(|v| v.id()).collect();
    let mut got = accepted.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(progress.fetched_vertices, 45);
    assert!(progress.fetched_bytes > 45 * 100);
    assert_eq!(progress.missed, 0);
}

#[test]
fn a_restarted_walk_skips_what_it_has() {
    let all = history(30, 0);
    let peers: Vec<Peer> = (2..6).map(|n| Peer::honest(n, &all)).collect();
    let (accepted, progress) = walk(&peers, &all[..20]);
    assert_eq!(accepted.len(), 30);
    assert_eq!(progress.known, 20);
    assert_eq!(progress.fetched_vertices, 10);
}

#[test]
fn a_lying_source_cannot_insert_a_vertex_only_it_lists() {
    let all = history(10, 0);
    let forged = history(3, 0)
        .into_iter()
        .map(|v| {
            let tx = Transaction {
                key: "task:0".into(),
                payload: b"forged".to_vec(),
            };
            Vertex::sign(&key(2), v.parents().to_vec(), 99 + v.seq(), 1, vec![tx]).unwrap()
        })
        .collect::<Vec<_>>();
    let mut liar = Peer::honest(2, &all);
    // The longest log: chosen as the source.
    liar.forged = forged.clone();
    // One accomplice of four is not a quorum of the others' weight.
    let mut accomplice = Peer::honest(3, &all);
    accomplice.forged = forged.clone();
    let peers = vec![
        liar,
        accomplice,
        Peer::honest(4, &all),
        Peer::honest(5, &all),
    ];
    let (accepted, progress) = walk(&peers, &[]);
    assert_eq!(accepted.len(), 10);
    for v in &forged {
        assert!(!accepted.contains(&v.id()));
    }
    assert_eq!(progress.unconfirmed, 3);
}

#[test]
fn a_source_listing_children_before_parents_still_applies_parents_first() {
    let all = history(12, 0);
    let mut reversed = all.clone();
    reversed.reverse();
    let peers: Vec<Peer> = (2..6).map(|n| Peer::honest(n, &reversed)).collect();
    let (accepted, progress) = walk(&peers, &[]);
    // `walk` asserts the order; every vertex arrives.
    assert_eq!(accepted.len(), 12);
    assert_eq!(progress.missed, 0);
}

#[test]
fn silent_validators_leave_nothing_confirmed_and_the_walk_still_ends() {
    let all = history(8, 0);
    let mut peers: Vec<Peer> = (2..6).map(|n| Peer::honest(n, &all)).collect();
    for p in &mut peers[1..] {
        p.silent = true;
    }
    let (accepted, progress) = walk(&peers, &[]);
    assert!(accepted.is_empty(), "one voice of four confirms nothing");
    assert_eq!(progress.unconfirmed, 8);
}

#[test]
fn validators_that_cannot_serve_history_do_not_hold_consensus_forever() {
    let all = history(3, 0);
    let mut peers: Vec<Peer> = (2..5).map(|n| Peer::honest(n, &all)).collect();
    for p in &mut peers {
        p.silent = true;
    }
    let me = key(1).node_id();
    let validators = ValidatorSet::equal_weights(1, peers.iter().map(|p| p.id).chain([me]));
    let mut b = Bootstrapper::new(me, 1);
    assert!(
        !b.holds_consensus(),
        "no validators yet: nothing to wait for"
    );
    let mut now = 0;
    b.tick(now, &validators, &|_| false);
    assert!(b.holds_consensus(), "history to walk: gossip waits");
    while !b.is_done() && now < 60_000 {
        b.tick(now, &validators, &|_| false);
        for (tag, peer, _) in b.take_requests() {
            b.on_reply(now, tag, peer, BootstrapReply::Failed, &|_| false);
        }
        now += 1000;
    }
    assert!(
        b.is_done(),
        "gave up after a few rounds: {:?}",
        b.progress()
    );
    assert!(!b.holds_consensus());
}

fn forged_rival(n: u8, of: &Vertex) -> Vertex {
    let tx = Transaction {
        key: of.transactions()[0].key.clone(),
        payload: b"forged".to_vec(),
    };
    Vertex::sign(&key(n), of.parents().to_vec(), 1000 + of.seq(), 1, vec![tx]).unwrap()
}

#[test]
fn a_source_repeating_its_own_vertex_is_still_one_voice() {
    let all = history(6, 0);
    let forged = forged_rival(2, &all[0]);
    let mut liar = Peer::honest(2, &all);
    liar.forged = vec![forged.clone()];
    // Listed a thousand times, it still has only the liar's word.
    liar.repeat = 1000;
    let peers = vec![
        liar,
        Peer::honest(3, &all),
        Peer::honest(4, &all),
        Peer::honest(5, &all),
    ];
    let (accepted, _) = walk(&peers, &[]);
    assert!(!accepted.contains(&forged.id()));
    assert_eq!(accepted.len(), 6);
}

#[test]
fn a_source_whose_log_ends_early_or_never_ends_is_replaced() {
    let all = history(30, 0);
    // Claims the longest log and lists nothing.
    let mut empty = Peer::honest(2, &[]);
    empty.stuck = Some(1000);
    // Claims an endless log and lists the same few ids forever.
    let mut endless = Peer::honest(3, &all);
    endless.stuck = Some(u64::MAX);
    let peers = vec![
        empty,
        endless,
        Peer::honest(4, &all),
        Peer::honest(5, &all),
        Peer::honest(6, &all),
    ];
    let (accepted, progress) = walk(&peers, &[]);
    assert_eq!(accepted.len(), 30, "{progress:?}");
    assert_eq!(progress.missed, 0);
}

#[test]
fn a_lost_reply_times_out_instead_of_stalling_the_walk() {
    let all = history(5, 0);
    let peers: Vec<Peer> = (2..5).map(|n| Peer::honest(n, &all)).collect();
    let me = key(1).node_id();
    let validators = ValidatorSet::equal_weights(1, peers.iter().map(|p| p.id).chain([me]));
    let mut b = Bootstrapper::new(me, 3);
    let mut now = 0;
    let mut dropped = false;
    let mut applied = 0;
    while !b.is_done() && now < 600_000 {
        b.tick(now, &validators, &|_| false);
        for (tag, peer, request) in b.take_requests() {
            // The first log page's reply never arrives.
            if !dropped && matches!(request, BootstrapRequest::Log { .. }) {
                dropped = true;
                continue;
            }
            let reply = peers
                .iter()
                .find(|p| p.id == peer)
                .unwrap()
                .answer(&request);
            b.on_reply(now, tag, peer, reply, &|_| false);
            applied += b.take_ready().len() as u64;
            b.set_accepted_len(applied);
        }
        now += 1000;
    }
    assert!(dropped && b.is_done(), "{:?}", b.progress());
    assert_eq!(applied, 5, "each vertex once, the walk complete");
}

#[test]
fn a_source_listing_newest_first_past_the_batch_bound_does_not_end_the_walk_early() {
    // Children first, more than a page's batch can hold: a liar serving
    // the real history in that order gets nothing applied in its pages
    // beyond the bound, and the walk must not stop at it.
    let all = history(MAX_BATCH + 1200, 0);
    let mut reversed = all.clone();
    reversed.reverse();
    let mut liar = Peer::honest(2, &reversed);
    liar.page = 1024;
    let mut peers = vec![
        liar,
        Peer::honest(3, &all),
        Peer::honest(4, &all),
        Peer::honest(5, &all),
    ];
    for p in &mut peers[1..] {
        p.page = 1024;
    }
    let (accepted, _) = walk(&peers, &[]);
    assert_eq!(accepted.len(), all.len());
}
