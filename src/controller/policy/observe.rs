//! What a policy reconcile reads: only caches (no API request), the prober, and the
//! Trunk statuses this replica decided but has not seen in the cache yet
//! ([`Verdicts`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use super::owner_key;
use crate::controller::runtime::{Guarded, is_ready, parsed};
use crate::controller::trunk::verdicts::Verdicts;
use crate::crd::{BotPool, FailoverDrill, FallbackPolicy, FallbackPolicySpec, Trunk, TrunkStatus};
use crate::plan::{BotPoolObservation, FAILBACK_ANNOTATION, Observed, TrunkObservation};
use crate::probe::ProbeTarget;

/// A cached Trunk with the status to plan from.
pub type PlannedTrunk = (Arc<Guarded<Trunk>>, Option<Arc<TrunkStatus>>);

/// The caches a policy reconcile reads, each filled by one watch.
#[derive(Clone)]
pub struct Caches {
    /// Trunks in the watched namespaces.
    pub trunks: Store<Guarded<Trunk>>,
    /// BotPools in the watched namespaces.
    pub bot_pools: Store<Guarded<BotPool>>,
    /// FailoverDrills: a running one drains its region in the plan.
    pub drills: Store<Guarded<FailoverDrill>>,
    /// lifeline's routing ConfigMaps (label `app.kubernetes.io/managed-by=lifeline`).
    pub config_maps: Store<ConfigMap>,
    /// Every ConfigMap's name and owners (metadata only, stripped), to see a ConfigMap
    /// that is in the way without reading it.
    pub config_map_owners: Store<PartialObjectMeta<ConfigMap>>,
    /// Trunk statuses decided by this replica's Trunk controller, ahead of `trunks`.
    pub verdicts: Arc<Verdicts>,
}

impl Caches {
    /// Whether every cache holds its first list: planning on half-filled caches would
    /// report healthy objects as missing.
    pub fn ready(&self) -> bool {
        is_ready(&self.trunks)
            && is_ready(&self.bot_pools)
            && is_ready(&self.drills)
            && is_ready(&self.config_maps)
            && is_ready(&self.config_map_owners)
    }

    /// The Trunk `name` in `ns` that parses, with the status to plan from: the one this
    /// replica decided if the cache does not hold it yet, else the cached one.
    pub fn trunk(&self, ns: &str, name: &str) -> Option<PlannedTrunk> {
        let cached = self.trunks.get(&ObjectRef::new(name).within(ns))?;
        let trunk = parsed(&cached)?;
        let status = self
            .verdicts
            .status_of(&(ns.to_string(), name.to_string()), trunk);
        Some((cached.clone(), status))
    }

    /// The FailoverDrills in `ns`.
    pub fn drills_in(&self, ns: &str) -> Vec<Arc<Guarded<FailoverDrill>>> {
        self.drills
            .state()
            .into_iter()
            .filter(|d| d.namespace().as_deref() == Some(ns))
            .collect()
    }

    /// The policy's routing ConfigMap: the owners of one by that name if it exists, and
    /// its full version if it is lifeline's.
    pub fn routing_config_map(
        &self,
        policy: &FallbackPolicy,
        ns: &str,
    ) -> (Option<Vec<OwnerReference>>, Option<Arc<ConfigMap>>) {
        let name = &policy.spec.routing_config_map.name;
        let owners = self
            .config_map_owners
            .get(&ObjectRef::new(name).within(ns))
            .map(|m| m.owner_references().to_vec());
        let full = self.config_maps.get(&ObjectRef::new(name).within(ns));
        (owners, full)
    }
}

/// What the policy's namespace holds for it: the planner's input.
pub fn observe(policy: &FallbackPolicy, ns: &str, caches: &Caches) -> Observed {
    let mut observed = Observed::default();
    for t in targets(&policy.spec) {
        if let Some(name) = &t.trunk
            && let Some((trunk, status)) = caches.trunk(ns, name)
            && let Some(trunk) = parsed(&trunk)
        {
            observed.trunks.insert(
                name.clone(),
                TrunkObservation::from_trunk(trunk, status.as_deref()),
            );
        }
        if let Some(name) = &t.bot_pool
            && let Some(pool) = caches.bot_pools.get(&ObjectRef::new(name).within(ns))
            && let Some(pool) = parsed(&pool)
        {
            observed
                .bot_pools
                .insert(name.clone(), BotPoolObservation::from_bot_pool(pool));
        }
    }
    observed.failback_approved_at = policy
        .annotations()
        .get(FAILBACK_ANNOTATION)
        .and_then(|v| v.trim().parse::<jiff::Timestamp>().ok());
    observed
}

/// What a policy's first write waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictWait {
    /// A new policy (no status): its Trunks' first verdicts. A policy that wrote before
    /// them would route from Unknown Trunks and rewrite its routing as each turns Up.
    First,
    /// This replica's first pass of a leadership term (takeover or restart): its
    /// Trunks judged by this replica. The routing a killed leader wrote may be ahead of
    /// the Trunk status it did not get to write; planning from that status would route
    /// back to a carrier found dead a moment before.
    Takeover,
}

/// How long a policy's write waits for the verdicts `wait` names, or `None` when none
/// is missing.
///
/// A Trunk is judged after one probe round (see the Trunk controller), which takes at
/// most its period (the first probe waits a random part of it) plus its timeout. Only
/// existing, enabled, valid Trunks with endpoints are waited for: a missing Trunk is a
/// verdict too. The result is the longest round among them plus
/// [`FIRST_VERDICT_SLACK`]; the caller waits at most that long from the first pass that
/// had to wait.
pub fn verdicts_pending(
    policy: &FallbackPolicy,
    ns: &str,
    caches: &Caches,
    wait: VerdictWait,
) -> Option<std::time::Duration> {
    targets(&policy.spec)
        .filter_map(|t| t.trunk.as_ref())
        .filter_map(|name| Some((name, caches.trunk(ns, name)?)))
        .filter_map(|(name, (trunk, status))| {
            let trunk = parsed(&trunk)?;
            let known = match wait {
                VerdictWait::First => status.is_some_and(|s| !s.endpoints.is_empty()),
                VerdictWait::Takeover => caches.verdicts.is_judged(&(ns.to_string(), name.clone())),
            };
            (!trunk.spec.disabled && !trunk.spec.endpoints.is_empty() && !known)
                .then(|| probe_round(&trunk.spec.probe))
        })
        .max()
        .map(|round| round + FIRST_VERDICT_SLACK)
}

/// How long a policy's write waits for one probe round of its static `uri` targets,
/// or `None` when it has them all measured (`fully_probed`) or has none.
///
/// Until then they count as Unknown: a region whose only target is a `uri` would be
/// routed as Failed (fail-open) and turn Recovering a moment later. The wait is
/// bounded like [`verdicts_pending`]'s, because a target the prober refused (its
/// endpoint quota) is never measured.
pub fn static_targets_pending(
    policy: &FallbackPolicy,
    fully_probed: impl FnOnce() -> bool,
) -> Option<std::time::Duration> {
    let has_static = targets(&policy.spec).any(|t| t.uri.is_some());
    (has_static && !fully_probed()).then(|| probe_round(&policy.spec.probe) + FIRST_VERDICT_SLACK)
}

/// The longest one probe round takes: the first probe waits a random part of the
/// period, then up to its timeout.
fn probe_round(probe: &crate::crd::ProbeSpec) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(probe.period_seconds))
        + std::time::Duration::from_millis(u64::from(probe.timeout_millis))
}

/// Time allowed after a Trunk's probe round for its verdict to reach the policy.
pub const FIRST_VERDICT_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// Point the prober at the policy's static targets and read their health.
pub fn probe_static_targets(
    policy: &FallbackPolicy,
    ns: &str,
    observed: &mut Observed,
    ctx: &crate::controller::Context,
) {
    let probes = &ctx.probes;
    let owner = owner_key(ns, &policy.name_any());
    let mut uris: Vec<String> = targets(&policy.spec)
        .filter_map(|t| t.uri.clone())
        .collect();
    uris.sort();
    uris.dedup();
    if uris.is_empty() {
        probes.remove(&owner);
        return;
    }
    probes.set_targets(
        &owner,
        uris.iter()
            .map(|uri| ProbeTarget {
                uri: uri.clone(),
                spec: policy.spec.probe.clone(),
                tls: None,
            })
            .collect(),
    );
    // The operator's own probes, combined with the edges' (spec.probe.vantage).
    let (health, _, _) =
        ctx.edges
            .combine(ctx, ns, policy.spec.probe.vantage, probes.health(&owner));
    for h in health {
        observed.uris.insert(h.uri, h.state);
    }
}

/// What the SIP edges probe for this policy (`probes.json` in the routing ConfigMap):
/// every tier's trunk endpoints with their Trunk's probe settings and the static `uri`
/// targets with `spec.probe`. Disabled trunks (not probed) and trunks with a CA bundle
/// (the edge cannot read it) are left out; see [`crate::routing::probes`].
pub fn edge_probe_list(policy: &FallbackPolicy, ns: &str, caches: &Caches) -> String {
    use crate::routing::probes::EdgeTarget;
    let mut out = Vec::new();
    for t in targets(&policy.spec) {
        if let Some(uri) = &t.uri {
            out.push(EdgeTarget {
                uri: uri.clone(),
                probe: policy.spec.probe.clone(),
                server_name: None,
            });
        }
        let Some(name) = &t.trunk else { continue };
        let Some(trunk) = caches.trunks.get(&ObjectRef::new(name).within(ns)) else {
            continue;
        };
        let Some(trunk) = parsed(&trunk) else {
            continue;
        };
        let tls = trunk.spec.tls.as_ref();
        if trunk.spec.disabled || tls.is_some_and(|t| t.ca_bundle.is_some()) {
            continue;
        }
        for e in &trunk.spec.endpoints {
            out.push(EdgeTarget {
                uri: e.uri.clone(),
                probe: trunk.spec.probe.clone(),
                server_name: tls.and_then(|t| t.server_name.clone()),
            });
        }
    }
    crate::routing::probes::render(out)
}

/// Every target of every tier of every route.
pub fn targets(spec: &FallbackPolicySpec) -> impl Iterator<Item = &crate::crd::TargetSpec> {
    spec.routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
}

/// Policies in `namespace` (from the store) for which `references` is true.
pub fn referencing(
    store: &Store<Guarded<FallbackPolicy>>,
    namespace: Option<String>,
    references: impl Fn(&FallbackPolicySpec) -> bool,
) -> Vec<ObjectRef<Guarded<FallbackPolicy>>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && parsed(p).is_some_and(|p| references(&p.spec)))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests;
