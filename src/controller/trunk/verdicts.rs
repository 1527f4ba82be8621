//! The Trunk statuses this replica has decided while leading, ahead of the API.
//!
//! The Trunk controller decides a status the moment its probes change and hands the
//! write to the [`StatusWriter`](super::writer::StatusWriter). The policy controller
//! plans from the decision here instead of waiting for the write to come back through
//! the watch: a failover does not wait for one API round trip, and at 10,000 Trunks the
//! first routing does not wait for 10,000 status writes (the API server's write rate
//! bounds those, not the probes).
//!
//! An entry lives until the watch cache holds the written status: once the status is
//! written, the entry keeps the `resourceVersion` the write returned, and the watch
//! delivering that version or a later one drops it (the cache is the truth again), as
//! does a reader whose cached Trunk is that far. Dropping it on the watch matters at
//! scale: most Trunks are named by no policy, and at 10,000 their written statuses
//! would otherwise stay here beside the cache's copies. Resource versions are
//! compared as numbers: the API server's are etcd revisions. One that does not parse
//! as a number keeps the entry until the next decision, the Trunk's deletion or the
//! end of leadership.
//!
//! Only a leader decides, and a replica that stops leading clears the board: the next
//! leader's statuses come through the cache.
//!
//! The board also knows which Trunks the Trunk controller has judged in this term (one
//! full probe round measured, status decided or found unchanged). A leader that takes
//! over, or restarts, plans from published statuses; the routing a killed leader wrote
//! may already be ahead of a status it did not get to write. So the policy controller's
//! first pass of a term waits (bounded) until its Trunks are judged, instead of
//! routing back to a carrier that was found dead a moment before.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::crd::{Trunk, TrunkStatus};
use crate::lock;

/// A Trunk's key: (namespace, name).
pub type Key = (String, String);

/// Decisions a slow reader may have waiting before it is told it lagged (and then
/// re-reads everything).
const BUFFER: usize = 4096;

struct Entry {
    status: Arc<TrunkStatus>,
    /// The resource version our write of `status` returned (`None`: not written yet).
    written: Option<u64>,
}

/// Decided Trunk statuses not yet in the watch cache, with change notifications.
pub struct Verdicts {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Trunks judged by this replica's Trunk controller in this leadership term.
    judged: Mutex<HashSet<Key>>,
    /// Whether a Trunk controller judges for this board (tests may run the policy
    /// controller alone; then nothing is waited for).
    judging: AtomicBool,
    changes: broadcast::Sender<Key>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            judged: Mutex::default(),
            judging: AtomicBool::new(false),
            changes: broadcast::channel(BUFFER).0,
        }
    }
}

fn version(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|v| v.parse().ok())
}

impl Verdicts {
    /// The Trunk controller decided `status` for `key`: readers see it from now on.
    pub fn decide(&self, key: &Key, status: TrunkStatus) -> Arc<TrunkStatus> {
        let status = Arc::new(status);
        lock(&self.entries).insert(
            key.clone(),
            Entry {
                status: status.clone(),
                written: None,
            },
        );
        // No subscriber is not an error: the policy controller may not run.
        let _ = self.changes.send(key.clone());
        status
    }

    /// `status` was written and the API answered with `resource_version`. A decision
    /// made since keeps its entry unwritten.
    pub fn written(&self, key: &Key, status: &Arc<TrunkStatus>, resource_version: Option<&str>) {
        if let Some(e) = lock(&self.entries).get_mut(key)
            && Arc::ptr_eq(&e.status, status)
        {
            e.written = version(resource_version).or(Some(u64::MAX));
        }
    }

    /// The watch delivered `key` at `resource_version` (the cache holds it now): a
    /// written entry at that version or earlier is not needed any more.
    pub fn cached(&self, key: &Key, resource_version: Option<&str>) {
        let Some(cached) = version(resource_version) else {
            return;
        };
        let mut entries = lock(&self.entries);
        if entries
            .get(key)
            .and_then(|e| e.written)
            .is_some_and(|written| cached >= written)
        {
            entries.remove(key);
        }
    }

    /// The status to read for `trunk` (the cached object of `key`): the decided one
    /// while the cache does not hold it yet, else `None` (read the cache's).
    pub fn current(&self, key: &Key, trunk: &Trunk) -> Option<Arc<TrunkStatus>> {
        let mut entries = lock(&self.entries);
        let entry = entries.get(key)?;
        if let (Some(written), Some(cached)) = (
            entry.written,
            version(trunk.metadata.resource_version.as_deref()),
        ) && cached >= written
        {
            entries.remove(key);
            return None;
        }
        Some(entry.status.clone())
    }

    /// The status of `trunk` as the planner should see it: decided or cached.
    pub fn status_of(&self, key: &Key, trunk: &Trunk) -> Option<Arc<TrunkStatus>> {
        self.current(key, trunk)
            .or_else(|| trunk.status.clone().map(Arc::new))
    }

    /// A Trunk controller judges the Trunks of this board from now on.
    pub fn start_judging(&self) {
        self.judging.store(true, Ordering::Relaxed);
    }

    /// The Trunk controller measured `key` fully in this term and decided its status
    /// (changed or not). Readers waiting for it are told the first time.
    pub fn mark_judged(&self, key: &Key) {
        if lock(&self.judged).insert(key.clone()) {
            let _ = self.changes.send(key.clone());
        }
    }

    /// Whether `key` has been judged in this term; always true when no Trunk controller
    /// judges for this board.
    pub fn is_judged(&self, key: &Key) -> bool {
        !self.judging.load(Ordering::Relaxed) || lock(&self.judged).contains(key)
    }

    /// The Trunk is gone (or no longer probed by this replica).
    pub fn forget(&self, key: &Key) {
        lock(&self.entries).remove(key);
        lock(&self.judged).remove(key);
    }

    /// Leadership ended: the next leader's statuses come through the cache, and the
    /// next term judges every Trunk again.
    pub fn clear(&self) {
        lock(&self.entries).clear();
        lock(&self.judged).clear();
    }

    /// Entries held (for tests and the memory figures).
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys of Trunks whose decided status changed, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Key> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EndpointState;

    fn trunk(rv: &str, state: EndpointState) -> Trunk {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
            "metadata": { "name": "fixed", "namespace": "ns", "resourceVersion": rv },
            "spec": { "region": "cologne", "endpoints": [{ "uri": "sip:127.0.0.1" }] },
            "status": { "endpoints": [{ "uri": "sip:127.0.0.1", "state": state.to_string() }] },
        }))
        .unwrap()
    }

    fn decided(state: EndpointState) -> TrunkStatus {
        let mut status = trunk("1", state).status.unwrap();
        status.healthy_endpoints = u32::from(state == EndpointState::Up);
        status
    }

    fn state_of(s: &TrunkStatus) -> EndpointState {
        s.endpoints[0].state
    }

    #[test]
    fn a_decision_is_read_until_the_cache_holds_its_write() {
        let board = Verdicts::default();
        let key = ("ns".to_string(), "fixed".to_string());
        let mut changes = board.subscribe();
        let cached_up = trunk("10", EndpointState::Up);
        assert!(board.current(&key, &cached_up).is_none(), "nothing decided");

        // Decided Down: the planner reads Down although the cache still says Up.
        let down = board.decide(&key, decided(EndpointState::Down));
        assert_eq!(changes.try_recv().unwrap(), key);
        let seen = board.status_of(&key, &cached_up).unwrap();
        assert_eq!(state_of(&seen), EndpointState::Down);

        // Written as version 12; a cache still at 11 (another change) is not enough.
        board.written(&key, &down, Some("12"));
        assert_eq!(
            state_of(
                &board
                    .status_of(&key, &trunk("11", EndpointState::Up))
                    .unwrap()
            ),
            EndpointState::Down
        );
        // The cache at 12 holds the write: the entry goes, the cache is read.
        let cached_down = trunk("12", EndpointState::Down);
        assert!(board.current(&key, &cached_down).is_none());
        assert!(board.is_empty());
        assert_eq!(
            state_of(&board.status_of(&key, &cached_down).unwrap()),
            EndpointState::Down
        );
    }

    #[test]
    fn the_watch_delivering_the_write_drops_the_entry_without_a_reader() {
        let board = Verdicts::default();
        let key = ("ns".to_string(), "fixed".to_string());
        let down = board.decide(&key, decided(EndpointState::Down));
        // Not written yet: a cache event (another change) keeps it.
        board.cached(&key, Some("11"));
        assert_eq!(board.len(), 1);
        board.written(&key, &down, Some("12"));
        board.cached(&key, Some("11"));
        assert_eq!(board.len(), 1, "the cache is behind the write");
        board.cached(&key, None);
        assert_eq!(
            board.len(),
            1,
            "a version that is not a number proves nothing"
        );
        board.cached(&key, Some("12"));
        assert!(
            board.is_empty(),
            "the cache holds the write: no copy is kept"
        );
        // A decision made after the write stays until it is written itself.
        let up = board.decide(&key, decided(EndpointState::Up));
        board.cached(&key, Some("13"));
        assert_eq!(board.len(), 1);
        board.written(&key, &up, Some("14"));
        board.cached(&key, Some("15"));
        assert!(board.is_empty());
    }

    #[test]
    fn a_later_decision_is_not_taken_for_the_earlier_write() {
        let board = Verdicts::default();
        let key = ("ns".to_string(), "fixed".to_string());
        let down = board.decide(&key, decided(EndpointState::Down));
        let _up = board.decide(&key, decided(EndpointState::Up));
        // The Down write returns after the Up decision: the Up decision stays.
        board.written(&key, &down, Some("12"));
        let seen = board
            .current(&key, &trunk("12", EndpointState::Down))
            .unwrap();
        assert_eq!(state_of(&seen), EndpointState::Up);
        // Leadership ends: nothing decided is read any more.
        board.clear();
        assert!(
            board
                .current(&key, &trunk("12", EndpointState::Down))
                .is_none()
        );
    }

    #[test]
    fn judged_trunks_are_per_term_and_only_when_someone_judges() {
        let board = Verdicts::default();
        let key = ("ns".to_string(), "fixed".to_string());
        assert!(
            board.is_judged(&key),
            "no Trunk controller: nothing to wait for"
        );
        board.start_judging();
        assert!(!board.is_judged(&key));
        let mut changes = board.subscribe();
        board.mark_judged(&key);
        board.mark_judged(&key);
        assert!(board.is_judged(&key));
        assert_eq!(changes.try_recv().unwrap(), key, "told once");
        assert!(changes.try_recv().is_err());
        board.clear();
        assert!(!board.is_judged(&key), "a new term judges again");
    }
}
