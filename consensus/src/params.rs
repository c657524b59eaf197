//! Consensus parameters, validated, with defaults that work from a 2-node
//! mesh to hundreds of nodes.

/// Avalanche parameters and the engine's resource bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Peers sampled per poll (self included in the population). With fewer
    /// than `k` candidates, every candidate is sampled.
    pub k: usize,
    /// Yes votes out of `k` that make a poll successful; scaled down
    /// proportionally for smaller samples, never to a minority.
    pub alpha: usize,
    /// Consecutive successful polls that accept an uncontested transaction.
    pub beta_virtuous: u32,
    /// Consecutive successful polls that accept a contested transaction.
    pub beta_rogue: u32,
    /// Polls in flight at once.
    pub max_polls_in_flight: usize,
    /// Vertex ids per query.
    pub batch_size: usize,
    /// Undecided vertices held; local proposals are refused beyond it and
    /// remote vertices are dropped beyond twice it (re-fetched on demand).
    pub max_processing: usize,
    /// Transactions in undecided vertices; local proposals are refused
    /// beyond it (the API answers 503) and remote vertices are dropped
    /// beyond twice it. This is the node's backpressure: what is in flight
    /// bounds both memory and finality time.
    pub max_processing_transactions: usize,
    /// Vertices waiting for missing ancestors.
    pub max_pending: usize,
    /// Most parents a new local vertex names.
    pub max_parents: usize,
    /// A sampled peer that has not answered after this long votes no.
    pub query_timeout_ms: u64,
    /// A missing vertex not received after this long is asked of another peer.
    pub fetch_timeout_ms: u64,
    /// A vertex whose ancestors stay missing this long is dropped.
    pub pending_timeout_ms: u64,
    /// How long a misbehaving peer is left out of samples.
    pub graylist_ms: u64,
    /// How long a silent peer is left out of samples (shorter: silence may
    /// be a slow or restarting honest peer, and in a small mesh the quorum
    /// may need it).
    pub silence_graylist_ms: u64,
    /// Unanswered queries in a row that graylist a peer.
    pub silence_strikes: u32,
    /// Yes votes for vertices this node rejected (longer ago than
    /// `contradiction_grace_ms`) that graylist a peer.
    pub contradiction_strikes: u32,
    pub contradiction_grace_ms: u64,
    /// Pause before repolling the frontier after a poll that decided nothing
    /// new, so a stuck conflict does not spin the CPU.
    pub repoll_delay_ms: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            k: 20,
            alpha: 14,
            beta_virtuous: 15,
            beta_rogue: 20,
            max_polls_in_flight: 4,
            batch_size: 64,
            max_processing: 4096,
            max_processing_transactions: 10_000,
            max_pending: 4096,
            max_parents: 8,
            query_timeout_ms: 2_000,
            fetch_timeout_ms: 2_000,
            pending_timeout_ms: 30_000,
            graylist_ms: 60_000,
            silence_graylist_ms: 5_000,
            silence_strikes: 3,
            contradiction_strikes: 3,
            contradiction_grace_ms: 1_000,
            repoll_delay_ms: 20,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid consensus parameter {name}: {problem}")]
pub struct ParamsError {
    pub name: &'static str,
    pub problem: String,
}

fn check(ok: bool, name: &'static str, problem: impl Into<String>) -> Result<(), ParamsError> {
    if ok {
        Ok(())
    } else {
        Err(ParamsError {
            name,
            problem: problem.into(),
        })
    }
}

impl Params {
    pub fn validate(&self) -> Result<(), ParamsError> {
        check(
            (1..=64).contains(&self.k),
            "k",
            format!("must be 1 to 64, got {}", self.k),
        )?;
        check(
            self.alpha * 2 > self.k && self.alpha <= self.k,
            "alpha",
            format!(
                "must be a majority of k ({} < alpha <= {}), got {}",
                self.k / 2,
                self.k,
                self.alpha
            ),
        )?;
        check(
            self.beta_virtuous >= 1,
            "beta_virtuous",
            "must be at least 1",
        )?;
        check(
            self.beta_rogue >= self.beta_virtuous,
            "beta_rogue",
            format!(
                "must be at least beta_virtuous ({}), got {}",
                self.beta_virtuous, self.beta_rogue
            ),
        )?;
        for (name, value) in [
            ("max_polls_in_flight", self.max_polls_in_flight),
            ("max_processing", self.max_processing),
            (
                "max_processing_transactions",
                self.max_processing_transactions,
            ),
            ("max_pending", self.max_pending),
            ("max_parents", self.max_parents),
        ] {
            check(value >= 1, name, "must be at least 1")?;
        }
        check(
            (1..=agentmesh_protocol::consensus_wire::MAX_QUERY_IDS).contains(&self.batch_size),
            "batch_size",
            format!(
                "must be 1 to {}, got {}",
                agentmesh_protocol::consensus_wire::MAX_QUERY_IDS,
                self.batch_size
            ),
        )?;
        check(
            self.max_parents <= agentmesh_protocol::vertex::MAX_PARENTS,
            "max_parents",
            format!(
                "must be at most {}",
                agentmesh_protocol::vertex::MAX_PARENTS
            ),
        )?;
        check(
            self.query_timeout_ms > 0,
            "query_timeout_ms",
            "must be positive",
        )?;
        check(
            self.silence_strikes >= 1,
            "silence_strikes",
            "must be at least 1",
        )?;
        check(
            self.contradiction_strikes >= 1,
            "contradiction_strikes",
            "must be at least 1",
        )?;
        Ok(())
    }

    /// Yes votes needed in a sample of `sample` voters: alpha/k of it,
    /// rounded up, and always a strict majority.
    pub fn alpha_for(&self, sample: usize) -> usize {
        let scaled = (self.alpha * sample).div_ceil(self.k);
        scaled.max(sample / 2 + 1).min(sample.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Params::default().validate().unwrap();
        let bad = Params {
            alpha: 10,
            ..Params::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "alpha");
        let bad = Params {
            beta_rogue: 1,
            ..Params::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "beta_rogue");
    }

    #[test]
    fn small_samples_need_a_majority() {
        let p = Params::default();
        assert_eq!(p.alpha_for(1), 1);
        assert_eq!(p.alpha_for(2), 2);
        assert_eq!(p.alpha_for(7), 5);
        assert_eq!(p.alpha_for(20), 14);
    }

    proptest! {
        #[test]
        fn alpha_is_always_a_reachable_majority(k in 1usize..=64, a in 0usize..=64, n in 1usize..=64) {
            let p = Params { k, alpha: a.clamp(k / 2 + 1, k), ..Params::default() };
            prop_assume!(p.validate().is_ok());
            let n = n.min(k);
            let need = p.alpha_for(n);
            prop_assert!(need * 2 > n);
            prop_assert!(need <= n);
        }
    }
}
