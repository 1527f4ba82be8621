use super::*;
use crate::routing::probes::PROBES_KEY;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

fn policy() -> FallbackPolicy {
    let spec = crate::plan::fixtures::policy()
        .region("cologne", 1)
        .route("inbound", 1, |r| {
            r.tier("fixed", [crate::plan::fixtures::trunk("fixed-cgn")])
                .tier("mobile", [crate::plan::fixtures::trunk("mobile-cgn")])
        })
        .build();
    let mut p = FallbackPolicy::new("cc", spec);
    p.metadata.uid = Some("uid-1".into());
    p
}

fn owner(uid: &str) -> OwnerReference {
    OwnerReference {
        uid: uid.into(),
        ..Default::default()
    }
}

fn cm(owners: Vec<OwnerReference>, labelled: bool, text: &str, hash: &str, rv: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.owner_references = Some(owners);
    cm.metadata.resource_version = Some(rv.into());
    if labelled {
        cm.labels_mut()
            .insert(MANAGED_BY_LABEL.into(), "lifeline".into());
    }
    cm.annotations_mut()
        .insert(CONTENT_HASH_ANNOTATION.into(), hash.into());
    cm.data = Some(
        [
            ("dispatcher.list".to_string(), text.to_string()),
            (PROBES_KEY.to_string(), PROBES.to_string()),
        ]
        .into(),
    );
    cm
}

fn rendered<'a>(data_key: &'a str, hash: &'a str, probes: &'a str) -> Rendered<'a> {
    Rendered {
        data_key,
        hash,
        probes,
    }
}

const PROBES: &str = "{\"version\": 1, \"targets\": []}\n";

#[test]
fn routing_is_written_only_when_it_differs_and_foreign_maps_are_left_alone() {
    let p = policy();
    let text = "1 sip:127.0.0.1:5060 0 100\n";
    let h = crate::routing::content_hash(text);
    let key = "dispatcher.list";
    let now = std::time::Instant::now();
    let current = cm(vec![owner("uid-1")], true, text, &h, "10");
    let r = |exists: Option<&[OwnerReference]>,
             cached: Option<&ConfigMap>,
             written: Option<&Written>| {
        routing(&p, exists, cached, rendered(key, &h, PROBES), written, now)
    };
    let ours = [owner("uid-1")];
    // Other probe settings for the edges: the same routing is written again.
    assert_eq!(
        routing(
            &p,
            Some(&ours[..]),
            Some(&current),
            rendered(key, &h, "{}"),
            None,
            now
        ),
        Routing::Stale
    );

    assert_eq!(r(None, None, None), Routing::Stale, "missing: create");
    assert_eq!(r(Some(&ours[..]), Some(&current), None), Routing::Current);
    // A hand edit that keeps the hash annotation is still a difference.
    let edited = cm(
        vec![owner("uid-1")],
        true,
        "1 sip:192.0.2.1 0 1\n",
        &h,
        "11",
    );
    assert_eq!(r(None, Some(&edited), None), Routing::Stale);
    // Lifeline's, without an owner (its policy was recreated): adopted.
    let orphan = cm(vec![], true, text, &h, "12");
    assert_eq!(r(None, Some(&orphan), None), Routing::Stale);
    // Someone else's: a conflict, whether or not it carries our label.
    let foreign = cm(vec![owner("other")], true, text, &h, "13");
    assert_eq!(
        r(None, Some(&foreign), None),
        Routing::Conflict(p.spec.routing_config_map.name.clone())
    );
    assert!(matches!(r(Some(&[][..]), None, None), Routing::Conflict(_)));
    // Ours by owner, label removed by hand: rewritten.
    assert_eq!(r(Some(&ours[..]), None, None), Routing::Stale);
    // The cache still shows version 9 while we wrote this content as version 10.
    let old = cm(vec![owner("uid-1")], true, "old\n", "old", "9");
    let written = Written {
        hash: h.clone(),
        version: "10".into(),
        at: now,
    };
    assert_eq!(r(None, Some(&old), Some(&written)), Routing::Current);
    // …but a later version that differs is an edit to undo.
    let later = cm(vec![owner("uid-1")], true, "old\n", "old", "11");
    assert_eq!(r(None, Some(&later), Some(&written)), Routing::Stale);
}

#[test]
fn a_first_routing_no_cache_shows_yet_is_not_written_again_for_a_while() {
    let p = policy();
    let text = "1 sip:127.0.0.1:5060 0 100\n";
    let h = crate::routing::content_hash(text);
    let wrote = std::time::Instant::now();
    let written = Written {
        hash: h.clone(),
        version: "10".into(),
        at: wrote,
    };
    let r = |written: Option<&Written>, after: std::time::Duration| {
        routing(
            &p,
            None,
            None,
            rendered("dispatcher.list", &h, PROBES),
            written,
            wrote + after,
        )
    };
    // The policy's own status write brings it back before the ConfigMap watch shows
    // the routing it has just written: nothing to write, look again in a moment.
    assert_eq!(
        r(Some(&written), std::time::Duration::from_millis(60)),
        Routing::Unseen {
            recheck: UNSEEN_WRITE_GRACE - std::time::Duration::from_millis(60)
        }
    );
    // The same when only the metadata watch has shown it so far.
    let ours = [owner("uid-1")];
    assert!(matches!(
        routing(
            &p,
            Some(&ours[..]),
            None,
            rendered("dispatcher.list", &h, PROBES),
            Some(&written),
            wrote
        ),
        Routing::Unseen { .. }
    ));
    // Still missing after the grace (removed before the watch showed it): written.
    assert_eq!(r(Some(&written), UNSEEN_WRITE_GRACE), Routing::Stale);
    // Another plan since, or nothing written by this process: written.
    let other = Written {
        hash: "other".into(),
        ..written.clone()
    };
    assert_eq!(r(Some(&other), std::time::Duration::ZERO), Routing::Stale);
    assert_eq!(r(None, std::time::Duration::ZERO), Routing::Stale);
}

#[test]
fn planner_events_become_events_of_the_right_kind() {
    let p = policy();
    let tr = |from, to| PlanEvent::Transition {
        region: "cologne".into(),
        from,
        to,
        reason: "0 of 1 trunks healthy".into(),
    };
    let tier = |from: &str, to: &str| PlanEvent::TierChanged {
        route: "inbound".into(),
        from: from.into(),
        to: to.into(),
        cause: "trunk fixed-cgn down".into(),
    };
    let events = [
        tr(RegionState::Active, RegionState::Failed),
        tr(RegionState::Active, RegionState::Draining),
        tr(RegionState::Failed, RegionState::Recovering),
        tr(RegionState::Recovering, RegionState::Active),
        tier("fixed", "mobile"),
        tier("mobile", "fixed"),
        PlanEvent::FailOpenStarted {
            routes: vec!["inbound".into()],
        },
        PlanEvent::FailOpenEnded,
        PlanEvent::FailbackHeld {
            region: "cologne".into(),
            until: jiff::Timestamp::UNIX_EPOCH,
        },
    ];
    let got: Vec<(EventType, &str, Option<Count>)> = notices(&p, &events)
        .into_iter()
        .map(|n| (n.type_, n.reason, n.count))
        .collect();
    use EventType::{Normal, Warning};
    assert_eq!(
        got,
        vec![
            (Warning, reasons::FAILOVER, Some(Count::Failover)),
            (Normal, reasons::FAILOVER, Some(Count::Failover)),
            (Normal, reasons::REGION_STATE, None),
            (Normal, reasons::FAILBACK, Some(Count::Failback)),
            (Warning, reasons::TIER_FALLBACK, None),
            (Normal, reasons::TIER_RESTORED, None),
            (Warning, reasons::FAIL_OPEN, None),
            (Normal, reasons::FAIL_OPEN_ENDED, None),
        ]
    );
    let first = &notices(&p, &events[..1])[0];
    assert_eq!(
        first.note,
        "region cologne: Active → Failed: 0 of 1 trunks healthy"
    );
    let tier_note = &notices(&p, &events[4..5])[0].note;
    assert_eq!(
        tier_note,
        "route inbound: tier fixed → mobile: trunk fixed-cgn down"
    );
}

#[test]
fn next_pass_follows_the_plans_timer() {
    let now = jiff::Timestamp::from_second(1000).unwrap();
    let spec = crate::plan::fixtures::policy()
        .region("cologne", 1)
        .route("inbound", 1, |r| {
            r.tier("fixed", [crate::plan::fixtures::trunk("a")])
        })
        .build();
    let world = crate::plan::fixtures::world().trunk("a", "cologne", ["sip:127.0.0.1"]);
    let (mut plan, _) = crate::plan::plan(&spec, &world.observed(), None, now);
    plan.next_wakeup = None;
    assert_eq!(next_pass(&plan, now), Duration::from_secs(300));
    plan.next_wakeup = Some(jiff::Timestamp::from_second(1030).unwrap());
    assert_eq!(next_pass(&plan, now), Duration::from_secs(30));
    plan.next_wakeup = Some(jiff::Timestamp::from_second(900).unwrap());
    assert_eq!(next_pass(&plan, now), Duration::from_millis(50));
    assert_eq!(region_counts(&plan), [1, 0, 0, 0]);
}
