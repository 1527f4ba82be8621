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
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use super::runtime::apply_status;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::crd::{EDGE_ISOLATED, SipEdge, find_condition};
use crate::probe::quorum;
use crate::telemetry::EdgeMemberLabels;

mod board;
mod status;

pub use board::EdgeBoard;
use status::{member_summary, next_conditions};

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

/// Run the SipEdge controller until `shutdown`: fills the context's [`EdgeBoard`].
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let board = ctx.edges.clone();
    let controller = Controller::new(
        ctx.api::<SipEdge>(),
        watcher::Config::default().any_semantic(),
    )
    .trigger_backoff(crate::backoff::WATCH)
    .with_config(super::runtime::controller_config());
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
pub type Error = super::runtime::ReconcileError;

async fn reconcile(edge: Arc<SipEdge>, ectx: Arc<EdgeCtx>) -> Result<Action, Error> {
    let ns = edge.namespace().ok_or(Error::NoNamespace("SipEdge"))?;
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
    ectx.ctx
        .reconcile_failed("edge", &ectx.retries, &*edge, error.category(), error)
}
