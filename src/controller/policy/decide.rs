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
    /// Not in any cache yet, but this process wrote this very content a moment ago:
    /// not written again. Looked at again after `recheck`, so that a ConfigMap removed
    /// before the watch showed it is still written.
    Unseen {
        /// Time left of [`UNSEEN_WRITE_GRACE`].
        recheck: std::time::Duration,
    },
}

/// How long a first routing this process wrote may stay out of the caches before it is
/// written again. The watch shows it within milliseconds, or seconds under a start-up
/// burst; a policy's own status write triggers its next pass before that (at 500
/// policies, that pass wrote 420 first routings a second time).
pub const UNSEEN_WRITE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A routing write of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The content hash written.
    pub hash: String,
    /// The resourceVersion the write produced.
    pub version: String,
    /// When the write returned.
    pub at: std::time::Instant,
}

/// The routing ConfigMap's content as rendered from the plan.
#[derive(Clone, Copy, Debug)]
pub struct Rendered<'a> {
    /// The data key of the routing text (by format).
    pub data_key: &'a str,
    /// The routing text's content hash.
    pub hash: &'a str,
    /// The edges' probe list.
    pub probes: &'a str,
}

/// Compare the routing ConfigMap as the caches show it with the `rendered` routing.
///
/// `exists` says whether a ConfigMap of that name exists at all (from the metadata
/// cache of every ConfigMap), `cached` is its full version if it carries lifeline's
/// label (from the cache of lifeline's ConfigMaps). `written` is what this process
/// wrote last: a cache that has not caught up with our own write yet is not a reason to
/// write again (`now` tells how long ago it was).
pub fn routing(
    policy: &FallbackPolicy,
    exists: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]>,
    cached: Option<&ConfigMap>,
    rendered: Rendered<'_>,
    written: Option<&Written>,
    now: std::time::Instant,
) -> Routing {
    let Rendered {
        data_key,
        hash,
        probes,
    } = rendered;
    let cm_name = &policy.spec.routing_config_map.name;
    let uid = policy.meta().uid.as_ref();
    // Missing from the full cache: to be written, unless this process has just written
    // this very content and the watch has not shown it yet.
    let missing = || match written {
        Some(w) if w.hash == hash => UNSEEN_WRITE_GRACE
            .checked_sub(now.saturating_duration_since(w.at))
            .filter(|left| !left.is_zero())
            .map_or(Routing::Stale, |recheck| Routing::Unseen { recheck }),
        _ => Routing::Stale,
    };
    let (owners, labelled) = match (cached, exists) {
        (Some(cm), _) => (cm.owner_references(), true),
        (None, Some(owners)) => (owners, false),
        (None, None) => return missing(),
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
        // Ours by owner, but not (yet) in the cache of lifeline's labelled ConfigMaps:
        // its label was removed by hand (rewrite it), or that watch is behind the
        // metadata watch.
        return missing();
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
    if let Some(w) = written
        && w.hash == hash
        && let (Some(cached), Some(ours)) = (
            version(cm.metadata.resource_version.as_ref()),
            version(Some(&w.version)),
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
mod tests;
