//! The one retry backoff of the project: capped doubling with a little jitter.
//!
//! Used by every controller (failed reconciles, per object), by the watches (kube's
//! [`Backoff`](kube::runtime::utils::Backoff) trait) and by sip-sync (reload retries).
//!
//! Hand-written (40 lines) rather than `backon`, which kube already pulls in: the
//! controllers need the delay for the *n*-th failure in a row of one object (kube's
//! error policy is stateless, the count lives in [`Retries`](crate::controller::Retries)),
//! and backon's jitter adds up to +100 % (a 60 s cap could wait two minutes).

use std::time::Duration;

/// Doubling from `first` up to `cap`; each delay gets up to +10 % jitter, never past
/// `cap`, so that many failing objects or replicas do not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `first` that never waits longer than `cap`.
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            failures: 0,
        }
    }

    /// The delay after the `failures`-th failure in a row (1 = the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let first = self.first.min(self.cap);
        let base = first
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.cap);
        (base + base.mul_f64(rand::random::<f64>() * 0.1)).min(self.cap)
    }

    /// The next delay of a retry loop that keeps its own state.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// Start again from the shortest delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        Backoff::reset(self);
    }
}

/// Watches: retry every ≤ 2 s (from 250 ms), so that caches resume within seconds
/// after an API outage; kube's default grows to 30 s, which would delay routing.
pub const WATCH: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));

/// Failed reconciles: 500 ms doubling to a minute.
pub const RECONCILE: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_bounded_jitter_and_is_capped() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let within = |d: Duration, ms: u64| {
            (Duration::from_millis(ms)..=Duration::from_millis(ms + ms / 10)).contains(&d)
        };
        assert!(within(b.delay(1), 1000), "{:?}", b.delay(1));
        assert!(within(b.delay(3), 4000), "{:?}", b.delay(3));
        assert!(b.delay(1) < Duration::from_millis(1300));
        assert!(b.delay(5) > b.delay(1));
        assert_eq!(b.delay(100), Duration::from_secs(300));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn iterates_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert!((100..=110).contains(&delays[0]), "{delays:?}");
        assert!((200..=220).contains(&delays[1]), "{delays:?}");
        assert!(delays[4..].iter().all(|d| *d == 1000), "{delays:?}");
        b.reset();
        assert!(b.next().unwrap() < Duration::from_millis(111));
        let mut w = WATCH;
        assert!(
            (0..10)
                .filter_map(|_| w.next())
                .all(|d| d <= Duration::from_secs(2))
        );
    }
}
