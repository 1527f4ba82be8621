//! What a BotPool reconcile reads: only caches, each filled by one watch (no API
//! request per pass, however many pod events trigger it).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Key, build, lock};
use crate::controller::runtime::{Guarded, is_ready, parsed};
use crate::crd::{BotPool, FIELD_MANAGER, FallbackPolicy};

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

    /// Whether a policy in `ns` routes to the pool `name` and has not planned yet (see
    /// [`awaits_first_plan`]).
    pub fn awaits_first_plan(&self, ns: &str, name: &str) -> bool {
        let policies = self.policies.state();
        awaits_first_plan(
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

/// Keep of a Deployment what a reconcile reads: its metadata (owner, generation, the
/// scale-down annotation), `spec.replicas` and whether lifeline applies that field.
/// The pod template, selector and status are most of its size and never read.
pub fn strip_deployment(deployment: &mut Deployment) {
    keep_own_claims(&mut deployment.metadata, &["f:replicas"]);
    deployment.spec = deployment.spec.take().map(|s| DeploymentSpec {
        replicas: s.replicas,
        ..DeploymentSpec::default()
    });
    deployment.status = None;
}

/// Keep of a Service only its metadata: a reconcile compares its `resourceVersion`.
pub fn strip_service(service: &mut Service) {
    keep_own_claims(&mut service.metadata, &[]);
    service.spec = None;
    service.status = None;
}

/// Keep of a PodDisruptionBudget only its metadata: a reconcile compares its
/// `generation`.
pub fn strip_pdb(pdb: &mut PodDisruptionBudget) {
    keep_own_claims(&mut pdb.metadata, &[]);
    pdb.spec = None;
    pdb.status = None;
}

/// Keep of an HPA (the user's object) what the floor reads: its target, bounds and
/// annotations, and whether lifeline applies `spec.minReplicas`. Its metrics,
/// behaviour, status and kubectl's last-applied copy are dropped.
pub fn strip_hpa(hpa: &mut HorizontalPodAutoscaler) {
    keep_own_claims(&mut hpa.metadata, &["f:minReplicas"]);
    if let Some(annotations) = hpa.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    if let Some(spec) = hpa.spec.as_mut() {
        spec.metrics = None;
        spec.behavior = None;
    }
    hpa.status = None;
}

/// kubectl's copy of the whole object it last applied (client-side apply).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Reduce `meta.managedFields` to what [`super::apply::applies_spec_field`] asks:
/// lifeline's own Apply entries, each naming only those of `spec_fields` it holds.
/// The full field sets of every manager would be kept for nothing.
fn keep_own_claims(meta: &mut ObjectMeta, spec_fields: &[&str]) {
    let kept: Vec<ManagedFieldsEntry> = meta
        .managed_fields
        .take()
        .into_iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| {
            let spec = m.fields_v1.as_ref()?.0.get("f:spec")?;
            let held: serde_json::Map<String, serde_json::Value> = spec_fields
                .iter()
                .filter(|f| spec.get(**f).is_some())
                .map(|f| (f.to_string(), serde_json::json!({})))
                .collect();
            (!held.is_empty()).then(|| ManagedFieldsEntry {
                manager: m.manager,
                operation: m.operation,
                fields_v1: Some(FieldsV1(serde_json::json!({ "f:spec": held }))),
                ..ManagedFieldsEntry::default()
            })
        })
        .collect();
    meta.managed_fields = (!kept.is_empty()).then_some(kept);
}

/// The pool a bot pod belongs to (its pool label).
pub fn pool_of_pod(pod: Pod) -> Option<ObjectRef<Guarded<BotPool>>> {
    let name = pod.labels().get(build::POOL_LABEL)?;
    Some(ObjectRef::new(name).within(pod.namespace().as_deref()?))
}

/// The pool whose Deployment an HPA scales (the Deployment is named after the pool).
pub fn pool_of_hpa(hpa: HorizontalPodAutoscaler) -> Option<ObjectRef<Guarded<BotPool>>> {
    let target = &hpa.spec.as_ref()?.scale_target_ref;
    let ns = hpa.namespace()?;
    (target.kind == "Deployment").then(|| ObjectRef::new(&target.name).within(&ns))
}

/// Whether one of `policies` routes to the pool `name` and has no status yet: its
/// first plan, with the pool's demand, is still to come.
pub fn awaits_first_plan<'a>(
    policies: impl IntoIterator<Item = &'a FallbackPolicy>,
    name: &str,
) -> bool {
    policies.into_iter().any(|p| {
        p.status.is_none()
            && crate::controller::policy::observe::targets(&p.spec)
                .any(|t| t.bot_pool.as_deref() == Some(name))
    })
}

/// Pools a policy concerns: those in its demand and those its routes target, now or
/// at its previous version.
pub fn pools_of_policy(
    named: &Mutex<HashMap<Key, BTreeSet<String>>>,
    policy: &Guarded<FallbackPolicy>,
) -> Vec<ObjectRef<Guarded<BotPool>>> {
    let (Some(ns), Some(parsed)) = (policy.namespace(), parsed(policy)) else {
        return Vec::new();
    };
    let mut now: BTreeSet<String> = parsed
        .spec
        .routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
        .filter_map(|t| t.bot_pool.clone())
        .collect();
    if let Some(status) = &parsed.status {
        now.extend(status.demand.iter().map(|d| d.bot_pool.clone()));
    }
    let mut all = now.clone();
    if let Some(before) = lock(named).insert((ns.clone(), policy.name_any()), now) {
        all.extend(before);
    }
    all.into_iter()
        .map(|name| ObjectRef::new(&name).within(&ns))
        .collect()
}

#[cfg(test)]
mod tests;
