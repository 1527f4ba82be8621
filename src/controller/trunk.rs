//! The Trunk controller: hands each Trunk's endpoints to the [`ProbeHub`] and writes
//! what the probes found into `status`, on transitions only.
//!
//! Probing is in-process state, so deletion needs no finalizer: a sweep drops the
//! targets of Trunks that left the controller's cache.
//!
//! [`ProbeHub`]: crate::probe::ProbeHub

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::crd::{
    CaBundleKind, EndpointState, EndpointStatus, TRUNK_FORBIDDEN, TRUNK_HEALTHY,
    TRUNK_QUOTA_EXCEEDED, Trunk, TrunkStatus, VantageStatus, condition, find_condition,
    merge_condition,
};
use crate::probe::health::rtt_moved;
use crate::probe::{EndpointHealth, FailureKind, ProbeTarget, RTT_REFRESH, TlsSettings};
use crate::telemetry::ErrorLabels;

/// `Healthy` reasons.
pub mod reasons {
    /// Every endpoint is Up.
    pub const ALL_UP: &str = "AllEndpointsUp";
    /// Some, not all, endpoints are Up.
    pub const PARTIAL: &str = "SomeEndpointsDown";
    /// Every endpoint is Down.
    pub const ALL_DOWN: &str = "AllEndpointsDown";
    /// No endpoint is Up and some have not been judged yet.
    pub const PROBING: &str = "Probing";
    /// `spec.disabled` is true.
    pub const DISABLED: &str = "Disabled";
    /// Event reason: an endpoint became Up.
    pub const ENDPOINT_UP: &str = "EndpointUp";
    /// Event reason: an endpoint became Down.
    pub const ENDPOINT_DOWN: &str = "EndpointDown";
    /// `Forbidden` reason: a destination matches the operator's deny list.
    pub const DESTINATION_DENIED: &str = "DestinationDenied";
    /// `Forbidden` reason once every destination is allowed again.
    pub const DESTINATIONS_ALLOWED: &str = "DestinationsAllowed";
    /// `QuotaExceeded` reason: the namespace's probe quota is used up.
    pub const NAMESPACE_QUOTA: &str = "NamespaceQuota";
    /// `QuotaExceeded` reason once the trunk fits again.
    pub const WITHIN_QUOTA: &str = "WithinQuota";
}

/// How often a Trunk with a CA bundle re-reads it (ConfigMaps and Secrets are not
/// watched: watching every Secret in the cluster would cost far more than this).
const CA_BUNDLE_REFRESH: Duration = Duration::from_secs(300);

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request (transient).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace (cannot happen for a namespaced kind).
    #[error("trunk without a namespace")]
    NoNamespace,
}

impl Error {
    /// Short static category for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace => "invalid",
        }
    }
}

/// The hub owner key of a Trunk.
pub fn owner_key(namespace: &str, name: &str) -> String {
    format!("trunk/{namespace}/{name}")
}

fn parse_owner_key(key: &str) -> Option<ObjectRef<Trunk>> {
    let (ns, name) = key.strip_prefix("trunk/")?.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

/// Controller state beyond the shared [`Context`].
struct TrunkCtx {
    ctx: Arc<Context>,
    /// Trunks whose endpoints the hub probes (namespace, name).
    known: Mutex<HashSet<(String, String)>>,
    /// When each Trunk's status was last written (for the RTT refresh limit).
    last_write: Mutex<HashMap<(String, String), jiff::Timestamp>>,
    /// Failed reconciles in a row, for the backoff.
    retries: super::Retries,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run the trunk controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let tctx = Arc::new(TrunkCtx {
        ctx: ctx.clone(),
        known: Mutex::new(HashSet::new()),
        last_write: Mutex::new(HashMap::new()),
        retries: super::Retries::default(),
    });
    let api: Api<Trunk> = ctx.api();
    let controller = Controller::new(api, watcher::Config::default().any_semantic())
        .trigger_backoff(super::QuickBackoff::default());
    let store = controller.store();
    let changes = probe_changes(ctx.probes.subscribe(), tctx.clone());
    // Leadership gained or the API back after an outage: every Trunk at once (reads
    // from the cache; writes only what differs from the published status).
    let everyone = futures::stream::select(
        super::on_change(ctx.leading.clone(), |l| *l),
        super::on_change(ctx.api_returned(), |_| true),
    )
    .flat_map({
        let tctx = tctx.clone();
        move |()| {
            let all: Vec<ObjectRef<Trunk>> = lock(&tctx.known)
                .iter()
                .map(|(ns, name)| ObjectRef::new(name).within(ns))
                .collect();
            futures::stream::iter(all)
        }
    });
    let changes = futures::stream::select(changes, everyone);
    // An edge report changed: the namespace's Trunks combine their vantages again.
    let changes =
        futures::stream::select(changes, edge_changes(ctx.edges.subscribe(), tctx.clone()));
    let sweeper = tokio::spawn(sweep_deleted(store, tctx.clone(), shutdown.clone()));
    let metrics = ctx.metrics.clone();
    controller
        .reconcile_on(changes)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, tctx.clone())
        .for_each(|res| {
            if let Err(e) = res {
                // Objects that vanished before their reconcile are not worth a warning.
                tracing::debug!(error = %e, "trunk reconcile did not run");
            }
            futures::future::ready(())
        })
        .await;
    sweeper.abort();
    let _ = metrics;
    for (ns, name) in lock(&tctx.known).drain() {
        ctx.probes.remove(&owner_key(&ns, &name));
    }
}

/// The hub's change notifications as reconcile requests. When the receiver lags
/// (more changes than the channel holds), every known Trunk is reconciled.
fn probe_changes(
    rx: tokio::sync::broadcast::Receiver<String>,
    tctx: Arc<TrunkCtx>,
) -> impl futures::Stream<Item = ObjectRef<Trunk>> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, move |mut rx| {
        let tctx = tctx.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(key) => {
                        if let Some(r) = parse_owner_key(&key) {
                            return Some((vec![r], rx));
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let all = lock(&tctx.known)
                            .iter()
                            .map(|(ns, name)| ObjectRef::new(name).within(ns))
                            .collect();
                        return Some((all, rx));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
    .flat_map(futures::stream::iter)
}

/// The edge board's notifications (a namespace's edge reports changed) as reconcile
/// requests for every known Trunk of that namespace.
fn edge_changes(
    rx: tokio::sync::broadcast::Receiver<String>,
    tctx: Arc<TrunkCtx>,
) -> impl futures::Stream<Item = ObjectRef<Trunk>> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, move |mut rx| {
        let tctx = tctx.clone();
        async move {
            let ns = match rx.recv().await {
                Ok(ns) => Some(ns),
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return None,
            };
            let refs: Vec<ObjectRef<Trunk>> = lock(&tctx.known)
                .iter()
                .filter(|(n, _)| ns.as_ref().is_none_or(|ns| ns == n))
                .map(|(n, name)| ObjectRef::new(name).within(n))
                .collect();
            Some((refs, rx))
        }
    })
    .flat_map(futures::stream::iter)
}

/// Stop probing Trunks that are gone from the cache (deleted, or moved out of scope).
async fn sweep_deleted(store: Store<Trunk>, tctx: Arc<TrunkCtx>, shutdown: CancellationToken) {
    // No need to wait for the cache to fill: a Trunk is only `known` after a reconcile,
    // which reads it from this cache, and re-lists swap the cache atomically.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let gone: Vec<(String, String)> = lock(&tctx.known)
            .iter()
            .filter(|(ns, name)| store.get(&ObjectRef::new(name).within(ns)).is_none())
            .cloned()
            .collect();
        for key in gone {
            tracing::info!(namespace = %key.0, name = %key.1, "trunk deleted: probes stopped");
            tctx.ctx.probes.remove(&owner_key(&key.0, &key.1));
            lock(&tctx.known).remove(&key);
            lock(&tctx.last_write).remove(&key);
            tctx.retries.reset(&key);
        }
    }
}

async fn reconcile(trunk: Arc<Trunk>, tctx: Arc<TrunkCtx>) -> Result<Action, Error> {
    let ns = trunk.namespace().ok_or(Error::NoNamespace)?;
    let name = trunk.name_any();
    let result = tctx
        .ctx
        .instrumented(
            "trunk",
            &ns,
            &name,
            reconcile_inner(&trunk, &tctx, &ns, &name),
        )
        .await;
    if result.is_ok() {
        tctx.retries.reset(&(ns, name));
    }
    result
}

async fn reconcile_inner(
    trunk: &Trunk,
    tctx: &TrunkCtx,
    ns: &str,
    name: &str,
) -> Result<Action, Error> {
    let ctx = &tctx.ctx;
    let key = owner_key(ns, name);
    let id = (ns.to_string(), name.to_string());
    if trunk.metadata.deletion_timestamp.is_some() {
        ctx.probes.remove(&key);
        lock(&tctx.known).remove(&id);
        return Ok(Action::await_change());
    }
    if trunk.spec.disabled {
        ctx.probes.remove(&key);
    } else {
        let tls = tls_settings(trunk, ctx, ns).await?;
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
    let requeue = if trunk
        .spec
        .tls
        .as_ref()
        .is_some_and(|t| t.ca_bundle.is_some())
    {
        Action::requeue(CA_BUNDLE_REFRESH)
    } else {
        Action::await_change()
    };
    lock(&tctx.known).insert(id.clone());
    if !ctx.is_leading() {
        // Warm standby: probe, do not write.
        return Ok(Action::await_change());
    }
    let published = trunk
        .status
        .as_ref()
        .is_some_and(|s| !s.endpoints.is_empty());
    if published && !trunk.spec.disabled && !ctx.probes.fully_probed(&key) {
        // Seeded from the published status: write nothing until every endpoint has
        // been measured by this process (the hub wakes us when the round completes).
        return Ok(Action::await_change());
    }

    let now = jiff::Timestamp::now();
    // The operator's own probes, combined with the edges' (spec.probe.vantage).
    let (health, vantages, summary) =
        ctx.edges
            .combine(ctx, ns, trunk.spec.probe.vantage, ctx.probes.health(&key));
    let views = (vantages.len() > 1 && !trunk.spec.disabled).then_some((vantages, summary));
    let old = trunk.status.clone().unwrap_or_default();
    let rtt_due = lock(&tctx.last_write)
        .get(&id)
        .is_none_or(|at| now.duration_since(*at).unsigned_abs() >= RTT_REFRESH);
    let Some(new) = next_status(trunk, &health, views, &old, rtt_due, now) else {
        return Ok(requeue);
    };
    let api: Api<Trunk> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({ "status": new });
    let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
    let write = api.patch_status(name, &params, &patch);
    let Some(written) = ctx.while_leading(write).await else {
        return Ok(Action::await_change());
    };
    written?;
    lock(&tctx.last_write).insert(id, now);
    tracing::info!(healthy = ?new.healthy_summary, "trunk status written");

    let reference = trunk.object_ref(&());
    for (uri, to, cause) in transitions(&old, &new, &health) {
        let (type_, reason) = match to {
            EndpointState::Up => (EventType::Normal, reasons::ENDPOINT_UP),
            _ => (EventType::Warning, reasons::ENDPOINT_DOWN),
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(&format!("{uri} is {to}: {cause}"), 1000)),
            action: "Probe".into(),
            secondary: None,
        };
        if let Some(Err(e)) = ctx
            .while_leading(ctx.recorder.publish(&event, &reference))
            .await
        {
            // The status is written; a lost Event must not make us write it again.
            tracing::warn!(error = %e, "publishing an endpoint event failed");
        }
    }
    for (type_, reason) in [
        (TRUNK_FORBIDDEN, reasons::DESTINATION_DENIED),
        (TRUNK_QUOTA_EXCEEDED, reasons::NAMESPACE_QUOTA),
    ] {
        let raised = |s: &TrunkStatus| {
            find_condition(&s.conditions, type_).is_some_and(|c| c.status == "True")
        };
        if raised(&new) && !raised(&old) {
            let note = find_condition(&new.conditions, type_).map(|c| c.message.clone());
            let event = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: note.map(|n| truncate(&n, 1000)),
                action: "Probe".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "publishing a {type_} event failed");
            }
        }
    }
    Ok(requeue)
}

/// The TLS settings of a Trunk's endpoints, with its CA bundle read from the API. A
/// missing object or key is not an API failure: every TLS probe then fails with a
/// message that says what to create.
async fn tls_settings(
    trunk: &Trunk,
    ctx: &Context,
    ns: &str,
) -> Result<Option<TlsSettings>, Error> {
    let Some(tls) = &trunk.spec.tls else {
        return Ok(None);
    };
    let mut settings = TlsSettings {
        server_name: tls.server_name.clone(),
        ..TlsSettings::default()
    };
    if let Some(r) = &tls.ca_bundle {
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        let pem = match r.kind {
            CaBundleKind::ConfigMap => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_opt(&r.name)
                .await?
                .map(|cm| cm.data.and_then(|mut d| d.remove(&r.key))),
            CaBundleKind::Secret => {
                match Api::<Secret>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&r.name)
                    .await
                {
                    Ok(found) => found.map(|s| {
                        s.data
                            .and_then(|mut d| d.remove(&r.key))
                            .and_then(|b| String::from_utf8(b.0).ok())
                    }),
                    // Not an outage: a permission the chart grants only on request.
                    Err(kube::Error::Api(status)) if status.is_forbidden() => {
                        settings.ca_error = Some(format!(
                            "spec.tls.caBundle: the operator may not read Secret {ns}/{}; put the CA certificates in a ConfigMap (they are public), or install the chart with probe.tls.readSecrets=true",
                            r.name
                        ));
                        return Ok(Some(settings));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let kind = match r.kind {
            CaBundleKind::ConfigMap => "ConfigMap",
            CaBundleKind::Secret => "Secret",
        };
        match pem {
            None => {
                settings.ca_error = Some(format!(
                    "spec.tls.caBundle: {kind} {ns}/{} not found; create it with the carrier's CA certificates under key {:?}",
                    r.name, r.key
                ))
            }
            Some(None) => {
                settings.ca_error = Some(format!(
                    "spec.tls.caBundle: {kind} {ns}/{} has no key {:?} (or it is not text); put the PEM CA certificates there",
                    r.name, r.key
                ))
            }
            Some(Some(pem)) => settings.ca_pem = Some(Arc::from(pem)),
        }
    }
    Ok(Some(settings))
}

fn error_policy(trunk: Arc<Trunk>, error: &Error, tctx: Arc<TrunkCtx>) -> Action {
    if let Error::Kube(e) = error
        && super::is_unreachable(e)
    {
        tctx.ctx.api_call_failed();
    }
    tctx.ctx
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: "trunk",
            error: error.category(),
        })
        .inc();
    let n = tctx
        .retries
        .failed((trunk.namespace().unwrap_or_default(), trunk.name_any()));
    tracing::warn!(error = %error, retries = n, "trunk reconcile failed");
    Action::requeue(super::backoff(
        n,
        Duration::from_secs(1),
        Duration::from_secs(300),
    ))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The status to write, or `None` when nothing worth a write changed.
///
/// An endpoint whose state did not change keeps its previous entry (its failure count
/// and last error are as of its last transition), except that its RTT is refreshed when
/// `rtt_due` (the last write is at least [`RTT_REFRESH`] old) and it moved noticeably
/// ([`rtt_moved`]), so a steady line causes no writes at all. Everything else —
/// endpoint states, the endpoint list, the `Healthy` condition, `observedGeneration` —
/// is written as soon as it changes.
pub fn next_status(
    trunk: &Trunk,
    health: &[EndpointHealth],
    vantages: Option<(Vec<VantageStatus>, String)>,
    old: &TrunkStatus,
    rtt_due: bool,
    now: jiff::Timestamp,
) -> Option<TrunkStatus> {
    let generation = trunk.metadata.generation;
    let endpoints: Vec<EndpointStatus> = if trunk.spec.disabled {
        trunk
            .spec
            .endpoints
            .iter()
            .map(|e| EndpointStatus {
                uri: e.uri.clone(),
                state: EndpointState::Unknown,
                rtt_millis: None,
                last_status_code: None,
                consecutive_failures: 0,
                last_transition_time: None,
                last_error: None,
            })
            .collect()
    } else {
        health
            .iter()
            .map(|h| {
                let fresh = EndpointStatus {
                    uri: h.uri.clone(),
                    state: h.state,
                    rtt_millis: h.rtt_millis,
                    last_status_code: h.last_status_code,
                    consecutive_failures: h.consecutive_failures,
                    last_transition_time: h.last_transition.map(Time),
                    last_error: h.last_error.clone(),
                };
                // An Unknown endpoint's reason (forbidden, no DNS answer, no quota) is
                // news even without a state change.
                match old.endpoints.iter().find(|o| {
                    o.uri == h.uri
                        && o.state == h.state
                        && (h.state != EndpointState::Unknown || o.last_error == h.last_error)
                }) {
                    Some(prev) => EndpointStatus {
                        rtt_millis: if rtt_due && rtt_moved(prev.rtt_millis, h.rtt_millis) {
                            h.rtt_millis
                        } else {
                            prev.rtt_millis
                        },
                        ..prev.clone()
                    },
                    None => fresh,
                }
            })
            .collect()
    };
    let total = endpoints.len();
    let up = endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Up)
        .count();
    let down = endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Down)
        .count();
    let (healthy, reason, message) = if trunk.spec.disabled {
        (
            false,
            reasons::DISABLED,
            "spec.disabled is true: the trunk is not probed and gets no traffic".to_string(),
        )
    } else if total > 0 && up == total {
        (
            true,
            reasons::ALL_UP,
            format!("all {total} endpoints answer OPTIONS"),
        )
    } else if up > 0 {
        (
            true,
            reasons::PARTIAL,
            format!("{up} of {total} endpoints answer OPTIONS, {down} down"),
        )
    } else if total > 0 && down == total {
        (
            false,
            reasons::ALL_DOWN,
            format!("none of {total} endpoints answers OPTIONS"),
        )
    } else {
        (
            false,
            reasons::PROBING,
            format!(
                "no endpoint is up yet; {} of {total} not judged yet",
                total - down
            ),
        )
    };
    let mut conditions = old.conditions.clone();
    merge_condition(
        &mut conditions,
        condition(TRUNK_HEALTHY, healthy, reason, message, generation),
        now,
    );
    if !trunk.spec.disabled {
        for (type_, kind, raised, cleared, cleared_msg) in [
            (
                TRUNK_FORBIDDEN,
                FailureKind::Forbidden,
                reasons::DESTINATION_DENIED,
                reasons::DESTINATIONS_ALLOWED,
                "every endpoint resolves to destinations the operator may probe",
            ),
            (
                TRUNK_QUOTA_EXCEEDED,
                FailureKind::Quota,
                reasons::NAMESPACE_QUOTA,
                reasons::WITHIN_QUOTA,
                "the namespace's probe quota has room for this trunk",
            ),
        ] {
            let hit: Vec<&EndpointHealth> = health
                .iter()
                .filter(|h| h.last_failure == Some(kind))
                .collect();
            if let Some(first) = hit.first() {
                let mut msg = format!(
                    "{}: {}",
                    first.uri,
                    first.last_error.as_deref().unwrap_or_default()
                );
                if hit.len() > 1 {
                    msg.push_str(&format!(" (and {} more endpoints)", hit.len() - 1));
                }
                merge_condition(
                    &mut conditions,
                    condition(type_, true, raised, msg, generation),
                    now,
                );
            } else if find_condition(&conditions, type_).is_some() {
                // Only a condition that was ever raised is kept (as False): Trunks that
                // never hit a limit carry no extra conditions and cost no writes.
                merge_condition(
                    &mut conditions,
                    condition(type_, false, cleared, cleared_msg, generation),
                    now,
                );
            }
        }
    }
    let new = TrunkStatus {
        observed_generation: generation,
        conditions,
        healthy_endpoints: u32::try_from(up).unwrap_or(u32::MAX),
        healthy_summary: Some(format!("{up}/{total}")),
        endpoints,
        vantage_summary: vantages.as_ref().map(|v| v.1.clone()),
        vantages: vantages.map(|v| v.0).unwrap_or_default(),
    };
    (new != *old).then_some(new)
}

/// Endpoints that became Up or Down between `old` and `new`, with the cause.
fn transitions(
    old: &TrunkStatus,
    new: &TrunkStatus,
    health: &[EndpointHealth],
) -> Vec<(String, EndpointState, String)> {
    new.endpoints
        .iter()
        .filter(|e| e.state != EndpointState::Unknown)
        .filter(|e| {
            old.endpoints
                .iter()
                .find(|o| o.uri == e.uri)
                .is_none_or(|o| o.state != e.state)
        })
        .map(|e| {
            let h = health.iter().find(|h| h.uri == e.uri);
            let cause = match (e.state, h) {
                (EndpointState::Up, Some(h)) => match (h.last_status_code, h.rtt_millis) {
                    (Some(code), Some(rtt)) => format!("answered {code} in {rtt} ms"),
                    _ => "answers OPTIONS".to_string(),
                },
                (_, Some(h)) => h
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "probes failed".to_string()),
                (_, None) => String::new(),
            };
            (e.uri.clone(), e.state, cause)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ProbeSpec, TrunkEndpoint, TrunkSpec, find_condition};

    fn trunk(uris: &[&str], disabled: bool) -> Trunk {
        let mut t = Trunk::new(
            "carrier-a",
            TrunkSpec {
                region: "cologne".into(),
                medium: Default::default(),
                endpoints: uris
                    .iter()
                    .map(|u| TrunkEndpoint {
                        uri: u.to_string(),
                        weight: 1,
                    })
                    .collect(),
                capacity: None,
                probe: ProbeSpec::default(),
                disabled,
                tls: None,
            },
        );
        t.metadata.generation = Some(3);
        t
    }

    fn health(uri: &str, state: EndpointState, rtt: Option<u32>, failures: u32) -> EndpointHealth {
        EndpointHealth {
            uri: uri.into(),
            state,
            rtt_millis: rtt,
            last_status_code: rtt.map(|_| 200),
            consecutive_failures: failures,
            last_transition: Some(jiff::Timestamp::from_second(100).unwrap()),
            last_error: (failures > 0).then(|| "no answer within 500 ms".into()),
            last_failure: (failures > 0).then_some(FailureKind::Timeout),
            targets: Vec::new(),
            stale_dns: None,
        }
    }

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn writes_on_transitions_only() {
        let tr = trunk(&["sip:a", "sip:b"], false);
        let h1 = [
            health("sip:a", EndpointState::Up, Some(4), 0),
            health("sip:b", EndpointState::Down, None, 3),
        ];
        let s1 = next_status(&tr, &h1, None, &TrunkStatus::default(), true, t(1000)).unwrap();
        assert_eq!(s1.healthy_summary.as_deref(), Some("1/2"));
        assert_eq!(s1.healthy_endpoints, 1);
        assert_eq!(s1.observed_generation, Some(3));
        let c = find_condition(&s1.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::PARTIAL)
        );

        // More failures, a new RTT: no write before the refresh is due.
        let h2 = [
            health("sip:a", EndpointState::Up, Some(40), 0),
            health("sip:b", EndpointState::Down, None, 9),
        ];
        assert_eq!(next_status(&tr, &h2, None, &s1, false, t(1010)), None);
        // The refresh writes the RTT but not the failure count.
        let s2 = next_status(&tr, &h2, None, &s1, true, t(1040)).unwrap();
        assert_eq!(s2.endpoints[0].rtt_millis, Some(40));
        // Jitter alone is not worth a write, even when the refresh is due.
        let jitter = [
            health("sip:a", EndpointState::Up, Some(42), 0),
            health("sip:b", EndpointState::Down, None, 12),
        ];
        assert_eq!(next_status(&tr, &jitter, None, &s2, true, t(1100)), None);
        assert_eq!(s2.endpoints[1].consecutive_failures, 3);

        // b comes back: written at once, condition keeps its transition time.
        let h3 = [
            health("sip:a", EndpointState::Up, Some(40), 0),
            health("sip:b", EndpointState::Up, Some(2), 0),
        ];
        let s3 = next_status(&tr, &h3, None, &s2, false, t(1050)).unwrap();
        let c3 = find_condition(&s3.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(c3.reason, reasons::ALL_UP);
        assert_eq!(c3.last_transition_time, Time(t(1000)));
        let ev = transitions(&s2, &s3, &h3);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].0.as_str(), ev[0].1), ("sip:b", EndpointState::Up));
        assert_eq!(ev[0].2, "answered 200 in 2 ms");
    }

    #[test]
    fn all_down_probing_and_disabled() {
        let tr = trunk(&["sip:a"], false);
        let down = [health("sip:a", EndpointState::Down, None, 3)];
        let s = next_status(&tr, &down, None, &TrunkStatus::default(), true, t(1)).unwrap();
        let c = find_condition(&s.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::ALL_DOWN)
        );
        let ev = transitions(&TrunkStatus::default(), &s, &down);
        assert_eq!(ev[0].2, "no answer within 500 ms");

        let unknown = [health("sip:a", EndpointState::Unknown, None, 1)];
        let s = next_status(&tr, &unknown, None, &TrunkStatus::default(), true, t(1)).unwrap();
        assert_eq!(
            find_condition(&s.conditions, TRUNK_HEALTHY).unwrap().reason,
            reasons::PROBING
        );
        assert!(transitions(&TrunkStatus::default(), &s, &unknown).is_empty());

        let off = trunk(&["sip:a"], true);
        let s = next_status(&off, &[], None, &s, true, t(2)).unwrap();
        let c = find_condition(&s.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::DISABLED)
        );
        assert_eq!(s.endpoints[0].state, EndpointState::Unknown);
        assert_eq!(next_status(&off, &[], None, &s, true, t(3)), None);
    }

    /// A denied destination raises `Forbidden` (the endpoint stays Unknown, not Down),
    /// and clearing it turns the condition False instead of leaving it stale.
    #[test]
    fn forbidden_and_quota_conditions() {
        let tr = trunk(&["sip:a", "sip:b"], false);
        let mut denied = health("sip:a", EndpointState::Unknown, None, 0);
        denied.last_error = Some(
            "destination 127.0.0.1:5060 is forbidden by the operator's deny rule 127.0.0.0/8"
                .into(),
        );
        denied.last_failure = Some(FailureKind::Forbidden);
        let up = health("sip:b", EndpointState::Up, Some(3), 0);
        let s1 = next_status(
            &tr,
            &[denied.clone(), up.clone()],
            None,
            &TrunkStatus::default(),
            true,
            t(1),
        )
        .unwrap();
        let c = find_condition(&s1.conditions, TRUNK_FORBIDDEN).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::DESTINATION_DENIED)
        );
        assert!(
            c.message
                .starts_with("sip:a: destination 127.0.0.1:5060 is forbidden"),
            "{}",
            c.message
        );
        assert_eq!(s1.endpoints[0].state, EndpointState::Unknown);
        assert!(find_condition(&s1.conditions, TRUNK_QUOTA_EXCEEDED).is_none());
        // Unchanged: no write.
        assert_eq!(
            next_status(&tr, &[denied, up.clone()], None, &s1, false, t(2)),
            None
        );
        let fine = health("sip:a", EndpointState::Up, Some(3), 0);
        let s2 = next_status(&tr, &[fine, up.clone()], None, &s1, false, t(3)).unwrap();
        let c = find_condition(&s2.conditions, TRUNK_FORBIDDEN).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::DESTINATIONS_ALLOWED)
        );

        let mut over = health("sip:a", EndpointState::Unknown, None, 0);
        over.last_error =
            Some("namespace t would probe 9 endpoints, over the operator's quota of 8".into());
        over.last_failure = Some(FailureKind::Quota);
        let mut over_b = over.clone();
        over_b.uri = "sip:b".into();
        let s3 = next_status(
            &tr,
            &[over, over_b],
            None,
            &TrunkStatus::default(),
            true,
            t(4),
        )
        .unwrap();
        let c = find_condition(&s3.conditions, TRUNK_QUOTA_EXCEEDED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::NAMESPACE_QUOTA)
        );
        assert!(
            c.message.contains("(and 1 more endpoints)"),
            "{}",
            c.message
        );
    }

    #[test]
    fn owner_keys_round_trip_and_backoff_grows() {
        let r = parse_owner_key(&owner_key("ns1", "a")).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("a", Some("ns1"))
        );
        assert!(parse_owner_key("policy/ns1/a").is_none());
        let backoff =
            |n| super::super::backoff(n, Duration::from_secs(1), Duration::from_secs(300));
        assert!(backoff(1) < Duration::from_millis(1300));
        assert!(backoff(20) <= Duration::from_secs(360));
        assert!(backoff(5) > backoff(1));
    }
}
