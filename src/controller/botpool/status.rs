//! What a pool's status should say: pods counted, demand summed, conditions decided.
//! Plain functions over plain data; the reconciler fetches and writes.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::scaling::{Recommendation, Sizing};
use crate::crd::{
    BOTPOOL_AVAILABLE, BOTPOOL_SCALING_LIMITED, BotPool, BotPoolStatus, FallbackPolicy, condition,
    merge_condition,
};

/// Condition reasons.
pub mod reason {
    /// Enough bots are ready.
    pub const MINIMUM_READY: &str = "MinimumReplicasReady";
    /// Fewer bots ready than needed.
    pub const MINIMUM_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
    /// The API server rejected an owned object built from the spec.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// `replicas.max` covers the demand.
    pub const WITHIN_BOUNDS: &str = "WithinBounds";
    /// `replicas.max` is too low for the demand.
    pub const MAX_REPLICAS: &str = "MaxReplicasReached";
    /// HpaFloor mode without an HPA targeting the Deployment.
    pub const HPA_NOT_FOUND: &str = "HpaNotFound";
    /// The HPA's `maxReplicas` caps the floor.
    pub const HPA_MAX_REPLICAS: &str = "HpaMaxReplicasReached";
}

/// What the pods of a pool look like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// Pods that exist and are not terminating.
    pub replicas: u32,
    /// Of those, pods that are Ready and have an IP.
    pub ready: u32,
    /// `ip:port` of the ready pods, sorted by address.
    pub endpoints: Vec<String>,
}

/// Count pods and collect ready endpoints.
pub fn observe_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>, port: i32) -> PodCounts {
    let mut counts = PodCounts::default();
    let mut ready: Vec<IpAddr> = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = &pod.status else {
            counts.replicas += 1;
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        counts.replicas += 1;
        let is_ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let ip = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok());
        if let (true, Some(ip)) = (is_ready, ip) {
            ready.push(ip);
        }
    }
    ready.sort();
    counts.ready = u32::try_from(ready.len()).unwrap_or(u32::MAX);
    counts.endpoints = ready
        .into_iter()
        .map(|ip| std::net::SocketAddr::new(ip, port.clamp(0, 65535) as u16).to_string())
        .collect();
    counts
}

/// Concurrent calls the policies assign to pool `name`.
pub fn demand_for<'a>(policies: impl IntoIterator<Item = &'a FallbackPolicy>, name: &str) -> u32 {
    policies
        .into_iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.demand)
        .filter(|d| d.bot_pool == name)
        .fold(0u32, |sum, d| sum.saturating_add(d.concurrent_calls))
}

/// Sizing settings from the spec.
pub fn sizing(pool: &BotPool) -> Sizing {
    Sizing {
        calls_per_replica: pool.spec.calls_per_replica,
        headroom_percent: pool.spec.scaling.headroom_percent,
        min: pool.spec.replicas.min,
        max: pool.spec.replicas.max,
    }
}

/// How scaling went, for the `ScalingLimited` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Nothing limits the pool.
    None,
    /// `replicas.max` caps it.
    MaxReplicas,
    /// No HPA targets the Deployment (HpaFloor mode).
    HpaNotFound(String),
    /// The HPA's `maxReplicas` caps the floor.
    HpaMax(i32),
}

/// Inputs of the status computation.
pub struct Observed<'a> {
    /// The pool.
    pub pool: &'a BotPool,
    /// Demand in calls.
    pub demand: u32,
    /// The recommendation for that demand.
    pub recommendation: Recommendation,
    /// The replica target lifeline runs (after stabilization).
    pub target: u32,
    /// Pods.
    pub pods: PodCounts,
    /// What limits scaling.
    pub limit: Limit,
    /// API server rejection of the owned objects, if any.
    pub invalid: Option<String>,
}

/// The status a pool should have. Keeps transition times of unchanged conditions.
pub fn desired_status(obs: &Observed<'_>, now: jiff::Timestamp) -> BotPoolStatus {
    let pool = obs.pool;
    let generation = pool.metadata.generation;
    let old = pool.status.clone().unwrap_or_default();
    let per_replica = pool.spec.calls_per_replica;
    let min = pool.spec.replicas.min;
    let mut conditions = old.conditions.clone();

    let available = match &obs.invalid {
        Some(message) => condition(
            BOTPOOL_AVAILABLE,
            false,
            reason::INVALID_SPEC,
            format!("the API server rejected the pool's objects; fix the BotPool spec: {message}"),
            generation,
        ),
        None => {
            let ok = obs.pods.ready >= 1 && obs.pods.ready >= min;
            condition(
                BOTPOOL_AVAILABLE,
                ok,
                if ok {
                    reason::MINIMUM_READY
                } else {
                    reason::MINIMUM_UNAVAILABLE
                },
                format!(
                    "{} of {} bots ready (replicas.min {min}, desired {})",
                    obs.pods.ready, obs.pods.replicas, obs.target
                ),
                generation,
            )
        }
    };
    merge_condition(&mut conditions, available, now);

    let rec = obs.recommendation;
    let short = |cap_replicas: u64| {
        rec.calls_with_headroom
            .saturating_sub(cap_replicas * u64::from(per_replica))
    };
    let limited = match &obs.limit {
        Limit::None | Limit::MaxReplicas if rec.shortfall_calls == 0 => condition(
            BOTPOOL_SCALING_LIMITED,
            false,
            reason::WITHIN_BOUNDS,
            format!(
                "demand {} calls ({} with {}% headroom) fits within replicas.max {}",
                obs.demand,
                rec.calls_with_headroom,
                pool.spec.scaling.headroom_percent,
                pool.spec.replicas.max
            ),
            generation,
        ),
        Limit::None | Limit::MaxReplicas => condition(
            BOTPOOL_SCALING_LIMITED,
            true,
            reason::MAX_REPLICAS,
            format!(
                "{} calls short: demand {} calls ({} with {}% headroom) needs more than replicas.max {} × {per_replica} calls; raise replicas.max",
                rec.shortfall_calls,
                obs.demand,
                rec.calls_with_headroom,
                pool.spec.scaling.headroom_percent,
                pool.spec.replicas.max
            ),
            generation,
        ),
        Limit::HpaNotFound(deployment) => condition(
            BOTPOOL_SCALING_LIMITED,
            true,
            reason::HPA_NOT_FOUND,
            format!(
                "scaling.mode is HpaFloor but no HorizontalPodAutoscaler targets Deployment {deployment}; create one or use mode Direct"
            ),
            generation,
        ),
        Limit::HpaMax(max) => condition(
            BOTPOOL_SCALING_LIMITED,
            true,
            reason::HPA_MAX_REPLICAS,
            format!(
                "{} calls short: the floor {} is capped by the HPA's maxReplicas {max}; raise it",
                short(u64::try_from(*max).unwrap_or(0)),
                rec.replicas
            ),
            generation,
        ),
    };
    merge_condition(&mut conditions, limited, now);

    BotPoolStatus {
        observed_generation: generation,
        conditions,
        replicas: obs.pods.replicas,
        ready_replicas: obs.pods.ready,
        desired_replicas: obs.target,
        demand: obs.demand,
        ready_capacity: obs.pods.ready.saturating_mul(per_replica),
        endpoints: obs.pods.endpoints.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::botpool::scaling;
    use crate::crd::{BotDemand, BotPoolSpec, FallbackPolicyStatus, find_condition};
    use serde_json::json;

    fn pool(yaml: &str) -> BotPool {
        let spec: BotPoolSpec = serde_norway::from_str(yaml).unwrap();
        let mut bp = BotPool::new("bots", spec);
        bp.metadata.namespace = Some("cc".into());
        bp.metadata.generation = Some(3);
        bp
    }

    fn pod(ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("p-{}", ip.unwrap_or("none")),
                "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z"),
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            }
        }))
        .unwrap()
    }

    #[test]
    fn only_ready_pods_with_an_ip_are_endpoints_sorted_by_address() {
        let pods = [
            pod(Some("127.1.0.10"), true, false),
            pod(Some("127.1.0.2"), true, false),
            pod(Some("127.1.0.3"), false, false),
            pod(None, true, false),
            pod(Some("127.1.0.4"), true, true),
        ];
        let counts = observe_pods(&pods, 5060);
        assert_eq!(counts.replicas, 4);
        assert_eq!(counts.ready, 2);
        assert_eq!(counts.endpoints, vec!["127.1.0.2:5060", "127.1.0.10:5060"]);
        let v6 = observe_pods(&[pod(Some("fd00::1"), true, false)], 5060);
        assert_eq!(v6.endpoints, vec!["[fd00::1]:5060"]);
    }

    #[test]
    fn demand_sums_entries_naming_the_pool() {
        let policy = |entries: &[(&str, u32)]| {
            let mut p: FallbackPolicy = serde_json::from_value(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
                "metadata": {"name": "p"},
                "spec": {"routingConfigMap": {"name": "r"}, "regions": [{"name": "a"}],
                         "routes": [{"name": "in", "setId": 1, "tiers": [{"name": "t", "targets": [{"botPool": "bots"}]}]}]}
            }))
            .unwrap();
            p.status = Some(FallbackPolicyStatus {
                demand: entries
                    .iter()
                    .map(|(n, c)| BotDemand {
                        bot_pool: n.to_string(),
                        concurrent_calls: *c,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
            p
        };
        let policies = [
            policy(&[("bots", 30), ("other", 99)]),
            policy(&[("bots", 12)]),
        ];
        assert_eq!(demand_for(&policies, "bots"), 42);
        assert_eq!(demand_for(&policies, "nobody"), 0);
        assert_eq!(
            demand_for(&[policy(&[("bots", u32::MAX), ("bots", 5)])], "bots"),
            u32::MAX
        );
    }

    fn observed<'a>(bp: &'a BotPool, demand: u32, ready: u32, limit: Limit) -> Observed<'a> {
        let rec = scaling::recommend(demand, sizing(bp));
        Observed {
            pool: bp,
            demand,
            recommendation: rec,
            target: rec.replicas,
            pods: PodCounts {
                replicas: ready,
                ready,
                endpoints: (0..ready).map(|i| format!("127.1.0.{i}:5060")).collect(),
            },
            limit,
            invalid: None,
        }
    }

    #[test]
    fn status_reports_capacity_and_availability() {
        let bp = pool("region: a\nimage: x\ncallsPerReplica: 10\nreplicas: {min: 2, max: 5}\n");
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let s = desired_status(&observed(&bp, 25, 3, Limit::None), now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            (s.ready_replicas, s.ready_capacity, s.desired_replicas),
            (3, 30, 3)
        );
        assert!(crate::crd::is_true(&s.conditions, BOTPOOL_AVAILABLE));
        assert!(!crate::crd::is_true(&s.conditions, BOTPOOL_SCALING_LIMITED));
        let s = desired_status(&observed(&bp, 0, 1, Limit::None), now);
        assert!(
            !crate::crd::is_true(&s.conditions, BOTPOOL_AVAILABLE),
            "1 ready < min 2"
        );
    }

    #[test]
    fn scaling_limited_names_the_shortfall_in_calls() {
        let bp = pool("region: a\nimage: x\ncallsPerReplica: 10\nreplicas: {min: 1, max: 5}\n");
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        // 100 calls + 20 % = 120; 5 × 10 = 50 → 70 short.
        let s = desired_status(&observed(&bp, 100, 5, Limit::MaxReplicas), now);
        let c = find_condition(&s.conditions, BOTPOOL_SCALING_LIMITED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reason::MAX_REPLICAS)
        );
        assert!(c.message.starts_with("70 calls short"), "{}", c.message);
        let s = desired_status(&observed(&bp, 20, 3, Limit::HpaMax(2)), now);
        let c = find_condition(&s.conditions, BOTPOOL_SCALING_LIMITED).unwrap();
        assert_eq!(c.reason, reason::HPA_MAX_REPLICAS);
        assert!(c.message.starts_with("4 calls short"), "{}", c.message);
    }

    #[test]
    fn unchanged_status_is_equal_so_nothing_is_written() {
        let mut bp = pool("region: a\nimage: x\ncallsPerReplica: 10\nreplicas: {min: 2, max: 5}\n");
        let t0 = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let first = desired_status(&observed(&bp, 25, 3, Limit::None), t0);
        bp.status = Some(first.clone());
        let later = t0 + jiff::SignedDuration::from_secs(60);
        assert_eq!(
            desired_status(&observed(&bp, 25, 3, Limit::None), later),
            first
        );
    }

    #[test]
    fn invalid_spec_makes_the_pool_unavailable_with_the_message() {
        let bp = pool("region: a\nimage: x\ncallsPerReplica: 10\n");
        let mut obs = observed(&bp, 0, 0, Limit::None);
        obs.invalid = Some("apply Deployment: spec.template...: Invalid value".into());
        let s = desired_status(&obs, jiff::Timestamp::UNIX_EPOCH);
        let c = find_condition(&s.conditions, BOTPOOL_AVAILABLE).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reason::INVALID_SPEC)
        );
        assert!(c.message.contains("Invalid value"));
    }
}
