use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// A policy `cc/main` with two regions and one route `inbound` (tiers fixed, mobile),
/// whose status shows `regions` (name, state), the active tier and conditions.
fn policy(
    regions: &[(&str, &str)],
    active_tier: &str,
    conditions: serde_json::Value,
) -> FallbackPolicy {
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": { "name": "main", "namespace": "cc" },
        "spec": {
            "routingConfigMap": { "name": "routing" },
            "regions": [{ "name": "cologne" }, { "name": "frankfurt" }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "fixed-cgn" }] },
                { "name": "mobile", "targets": [{ "trunk": "mobile-cgn" }] },
            ]}],
        },
        "status": {
            "regions": regions.iter().map(|(n, s)| json!({
                "name": n, "state": s, "reason": "1 of 2 trunks healthy", "effectiveWeight": 0, "hasServed": true
            })).collect::<Vec<_>>(),
            "routes": [{ "name": "inbound", "setId": 1, "activeTier": active_tier }],
            "conditions": conditions,
        },
    }))
    .unwrap()
}

fn keys(alerts: &[Alert]) -> Vec<&str> {
    alerts.iter().map(|a| a.key.as_str()).collect()
}

#[test]
fn a_healthy_policy_has_no_alerts() {
    let p = policy(
        &[("cologne", "Active"), ("frankfurt", "Active")],
        "fixed",
        json!([]),
    );
    assert!(alerts_of(&p).is_empty());
}

#[test]
fn failed_and_recovering_regions_fire_draining_does_not() {
    let p = policy(
        &[("cologne", "Failed"), ("frankfurt", "Draining")],
        "fixed",
        json!([]),
    );
    let a = alerts_of(&p);
    assert_eq!(keys(&a), ["cc/main/region/cologne"]);
    assert_eq!(a[0].severity, Severity::Critical);
    assert!(a[0].summary.contains("cologne"), "{}", a[0].summary);
    assert!(
        a[0].summary.contains("1 of 2 trunks healthy"),
        "{}",
        a[0].summary
    );
    let p = policy(&[("cologne", "Recovering")], "fixed", json!([]));
    assert_eq!(keys(&alerts_of(&p)), ["cc/main/region/cologne"]);
}

#[test]
fn a_new_region_waiting_for_its_first_measurement_is_not_an_alert() {
    let mut p = policy(&[("cologne", "Recovering")], "fixed", json!([]));
    let region = &mut p.status.as_mut().unwrap().regions[0];
    region.reason = Some(crate::plan::FIRST_MEASUREMENT.into());
    region.has_served = false;
    assert!(alerts_of(&p).is_empty());
}

#[test]
fn a_region_that_never_served_is_not_an_alert() {
    let mut p = policy(&[("cologne", "Failed")], "fixed", json!([]));
    p.status.as_mut().unwrap().regions[0].has_served = false;
    assert!(alerts_of(&p).is_empty());
}

#[test]
fn each_fallback_tier_is_its_own_alert() {
    let p = policy(&[("cologne", "Active")], "mobile", json!([]));
    let a = alerts_of(&p);
    assert_eq!(keys(&a), ["cc/main/route/inbound/tier/mobile"]);
    assert_eq!(a[0].kind, AlertKind::TierFallback);
    assert!(
        a[0].summary.contains("mobile instead of fixed"),
        "{}",
        a[0].summary
    );
}

#[test]
fn fail_open_and_capacity_short_come_from_conditions() {
    let p = policy(
        &[("cologne", "Active")],
        "fixed",
        json!([
            { "type": "Degraded", "status": "True", "reason": "FailOpen", "message": "route inbound has no healthy destination", "lastTransitionTime": "2025-02-12T08:00:00Z" },
            { "type": "CapacitySufficient", "status": "False", "reason": "Short", "message": "50 of 80 calls", "lastTransitionTime": "2025-02-12T08:00:00Z" },
        ]),
    );
    let a = alerts_of(&p);
    assert_eq!(keys(&a), ["cc/main/fail-open", "cc/main/capacity"]);
    let p = policy(
        &[("cologne", "Active")],
        "fixed",
        json!([{ "type": "Degraded", "status": "True", "reason": "RegionFailed", "message": "x", "lastTransitionTime": "2025-02-12T08:00:00Z" }]),
    );
    assert!(
        alerts_of(&p).is_empty(),
        "Degraded for another reason is covered by RegionDown"
    );
}

#[test]
fn pending_triggers_new_alerts_and_resolves_ended_ones_once() {
    let failed = policy(&[("cologne", "Failed")], "fixed", json!([]));
    let firing = alerts_of(&failed);
    let mut notified = Vec::new();
    let todo = pending(&firing, &notified, Severity::Warning);
    assert_eq!(todo.len(), 1);
    assert!(matches!(&todo[0], Delivery::Trigger(a) if a.key == "cc/main/region/cologne"));
    record(&mut notified, &todo[0]);
    // Still firing: nothing more to send, however often we look.
    assert!(pending(&firing, &notified, Severity::Warning).is_empty());
    record(&mut notified, &todo[0]);
    assert_eq!(notified.len(), 1, "recording twice keeps one entry");
    // Over: exactly one resolve, carrying the trigger's summary.
    let todo = pending(&[], &notified, Severity::Warning);
    assert_eq!(todo.len(), 1);
    assert!(matches!(&todo[0], Delivery::Resolve(n) if n.summary.contains("cologne")));
    record(&mut notified, &todo[0]);
    assert!(notified.is_empty());
    assert!(pending(&[], &notified, Severity::Warning).is_empty());
}

#[test]
fn min_severity_filters_warnings() {
    let p = policy(&[("cologne", "Failed")], "mobile", json!([]));
    let firing = alerts_of(&p);
    assert_eq!(firing.len(), 2);
    let todo = pending(&firing, &[], Severity::Critical);
    assert_eq!(todo.len(), 1);
    assert_eq!(todo[0].key(), "cc/main/region/cologne");
}

#[test]
fn pagerduty_payloads_are_events_v2() {
    let p = policy(&[("cologne", "Failed")], "fixed", json!([]));
    let alert = alerts_of(&p).remove(0);
    let now = jiff::Timestamp::from_second(1_739_347_200).unwrap();
    let trigger = payload(
        ReceiverFormat::PagerDuty,
        &Delivery::Trigger(alert.clone()),
        Some("R0UTING"),
        now,
    );
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["routing_key"], "R0UTING");
    assert_eq!(trigger["dedup_key"], "cc/main/region/cologne");
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["source"], "lifeline/cc/main");
    assert_eq!(trigger["payload"]["component"], "cologne");
    assert!(
        trigger["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("cologne")
    );
    let mut notified = Vec::new();
    record(&mut notified, &Delivery::Trigger(alert));
    let resolve = payload(
        ReceiverFormat::PagerDuty,
        &Delivery::Resolve(notified[0].clone()),
        Some("R0UTING"),
        now,
    );
    assert_eq!(
        resolve,
        json!({ "routing_key": "R0UTING", "event_action": "resolve", "dedup_key": "cc/main/region/cologne" })
    );
}

#[test]
fn json_and_slack_payloads() {
    let p = policy(&[("cologne", "Failed")], "fixed", json!([]));
    let alert = alerts_of(&p).remove(0);
    let now = jiff::Timestamp::from_second(1_739_347_200).unwrap();
    let doc = payload(
        ReceiverFormat::Json,
        &Delivery::Trigger(alert.clone()),
        None,
        now,
    );
    assert_eq!(doc["status"], "firing");
    assert_eq!(doc["kind"], "RegionDown");
    assert_eq!(doc["namespace"], "cc");
    assert_eq!(doc["policy"], "main");
    assert_eq!(doc["subject"], "cologne");
    assert_eq!(doc["time"], "2025-02-12T08:00:00Z");
    let slack = payload(ReceiverFormat::Slack, &Delivery::Trigger(alert), None, now);
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.starts_with(":rotating_light: [critical] region cologne"),
        "{text}"
    );
}

#[test]
fn rate_limit_spreads_a_burst_over_the_minute() {
    let t0 = Instant::now();
    let mut rl = RateLimit::new(2, t0);
    assert!(rl.take(2, t0).is_ok());
    assert!(rl.take(2, t0).is_ok());
    let wait = rl.take(2, t0).unwrap_err();
    assert!(
        wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert!(rl.take(2, t0 + Duration::from_secs(30)).is_ok());
}
