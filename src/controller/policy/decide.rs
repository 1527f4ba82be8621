//! The policy controller's decisions (pure): the plan with running drills, whether the
//! routing ConfigMap needs a write, which Events the planner's transitions become, and
//! when to look again.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::status::reasons;
use super::{CONTENT_HASH_ANNOTATION, MANAGED_BY_LABEL};
use crate::crd::{FailoverDrill, FallbackPolicy, RegionState};
use crate::plan::{Observed, Plan, PlanEvent};

/// Plan with a running FailoverDrill's drain, unless that plan would leave another
/// region out of traffic or a route fail-open: then plan without it, in the same pass,
/// so normal failover takes over with no routing gap (the drill controller then ends
/// the drill as Aborted).
pub fn plan_with_drills<'a>(
    policy: &FallbackPolicy,
    drills: impl IntoIterator<Item = &'a FailoverDrill>,
    observed: &Observed,
    previous: Option<&Plan>,
    now: jiff::Timestamp,
) -> (Plan, Vec<PlanEvent>) {
    let name = policy.name_any();
    if let Some((drill, region, until)) = crate::drill::active_drain(&name, drills, now)
        && let Some(spec) = crate::drill::drained_spec(&policy.spec, &drill, &region, until, now)
    {
        let drilled = crate::plan::plan(&spec, observed, previous, now);
        if !crate::drill::must_hand_over(&drilled.0, &region) {
            return drilled;
        }
        tracing::warn!(%drill, %region, "a real failure during drill: planning without it");
    }
    crate::plan::plan(&policy.spec, observed, previous, now)
}

/// What the routing ConfigMap holds compared with the rendered routing.
#[derive(Debug, PartialEq, Eq)]
pub enum Routing {
    /// Ours, and its data is exactly the rendered text (checked against the data, not
    /// only the hash annotation: a hand edit that keeps the annotations is reverted).
    Current,
    /// Missing, different, or adoptable: to be written.
    Stale,
    /// Exists and is not lifeline's: left alone.
    Conflict(String),
}

/// Compare the routing ConfigMap as the caches show it with the rendered routing.
///
/// `exists` says whether a ConfigMap of that name exists at all (from the metadata
/// cache of every ConfigMap), `cached` is its full version if it carries lifeline's
/// label (from the cache of lifeline's ConfigMaps). `written` is what this process
/// wrote last (hash and resourceVersion): a cache that has not caught up with our own
/// write yet is not a reason to write again.
pub fn routing(
    policy: &FallbackPolicy,
    exists: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]>,
    cached: Option<&ConfigMap>,
    data_key: &str,
    hash: &str,
    probes: &str,
    written: Option<&(String, String)>,
) -> Routing {
    let cm_name = &policy.spec.routing_config_map.name;
    let uid = policy.meta().uid.as_ref();
    let (owners, labelled) = match (cached, exists) {
        (Some(cm), _) => (cm.owner_references(), true),
        (None, Some(owners)) => (owners, false),
        (None, None) => return Routing::Stale,
    };
    let ours = owners.iter().any(|o| Some(&o.uid) == uid);
    // Adopt only a ConfigMap lifeline created (e.g. before its owner was recreated).
    let adoptable = labelled
        && cached.is_some_and(|cm| {
            cm.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some("lifeline")
        })
        && owners.is_empty();
    if !(ours || adoptable) {
        return Routing::Conflict(cm_name.clone());
    }
    let Some(cm) = cached else {
        // Ours by owner, but without lifeline's label (removed by hand): rewrite it.
        return Routing::Stale;
    };
    let same_hash = cm
        .annotations()
        .get(CONTENT_HASH_ANNOTATION)
        .map(String::as_str)
        == Some(hash);
    let same_data = cm.data.as_ref().is_some_and(|d| {
        d.get(data_key)
            .is_some_and(|text| crate::routing::content_hash(text) == hash)
    });
    // The edges' probe list changes with Trunk probe settings, not with the routing.
    let same_probes = cm.data.as_ref().is_some_and(|d| {
        d.len() == 2
            && d.get(crate::routing::probes::PROBES_KEY)
                .map(String::as_str)
                == Some(probes)
    });
    if ours && same_hash && same_data && same_probes {
        return Routing::Current;
    }
    // Our own write of this very content that the cache has not shown yet.
    let version = |v: Option<&String>| v.and_then(|v| v.parse::<u64>().ok());
    if let Some((written_hash, written_version)) = written
        && written_hash == hash
        && let (Some(cached), Some(ours)) = (
            version(cm.metadata.resource_version.as_ref()),
            version(Some(written_version)),
        )
        && cached < ours
    {
        return Routing::Current;
    }
    if !same_data && same_hash {
        tracing::warn!(configmap = %cm_name, "routing data was edited by hand; restoring it");
    }
    Routing::Stale
}

/// Which counter an Event also bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// `lifeline_failovers_total`.
    Failover,
    /// `lifeline_failbacks_total`.
    Failback,
}

/// One Event to publish for a planner event.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// Normal or Warning.
    pub type_: EventType,
    /// The Event reason (one of [`reasons`]).
    pub reason: &'static str,
    /// The human text.
    pub note: String,
    /// A counter to bump.
    pub count: Option<Count>,
}

/// The Events the planner's `events` become. A region leaving traffic is a Warning
/// (a drain the user asked for is Normal); a route moving to a later tier is a Warning,
/// back to an earlier one Normal. A failback held by the flapping budget is only logged.
pub fn notices(policy: &FallbackPolicy, events: &[PlanEvent]) -> Vec<Notice> {
    let mut out = Vec::new();
    for e in events {
        let notice = match e {
            PlanEvent::Transition {
                region,
                from,
                to,
                reason,
            } => {
                let note = format!("region {region}: {from} → {to}: {reason}");
                if *from == RegionState::Active {
                    let type_ = if *to == RegionState::Draining {
                        EventType::Normal
                    } else {
                        EventType::Warning
                    };
                    notice(type_, reasons::FAILOVER, note, Some(Count::Failover))
                } else if *to == RegionState::Active {
                    notice(
                        EventType::Normal,
                        reasons::FAILBACK,
                        note,
                        Some(Count::Failback),
                    )
                } else {
                    notice(EventType::Normal, reasons::REGION_STATE, note, None)
                }
            }
            PlanEvent::FailOpenStarted { routes } => notice(
                EventType::Warning,
                reasons::FAIL_OPEN,
                format!(
                    "no healthy destination for route(s) {}: keeping the last known good destinations",
                    routes.join(", ")
                ),
                None,
            ),
            PlanEvent::FailOpenEnded => notice(
                EventType::Normal,
                reasons::FAIL_OPEN_ENDED,
                "every route has healthy destinations again".to_string(),
                None,
            ),
            PlanEvent::TierChanged {
                route,
                from,
                to,
                cause,
            } => {
                let index = |tier: &str| {
                    policy
                        .spec
                        .routes
                        .iter()
                        .find(|r| &r.name == route)
                        .and_then(|r| r.tiers.iter().position(|t| t.name == tier))
                };
                let (type_, reason) = if index(to) > index(from) {
                    (EventType::Warning, reasons::TIER_FALLBACK)
                } else {
                    (EventType::Normal, reasons::TIER_RESTORED)
                };
                let note = format!("route {route}: tier {from} → {to}: {cause}");
                notice(type_, reason, note, None)
            }
            PlanEvent::FailbackHeld { region, until } => {
                tracing::debug!(%region, %until, "failback held back by maxTransitionsPerHour");
                continue;
            }
        };
        out.push(notice);
    }
    out
}

fn notice(type_: EventType, reason: &'static str, note: String, count: Option<Count>) -> Notice {
    Notice {
        type_,
        reason,
        note,
        count,
    }
}

/// When to plan again with no change in health: at the plan's next timer (failure,
/// recovery, override end), else after a long safety interval.
pub fn next_pass(plan: &Plan, now: jiff::Timestamp) -> Duration {
    match plan.next_wakeup {
        Some(at) => Duration::try_from(at.duration_since(now))
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(50)),
        None => Duration::from_secs(300),
    }
}

/// Regions per state (Active, Failed, Draining, Recovering), for the `regions` gauge.
pub fn region_counts(plan: &Plan) -> [i64; 4] {
    let mut counts = [0i64; 4];
    for r in &plan.regions {
        counts[match r.state {
            RegionState::Active => 0,
            RegionState::Failed => 1,
            RegionState::Draining => 2,
            RegionState::Recovering => 3,
        }] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
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

    fn cm(
        owners: Vec<OwnerReference>,
        labelled: bool,
        text: &str,
        hash: &str,
        rv: &str,
    ) -> ConfigMap {
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

    const PROBES: &str = "{\"version\": 1, \"targets\": []}\n";

    #[test]
    fn routing_is_written_only_when_it_differs_and_foreign_maps_are_left_alone() {
        let p = policy();
        let text = "1 sip:127.0.0.1:5060 0 100\n";
        let h = crate::routing::content_hash(text);
        let key = "dispatcher.list";
        let current = cm(vec![owner("uid-1")], true, text, &h, "10");
        let r = |exists: Option<&[OwnerReference]>,
                 cached: Option<&ConfigMap>,
                 written: Option<&(String, String)>| {
            routing(&p, exists, cached, key, &h, PROBES, written)
        };
        let ours = [owner("uid-1")];
        // Other probe settings for the edges: the same routing is written again.
        assert_eq!(
            routing(&p, Some(&ours[..]), Some(&current), key, &h, "{}", None),
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
        let written = (h.clone(), "10".to_string());
        assert_eq!(r(None, Some(&old), Some(&written)), Routing::Current);
        // …but a later version that differs is an edit to undo.
        let later = cm(vec![owner("uid-1")], true, "old\n", "old", "11");
        assert_eq!(r(None, Some(&later), Some(&written)), Routing::Stale);
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
}
