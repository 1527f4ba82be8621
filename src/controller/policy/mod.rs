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
mod state;
pub mod status;

use observe::{referencing, targets};

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::runtime::{
    BoundedWaits, Expedite, Guarded, apply_status, cached, edge_changes, everyone_on_recovery,
    on_deleted, parsed, probe_changes, reconcile_parsed,
};
use super::{Context, Retries};
use crate::crd::{FailoverDrill, FallbackPolicy};
use crate::plan::Plan;
use decide::Routing;
use state::{Key, PolicyCtx, lock};
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
    let (trunks, trunk_events) = ctx.trunks.cached();
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
    // A Trunk status decided by this replica: the policies naming it plan again at
    // once, without waiting for the status write to come back through the watch.
    let decided = verdict_changes(ctx.verdicts.subscribe(), store.clone());
    let expedite = Expedite::new(store.clone());
    // A verdict is planned at once, not at the scheduler's next tick. (A Trunk status
    // written by someone else comes through the watch and the scheduler: at a start,
    // 10,000 first statuses expedited this way slowed every policy's first routing.)
    let decided = expedite.clone().triggers(decided, {
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
            futures::stream::select(futures::stream::select(probe_changes, decided), everyone),
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

/// The policies to reconcile for each decided Trunk status (every policy after a lag).
fn verdict_changes(
    rx: tokio::sync::broadcast::Receiver<(String, String)>,
    store: kube::runtime::reflector::Store<Guarded<FallbackPolicy>>,
) -> impl futures::Stream<Item = ObjectRef<Guarded<FallbackPolicy>>> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, move |mut rx| {
        let store = store.clone();
        async move {
            let refs = match rx.recv().await {
                Ok((ns, name)) => referencing(&store, Some(ns), |spec| {
                    targets(spec).any(|t| t.trunk.as_deref() == Some(name.as_str()))
                }),
                Err(RecvError::Lagged(_)) => super::runtime::all_of(&store),
                Err(RecvError::Closed) => return None,
            };
            Some((refs, rx))
        }
    })
    .flat_map(futures::stream::iter)
}

fn error_policy(
    policy: Arc<Guarded<FallbackPolicy>>,
    error: &Error,
    pctx: Arc<PolicyCtx>,
) -> Action {
    if let Error::Kube(e) = error
        && super::is_unreachable(e)
    {
        pctx.ctx.api_call_failed();
    }
    pctx.ctx
        .reconcile_failed(CONTROLLER, &pctx.retries, &*policy, error.category(), error)
}

async fn reconcile(
    obj: Arc<Guarded<FallbackPolicy>>,
    pctx: Arc<PolicyCtx>,
) -> Result<Action, Error> {
    let ns = obj
        .namespace()
        .ok_or(Error::NoNamespace("FallbackPolicy"))?;
    let name = obj.name_any();
    let inner = |policy| reconcile_policy(policy, &ns, &name, &pctx);
    reconcile_parsed(
        &pctx.ctx,
        CONTROLLER,
        &pctx.retries,
        &obj,
        (&ns, &name),
        inner,
    )
    .await
}

async fn reconcile_policy(
    policy: &FallbackPolicy,
    ns: &str,
    name: &str,
    pctx: &PolicyCtx,
) -> Result<Action, Error> {
    let ctx = pctx.ctx.as_ref();
    if !pctx.caches.ready() {
        return Ok(Action::requeue(super::runtime::CACHE_WAIT));
    }
    let key: Key = (ns.to_string(), name.to_string());
    lock(&pctx.known).insert(key.clone());
    let uid = policy.uid().unwrap_or_default();

    // Observe.
    let mut observed = observe::observe(policy, ns, &pctx.caches);
    observe::probe_static_targets(policy, ns, &mut observed, ctx);
    if !ctx.is_leading() {
        // Warm standby: static targets are probed, nothing is written. The plan is
        // rebuilt from the status on takeover.
        lock(&pctx.plans).remove(&key);
        return Ok(Action::await_change());
    }
    // A new policy's first routing waits (bounded) for the first verdicts of the
    // Trunks it names: writing from Unknown Trunks would rewrite the routing once per
    // Trunk. The first pass of a leadership term waits (bounded) for this replica to
    // judge them: the routing may be ahead of their published status. Any pass waits
    // (bounded) for one probe round of static targets this process has not measured
    // yet (new, restarted or just added): Unknown, they would fail their region over.
    // Each verdict and each completed probe round triggers this reconcile.
    let wait = if policy.status.is_none() {
        Some(observe::VerdictWait::First)
    } else if !lock(&pctx.plans).contains_key(&key) {
        Some(observe::VerdictWait::Takeover)
    } else {
        None
    };
    let trunks = wait.and_then(|w| observe::verdicts_pending(policy, ns, &pctx.caches, w));
    let statics =
        observe::static_targets_pending(policy, || ctx.probes.fully_probed(&owner_key(ns, name)));
    if let Some(left) = pctx.waits.left(&key, trunks.max(statics)) {
        tracing::debug!(?left, ?wait, "routing waits for first verdicts");
        return Ok(Action::requeue(left));
    }

    // Decide.
    let previous = lock(&pctx.plans)
        .get(&key)
        .filter(|(u, _)| *u == uid)
        .map(|(_, p)| p.clone())
        .or_else(|| policy.status.as_ref().and_then(Plan::from_status));
    // Whole seconds: the API stores times with second precision, and a plan with finer
    // times would never compare equal to the status it was written to.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    // Live calls measured at the SIP edges that serve this routing: the planner sizes
    // the bot pools from them (the declared load stays the floor).
    let reports = ctx.edges.reports(ns, &policy.spec.routing_config_map.name);
    let (measured, live) =
        crate::plan::demand::aggregate(&policy.spec, &observed, &reports).unzip();
    observed.live = live.unwrap_or_default();
    let drills = pctx.caches.drills_in(ns);
    let (plan, events) = decide::plan_with_drills(
        policy,
        drills.iter().filter_map(|d| parsed(d)),
        &observed,
        previous.as_ref(),
        now,
    );
    let format = policy.spec.routing_config_map.format;
    let text = crate::routing::render(format, &format!("{ns}/{name}"), &plan);
    let hash = crate::routing::content_hash(&text);
    let probes = observe::edge_probe_list(policy, ns, &pctx.caches);
    let (owners, cached) = pctx.caches.routing_config_map(policy, ns);
    let written = lock(&pctx.written)
        .get(&key)
        .filter(|(u, _)| *u == uid)
        .map(|(_, w)| w.clone());
    let routing = decide::routing(
        policy,
        owners.as_deref(),
        cached.as_deref(),
        crate::routing::data_key(format),
        &hash,
        &probes,
        written.as_ref(),
    );
    let conflict = match &routing {
        Routing::Conflict(cm) => Some(cm.clone()),
        _ => None,
    };

    // The status and the routing are written at once: calls wait for the routing, and
    // one API round trip in a row is the failover latency floor. (The routing first and
    // then the status took the status write out of the routing's way, 2 ms at the
    // median of a failover, but at a start with 500 policies every first routing came
    // later: 38–52 s against 35–36 s.) Both come from one plan, and the plan comes from
    // the status before this pass and the health: a process killed with only one of
    // them written leaves the next reconcile (of any replica) planning the same
    // transition from the same status and health again and writing whichever is
    // missing; a routing that lands before its status changes nothing the next pass
    // would not write anyway. Events follow the status, which holds their transitions
    // (a retry after a failed status write publishes them, after a written one does
    // not).
    let mut status = desired_status(policy, &plan, conflict.as_deref(), &hash, now);
    status.measured = measured;
    let status_stale = policy.status.as_ref() != Some(&status);
    let write_status = async {
        if status_stale {
            apply_status::<FallbackPolicy, _>(ctx, ns, name, &status).await
        } else {
            Some(Ok(()))
        }
    };
    let write_routing = async {
        if routing == Routing::Stale {
            let write = apply::config_map(policy, ns, format, &text, &hash, &probes, ctx);
            ctx.while_leading(write).await
        } else {
            Some(Ok(None))
        }
    };
    let (status_result, routing_result) = futures::join!(write_status, write_routing);
    if let Some(Ok(Some(version))) = &routing_result {
        lock(&pctx.written).insert(key.clone(), (uid.clone(), (hash.clone(), version.clone())));
    }
    let Some(status_result) = status_result else {
        // leadership lost during the write: the next leader plans from the status
        return Ok(Action::await_change());
    };
    status_result?;
    if status_stale {
        tracing::debug!("status written");
        if let Some(cm) = &conflict {
            apply::conflict_found(policy, cm, ctx).await;
        }
    }
    // From here on the status holds this plan: a failed routing write retries from it,
    // and must not replay its transitions and Events.
    lock(&pctx.plans).insert(key.clone(), (uid, plan.clone()));
    let notices = decide::notices(policy, &events);
    apply::events(policy, notices, ctx).await;
    let Some(routing_result) = routing_result else {
        return Ok(Action::await_change());
    };
    routing_result?;
    lock(&pctx.region_counts).insert(key, decide::region_counts(&plan));
    pctx.publish_region_gauge();

    let next = decide::next_pass(&plan, jiff::Timestamp::now());
    Ok(match (&conflict, plan.next_wakeup) {
        // Permanent until the ConfigMap in the way goes or the spec names another one
        // (both are watched): only the plan's own timers bring us back.
        (Some(_), None) => Action::await_change(),
        _ => Action::requeue(next),
    })
}
