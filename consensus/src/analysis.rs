//! The safety analysis behind the default parameters (docs/consensus.md
//! explains the model; `agentmesh-testnet analyse` prints these figures).
//!
//! A poll draws `k` validators with replacement, weighted (see
//! [`crate::validators`]), so the votes for a value held by a share `p` of
//! the weight are Binomial(k, p). A node accepts a contested value after
//! `beta` consecutive polls reaching α-confidence.
//!
//! Two honest nodes accept rivals A and B only if one sees `beta`
//! consecutive confident polls for A and the other `beta` for B. Byzantine
//! weight `f` votes for whatever each asker is being pushed towards; the
//! honest weight is split, a share `h` preferring A and `1 - f - h`
//! preferring B. Against a split that stood still for both runs, the chance
//! of both is `T(h + f)^beta · T(1 - h)^beta`, with `T(p)` the chance that
//! one poll reaches α-confidence at share `p`. [`double_acceptance`] is its
//! maximum over every split; the adversary's best split is the balanced one.
//! It is a per-conflict figure against a frozen split: preferences of
//! honest nodes drift towards the side that wins polls, which only lowers
//! it (the Avalanche paper's Markov-chain analysis), and the simulator's
//! adaptive campaign tests the dynamics.

/// The Byzantine share of weight the defaults are analysed for.
pub const BYZANTINE_SHARE: f64 = 0.2;
/// The largest per-conflict safety failure probability [`crate::Params`]
/// accepts at [`BYZANTINE_SHARE`].
pub const MAX_FAILURE_PROBABILITY: f64 = 1e-12;

/// P(Binomial(k, p) >= at_least).
pub fn binomial_tail(k: usize, p: f64, at_least: usize) -> f64 {
    if at_least == 0 {
        return 1.0;
    }
    if at_least > k {
        return 0.0;
    }
    let p = p.clamp(0.0, 1.0);
    (at_least..=k)
        .map(|i| (ln_choose(k, i) + ln_pow(p, i) + ln_pow(1.0 - p, k - i)).exp())
        .sum::<f64>()
        .min(1.0)
}

fn ln_choose(n: usize, r: usize) -> f64 {
    (1..=r).map(|i| ((n + 1 - i) as f64 / i as f64).ln()).sum()
}

/// ln(x^n), with 0^0 = 1.
fn ln_pow(x: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        n as f64 * x.ln()
    }
}

/// The chance that one poll of `k` draws reaches `alpha` for a value held by
/// share `p` of the weight, `beta` times in a row.
pub fn run_probability(k: usize, alpha: usize, beta: u32, p: f64) -> f64 {
    binomial_tail(k, p, alpha).powi(beta as i32)
}

/// The worst case over honest splits of two honest nodes accepting rivals,
/// with Byzantine share `f` (see the module comment).
pub fn double_acceptance(k: usize, alpha_confidence: usize, beta: u32, f: f64) -> f64 {
    let steps = 200;
    (0..=steps)
        .map(|i| (1.0 - f) * i as f64 / steps as f64)
        .map(|h| {
            run_probability(k, alpha_confidence, beta, h + f)
                * run_probability(k, alpha_confidence, beta, 1.0 - h)
        })
        .fold(0.0, f64::max)
}

/// The chance that one side of a partition holding share `w` of the weight
/// (the rest silent, counted as no) accepts something in one run of polls.
pub fn partition_side_decides(k: usize, alpha_confidence: usize, beta: u32, w: f64) -> f64 {
    run_probability(k, alpha_confidence, beta, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_match_known_values() {
        // P(Bin(20, 0.5) >= 15) = 21700 / 2^20.
        let exact = 21_700.0 / 1_048_576.0;
        assert!((binomial_tail(20, 0.5, 15) - exact).abs() < 1e-12);
        assert_eq!(binomial_tail(20, 0.3, 0), 1.0);
        assert_eq!(binomial_tail(20, 0.3, 21), 0.0);
        assert!((binomial_tail(20, 1.0, 20) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_adversary_gains_with_its_share() {
        let low = double_acceptance(20, 15, 20, 0.1);
        let high = double_acceptance(20, 15, 20, 0.3);
        assert!(low < high);
        assert!(double_acceptance(20, 15, 20, BYZANTINE_SHARE) < MAX_FAILURE_PROBABILITY);
    }
}
