//! The Trunk controller: hands each Trunk's endpoints to the [`ProbeHub`] and writes
//! what the probes found into `status`, on transitions only.
//!
//! - observe: the Trunk (from the controller's cache), the prober's health, and the
//!   CA bundle of TLS endpoints (an in-memory cache, [`observe::CaBundles`]);
//! - decide/status: [`status::next_status`] (pure) — the status to write, or none;
//!   [`status::transitions`] — the endpoint changes that become Events;
//! - apply: the decision goes on the [`verdicts`] board at once (the policy controller
//!   plans from it) and to the [`writer`] queue, which applies the status with
//!   lifeline's field manager, then publishes its Events.
//!
//! `reconcile` holds one pass of these steps for one Trunk; this module, the wiring.
//!
//! Probing is in-process state, so deletion needs no finalizer: the watch's delete
//! events (and a re-list that no longer shows a Trunk) stop its probes.
//!
//! [`ProbeHub`]: crate::probe::ProbeHub

pub mod observe;
mod reconcile;
pub mod status;
pub mod verdicts;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::runtime::{Expedite, edge_changes, everyone_on_recovery, on_deleted, probe_changes};
use super::{Context, Retries};
use crate::lock;
use crate::probe::passive::PassiveState;
use reconcile::{error_policy, reconcile};
pub use status::{next_status, reasons};

/// Controller name in metric labels and logs.
const CONTROLLER: &str = "trunk";

/// What can go wrong in a reconcile.
pub type Error = super::runtime::ReconcileError;

/// The hub owner key of a Trunk.
pub fn owner_key(namespace: &str, name: &str) -> String {
    format!("trunk/{namespace}/{name}")
}

type Key = (String, String);

/// Controller state beyond the shared [`Context`].
struct TrunkCtx {
    ctx: Arc<Context>,
    /// Trunks whose endpoints the hub probes (namespace, name).
    known: Mutex<HashSet<Key>>,
    /// When each Trunk's status was last written (for the RTT refresh limit).
    last_write: Mutex<HashMap<Key, jiff::Timestamp>>,
    /// Failed reconciles in a row, for the backoff.
    retries: Retries,
    /// CA bundles of TLS endpoints, read off the reconcile path.
    ca_bundles: Arc<observe::CaBundles>,
    /// Health learned from real calls per endpoint (`ns/name` → URI → state).
    passive: Mutex<HashMap<Key, HashMap<String, PassiveState>>>,
    /// Writes the decided statuses.
    writer: Arc<writer::StatusWriter>,
}

impl TrunkCtx {
    /// A Trunk left the watch (deleted, or out of scope): stop probing it.
    fn forget(&self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        if lock(&self.known).remove(&key) {
            tracing::info!(namespace = %ns, name = %name, "trunk deleted: probes stopped");
        }
        self.ctx.probes.remove(&owner_key(ns, name));
        self.ca_bundles.release(&key);
        lock(&self.last_write).remove(&key);
        self.retries.reset(&key);
        self.ctx.verdicts.forget(&key);
        self.writer.forget(&key);
    }
}

/// Run the trunk controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let (ca_bundles, bundle_changes) = observe::CaBundles::new();
    let reader = tokio::spawn(ca_bundles.clone().run(ctx.client.clone(), shutdown.clone()));
    let tctx = Arc::new(TrunkCtx {
        ctx: ctx.clone(),
        known: Mutex::default(),
        last_write: Mutex::default(),
        retries: Retries::new(crate::backoff::Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(300),
        )),
        ca_bundles,
        passive: Mutex::default(),
        writer: writer::StatusWriter::new(ctx.metrics.status_writes_pending.clone()),
    });
    ctx.verdicts.start_judging();
    let writing = tokio::spawn(tctx.writer.clone().run(
        ctx.clone(),
        ctx.verdicts.clone(),
        shutdown.clone(),
    ));
    // Leadership lost: what this replica decided and did not write is not the truth
    // any more (the next leader decides and writes for itself).
    let resign = tokio::spawn({
        let (tctx, lost) = (
            tctx.clone(),
            super::on_change(ctx.leading.clone(), |leading| !*leading),
        );
        async move {
            futures::pin_mut!(lost);
            while lost.next().await.is_some() {
                tctx.ctx.verdicts.clear();
                tctx.writer.clear();
            }
        }
    });
    // The context's one Trunk watch: the policy controller reads the same cache.
    let store = ctx.trunks.store();
    let trunks = on_deleted(
        ctx.trunks.subscribe(),
        store.clone(),
        {
            let tctx = tctx.clone();
            move || lock(&tctx.known).iter().cloned().collect()
        },
        {
            let tctx = tctx.clone();
            move |ns, name| tctx.forget(ns, name)
        },
    )
    .applied_objects()
    .inspect_ok({
        let verdicts = ctx.verdicts.clone();
        move |trunk| {
            let key = (trunk.namespace().unwrap_or_default(), trunk.name_any());
            verdicts.cached(&key, trunk.meta().resource_version.as_deref());
        }
    });
    // Probe results, and — leadership gained or the API back after an outage — every
    // Trunk at once (reads from the cache; writes only what differs from the status).
    // A probe verdict is decided at once, not at the scheduler's next tick: a failover
    // waits for it.
    let expedite = Expedite::new(store.clone());
    let probed = expedite.clone().triggers(
        probe_changes(ctx.probes.subscribe(), "trunk", store.clone()),
        {
            let tctx = tctx.clone();
            move |trunk| reconcile(trunk, tctx.clone())
        },
    );
    let changes = futures::stream::select(
        probed,
        futures::stream::select(
            everyone_on_recovery(&ctx, store.clone(), || {}),
            futures::stream::select(
                bundle_changes,
                // An edge report changed: the namespace's Trunks combine vantages again.
                edge_changes(ctx.edges.subscribe(), store.clone(), |_| true),
            ),
        ),
    );
    Controller::for_stream(trunks, store)
        // Errors of any trigger stream pause them all for this backoff (kube's default
        // grows to 30 s and would hold every reconcile after an API outage).
        .trigger_backoff(crate::backoff::WATCH)
        .with_config(super::runtime::controller_config())
        .reconcile_on(changes)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            {
                let expedite = expedite.clone();
                move |trunk, tctx| expedite.clone().in_turn(trunk, |t| reconcile(t, tctx))
            },
            error_policy,
            tctx.clone(),
        )
        .for_each(|res| {
            if let Err(e) = res {
                // Objects that vanished before their reconcile are not worth a warning.
                tracing::debug!(error = %e, "trunk reconcile did not run");
            }
            futures::future::ready(())
        })
        .await;
    expedite.drained().await;
    reader.abort();
    resign.abort();
    writing.abort();
    for (ns, name) in lock(&tctx.known).drain() {
        ctx.probes.remove(&owner_key(&ns, &name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::runtime::parse_owner_key;
    use crate::crd::Trunk;

    #[test]
    fn owner_keys_round_trip_and_backoff_grows() {
        let r = parse_owner_key::<Trunk>("trunk", &owner_key("ns1", "a")).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("a", Some("ns1"))
        );
        assert!(parse_owner_key::<Trunk>("trunk", "policy/ns1/a").is_none());
        let b = crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let backoff = |n| b.delay(n);
        assert!(backoff(1) < Duration::from_millis(1300));
        assert!(backoff(20) <= Duration::from_secs(360));
        assert!(backoff(5) > backoff(1));
    }
}
