use serde_json::json;

use super::*;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A drill of policy `main` draining `cologne` for 60 s, created at 08:00 UTC.
fn drill(schedule: Option<&str>) -> FailoverDrill {
    let mut spec = json!({ "policy": "main", "drainRegion": "cologne", "durationSeconds": 60 });
    if let Some(s) = schedule {
        spec["schedule"] = json!(s);
    }
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverDrill",
        "metadata": { "name": "weekly", "namespace": "cc", "generation": 1,
                      "creationTimestamp": "2025-02-11T08:00:00Z" },
        "spec": spec,
    }))
    .unwrap()
}

/// Policy `main` with regions cologne and frankfurt in the given states.
fn policy(cologne: &str, frankfurt: &str, conditions: serde_json::Value) -> FallbackPolicy {
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": { "name": "main", "namespace": "cc" },
        "spec": {
            "routingConfigMap": { "name": "routing" },
            "regions": [{ "name": "cologne" }, { "name": "frankfurt" }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "fixed-cgn" }, { "trunk": "fixed-fra" }] }]}],
        },
        "status": {
            "regions": [
                { "name": "cologne", "state": cologne, "effectiveWeight": 50, "reason": "x" },
                { "name": "frankfurt", "state": frankfurt, "effectiveWeight": 50, "reason": "carrier down", "hasServed": true },
            ],
            "conditions": conditions,
        },
    }))
    .unwrap()
}

fn healthy() -> FallbackPolicy {
    policy(
        "Active",
        "Active",
        json!([
            { "type": "Degraded", "status": "False", "reason": "AllRegionsActive", "message": "", "lastTransitionTime": "2025-02-11T08:00:00Z" }
        ]),
    )
}

fn obs(p: &FallbackPolicy, bots: u32) -> Observation<'_> {
    Observation {
        policy: Some(p),
        bots_desired: bots,
        other_running: None,
    }
}

/// Apply a decision's status to the drill, as the controller's status write would.
fn step(d: &mut FailoverDrill, o: &Observation<'_>, now: &str) -> Decision {
    let decision = decide(d, o, t(now));
    d.status = Some(decision.status.clone());
    decision
}

#[test]
fn a_one_shot_drill_drains_then_passes_on_time_and_completes() {
    let mut d = drill(None);
    let p = healthy();
    let start = step(&mut d, &obs(&p, 2), "2025-02-12T08:00:00Z");
    let active = start.status.active.clone().expect("started");
    assert_eq!(active.region, "cologne");
    assert_eq!(active.until.0, t("2025-02-12T08:01:00Z"));
    assert_eq!(start.status.phase, DrillPhase::Running);
    assert_eq!(start.events[0].reason, "DrillStarted");
    assert_eq!(
        start.wake_at,
        Some(t("2025-02-12T08:00:30Z")),
        "shift deadline first"
    );

    let draining = policy("Draining", "Active", json!([]));
    let shifted = step(&mut d, &obs(&draining, 5), "2025-02-12T08:00:02Z");
    assert_eq!(shifted.events[0].reason, "DrillShifted");
    assert_eq!(shifted.wake_at, Some(t("2025-02-12T08:01:00Z")));

    let end = step(&mut d, &obs(&draining, 5), "2025-02-12T08:01:00Z");
    assert!(end.status.active.is_none(), "rolled back at until");
    assert_eq!(end.status.last_outcome, Some(DrillOutcome::Passed));
    let run = end.status.runs.last().unwrap();
    assert_eq!(run.shift_seconds, Some(2));
    assert_eq!(run.bots.as_deref(), Some("2 → 5"));
    assert_eq!(end.events.last().unwrap().reason, "DrillPassed");

    let after = step(&mut d, &obs(&p, 2), "2025-02-12T08:05:00Z");
    assert_eq!(after.status.phase, DrillPhase::Completed);
    assert!(after.status.active.is_none() && after.events.is_empty());
}

#[test]
fn a_drill_never_starts_on_a_degraded_policy() {
    let mut d = drill(None);
    let degraded = policy(
        "Active",
        "Failed",
        json!([
            { "type": "Degraded", "status": "True", "reason": "RegionsNotActive", "message": "frankfurt Failed", "lastTransitionTime": "2025-02-11T08:00:00Z" }
        ]),
    );
    let dec = step(&mut d, &obs(&degraded, 1), "2025-02-12T08:00:00Z");
    assert!(dec.status.active.is_none());
    assert_eq!(dec.status.last_outcome, Some(DrillOutcome::Skipped));
    assert!(
        dec.status.runs[0].reason.contains("degraded"),
        "{}",
        dec.status.runs[0].reason
    );
    assert!(dec.events[0].warning);
}

#[test]
fn a_real_failure_elsewhere_aborts_the_drill() {
    let mut d = drill(None);
    step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:00Z");
    let outage = policy("Draining", "Failed", json!([]));
    let dec = step(&mut d, &obs(&outage, 1), "2025-02-12T08:00:10Z");
    assert!(dec.status.active.is_none(), "the drain is released at once");
    assert_eq!(dec.status.last_outcome, Some(DrillOutcome::Aborted));
    let reason = &dec.status.runs.last().unwrap().reason;
    assert!(
        reason.contains("frankfurt") && reason.contains("normal failover"),
        "{reason}"
    );
}

#[test]
fn capacity_short_aborts_unless_disabled() {
    let short = policy(
        "Draining",
        "Active",
        json!([
            { "type": "CapacitySufficient", "status": "False", "reason": "CapacityShort", "message": "40 of 80 calls", "lastTransitionTime": "2025-02-11T08:00:00Z" }
        ]),
    );
    let mut d = drill(None);
    step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:00Z");
    let dec = step(&mut d, &obs(&short, 1), "2025-02-12T08:00:05Z");
    assert_eq!(dec.status.last_outcome, Some(DrillOutcome::Aborted));

    let mut d = drill(None);
    d.spec.abort_on_capacity_short = false;
    step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:00Z");
    let dec = step(&mut d, &obs(&short, 1), "2025-02-12T08:00:05Z");
    assert!(dec.status.active.is_some());
}

#[test]
fn a_region_that_never_leaves_traffic_fails_the_drill() {
    let mut d = drill(None);
    step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:00Z");
    let still = step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:29Z");
    assert!(still.status.active.is_some());
    let dec = step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:30Z");
    assert_eq!(dec.status.last_outcome, Some(DrillOutcome::Failed));
}

#[test]
fn a_schedule_runs_at_each_occurrence_and_skips_missed_ones() {
    // Every day at 03:00 UTC.
    let mut d = drill(Some("0 3 * * *"));
    let p = healthy();
    let wait = step(&mut d, &obs(&p, 1), "2025-02-11T09:00:00Z");
    assert_eq!(wait.status.phase, DrillPhase::Scheduled);
    assert_eq!(
        wait.status.next_run.as_ref().unwrap().0,
        t("2025-02-12T03:00:00Z")
    );
    assert_eq!(wait.wake_at, Some(t("2025-02-12T03:00:00Z")));
    let run = step(&mut d, &obs(&p, 1), "2025-02-12T03:00:01Z");
    assert!(run.status.active.is_some());
    let draining = policy("Draining", "Active", json!([]));
    step(&mut d, &obs(&draining, 1), "2025-02-12T03:00:03Z");
    let done = step(&mut d, &obs(&draining, 1), "2025-02-12T03:01:01Z");
    assert_eq!(done.status.last_outcome, Some(DrillOutcome::Passed));
    assert_eq!(
        done.status.next_run.as_ref().unwrap().0,
        t("2025-02-13T03:00:00Z")
    );
    // The operator was down over the next occurrence: not run 5 h late.
    let late = step(&mut d, &obs(&p, 1), "2025-02-13T08:00:00Z");
    assert!(late.status.active.is_none());
    assert_eq!(
        late.status.next_run.as_ref().unwrap().0,
        t("2025-02-14T03:00:00Z")
    );
}

#[test]
fn a_bad_schedule_names_the_field() {
    let mut d = drill(Some("every tuesday"));
    let dec = step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:00Z");
    let c = find_condition(&dec.status.conditions, POLICY_READY).unwrap();
    assert_eq!(c.status, "False");
    assert!(c.message.starts_with("spec.schedule"), "{}", c.message);
    assert!(dec.status.active.is_none());
    assert!(parse_schedule("61 3 * * *").is_err());
    assert!(parse_schedule("0 3 * * 2").is_ok());
}

#[test]
fn suspend_rolls_back_a_running_drill() {
    let mut d = drill(None);
    step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:00Z");
    d.spec.suspend = true;
    let dec = step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:05Z");
    assert!(dec.status.active.is_none());
    assert_eq!(dec.status.last_outcome, Some(DrillOutcome::Aborted));
    assert!(active_drain("main", [&d], t("2025-02-12T08:00:06Z")).is_none());
}

#[test]
fn the_policy_plans_with_the_drill_drain_until_it_ends() {
    let mut d = drill(None);
    step(&mut d, &obs(&healthy(), 1), "2025-02-12T08:00:00Z");
    let (name, region, until) = active_drain("main", [&d], t("2025-02-12T08:00:10Z")).unwrap();
    assert_eq!((name.as_str(), region.as_str()), ("weekly", "cologne"));
    assert!(active_drain("other", [&d], t("2025-02-12T08:00:10Z")).is_none());
    assert!(
        active_drain("main", [&d], t("2025-02-12T08:01:00Z")).is_none(),
        "over at until"
    );
    let p = healthy();
    let spec = drained_spec(&p.spec, &name, &region, until, t("2025-02-12T08:00:10Z")).unwrap();
    let o = spec.r#override.unwrap();
    assert_eq!(o.drain_regions, ["cologne"]);
    assert_eq!(o.until.as_deref(), Some("2025-02-12T08:01:00Z"));
    assert_eq!(o.reason.as_deref(), Some("failover drill weekly"));
    // The user's own override wins.
    let mut own = p.spec.clone();
    own.r#override = Some(OverrideSpec {
        drain_regions: vec!["frankfurt".into()],
        until: None,
        reason: None,
    });
    assert!(drained_spec(&own, &name, &region, until, t("2025-02-12T08:00:10Z")).is_none());
}

#[test]
fn the_drilled_plan_hands_over_when_another_region_fails() {
    use crate::crd::EndpointState;
    use crate::plan::fixtures::*;
    let spec = policy()
        .region("cologne", 50)
        .region("frankfurt", 50)
        .recover_after(10)
        .route("inbound", 1, |r| {
            r.tier("fixed", [trunk("fixed-cgn"), trunk("fixed-fra")])
        })
        .build();
    let healthy_world = || {
        world()
            .trunk("fixed-cgn", "cologne", ["sip:127.0.40.1:5060"])
            .trunk("fixed-fra", "frankfurt", ["sip:127.0.40.2:5060"])
    };
    let w = healthy_world();
    let t0 = t("2025-02-12T08:00:00Z");
    let (steady, _) = crate::plan::plan(&spec, &w.observed(), None, t0);
    let until = t("2025-02-12T08:05:00Z");
    let drilled = drained_spec(&spec, "weekly", "cologne", until, t0).unwrap();
    let (drained, _) = crate::plan::plan(&drilled, &w.observed(), Some(&steady), t0);
    assert_eq!(drained.regions[0].state, RegionState::Draining);
    assert_eq!(drained.regions[1].effective_weight, 100);
    assert!(
        !must_hand_over(&drained, "cologne"),
        "a healthy drill keeps going"
    );
    // Frankfurt's carrier dies mid-drill: the drilled plan has no region left.
    let dead = healthy_world().trunk_state("fixed-fra", EndpointState::Down);
    let t1 = t("2025-02-12T08:01:00Z");
    let (with_drill, _) = crate::plan::plan(&drilled, &dead.observed(), Some(&drained), t1);
    assert!(must_hand_over(&with_drill, "cologne"));
    // Without the drill, normal failover sends every call to cologne at once.
    let (handed, _) = crate::plan::plan(&spec, &dead.observed(), Some(&drained), t1);
    assert_eq!(handed.regions[0].state, RegionState::Active);
    assert_eq!(handed.regions[0].effective_weight, 100);
    assert_eq!(handed.regions[1].state, RegionState::Failed);
    assert!(!handed.routes[0].fail_open, "no routing gap");
}
