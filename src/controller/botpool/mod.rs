//! The BotPool controller: runs each pool as a Deployment, a headless Service and a
//! PodDisruptionBudget, sizes it to the calls FallbackPolicies assign to it, and
//! reports ready bots in status.
//!
//! One reconcile is observe → decide → apply → status:
//! - observe ([`observe`]): from caches only — the pool's demand (sum of
//!   `FallbackPolicy.status.demand` entries naming it in its namespace), its
//!   Deployment, Service, PDB, pods and, in `HpaFloor` mode, the HPA;
//! - decide: [`scaling`] (pure) turns demand into a replica target, with growth at
//!   once and shrinking only after `scaleDownStabilizationSeconds`;
//! - apply ([`apply`]): [`build`] (pure) makes the owned objects, applied server-side
//!   with lifeline's field manager;
//! - status: [`status`] (pure) counts ready pods and decides the conditions; a
//!   server-side apply of the status subresource writes it, only when it changed.
//!
//! The start of a pending scale-down is kept on the Deployment as the annotation
//! `lifeline.dev/scale-down-since` (written by the same apply), so a restarted operator
//! neither shrinks early nor forgets the window. The running target is
//! `status.desiredReplicas`, so a user's edit of the Deployment's replicas is drift to
//! undo, not a new target to stabilize from.

pub mod apply;
pub mod build;
pub mod observe;
pub mod scaling;
pub mod status;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::runtime::{
    BoundedWaits, Guarded, apply_status, cached, on_deleted, publish, reconcile_parsed, truncate,
};
use super::{Context, Retries};
use crate::crd::{BotPool, ScalingMode};
use crate::lock;
use apply::Fingerprint;
pub use status::{
    Limit, Observed, PodCounts, demand_for, desired_status, observe_pods, reason, sizing,
};

type Key = (String, String);

/// Controller name in metric labels.
const CONTROLLER: &str = "botpool";
/// Annotation on the HPA: the user's own `minReplicas` while lifeline raises it.
pub const USER_MIN_REPLICAS: &str = "lifeline.dev/user-min-replicas";
/// Field manager that holds a Deployment's replicas between lifeline letting go of
/// them (switch to `HpaFloor`) and the HPA taking them over.
pub const HANDOVER_MANAGER: &str = "lifeline.dev/handover-to-hpa";
/// Resync period when nothing is pending: a safety net, not the trigger.
const RESYNC: Duration = Duration::from_secs(300);

/// Errors of the botpool controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object has no namespace (cannot happen for a namespaced kind).
    #[error("BotPool has no namespace")]
    MissingNamespace,
    /// The object has no UID yet, so no owner reference can be made.
    #[error("BotPool has no uid")]
    MissingUid,
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The client error.
        source: kube::Error,
    },
}

impl Error {
    /// Short static category for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "missing_namespace",
            Error::MissingUid => "missing_uid",
            Error::Kube { .. } => "kube",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

/// A rejection the spec must fix (the API server said the object is invalid), as
/// opposed to a failure that may pass on retry.
fn rejection(err: &Error) -> Option<String> {
    match err {
        Error::Kube {
            action,
            source: kube::Error::Api(status),
        } if matches!(status.code, 400 | 422) => Some(format!("{action}: {}", status.message)),
        _ => None,
    }
}

/// State of one controller run.
struct State {
    ctx: Arc<Context>,
    caches: observe::Caches,
    /// Consecutive transient failures per pool, for the backoff.
    retries: Retries,
    /// The replica target last applied, per pool (with its UID). The pool in the
    /// controller's cache may not show our latest status write yet; deciding from a
    /// stale `desiredReplicas` would scale back up for a moment.
    /// `status.desiredReplicas` is the fallback after a restart.
    targets: Mutex<HashMap<Key, (String, u32)>>,
    /// What the owned objects looked like right after lifeline last applied them, per
    /// pool (with its UID); equal on the next reconcile means there is nothing to write.
    applied: Mutex<HashMap<Key, (String, Fingerprint)>>,
    /// New pools waiting for their policies' first plan.
    waits: BoundedWaits,
}

impl State {
    /// A pool left the watch: drop what this process remembers of it.
    fn forget(&self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        lock(&self.targets).remove(&key);
        lock(&self.applied).remove(&key);
        self.waits.forget(&key);
        self.retries.reset(&key);
    }
}

/// The longest a new pool waits for the first plan of a policy that routes to it
/// (that plan waits at most one probe round plus 5 s for its Trunks' first verdicts).
const FIRST_PLAN_WAIT: Duration = Duration::from_secs(30);

/// Run the botpool controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = || watcher::Config::default().labels("app.kubernetes.io/managed-by=lifeline");
    let bots =
        watcher::Config::default().labels(&format!("app.kubernetes.io/name={}", build::APP_NAME));
    let quick = crate::backoff::WATCH;
    let (deployments, deployment_events) = cached(
        watcher(ctx.api::<Deployment>(), owned())
            .backoff(quick.clone())
            .modify(observe::strip_deployment),
    );
    let (services, service_events) = cached(
        watcher(ctx.api::<Service>(), owned())
            .backoff(quick.clone())
            .modify(observe::strip_service),
    );
    let (pdbs, pdb_events) = cached(
        watcher(ctx.api::<PodDisruptionBudget>(), owned())
            .backoff(quick.clone())
            .modify(observe::strip_pdb),
    );
    let (pods, pod_events) = cached(
        watcher(ctx.api::<Pod>(), bots)
            .backoff(quick.clone())
            .modify(observe::strip_pod),
    );
    let (hpas, hpa_events) = cached(
        watcher(
            ctx.api::<HorizontalPodAutoscaler>(),
            watcher::Config::default(),
        )
        .backoff(quick.clone())
        .modify(observe::strip_hpa),
    );
    let (policies, policy_events) = ctx.policies.cached();
    let state = Arc::new(State {
        ctx: ctx.clone(),
        caches: observe::Caches {
            policies,
            deployments,
            services,
            pdbs,
            pods,
            hpas,
        },
        retries: Retries::new(crate::backoff::Backoff::new(Duration::from_secs(1), RESYNC)),
        targets: Mutex::default(),
        applied: Mutex::default(),
        waits: BoundedWaits::default(),
    });
    let store = ctx.bot_pools.store();
    let pools = on_deleted(
        ctx.bot_pools.subscribe(),
        store.clone(),
        {
            let state = state.clone();
            move || lock(&state.targets).keys().cloned().collect()
        },
        {
            let state = state.clone();
            move |ns, name| state.forget(ns, name)
        },
    )
    .applied_objects();
    // Remember which pools each policy named, so that a pool dropped from a policy's
    // demand is still reconciled (and its demand lowered).
    let named: Arc<Mutex<HashMap<Key, BTreeSet<String>>>> = Arc::default();
    Controller::for_stream(pools, store)
        // Errors of any trigger stream pause them all for this backoff (kube's default
        // grows to 30 s and would hold every reconcile after an API outage).
        .trigger_backoff(crate::backoff::WATCH)
        .with_config(super::runtime::controller_config())
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(pdb_events)
        .watches_stream(pod_events, observe::pool_of_pod)
        .watches_stream(hpa_events, observe::pool_of_hpa)
        .watches_stream(policy_events, move |policy| {
            observe::pools_of_policy(&named, &policy)
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|res| async move {
            if let Err(err) = res {
                tracing::debug!(error = %err, "botpool controller event");
            }
        })
        .await;
}

async fn reconcile(obj: Arc<Guarded<BotPool>>, state: Arc<State>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let inner = |pool| reconcile_pool(pool, &state);
    reconcile_parsed(
        &state.ctx,
        CONTROLLER,
        &state.retries,
        &obj,
        (&ns, &name),
        inner,
    )
    .await
}

fn error_policy(pool: Arc<Guarded<BotPool>>, err: &Error, state: Arc<State>) -> Action {
    let action =
        state
            .ctx
            .reconcile_failed(CONTROLLER, &state.retries, &*pool, err.category(), err);
    let ctx = state.ctx.clone();
    let reference = pool.object_ref(&());
    let event = Event {
        type_: EventType::Warning,
        reason: "ReconcileFailed".into(),
        note: Some(truncate(&err.to_string(), 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    tokio::spawn(async move { publish(&ctx, event, &reference).await });
    action
}

async fn reconcile_pool(pool: &BotPool, state: &State) -> Result<Action, Error> {
    let ctx = state.ctx.as_ref();
    let ns = pool.namespace().ok_or(Error::MissingNamespace)?;
    let name = pool.name_any();
    let owner = pool.controller_owner_ref(&()).ok_or(Error::MissingUid)?;
    let now = jiff::Timestamp::now();
    let key: Key = (ns.clone(), name.clone());

    // Observe (caches only).
    if !state.caches.ready() {
        return Ok(Action::requeue(super::runtime::CACHE_WAIT));
    }
    let demand = state.caches.demand(&ns, &name);
    let (existing, service, pdb) = state.caches.owned(&ns, &name);
    // A new pool that a policy routes to waits (bounded) for that policy's first plan:
    // made now, it would be sized without its demand and resized a moment later; and
    // when many start together (a new cluster, a restore), their writes would delay
    // the routing, which comes first. The policy's status write triggers this pool.
    let awaiting = existing.is_none() && state.caches.awaits_first_plan(&ns, &name);
    if let Some(left) = state.waits.left(&key, awaiting.then_some(FIRST_PLAN_WAIT)) {
        tracing::debug!(?left, "bot pool waits for its policies' first plan");
        return Ok(Action::requeue(left));
    }

    // Decide.
    let rec = scaling::recommend(demand, sizing(pool));
    let uid = pool.uid().unwrap_or_default();
    let remembered = lock(&state.targets)
        .get(&key)
        .filter(|(u, _)| *u == uid)
        .map(|(_, t)| *t);
    let current = match (&pool.status, remembered) {
        (_, Some(target)) => Some(target),
        (Some(s), None) if s.observed_generation.is_some() => Some(s.desired_replicas),
        _ => existing
            .as_ref()
            .and_then(|d| d.spec.as_ref()?.replicas)
            .and_then(|r| u32::try_from(r).ok()),
    };
    let lower_since = existing
        .as_ref()
        .and_then(|d| d.annotations().get(build::SCALE_DOWN_SINCE)?.parse().ok());
    let window = Duration::from_secs(pool.spec.scaling.scale_down_stabilization_seconds.into());
    let stable = scaling::stabilize(current, rec.replicas, lower_since, window, now);
    let hpa_mode = pool.spec.scaling.mode == ScalingMode::HpaFloor;
    let inputs = build::Inputs {
        replicas: (!hpa_mode).then(|| i32::try_from(stable.target).unwrap_or(i32::MAX)),
        scale_down_since: stable.lower_since,
    };

    // Apply, unless every owned object is as lifeline last left it (steady state:
    // reads only). The Deployment goes last: it carries the scale-down start, which
    // must only change once everything else for this target was written (a failure
    // before it then retries the same decision instead of restarting the window).
    let seen = Fingerprint {
        pool_generation: pool.metadata.generation,
        inputs: inputs.clone(),
        deployment_generation: existing.as_ref().and_then(|d| d.metadata.generation),
        service_version: service.and_then(|s| s.metadata.resource_version.clone()),
        pdb_generation: pdb.and_then(|p| p.metadata.generation),
    };
    let unchanged = lock(&state.applied)
        .get(&key)
        .is_some_and(|(u, a)| *u == uid && *a == seen);
    let mut limit = if rec.shortfall_calls > 0 {
        Limit::MaxReplicas
    } else {
        Limit::None
    };
    let mut written = seen.clone();
    let mut applied = Ok(());
    if !unchanged {
        applied = apply::service_and_pdb(pool, &ns, &owner, ctx).await.map(
            |(service_version, pdb_generation)| {
                written.service_version = service_version;
                written.pdb_generation = pdb_generation;
            },
        );
    }
    if applied.is_ok() && hpa_mode {
        let hpa = state.caches.hpa_for(&ns, &name);
        applied = apply::hpa_floor(&ns, &name, hpa.as_deref(), stable.target, ctx)
            .await
            .map(|hpa_limit| {
                if let Some(hpa_limit) = hpa_limit {
                    limit = hpa_limit;
                }
            });
    }
    if applied.is_ok() && !unchanged {
        applied = apply::deployment(pool, &ns, &owner, &inputs, existing.as_deref(), ctx)
            .await
            .map(|generation| written.deployment_generation = generation);
    }
    let invalid = match applied {
        Ok(()) => {
            lock(&state.targets).insert(key.clone(), (uid.clone(), stable.target));
            lock(&state.applied).insert(key, (uid, written));
            None
        }
        Err(err) => match rejection(&err) {
            Some(message) => Some(message),
            None => return Err(err),
        },
    };

    // Status.
    let pods = state.caches.pods_of(pool, &ns);
    let observed = Observed {
        pool,
        demand,
        recommendation: rec,
        target: stable.target,
        pods: observe_pods(pods.iter().map(|p| p.as_ref()), pool.spec.sip_port),
        limit,
        invalid: invalid.clone(),
    };
    let status = desired_status(&observed, now);
    let applied_target = current.filter(|_| invalid.is_none());
    apply::transitions(pool, applied_target, &status, ctx).await;
    if pool.status.as_ref() != Some(&status) {
        let Some(written) = apply_status::<BotPool, _>(ctx, &ns, &name, &status).await else {
            return Ok(Action::await_change());
        };
        written.map_err(kube_err("apply BotPool status"))?;
    }

    if let Some(message) = invalid {
        // Permanent: a spec change (a new generation) triggers the next attempt.
        ctx.metrics
            .reconcile_errors
            .get_or_create(&crate::telemetry::ErrorLabels {
                controller: CONTROLLER,
                error: "invalid_spec",
            })
            .inc();
        tracing::info!(%name, %ns, %message, "BotPool spec rejected by the API server");
        return Ok(Action::await_change());
    }
    Ok(match stable.wait {
        // Requeue just after the window ends (the store may lag a little).
        Some(wait) => Action::requeue(wait + Duration::from_millis(200)),
        None => Action::requeue(RESYNC),
    })
}

#[cfg(test)]
mod tests;
