//! Exponential backoff schedules (backon's delays, jittered): 1 s, 2 s, 4 s
//! ... up to a cap. Pure: the caller passes the current time in.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::{Duration, Instant};

pub struct Backoff {
    max: Duration,
    delays: backon::ExponentialBackoff,
    next_at: Instant,
}

impl Backoff {
    /// A schedule that is due at once.
    pub fn new(max: Duration, now: Instant) -> Backoff {
        Backoff {
            max,
            delays: Self::delays(max),
            next_at: now,
        }
    }

    fn delays(max: Duration) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1).min(max))
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.next_at
    }

    /// Call after acting: the next attempt waits the next delay.
    pub fn schedule_next(&mut self, now: Instant) {
        self.next_at = now + self.delays.next().unwrap_or(self.max);
    }

    /// Starts over from the shortest delay, first attempt one delay from now.
    pub fn restart(&mut self, now: Instant) {
        self.delays = Self::delays(self.max);
        self.schedule_next(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_restart_short() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(8), t0);
        assert!(b.is_due(t0));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            b.schedule_next(now);
            let wait = b.next_at - now;
            waits.push(wait);
            now = b.next_at;
        }
        // Jitter adds up to one more delay; never more than twice the cap.
        assert!(waits[0] >= Duration::from_secs(1) && waits[0] <= Duration::from_secs(2));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(16)));
        assert!(waits[7] >= Duration::from_secs(8));
        b.restart(now);
        assert!(!b.is_due(now));
        assert!(b.is_due(now + Duration::from_secs(2)));
    }
}
