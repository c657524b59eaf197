//! Faults of the network and of nodes: silent partitions that heal, and
//! nodes that go down and come back with what they had persisted (or join
//! late, with nothing).

use super::{new_engine, Msg, Sim};
use crate::history::MemoryHistory;

/// From `from_ms` until `until_ms`, a message between nodes of different
/// groups vanishes without a failure notice (both ways, including queries:
/// the asker learns of it only from its own deadline).
#[derive(Debug, Clone)]
pub struct Partition {
    /// A group per node.
    pub groups: Vec<u8>,
    pub from_ms: u64,
    pub until_ms: u64,
}

impl Partition {
    /// The first `first` nodes against the rest.
    pub fn split(nodes: usize, first: usize, from_ms: u64, until_ms: u64) -> Partition {
        Partition {
            groups: (0..nodes).map(|i| u8::from(i >= first)).collect(),
            from_ms,
            until_ms,
        }
    }
}

/// Node `node` is down from `down_ms` (messages to and from it vanish) and
/// back at `up_ms`: with its history when `keep_history` (a restart), with
/// an empty one otherwise (a new node, or one that lost its disk). A node
/// down from 0 without history is a late joiner.
#[derive(Debug, Clone)]
pub struct Restart {
    pub node: usize,
    pub down_ms: u64,
    pub up_ms: u64,
    pub keep_history: bool,
}

impl Sim {
    pub(super) fn partitioned(&self, a: usize, b: usize, at_ms: u64) -> bool {
        self.config.partitions.iter().any(|p| {
            at_ms >= p.from_ms
                && at_ms < p.until_ms
                && p.groups.get(a).copied().unwrap_or(0) != p.groups.get(b).copied().unwrap_or(0)
        })
    }

    pub(super) fn schedule_faults(&mut self) {
        for r in self.config.restarts.clone() {
            if r.down_ms == 0 {
                self.nodes[r.node].down = true;
            } else {
                self.push(r.down_ms, r.node, r.node, Msg::Crash);
            }
            self.push(r.up_ms, r.node, r.node, Msg::Restart);
        }
    }

    /// The last fault has passed: until then a quiet network is not done.
    pub(super) fn faults_over(&self) -> bool {
        let partitions = self.config.partitions.iter().map(|p| p.until_ms);
        let restarts = self.config.restarts.iter().map(|r| r.up_ms);
        partitions.chain(restarts).all(|end| self.now >= end) && self.nodes.iter().all(|n| !n.down)
    }

    pub(super) fn crash(&mut self, i: usize) {
        self.nodes[i].down = true;
    }

    pub(super) fn restart(&mut self, i: usize) {
        let keep = self
            .config
            .restarts
            .iter()
            .any(|r| r.node == i && r.keep_history && r.up_ms == self.now);
        let seed = self.rng_next();
        let fresh = new_engine(
            &self.config.params,
            &self.nodes[i].key,
            MemoryHistory::default(),
            seed,
            &self.validators,
        );
        let old = std::mem::replace(&mut self.nodes[i].engine, fresh);
        if keep {
            self.nodes[i].engine = new_engine(
                &self.config.params,
                &self.nodes[i].key,
                old.into_history(),
                seed,
                &self.validators,
            );
        }
        // Its ticks kept running while it was down.
        self.nodes[i].down = false;
    }
}
