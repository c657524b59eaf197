//! Adaptive query timeouts, per validator: the round trips of its answers
//! set how long the next query may take (as TCP's retransmission timer
//! does: smoothed round trip plus four deviations), within
//! `Params::query_timeout_min_ms` and `_max_ms`. Answers that arrive after
//! their poll's deadline are measured too (the engine remembers recent
//! expired polls), so a validator that became slower than its timeout is
//! waited for longer next time; a silent one keeps its timeout (it is
//! benched instead), so it does not hold up every poll that draws it. A mesh
//! whose round trips exceed the initial `query_timeout_ms` (slow links, an
//! overloaded machine) therefore still decides, and a fast one notices a
//! silent validator quickly.

use crate::params::Params;
use agentmesh_protocol::NodeId;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// Smoothed round trip and its mean deviation (ms).
    srtt: f64,
    rttvar: f64,
}

/// One estimate per validator (pruned with the validator set).
#[derive(Debug, Default)]
pub struct Timeouts {
    estimates: HashMap<NodeId, Estimate>,
}

impl Timeouts {
    /// An answer from `peer` took `rtt_ms`.
    pub fn answered(&mut self, peer: NodeId, rtt_ms: u64) {
        let rtt = rtt_ms as f64;
        let e = self.estimates.entry(peer).or_insert(Estimate {
            srtt: rtt,
            rttvar: rtt / 2.0,
        });
        e.rttvar = 0.75 * e.rttvar + 0.25 * (e.srtt - rtt).abs();
        e.srtt = 0.875 * e.srtt + 0.125 * rtt;
    }

    pub fn timeout_ms(&self, peer: &NodeId, params: &Params) -> u64 {
        let base = match self.estimates.get(peer) {
            Some(e) => (e.srtt + 4.0 * e.rttvar).ceil() as u64,
            None => params.query_timeout_ms,
        };
        base.clamp(params.query_timeout_min_ms, params.query_timeout_max_ms)
    }

    pub fn retain(&mut self, keep: impl Fn(&NodeId) -> bool) {
        self.estimates.retain(|peer, _| keep(peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_round_trips_within_bounds() {
        let params = Params::default();
        let peer = NodeId([1; 32]);
        let mut t = Timeouts::default();
        assert_eq!(t.timeout_ms(&peer, &params), params.query_timeout_ms);
        for _ in 0..50 {
            t.answered(peer, 3_000);
        }
        let slow = t.timeout_ms(&peer, &params);
        assert!((3_000..=4_000).contains(&slow), "{slow}");
        for _ in 0..50 {
            t.answered(peer, 1);
        }
        assert_eq!(t.timeout_ms(&peer, &params), params.query_timeout_min_ms);
        for _ in 0..50 {
            t.answered(peer, 60_000);
        }
        assert_eq!(t.timeout_ms(&peer, &params), params.query_timeout_max_ms);
        t.retain(|p| *p != peer);
        assert_eq!(t.timeout_ms(&peer, &params), params.query_timeout_ms);
    }
}
