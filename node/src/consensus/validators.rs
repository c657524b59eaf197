//! Who votes in this node's polls: the validator set the consensus service
//! gives the engine, from one of three sources (docs/consensus.md).

use crate::clock::now_ms;
use crate::network::consensus_io::PeerVote;
use agentmesh_consensus::validators::MAX_VALIDATORS;
use agentmesh_consensus::ValidatorSet;
use agentmesh_protocol::NodeId;
use agentmesh_store::{KnownValidator, ValidatorBook};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Validators stay in the set this long after they were last connected: a
/// node cut off from the mesh (or a minority partition) must not find
/// itself a quorum and decide alone. Unreachable validators count as no
/// votes. The price: if many leave for good at once, the rest may stall
/// until this passes.
pub const LINGER: Duration = Duration::from_secs(24 * 3600);
/// A connected validator's record is written again at most this often.
const PERSIST_EVERY: Duration = Duration::from_secs(3600);

/// Where the validator set comes from.
pub enum Source {
    /// The `validators` setting: exactly these, whoever connects.
    Configured(ValidatorSet),
    /// A network with an authority: holders of validating certificates,
    /// with their weights, remembered on disk so that a restarted node
    /// counts them before they reconnect. `own_weight` 0: this node does
    /// not vote.
    Certificates {
        own_weight: u64,
        book: Option<ValidatorBook>,
    },
    /// An open network without the setting: every peer seen, weight 1.
    /// For development: anyone who connects many identities outvotes the
    /// rest.
    PeersSeen,
}

/// Where the validators come from, in words for the API: the `validators`
/// setting wins, then an authority's certificates, else the peers seen.
pub fn describe_source(configured: bool, authority: bool) -> &'static str {
    if configured {
        "validators setting"
    } else if authority {
        "membership certificates (validate scope)"
    } else {
        "peers seen in the last 24 hours (development only: not Sybil-resistant)"
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    weight: u64,
    expires_ms: Option<u64>,
}

pub struct Validators {
    me: NodeId,
    source: Source,
    seen: HashMap<NodeId, Seen>,
    connected: Vec<PeerVote>,
    /// When each validator's record was last written, and what it said.
    persisted: HashMap<NodeId, (u64, Option<u64>, Instant)>,
    version: u64,
}

impl Validators {
    /// `known`: peers known before this run (bootstrap peers, the peer book
    /// or the validator book), with how long ago each was seen, its weight
    /// and its certificate's expiry.
    pub fn new(
        me: NodeId,
        source: Source,
        known: Vec<(NodeId, Duration, u64, Option<u64>)>,
    ) -> Self {
        let now = Instant::now();
        let seen = match source {
            Source::Configured(_) => HashMap::new(),
            _ => known
                .into_iter()
                .filter(|(_, age, _, _)| *age < LINGER)
                .map(|(node, age, weight, expires_ms)| {
                    let at = now.checked_sub(age).unwrap_or(now);
                    (
                        node,
                        Seen {
                            at,
                            weight,
                            expires_ms,
                        },
                    )
                })
                .collect(),
        };
        Validators {
            me,
            source,
            seen,
            connected: Vec::new(),
            persisted: HashMap::new(),
            version: 0,
        }
    }

    pub fn source_name(&self) -> &'static str {
        describe_source(
            matches!(self.source, Source::Configured(_)),
            matches!(self.source, Source::Certificates { .. }),
        )
    }

    pub fn sybil_resistant(&self) -> bool {
        !matches!(self.source, Source::PeersSeen)
    }

    /// Peers tracked for the set (before weights and expiry are applied).
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    pub fn set_connected(&mut self, peers: Vec<PeerVote>) {
        self.connected = peers;
    }

    /// The set as it stands now; `Some` only when it differs from the one
    /// returned last (with the next version).
    pub fn refresh(&mut self, current: &ValidatorSet) -> Option<ValidatorSet> {
        let members = match &self.source {
            Source::Configured(set) => set.iter().collect(),
            _ => self.observed_members(),
        };
        if self.version > 0 && members.iter().copied().eq(current.iter()) {
            return None;
        }
        self.version += 1;
        match ValidatorSet::new(self.version, members) {
            Ok(set) => Some(set),
            Err(e) => {
                // Cannot happen (weights come from checked certificates and
                // the list is capped); if it did, keep the current set.
                tracing::error!(error = %e, "validator set refused; keeping the current one");
                None
            }
        }
    }

    fn observed_members(&mut self) -> Vec<(NodeId, u64)> {
        let now = Instant::now();
        let wall_ms = now_ms();
        let peers_seen = matches!(self.source, Source::PeersSeen);
        for peer in &self.connected {
            let weight = if peers_seen { 1 } else { peer.weight };
            let seen = Seen {
                at: now,
                weight,
                expires_ms: peer.expires_ms,
            };
            self.seen.insert(peer.node, seen);
        }
        self.persist(now, wall_ms);
        self.seen.retain(|_, s| {
            now.duration_since(s.at) < LINGER && s.expires_ms.is_none_or(|e| e > wall_ms)
        });
        let mut members: Vec<(Instant, NodeId, u64)> = self
            .seen
            .iter()
            .filter(|(node, s)| s.weight > 0 && **node != self.me)
            .map(|(node, s)| {
                (
                    s.at,
                    *node,
                    s.weight.min(agentmesh_consensus::validators::MAX_WEIGHT),
                )
            })
            .collect();
        if members.len() >= MAX_VALIDATORS {
            // Bounded: the validators seen longest ago go first.
            members.sort_by_key(|m| std::cmp::Reverse(m.0));
            members.truncate(MAX_VALIDATORS - 1);
        }
        let own_weight = match self.source {
            Source::Certificates { own_weight, .. } => own_weight,
            _ => 1,
        };
        let mut members: Vec<(NodeId, u64)> =
            members.into_iter().map(|(_, node, w)| (node, w)).collect();
        if own_weight > 0 {
            members.push((
                self.me,
                own_weight.min(agentmesh_consensus::validators::MAX_WEIGHT),
            ));
        }
        members.sort();
        members
    }

    /// Writes connected validators whose record changed (or is old) to the
    /// validator book.
    fn persist(&mut self, now: Instant, wall_ms: u64) {
        let Source::Certificates {
            book: Some(book), ..
        } = &self.source
        else {
            return;
        };
        for peer in &self.connected {
            let fresh = self.persisted.get(&peer.node).is_some_and(|(w, e, at)| {
                *w == peer.weight
                    && *e == peer.expires_ms
                    && now.duration_since(*at) < PERSIST_EVERY
            });
            if fresh {
                continue;
            }
            let record = KnownValidator {
                weight: peer.weight,
                expires_ms: peer.expires_ms,
                last_seen_ms: wall_ms,
            };
            match book.put(&peer.node, &record) {
                Ok(()) => {
                    self.persisted
                        .insert(peer.node, (peer.weight, peer.expires_ms, now));
                }
                Err(e) => tracing::warn!(error = %e, "cannot remember a validator"),
            }
        }
        self.persisted
            .retain(|node, _| self.seen.contains_key(node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn vote(n: u8, weight: u64, expires_ms: Option<u64>) -> PeerVote {
        PeerVote {
            node: id(n),
            weight,
            expires_ms,
        }
    }

    fn members(set: &ValidatorSet) -> Vec<(NodeId, u64)> {
        set.iter().collect()
    }

    #[test]
    fn certificates_decide_who_votes_and_absent_validators_still_count() {
        let mut v = Validators::new(
            id(0),
            Source::Certificates {
                own_weight: 2,
                book: None,
            },
            vec![(id(9), Duration::from_secs(60), 1, None)],
        );
        let far = now_ms() + 3_600_000;
        v.set_connected(vec![
            vote(1, 3, Some(far)),
            vote(2, 0, Some(far)),
            vote(3, 1, Some(now_ms() - 1)),
        ]);
        let set = v.refresh(&ValidatorSet::default()).unwrap();
        // Itself with its weight, the weighted validator, the remembered
        // one; not the member without `validate`, not the expired one.
        assert_eq!(members(&set), vec![(id(0), 2), (id(1), 3), (id(9), 1)]);
        assert!(
            v.refresh(&set).is_none(),
            "unchanged sets are not given again"
        );
        // Disconnected validators stay, counted as no votes when drawn.
        v.set_connected(vec![]);
        assert!(v.refresh(&set).is_none());
        assert!(v.sybil_resistant());
    }

    #[test]
    fn a_configured_set_ignores_who_connects_and_peers_seen_vote_alike() {
        let configured = ValidatorSet::new(1, [(id(5), 4)]).unwrap();
        let mut v = Validators::new(id(0), Source::Configured(configured), vec![]);
        v.set_connected(vec![vote(1, 1, None)]);
        let set = v.refresh(&ValidatorSet::default()).unwrap();
        assert_eq!(members(&set), vec![(id(5), 4)]);

        let mut v = Validators::new(id(0), Source::PeersSeen, vec![]);
        v.set_connected(vec![vote(1, 7, None), vote(2, 0, None)]);
        let set = v.refresh(&ValidatorSet::default()).unwrap();
        assert_eq!(members(&set), vec![(id(0), 1), (id(1), 1), (id(2), 1)]);
        assert!(!v.sybil_resistant());
    }
}
