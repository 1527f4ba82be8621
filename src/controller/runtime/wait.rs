//! Bounded waits of one object for something another object or controller will do
//! (a first verdict, a first plan), counted from the first pass that had to wait; and
//! work that yields (bounded) to more urgent work in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock;

/// A namespace and name.
type Key = (String, String);

/// When each waiting object started to wait.
#[derive(Default)]
pub struct BoundedWaits {
    since: Mutex<HashMap<Key, Instant>>,
}

impl BoundedWaits {
    /// How much longer `key` waits: `allowed` is the whole wait (`None`: nothing to wait
    /// for, which also ends the wait). `None` when the object goes ahead now.
    pub fn left(&self, key: &Key, allowed: Option<Duration>) -> Option<Duration> {
        let mut since = lock(&self.since);
        let Some(allowed) = allowed else {
            since.remove(key);
            return None;
        };
        let started = *since.entry(key.clone()).or_insert_with(Instant::now);
        let left = allowed.saturating_sub(started.elapsed());
        (!left.is_zero()).then_some(left)
    }

    /// The object is gone: forget its wait.
    pub fn forget(&self, key: &Key) {
        lock(&self.since).remove(key);
    }

    /// Start every wait afresh (e.g. a new leadership term).
    pub fn clear(&self) {
        lock(&self.since).clear();
    }
}

/// Work in flight that other work yields to: policy reconciles (the routing), which
/// Trunk status first publications and refreshes let go first. Both share the API
/// server's throughput: at a 10,000-Trunk start the statuses took most of it and the
/// routing waited.
#[derive(Debug)]
pub struct InFlight {
    count: tokio::sync::watch::Sender<usize>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            count: tokio::sync::watch::channel(0).0,
        }
    }
}

/// One unit of [`InFlight`] work, until dropped.
#[must_use = "the work counts as in flight only while the guard lives"]
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl InFlight {
    /// Count one unit of work in flight until the guard drops.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.send_modify(|n| *n += 1);
        InFlightGuard(self)
    }

    /// Wait until nothing is in flight, at most `max` (so that the yielding work is
    /// slowed, never stopped, by a busy stream of the other).
    pub async fn idle_within(&self, max: Duration) {
        let mut rx = self.count.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|n| *n == 0)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn yielding_work_waits_for_idle_but_not_longer_than_its_bound() {
        let work = InFlight::default();
        let started = tokio::time::Instant::now();
        work.idle_within(Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "idle: no wait");
        let guard = work.enter();
        work.idle_within(Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1), "busy: the bound");
        // The work ends while the other waits: the wait ends with it.
        let ends = async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(guard);
        };
        tokio::join!(ends, work.idle_within(Duration::from_secs(5)));
        assert_eq!(started.elapsed(), Duration::from_millis(1300));
        work.idle_within(Duration::from_secs(1)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(1300),
            "done: no wait"
        );
    }

    #[test]
    fn a_wait_is_bounded_and_ends_when_nothing_is_missing() {
        let waits = BoundedWaits::default();
        let key = ("ns".to_string(), "a".to_string());
        let left = waits.left(&key, Some(Duration::from_secs(30))).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(29));
        // Counted from the first pass: a later pass does not restart it.
        let again = waits.left(&key, Some(Duration::from_secs(30))).unwrap();
        assert!(again <= left);
        // Nothing missing: go ahead, and a later wait starts afresh.
        assert_eq!(waits.left(&key, None), None);
        // The bound passed: go ahead although something is still missing.
        assert_eq!(waits.left(&key, Some(Duration::ZERO)), None);
    }
}
