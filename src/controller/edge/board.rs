//! The observe side: the [`EdgeBoard`], a shared read of every `SipEdge` report and
//! of the edge pods' metadata, through which the Trunk and FallbackPolicy controllers
//! combine vantages without an API read of their own.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Store;
use tokio::sync::broadcast;

use super::super::Context;
use crate::crd::{EdgeFailureMark, EdgeMember, SipEdge, Vantage, VantageStatus};
use crate::probe::EndpointHealth;
use crate::probe::quorum::{self, MemberView, OperatorView};

/// What the edges report, for the controllers that combine vantages. Cheap to clone;
/// empty (no edges) until [`run`] fills it.
#[derive(Clone)]
pub struct EdgeBoard {
    pub(super) inner: Arc<Board>,
}

pub(super) struct Board {
    pub(super) edges: RwLock<Option<Store<SipEdge>>>,
    pub(super) pods: RwLock<Option<Store<PartialObjectMeta<Pod>>>>,
    /// Namespaces whose edge reports (or edge pods) changed.
    pub(super) changes: broadcast::Sender<String>,
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
