//! What a BotPool reconcile reads: only caches, each filled by one watch (no API
//! request per pass, however many pod events trigger it).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Key, build, lock};
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
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::{
        CrossVersionObjectReference, HorizontalPodAutoscalerSpec,
    };
    use std::sync::Mutex;

    #[test]
    fn an_hpa_wakes_the_pool_whose_deployment_it_scales() {
        let hpa = |kind: &str| HorizontalPodAutoscaler {
            metadata: kube::api::ObjectMeta {
                name: Some("h".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    kind: kind.into(),
                    name: "bots-cgn".into(),
                    api_version: Some("apps/v1".into()),
                },
                max_replicas: 5,
                ..Default::default()
            }),
            status: None,
        };
        let r = pool_of_hpa(hpa("Deployment")).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("bots-cgn", Some("ns"))
        );
        assert!(pool_of_hpa(hpa("StatefulSet")).is_none());
    }

    #[test]
    fn a_policy_wakes_the_pools_it_names_now_and_before() {
        use crate::plan::fixtures::{bots, policy};
        let named = Mutex::default();
        let make = |pool: &str| {
            let spec = policy()
                .region("cologne", 1)
                .route("inbound", 1, |r| r.tier("bots", [bots(pool)]))
                .build();
            let mut p = FallbackPolicy::new("cc", spec);
            p.metadata.namespace = Some("ns".into());
            kube::core::DeserializeGuard(Ok(p))
        };
        let names = |refs: Vec<ObjectRef<Guarded<BotPool>>>| {
            refs.into_iter().map(|r| r.name).collect::<Vec<_>>()
        };
        assert_eq!(names(pools_of_policy(&named, &make("a"))), ["a"]);
        // Moved to pool b: a is reconciled once more (its demand drops).
        assert_eq!(names(pools_of_policy(&named, &make("b"))), ["a", "b"]);
        assert_eq!(names(pools_of_policy(&named, &make("b"))), ["b"]);
    }
}
