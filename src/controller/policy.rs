//! The FallbackPolicy controller: fetch health → [`plan`](crate::plan::plan) →
//! [`render`](crate::render) → write the routing ConfigMap (only when its content hash
//! changes) → write the status (only when it changes) → Events for transitions.
//!
//! Triggers: the policy itself, its ConfigMap (`.owns`), every Trunk and BotPool a
//! policy in the same namespace references (reflector stores, so a reconcile reads
//! health without API calls), the prober's change notifications for the policy's
//! static `uri` targets (owner key `policy/<ns>/<name>`), and the plan's next time-based
//! transition (failure/recovery timers, override end).
//!
//! The previous plan is kept in memory and rebuilt from the status after a restart
//! (see [`Plan::from_status`]). Manual failback is approved with the annotation
//! [`FAILBACK_ANNOTATION`](crate::plan::FAILBACK_ANNOTATION) holding an RFC 3339 time
//! later than the region's failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::crd::{
    BotPool, FIELD_MANAGER, FallbackPolicy, FallbackPolicySpec, FallbackPolicyStatus,
    POLICY_CAPACITY_SUFFICIENT, POLICY_DEGRADED, POLICY_READY, ProbeSpec, RegionState, Trunk,
    condition, merge_condition,
};
use crate::plan::{
    BotPoolObservation, FAILBACK_ANNOTATION, Observed, Plan, PlanEvent, TrunkObservation,
};
use crate::probe::ProbeTarget;
use crate::telemetry::{ErrorLabels, StateLabels};

/// The annotation with the lowercase hex SHA-256 of the rendered routing.
pub const CONTENT_HASH_ANNOTATION: &str = "lifeline.dev/content-hash";
/// Label on the routing ConfigMap.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Condition reasons and Event reasons of this controller.
pub mod reasons {
    /// Ready: the routing is rendered and published.
    pub const PUBLISHED: &str = "Published";
    /// Ready: a referenced Trunk or BotPool does not exist.
    pub const MISSING_REFERENCE: &str = "MissingReference";
    /// Ready: the ConfigMap exists and is not lifeline's.
    pub const CONFIGMAP_CONFLICT: &str = "ConfigMapConflict";
    /// Degraded: no route is failing open and every region is Active.
    pub const ALL_REGIONS_ACTIVE: &str = "AllRegionsActive";
    /// Degraded: some region is not Active.
    pub const REGIONS_NOT_ACTIVE: &str = "RegionsNotActive";
    /// Degraded / Event: a route has nothing placeable and keeps old destinations.
    pub const FAIL_OPEN: &str = "FailOpen";
    /// Event: no route fails open any more.
    pub const FAIL_OPEN_ENDED: &str = "FailOpenEnded";
    /// CapacitySufficient: healthy capacity covers the expected calls.
    pub const SUFFICIENT: &str = "Sufficient";
    /// CapacitySufficient: it does not.
    pub const CAPACITY_SHORT: &str = "CapacityShort";
    /// Event: a region left traffic.
    pub const FAILOVER: &str = "Failover";
    /// Event: a region returned to traffic.
    pub const FAILBACK: &str = "Failback";
    /// Event: another region state change (Failed ↔ Recovering).
    pub const REGION_STATE: &str = "RegionState";
    /// Event (Warning): a route's calls moved to a later tier (e.g. fixed line → mobile).
    pub const TIER_FALLBACK: &str = "TierFallback";
    /// Event: a route's calls moved back to an earlier tier.
    pub const TIER_RESTORED: &str = "TierRestored";
}

/// Errors of a policy reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes API error.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The policy has no namespace (never happens for a namespaced kind).
    #[error("policy without a namespace")]
    NoNamespace,
    /// A reflector store was dropped (the controller is shutting down).
    #[error("cache not available")]
    Cache,
    /// The routing ConfigMap exists and is not lifeline's; it is left alone.
    #[error("ConfigMap '{0}' exists and is not managed by this policy")]
    ConfigMapConflict(String),
}

impl Error {
    /// Short static category for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace => "invalid",
            Error::Cache => "cache",
            Error::ConfigMapConflict(_) => "conflict",
        }
    }
}

/// The hub owner key of a policy's static targets.
pub fn owner_key(namespace: &str, name: &str) -> String {
    format!("policy/{namespace}/{name}")
}

fn parse_owner_key(key: &str) -> Option<ObjectRef<FallbackPolicy>> {
    let (ns, name) = key.strip_prefix("policy/")?.split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

type Key = (String, String);

/// Controller state beyond the shared [`Context`].
struct PolicyCtx {
    ctx: Arc<Context>,
    trunks: Store<Trunk>,
    bot_pools: Store<BotPool>,
    /// FailoverDrills: a running one drains its region in the plan.
    drills: Store<crate::crd::FailoverDrill>,
    /// SipEdges: their members' live calls size the bot pools (see [`super::edges`]).
    edges: Store<crate::crd::SipEdge>,
    /// Pod checks of edge members.
    edge_pods: super::edges::PodChecks,
    /// Last plan per policy, with the policy's uid (a recreated policy starts afresh).
    plans: Mutex<HashMap<Key, (String, Plan)>>,
    /// Region states per policy, summed into the `regions{state}` gauge.
    region_counts: Mutex<HashMap<Key, [i64; 4]>>,
    /// Failed reconciles in a row, for the backoff.
    retries: super::Retries,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn targets(spec: &FallbackPolicySpec) -> impl Iterator<Item = &crate::crd::TargetSpec> {
    spec.routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
}

/// Policies in `namespace` (from the store) for which `references` is true.
fn referencing(
    store: &Store<FallbackPolicy>,
    namespace: Option<String>,
    references: impl Fn(&FallbackPolicySpec) -> bool,
) -> Vec<ObjectRef<FallbackPolicy>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && references(&p.spec))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Run the policy controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let (trunks, trunk_writer) = reflector::store::<Trunk>();
    let (bot_pools, pool_writer) = reflector::store::<BotPool>();
    let (drills, drill_writer) = reflector::store::<crate::crd::FailoverDrill>();
    let (edges, edge_writer) = reflector::store::<crate::crd::SipEdge>();
    let pctx = Arc::new(PolicyCtx {
        ctx: ctx.clone(),
        trunks,
        bot_pools,
        drills,
        edges,
        edge_pods: Default::default(),
        plans: Mutex::new(HashMap::new()),
        region_counts: Mutex::new(HashMap::new()),
        retries: super::Retries::default(),
    });

    let controller = Controller::new(
        ctx.api::<FallbackPolicy>(),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(super::QuickBackoff::default());
    let store = controller.store();

    let trunk_events = reflector::reflector(
        trunk_writer,
        watcher(
            ctx.api::<Trunk>(),
            watcher::Config::default().any_semantic(),
        ),
    )
    .backoff(super::QuickBackoff::default())
    .touched_objects();
    let pool_events = reflector::reflector(
        pool_writer,
        watcher(
            ctx.api::<BotPool>(),
            watcher::Config::default().any_semantic(),
        ),
    )
    .backoff(super::QuickBackoff::default())
    .touched_objects();

    let drill_events = reflector::reflector(
        drill_writer,
        watcher(
            ctx.api::<crate::crd::FailoverDrill>(),
            watcher::Config::default().any_semantic(),
        ),
    )
    .backoff(super::QuickBackoff::default())
    .touched_objects();

    // Live calls: an edge's report reconciles the policies whose routing it serves.
    let edge_events = reflector::reflector(
        edge_writer,
        watcher(
            ctx.api::<crate::crd::SipEdge>(),
            watcher::Config::default().any_semantic(),
        ),
    )
    .backoff(super::QuickBackoff::default())
    .touched_objects();
    let s3 = store.clone();

    let s1 = store.clone();
    let s2 = store.clone();
    let probe_changes = probe_changes(ctx.probes.subscribe(), store.clone());
    // Leadership gained or the API back after an outage: every policy at once. A new
    // leader forgets plans it may hold from an earlier term: the status is the truth.
    let everyone = futures::stream::select(
        super::on_change(ctx.leading.clone(), |l| *l).map({
            let pctx = pctx.clone();
            move |()| lock(&pctx.plans).clear()
        }),
        super::on_change(ctx.api_returned(), |_| true),
    )
    .flat_map({
        let store = store.clone();
        move |()| {
            let all: Vec<ObjectRef<FallbackPolicy>> = store
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect();
            futures::stream::iter(all)
        }
    });
    let probe_changes = futures::stream::select(probe_changes, everyone);
    let sweeper = tokio::spawn(sweep_deleted(store.clone(), pctx.clone(), shutdown.clone()));

    controller
        .owns(
            ctx.api::<ConfigMap>(),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}=lifeline")),
        )
        .watches_stream(trunk_events, move |trunk: Trunk| {
            let name = trunk.name_any();
            referencing(&s1, trunk.namespace(), |spec| {
                targets(spec).any(|t| t.trunk.as_deref() == Some(name.as_str()))
            })
        })
        .watches_stream(pool_events, move |pool: BotPool| {
            let name = pool.name_any();
            referencing(&s2, pool.namespace(), |spec| {
                targets(spec).any(|t| t.bot_pool.as_deref() == Some(name.as_str()))
            })
        })
        .watches_stream(edge_events, move |edge: crate::crd::SipEdge| {
            s3.state()
                .iter()
                .filter(|p| super::edges::serves(&edge, p))
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(drill_events, |drill: crate::crd::FailoverDrill| {
            drill
                .namespace()
                .map(|ns| ObjectRef::new(&drill.spec.policy).within(&ns))
        })
        .reconcile_on(probe_changes)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, pctx.clone())
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(error = %e, "policy reconcile did not run");
            }
            futures::future::ready(())
        })
        .await;
    sweeper.abort();
    for (ns, name) in lock(&pctx.plans).keys() {
        ctx.probes.remove(&owner_key(ns, name));
    }
}

/// Prober notifications for policy owners, as reconcile requests. A lagging receiver
/// requeues every policy.
fn probe_changes(
    rx: tokio::sync::broadcast::Receiver<String>,
    store: Store<FallbackPolicy>,
) -> impl futures::Stream<Item = ObjectRef<FallbackPolicy>> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, move |mut rx| {
        let store = store.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(key) => {
                        if let Some(r) = parse_owner_key(&key) {
                            return Some((vec![r], rx));
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let all = store
                            .state()
                            .iter()
                            .map(|p| ObjectRef::from_obj(p.as_ref()))
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

/// Forget deleted policies: stop probing their static targets, drop their plans and
/// their share of the region gauge. (No finalizer: the ConfigMap goes with its owner
/// reference, and the prober is in-process state.)
async fn sweep_deleted(
    store: Store<FallbackPolicy>,
    pctx: Arc<PolicyCtx>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let live: Vec<Key> = store
            .state()
            .iter()
            .filter_map(|p| Some((p.namespace()?, p.name_any())))
            .collect();
        let gone: Vec<Key> = lock(&pctx.plans)
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        for key in gone {
            pctx.ctx.probes.remove(&owner_key(&key.0, &key.1));
            lock(&pctx.plans).remove(&key);
            pctx.retries.reset(&key);
            lock(&pctx.region_counts).remove(&key);
        }
        publish_region_gauge(&pctx);
    }
}

fn state_index(s: RegionState) -> usize {
    match s {
        RegionState::Active => 0,
        RegionState::Failed => 1,
        RegionState::Draining => 2,
        RegionState::Recovering => 3,
    }
}

fn publish_region_gauge(pctx: &PolicyCtx) {
    let mut total = [0i64; 4];
    for counts in lock(&pctx.region_counts).values() {
        for (t, c) in total.iter_mut().zip(counts) {
            *t += c;
        }
    }
    for (state, n) in ["Active", "Failed", "Draining", "Recovering"]
        .iter()
        .zip(total)
    {
        pctx.ctx
            .metrics
            .regions
            .get_or_create(&StateLabels { state })
            .set(n);
    }
}

fn error_policy(policy: Arc<FallbackPolicy>, error: &Error, pctx: Arc<PolicyCtx>) -> Action {
    if let Error::Kube(e) = error
        && super::is_unreachable(e)
    {
        pctx.ctx.api_call_failed();
    }
    pctx.ctx
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: "policy",
            error: error.category(),
        })
        .inc();
    let n = pctx
        .retries
        .failed((policy.namespace().unwrap_or_default(), policy.name_any()));
    tracing::warn!(policy = %policy.name_any(), error = %error, retry = n, "policy reconcile failed");
    Action::requeue(super::backoff(
        n,
        Duration::from_millis(500),
        Duration::from_secs(60),
    ))
}

/// What the policy's namespace holds for it: the planner's input.
fn observe(policy: &FallbackPolicy, ns: &str, pctx: &PolicyCtx) -> Observed {
    let mut observed = Observed::default();
    for t in targets(&policy.spec) {
        if let Some(name) = &t.trunk
            && let Some(trunk) = pctx.trunks.get(&ObjectRef::new(name).within(ns))
        {
            observed
                .trunks
                .insert(name.clone(), TrunkObservation::from_trunk(&trunk));
        }
        if let Some(name) = &t.bot_pool
            && let Some(pool) = pctx.bot_pools.get(&ObjectRef::new(name).within(ns))
        {
            observed
                .bot_pools
                .insert(name.clone(), BotPoolObservation::from_bot_pool(&pool));
        }
    }
    observed.failback_approved_at = policy
        .annotations()
        .get(FAILBACK_ANNOTATION)
        .and_then(|v| v.trim().parse::<jiff::Timestamp>().ok());
    observed
}

/// Point the prober at the policy's static targets and read their health.
fn probe_static_targets(
    policy: &FallbackPolicy,
    ns: &str,
    observed: &mut Observed,
    pctx: &PolicyCtx,
) {
    let owner = owner_key(ns, &policy.name_any());
    let mut uris: Vec<String> = targets(&policy.spec)
        .filter_map(|t| t.uri.clone())
        .collect();
    uris.sort();
    uris.dedup();
    if uris.is_empty() {
        pctx.ctx.probes.remove(&owner);
        return;
    }
    pctx.ctx.probes.set_targets(
        &owner,
        uris.iter()
            .map(|uri| ProbeTarget {
                uri: uri.clone(),
                spec: ProbeSpec::default(),
                tls: None,
            })
            .collect(),
    );
    for h in pctx.ctx.probes.health(&owner) {
        observed.uris.insert(h.uri, h.state);
    }
}

async fn reconcile(policy: Arc<FallbackPolicy>, pctx: Arc<PolicyCtx>) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let name = policy.name_any();
    let result = pctx
        .ctx
        .instrumented(
            "policy",
            &ns,
            &name,
            reconcile_inner(&policy, &ns, &name, &pctx),
        )
        .await;
    if result.is_ok() {
        pctx.retries.reset(&(ns, name));
    }
    result
}

async fn reconcile_inner(
    policy: &FallbackPolicy,
    ns: &str,
    name: &str,
    pctx: &PolicyCtx,
) -> Result<Action, Error> {
    // Planning on half-filled caches would report healthy objects as missing.
    pctx.trunks
        .wait_until_ready()
        .await
        .map_err(|_| Error::Cache)?;
    pctx.bot_pools
        .wait_until_ready()
        .await
        .map_err(|_| Error::Cache)?;

    let key: Key = (ns.to_string(), name.to_string());
    let uid = policy.uid().unwrap_or_default();
    let mut observed = observe(policy, ns, pctx);
    probe_static_targets(policy, ns, &mut observed, pctx);
    if !pctx.ctx.is_leading() {
        // Warm standby: static targets are probed, nothing is written. The plan is
        // rebuilt from the status on takeover.
        lock(&pctx.plans).remove(&key);
        return Ok(Action::await_change());
    }
    let static_targets = targets(&policy.spec).any(|t| t.uri.is_some());
    if static_targets
        && policy.status.is_some()
        && !pctx.ctx.probes.fully_probed(&owner_key(ns, name))
    {
        // A restarted replica has not measured the static targets yet (they would
        // count as Unknown and leave the routing): write nothing until one full probe
        // round, whose completion the prober announces.
        return Ok(Action::await_change());
    }

    let previous = lock(&pctx.plans)
        .get(&key)
        .filter(|(u, _)| *u == uid)
        .map(|(_, p)| p.clone())
        .or_else(|| policy.status.as_ref().and_then(Plan::from_status));
    // Whole seconds: the API stores times with second precision, and a plan with finer
    // times would never compare equal to the status it was written to.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let measured = super::edges::measure(
        policy,
        ns,
        &observed,
        &pctx.edges,
        &pctx.edge_pods,
        &pctx.ctx.client,
    )
    .await;
    let calls_flowing = measured.as_ref().is_some_and(|(_, live)| !live.is_empty());
    let (measured, live) = measured.unzip();
    observed.live = live.unwrap_or_default();
    let (plan, events) =
        plan_with_drills(policy, ns, name, &observed, previous.as_ref(), now, pctx);

    let format = policy.spec.routing_config_map.format;
    let text = crate::render::render(format, &format!("{ns}/{name}"), &plan);
    let hash = crate::render::content_hash(&text);
    let routing = inspect_config_map(policy, ns, format, &hash, pctx).await?;
    let conflict = match &routing {
        Routing::Conflict(cm) => Some(cm.clone()),
        _ => None,
    };

    // The status first, then the routing: a process killed in between leaves a status
    // that already holds the new region states and transitions, and the next reconcile
    // (of any replica) renders the same routing from it. The other order would lose
    // the transition: the routing would change while the status forgot why.
    let mut status = desired_status(policy, &plan, conflict.as_deref(), &hash, now);
    status.measured = measured;
    if policy.status.as_ref() != Some(&status) {
        let api: Api<FallbackPolicy> = Api::namespaced(pctx.ctx.client.clone(), ns);
        let patch = json!({ "status": status });
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let write = api.patch_status(name, &params, &patch);
        let Some(written) = pctx.ctx.while_leading(write).await else {
            return Ok(Action::await_change());
        };
        written?;
        tracing::debug!("status written");
    }
    // From here on the status holds this plan: a failed routing write below retries
    // from it, and must not replay its transitions and Events.
    publish_events(policy, &events, pctx).await;
    lock(&pctx.plans).insert(key.clone(), (uid.clone(), plan.clone()));
    if routing == Routing::Stale {
        let Some(written) = pctx
            .ctx
            .while_leading(apply_config_map(policy, ns, format, &text, &hash, pctx))
            .await
        else {
            return Ok(Action::await_change());
        };
        written?;
    }

    let mut counts = [0i64; 4];
    for r in &plan.regions {
        counts[state_index(r.state)] += 1;
    }
    lock(&pctx.region_counts).insert(key.clone(), counts);
    publish_region_gauge(pctx);

    let next = plan.next_wakeup;
    if let Some(cm) = conflict {
        return Err(Error::ConfigMapConflict(cm));
    }
    // While calls flow, look again within the edge members' pod-check time, so the
    // calls of a member whose pod died without a goodbye stop counting.
    let idle = if calls_flowing {
        super::edges::POD_CHECK_TTL
    } else {
        Duration::from_secs(300)
    };
    Ok(match next {
        Some(at) => {
            let wait = at.duration_since(jiff::Timestamp::now());
            let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
            Action::requeue(wait.max(Duration::from_millis(50)).min(idle))
        }
        None => Action::requeue(idle),
    })
}

/// Plan with a running FailoverDrill's drain, unless that plan would leave another
/// region out of traffic or a route fail-open: then plan without it, in the same pass,
/// so normal failover takes over with no routing gap (the drill controller then ends
/// the drill as Aborted).
fn plan_with_drills(
    policy: &FallbackPolicy,
    ns: &str,
    name: &str,
    observed: &Observed,
    previous: Option<&Plan>,
    now: jiff::Timestamp,
    pctx: &PolicyCtx,
) -> (Plan, Vec<PlanEvent>) {
    let drills = pctx.drills.state();
    let in_ns = drills
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns))
        .map(|d| &**d);
    if let Some((drill, region, until)) = crate::drill::active_drain(name, in_ns, now)
        && let Some(spec) = crate::drill::drained_spec(&policy.spec, &drill, &region, until, now)
    {
        let drilled = crate::plan::plan(&spec, observed, previous, now);
        if !crate::drill::must_hand_over(&drilled.0, &region) {
            return drilled;
        }
        tracing::warn!(%drill, %region, "a real failure during drill: planning without it");
    }
    crate::plan::plan(&policy.spec, observed, previous, now)
}

/// What the routing ConfigMap holds compared with the rendered routing.
#[derive(Debug, PartialEq, Eq)]
enum Routing {
    /// Ours, and its data is exactly the rendered text (checked against the data, not
    /// only the hash annotation: a hand edit that keeps the annotations is reverted).
    Current,
    /// Missing, different, or adoptable: to be written.
    Stale,
    /// Exists and is not lifeline's: left alone.
    Conflict(String),
}

async fn inspect_config_map(
    policy: &FallbackPolicy,
    ns: &str,
    format: crate::crd::RoutingFormat,
    hash: &str,
    pctx: &PolicyCtx,
) -> Result<Routing, Error> {
    let cm_name = &policy.spec.routing_config_map.name;
    let api: Api<ConfigMap> = Api::namespaced(pctx.ctx.client.clone(), ns);
    let key = crate::render::data_key(format);
    let Some(existing) = api.get_opt(cm_name).await? else {
        return Ok(Routing::Stale);
    };
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == policy.meta().uid.as_ref());
    let managed = existing.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some("lifeline");
    // Adopt only a ConfigMap lifeline created (e.g. before its owner was recreated).
    let adoptable = managed && existing.owner_references().is_empty();
    if !(ours || adoptable) {
        return Ok(Routing::Conflict(cm_name.clone()));
    }
    let same_hash = existing
        .annotations()
        .get(CONTENT_HASH_ANNOTATION)
        .map(String::as_str)
        == Some(hash);
    let same_data = existing.data.as_ref().is_some_and(|d| {
        d.len() == 1
            && d.get(key)
                .is_some_and(|text| crate::render::content_hash(text) == hash)
    });
    if !same_data && same_hash {
        tracing::warn!(configmap = %cm_name, "routing data was edited by hand; restoring it");
    }
    Ok(if ours && same_hash && same_data {
        Routing::Current
    } else {
        Routing::Stale
    })
}

/// Server-side apply the routing ConfigMap.
async fn apply_config_map(
    policy: &FallbackPolicy,
    ns: &str,
    format: crate::crd::RoutingFormat,
    text: &str,
    hash: &str,
    pctx: &PolicyCtx,
) -> Result<(), Error> {
    let cm_name = &policy.spec.routing_config_map.name;
    let api: Api<ConfigMap> = Api::namespaced(pctx.ctx.client.clone(), ns);
    let key = crate::render::data_key(format);
    let owner = policy.controller_owner_ref(&());
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": cm_name,
            "namespace": ns,
            "labels": { MANAGED_BY_LABEL: "lifeline", "lifeline.dev/policy": policy.name_any() },
            "annotations": { CONTENT_HASH_ANNOTATION: hash },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "data": { key: text },
    });
    api.patch(
        cm_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await?;
    pctx.ctx.metrics.configmap_writes.inc();
    tracing::info!(configmap = %cm_name, hash = %hash, "routing written");
    Ok(())
}

/// The status that describes `plan`. Conditions keep their transition times when their
/// status is unchanged, so an unchanged plan gives a status equal to the current one.
fn desired_status(
    policy: &FallbackPolicy,
    plan: &Plan,
    conflict: Option<&str>,
    hash: &str,
    now: jiff::Timestamp,
) -> FallbackPolicyStatus {
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let mut conditions = current.conditions.clone();

    let ready = if let Some(cm) = conflict {
        condition(
            POLICY_READY,
            false,
            reasons::CONFIGMAP_CONFLICT,
            format!("ConfigMap '{cm}' exists and is not managed by lifeline; delete or rename it"),
            generation,
        )
    } else if !plan.missing.is_empty() {
        let names: Vec<String> = plan
            .missing
            .iter()
            .map(|m| format!("{m} not found"))
            .collect();
        condition(
            POLICY_READY,
            false,
            reasons::MISSING_REFERENCE,
            format!("{}; the other targets are routed", names.join("; ")),
            generation,
        )
    } else {
        condition(
            POLICY_READY,
            true,
            reasons::PUBLISHED,
            format!(
                "routing published to ConfigMap '{}'",
                policy.spec.routing_config_map.name
            ),
            generation,
        )
    };
    merge_condition(&mut conditions, ready, now);

    let not_active: Vec<String> = plan
        .regions
        .iter()
        .filter(|r| r.state != RegionState::Active)
        .map(|r| format!("{} {}: {}", r.name, r.state, r.reason))
        .collect();
    let degraded = if plan.fail_open() {
        let routes: Vec<&str> = plan
            .routes
            .iter()
            .filter(|r| r.fail_open)
            .map(|r| r.name.as_str())
            .collect();
        condition(
            POLICY_DEGRADED,
            true,
            reasons::FAIL_OPEN,
            format!(
                "no healthy destination for route(s) {}; keeping the last known good destinations",
                routes.join(", ")
            ),
            generation,
        )
    } else if !not_active.is_empty() {
        condition(
            POLICY_DEGRADED,
            true,
            reasons::REGIONS_NOT_ACTIVE,
            not_active.join("; "),
            generation,
        )
    } else if !plan.missing.is_empty() {
        condition(
            POLICY_DEGRADED,
            true,
            reasons::MISSING_REFERENCE,
            plan.missing
                .iter()
                .map(|m| format!("{m} not found"))
                .collect::<Vec<_>>()
                .join("; "),
            generation,
        )
    } else {
        condition(
            POLICY_DEGRADED,
            false,
            reasons::ALL_REGIONS_ACTIVE,
            "every region is Active",
            generation,
        )
    };
    merge_condition(&mut conditions, degraded, now);

    let capacity = if plan.capacity_shortfalls.is_empty() {
        condition(
            POLICY_CAPACITY_SUFFICIENT,
            true,
            reasons::SUFFICIENT,
            format!(
                "healthy capacity covers {} concurrent calls",
                policy.spec.expected_concurrent_calls
            ),
            generation,
        )
    } else {
        condition(
            POLICY_CAPACITY_SUFFICIENT,
            false,
            reasons::CAPACITY_SHORT,
            plan.capacity_shortfalls.join("; "),
            generation,
        )
    };
    merge_condition(&mut conditions, capacity, now);

    FallbackPolicyStatus {
        measured: None,
        observed_generation: generation,
        conditions,
        active_regions: Some(plan.active_regions()),
        regions: plan.region_statuses(),
        routes: plan.route_statuses(),
        demand: plan.demand.clone(),
        config_map_hash: if conflict.is_some() {
            current.config_map_hash
        } else {
            Some(hash.to_string())
        },
        history: plan.status_history(),
    }
}

/// Events and metrics for what the planner decided.
async fn publish_events(policy: &FallbackPolicy, events: &[PlanEvent], pctx: &PolicyCtx) {
    let reference = policy.object_ref(&());
    for e in events {
        let (type_, reason, note) = match e {
            PlanEvent::Transition {
                region,
                from,
                to,
                reason,
            } => {
                let note = format!("region {region}: {from} → {to}: {reason}");
                if *from == RegionState::Active {
                    pctx.ctx.metrics.failovers.inc();
                    let t = if *to == RegionState::Draining {
                        EventType::Normal
                    } else {
                        EventType::Warning
                    };
                    (t, reasons::FAILOVER, note)
                } else if *to == RegionState::Active {
                    pctx.ctx.metrics.failbacks.inc();
                    (EventType::Normal, reasons::FAILBACK, note)
                } else {
                    (EventType::Normal, reasons::REGION_STATE, note)
                }
            }
            PlanEvent::FailOpenStarted { routes } => (
                EventType::Warning,
                reasons::FAIL_OPEN,
                format!(
                    "no healthy destination for route(s) {}: keeping the last known good destinations",
                    routes.join(", ")
                ),
            ),
            PlanEvent::FailOpenEnded => (
                EventType::Normal,
                reasons::FAIL_OPEN_ENDED,
                "every route has healthy destinations again".to_string(),
            ),
            PlanEvent::TierChanged {
                route,
                from,
                to,
                cause,
            } => {
                let index = |tier: &str| {
                    policy
                        .spec
                        .routes
                        .iter()
                        .find(|r| &r.name == route)
                        .and_then(|r| r.tiers.iter().position(|t| t.name == tier))
                };
                let (type_, reason) = if index(to) > index(from) {
                    (EventType::Warning, reasons::TIER_FALLBACK)
                } else {
                    (EventType::Normal, reasons::TIER_RESTORED)
                };
                (
                    type_,
                    reason,
                    format!("route {route}: tier {from} → {to}: {cause}"),
                )
            }
            PlanEvent::FailbackHeld { region, until } => {
                tracing::debug!(%region, %until, "failback held back by maxTransitionsPerHour");
                continue;
            }
        };
        if type_ == EventType::Warning {
            tracing::warn!(reason, "{note}");
        } else {
            tracing::info!(reason, "{note}");
        }
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Route".to_string(),
            secondary: None,
        };
        if let Some(Err(err)) = pctx
            .ctx
            .while_leading(pctx.ctx.recorder.publish(&event, &reference))
            .await
        {
            tracing::warn!(error = %err, "could not publish event");
        }
    }
}
