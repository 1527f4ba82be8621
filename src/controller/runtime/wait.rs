//! Bounded waits of one object for something another object or controller will do
//! (a first verdict, a first plan), counted from the first pass that had to wait.

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

#[cfg(test)]
mod tests {
    use super::*;

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
