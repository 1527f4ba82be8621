//! Planner scenarios and properties.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::fixtures::*;
use super::*;
use crate::crd::{EndpointState, RegionState};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_739_350_800 + secs).unwrap() // 2025-02-12T09:00:00Z
}

fn region<'a>(plan: &'a Plan, name: &str) -> &'a RegionPlan {
    plan.regions.iter().find(|r| r.name == name).unwrap()
}

fn route<'a>(plan: &'a Plan, name: &str) -> &'a RoutePlan {
    plan.routes.iter().find(|r| r.name == name).unwrap()
}

fn weights(route: &RoutePlan) -> Vec<(String, u32)> {
    route
        .destinations
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| (d.uri.clone(), d.weight))
        .collect()
}

fn demand(plan: &Plan, pool: &str) -> u32 {
    plan.demand
        .iter()
        .find(|d| d.bot_pool == pool)
        .map(|d| d.concurrent_calls)
        .unwrap()
}

/// Two regions, fixed line preferred over mobile, bots as the last tier.
fn two_regions() -> (crate::crd::FallbackPolicySpec, World) {
    let spec = policy()
        .region("cologne", 60)
        .region("berlin", 40)
        .expected_calls(100)
        .recover_after(60)
        .route("inbound", 1, |r| {
            r.tier("fixed", [trunk("fixed-cgn"), trunk("fixed-ber")])
                .tier("mobile", [trunk("mobile-cgn"), trunk("mobile-ber")])
        })
        .route("bots", 2, |r| {
            r.tier("bots", [bots("bots-cgn"), bots("bots-ber")])
        })
        .build();
    let world = world()
        .trunk("fixed-cgn", "cologne", ["sip:127.0.20.10:5060"])
        .trunk("mobile-cgn", "cologne", ["sip:127.0.20.11:5060"])
        .trunk("fixed-ber", "berlin", ["sip:127.0.20.20:5060"])
        .trunk("mobile-ber", "berlin", ["sip:127.0.20.21:5060"])
        .bot_pool(
            "bots-cgn",
            "cologne",
            10,
            ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4"],
        )
        .bot_pool(
            "bots-ber",
            "berlin",
            10,
            ["10.0.2.1", "10.0.2.2", "10.0.2.3", "10.0.2.4"],
        );
    (spec, world)
}

#[test]
fn all_healthy_spreads_by_region_weight_on_the_first_tier() {
    let (spec, world) = two_regions();
    let (plan, events) = plan(&spec, &world.observed(), None, t(0));
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(region(&plan, "cologne").effective_weight, 60);
    assert_eq!(region(&plan, "berlin").effective_weight, 40);
    let inbound = route(&plan, "inbound");
    assert_eq!(inbound.active_tier.as_deref(), Some("fixed"));
    assert_eq!(
        weights(inbound),
        vec![
            ("sip:127.0.20.10:5060".into(), 60),
            ("sip:127.0.20.20:5060".into(), 40)
        ]
    );
    // Mobile stays in the set as standby, at lower priority and without weight.
    let mobile: Vec<_> = inbound
        .destinations
        .iter()
        .filter(|d| d.tier == "mobile")
        .collect();
    assert_eq!(mobile.len(), 2);
    assert!(
        mobile
            .iter()
            .all(|d| d.weight == 0 && d.priority < inbound.destinations[0].priority)
    );
    assert_eq!(demand(&plan, "bots-cgn"), 60);
    assert_eq!(demand(&plan, "bots-ber"), 40);
    assert!(!plan.fail_open());
}

#[test]
fn carrier_outage_moves_the_route_to_the_mobile_tier() {
    // The February 2025 incident: the fixed-line carrier fails in both regions.
    let (spec, world) = two_regions();
    let (before, _) = plan(&spec, &world.observed(), None, t(0));
    let outage = world
        .trunk_state("fixed-cgn", EndpointState::Down)
        .trunk_state("fixed-ber", EndpointState::Down);
    let (after, events) = plan(&spec, &outage.observed(), Some(&before), t(10));
    let inbound = route(&after, "inbound");
    assert_eq!(inbound.active_tier.as_deref(), Some("mobile"));
    assert_eq!(
        weights(inbound),
        vec![
            ("sip:127.0.20.11:5060".into(), 60),
            ("sip:127.0.20.21:5060".into(), 40)
        ]
    );
    // The regions themselves stay Active: mobile keeps one healthy trunk in each. The
    // only event is the tier change, naming the route, the tiers and the trunks.
    assert!(after.regions.iter().all(|r| r.state == RegionState::Active));
    assert_eq!(
        events,
        vec![PlanEvent::TierChanged {
            route: "inbound".into(),
            from: "fixed".into(),
            to: "mobile".into(),
            cause: "trunk 'fixed-ber' down, trunk 'fixed-cgn' down".into(),
        }]
    );
    let reasons: Vec<_> = inbound.excluded.iter().map(|x| x.reason.as_str()).collect();
    assert!(
        reasons.contains(&"trunk 'fixed-cgn' endpoint Down"),
        "{reasons:?}"
    );
}

#[test]
fn region_bots_not_ready_fail_the_region_and_move_weights_and_demand() {
    let (spec, world) = two_regions();
    let (before, _) = plan(&spec, &world.observed(), None, t(0));
    let sick = world.bots_ready("bots-cgn", 1, 4); // 25% ready < 50%
    let (after, events) = plan(&spec, &sick.observed(), Some(&before), t(5));
    let cgn = region(&after, "cologne");
    assert_eq!(cgn.state, RegionState::Failed);
    assert!(
        cgn.reason
            .contains("botPool 'bots-cgn': 1/4 replicas ready"),
        "{}",
        cgn.reason
    );
    assert_eq!(cgn.effective_weight, 0);
    assert_eq!(region(&after, "berlin").effective_weight, 100);
    assert_eq!(
        weights(route(&after, "inbound")),
        vec![("sip:127.0.20.20:5060".into(), 100)]
    );
    assert_eq!(demand(&after, "bots-cgn"), 0);
    assert_eq!(demand(&after, "bots-ber"), 100);
    assert!(matches!(
        events.as_slice(),
        [PlanEvent::Transition { region, from: RegionState::Active, to: RegionState::Failed, .. }] if region == "cologne"
    ));
}

#[test]
fn a_failed_region_returns_after_recover_after_seconds() {
    let (spec, world) = two_regions();
    let down = world.clone().bots_ready("bots-cgn", 0, 4);
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    let (p1, _) = plan(&spec, &down.observed(), Some(&p0), t(1));
    let (p2, _) = plan(&spec, &world.observed(), Some(&p1), t(2));
    assert_eq!(region(&p2, "cologne").state, RegionState::Recovering);
    assert_eq!(region(&p2, "cologne").effective_weight, 0);
    assert_eq!(p2.next_wakeup, Some(t(62)));
    let (p3, _) = plan(&spec, &world.observed(), Some(&p2), t(61));
    assert_eq!(region(&p3, "cologne").state, RegionState::Recovering);
    let (p4, events) = plan(&spec, &world.observed(), Some(&p3), t(62));
    assert_eq!(region(&p4, "cologne").state, RegionState::Active);
    assert_eq!(region(&p4, "cologne").effective_weight, 60);
    assert!(matches!(
        events.as_slice(),
        [PlanEvent::Transition {
            to: RegionState::Active,
            ..
        }]
    ));
}

#[test]
fn fail_after_seconds_waits_before_failing() {
    let (spec, world) = two_regions();
    let spec = crate::crd::FallbackPolicySpec {
        failover: crate::crd::FailoverSpec {
            fail_after_seconds: 30,
            ..spec.failover.clone()
        },
        ..spec
    };
    let down = world.clone().bots_ready("bots-ber", 0, 4);
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    let (p1, _) = plan(&spec, &down.observed(), Some(&p0), t(10));
    assert_eq!(region(&p1, "berlin").state, RegionState::Active);
    assert_eq!(p1.next_wakeup, Some(t(40)));
    let (p2, _) = plan(&spec, &down.observed(), Some(&p1), t(40));
    assert_eq!(region(&p2, "berlin").state, RegionState::Failed);
}

#[test]
fn flapping_for_an_hour_stays_within_the_transition_budget() {
    let (spec, world) = two_regions();
    let spec = crate::crd::FallbackPolicySpec {
        failover: crate::crd::FailoverSpec {
            max_transitions_per_hour: 6,
            recover_after_seconds: 20,
            ..spec.failover.clone()
        },
        ..spec
    };
    let up = world.observed();
    let down = world.bots_ready("bots-cgn", 0, 4).observed();
    let (mut p, _) = plan(&spec, &up, None, t(0));
    let mut transitions: Vec<Timestamp> = Vec::new();
    // Health flips every 7 s for two simulated hours.
    for step in 1..=(2 * 3600 / 7) {
        let now = t(step * 7);
        let obs = if step % 2 == 1 { &down } else { &up };
        let (next, events) = plan(&spec, obs, Some(&p), now);
        for e in &events {
            if let PlanEvent::Transition { region, .. } = e {
                assert_eq!(region, "cologne");
                transitions.push(now);
            }
        }
        p = next;
    }
    assert!(
        transitions.len() >= 6,
        "the region did fail over: {transitions:?}"
    );
    for (i, start) in transitions.iter().enumerate() {
        let in_window = transitions[i..]
            .iter()
            .filter(|x| **x < *start + SignedDuration::from_secs(3600))
            .count();
        assert!(
            in_window <= 6,
            "{in_window} transitions in the hour from {start}"
        );
    }
    // While flapping, the region never carries traffic for long: it is not Active at
    // the end of a down phase.
    let (last, _) = plan(&spec, &down, Some(&p), t(2 * 3600 + 7));
    assert_ne!(region(&last, "cologne").state, RegionState::Active);
}

#[test]
fn manual_failback_waits_for_the_annotation() {
    let (spec, world) = two_regions();
    let spec = crate::crd::FallbackPolicySpec {
        failover: crate::crd::FailoverSpec {
            failback: crate::crd::FailbackMode::Manual,
            ..spec.failover.clone()
        },
        ..spec
    };
    // An approval given before the failure does not count.
    let world = world.failback_approved(t(-100));
    let down = world.clone().bots_ready("bots-cgn", 0, 4);
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    let (p1, _) = plan(&spec, &down.observed(), Some(&p0), t(10));
    let (p2, _) = plan(&spec, &world.observed(), Some(&p1), t(20));
    let (p3, events) = plan(&spec, &world.observed(), Some(&p2), t(3600));
    assert_eq!(region(&p3, "cologne").state, RegionState::Recovering);
    assert!(region(&p3, "cologne").reason.contains("manual failback"));
    assert!(events.is_empty());
    let approved = world.failback_approved(t(3000));
    let (p4, events) = plan(&spec, &approved.observed(), Some(&p3), t(3601));
    assert_eq!(region(&p4, "cologne").state, RegionState::Active);
    assert!(matches!(
        events.as_slice(),
        [PlanEvent::Transition {
            to: RegionState::Active,
            ..
        }]
    ));
}

#[test]
fn an_override_drains_and_expires_by_itself() {
    let (spec, world) = two_regions();
    let spec = crate::crd::FallbackPolicySpec {
        r#override: policy()
            .drain(
                &["berlin"],
                Some("2025-02-12T10:00:00Z"),
                "carrier maintenance",
            )
            .build()
            .r#override,
        ..spec
    };
    let (p0, events) = plan(&spec, &world.observed(), None, t(0));
    assert_eq!(region(&p0, "berlin").state, RegionState::Draining);
    assert_eq!(
        region(&p0, "berlin").reason,
        "drained by override: carrier maintenance"
    );
    assert_eq!(region(&p0, "cologne").effective_weight, 100);
    assert_eq!(p0.next_wakeup, Some(t(3600)));
    assert_eq!(events.len(), 1);
    let drained: Vec<_> = route(&p0, "inbound")
        .excluded
        .iter()
        .filter(|x| x.target == "sip:127.0.20.20:5060")
        .collect();
    assert!(drained[0].reason.contains("carrier maintenance"));
    let (p1, _) = plan(&spec, &world.observed(), Some(&p0), t(3599));
    assert_eq!(region(&p1, "berlin").state, RegionState::Draining);
    let (p2, events) = plan(&spec, &world.observed(), Some(&p1), t(3600));
    assert_eq!(region(&p2, "berlin").state, RegionState::Active);
    assert_eq!(region(&p2, "berlin").effective_weight, 40);
    assert!(
        matches!(events.as_slice(), [PlanEvent::Transition { to: RegionState::Active, reason, .. }] if reason == "override ended")
    );
}

#[test]
fn every_region_failed_fails_open_on_the_last_known_good_destinations() {
    let (spec, world) = two_regions();
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    let dead = world
        .bots_ready("bots-cgn", 0, 4)
        .bots_ready("bots-ber", 0, 4)
        .trunk_state("fixed-cgn", EndpointState::Down)
        .trunk_state("fixed-ber", EndpointState::Down);
    let (p1, events) = plan(&spec, &dead.observed(), Some(&p0), t(5));
    assert!(
        p1.regions
            .iter()
            .all(|r| r.state == RegionState::Failed && r.effective_weight == 0)
    );
    assert!(p1.fail_open());
    assert_eq!(
        route(&p1, "inbound").destinations,
        route(&p0, "inbound").destinations
    );
    assert_eq!(
        route(&p1, "bots").destinations,
        route(&p0, "bots").destinations
    );
    assert_eq!(
        p1.demand, p0.demand,
        "bot pools keep their size while failing open"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PlanEvent::FailOpenStarted { routes } if routes.len() == 2))
    );
    // Staying open is not news; recovering is.
    let (p2, events) = plan(&spec, &dead.observed(), Some(&p1), t(6));
    assert!(p2.fail_open());
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PlanEvent::FailOpenStarted { .. }))
    );
}

#[test]
fn fail_open_after_a_restart_uses_the_spec_destinations() {
    let (spec, world) = two_regions();
    let dead = world
        .trunk_state("fixed-cgn", EndpointState::Down)
        .trunk_state("fixed-ber", EndpointState::Down)
        .trunk_state("mobile-cgn", EndpointState::Down)
        .trunk_state("mobile-ber", EndpointState::Down);
    let (p, _) = plan(&spec, &dead.observed(), None, t(0));
    let inbound = route(&p, "inbound");
    assert!(inbound.fail_open);
    let uris: Vec<_> = inbound
        .destinations
        .iter()
        .map(|d| d.uri.as_str())
        .collect();
    assert_eq!(uris, ["sip:127.0.20.10:5060", "sip:127.0.20.20:5060"]);
    assert_eq!(
        inbound.destinations.iter().map(|d| d.weight).sum::<u32>(),
        100
    );
}

#[test]
fn overflow_to_the_next_tier_when_capacity_is_short() {
    let spec = policy()
        .region("cologne", 1)
        .expected_calls(100)
        .route("inbound", 1, |r| {
            r.tier("agents", [trunk("pbx")])
                .tier("bots", [bots("bots-cgn")])
        })
        .build();
    let world = world()
        .trunk("pbx", "cologne", ["sip:127.0.20.30:5060"])
        .trunk_capacity("pbx", 30)
        .bot_pool("bots-cgn", "cologne", 50, ["10.0.1.1", "10.0.1.2"]);
    let (p, _) = plan(&spec, &world.observed(), None, t(0));
    let inbound = route(&p, "inbound");
    assert_eq!(inbound.active_tier.as_deref(), Some("agents"));
    assert_eq!(
        weights(inbound),
        vec![
            ("sip:127.0.20.30:5060".into(), 30),
            ("sip:10.0.1.1:5060;transport=udp".into(), 35),
            ("sip:10.0.1.2:5060;transport=udp".into(), 35)
        ]
    );
    assert_eq!(demand(&p, "bots-cgn"), 70);
    assert!(p.capacity_shortfalls.is_empty());
    // With only 60 calls of total capacity, the shortfall is reported.
    let small = world.trunk_capacity("pbx", 10);
    let small = {
        let mut w = small;
        w = w.bots_ready("bots-cgn", 1, 2);
        w
    };
    let (p, _) = plan(&spec, &small.observed(), None, t(0));
    assert_eq!(
        p.capacity_shortfalls,
        vec!["route 'inbound': healthy capacity 60 < expected 100 calls"]
    );
}

#[test]
fn a_missing_trunk_is_named_and_the_rest_still_routes() {
    let spec = policy()
        .region("cologne", 1)
        .route("inbound", 1, |r| {
            r.tier("fixed", [trunk("ghost"), trunk("fixed-cgn")])
        })
        .build();
    let world = world().trunk("fixed-cgn", "cologne", ["sip:127.0.20.10:5060"]);
    let (p, _) = plan(&spec, &world.observed(), None, t(0));
    assert_eq!(p.missing, vec!["trunk 'ghost'"]);
    assert_eq!(
        weights(route(&p, "inbound")),
        vec![("sip:127.0.20.10:5060".into(), 100)]
    );
}

#[test]
fn unknown_health_does_not_fail_a_fresh_region() {
    let (spec, world) = two_regions();
    let unprobed = world
        .trunk_state("fixed-cgn", EndpointState::Unknown)
        .trunk_state("mobile-cgn", EndpointState::Unknown);
    let (p, events) = plan(&spec, &unprobed.observed(), None, t(0));
    assert_eq!(region(&p, "cologne").state, RegionState::Active);
    assert!(events.is_empty());
}

#[test]
fn the_plan_survives_a_restart_through_the_status() {
    let (spec, world) = two_regions();
    let down = world.clone().bots_ready("bots-cgn", 0, 4);
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    let (p1, _) = plan(&spec, &down.observed(), Some(&p0), t(10));
    let status = status_of(&p1);
    let restored = Plan::from_status(&status).unwrap();
    // Healthy again right after the restart: Recovering, not straight back to Active.
    let (p2, _) = plan(&spec, &world.observed(), Some(&restored), t(20));
    assert_eq!(region(&p2, "cologne").state, RegionState::Recovering);
    assert_eq!(region(&p2, "cologne").failed_at, Some(t(10)));
}

/// Random worlds over a fixed two-region, two-route shape.
fn arb_world() -> impl Strategy<Value = (World, u32, u32, u32)> {
    let state = prop_oneof![
        Just(EndpointState::Up),
        Just(EndpointState::Down),
        Just(EndpointState::Unknown)
    ];
    (
        proptest::collection::vec(state, 4),
        0u32..=4,
        0u32..=4,
        1u32..=100,
        1u32..=100,
        0u32..2000,
    )
        .prop_map(|(states, ready_cgn, ready_ber, w1, w2, calls)| {
            let (_, w) = two_regions();
            let w = w
                .trunk_state("fixed-cgn", states[0])
                .trunk_state("mobile-cgn", states[1])
                .trunk_state("fixed-ber", states[2])
                .trunk_state("mobile-ber", states[3])
                .bots_ready("bots-cgn", ready_cgn, 4)
                .bots_ready("bots-ber", ready_ber, 4);
            (w, w1, w2, calls)
        })
}

fn spec_with(w1: u32, w2: u32, calls: u32) -> crate::crd::FallbackPolicySpec {
    let (mut spec, _) = two_regions();
    spec.regions[0].weight = w1;
    spec.regions[1].weight = w2;
    spec.expected_concurrent_calls = calls;
    spec
}

proptest! {
    #[test]
    fn weights_sum_to_100_and_failed_regions_carry_none(
        (w0, w1, w2, calls) in arb_world(),
        (wb, _, _, _) in arb_world(),
    ) {
        let spec = spec_with(w1, w2, calls);
        let (p0, _) = plan(&spec, &w0.observed(), None, t(0));
        let (p, _) = plan(&spec, &wb.observed(), Some(&p0), t(10));
        let any_active = p.regions.iter().any(|r| r.state == RegionState::Active);
        let region_sum: u32 = p.regions.iter().map(|r| r.effective_weight).sum();
        prop_assert_eq!(region_sum, if any_active { 100 } else { 0 });
        for r in &p.regions {
            if r.state != RegionState::Active {
                prop_assert_eq!(r.effective_weight, 0);
            }
        }
        for route in &p.routes {
            let sum: u32 = route.destinations.iter().map(|d| d.weight).sum();
            if !route.destinations.is_empty() {
                prop_assert_eq!(sum, 100, "route {} {:?}", route.name, route.destinations);
            }
            if !route.fail_open {
                for d in &route.destinations {
                    let state = p.regions.iter().find(|r| r.name == d.region).unwrap().state;
                    prop_assert!(state == RegionState::Active, "{} in {} region {}", d.uri, state, d.region);
                }
            }
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_plan((w0, w1, w2, calls) in arb_world(), (wb, _, _, _) in arb_world()) {
        let spec = spec_with(w1, w2, calls);
        let (p0, _) = plan(&spec, &w0.observed(), None, t(0));
        let a = plan(&spec, &wb.observed(), Some(&p0), t(10));
        let b = plan(&spec, &wb.observed(), Some(&p0.clone()), t(10));
        prop_assert_eq!(&a, &b);
        let text_a = crate::routing::dispatcher::render("ns/p", &a.0);
        let text_b = crate::routing::dispatcher::render("ns/p", &b.0);
        prop_assert_eq!(text_a, text_b);
        prop_assert_eq!(crate::routing::json::render("ns/p", &a.0), crate::routing::json::render("ns/p", &b.0));
    }
}

#[test]
fn a_new_region_takes_calls_once_its_bots_are_up_without_a_failover() {
    let (spec, world) = two_regions();
    // A policy applied together with its bot pools: the bots are still starting.
    let starting = world.clone().bots_ready("bots-cgn", 0, 4);
    let (p0, events) = plan(&spec, &starting.observed(), None, t(0));
    assert_eq!(region(&p0, "cologne").state, RegionState::Failed);
    assert_eq!(region(&p0, "cologne").effective_weight, 0);
    assert!(
        events.is_empty(),
        "starting up is not a failover: {events:?}"
    );
    let (p1, events) = plan(&spec, &starting.observed(), Some(&p0), t(3));
    assert_eq!(region(&p1, "cologne").state, RegionState::Failed);
    assert!(events.is_empty(), "{events:?}");
    // Bots ready a few seconds later: calls flow at once, not after recoverAfterSeconds,
    // because the region never carried traffic that a flap could hurt.
    let (p2, _) = plan(&spec, &world.observed(), Some(&p1), t(5));
    let (p3, _) = plan(&spec, &world.observed(), Some(&p2), t(5));
    assert_eq!(region(&p3, "cologne").state, RegionState::Active);
    assert_eq!(region(&p3, "cologne").effective_weight, 60);
    // Once it has served, a later failure waits for recoverAfterSeconds as usual.
    let (p4, _) = plan(&spec, &starting.observed(), Some(&p3), t(10));
    let (p5, _) = plan(&spec, &world.observed(), Some(&p4), t(11));
    let (p6, _) = plan(&spec, &world.observed(), Some(&p5), t(12));
    assert_eq!(region(&p6, "cologne").state, RegionState::Recovering);
}

#[test]
fn a_pool_not_sized_yet_keeps_a_new_region_waiting_instead_of_serving() {
    let (spec, world) = two_regions();
    // The policy's first plan comes before the pool's controller sized it (the pool
    // waits for that plan): the lines are up, but the bots are not measured yet.
    let not_sized = world.clone().bots_unreported("bots-cgn");
    let (p0, events) = plan(&spec, &not_sized.observed(), None, t(0));
    assert_eq!(region(&p0, "cologne").state, RegionState::Recovering);
    assert!(!region(&p0, "cologne").has_served);
    assert!(events.is_empty(), "{events:?}");
    // Sized, bots starting: still a start-up, not a failover of a serving region.
    let starting = world.clone().bots_ready("bots-cgn", 0, 4);
    let (p1, _) = plan(&spec, &starting.observed(), Some(&p0), t(1));
    assert_eq!(region(&p1, "cologne").state, RegionState::Failed);
    assert!(
        !region(&p1, "cologne").has_served,
        "no flapping budget used"
    );
    assert!(region(&p1, "cologne").transitions.is_empty());
    // Bots up: calls flow at once.
    let (p2, _) = plan(&spec, &world.observed(), Some(&p1), t(2));
    let (p3, _) = plan(&spec, &world.observed(), Some(&p2), t(2));
    assert_eq!(region(&p3, "cologne").state, RegionState::Active);
    // A serving region whose pool is re-created (no status for a moment) keeps serving.
    let (p4, events) = plan(&spec, &not_sized.observed(), Some(&p3), t(3));
    assert_eq!(
        region(&p4, "cologne").state,
        RegionState::Active,
        "{events:?}"
    );
    // A pool that may run no bots (`replicas.min` 0) does not hold a new region.
    let mut scale_to_zero = not_sized.observed();
    scale_to_zero
        .bot_pools
        .get_mut("bots-cgn")
        .unwrap()
        .min_replicas = 0;
    let (q0, _) = plan(&spec, &scale_to_zero, None, t(0));
    assert_eq!(region(&q0, "cologne").state, RegionState::Active);
}

#[test]
fn a_scale_up_in_progress_does_not_fail_the_region_it_helps() {
    let (spec, world) = two_regions();
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    // Demand moved to cologne: its pool (floor 1) wants 4 bots, the new ones still start.
    let scaling = world.clone().bots_scaling("bots-cgn", 1, 4, 1);
    let (p1, events) = plan(&spec, &scaling.observed(), Some(&p0), t(5));
    assert_eq!(
        region(&p1, "cologne").state,
        RegionState::Active,
        "{events:?}"
    );
    // Losing the floor itself still fails the region.
    let lost = world.bots_scaling("bots-cgn", 0, 4, 1);
    let (p2, _) = plan(&spec, &lost.observed(), Some(&p1), t(6));
    assert_eq!(region(&p2, "cologne").state, RegionState::Failed);
}

#[test]
fn start_up_moves_do_not_use_the_flapping_budget() {
    let (spec, world) = two_regions(); // maxTransitionsPerHour 6, recoverAfterSeconds 60
    let unmeasured = world
        .clone()
        .trunk_state("fixed-cgn", EndpointState::Unknown)
        .trunk_state("mobile-cgn", EndpointState::Unknown)
        .bots_ready("bots-cgn", 0, 0);
    let starting = world.clone().bots_ready("bots-cgn", 0, 4);
    // Start-up: unknown → failed (bots starting) → recovering → active.
    let (p0, _) = plan(&spec, &unmeasured.observed(), None, t(0));
    assert_eq!(region(&p0, "cologne").state, RegionState::Recovering);
    let (p0, _) = plan(&spec, &starting.observed(), Some(&p0), t(1));
    assert_eq!(region(&p0, "cologne").state, RegionState::Failed);
    let (p1, _) = plan(&spec, &world.observed(), Some(&p0), t(2));
    let (p2, _) = plan(&spec, &world.observed(), Some(&p1), t(2));
    assert_eq!(region(&p2, "cologne").state, RegionState::Active);
    // An outage later in the hour fails over and back after 60 s, whatever start-up took.
    let start = 100;
    let (a, _) = plan(&spec, &starting.observed(), Some(&p2), t(start));
    let (b, _) = plan(&spec, &world.observed(), Some(&a), t(start + 1));
    let (c, _) = plan(&spec, &world.observed(), Some(&b), t(start + 61));
    assert_eq!(region(&c, "cologne").state, RegionState::Active);
}

/// The status a controller writes for `plan` (the history bounded as in the API).
fn status_of(plan: &Plan) -> crate::crd::FallbackPolicyStatus {
    crate::crd::FallbackPolicyStatus {
        regions: plan.region_statuses(),
        routes: plan.route_statuses(),
        history: plan.status_history(),
        demand: plan.demand.clone(),
        ..Default::default()
    }
}

/// A restart: the next plan starts from what the status holds, nothing in memory.
fn restart(plan: &Plan) -> Plan {
    let status: crate::crd::FallbackPolicyStatus =
        serde_json::from_value(serde_json::to_value(status_of(plan)).unwrap()).unwrap();
    Plan::from_status(&status).unwrap()
}

/// A deterministic pseudo-random sequence (xorshift), so the flapping is the same on
/// every run.
struct Flaps(u64);
impl Flaps {
    fn next(&mut self, lo: i64, hi: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (self.0 % (hi - lo) as u64) as i64
    }
}

/// Five hours of a flapping fixed line in cologne on a virtual clock (10 s ticks),
/// with restarts from the status every 23 minutes, in `failback` mode. Returns every
/// cologne transition (time, from, to).
fn five_hours_of_flapping(
    spec: &crate::crd::FallbackPolicySpec,
    world: &World,
    approve_at: Option<i64>,
) -> Vec<(i64, RegionState, RegionState)> {
    let mut flaps = Flaps(0x5eed_1a7e);
    let mut healthy = true;
    let mut next_flip = flaps.next(60, 900);
    let mut prev: Option<Plan> = None;
    let mut moves = Vec::new();
    let mut now = 0;
    while now <= 5 * 3600 {
        if now >= next_flip {
            healthy = !healthy;
            next_flip = now
                + if healthy {
                    flaps.next(30, 900)
                } else {
                    flaps.next(30, 600)
                };
        }
        let state = if healthy {
            EndpointState::Up
        } else {
            EndpointState::Down
        };
        let mut w = world
            .clone()
            .trunk_state("fixed-cgn", state)
            .trunk_state("mobile-cgn", state)
            .bots_ready("bots-cgn", if healthy { 4 } else { 0 }, 4);
        // From `approve_at` on, someone approves again and again (a fresh time each tick).
        if approve_at.is_some_and(|at| now >= at) {
            w = w.failback_approved(t(now));
        }
        if now % (23 * 60) == 0
            && let Some(p) = &prev
        {
            prev = Some(restart(p));
        }
        let (p, events) = plan(spec, &w.observed(), prev.as_ref(), t(now));
        for e in events {
            if let PlanEvent::Transition {
                region, from, to, ..
            } = e
                && region == "cologne"
            {
                moves.push((now, from, to));
            }
        }
        prev = Some(p);
        now += 10;
    }
    moves
}

#[test]
fn five_hours_of_flapping_never_fail_back_without_approval() {
    let spec = policy()
        .region("cologne", 60)
        .region("berlin", 40)
        .expected_calls(100)
        .fail_after(20)
        .recover_after(60)
        .manual_failback()
        .max_transitions_per_hour(6)
        .route("inbound", 1, |r| {
            r.tier("fixed", [trunk("fixed-cgn"), trunk("fixed-ber")])
                .tier("mobile", [trunk("mobile-cgn"), trunk("mobile-ber")])
        })
        .route("bots", 2, |r| {
            r.tier("bots", [bots("bots-cgn"), bots("bots-ber")])
        })
        .build();
    let (_, world) = two_regions();
    let moves = five_hours_of_flapping(&spec, &world, None);
    let failed = moves
        .iter()
        .position(|m| m.2 == RegionState::Failed)
        .expect("the flapping fails cologne");
    // Many moves between Failed and Recovering (the history's 20 entries are long
    // gone), never one back to traffic.
    assert!(moves.len() > 20, "the flapping is long enough: {moves:?}");
    let to_active: Vec<_> = moves[failed..]
        .iter()
        .filter(|m| m.2 == RegionState::Active)
        .collect();
    assert!(
        to_active.is_empty(),
        "Active without approval: {to_active:?}"
    );

    // An approval after the last failure brings it back, after recoverAfterSeconds.
    let approved = five_hours_of_flapping(&spec, &world, Some(4 * 3600));
    let back: Vec<_> = approved
        .iter()
        .filter(|m| m.2 == RegionState::Active && m.0 > 60)
        .collect();
    assert!(
        back.iter().all(|m| m.0 >= 4 * 3600),
        "failback before the approval: {back:?}"
    );
    assert!(
        !back.is_empty(),
        "an approved, healthy region returns: {approved:?}"
    );
}

#[test]
fn the_flapping_budget_holds_over_restarts_from_the_status() {
    let budget = 4;
    let spec = policy()
        .region("cologne", 60)
        .region("berlin", 40)
        .expected_calls(100)
        .fail_after(20)
        .recover_after(30)
        .max_transitions_per_hour(budget)
        .route("inbound", 1, |r| {
            r.tier("fixed", [trunk("fixed-cgn"), trunk("fixed-ber")])
                .tier("mobile", [trunk("mobile-cgn"), trunk("mobile-ber")])
        })
        .route("bots", 2, |r| {
            r.tier("bots", [bots("bots-cgn"), bots("bots-ber")])
        })
        .build();
    let (_, world) = two_regions();
    let moves = five_hours_of_flapping(&spec, &world, None);
    assert!(moves.len() > 2 * budget as usize, "it flaps: {moves:?}");
    // Moves towards traffic are held so that, in any sliding hour, at most `budget`
    // moves happen counting from the first failure, restarts or not.
    let first = moves
        .iter()
        .position(|m| m.2 == RegionState::Failed)
        .unwrap();
    let counted = &moves[first..];
    for (i, m) in counted.iter().enumerate() {
        let within = counted[i..].iter().take_while(|n| n.0 < m.0 + 3600).count();
        assert!(
            within <= budget as usize,
            "{within} moves in the hour from {}s: {counted:?}",
            m.0
        );
    }
    // And the restarts kept the region's durable state.
    let status = status_of(&{
        let (p, _) = plan(&spec, &world.observed(), None, t(0));
        p
    });
    assert!(status.regions.iter().all(|r| r.has_served));
}

#[test]
fn every_tier_change_is_an_event_naming_route_tiers_and_trunk() {
    let (spec, world) = two_regions();
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    let fixed_down = world
        .clone()
        .trunk_state("fixed-cgn", EndpointState::Down)
        .trunk_state("fixed-ber", EndpointState::Down);
    let (p1, events) = plan(&spec, &fixed_down.observed(), Some(&p0), t(10));
    assert_eq!(route(&p1, "inbound").active_tier.as_deref(), Some("mobile"));
    let changes: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            PlanEvent::TierChanged {
                route,
                from,
                to,
                cause,
            } => Some((route.as_str(), from.as_str(), to.as_str(), cause.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 1, "{events:?}");
    let (r, from, to, cause) = changes[0];
    assert_eq!((r, from, to), ("inbound", "fixed", "mobile"));
    assert!(cause.contains("trunk 'fixed-cgn' down"), "{cause}");
    assert!(cause.contains("trunk 'fixed-ber' down"), "{cause}");

    // Back: an event naming the trunk that recovered; nothing on a restart.
    let (p2, events) = plan(&spec, &world.observed(), Some(&restart(&p1)), t(20));
    assert_eq!(route(&p2, "inbound").active_tier.as_deref(), Some("fixed"));
    assert!(
        events.iter().any(|e| matches!(e,
        PlanEvent::TierChanged { from, to, cause, .. }
            if from == "mobile" && to == "fixed" && cause.contains("trunk 'fixed-cgn' up"))),
        "{events:?}"
    );
    let (_, events) = plan(&spec, &world.observed(), Some(&restart(&p2)), t(30));
    assert!(events.is_empty(), "a restart reports nothing: {events:?}");
}

#[test]
fn a_restart_neither_reannounces_fail_open_nor_fails_back() {
    let (spec, world) = two_regions();
    let dead = world
        .clone()
        .trunk_state("fixed-cgn", EndpointState::Down)
        .trunk_state("fixed-ber", EndpointState::Down)
        .trunk_state("mobile-cgn", EndpointState::Down)
        .trunk_state("mobile-ber", EndpointState::Down);
    let (p0, _) = plan(&spec, &world.observed(), None, t(0));
    let (p1, events) = plan(&spec, &dead.observed(), Some(&p0), t(10));
    assert!(p1.fail_open());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PlanEvent::FailOpenStarted { .. }))
    );
    let (p2, events) = plan(&spec, &dead.observed(), Some(&restart(&p1)), t(20));
    assert!(p2.fail_open());
    assert!(events.is_empty(), "{events:?}");
}

/// The contact center of `examples/carrier-outage`, inbound only: agents at a PBX per
/// region with a concurrent-call limit, then each region's bots.
fn agents_then_bots(expected: u32) -> (crate::crd::FallbackPolicySpec, World) {
    let mut cgn = uri("sip:127.0.50.31:5060", "cologne");
    cgn.max_concurrent_calls = Some(30);
    let mut fra = uri("sip:127.0.50.32:5060", "frankfurt");
    fra.max_concurrent_calls = Some(25);
    let spec = policy()
        .region("cologne", 60)
        .region("frankfurt", 40)
        .expected_calls(expected)
        .route("inbound", 1, |r| {
            r.tier("agents", [cgn, fra])
                .tier("bots", [bots("bots-cgn"), bots("bots-fra")])
        })
        .build();
    let world = world()
        .uri_state("sip:127.0.50.31:5060", EndpointState::Up)
        .uri_state("sip:127.0.50.32:5060", EndpointState::Up)
        .bot_pool("bots-cgn", "cologne", 5, ["10.0.1.1"])
        .bot_pool("bots-fra", "frankfurt", 5, ["10.0.2.1"]);
    (spec, world)
}

fn demand_entry<'a>(plan: &'a Plan, pool: &str) -> &'a crate::crd::BotDemand {
    plan.demand.iter().find(|d| d.bot_pool == pool).unwrap()
}

#[test]
fn agents_capacity_sends_the_overflow_to_the_bots() {
    // 70 expected calls, agents take 30 + 25: the bots take the other 15.
    let (spec, world) = agents_then_bots(70);
    let (p, _) = plan(&spec, &world.observed(), None, t(0));
    let inbound = route(&p, "inbound");
    assert_eq!(inbound.active_tier.as_deref(), Some("agents"));
    let bots_weight: u32 = inbound
        .destinations
        .iter()
        .filter(|d| d.tier == "bots")
        .map(|d| d.weight)
        .sum();
    assert_eq!(bots_weight, 21, "15 of 70 calls, in percent");
    assert_eq!(demand(&p, "bots-cgn") + demand(&p, "bots-fra"), 15);
    // Within capacity the agents take everything and the bots keep their floor.
    let (spec, world) = agents_then_bots(50);
    let (p, _) = plan(&spec, &world.observed(), None, t(0));
    assert_eq!(demand(&p, "bots-cgn"), 0);
    assert_eq!(demand(&p, "bots-fra"), 0);
    assert!(weights(route(&p, "inbound")).len() == 2);
}

#[test]
fn measured_calls_above_the_floor_size_the_bots_that_take_the_overflow() {
    // Cologne is gone (agents Down, bots not ready: the region fails); 40 calls arrive
    // at Frankfurt, whose agents take 25.
    let (spec, world) = agents_then_bots(20);
    let mut observed = world
        .uri_state("sip:127.0.50.31:5060", EndpointState::Down)
        .bots_ready("bots-cgn", 0, 1)
        .observed();
    let (before, _) = plan(&spec, &observed, None, t(0));
    assert_eq!(demand(&before, "bots-fra"), 0, "the floor fits the agents");
    assert_eq!(demand_entry(&before, "bots-fra").measured_calls, None);

    observed.live.routes.insert("inbound".into(), 40);
    let (after, _) = plan(&spec, &observed, Some(&before), t(1));
    let fra = demand_entry(&after, "bots-fra");
    assert_eq!(fra.concurrent_calls, 15);
    assert_eq!((fra.floor_calls, fra.measured_calls), (Some(0), Some(15)));
    // Cologne's bots are in a failed region: nothing for them.
    assert_eq!(demand(&after, "bots-cgn"), 0);
    // The routing itself does not move with the load.
    assert_eq!(route(&after, "inbound"), route(&before, "inbound"));
}

#[test]
fn the_declared_floor_holds_when_fewer_calls_are_measured() {
    let (spec, world) = agents_then_bots(70);
    let mut observed = world.observed();
    observed.live.routes.insert("inbound".into(), 10);
    let (p, _) = plan(&spec, &observed, None, t(0));
    let total: u32 = p.demand.iter().map(|d| d.concurrent_calls).sum();
    assert_eq!(total, 15, "70 expected − 55 agents");
    // 10 measured calls fit the agents: nothing measured for the bots.
    assert!(
        p.demand.iter().all(|d| d.measured_calls == Some(0)),
        "{:?}",
        p.demand
    );
}

#[test]
fn calls_the_bots_carry_now_keep_their_pool_sized() {
    // The agents have room by the plan, yet 12 calls sit at Frankfurt's bots (e.g.
    // they arrived while the agents' PBX was away): the pool keeps room for them.
    let (spec, world) = agents_then_bots(0);
    let mut observed = world.observed();
    observed.live.bot_pools.insert("bots-fra".into(), 12);
    observed.live.routes.insert("inbound".into(), 12);
    let (p, _) = plan(&spec, &observed, None, t(0));
    assert_eq!(demand(&p, "bots-fra"), 12);
    assert_eq!(demand(&p, "bots-cgn"), 0);
}

proptest! {
    #[test]
    fn measured_demand_never_undercuts_the_floor(
        expected in 0u32..200,
        measured in 0u64..400,
        cgn_up in any::<bool>(),
    ) {
        let (spec, world) = agents_then_bots(expected);
        let state = if cgn_up { EndpointState::Up } else { EndpointState::Down };
        let observed = world.uri_state("sip:127.0.50.31:5060", state).observed();
        let (floor, _) = plan(&spec, &observed, None, t(0));
        let mut live = observed.clone();
        live.live.routes.insert("inbound".into(), measured);
        let (with_live, _) = plan(&spec, &live, None, t(0));
        for d in &with_live.demand {
            let f = demand(&floor, &d.bot_pool);
            prop_assert!(d.concurrent_calls >= f);
            prop_assert_eq!(d.floor_calls, Some(f));
        }
        // The overflow is what the agents cannot take.
        let agents = if cgn_up { 55 } else { 25 };
        let total: u64 = with_live.demand.iter().map(|d| u64::from(d.concurrent_calls)).sum();
        let overflow = measured.max(u64::from(expected)).saturating_sub(agents);
        // Each pool takes the larger of two splits; rounding adds at most one per pool.
        prop_assert!(total >= overflow && total <= overflow + 2, "{total} vs {overflow}");
        prop_assert_eq!(route(&with_live, "inbound"), route(&floor, "inbound"));
    }
}
