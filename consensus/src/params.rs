//! Consensus parameters, validated, with defaults that work from a 2-node
//! mesh to hundreds of nodes.

use crate::analysis;

/// Avalanche parameters and the engine's resource bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Validators drawn per poll: weighted, with replacement (a validator
    /// drawn twice votes twice), whatever the size of the set.
    pub k: usize,
    /// Yes votes out of `k` that make a poll successful for a value: its
    /// preference strength grows (standard Snowball's α-preference).
    pub alpha_preference: usize,
    /// Yes votes out of `k` that count towards acceptance (α-confidence).
    pub alpha_confidence: usize,
    /// Bound on a conflict member's preference strength (successful polls):
    /// how many polls a new majority must win to take over a node that an
    /// old one (e.g. its side of a healed partition) held.
    pub max_preference_strength: u32,
    /// Consecutive confident polls that accept an uncontested transaction.
    pub beta_virtuous: u32,
    /// Consecutive confident polls that accept a contested transaction.
    pub beta_rogue: u32,
    /// Most polls in flight at once; fewer while polls are quick (see
    /// `Engine`'s poll slots: about 50 polls a second are kept going).
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
    /// A sampled peer that has not answered after this long votes no, until
    /// its round trips have been measured; then its timeout follows them
    /// (see `Engine`'s adaptive timeouts), between the two bounds below.
    pub query_timeout_ms: u64,
    pub query_timeout_min_ms: u64,
    pub query_timeout_max_ms: u64,
    /// A missing vertex not received after this long is asked of another peer.
    pub fetch_timeout_ms: u64,
    /// A vertex whose ancestors stay missing this long is dropped.
    pub pending_timeout_ms: u64,
    /// Most of the validator weight that may be benched at once (silent
    /// validators past it are queried and waited for like the rest). A
    /// benched validator counts as a no, so this stays below what may say
    /// no while a poll still reaches α-confidence.
    pub max_benched_percent: u32,
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
            alpha_preference: 11,
            alpha_confidence: 15,
            max_preference_strength: 10,
            beta_virtuous: 15,
            beta_rogue: 15,
            max_polls_in_flight: 16,
            batch_size: 64,
            max_processing: 4096,
            max_processing_transactions: 10_000,
            max_pending: 4096,
            max_parents: 8,
            query_timeout_ms: 2_000,
            query_timeout_min_ms: 250,
            query_timeout_max_ms: 10_000,
            fetch_timeout_ms: 2_000,
            pending_timeout_ms: 30_000,
            max_benched_percent: 20,
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
    // Long on purpose: A list of independent checks, each with its rule and its message;
    // splitting them apart would hide the whole set of constraints.
    pub fn validate(&self) -> Result<(), ParamsError> {
        check(
            (1..=64).contains(&self.k),
            "k",
            format!("must be 1 to 64, got {}", self.k),
        )?;
        check(
            self.alpha_preference * 2 > self.k && self.alpha_preference <= self.alpha_confidence,
            "alpha_preference",
            format!(
                "must be a majority of k and at most alpha_confidence ({} < alpha_preference <= {}), got {}",
                self.k / 2,
                self.alpha_confidence,
                self.alpha_preference
            ),
        )?;
        check(
            self.alpha_confidence <= self.k,
            "alpha_confidence",
            format!(
                "must be at most k ({}), got {}",
                self.k, self.alpha_confidence
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
        check(
            self.max_preference_strength >= 1,
            "max_preference_strength",
            "must be at least 1",
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
            self.query_timeout_min_ms > 0,
            "query_timeout_min_ms",
            "must be positive",
        )?;
        check(
            self.query_timeout_min_ms <= self.query_timeout_ms
                && self.query_timeout_ms <= self.query_timeout_max_ms,
            "query_timeout_ms",
            format!(
                "must lie between query_timeout_min_ms and query_timeout_max_ms ({} <= {} <= {})",
                self.query_timeout_min_ms, self.query_timeout_ms, self.query_timeout_max_ms
            ),
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
        check(
            self.max_benched_percent == 0
                || f64::from(self.max_benched_percent) < 100.0 * self.no_share(),
            "max_benched_percent",
            format!(
                "must be below the share of no votes a confident poll tolerates ({:.0}%), got {}",
                100.0 * self.no_share(),
                self.max_benched_percent
            ),
        )?;
        let failure = self.safety_failure_probability();
        check(
            failure <= analysis::MAX_FAILURE_PROBABILITY,
            "alpha_confidence",
            format!(
                "k = {}, alpha_confidence = {} and beta = {} give a {:.1e} chance per conflict that \
                 two honest nodes accept rivals with {}% Byzantine weight; the analysed region \
                 (docs/consensus.md) needs at most {:.0e}: raise alpha_confidence or the betas",
                self.k,
                self.alpha_confidence,
                self.beta_virtuous.min(self.beta_rogue),
                failure,
                analysis::BYZANTINE_SHARE * 100.0,
                analysis::MAX_FAILURE_PROBABILITY
            ),
        )?;
        Ok(())
    }

    /// The analysis's per-conflict probability that two honest nodes accept
    /// rivals, at [`analysis::BYZANTINE_SHARE`] (see [`analysis`]).
    pub fn safety_failure_probability(&self) -> f64 {
        analysis::double_acceptance(
            self.k,
            self.alpha_confidence,
            self.beta_virtuous.min(self.beta_rogue),
            analysis::BYZANTINE_SHARE,
        )
    }

    /// The share of draws that may say no while a poll still reaches
    /// α-confidence.
    pub fn no_share(&self) -> f64 {
        1.0 - self.alpha_confidence as f64 / self.k as f64
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
            alpha_preference: 10,
            ..Params::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "alpha_preference");
        let bad = Params {
            alpha_preference: 16,
            ..Params::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "alpha_preference");
        let bad = Params {
            beta_rogue: 1,
            ..Params::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "beta_rogue");
        let bad = Params {
            query_timeout_ms: 20_000,
            ..Params::default()
        };
        assert_eq!(bad.validate().unwrap_err().name, "query_timeout_ms");
    }

    #[test]
    fn settings_outside_the_analysed_region_are_refused_with_their_cost() {
        let weak = Params {
            alpha_confidence: 12,
            beta_virtuous: 5,
            beta_rogue: 5,
            ..Params::default()
        };
        let err = weak.validate().unwrap_err();
        assert_eq!(err.name, "alpha_confidence");
        assert!(err.problem.contains("Byzantine"), "{}", err.problem);
        assert!(Params::default().safety_failure_probability() < 1e-20);
    }

    proptest! {
        #[test]
        fn valid_params_keep_alpha_a_majority_and_benching_below_it(
            k in 1usize..=64, ap in 0usize..=64, ac in 0usize..=64, beta in 1u32..=40,
        ) {
            // Majorities of k, alpha_preference <= alpha_confidence.
            let ac = k / 2 + 1 + ac % (k - k / 2);
            let ap = k / 2 + 1 + ap % (ac - k / 2);
            let p = Params {
                k,
                max_benched_percent: beta % 3 * 10,
                alpha_preference: ap,
                alpha_confidence: ac,
                beta_virtuous: beta,
                beta_rogue: beta,
                ..Params::default()
            };
            if p.validate().is_err() {
                // Refused only for the analysis's sake, or for benching more
                // than a confident poll tolerates.
                prop_assert!(
                    p.safety_failure_probability() > analysis::MAX_FAILURE_PROBABILITY
                        || f64::from(p.max_benched_percent) >= 100.0 * p.no_share()
                );
                return Ok(());
            }
            prop_assert!(p.alpha_preference * 2 > k);
            prop_assert!(p.alpha_confidence <= k);
            prop_assert!(
                p.max_benched_percent == 0
                    || f64::from(p.max_benched_percent) < 100.0 * p.no_share()
            );
        }
    }
}
