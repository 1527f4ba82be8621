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
//! Probing is in-process state, so deletion needs no finalizer: the watch's delete
//! events (and a re-list that no longer shows a Trunk) stop its probes.
//!
//! [`ProbeHub`]: crate::probe::ProbeHub

pub mod observe;
pub mod status;
pub mod verdicts;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::runtime::{
    Expedite, Guarded, edge_changes, everyone_on_recovery, on_deleted, probe_changes,
    reconcile_parsed, truncate,
};
use super::{Context, Retries};
use crate::crd::{
    EndpointState, TRUNK_FORBIDDEN, TRUNK_QUOTA_EXCEEDED, Trunk, TrunkStatus, find_condition,
};
use crate::lock;
use crate::probe::passive::{self, PassiveState};
use crate::probe::{EndpointHealth, ProbeTarget, RTT_REFRESH};
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

fn error_policy(trunk: Arc<Guarded<Trunk>>, error: &Error, tctx: Arc<TrunkCtx>) -> Action {
    if let Error::Kube(e) = error
        && super::is_unreachable(e)
    {
        tctx.ctx.api_call_failed();
    }
    tctx.ctx
        .reconcile_failed(CONTROLLER, &tctx.retries, &*trunk, error.category(), error)
}

async fn reconcile(obj: Arc<Guarded<Trunk>>, tctx: Arc<TrunkCtx>) -> Result<Action, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::runtime::parse_owner_key;

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
