//! What the policy controller remembers between reconciles (plans, the routing it
//! wrote, region counts), and forgetting it when a policy leaves the watch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::decide::Written;
use super::{observe, owner_key};
use crate::controller::runtime::BoundedWaits;
use crate::controller::{Context, Retries};
pub(super) use crate::lock;
use crate::plan::Plan;
use crate::telemetry::StateLabels;

pub(super) type Key = (String, String);

/// Controller state beyond the shared [`Context`].
pub(super) struct PolicyCtx {
    pub(super) ctx: Arc<Context>,
    pub(super) caches: observe::Caches,
    /// Last plan per policy, with the policy's uid (a recreated policy starts afresh).
    pub(super) plans: Mutex<HashMap<Key, (String, Plan)>>,
    /// The routing this process last wrote per policy, with the policy's uid.
    pub(super) written: Mutex<HashMap<Key, (String, Written)>>,
    /// Region states per policy, summed into the `regions{state}` gauge.
    pub(super) region_counts: Mutex<HashMap<Key, [i64; 4]>>,
    /// Policies this process holds state for (probes, plans), to forget on deletion.
    pub(super) known: Mutex<HashSet<Key>>,
    /// Failed reconciles in a row, for the backoff.
    pub(super) retries: Retries,
    /// Policies whose routing waits for first verdicts: their Trunks' (see
    /// [`observe::verdicts_pending`]) or their static targets' (see
    /// [`observe::static_targets_pending`]).
    pub(super) waits: BoundedWaits,
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
        self.waits.forget(&key);
        self.retries.reset(&key);
        self.publish_region_gauge();
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
