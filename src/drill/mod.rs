//! Failover drills: when a drill runs, what it drains, and how a run ends. Plain
//! functions over plain data; the FailoverDrill controller and the policy controller
//! do the I/O.
//!
//! # Rules
//!
//! **When.** Without `spec.schedule` a drill runs once, as soon as it exists. With a
//! schedule (five-field cron, UTC) it runs at each occurrence after the previous run
//! started (or after the drill was created). An occurrence missed by more than
//! [`MISSED_AFTER`] (the operator was down, say) is not run late; the next one is.
//!
//! **Whether.** A run starts only when the policy exists, lists `drainRegion`, is not
//! `Degraded`, has no `spec.override` in force, the region is `Active`, and no other
//! drill of the same policy is running. Otherwise the run is recorded as `Skipped`
//! with the reason, and the next occurrence is awaited.
//!
//! **How.** While a run is active (`status.active`, durable across restarts) the
//! policy controller plans as if `spec.override` drained the region until
//! `active.until` ([`drained_spec`]). If that plan would leave another region out of
//! traffic, or a route fail-open, the policy controller plans without the drill in the
//! same pass ([`must_hand_over`]): a real failure during a drill is handled by normal
//! failover with no routing gap, and the drill ends as `Aborted` when its controller
//! sees it.
//!
//! **Ending.** `Passed` when `until` is reached and the region did leave traffic;
//! `Failed` when it had not left traffic `shiftDeadlineSeconds` after the start;
//! `Aborted` on a real failure (another region `Failed`/`Recovering`, fail-open),
//! capacity short (when `abortOnCapacityShort`), the policy deleted, or `suspend`.

#[cfg(test)]
mod tests;

use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    ActiveDrill, DRILL_RUNS_LIMIT, DrillOutcome, DrillPhase, DrillRun, FailoverDrill,
    FailoverDrillStatus, FallbackPolicy, FallbackPolicySpec, OverrideSpec,
    POLICY_CAPACITY_SUFFICIENT, POLICY_DEGRADED, POLICY_READY, RegionState, condition,
    find_condition, merge_condition,
};
use crate::plan::Plan;

/// An occurrence missed by more than this is skipped rather than run late.
pub const MISSED_AFTER: SignedDuration = SignedDuration::from_secs(600);

/// What the drill controller observed.
#[derive(Clone, Debug, Default)]
pub struct Observation<'a> {
    /// The drill's policy, if it exists.
    pub policy: Option<&'a FallbackPolicy>,
    /// Bot replicas desired now over the pools the policy assigns demand to.
    pub bots_desired: u32,
    /// The name of another drill of the same policy that is running, if any.
    pub other_running: Option<String>,
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// Short CamelCase reason.
    pub reason: &'static str,
    /// The message.
    pub note: String,
}

/// The drill controller's decision.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The status to publish.
    pub status: FailoverDrillStatus,
    /// Events, in order.
    pub events: Vec<DrillEvent>,
    /// When to look again even if nothing changes.
    pub wake_at: Option<Timestamp>,
}

/// Parse a five-field cron schedule; the error names the field and the fix.
pub fn parse_schedule(s: &str) -> Result<croner::Cron, String> {
    if s.split_whitespace().count() != 5 {
        return Err(format!(
            "spec.schedule '{s}' must have five fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * 2'"
        ));
    }
    croner::Cron::from_str(s).map_err(|e| {
        format!("spec.schedule '{s}' is not a valid cron expression ({e}); use five fields such as '0 3 * * 2'")
    })
}

fn next_after(cron: &croner::Cron, t: Timestamp) -> Option<Timestamp> {
    let z = t.to_zoned(jiff::tz::TimeZone::UTC);
    cron.find_next_occurrence(&z, false)
        .ok()
        .map(|z| z.timestamp())
}

fn secs(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Decide the drill's next status from what was observed at `now`.
pub fn decide(drill: &FailoverDrill, obs: &Observation<'_>, now: Timestamp) -> Decision {
    let now = secs(now);
    let generation = drill.metadata.generation;
    let mut status = drill.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let mut events = Vec::new();

    let schedule = match drill.spec.schedule.as_deref().map(parse_schedule) {
        Some(Err(message)) => {
            merge_condition(
                &mut status.conditions,
                condition(
                    POLICY_READY,
                    false,
                    "InvalidSchedule",
                    message.clone(),
                    generation,
                ),
                now,
            );
            if let Some(active) = status.active.take() {
                end_run(
                    &mut status,
                    &mut events,
                    active,
                    now,
                    DrillOutcome::Aborted,
                    message,
                );
            }
            status.phase = DrillPhase::Scheduled;
            status.next_run = None;
            return Decision {
                status,
                events,
                wake_at: None,
            };
        }
        Some(Ok(c)) => Some(c),
        None => None,
    };

    // A run in progress: see whether it ends now.
    if let Some(mut active) = status.active.take() {
        active.bots_peak = active.bots_peak.max(obs.bots_desired);
        let region_state = obs.policy.and_then(|p| region_state(p, &active.region));
        if active.shifted.is_none() && region_state == Some(RegionState::Draining) {
            active.shifted = Some(Time(now));
            let after = now.duration_since(active.started.0).as_secs();
            events.push(DrillEvent {
                warning: false,
                reason: "DrillShifted",
                note: format!(
                    "region {} left traffic {after} s after the drill started",
                    active.region
                ),
            });
        }
        let ending = if drill.spec.suspend {
            Some((DrillOutcome::Aborted, "spec.suspend was set".to_string()))
        } else if let Some(policy) = obs.policy {
            if let Some(why) = real_failure(policy, &active.region) {
                Some((
                    DrillOutcome::Aborted,
                    format!("{why}; normal failover took over"),
                ))
            } else if drill.spec.abort_on_capacity_short
                && let Some(c) =
                    find_condition(status_conditions(policy), POLICY_CAPACITY_SUFFICIENT)
                && c.status == "False"
            {
                Some((
                    DrillOutcome::Aborted,
                    format!("capacity short during the drill: {}", c.message),
                ))
            } else if active.shifted.is_none()
                && now.duration_since(active.started.0).as_secs()
                    >= i64::from(drill.spec.shift_deadline_seconds)
            {
                Some((
                    DrillOutcome::Failed,
                    format!(
                        "region {} did not leave traffic within {} s",
                        active.region, drill.spec.shift_deadline_seconds
                    ),
                ))
            } else if now >= active.until.0 {
                let took = active
                    .shifted
                    .as_ref()
                    .map_or(0, |s| s.0.duration_since(active.started.0).as_secs());
                Some((
                    DrillOutcome::Passed,
                    format!(
                        "region {} drained for {} s (calls moved in {took} s) and rolled back on time",
                        active.region, drill.spec.duration_seconds
                    ),
                ))
            } else {
                None
            }
        } else {
            Some((
                DrillOutcome::Aborted,
                format!("FallbackPolicy {} was deleted", drill.spec.policy),
            ))
        };
        match ending {
            Some((outcome, reason)) => {
                end_run(&mut status, &mut events, active, now, outcome, reason);
            }
            None => {
                let mut wake = active.until.0;
                if active.shifted.is_none() {
                    let deadline = active.started.0
                        + SignedDuration::from_secs(i64::from(drill.spec.shift_deadline_seconds));
                    wake = wake.min(deadline);
                }
                status.active = Some(active);
                status.phase = DrillPhase::Running;
                ready(&mut status, obs, drill, now);
                return Decision {
                    status,
                    events,
                    wake_at: Some(wake),
                };
            }
        }
    }

    ready(&mut status, obs, drill, now);
    if drill.spec.suspend {
        status.phase = DrillPhase::Suspended;
        status.next_run = None;
        return Decision {
            status,
            events,
            wake_at: None,
        };
    }

    // No run in progress: when is the next one?
    let created = drill
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let last_start = status.runs.last().map(|r| r.started.0);
    let due = match &schedule {
        None if last_start.is_some() => {
            status.phase = DrillPhase::Completed;
            status.next_run = None;
            return Decision {
                status,
                events,
                wake_at: None,
            };
        }
        None => now,
        Some(cron) => {
            let base = last_start.unwrap_or(created).max(created);
            let mut due = next_after(cron, base);
            if let Some(d) = due
                && now.duration_since(d) > MISSED_AFTER
            {
                due = next_after(cron, now);
            }
            match due {
                Some(d) => d,
                None => {
                    status.phase = DrillPhase::Scheduled;
                    status.next_run = None;
                    return Decision {
                        status,
                        events,
                        wake_at: None,
                    };
                }
            }
        }
    };
    if now < due {
        status.phase = DrillPhase::Scheduled;
        status.next_run = Some(Time(due));
        return Decision {
            status,
            events,
            wake_at: Some(due),
        };
    }

    // Due now: start, or record why not.
    let region = drill.spec.drain_region.clone();
    match start_blocker(drill, obs, now) {
        Some(why) => {
            push_run(
                &mut status,
                DrillRun {
                    started: Time(now),
                    ended: Time(now),
                    region: region.clone(),
                    outcome: DrillOutcome::Skipped,
                    reason: why.clone(),
                    shift_seconds: None,
                    bots: None,
                },
            );
            status.last_outcome = Some(DrillOutcome::Skipped);
            events.push(DrillEvent {
                warning: true,
                reason: "DrillSkipped",
                note: format!("drill of region {region} not started: {why}"),
            });
        }
        None => {
            let until = now + SignedDuration::from_secs(i64::from(drill.spec.duration_seconds));
            events.push(DrillEvent {
                warning: false,
                reason: "DrillStarted",
                note: format!(
                    "draining region {region} of policy {} for {} s (until {until})",
                    drill.spec.policy, drill.spec.duration_seconds
                ),
            });
            status.active = Some(ActiveDrill {
                region,
                started: Time(now),
                until: Time(until),
                shifted: None,
                bots_before: obs.bots_desired,
                bots_peak: obs.bots_desired,
            });
            status.phase = DrillPhase::Running;
            let deadline =
                now + SignedDuration::from_secs(i64::from(drill.spec.shift_deadline_seconds));
            return Decision {
                status,
                events,
                wake_at: Some(deadline.min(until)),
            };
        }
    }
    // Skipped: schedule the next occurrence.
    let next = schedule.as_ref().and_then(|c| next_after(c, now));
    status.phase = if schedule.is_some() {
        DrillPhase::Scheduled
    } else {
        DrillPhase::Completed
    };
    status.next_run = next.map(Time);
    Decision {
        status,
        events,
        wake_at: next,
    }
}

fn ready(
    status: &mut FailoverDrillStatus,
    obs: &Observation<'_>,
    drill: &FailoverDrill,
    now: Timestamp,
) {
    let c = match obs.policy {
        None => condition(
            POLICY_READY,
            false,
            "PolicyNotFound",
            format!(
                "spec.policy: FallbackPolicy {} does not exist in this namespace",
                drill.spec.policy
            ),
            drill.metadata.generation,
        ),
        Some(p)
            if !p
                .spec
                .regions
                .iter()
                .any(|r| r.name == drill.spec.drain_region) =>
        {
            condition(
                POLICY_READY,
                false,
                "UnknownRegion",
                format!(
                    "spec.drainRegion: '{}' is not a region of FallbackPolicy {}; use one of {}",
                    drill.spec.drain_region,
                    drill.spec.policy,
                    p.spec
                        .regions
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                drill.metadata.generation,
            )
        }
        Some(_) => condition(
            POLICY_READY,
            true,
            "Valid",
            "the drill can run",
            drill.metadata.generation,
        ),
    };
    merge_condition(&mut status.conditions, c, now);
}

fn status_conditions(
    policy: &FallbackPolicy,
) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
    policy
        .status
        .as_ref()
        .map_or(&[], |s| s.conditions.as_slice())
}

fn region_state(policy: &FallbackPolicy, region: &str) -> Option<RegionState> {
    policy
        .status
        .as_ref()?
        .regions
        .iter()
        .find(|r| r.name == region)
        .map(|r| r.state)
}

/// A real failure visible in the policy's status, other than the drained region.
fn real_failure(policy: &FallbackPolicy, drained: &str) -> Option<String> {
    let status = policy.status.as_ref()?;
    for r in &status.regions {
        if r.name == drained {
            continue;
        }
        // A region that never carried calls moving around is no outage.
        if matches!(r.state, RegionState::Failed | RegionState::Recovering) && r.has_served {
            return Some(format!(
                "region {} is {} ({})",
                r.name,
                r.state,
                r.reason.as_deref().unwrap_or("health failed")
            ));
        }
    }
    find_condition(&status.conditions, POLICY_DEGRADED)
        .filter(|c| c.status == "True" && c.reason == "FailOpen")
        .map(|c| format!("routing is fail-open: {}", c.message))
}

/// Why a run cannot start now, if it cannot.
fn start_blocker(drill: &FailoverDrill, obs: &Observation<'_>, now: Timestamp) -> Option<String> {
    let Some(policy) = obs.policy else {
        return Some(format!(
            "FallbackPolicy {} does not exist",
            drill.spec.policy
        ));
    };
    let region = &drill.spec.drain_region;
    if !policy.spec.regions.iter().any(|r| &r.name == region) {
        return Some(format!(
            "'{region}' is not a region of FallbackPolicy {}",
            drill.spec.policy
        ));
    }
    if let Some(other) = &obs.other_running {
        return Some(format!("drill {other} of the same policy is running"));
    }
    if let Some(c) = find_condition(status_conditions(policy), POLICY_DEGRADED)
        && c.status == "True"
    {
        return Some(format!(
            "the policy is degraded ({}: {})",
            c.reason, c.message
        ));
    }
    if override_in_force(&policy.spec, now) {
        return Some("the policy's spec.override is in force".to_string());
    }
    match region_state(policy, region) {
        Some(RegionState::Active) => None,
        Some(state) => Some(format!("region {region} is {state}, not Active")),
        None => Some(format!("region {region} has no state yet")),
    }
}

fn override_in_force(spec: &FallbackPolicySpec, now: Timestamp) -> bool {
    spec.r#override.as_ref().is_some_and(|o| {
        !o.drain_regions.is_empty()
            && o.until
                .as_deref()
                .and_then(|u| u.parse::<Timestamp>().ok())
                .is_none_or(|until| until > now)
    })
}

fn end_run(
    status: &mut FailoverDrillStatus,
    events: &mut Vec<DrillEvent>,
    active: ActiveDrill,
    now: Timestamp,
    outcome: DrillOutcome,
    reason: String,
) {
    let shift_seconds = active
        .shifted
        .as_ref()
        .map(|s| u32::try_from(s.0.duration_since(active.started.0).as_secs()).unwrap_or(0));
    events.push(DrillEvent {
        warning: outcome != DrillOutcome::Passed,
        reason: match outcome {
            DrillOutcome::Passed => "DrillPassed",
            DrillOutcome::Aborted => "DrillAborted",
            DrillOutcome::Failed => "DrillFailed",
            DrillOutcome::Skipped => "DrillSkipped",
        },
        note: format!("drill of region {}: {reason}", active.region),
    });
    push_run(
        status,
        DrillRun {
            started: active.started.clone(),
            ended: Time(now),
            region: active.region.clone(),
            outcome,
            reason,
            shift_seconds,
            bots: Some(format!("{} → {}", active.bots_before, active.bots_peak)),
        },
    );
    status.last_outcome = Some(outcome);
}

fn push_run(status: &mut FailoverDrillStatus, run: DrillRun) {
    status.runs.push(run);
    let excess = status.runs.len().saturating_sub(DRILL_RUNS_LIMIT);
    status.runs.drain(..excess);
}

/// The drill of `policy` in force at `now`, if any: (drill name, region, until).
pub fn active_drain<'a>(
    policy_name: &str,
    drills: impl IntoIterator<Item = &'a FailoverDrill>,
    now: Timestamp,
) -> Option<(String, String, Timestamp)> {
    drills
        .into_iter()
        .filter(|d| d.spec.policy == policy_name && !d.spec.suspend)
        .filter_map(|d| {
            let a = d.status.as_ref()?.active.as_ref()?;
            (a.until.0 > now).then(|| {
                (
                    d.metadata.name.clone().unwrap_or_default(),
                    a.region.clone(),
                    a.until.0,
                )
            })
        })
        .min_by_key(|(name, _, _)| name.clone())
}

/// The spec the policy controller plans with while a drill drains `region` until
/// `until`: the policy's own spec with an override draining that region. `None` when
/// the policy's own override is in force (a drill never starts then; one that was
/// running yields to the user's override).
pub fn drained_spec(
    spec: &FallbackPolicySpec,
    drill: &str,
    region: &str,
    until: Timestamp,
    now: Timestamp,
) -> Option<FallbackPolicySpec> {
    if override_in_force(spec, now) || !spec.regions.iter().any(|r| r.name == region) {
        return None;
    }
    let mut drilled = spec.clone();
    drilled.r#override = Some(OverrideSpec {
        drain_regions: vec![region.to_string()],
        until: Some(until.to_string()),
        reason: Some(format!("failover drill {drill}")),
    });
    Some(drilled)
}

/// Whether a plan made with a drill's drain must be replaced by the plan without it:
/// another region is out of traffic for a health reason, or a route is fail-open.
pub fn must_hand_over(plan: &Plan, drained: &str) -> bool {
    plan.regions.iter().any(|r| {
        r.name != drained
            && matches!(r.state, RegionState::Failed | RegionState::Recovering)
            && r.has_served
    }) || plan.routes.iter().any(|r| r.fail_open)
}
