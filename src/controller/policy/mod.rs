//! The FallbackPolicy controller: observe health → [`plan`](crate::plan::plan) →
//! [`render`](crate::render) → write the status (only when it changes) → write the
//! routing ConfigMap (only when its content differs) → Events for transitions.
//!
//! - [`observe`]: reads caches only (Trunks, BotPools, FailoverDrills, lifeline's
//!   ConfigMaps, and every ConfigMap's name and owners) and the prober;
//! - [`decide`]: pure — the plan with drills, whether the routing needs a write, which
//!   Events the planner's transitions become, when to look again;
//! - [`status`]: pure — the status that describes a plan;
//! - [`apply`]: the writes, server-side apply with lifeline's one field manager.
//! - `state`: what the controller remembers between reconciles, and forgetting it.
//! - `reconcile`: one pass of these for one policy (this module wires the triggers).
//!
//! Triggers: the policy itself, its ConfigMap (owner reference), a ConfigMap of the
//! routing's name that is in the way (created, renamed or deleted), every Trunk and
//! BotPool a policy in the same namespace references, running drills, the prober's
//! change notifications for the policy's static `uri` targets (owner key
//! `policy/<ns>/<name>`), and the plan's next time-based transition.
//!
//! The previous plan is kept in memory and rebuilt from the status after a restart
//! (see [`Plan::from_status`]). Manual failback is approved with the annotation
//! [`FAILBACK_ANNOTATION`](crate::plan::FAILBACK_ANNOTATION) holding an RFC 3339 time
//! later than the region's failure. A ConfigMap in the way is a permanent error: the
//! `Ready` condition says so, and the controller waits for a change.

pub mod apply;
pub mod decide;
pub mod observe;
mod reconcile;
mod state;
pub mod status;
pub mod triggers;

use observe::{referencing, targets};

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::runtime::{
    BoundedWaits, Expedite, Guarded, cached, edge_changes, everyone_on_recovery, on_deleted,
    parsed, probe_changes,
};
use super::{Context, Retries};
use crate::crd::FailoverDrill;
use reconcile::{error_policy, reconcile};
use state::{PolicyCtx, lock};
pub use status::{desired_status, reasons};

/// The annotation with the lowercase hex SHA-256 of the rendered routing.
pub use crate::routing::CONTENT_HASH_ANNOTATION;
/// Label on the routing ConfigMap.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Controller name in metric labels and logs.
const CONTROLLER: &str = "policy";

/// What can go wrong in a reconcile.
pub type Error = super::runtime::ReconcileError;

/// The hub owner key of a policy's static targets.
pub fn owner_key(namespace: &str, name: &str) -> String {
    format!("policy/{namespace}/{name}")
}

/// Run the policy controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let trunks = ctx.trunks.store();
    let (bot_pools, pool_events) = ctx.bot_pools.cached();
    let (drills, drill_events) = ctx.drills.cached();
    let (config_maps, cm_events) = cached(
        watcher(
            ctx.api::<ConfigMap>(),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}=lifeline")),
        )
        .backoff(crate::backoff::WATCH)
        // Read: owners, labels, the content-hash annotation and the data.
        .modify(|cm| cm.metadata.managed_fields = None),
    );
    // Names and owners only: the annotations (kubectl's last-applied copy of the data)
    // and managed fields of every ConfigMap would cost memory for nothing.
    let (config_map_owners, owner_events) = cached(
        watcher(
            ctx.api::<PartialObjectMeta<ConfigMap>>(),
            watcher::Config::default(),
        )
        .backoff(crate::backoff::WATCH)
        .modify(|cm| {
            cm.metadata.annotations = None;
            cm.metadata.managed_fields = None;
        }),
    );
    let pctx = Arc::new(PolicyCtx {
        ctx: ctx.clone(),
        caches: observe::Caches {
            trunks,
            bot_pools,
            drills,
            config_maps,
            config_map_owners,
            verdicts: ctx.verdicts.clone(),
        },
        plans: Mutex::default(),
        written: Mutex::default(),
        region_counts: Mutex::default(),
        known: Mutex::default(),
        retries: Retries::default(),
        waits: BoundedWaits::default(),
    });

    let store = ctx.policies.store();
    let policies = on_deleted(
        ctx.policies.subscribe(),
        store.clone(),
        {
            let pctx = pctx.clone();
            move || lock(&pctx.known).iter().cloned().collect()
        },
        {
            let pctx = pctx.clone();
            move |ns, name| pctx.forget(ns, name)
        },
    )
    .applied_objects();

    let probe_changes = probe_changes(ctx.probes.subscribe(), "policy", store.clone());
    // Leadership gained or the API back after an outage: every policy at once. A new
    // leader forgets plans it may hold from an earlier term: the status is the truth.
    let everyone = everyone_on_recovery(&ctx, store.clone(), {
        let pctx = pctx.clone();
        move || {
            lock(&pctx.plans).clear();
            pctx.waits.clear();
        }
    });
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
    // A Trunk status decided by this replica, or a Trunk's known health changed on the
    // watch: the policies naming it plan again at once (see `triggers`).
    let decided = triggers::verdict_changes(ctx.verdicts.subscribe(), store.clone());
    let (changed_tx, changed) = futures::channel::mpsc::unbounded();
    let trunk_events =
        triggers::HealthChanges::tap(ctx.trunks.subscribe(), store.clone(), changed_tx)
            .touched_objects();
    let expedite = Expedite::new(store.clone());
    let expedited = expedite
        .clone()
        .triggers(futures::stream::select(decided, changed), {
            let pctx = pctx.clone();
            move |policy| reconcile(policy, pctx.clone())
        });
    Controller::for_stream(policies, store)
        // Errors of any trigger stream pause them all for this backoff (kube's default
        // grows to 30 s and would hold every reconcile after an API outage).
        .trigger_backoff(crate::backoff::WATCH)
        .with_config(
            super::runtime::controller_config().concurrency(super::runtime::ROUTING_CONCURRENCY),
        )
        .owns_stream(cm_events)
        .watches_stream(trunk_events, move |trunk| {
            let name = trunk.name_any();
            referencing(&s1, trunk.namespace(), |spec| {
                targets(spec).any(|t| t.trunk.as_deref() == Some(name.as_str()))
            })
        })
        .watches_stream(owner_events, move |cm| {
            // lifeline's own ConfigMaps come through their owner reference.
            if cm.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some("lifeline") {
                return Vec::new();
            }
            let name = cm.name_any();
            referencing(&s3, cm.namespace(), |spec| {
                spec.routing_config_map.name == name
            })
        })
        .watches_stream(pool_events, move |pool| {
            let name = pool.name_any();
            referencing(&s2, pool.namespace(), |spec| {
                targets(spec).any(|t| t.bot_pool.as_deref() == Some(name.as_str()))
            })
        })
        .watches_stream(drill_events, |drill: Guarded<FailoverDrill>| {
            let policy = parsed(&drill)?.spec.policy.clone();
            Some(ObjectRef::new(&policy).within(&drill.namespace()?))
        })
        .reconcile_on(futures::stream::select(
            futures::stream::select(futures::stream::select(probe_changes, expedited), everyone),
            // An edge report changed: static targets combine vantages again, and live
            // calls size the bot pools.
            edge_changes(ctx.edges.subscribe(), s4, |_| true),
        ))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            {
                let expedite = expedite.clone();
                move |policy, pctx| expedite.clone().in_turn(policy, |p| reconcile(p, pctx))
            },
            error_policy,
            pctx.clone(),
        )
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(error = %e, "policy reconcile did not run");
            }
            futures::future::ready(())
        })
        .await;
    expedite.drained().await;
    for (ns, name) in lock(&pctx.known).iter() {
        ctx.probes.remove(&owner_key(ns, name));
    }
}
