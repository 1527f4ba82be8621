//! The BotPool controller: runs each pool as a Deployment, a headless Service and a
//! PodDisruptionBudget, sizes it to the calls FallbackPolicies assign to it, and
//! reports ready bots in status.
//!
//! One reconcile is fetch → decide → apply → status:
//! - fetch: the pool's demand (sum of `FallbackPolicy.status.demand` entries naming it
//!   in its namespace), its Deployment, its pods and, in `HpaFloor` mode, the HPA;
//! - decide: [`scaling`] (pure) turns demand into a replica target, with growth at
//!   once and shrinking only after `scaleDownStabilizationSeconds`;
//! - apply: [`build`] (pure) makes the owned objects, applied server-side with
//!   lifeline's field manager;
//! - status: [`status`] (pure) counts ready pods and decides the conditions; a merge
//!   patch of the status subresource writes it, only when it changed.
//!
//! The start of a pending scale-down is kept on the Deployment as the annotation
//! `lifeline.dev/scale-down-since` (written by the same apply), so a restarted operator
//! neither shrinks early nor forgets the window. The running target is
//! `status.desiredReplicas`, so a user's edit of the Deployment's replicas is drift to
//! undo, not a new target to stabilize from.

pub mod build;
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::crd::{
    BOTPOOL_AVAILABLE, BotPool, BotPoolStatus, FIELD_MANAGER, FallbackPolicy, ScalingMode,
    find_condition,
};
use crate::telemetry::ErrorLabels;
use scaling::{FloorAction, HpaView};
pub use status::{
    Limit, Observed, PodCounts, demand_for, desired_status, observe_pods, reason, sizing,
};

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
    /// Consecutive transient failures per pool, for the backoff.
    failures: Mutex<HashMap<ObjectRef<BotPool>, u32>>,
    /// The replica target last applied, per pool UID. The pool in the controller's
    /// cache may not show our latest status write yet; deciding from a stale
    /// `desiredReplicas` would scale back up for a moment. `status.desiredReplicas`
    /// is the fallback after a restart.
    targets: Mutex<HashMap<String, u32>>,
    /// What the owned objects looked like right after lifeline last applied them, per
    /// pool UID; equal on the next reconcile means there is nothing to write.
    applied: Mutex<HashMap<String, Fingerprint>>,
}

/// The inputs of an apply and the versions of the objects it produced. Deployments
/// and PDBs bump `metadata.generation` on every spec change (a user's edit
/// included) but not on status updates; a Service has no generation but no status
/// churn either, so its `resourceVersion` serves.
#[derive(Clone, Debug, PartialEq)]
struct Fingerprint {
    pool_generation: Option<i64>,
    inputs: build::Inputs,
    deployment_generation: Option<i64>,
    service_version: Option<String>,
    pdb_generation: Option<i64>,
}

/// Run the botpool controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=lifeline");
    let bots =
        watcher::Config::default().labels(&format!("app.kubernetes.io/name={}", build::APP_NAME));
    // Remember which pools each policy named, so that a pool dropped from a policy's
    // demand is still reconciled (and its demand lowered).
    let named: Arc<Mutex<HashMap<ObjectRef<FallbackPolicy>, BTreeSet<String>>>> = Arc::default();
    let state = Arc::new(State {
        ctx: ctx.clone(),
        failures: Mutex::default(),
        targets: Mutex::default(),
        applied: Mutex::default(),
    });
    Controller::new(ctx.api::<BotPool>(), watcher::Config::default())
        .owns(ctx.api::<Deployment>(), owned.clone())
        .owns(ctx.api::<Service>(), owned.clone())
        .owns(ctx.api::<PodDisruptionBudget>(), owned)
        .watches(ctx.api::<Pod>(), bots, pool_of_pod)
        .watches(
            ctx.api::<FallbackPolicy>(),
            watcher::Config::default(),
            move |policy| pools_of_policy(&named, &policy),
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|res| async move {
            if let Err(err) = res {
                tracing::debug!(error = %err, "botpool controller event");
            }
        })
        .await;
}

fn pool_of_pod(pod: Pod) -> Option<ObjectRef<BotPool>> {
    let name = pod.labels().get(build::POOL_LABEL)?;
    Some(ObjectRef::new(name).within(pod.namespace().as_deref()?))
}

/// Pools a policy concerns: those in its demand and those its routes target, now or
/// at its previous version.
fn pools_of_policy(
    named: &Mutex<HashMap<ObjectRef<FallbackPolicy>, BTreeSet<String>>>,
    policy: &FallbackPolicy,
) -> Vec<ObjectRef<BotPool>> {
    let Some(ns) = policy.namespace() else {
        return Vec::new();
    };
    let mut now: BTreeSet<String> = policy
        .spec
        .routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
        .filter_map(|t| t.bot_pool.clone())
        .collect();
    if let Some(status) = &policy.status {
        now.extend(status.demand.iter().map(|d| d.bot_pool.clone()));
    }
    let mut all = now.clone();
    if let Ok(mut map) = named.lock() {
        let key = ObjectRef::from_obj(policy);
        if let Some(before) = map.insert(key, now) {
            all.extend(before);
        }
    }
    all.into_iter()
        .map(|name| ObjectRef::new(&name).within(&ns))
        .collect()
}

async fn reconcile(pool: Arc<BotPool>, state: Arc<State>) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(pool.as_ref());
    let namespace = pool.namespace().unwrap_or_default();
    let result = state
        .ctx
        .instrumented(
            CONTROLLER,
            &namespace,
            &pool.name_any(),
            reconcile_pool(&pool, &state),
        )
        .await;
    if result.is_ok()
        && let Ok(mut failures) = state.failures.lock()
    {
        failures.remove(&key);
    }
    result
}

fn error_policy(pool: Arc<BotPool>, err: &Error, state: Arc<State>) -> Action {
    state
        .ctx
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: CONTROLLER,
            error: err.category(),
        })
        .inc();
    tracing::warn!(name = %pool.name_any(), namespace = ?pool.namespace(), error = %err, "reconcile failed");
    let attempts = match state.failures.lock() {
        Ok(mut failures) => {
            let n = failures
                .entry(ObjectRef::from_obj(pool.as_ref()))
                .or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let recorder = state.ctx.recorder.clone();
    let reference = pool.object_ref(&());
    let event = Event {
        type_: EventType::Warning,
        reason: "ReconcileFailed".into(),
        note: Some(truncate(&err.to_string(), 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    tokio::spawn(async move {
        let _ = recorder.publish(&event, &reference).await;
    });
    Action::requeue(backoff(attempts))
}

/// 1 s, 2 s, 4 s, … up to 5 minutes.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(9)).min(RESYNC)
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

async fn reconcile_pool(pool: &BotPool, state: &State) -> Result<Action, Error> {
    let ctx = state.ctx.as_ref();
    let ns = pool.namespace().ok_or(Error::MissingNamespace)?;
    let name = pool.name_any();
    let owner = pool.controller_owner_ref(&()).ok_or(Error::MissingUid)?;
    let client = ctx.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let policies: Api<FallbackPolicy> = Api::namespaced(client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now();

    // Fetch.
    let policy_list = policies
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list FallbackPolicies"))?;
    let demand = demand_for(&policy_list.items, &name);
    let existing = deployments
        .get_opt(&name)
        .await
        .map_err(kube_err("get Deployment"))?;

    // Decide.
    let rec = scaling::recommend(demand, sizing(pool));
    let uid = pool.uid().unwrap_or_default();
    let remembered = state.targets.lock().ok().and_then(|t| t.get(&uid).copied());
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
        service_version: Api::<Service>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(kube_err("get Service"))?
            .and_then(|s| s.metadata.resource_version),
        pdb_generation: Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(kube_err("get PodDisruptionBudget"))?
            .and_then(|p| p.metadata.generation),
    };
    let unchanged = state
        .applied
        .lock()
        .ok()
        .is_some_and(|a| a.get(&uid) == Some(&seen));
    let mut limit = if rec.shortfall_calls > 0 {
        Limit::MaxReplicas
    } else {
        Limit::None
    };
    let mut written = seen.clone();
    let mut applied = Ok(());
    if !unchanged {
        applied = apply_service_and_pdb(pool, &ns, &owner, ctx).await.map(
            |(service_version, pdb_generation)| {
                written.service_version = service_version;
                written.pdb_generation = pdb_generation;
            },
        );
    }
    if applied.is_ok() && hpa_mode {
        applied = apply_hpa_floor(&ns, &name, stable.target, ctx)
            .await
            .map(|hpa_limit| {
                if let Some(hpa_limit) = hpa_limit {
                    limit = hpa_limit;
                }
            });
    }
    if applied.is_ok() && !unchanged {
        applied = apply_deployment(pool, &ns, &owner, &inputs, existing.as_ref(), ctx)
            .await
            .map(|generation| written.deployment_generation = generation);
    }
    let invalid = match applied {
        Ok(()) => {
            if let Ok(mut targets) = state.targets.lock() {
                targets.insert(uid.clone(), stable.target);
            }
            if let Ok(mut fingerprints) = state.applied.lock() {
                fingerprints.insert(uid, written);
            }
            None
        }
        Err(err) => match rejection(&err) {
            Some(message) => Some(message),
            None => return Err(err),
        },
    };

    // Status.
    let pods = pods_api
        .list(&ListParams::default().labels(&build::selector_string(pool)))
        .await
        .map_err(kube_err("list Pods"))?;
    let observed = Observed {
        pool,
        demand,
        recommendation: rec,
        target: stable.target,
        pods: observe_pods(&pods.items, pool.spec.sip_port),
        limit,
        invalid: invalid.clone(),
    };
    let status = desired_status(&observed, now);
    let applied_target = current.filter(|_| invalid.is_none());
    publish_transitions(pool, applied_target, &status, ctx).await;
    if pool.status.as_ref() != Some(&status) {
        Api::<BotPool>::namespaced(client, &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(kube_err("patch BotPool status"))?;
    }

    if let Some(message) = invalid {
        // Permanent: a spec change (a new generation) triggers the next attempt.
        ctx.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
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

async fn apply_service_and_pdb(
    pool: &BotPool,
    ns: &str,
    owner: &OwnerReference,
    ctx: &Context,
) -> Result<(Option<String>, Option<i64>), Error> {
    let name = pool.name_any();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let service = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &pp, &Patch::Apply(build::service(pool, owner)))
        .await
        .map_err(kube_err("apply Service"))?;
    let pdb = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns)
        .patch(
            &name,
            &pp,
            &Patch::Apply(build::pod_disruption_budget(pool, owner)),
        )
        .await
        .map_err(kube_err("apply PodDisruptionBudget"))?;
    Ok((service.metadata.resource_version, pdb.metadata.generation))
}

/// Apply the Deployment. When `spec.replicas` leaves the apply (a switch to
/// `HpaFloor`) while lifeline still owns it, server-side apply would delete the field
/// and the API server would default it to 1, dropping most bots until the HPA reacts.
/// So the current value is first handed to a separate manager (the handover Kubernetes
/// documents for moving replicas to an HPA); the HPA takes it over on its next scale.
async fn apply_deployment(
    pool: &BotPool,
    ns: &str,
    owner: &OwnerReference,
    inputs: &build::Inputs,
    existing: Option<&Deployment>,
    ctx: &Context,
) -> Result<Option<i64>, Error> {
    let api = Api::<Deployment>::namespaced(ctx.client.clone(), ns);
    let handover = existing.filter(|d| {
        inputs.replicas.is_none()
            && applies_spec_field(d.metadata.managed_fields.as_deref(), "f:replicas")
    });
    if let Some(replicas) = handover.and_then(|d| d.spec.as_ref()?.replicas) {
        let body = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": pool.name_any() },
            "spec": { "replicas": replicas },
        });
        api.patch(
            &pool.name_any(),
            &PatchParams::apply(HANDOVER_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(kube_err("hand Deployment replicas over"))?;
    }
    let applied = api
        .patch(
            &pool.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(build::deployment(pool, owner, inputs)),
        )
        .await
        .map_err(kube_err("apply Deployment"))?;
    Ok(applied.metadata.generation)
}

/// Whether lifeline's field manager owns `spec.<field>` (e.g. `f:replicas`) through
/// an Apply.
fn applies_spec_field(managed_fields: Option<&[ManagedFieldsEntry]>, field: &str) -> bool {
    managed_fields
        .into_iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| f.0.get("f:spec").and_then(|s| s.get(field)).is_some())
}

/// Raise or restore the floor of the HPA that targets the pool's Deployment.
/// Returns what limits scaling, if the HPA does.
///
/// The write is a forced server-side apply of only `spec.minReplicas` and the
/// annotation: lifeline takes over exactly that field from the user's manager (Argo
/// CD can ignore it with `ignoreDifferences.managedFieldsManagers`), never the rest
/// of the HPA. When lifeline no longer owns the field, someone else set it since, and
/// that value becomes the user's.
async fn apply_hpa_floor(
    ns: &str,
    deployment: &str,
    floor: u32,
    ctx: &Context,
) -> Result<Option<Limit>, Error> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    let hpas = api
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list HorizontalPodAutoscalers"))?;
    let Some(hpa) = hpas.items.into_iter().find(|h| {
        h.spec.as_ref().is_some_and(|s| {
            s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == deployment
        })
    }) else {
        return Ok(Some(Limit::HpaNotFound(deployment.to_string())));
    };
    let Some(spec) = hpa.spec.as_ref() else {
        return Ok(None);
    };
    let view = HpaView {
        min_replicas: spec.min_replicas.unwrap_or(1),
        max_replicas: spec.max_replicas,
        remembered_user_min: hpa
            .annotations()
            .get(USER_MIN_REPLICAS)
            .and_then(|v| v.parse().ok()),
        floor_owned: applies_spec_field(hpa.metadata.managed_fields.as_deref(), "f:minReplicas"),
    };
    let (action, capped) = scaling::hpa_floor(view, floor);
    let hpa_name = hpa.name_any();
    let body = match action {
        FloorAction::Keep => None,
        FloorAction::Raise {
            min_replicas,
            user_min,
        } => Some(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": hpa_name,
                "annotations": { USER_MIN_REPLICAS: user_min.to_string() },
            },
            "spec": { "minReplicas": min_replicas },
        })),
        FloorAction::Restore { min_replicas } => Some(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": { "name": hpa_name },
            "spec": { "minReplicas": min_replicas },
        })),
    };
    if let Some(body) = body {
        tracing::info!(hpa = %hpa_name, ?action, "adjusting HPA floor");
        api.patch(
            &hpa_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(kube_err("apply HPA minReplicas"))?;
    }
    let wanted = i32::try_from(floor).unwrap_or(i32::MAX);
    Ok((capped < wanted).then_some(Limit::HpaMax(spec.max_replicas)))
}

/// Events on scale changes and on a newly rejected spec.
async fn publish_transitions(
    pool: &BotPool,
    previous: Option<u32>,
    new: &BotPoolStatus,
    ctx: &Context,
) {
    let none = BotPoolStatus::default();
    let old = pool.status.as_ref().unwrap_or(&none);
    let mut events = Vec::new();
    if let Some(previous) = previous
        && previous != new.desired_replicas
    {
        let (reason, verb) = if new.desired_replicas > previous {
            ("ScaledUp", "up")
        } else {
            ("ScaledDown", "down")
        };
        events.push(Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(format!(
                "scaled {verb} from {previous} to {} replicas for a demand of {} calls",
                new.desired_replicas, new.demand
            )),
            action: "Scale".into(),
            secondary: None,
        });
    }
    let was_invalid = find_condition(&old.conditions, BOTPOOL_AVAILABLE)
        .is_some_and(|c| c.reason == reason::INVALID_SPEC);
    if let Some(c) = find_condition(&new.conditions, BOTPOOL_AVAILABLE)
        && c.reason == reason::INVALID_SPEC
        && !was_invalid
    {
        events.push(Event {
            type_: EventType::Warning,
            reason: reason::INVALID_SPEC.into(),
            note: Some(truncate(&c.message, 1000)),
            action: "Apply".into(),
            secondary: None,
        });
    }
    let reference = pool.object_ref(&());
    for event in events {
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %err, "publishing an event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(100), RESYNC);
    }
}
