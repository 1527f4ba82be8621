//! The BotPool controller: runs each pool as a Deployment, a headless Service and a
//! PodDisruptionBudget, sizes it to the calls FallbackPolicies assign to it, and
//! reports ready bots in status.
//!
//! One reconcile (`reconcile`) is observe → decide → apply → status:
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
mod reconcile;
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
use kube::runtime::{Controller, WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::runtime::{BoundedWaits, cached, on_deleted};
use super::{Context, Retries};
use crate::lock;
use apply::Fingerprint;
use reconcile::{error_policy, reconcile};
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

#[cfg(test)]
mod tests;
