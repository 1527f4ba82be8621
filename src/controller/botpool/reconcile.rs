//! One reconcile of a BotPool: observe → decide → apply → status (see the module above).

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::apply::Fingerprint;
use super::{
    CONTROLLER, Error, FIRST_PLAN_WAIT, Key, Limit, Observed, RESYNC, State, apply, build,
    desired_status, kube_err, observe_pods, scaling, sizing,
};
use crate::controller::runtime::{Guarded, apply_status, publish, reconcile_parsed, truncate};
use crate::crd::{BotPool, ScalingMode};
use crate::lock;

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

pub(super) async fn reconcile(
    obj: Arc<Guarded<BotPool>>,
    state: Arc<State>,
) -> Result<Action, Error> {
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

pub(super) fn error_policy(pool: Arc<Guarded<BotPool>>, err: &Error, state: Arc<State>) -> Action {
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
        return Ok(Action::requeue(crate::controller::runtime::CACHE_WAIT));
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
