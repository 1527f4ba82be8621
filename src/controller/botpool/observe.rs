//! What a BotPool reconcile reads: only caches, each filled by one watch (no API
//! request per pass, however many pod events trigger it).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::build;
use crate::controller::runtime::{Guarded, is_ready, parsed};
use crate::crd::{BotPool, FallbackPolicy};

/// A pool's Deployment, Service and PDB as cached (each may not exist yet).
pub type Owned = (
    Option<Arc<Deployment>>,
    Option<Arc<Service>>,
    Option<Arc<PodDisruptionBudget>>,
);

/// The caches a BotPool reconcile reads.
#[derive(Clone)]
pub struct Caches {
    /// FallbackPolicies: their status assigns demand to pools.
    pub policies: Store<Guarded<FallbackPolicy>>,
    /// lifeline's Deployments (label `app.kubernetes.io/managed-by=lifeline`).
    pub deployments: Store<Deployment>,
    /// lifeline's Services.
    pub services: Store<Service>,
    /// lifeline's PodDisruptionBudgets.
    pub pdbs: Store<PodDisruptionBudget>,
    /// Bot pods (label `app.kubernetes.io/name=lifeline-bot`), stripped to what the
    /// status needs (see [`strip_pod`]).
    pub pods: Store<Pod>,
    /// HorizontalPodAutoscalers (users make them; they carry no label of ours).
    pub hpas: Store<HorizontalPodAutoscaler>,
}

impl Caches {
    /// Whether every cache holds its first list: a pool must not be sized from a
    /// half-filled policy cache (its demand would drop) or an empty pod cache.
    pub fn ready(&self) -> bool {
        is_ready(&self.policies)
            && is_ready(&self.deployments)
            && is_ready(&self.services)
            && is_ready(&self.pdbs)
            && is_ready(&self.pods)
            && is_ready(&self.hpas)
    }

    /// Concurrent calls the policies in `ns` assign to the pool `name`.
    pub fn demand(&self, ns: &str, name: &str) -> u32 {
        let policies = self.policies.state();
        super::demand_for(
            policies
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(ns))
                .filter_map(|p| parsed(p)),
            name,
        )
    }

    /// The pool's Deployment, Service and PDB (named after the pool).
    pub fn owned(&self, ns: &str, name: &str) -> Owned {
        (
            self.deployments.get(&ObjectRef::new(name).within(ns)),
            self.services.get(&ObjectRef::new(name).within(ns)),
            self.pdbs.get(&ObjectRef::new(name).within(ns)),
        )
    }

    /// The pool's pods: in its namespace, matching its selector.
    pub fn pods_of(&self, pool: &BotPool, ns: &str) -> Vec<Arc<Pod>> {
        let selector = build::selector_labels(pool);
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(ns))
            .filter(|p| {
                let labels = p.labels();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect()
    }

    /// The HPA in `ns` that scales the Deployment `deployment`.
    pub fn hpa_for(&self, ns: &str, deployment: &str) -> Option<Arc<HorizontalPodAutoscaler>> {
        self.hpas.state().into_iter().find(|h| {
            h.namespace().as_deref() == Some(ns)
                && h.spec.as_ref().is_some_and(|s| {
                    s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == deployment
                })
        })
    }
}

/// Keep of a bot pod only what [`super::observe_pods`] reads (labels, deletion,
/// phase, readiness, IP): a pod's spec and managed fields are most of its size.
pub fn strip_pod(pod: &mut Pod) {
    pod.spec = None;
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        conditions: s.conditions,
        pod_ip: s.pod_ip,
        ..PodStatus::default()
    });
}
