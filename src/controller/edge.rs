//! The SipEdge controller, and the [`EdgeBoard`] through which the Trunk and
//! FallbackPolicy controllers read what the edges report.
//!
//! The controller keeps a cache of every `SipEdge` and of the edge pods' metadata
//! (pods labelled [`EDGE_LABEL`], to tell a member whose pod is gone), tells the other
//! controllers when a namespace's edge reports change, and writes its conclusion into
//! each `SipEdge`: the `Isolated` condition and `status.isolatedMembers` (a member that
//! sees every destination fail while other vantages see them answer has lost its own
//! uplink), with an Event and `lifeline_edge_isolated{edge,member}` on each change.
//! The combining rule itself is pure: [`crate::probe::quorum`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use super::runtime::apply_status;
use crate::crd::{EdgeFailureMark, EdgeMember};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::crd::{
    EDGE_ISOLATED, EndpointState, SipEdge, Vantage, VantageStatus, condition, find_condition,
    merge_condition,
};
use crate::probe::EndpointHealth;
use crate::probe::quorum::{self, MemberView, OperatorView};
use crate::telemetry::EdgeMemberLabels;

/// Label on edge pods naming their `SipEdge`; the operator watches the metadata of
/// these pods (only) to tell a member whose pod is gone.
pub const EDGE_LABEL: &str = "lifeline.dev/edge";

/// Condition reasons and Event reasons of this controller.
pub mod reasons {
    /// `Isolated` True / Event: a member lost its uplink.
    pub const UPLINK_LOST: &str = "UplinkLost";
    /// `Isolated` False / Event: no member is cut off (any more).
    pub const CONNECTED: &str = "AllMembersConnected";
}

/// What the edges report, for the controllers that combine vantages. Cheap to clone;
/// empty (no edges) until [`run`] fills it.
#[derive(Clone)]
pub struct EdgeBoard {
    inner: Arc<Board>,
}

struct Board {
    edges: RwLock<Option<Store<SipEdge>>>,
    pods: RwLock<Option<Store<PartialObjectMeta<Pod>>>>,
    /// Namespaces whose edge reports (or edge pods) changed.
    changes: broadcast::Sender<String>,
}

impl Default for EdgeBoard {
    fn default() -> Self {
        Self {
            inner: Arc::new(Board {
                edges: RwLock::new(None),
                pods: RwLock::new(None),
                changes: broadcast::channel(1024).0,
            }),
        }
    }
}

fn read<T: Clone>(l: &RwLock<Option<T>>) -> Option<T> {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl EdgeBoard {
    /// Namespaces whose edge reports changed (a lagging receiver should re-read all).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.inner.changes.subscribe()
    }

    /// Every member that reports in `namespace`, with `fresh` set from its pod.
    pub fn members(&self, namespace: &str) -> Vec<MemberView> {
        let Some(edges) = read(&self.inner.edges) else {
            return Vec::new();
        };
        let pods = read(&self.inner.pods);
        let live: Option<HashSet<String>> = pods.map(|p| {
            p.state()
                .iter()
                .filter(|pod| pod.namespace().as_deref() == Some(namespace))
                .filter(|pod| pod.metadata.deletion_timestamp.is_none())
                .filter_map(|pod| pod.uid())
                .collect()
        });
        let mut out = Vec::new();
        for edge in edges.state() {
            if edge.namespace().as_deref() != Some(namespace) {
                continue;
            }
            let Some(status) = &edge.status else { continue };
            for m in &status.members {
                let fresh = match (&m.pod_uid, &live) {
                    // A process outside a pod (tests, a VM): counts until it removes
                    // its entry on a clean stop.
                    (None, _) => true,
                    (Some(uid), Some(live)) => live.contains(uid),
                    // Pods not watched (yet): believe the report.
                    (Some(_), None) => true,
                };
                out.push(MemberView {
                    edge: edge.name_any(),
                    member: m.name.clone(),
                    fresh,
                    probes: m
                        .probes
                        .iter()
                        .map(|p| (p.uri.clone(), (p.state, p.since.as_ref().map(|t| t.0))))
                        .collect(),
                });
            }
        }
        out
    }

    /// The reports of the edge members that serve the routing ConfigMap `config_map`
    /// of `namespace` and still count: a member whose pod is gone does not (one
    /// outside a pod counts until it removes its entry).
    pub fn reports(&self, namespace: &str, config_map: &str) -> Vec<EdgeMember> {
        let Some(edges) = read(&self.inner.edges) else {
            return Vec::new();
        };
        let fresh: HashSet<String> = self
            .members(namespace)
            .into_iter()
            .filter(|m| m.fresh)
            .map(|m| m.name())
            .collect();
        let mut out = Vec::new();
        for edge in edges.state() {
            if edge.namespace().as_deref() != Some(namespace)
                || edge.spec.routing_config_map != config_map
            {
                continue;
            }
            for m in edge.status.iter().flat_map(|s| &s.members) {
                if fresh.contains(&format!("{}/{}", edge.name_any(), m.name)) {
                    out.push(m.clone());
                }
            }
        }
        out
    }

    /// The failure marks (destinations Kamailio took out of service after real calls
    /// failed) that the believed edge members of `namespace` report: members whose
    /// pod is gone and members that are `Isolated` (their calls fail for their own
    /// reasons) are left out.
    pub fn failure_marks(&self, ctx: &Context, namespace: &str) -> Vec<EdgeFailureMark> {
        let members = self.members(namespace);
        if members.is_empty() {
            return Vec::new();
        }
        let isolated = quorum::isolated(&members, &ctx.probes.uri_states(namespace));
        let believed: HashSet<String> = members
            .iter()
            .filter(|m| m.fresh && !isolated.contains(&m.name()))
            .map(MemberView::name)
            .collect();
        let Some(edges) = read(&self.inner.edges) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for edge in edges.state() {
            if edge.namespace().as_deref() != Some(namespace) {
                continue;
            }
            let Some(status) = &edge.status else { continue };
            for m in &status.members {
                if believed.contains(&format!("{}/{}", edge.name_any(), m.name)) {
                    out.extend(m.failure_marks.iter().cloned());
                }
            }
        }
        out
    }

    /// Combine the operator's `health` of some endpoints with every edge member of
    /// `namespace` under `mode`: the health with the combined states (and the reason
    /// where the operator's own view was overruled), each vantage's view, and the
    /// summary for `kubectl get`.
    pub fn combine(
        &self,
        ctx: &Context,
        namespace: &str,
        mode: Vantage,
        mut health: Vec<EndpointHealth>,
    ) -> (Vec<EndpointHealth>, Vec<VantageStatus>, String) {
        let members = self.members(namespace);
        let operator: Vec<OperatorView> = health
            .iter()
            .map(|h| OperatorView {
                uri: h.uri.clone(),
                state: h.state,
                since: h.last_transition,
            })
            .collect();
        let isolated = if members.is_empty() {
            HashSet::new()
        } else {
            quorum::isolated(&members, &ctx.probes.uri_states(namespace))
        };
        let combined = quorum::combine(mode, &operator, &members, &isolated);
        for (h, v) in health.iter_mut().zip(&combined.verdicts) {
            if let Some(why) = &v.overruled {
                h.state = v.state;
                h.last_transition = v.since.or(h.last_transition);
                h.last_error = Some(match &h.last_error {
                    Some(own) => format!("{why} ({own})"),
                    None => why.clone(),
                });
            }
        }
        (health, combined.vantages, combined.summary)
    }
}

/// Run the SipEdge controller until `shutdown`: fills the context's [`EdgeBoard`].
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let board = ctx.edges.clone();
    let controller = Controller::new(
        ctx.api::<SipEdge>(),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(crate::backoff::WATCH);
    let store = controller.store();
    *board.inner.edges.write().unwrap_or_else(|p| p.into_inner()) = Some(store.clone());

    // Edge pods' metadata: only pods labelled as edge members, only their metadata.
    let (pods, pods_writer) = reflector::store();
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(
            ctx.api::<PartialObjectMeta<Pod>>(),
            watcher::Config::default().labels(EDGE_LABEL).any_semantic(),
        ),
    )
    .backoff(crate::backoff::WATCH)
    .map({
        let board = board.clone();
        let store = store.clone();
        move |event| {
            let mut refs = Vec::new();
            if let Ok(
                watcher::Event::Apply(pod)
                | watcher::Event::Delete(pod)
                | watcher::Event::InitApply(pod),
            ) = &event
                && let Some(ns) = pod.namespace()
            {
                let _ = board.inner.changes.send(ns.clone());
                refs = edges_in(&store, &ns);
            }
            futures::stream::iter(refs)
        }
    })
    .flatten();
    {
        let (board, pods) = (board.clone(), pods.clone());
        tokio::spawn(async move {
            if pods.wait_until_ready().await.is_ok() {
                *board.inner.pods.write().unwrap_or_else(|p| p.into_inner()) = Some(pods);
            }
        });
    }
    // The operator's own probes changing can make an edge member isolated or not.
    let probe_changes = futures::stream::unfold(ctx.probes.subscribe(), |mut rx| async move {
        use tokio::sync::broadcast::error::RecvError;
        match rx.recv().await {
            Ok(key) => Some((Some(key), rx)),
            Err(RecvError::Lagged(_)) => Some((None, rx)),
            Err(RecvError::Closed) => None,
        }
    })
    .flat_map({
        let store = store.clone();
        move |key: Option<String>| {
            let ns = key.and_then(|k| k.split('/').nth(1).map(str::to_string));
            let refs: Vec<ObjectRef<SipEdge>> = store
                .state()
                .iter()
                .filter(|e| ns.is_none() || e.namespace() == ns)
                .map(|e| ObjectRef::from_obj(e.as_ref()))
                .collect();
            futures::stream::iter(refs)
        }
    });
    let ectx = Arc::new(EdgeCtx {
        ctx: ctx.clone(),
        isolated: Mutex::new(HashMap::new()),
        versions: Mutex::new(HashMap::new()),
        retries: super::Retries::default(),
    });
    controller
        .reconcile_on(futures::stream::select(pod_events, probe_changes))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ectx)
        .for_each(|res| {
            if let Err(e) = res {
                tracing::debug!(error = %e, "edge reconcile did not run");
            }
            futures::future::ready(())
        })
        .await;
}

fn edges_in(store: &Store<SipEdge>, ns: &str) -> Vec<ObjectRef<SipEdge>> {
    store
        .state()
        .iter()
        .filter(|e| e.namespace().as_deref() == Some(ns))
        .map(|e| ObjectRef::from_obj(e.as_ref()))
        .collect()
}

struct EdgeCtx {
    ctx: Arc<Context>,
    /// Members with a published `edge_isolated` series, per edge (`ns/name`).
    isolated: Mutex<HashMap<String, HashSet<String>>>,
    /// The resourceVersion of each SipEdge last seen, to tell a new report.
    versions: Mutex<HashMap<(String, String), String>>,
    retries: super::Retries,
}

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request (transient).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace (cannot happen for a namespaced kind).
    #[error("SipEdge without a namespace")]
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

async fn reconcile(edge: Arc<SipEdge>, ectx: Arc<EdgeCtx>) -> Result<Action, Error> {
    let ns = edge.namespace().ok_or(Error::NoNamespace)?;
    let name = edge.name_any();
    // A changed report (a new resourceVersion, not a reconcile woken by the operator's
    // own probes): the Trunks and policies of this namespace combine vantages again
    // (they read from the same cache).
    let version = edge.resource_version();
    let changed = {
        let mut seen = ectx.versions.lock().unwrap_or_else(|p| p.into_inner());
        let key = (ns.clone(), name.clone());
        if seen.get(&key) == version.as_ref() {
            false
        } else {
            match version {
                Some(v) => seen.insert(key, v),
                None => seen.remove(&key),
            };
            true
        }
    };
    if changed {
        let _ = ectx.ctx.edges.inner.changes.send(ns.clone());
    }
    let result = ectx
        .ctx
        .instrumented(
            "edge",
            &ns,
            &name,
            reconcile_inner(&edge, &ectx, &ns, &name),
        )
        .await;
    if result.is_ok() {
        ectx.retries.reset(&(ns, name));
    }
    result
}

async fn reconcile_inner(
    edge: &SipEdge,
    ectx: &EdgeCtx,
    ns: &str,
    name: &str,
) -> Result<Action, Error> {
    let ctx = &ectx.ctx;
    let members = ctx.edges.members(ns);
    let cut = quorum::isolated(&members, &ctx.probes.uri_states(ns));
    let mut isolated: Vec<String> = members
        .iter()
        .filter(|m| m.edge == name && cut.contains(&m.name()))
        .map(|m| m.member.clone())
        .collect();
    isolated.sort();
    publish_gauge(ectx, ns, name, &isolated);
    if !ctx.is_leading() {
        return Ok(Action::await_change());
    }
    let old = edge.status.clone().unwrap_or_default();
    let Some((conditions, message)) = next_conditions(edge, &members, &isolated) else {
        return Ok(Action::await_change());
    };
    // Only the operator's part of the status: every member's entry belongs to that
    // member's own field manager and is left as it is.
    let status = json!({
        "observedGeneration": edge.metadata.generation,
        "conditions": conditions,
        "isolatedMembers": isolated,
        "memberSummary": member_summary(edge, &members),
    });
    let Some(written) = apply_status::<SipEdge, _>(ctx, ns, name, &status).await else {
        return Ok(Action::await_change());
    };
    written?;
    let was = find_condition(&old.conditions, EDGE_ISOLATED).is_some_and(|c| c.status == "True");
    let is = !isolated.is_empty();
    if was != is || (is && old.isolated_members != isolated) {
        let (type_, reason) = if is {
            (EventType::Warning, reasons::UPLINK_LOST)
        } else {
            (EventType::Normal, reasons::CONNECTED)
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Isolation".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &edge.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing an isolation event failed");
        }
        tracing::warn!(edge = %name, isolated = ?isolated, "{message}");
    }
    Ok(Action::await_change())
}

/// The conditions to write and the `Isolated` message, or `None` when nothing changed.
fn next_conditions(
    edge: &SipEdge,
    members: &[MemberView],
    isolated: &[String],
) -> Option<(
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    String,
)> {
    let old = edge.status.clone().unwrap_or_default();
    let name = edge.name_any();
    let message = if isolated.is_empty() {
        "no member sees every destination fail while other vantages see them answer".to_string()
    } else {
        let detail: Vec<String> = isolated
            .iter()
            .map(|m| {
                let down = members
                    .iter()
                    .find(|v| v.edge == name && &v.member == m)
                    .map(|v| {
                        v.probes
                            .values()
                            .filter(|p| p.0 == EndpointState::Down)
                            .count()
                    })
                    .unwrap_or(0);
                format!("{m} sees all {down} destinations fail")
            })
            .collect();
        format!(
            "edge {name} lost its uplink: {} while other vantages see them answer; its probes are not believed and no carrier fails over because of it. Steer calls away from this edge's region (see the runbook 'one edge isolated')",
            detail.join(", ")
        )
    };
    let reason = if isolated.is_empty() {
        reasons::CONNECTED
    } else {
        reasons::UPLINK_LOST
    };
    let mut conditions = old.conditions.clone();
    merge_condition(
        &mut conditions,
        condition(
            EDGE_ISOLATED,
            !isolated.is_empty(),
            reason,
            message.clone(),
            edge.metadata.generation,
        ),
        jiff::Timestamp::now(),
    );
    let same = conditions == old.conditions
        && old.isolated_members == isolated
        && old.member_summary.as_deref() == Some(member_summary(edge, members).as_str())
        && old.observed_generation == edge.metadata.generation;
    (!same).then_some((conditions, message))
}

/// `live/reported` for `kubectl get`: members whose pod still exists (or that run
/// outside a pod) over every entry in `status.members`.
fn member_summary(edge: &SipEdge, members: &[MemberView]) -> String {
    let name = edge.name_any();
    let mine: Vec<&MemberView> = members.iter().filter(|m| m.edge == name).collect();
    let live = mine.iter().filter(|m| m.fresh).count();
    format!("{live}/{}", mine.len())
}

/// Keep `lifeline_edge_isolated` at 1 for isolated members, 0 for the others that
/// were isolated before (series of members that left are removed).
fn publish_gauge(ectx: &EdgeCtx, ns: &str, name: &str, isolated: &[String]) {
    let key = format!("{ns}/{name}");
    let family = &ectx.ctx.metrics.edge_isolated;
    let mut known = ectx.isolated.lock().unwrap_or_else(|p| p.into_inner());
    let seen = known.entry(key.clone()).or_default();
    for m in seen.iter() {
        if !isolated.contains(m) {
            family
                .get_or_create(&EdgeMemberLabels {
                    edge: key.clone(),
                    member: m.clone(),
                })
                .set(0);
        }
    }
    for m in isolated {
        family
            .get_or_create(&EdgeMemberLabels {
                edge: key.clone(),
                member: m.clone(),
            })
            .set(1);
        seen.insert(m.clone());
    }
}

fn error_policy(edge: Arc<SipEdge>, error: &Error, ectx: Arc<EdgeCtx>) -> Action {
    if let Error::Kube(e) = error
        && super::is_unreachable(e)
    {
        ectx.ctx.api_call_failed();
    }
    let key = (edge.namespace().unwrap_or_default(), edge.name_any());
    ectx.ctx
        .reconcile_failed("edge", &ectx.retries, key, error.category(), error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SipEdgeSpec, SipEdgeStatus};

    fn member(name: &str, down: usize) -> MemberView {
        MemberView {
            edge: "edge".into(),
            member: name.into(),
            fresh: true,
            probes: (0..down)
                .map(|i| (format!("sip:{i}"), (EndpointState::Down, None)))
                .collect(),
        }
    }

    #[test]
    fn isolated_condition_is_written_once_and_cleared() {
        let mut edge = SipEdge::new(
            "edge",
            SipEdgeSpec {
                routing_config_map: "routing".into(),
            },
        );
        edge.metadata.generation = Some(1);
        let members = [member("p1", 2), member("p2", 0)];
        let (conditions, message) = next_conditions(&edge, &members, &["p1".to_string()]).unwrap();
        let c = find_condition(&conditions, EDGE_ISOLATED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::UPLINK_LOST)
        );
        assert!(
            message.contains("p1 sees all 2 destinations fail"),
            "{message}"
        );
        edge.status = Some(SipEdgeStatus {
            observed_generation: Some(1),
            conditions: conditions.clone(),
            isolated_members: vec!["p1".into()],
            ..Default::default()
        });
        assert!(next_conditions(&edge, &members, &["p1".to_string()]).is_none());
        let (cleared, _) = next_conditions(&edge, &members, &[]).unwrap();
        let c = find_condition(&cleared, EDGE_ISOLATED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::CONNECTED)
        );
    }
}
