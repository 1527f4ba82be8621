//! The status a plan gives a FallbackPolicy (pure): `Ready`, `Degraded` and
//! `CapacitySufficient` plus the plan's regions, routes, demand and history.

use crate::crd::{
    FallbackPolicy, FallbackPolicyStatus, POLICY_CAPACITY_SUFFICIENT, POLICY_DEGRADED,
    POLICY_READY, RegionState, condition, merge_condition,
};
use crate::plan::Plan;

/// Condition reasons and Event reasons of the policy controller.
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

/// The status that describes `plan`. Conditions keep their transition times when their
/// status is unchanged, so an unchanged plan gives a status equal to the current one
/// (and no write). `conflict` names a routing ConfigMap that is not lifeline's.
pub fn desired_status(
    policy: &FallbackPolicy,
    plan: &Plan,
    conflict: Option<&str>,
    hash: &str,
    now: jiff::Timestamp,
) -> FallbackPolicyStatus {
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let mut conditions = current.conditions.clone();
    let missing = || {
        plan.missing
            .iter()
            .map(|m| format!("{m} not found"))
            .collect::<Vec<_>>()
            .join("; ")
    };

    let ready = if let Some(cm) = conflict {
        condition(
            POLICY_READY,
            false,
            reasons::CONFIGMAP_CONFLICT,
            format!("ConfigMap '{cm}' exists and is not managed by lifeline; delete or rename it"),
            generation,
        )
    } else if !plan.missing.is_empty() {
        condition(
            POLICY_READY,
            false,
            reasons::MISSING_REFERENCE,
            format!("{}; the other targets are routed", missing()),
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
            missing(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{EndpointState, find_condition};
    use crate::plan::fixtures::{policy as spec, trunk, world};

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// Two regions, each with a fixed line and a mobile line.
    pub(super) fn two_regions() -> FallbackPolicy {
        let spec = spec()
            .region("cologne", 1)
            .region("bonn", 1)
            .expected_calls(10)
            .route("inbound", 1, |r| {
                r.tier("fixed", [trunk("fixed-cgn"), trunk("fixed-bonn")])
                    .tier("mobile", [trunk("mobile-cgn")])
            })
            .build();
        let mut p = FallbackPolicy::new("contact-center", spec);
        p.metadata.namespace = Some("t".into());
        p.metadata.generation = Some(4);
        p
    }

    fn healthy() -> crate::plan::fixtures::World {
        world()
            .trunk("fixed-cgn", "cologne", ["sip:127.0.0.1:5060"])
            .trunk("fixed-bonn", "bonn", ["sip:127.0.0.2:5060"])
            .trunk("mobile-cgn", "cologne", ["sip:127.0.0.3:5060"])
    }

    fn reason(s: &FallbackPolicyStatus, type_: &str) -> (String, String) {
        let c = find_condition(&s.conditions, type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn healthy_plan_is_published_and_stable() {
        let mut policy = two_regions();
        let (plan, _) = crate::plan::plan(&policy.spec, &healthy().observed(), None, t(0));
        let s = desired_status(&policy, &plan, None, "h1", t(0));
        assert_eq!(
            reason(&s, POLICY_READY),
            ("True".into(), reasons::PUBLISHED.into())
        );
        assert_eq!(
            reason(&s, POLICY_DEGRADED),
            ("False".into(), reasons::ALL_REGIONS_ACTIVE.into())
        );
        assert_eq!(
            reason(&s, POLICY_CAPACITY_SUFFICIENT),
            ("True".into(), reasons::SUFFICIENT.into())
        );
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.config_map_hash.as_deref(), Some("h1"));
        // Written once, the same plan later gives the same status: nothing to write.
        policy.status = Some(s.clone());
        let (again, _) = crate::plan::plan(&policy.spec, &healthy().observed(), None, t(0));
        assert_eq!(desired_status(&policy, &again, None, "h1", t(30)), s);
    }

    #[test]
    fn conflict_missing_and_failed_regions_say_why() {
        let mut policy = two_regions();
        let (plan, _) = crate::plan::plan(&policy.spec, &healthy().observed(), None, t(0));
        policy.status = Some(desired_status(&policy, &plan, None, "h1", t(0)));

        // A foreign ConfigMap: not Ready, and the last published hash is kept.
        let s = desired_status(&policy, &plan, Some("sip-routing"), "h2", t(5));
        let ready = find_condition(&s.conditions, POLICY_READY).unwrap();
        assert_eq!(ready.reason, reasons::CONFIGMAP_CONFLICT);
        assert!(ready.message.contains("'sip-routing'"), "{}", ready.message);
        assert_eq!(s.config_map_hash.as_deref(), Some("h1"));

        // A missing trunk: named, the rest routed; Degraded says so too.
        let partial = world()
            .trunk("fixed-cgn", "cologne", ["sip:127.0.0.1:5060"])
            .trunk("fixed-bonn", "bonn", ["sip:127.0.0.2:5060"]);
        let (plan, _) = crate::plan::plan(&policy.spec, &partial.observed(), None, t(0));
        let s = desired_status(&policy, &plan, None, "h3", t(6));
        let ready = find_condition(&s.conditions, POLICY_READY).unwrap();
        assert_eq!(ready.reason, reasons::MISSING_REFERENCE);
        assert!(ready.message.contains("mobile-cgn"), "{}", ready.message);
        assert_eq!(
            reason(&s, POLICY_DEGRADED),
            ("True".into(), reasons::MISSING_REFERENCE.into())
        );

        // Bonn's only trunk is down past failAfterSeconds: Degraded names the region,
        // and Ready keeps its transition time (its status did not change).
        let down = healthy().trunk_state("fixed-bonn", EndpointState::Down);
        let (first, _) = crate::plan::plan(&policy.spec, &down.observed(), None, t(0));
        let (failed, _) = crate::plan::plan(&policy.spec, &down.observed(), Some(&first), t(600));
        let s = desired_status(&policy, &failed, None, "h4", t(600));
        let degraded = find_condition(&s.conditions, POLICY_DEGRADED).unwrap();
        assert_eq!(degraded.reason, reasons::REGIONS_NOT_ACTIVE);
        assert!(
            degraded.message.starts_with("bonn Failed"),
            "{}",
            degraded.message
        );
        let before = find_condition(&policy.status.as_ref().unwrap().conditions, POLICY_READY);
        let after = find_condition(&s.conditions, POLICY_READY);
        assert_eq!(
            before.map(|c| &c.last_transition_time),
            after.map(|c| &c.last_transition_time)
        );
    }

    #[test]
    fn no_placeable_destination_is_fail_open_and_short_capacity() {
        let policy = two_regions();
        let dead = healthy()
            .trunk_state("fixed-cgn", EndpointState::Down)
            .trunk_state("fixed-bonn", EndpointState::Down)
            .trunk_state("mobile-cgn", EndpointState::Down);
        let (first, _) = crate::plan::plan(&policy.spec, &healthy().observed(), None, t(0));
        let (plan, _) = crate::plan::plan(&policy.spec, &dead.observed(), Some(&first), t(1));
        let s = desired_status(&policy, &plan, None, "h", t(1));
        assert!(plan.fail_open());
        assert_eq!(
            reason(&s, POLICY_DEGRADED),
            ("True".into(), reasons::FAIL_OPEN.into())
        );
        let degraded = find_condition(&s.conditions, POLICY_DEGRADED).unwrap();
        assert!(
            degraded.message.contains("route(s) inbound"),
            "{}",
            degraded.message
        );
        assert_eq!(
            reason(&s, POLICY_CAPACITY_SUFFICIENT),
            ("False".into(), reasons::CAPACITY_SHORT.into())
        );
    }
}
