//! One reconcile of a Trunk: observe → decide → apply (see the module above).

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{CONTROLLER, Error, Key, TrunkCtx, next_status, owner_key, reasons, status, writer};
use crate::controller::runtime::{Guarded, reconcile_parsed, truncate};
use crate::crd::{
    EndpointState, TRUNK_FORBIDDEN, TRUNK_QUOTA_EXCEEDED, Trunk, TrunkStatus, find_condition,
};
use crate::lock;
use crate::probe::passive;
use crate::probe::{EndpointHealth, ProbeTarget, RTT_REFRESH};

/// Combine the edges' failure marks with the probed `health` of one Trunk (see
/// [`crate::probe::passive`]); true while an endpoint is passively failed, so that the
/// caller comes back to let it recover.
fn apply_passive(
    tctx: &TrunkCtx,
    id: &Key,
    marks: Vec<crate::crd::EdgeFailureMark>,
    mut health: Vec<EndpointHealth>,
    now: jiff::Timestamp,
) -> (Vec<EndpointHealth>, bool) {
    let mut all = lock(&tctx.passive);
    let states = all.entry(id.clone()).or_default();
    let mut pending = false;
    for h in &mut health {
        let previous = states.get(&h.uri).copied().unwrap_or_default();
        let next = passive::next_state(
            &h.uri,
            &marks,
            previous,
            now,
            passive::DEFAULT_RECOVER_AFTER,
        );
        if next.failed() {
            pending = true;
            let probed = h.state;
            h.state = passive::combine(probed, &next);
            if probed != h.state || h.last_error.is_none() {
                h.last_error = Some(format!(
                    "real calls failed at the SIP edge{} (answers OPTIONS: {probed})",
                    next.status_code
                        .map(|c| format!(" with {c}"))
                        .unwrap_or_default()
                ));
            }
            if !previous.failed() {
                h.last_transition = Some(now);
            }
            states.insert(h.uri.clone(), next);
        } else {
            states.remove(&h.uri);
        }
    }
    if states.is_empty() {
        all.remove(id);
    }
    (health, pending)
}

/// Whether an endpoint that had a verdict (Up or Down) has another one in `new`: a
/// change the pager and `kubectl` should see before first publications and refreshes.
fn known_state_changed(old: &TrunkStatus, new: &TrunkStatus) -> bool {
    new.endpoints.iter().any(|e| {
        old.endpoints
            .iter()
            .find(|o| o.uri == e.uri)
            .is_some_and(|o| o.state != EndpointState::Unknown && o.state != e.state)
    })
}

pub(super) fn error_policy(
    trunk: Arc<Guarded<Trunk>>,
    error: &Error,
    tctx: Arc<TrunkCtx>,
) -> Action {
    if let Error::Kube(e) = error
        && crate::controller::is_unreachable(e)
    {
        tctx.ctx.api_call_failed();
    }
    tctx.ctx
        .reconcile_failed(CONTROLLER, &tctx.retries, &*trunk, error.category(), error)
}

pub(super) async fn reconcile(
    obj: Arc<Guarded<Trunk>>,
    tctx: Arc<TrunkCtx>,
) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace("trunk"))?;
    let name = obj.name_any();
    if obj.0.is_err() {
        // Not probed: its endpoints cannot be read.
        tctx.forget(&ns, &name);
    }
    let inner = |trunk| reconcile_trunk(trunk, &tctx, &ns, &name);
    reconcile_parsed(
        &tctx.ctx,
        CONTROLLER,
        &tctx.retries,
        &obj,
        (&ns, &name),
        inner,
    )
    .await
}

async fn reconcile_trunk(
    trunk: &Trunk,
    tctx: &TrunkCtx,
    ns: &str,
    name: &str,
) -> Result<Action, Error> {
    let ctx = &tctx.ctx;
    let key = owner_key(ns, name);
    let id = (ns.to_string(), name.to_string());
    if trunk.metadata.deletion_timestamp.is_some() {
        tctx.forget(ns, name);
        return Ok(Action::await_change());
    }

    // Observe: hand the endpoints to the prober.
    if trunk.spec.disabled {
        ctx.probes.remove(&key);
    } else {
        let Some(tls) = tctx.ca_bundles.tls_settings(trunk, ns, name) else {
            // Its CA bundle is being read; the reader reconciles it once it has.
            lock(&tctx.known).insert(id);
            return Ok(Action::await_change());
        };
        let targets = trunk
            .spec
            .endpoints
            .iter()
            .map(|e| ProbeTarget {
                uri: e.uri.clone(),
                spec: trunk.spec.probe.clone(),
                tls: tls.clone(),
            })
            .collect();
        ctx.probes.set_targets(&key, targets);
        // A restarted or newly leading replica starts from what was published, not
        // from Unknown (no-op for endpoints this process has probed already).
        if let Some(status) = &trunk.status {
            for e in &status.endpoints {
                ctx.probes.seed(
                    &key,
                    &e.uri,
                    e.state,
                    e.last_transition_time.as_ref().map(|t| t.0),
                );
            }
        }
    }
    // A changed CA bundle, like every other input, triggers the next pass.
    let requeue = Action::await_change();
    lock(&tctx.known).insert(id.clone());
    if !ctx.is_leading() {
        // Warm standby: probe, do not write.
        return Ok(Action::await_change());
    }
    if !trunk.spec.disabled && !ctx.probes.fully_probed(&key) {
        // Write nothing until every endpoint has been measured by this process (the hub
        // wakes us when the round completes, at most a period plus a timeout away). A
        // restarted replica seeded from the published status keeps it; a new Trunk
        // publishes its first status with verdicts, not an Unknown one that a policy
        // would route from and rewrite a moment later.
        return Ok(Action::await_change());
    }

    // Decide.
    let now = jiff::Timestamp::now();
    // The operator's own probes, combined with the edges' (spec.probe.vantage).
    let (health, vantages, summary) =
        ctx.edges
            .combine(ctx, ns, trunk.spec.probe.vantage, ctx.probes.health(&key));
    let views = (vantages.len() > 1 && !trunk.spec.disabled).then_some((vantages, summary));
    // Real calls that failed at the edge take an endpoint down whatever OPTIONS say.
    let (health, passive_pending) =
        apply_passive(tctx, &id, ctx.edges.failure_marks(ctx, ns), health, now);
    // Passive failures recover by time alone: come back to let them.
    let requeue = if passive_pending {
        Action::requeue(Duration::from_secs(5))
    } else {
        requeue
    };
    // What this replica decided last (not in the cache yet), or the published status.
    let old = ctx
        .verdicts
        .status_of(&id, trunk)
        .map(|s| (*s).clone())
        .unwrap_or_default();
    let rtt_due = lock(&tctx.last_write)
        .get(&id)
        .is_none_or(|at| now.duration_since(*at).unsigned_abs() >= RTT_REFRESH);
    let next = next_status(trunk, &health, views, &old, rtt_due, now);
    // Judged in this term (a policy's first pass of a term waits for it).
    ctx.verdicts.mark_judged(&id);
    let Some(new) = next else {
        return Ok(requeue);
    };

    // Apply: the policy controller reads the decision at once; the queue writes it,
    // then its Events.
    lock(&tctx.last_write).insert(id.clone(), now);
    let urgent = known_state_changed(&old, &new);
    let mut events = Vec::new();
    for (uri, to, cause) in status::transitions(&old, &new, &health) {
        let (type_, reason) = match to {
            EndpointState::Up => (EventType::Normal, reasons::ENDPOINT_UP),
            _ => (EventType::Warning, reasons::ENDPOINT_DOWN),
        };
        events.push(Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(&format!("{uri} is {to}: {cause}"), 1000)),
            action: "Probe".into(),
            secondary: None,
        });
    }
    let mut raised_any = false;
    for (type_, reason) in [
        (TRUNK_FORBIDDEN, reasons::DESTINATION_DENIED),
        (TRUNK_QUOTA_EXCEEDED, reasons::NAMESPACE_QUOTA),
    ] {
        let raised = |s: &TrunkStatus| {
            find_condition(&s.conditions, type_).is_some_and(|c| c.status == "True")
        };
        if raised(&new) && !raised(&old) {
            raised_any = true;
            let note = find_condition(&new.conditions, type_).map(|c| truncate(&c.message, 1000));
            events.push(Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note,
                action: "Probe".into(),
                secondary: None,
            });
        }
    }
    tracing::debug!(healthy = ?new.healthy_summary, urgent, "trunk status decided");
    let status = ctx.verdicts.decide(&id, new);
    let reference = (!events.is_empty()).then(|| trunk.object_ref(&()));
    tctx.writer.submit(
        id,
        writer::Pending {
            status,
            events,
            reference,
            urgent: urgent || raised_any,
        },
    );
    Ok(requeue)
}
