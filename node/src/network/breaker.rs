//! Per-peer circuit breaker for QUIC, as a pure state machine (time is an
//! argument). It decides whether the next dial to a peer may try QUIC:
//!
//! * CLOSED (normal): QUIC is tried first. If more than half of the last
//!   [`WINDOW`] QUIC attempts failed, the breaker opens.
//! * OPEN: TCP only, until the cooldown has passed; then HALF-OPEN.
//! * HALF-OPEN: up to [`TRIALS`] trial QUIC dials; at least 80% of them
//!   succeeding closes the breaker, anything less opens it again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// QUIC attempts remembered while CLOSED.
pub const WINDOW: usize = 5;
/// Trial dials in HALF-OPEN.
pub const TRIALS: u32 = 3;
/// Share of successful trials needed to close again (80%).
const CLOSE_RATIO: f64 = 0.8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        started: u32,
        succeeded: u32,
        finished: u32,
    },
}

impl BreakerState {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    state: BreakerState,
    /// Outcomes of the last QUIC attempts while CLOSED (true = success).
    recent: VecDeque<bool>,
    cooldown: Duration,
    pub quic_failures: u64,
    pub quic_successes: u64,
}

impl CircuitBreaker {
    pub fn new(cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker {
            state: BreakerState::Closed,
            recent: VecDeque::with_capacity(WINDOW),
            cooldown,
            quic_failures: 0,
            quic_successes: 0,
        }
    }

    /// The state, after moving OPEN to HALF-OPEN if the cooldown is over.
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen {
                    started: 0,
                    succeeded: 0,
                    finished: 0,
                };
            }
        }
        self.state
    }

    /// May an ordinary dial (not a trial) use QUIC?
    pub fn allows_quic(&mut self, now: Instant) -> bool {
        matches!(self.state(now), BreakerState::Closed)
    }

    /// In HALF-OPEN, claims the next trial dial if one is left and none is
    /// under way. Returns whether the caller should dial a QUIC trial now.
    pub fn start_trial(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::HalfOpen {
                started,
                succeeded,
                finished,
            } if started < TRIALS && started == finished => {
                self.state = BreakerState::HalfOpen {
                    started: started + 1,
                    succeeded,
                    finished,
                };
                true
            }
            _ => false,
        }
    }

    /// Takes back a trial claimed by [`start_trial`](Self::start_trial) that
    /// never reached the network (refused locally): it is no QUIC outcome.
    pub fn withdraw_trial(&mut self) {
        if let BreakerState::HalfOpen {
            started,
            succeeded,
            finished,
        } = self.state
        {
            if started > finished {
                self.state = BreakerState::HalfOpen {
                    started: started - 1,
                    succeeded,
                    finished,
                };
            }
        }
    }

    /// Records the outcome of a QUIC attempt (an ordinary dial or a trial).
    pub fn record(&mut self, success: bool, now: Instant) {
        if success {
            self.quic_successes += 1;
        } else {
            self.quic_failures += 1;
        }
        match self.state(now) {
            BreakerState::Closed => {
                if self.recent.len() == WINDOW {
                    self.recent.pop_front();
                }
                self.recent.push_back(success);
                let failed = self.recent.iter().filter(|ok| !**ok).count();
                if failed * 2 > self.recent.len() {
                    self.open(now);
                }
            }
            // A late outcome of an attempt started before the breaker opened.
            BreakerState::Open { .. } => {}
            BreakerState::HalfOpen {
                started,
                succeeded,
                finished,
            } => {
                let succeeded = succeeded + u32::from(success);
                let finished = (finished + 1).min(started.max(1));
                // Decide as soon as the outcome is certain.
                let best_possible = f64::from(succeeded + (TRIALS - finished)) / f64::from(TRIALS);
                if best_possible < CLOSE_RATIO {
                    self.open(now);
                } else if finished >= TRIALS {
                    self.state = BreakerState::Closed;
                    self.recent.clear();
                } else {
                    self.state = BreakerState::HalfOpen {
                        started: started.max(finished),
                        succeeded,
                        finished,
                    };
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.cooldown,
        };
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COOLDOWN: Duration = Duration::from_secs(300);

    #[test]
    fn opens_when_most_recent_attempts_fail() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(COOLDOWN);
        b.record(true, t);
        b.record(true, t);
        b.record(false, t);
        assert!(b.allows_quic(t), "1 of 3 failed");
        b.record(false, t);
        assert!(b.allows_quic(t), "2 of 4 failed is not more than half");
        b.record(false, t);
        assert_eq!(b.state(t).name(), "open", "3 of 5 failed");
        assert!(!b.allows_quic(t));
    }

    #[test]
    fn a_first_failure_opens_it() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(COOLDOWN);
        b.record(false, t);
        assert!(!b.allows_quic(t));
    }

    #[test]
    fn only_the_last_five_attempts_count() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(COOLDOWN);
        for ok in [true, true, true, false, false, true, true] {
            b.record(ok, t);
        }
        assert!(b.allows_quic(t));
    }

    #[test]
    fn cooldown_then_three_good_trials_close_it() {
        let t = Instant::now();
        let mut b = CircuitBreaker::new(COOLDOWN);
        b.record(false, t);
        assert!(!b.start_trial(t), "no trials while open");
        let later = t + COOLDOWN;
        assert_eq!(b.state(later).name(), "half_open");
        assert!(!b.allows_quic(later), "ordinary dials stay on TCP");
        for i in 0..3 {
            assert!(b.start_trial(later), "trial {i}");
            assert!(!b.start_trial(later), "one trial at a time");
            b.record(true, later);
        }
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[test]
    fn a_withdrawn_trial_can_be_started_again() {
        let t = Instant::now() + COOLDOWN;
        let mut b = CircuitBreaker::new(COOLDOWN);
        b.record(false, t - COOLDOWN);
        assert!(b.start_trial(t));
        b.withdraw_trial();
        assert!(b.start_trial(t));
        assert_eq!(b.state(t).name(), "half_open");
    }

    #[test]
    fn a_failed_trial_reopens_it_for_another_cooldown() {
        let t = Instant::now() + COOLDOWN;
        let mut b = CircuitBreaker::new(COOLDOWN);
        b.record(false, t - COOLDOWN);
        assert!(b.start_trial(t));
        b.record(true, t);
        assert!(b.start_trial(t));
        b.record(false, t);
        assert_eq!(
            b.state(t),
            BreakerState::Open {
                until: t + COOLDOWN
            }
        );
    }

    proptest! {
        #[test]
        fn never_more_than_three_trials_per_half_open_period(
            events in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u64..400), 0..200)
        ) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = CircuitBreaker::new(COOLDOWN);
            let mut trials_this_period = 0;
            for (trial, ok, advance) in events {
                now += Duration::from_secs(advance);
                if !matches!(b.state(now), BreakerState::HalfOpen { .. }) {
                    trials_this_period = 0;
                }
                if trial {
                    if b.start_trial(now) {
                        trials_this_period += 1;
                        b.record(ok, now);
                    }
                } else {
                    b.record(ok, now);
                }
                prop_assert!(trials_this_period <= TRIALS);
                if !matches!(b.state(now), BreakerState::HalfOpen { .. }) {
                    trials_this_period = 0;
                }
                // QUIC is only allowed for ordinary dials when CLOSED.
                let closed = matches!(b.state(now), BreakerState::Closed);
                prop_assert_eq!(b.allows_quic(now), closed);
            }
        }
    }
}
