//! Unit tests of the observe step.

use super::*;
use kube::runtime::watcher::Event;
use std::time::Duration;

fn trunk(name: &str, disabled: bool, published: bool) -> Guarded<Trunk> {
    let mut t: Trunk = serde_json::from_value(serde_json::json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
        "metadata": { "name": name, "namespace": "ns" },
        "spec": {
            "region": "cologne",
            "endpoints": [{ "uri": format!("sip:{name}@127.0.0.1") }],
            "probe": { "periodSeconds": 10, "timeoutMillis": 500 },
            "disabled": disabled,
        },
    }))
    .unwrap();
    if published {
        t.status = serde_json::from_value(serde_json::json!({
            "endpoints": [{ "uri": format!("sip:{name}@127.0.0.1"), "state": "Up" }],
        }))
        .unwrap();
    }
    kube::core::DeserializeGuard(Ok(t))
}

fn caches(trunks: Vec<Guarded<Trunk>>) -> Caches {
    let (store, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for t in trunks {
        writer.apply_watcher_event(&Event::InitApply(t));
    }
    writer.apply_watcher_event(&Event::InitDone);
    Caches {
        trunks: store,
        bot_pools: kube::runtime::reflector::store().0,
        drills: kube::runtime::reflector::store().0,
        config_maps: kube::runtime::reflector::store().0,
        config_map_owners: kube::runtime::reflector::store().0,
        verdicts: Arc::default(),
    }
}

fn policy(trunks: &[&str]) -> FallbackPolicy {
    let spec = crate::plan::fixtures::policy()
        .region("cologne", 1)
        .route("inbound", 1, |r| {
            r.tier(
                "fixed",
                trunks.iter().map(|t| crate::plan::fixtures::trunk(t)),
            )
        })
        .build();
    FallbackPolicy::new("cc", spec)
}

#[test]
fn a_new_policy_waits_only_for_trunks_that_will_publish_a_first_verdict() {
    let c = caches(vec![
        trunk("new", false, false),
        trunk("judged", false, true),
        trunk("maintenance", true, false),
    ]);
    // One round of the unjudged Trunk (its period plus its timeout) and the slack
    // for its status write.
    assert_eq!(
        verdicts_pending(&policy(&["new", "judged"]), "ns", &c, VerdictWait::First),
        Some(Duration::from_millis(10_500) + FIRST_VERDICT_SLACK)
    );
    // Published, disabled (never probed) or missing (a verdict too): nothing to wait for.
    assert_eq!(
        verdicts_pending(
            &policy(&["judged", "maintenance", "absent"]),
            "ns",
            &c,
            VerdictWait::First
        ),
        None
    );
    // Another namespace's Trunk of the same name does not count.
    assert_eq!(
        verdicts_pending(&policy(&["new"]), "other", &c, VerdictWait::First),
        None
    );
    // A verdict this replica decided counts before its status is written.
    let key = ("ns".to_string(), "new".to_string());
    let decided = parsed(&trunk("new", false, true)).unwrap().status.clone();
    c.verdicts.decide(&key, decided.unwrap());
    assert_eq!(
        verdicts_pending(&policy(&["new"]), "ns", &c, VerdictWait::First),
        None
    );
}

#[test]
fn a_new_term_waits_for_trunks_this_replica_has_not_judged() {
    let c = caches(vec![
        trunk("judged", false, true),
        trunk("unjudged", false, true),
        trunk("maintenance", true, true),
    ]);
    let takeover =
        |names: &[&str]| verdicts_pending(&policy(names), "ns", &c, VerdictWait::Takeover);
    // No Trunk controller in this process: nothing to wait for.
    assert_eq!(takeover(&["judged", "unjudged"]), None);
    c.verdicts.start_judging();
    c.verdicts
        .mark_judged(&("ns".to_string(), "judged".to_string()));
    // A published status is not enough: the routing may be ahead of it.
    assert_eq!(
        takeover(&["judged", "unjudged"]),
        Some(Duration::from_millis(10_500) + FIRST_VERDICT_SLACK)
    );
    assert_eq!(takeover(&["judged", "maintenance", "absent"]), None);
}

#[test]
fn a_static_target_is_waited_for_until_this_process_measured_it() {
    let with_uri = FallbackPolicy::new(
        "cc",
        crate::plan::fixtures::policy()
            .region("cologne", 1)
            .route("inbound", 1, |r| {
                r.tier(
                    "agents",
                    [crate::plan::fixtures::uri("sip:pbx@127.0.0.1", "cologne")],
                )
            })
            .build(),
    );
    let round = Duration::from_secs(u64::from(with_uri.spec.probe.period_seconds))
        + Duration::from_millis(u64::from(with_uri.spec.probe.timeout_millis));
    // Unmeasured (new policy, restart, or refused by the quota): one round, bounded.
    assert_eq!(
        static_targets_pending(&with_uri, || false),
        Some(round + FIRST_VERDICT_SLACK)
    );
    assert_eq!(static_targets_pending(&with_uri, || true), None);
    // Only Trunks: the prober is not even asked.
    assert_eq!(
        static_targets_pending(&policy(&["fixed"]), || panic!("asked")),
        None
    );
}

#[test]
fn the_planner_sees_a_decided_verdict_before_the_cache_does() {
    let c = caches(vec![trunk("fixed", false, true)]);
    let state =
        |c: &Caches| observe(&policy(&["fixed"]), "ns", c).trunks["fixed"].endpoints[0].state;
    assert_eq!(state(&c), crate::crd::EndpointState::Up);
    let mut down = parsed(&trunk("fixed", false, true))
        .unwrap()
        .status
        .clone()
        .unwrap();
    down.endpoints[0].state = crate::crd::EndpointState::Down;
    c.verdicts
        .decide(&("ns".to_string(), "fixed".to_string()), down);
    assert_eq!(state(&c), crate::crd::EndpointState::Down);
}
