//! The FailoverDrill controller: starts, watches and ends drill runs (the rules are in
//! [`crate::drill`]). It never touches routing itself: a run in progress is the
//! `status.active` of the drill, which the policy controller reads from its cache and
//! plans with; ending a run is clearing it.
//!
//! Fetch (stores of drills, policies and bot pools) → decide ([`crate::drill::decide`],
//! pure) → status (server-side apply, only when it changed) → Events.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::runtime::{Guarded, parsed, reconcile_parsed, write_status};
use super::{Context, Retries};
use crate::crd::{BotPool, FailoverDrill, FallbackPolicy};
use crate::drill::{Observation, decide};

/// Errors of the FailoverDrill controller.
pub type Error = super::runtime::WriterError;

struct DrillCtx {
    ctx: Arc<Context>,
    drills: Store<Guarded<FailoverDrill>>,
    policies: Store<Guarded<FallbackPolicy>>,
    pools: Store<Guarded<BotPool>>,
    retries: Retries,
}

/// Run the FailoverDrill controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let (policies, policy_events) = ctx.policies.cached();
    let (pools, pool_events) = ctx.bot_pools.cached();
    let drills = ctx.drills.store();
    let controller =
        Controller::for_stream(ctx.drills.subscribe().applied_objects(), drills.clone())
            .trigger_backoff(crate::backoff::WATCH)
            .with_config(super::runtime::controller_config());
    let dctx = Arc::new(DrillCtx {
        ctx,
        drills: drills.clone(),
        policies,
        pools,
        retries: Retries::new(crate::backoff::Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
        )),
    });
    let by_policy = drills.clone();
    let by_pool = drills;
    controller
        .watches_stream(policy_events, move |policy: Guarded<FallbackPolicy>| {
            let (ns, name) = (policy.namespace(), policy.name_any());
            by_policy
                .state()
                .into_iter()
                .filter(|d| d.namespace() == ns && parsed(d).is_some_and(|d| d.spec.policy == name))
                .map(|d| ObjectRef::from_obj(&*d))
                .collect::<Vec<_>>()
        })
        // Bot pools only matter to running drills (the peak of desired replicas).
        .watches_stream(pool_events, move |pool: Guarded<BotPool>| {
            let ns = pool.namespace();
            by_pool
                .state()
                .into_iter()
                .filter(|d| {
                    d.namespace() == ns
                        && parsed(d)
                            .and_then(|d| d.status.as_ref())
                            .is_some_and(|s| s.active.is_some())
                })
                .map(|d| ObjectRef::from_obj(&*d))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, dctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(drill: Arc<Guarded<FailoverDrill>>, error: &Error, dctx: Arc<DrillCtx>) -> Action {
    dctx.ctx
        .reconcile_failed("drill", &dctx.retries, &*drill, error.category(), error)
}

async fn reconcile(obj: Arc<Guarded<FailoverDrill>>, dctx: Arc<DrillCtx>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let inner = |drill| reconcile_inner(drill, &ns, &name, &dctx);
    reconcile_parsed(&dctx.ctx, "drill", &dctx.retries, &obj, (&ns, &name), inner).await
}

async fn reconcile_inner(
    drill: &FailoverDrill,
    ns: &str,
    name: &str,
    dctx: &DrillCtx,
) -> Result<Action, Error> {
    use super::runtime::{CACHE_WAIT, is_ready};
    if !(is_ready(&dctx.policies) && is_ready(&dctx.pools) && is_ready(&dctx.drills)) {
        return Ok(Action::requeue(CACHE_WAIT));
    }
    // Fetch, from the caches only.
    let cached_policy = dctx
        .policies
        .get(&ObjectRef::new(&drill.spec.policy).within(ns));
    let policy = cached_policy.as_deref().and_then(parsed);
    let bots_desired = policy.and_then(|p| p.status.as_ref()).map_or(0, |s| {
        s.demand
            .iter()
            .filter_map(|d| dctx.pools.get(&ObjectRef::new(&d.bot_pool).within(ns)))
            .filter_map(|p| parsed(&p)?.status.as_ref().map(|s| s.desired_replicas))
            .sum()
    });
    let other_running = dctx
        .drills
        .state()
        .into_iter()
        .filter(|d| {
            d.namespace().as_deref() == Some(ns)
                && d.name_any() != name
                && parsed(d).is_some_and(|d| {
                    d.spec.policy == drill.spec.policy
                        && d.status.as_ref().is_some_and(|s| s.active.is_some())
                })
        })
        .map(|d| d.name_any())
        .min();
    // Decide.
    let decision = decide(
        drill,
        &Observation {
            policy,
            bots_desired,
            other_running,
        },
        jiff::Timestamp::now(),
    );
    // Status.
    if drill.status.as_ref() != Some(&decision.status) {
        write_status::<FailoverDrill, _>(&dctx.ctx, ns, name, &decision.status).await?;
    }
    // Events, after the status that they describe is stored.
    let reference = drill.object_ref(&());
    for e in &decision.events {
        if e.warning {
            tracing::warn!(reason = e.reason, "{}", e.note);
        } else {
            tracing::info!(reason = e.reason, "{}", e.note);
        }
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.to_string(),
            note: Some(e.note.chars().take(1000).collect()),
            action: "Drill".to_string(),
            secondary: None,
        };
        if let Err(err) = dctx.ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, "could not publish event");
        }
    }
    Ok(match decision.wake_at {
        Some(at) => {
            let wait = Duration::try_from(at.duration_since(jiff::Timestamp::now()))
                .unwrap_or(Duration::ZERO);
            // Whole-second timestamps: wake just after the second turns.
            Action::requeue(wait + Duration::from_millis(50))
        }
        None => Action::await_change(),
    })
}
