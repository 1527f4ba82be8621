//! Per-object gauges: which Trunk is down, which region of which FallbackPolicy is
//! Failed, which tier a route runs on.
//!
//! The aggregate gauges in [`super::Metrics`] say *that* something is down; on-call
//! needs to know *what*. These gauges carry `namespace` and `name` labels (plus the
//! region, route, state or condition, each from a small fixed or spec-bounded set), so
//! their series grow with the number of objects; `--no-object-metrics` turns them off
//! for clusters where that matters.
//!
//! They are read at scrape time from watch caches (kube-runtime reflector stores) of
//! Trunks and FallbackPolicies, i.e. from the objects' `status`, which the leader
//! writes. Both come from the controllers' own caches (at 10,000 Trunks a second copy
//! cost tens of MiB). So every replica, leader or standby, reports the same values. Alert and dashboard queries aggregate with
//! `max by (namespace, name, ...)` to fold the replicas into one series.

use std::sync::{Arc, OnceLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::controller::runtime::{Guarded, parsed};
use crate::crd::condition::{TRUNK_HEALTHY, find_condition};
use crate::crd::{EndpointState, FallbackPolicy, RegionState, Trunk};

/// The Trunk `Healthy` reason for "not judged yet"; such a trunk is neither up nor down.
const PROBING: &str = crate::controller::trunk::reasons::PROBING;

const ENDPOINT_STATES: [EndpointState; 3] = [
    EndpointState::Up,
    EndpointState::Down,
    EndpointState::Unknown,
];

const REGION_STATES: [RegionState; 4] = [
    RegionState::Active,
    RegionState::Failed,
    RegionState::Draining,
    RegionState::Recovering,
];

/// Names of the per-object gauges (after the `lifeline_` prefix), in output order.
pub const GAUGES: [&str; 7] = [
    "trunk_healthy",
    "trunk_endpoints",
    "trunk_disabled",
    "policy_region_state",
    "policy_region_effective_weight",
    "policy_condition",
    "policy_route_tier",
];

/// Where the per-object gauges read Trunks and FallbackPolicies: the controllers'
/// caches, handed over once the operator has built them (until then the gauges are
/// absent). A watch of their own would be a second copy of every object.
#[derive(Default)]
pub struct Sources {
    trunks: OnceLock<Store<Guarded<Trunk>>>,
    policies: OnceLock<Store<Guarded<FallbackPolicy>>>,
}

impl Sources {
    /// Read the caches of `ctx` (the first call wins).
    pub fn share(&self, ctx: &crate::controller::Context) {
        let _ = self.trunks.set(ctx.trunks.store());
        let _ = self.policies.set(ctx.policies.store());
    }
}

/// The collector behind the per-object gauges: the controllers' caches.
#[derive(Clone)]
pub struct ObjectMetrics {
    sources: Arc<Sources>,
}

impl std::fmt::Debug for ObjectMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectMetrics")
            .field("trunks", &self.sources.trunks.get().map(Store::len))
            .field("policies", &self.sources.policies.get().map(Store::len))
            .finish()
    }
}

/// Register the per-object gauges on `registry`. The caller hands the controllers'
/// caches to the returned sources once it has them.
pub fn register(registry: &mut Registry) -> Arc<Sources> {
    let sources = Arc::<Sources>::default();
    registry.register_collector(Box::new(ObjectMetrics {
        sources: sources.clone(),
    }));
    sources
}

/// Help texts of [`GAUGES`], in the same order.
const HELP: [&str; 7] = [
    "1 when the Trunk's Healthy condition is True (some endpoint answers OPTIONS), 0 when False; absent while disabled or not judged yet",
    "Endpoints of the Trunk by probe state (Up, Down, Unknown), from its status",
    "1 when the Trunk is disabled for maintenance (spec.disabled)",
    "1 for the region's current state (Active, Failed, Draining, Recovering), 0 for the others",
    "The region's share of calls now (0 when it carries none)",
    "1 when the FallbackPolicy condition (Ready, Degraded, CapacitySufficient) is True, 0 when False",
    "Position of the route's active tier in spec.routes[].tiers (0 = preferred), -1 when no tier carries calls",
];

/// One series of the family `metric` is encoding. Labels are borrowed from the cached
/// objects: a scrape at 10,000 Trunks writes 50,000 series, and owned label sets per
/// series made each scrape allocate about 9 MiB at once (heaptrack, scale bench).
fn series<const N: usize>(
    metric: &mut MetricEncoder<'_>,
    labels: [(&str, &str); N],
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(metric.encode_family(&labels)?)
}

fn ns_name<K: Resource>(obj: &K) -> (&str, &str) {
    let meta = obj.meta();
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// The Trunk's `trunk_healthy` value, if it has one.
fn trunk_healthy(t: &Trunk) -> Option<i64> {
    // A disabled trunk is parked on purpose: neither up nor down.
    if t.spec.disabled {
        return None;
    }
    let status = t.status.as_ref()?;
    let value = condition_value(find_condition(&status.conditions, TRUNK_HEALTHY))?;
    (!(value == 0 && has_reason(&status.conditions, TRUNK_HEALTHY, PROBING))).then_some(value)
}

/// The Trunk gauges, in metric order.
fn encode_trunks(
    encoder: &mut DescriptorEncoder<'_>,
    trunks: &[&Trunk],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(GAUGES[0], HELP[0], None, MetricType::Gauge)?;
    for t in trunks {
        if let Some(value) = trunk_healthy(t) {
            let (ns, name) = ns_name(*t);
            let labels = [
                ("namespace", ns),
                ("name", name),
                ("region", &t.spec.region),
            ];
            series(&mut m, labels, value)?;
        }
    }
    let mut m = encoder.encode_descriptor(GAUGES[1], HELP[1], None, MetricType::Gauge)?;
    for t in trunks {
        let Some(status) = t.status.as_ref().filter(|_| !t.spec.disabled) else {
            continue;
        };
        let (ns, name) = ns_name(*t);
        for state in ENDPOINT_STATES {
            let count = status.endpoints.iter().filter(|e| e.state == state).count();
            let labels = [("namespace", ns), ("name", name), ("state", state.as_str())];
            series(&mut m, labels, i64::try_from(count).unwrap_or(i64::MAX))?;
        }
    }
    let mut m = encoder.encode_descriptor(GAUGES[2], HELP[2], None, MetricType::Gauge)?;
    for t in trunks {
        let (ns, name) = ns_name(*t);
        series(
            &mut m,
            [("namespace", ns), ("name", name)],
            i64::from(t.spec.disabled),
        )?;
    }
    Ok(())
}

/// The position of `route`'s active tier in the policy's spec (-1: none carries calls).
fn active_tier_index(p: &FallbackPolicy, route: &crate::crd::RouteStatus) -> i64 {
    let tiers = p
        .spec
        .routes
        .iter()
        .find(|r| r.name == route.name)
        .map(|r| r.tiers.as_slice())
        .unwrap_or_default();
    route
        .active_tier
        .as_deref()
        .and_then(|active| tiers.iter().position(|t| t.name == active))
        .map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX))
}

/// The FallbackPolicy gauges, in metric order.
fn encode_policies(
    encoder: &mut DescriptorEncoder<'_>,
    policies: &[&FallbackPolicy],
) -> Result<(), std::fmt::Error> {
    let with_status = || {
        policies
            .iter()
            .filter_map(|p| Some((ns_name(*p), *p, p.status.as_ref()?)))
    };
    let mut m = encoder.encode_descriptor(GAUGES[3], HELP[3], None, MetricType::Gauge)?;
    for ((ns, name), _, status) in with_status() {
        for region in &status.regions {
            for state in REGION_STATES {
                let labels = [
                    ("namespace", ns),
                    ("name", name),
                    ("region", region.name.as_str()),
                    ("state", state.as_str()),
                ];
                series(&mut m, labels, i64::from(region.state == state))?;
            }
        }
    }
    let mut m = encoder.encode_descriptor(GAUGES[4], HELP[4], None, MetricType::Gauge)?;
    for ((ns, name), _, status) in with_status() {
        for region in &status.regions {
            let labels = [("namespace", ns), ("name", name), ("region", &region.name)];
            series(&mut m, labels, i64::from(region.effective_weight))?;
        }
    }
    let mut m = encoder.encode_descriptor(GAUGES[5], HELP[5], None, MetricType::Gauge)?;
    for ((ns, name), _, status) in with_status() {
        for c in &status.conditions {
            if let Some(value) = condition_value(Some(c)) {
                let labels = [("namespace", ns), ("name", name), ("condition", &c.type_)];
                series(&mut m, labels, value)?;
            }
        }
    }
    let mut m = encoder.encode_descriptor(GAUGES[6], HELP[6], None, MetricType::Gauge)?;
    for ((ns, name), p, status) in with_status() {
        for route in &status.routes {
            let labels = [("namespace", ns), ("name", name), ("route", &route.name)];
            series(&mut m, labels, active_tier_index(p, route))?;
        }
    }
    Ok(())
}

fn condition_value(c: Option<&Condition>) -> Option<i64> {
    match c.map(|c| c.status.as_str()) {
        Some("True") => Some(1),
        Some("False") => Some(0),
        _ => None,
    }
}

fn has_reason(conditions: &[Condition], type_: &str, reason: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.reason == reason)
}

/// What a cache holds now (nothing before the operator handed it over).
fn cached<K: Resource + Clone>(source: &OnceLock<Store<K>>) -> Vec<Arc<K>>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    source.get().map(Store::state).unwrap_or_default()
}

/// The valid objects of a cache, by namespace and name (stable output order).
fn sorted<K: Resource>(cached: &[Arc<Guarded<K>>]) -> Vec<&K> {
    let mut objects: Vec<&K> = cached.iter().filter_map(|o| parsed(o)).collect();
    objects.sort_by(|a, b| {
        (&a.meta().namespace, &a.meta().name).cmp(&(&b.meta().namespace, &b.meta().name))
    });
    objects
}

impl ObjectMetrics {
    /// Collector over given stores (tests build the stores by hand).
    pub fn from_stores(
        trunks: Store<Guarded<Trunk>>,
        policies: Store<Guarded<FallbackPolicy>>,
    ) -> Self {
        let sources = Sources::default();
        let _ = sources.trunks.set(trunks);
        let _ = sources.policies.set(policies);
        Self {
            sources: Arc::new(sources),
        }
    }
}

impl Collector for ObjectMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (trunks, policies) = (cached(&self.sources.trunks), cached(&self.sources.policies));
        encode_trunks(&mut encoder, &sorted(&trunks))?;
        encode_policies(&mut encoder, &sorted(&policies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn trunk(name: &str, disabled: bool, healthy: Option<(&str, &str)>, states: &[&str]) -> Trunk {
        let mut t: Trunk = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
            "metadata": {"name": name, "namespace": "cc"},
            "spec": {"region": "cologne", "medium": "FixedLine", "disabled": disabled,
                     "endpoints": [{"uri": "sip:127.0.0.1:5060", "weight": 1}]},
        }))
        .expect("trunk");
        let conditions: Vec<_> = healthy
            .map(|(status, reason)| {
                json!({"type": "Healthy", "status": status, "reason": reason,
                "message": "", "lastTransitionTime": "2025-02-12T06:41:07Z"})
            })
            .into_iter()
            .collect();
        let endpoints: Vec<_> = states
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"uri": format!("sip:127.0.0.{i}:5060"), "state": s, "consecutiveFailures": 0}))
            .collect();
        t.status = Some(
            serde_json::from_value(
                json!({"conditions": conditions, "healthyEndpoints": 0, "endpoints": endpoints}),
            )
            .expect("status"),
        );
        t
    }

    fn store<K>(objects: Vec<K>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let (reader, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for o in objects {
            writer.apply_watcher_event(&Event::InitApply(o));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    fn scrape(trunks: Vec<Trunk>, policies: Vec<FallbackPolicy>) -> String {
        let mut registry = Registry::with_prefix("lifeline");
        registry.register_collector(Box::new(ObjectMetrics::from_stores(
            store(
                trunks
                    .into_iter()
                    .map(|t| kube::core::DeserializeGuard(Ok(t)))
                    .collect(),
            ),
            store(
                policies
                    .into_iter()
                    .map(|p| kube::core::DeserializeGuard(Ok(p)))
                    .collect(),
            ),
        )));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn a_down_trunk_is_named() {
        let text = scrape(
            vec![
                trunk(
                    "cologne-fixed",
                    false,
                    Some(("False", "AllEndpointsDown")),
                    &["Down", "Down"],
                ),
                trunk(
                    "cologne-mobile",
                    false,
                    Some(("True", "AllEndpointsUp")),
                    &["Up"],
                ),
                trunk("new", false, Some(("False", PROBING)), &["Unknown"]),
                trunk("parked", true, Some(("False", "Disabled")), &[]),
            ],
            vec![],
        );
        for line in [
            r#"lifeline_trunk_healthy{namespace="cc",name="cologne-fixed",region="cologne"} 0"#,
            r#"lifeline_trunk_healthy{namespace="cc",name="cologne-mobile",region="cologne"} 1"#,
            r#"lifeline_trunk_endpoints{namespace="cc",name="cologne-fixed",state="Down"} 2"#,
            r#"lifeline_trunk_endpoints{namespace="cc",name="cologne-fixed",state="Up"} 0"#,
            r#"lifeline_trunk_endpoints{namespace="cc",name="new",state="Unknown"} 1"#,
            r#"lifeline_trunk_disabled{namespace="cc",name="parked"} 1"#,
            r#"lifeline_trunk_disabled{namespace="cc",name="cologne-fixed"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"lifeline_trunk_healthy{namespace="cc",name="new""#),
            "a trunk still probing is neither up nor down:\n{text}"
        );
        assert!(
            !text.contains(r#"lifeline_trunk_healthy{namespace="cc",name="parked""#),
            "a disabled trunk is neither up nor down:\n{text}"
        );
    }

    #[test]
    fn failed_region_and_fallback_tier_are_named() {
        let policy: FallbackPolicy = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
            "metadata": {"name": "hotline", "namespace": "cc"},
            "spec": {
                "routingConfigMap": {"name": "sip-routing"},
                "expectedConcurrentCalls": 100,
                "regions": [{"name": "cologne", "weight": 50}, {"name": "frankfurt", "weight": 50}],
                "routes": [{"name": "main", "setId": 1, "tiers": [
                    {"name": "carriers", "targets": [{"trunk": "cologne-fixed"}]},
                    {"name": "bots", "targets": [{"uri": "sip:127.0.0.9:5060", "region": "cologne"}]}]}],
            },
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Published", "message": "", "lastTransitionTime": "2025-02-12T06:41:07Z"},
                    {"type": "CapacitySufficient", "status": "False", "reason": "CapacityShort", "message": "", "lastTransitionTime": "2025-02-12T06:41:07Z"},
                    {"type": "Degraded", "status": "Unknown", "reason": "Waiting", "message": "", "lastTransitionTime": "2025-02-12T06:41:07Z"}],
                "regions": [
                    {"name": "cologne", "state": "Failed", "effectiveWeight": 0},
                    {"name": "frankfurt", "state": "Active", "effectiveWeight": 100}],
                "routes": [{"name": "main", "setId": 1, "activeTier": "bots", "destinations": []}],
            },
        }))
        .expect("policy");
        let text = scrape(vec![], vec![policy]);
        let families: Vec<_> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE lifeline_"))
            .filter_map(|l| l.strip_suffix(" gauge"))
            .collect();
        assert_eq!(families, GAUGES, "{text}");
        for line in [
            r#"lifeline_policy_region_state{namespace="cc",name="hotline",region="cologne",state="Failed"} 1"#,
            r#"lifeline_policy_region_state{namespace="cc",name="hotline",region="cologne",state="Active"} 0"#,
            r#"lifeline_policy_region_state{namespace="cc",name="hotline",region="frankfurt",state="Active"} 1"#,
            r#"lifeline_policy_region_effective_weight{namespace="cc",name="hotline",region="frankfurt"} 100"#,
            r#"lifeline_policy_condition{namespace="cc",name="hotline",condition="Ready"} 1"#,
            r#"lifeline_policy_condition{namespace="cc",name="hotline",condition="CapacitySufficient"} 0"#,
            r#"lifeline_policy_route_tier{namespace="cc",name="hotline",route="main"} 1"#,
            "# TYPE lifeline_policy_region_state gauge",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"condition="Degraded""#),
            "an Unknown condition has no value:\n{text}"
        );
    }
}
