//! One reconcile of a FallbackPolicy: observe → decide → write (see the module above).

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::decide::{Routing, Written};
use super::state::{Key, PolicyCtx, lock};
use super::{CONTROLLER, Error, apply, decide, desired_status, observe, owner_key};
use crate::controller::runtime::{Guarded, apply_status, parsed, reconcile_parsed};
use crate::crd::FallbackPolicy;
use crate::plan::Plan;

pub(super) fn error_policy(
    policy: Arc<Guarded<FallbackPolicy>>,
    error: &Error,
    pctx: Arc<PolicyCtx>,
) -> Action {
    if let Error::Kube(e) = error
        && crate::controller::is_unreachable(e)
    {
        pctx.ctx.api_call_failed();
    }
    pctx.ctx
        .reconcile_failed(CONTROLLER, &pctx.retries, &*policy, error.category(), error)
}

pub(super) async fn reconcile(
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
        return Ok(Action::requeue(crate::controller::runtime::CACHE_WAIT));
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
        decide::Rendered {
            data_key: crate::routing::data_key(format),
            hash: &hash,
            probes: &probes,
        },
        written.as_ref(),
        std::time::Instant::now(),
    );
    let conflict = match &routing {
        Routing::Conflict(cm) => Some(cm.clone()),
        _ => None,
    };

    // A routing update (a failover or failback) is written first and alone, then the
    // status: calls wait for the routing, and a status write beside it made the routing
    // write slower (two writes at once took 5.7 ms each against 3.5 ms alone). A first
    // routing is written at once with the status: at a start with 500 policies the
    // statuses one after the other made every first routing later (38–52 s against
    // 35–36 s). Both come from one plan, and the plan comes from the status before this
    // pass and the health: a process killed with only one of them written leaves the
    // next reconcile (of any replica) planning the same transition from the same status
    // and health again and writing whichever is missing; a routing that lands before
    // its status changes nothing the next pass would not write anyway. Events follow
    // the status, which holds their transitions (a retry after a failed status write
    // publishes them, after a written one does not).
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
    let update = cached.is_some();
    let write_routing = async {
        if routing == Routing::Stale {
            // An update goes ahead of the Trunk statuses' bulk writes too.
            let _first = update.then(|| ctx.routing_first.hold());
            let write = apply::config_map(policy, ns, format, &text, &hash, &probes, ctx);
            ctx.while_leading(write).await
        } else {
            Some(Ok(None))
        }
    };
    let (status_result, routing_result) = if update {
        let routing_result = write_routing.await;
        (write_status.await, routing_result)
    } else {
        futures::join!(write_status, write_routing)
    };
    if let Some(Ok(Some(version))) = &routing_result {
        let written = Written {
            hash: hash.clone(),
            version: version.clone(),
            at: std::time::Instant::now(),
        };
        lock(&pctx.written).insert(key.clone(), (uid.clone(), written));
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

    let mut next = decide::next_pass(&plan, jiff::Timestamp::now());
    if let Routing::Unseen { recheck } = routing {
        next = next.min(recheck);
    }
    Ok(match (&conflict, plan.next_wakeup) {
        // Permanent until the ConfigMap in the way goes or the spec names another one
        // (both are watched): only the plan's own timers bring us back.
        (Some(_), None) => Action::await_change(),
        _ => Action::requeue(next),
    })
}
