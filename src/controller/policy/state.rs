//! What the policy controller remembers between reconciles (plans, the routing it
//! wrote, region counts), and forgetting it when a policy leaves the watch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{observe, owner_key};
use crate::controller::{Context, Retries};
pub(super) use crate::lock;
use crate::plan::Plan;
use crate::telemetry::StateLabels;

pub(super) type Key = (String, String);
/// A routing write: content hash and the resourceVersion it produced.
pub(super) type Written = (String, String);

/// Controller state beyond the shared [`Context`].
pub(super) struct PolicyCtx {
    pub(super) ctx: Arc<Context>,
    pub(super) caches: observe::Caches,
    /// Last plan per policy, with the policy's uid (a recreated policy starts afresh).
    pub(super) plans: Mutex<HashMap<Key, (String, Plan)>>,
    /// The routing this process last wrote per policy: uid, content hash and the
    /// resourceVersion the write produced.
    pub(super) written: Mutex<HashMap<Key, (String, Written)>>,
    /// Region states per policy, summed into the `regions{state}` gauge.
    pub(super) region_counts: Mutex<HashMap<Key, [i64; 4]>>,
    /// Policies this process holds state for (probes, plans), to forget on deletion.
    pub(super) known: Mutex<HashSet<Key>>,
    /// Failed reconciles in a row, for the backoff.
    pub(super) retries: Retries,
    /// When a policy was first seen waiting for first verdicts: its Trunks' (see
    /// [`observe::verdicts_pending`]) or its static targets' (see
    /// [`observe::static_targets_pending`]).
    pub(super) waiting_since: Mutex<HashMap<Key, Instant>>,
}

impl PolicyCtx {
    /// A policy left the watch: stop probing its static targets and drop its state.
    /// (No finalizer: the ConfigMap goes with its owner reference, and the prober is
    /// in-process state.)
    pub(super) fn forget(&self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        self.ctx.probes.remove(&owner_key(ns, name));
        lock(&self.known).remove(&key);
        lock(&self.plans).remove(&key);
        lock(&self.written).remove(&key);
        lock(&self.region_counts).remove(&key);
        lock(&self.waiting_since).remove(&key);
        self.retries.reset(&key);
        self.publish_region_gauge();
    }

    /// How much longer the routing of `key` waits for first verdicts: `pending` is the
    /// longest wait [`observe::verdicts_pending`] and
    /// [`observe::static_targets_pending`] allow (`None`: nothing to wait
    /// for), counted from the first pass that had to wait.
    pub(super) fn first_routing_wait(
        &self,
        key: &Key,
        pending: Option<Duration>,
    ) -> Option<Duration> {
        let mut waiting = lock(&self.waiting_since);
        let Some(allowed) = pending else {
            waiting.remove(key);
            return None;
        };
        let since = *waiting.entry(key.clone()).or_insert_with(Instant::now);
        let left = allowed.saturating_sub(since.elapsed());
        (!left.is_zero()).then_some(left)
    }

    pub(super) fn publish_region_gauge(&self) {
        let mut total = [0i64; 4];
        for counts in lock(&self.region_counts).values() {
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        for (state, n) in ["Active", "Failed", "Draining", "Recovering"]
            .iter()
            .zip(total)
        {
            self.ctx
                .metrics
                .regions
                .get_or_create(&StateLabels { state })
                .set(n);
        }
    }
}
