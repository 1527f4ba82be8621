//! Region health and the region state machine (see the module docs of `plan`).

use jiff::{SignedDuration, Timestamp};

use super::{Observed, Plan, PlanEvent, RegionPlan, TrunkHealth, Wakeups, history_entry};
use crate::crd::{EndpointState, FailbackMode, FallbackPolicySpec, HistoryEntry, RegionState};

/// What the checks say about a region right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Health {
    Healthy,
    Unhealthy(String),
    Unknown,
}

/// Evaluate the health checks of one region.
pub(super) fn region_health(
    spec: &FallbackPolicySpec,
    observed: &Observed,
    region: &str,
) -> Health {
    let targets: Vec<_> = spec
        .routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
        .collect();

    let mut trunk_names: Vec<&String> = targets
        .iter()
        .filter_map(|t| t.trunk.as_ref())
        .filter(|n| observed.trunks.get(*n).is_some_and(|t| t.region == region))
        .collect();
    trunk_names.sort();
    trunk_names.dedup();
    let mut pool_names: Vec<&String> = targets
        .iter()
        .filter_map(|t| t.bot_pool.as_ref())
        .filter(|n| {
            observed
                .bot_pools
                .get(*n)
                .is_some_and(|p| p.region == region)
        })
        .collect();
    pool_names.sort();
    pool_names.dedup();

    let mut failures = Vec::new();
    let mut passed = false;

    if !trunk_names.is_empty() {
        let mut up = 0u32;
        let mut unknown = 0u32;
        let mut down_names = Vec::new();
        for name in &trunk_names {
            match observed.trunks[*name].health() {
                TrunkHealth::Up => up += 1,
                TrunkHealth::Unknown => unknown += 1,
                TrunkHealth::Down => down_names.push(format!("trunk '{name}' down")),
            }
        }
        let need = spec.health.min_healthy_trunks;
        if up >= need {
            passed = true;
        } else if up + unknown < need {
            failures.push(format!(
                "{up} of {} trunks healthy, need {need} ({})",
                trunk_names.len(),
                down_names.join(", ")
            ));
        }
    }

    let fraction = spec.health.min_ready_bot_fraction;
    // A pool without a status yet that must keep bots (`replicas.min` > 0) has not
    // started them: the region is not measured until it has, or its lines alone
    // would make a new region Active (and a served one) a moment before its bots turn
    // out to be still starting. A pool that may run no bots does not hold it.
    let mut unmeasured = false;
    for name in &pool_names {
        let pool = &observed.bot_pools[*name];
        if fraction <= 0.0 {
            continue;
        }
        if !pool.reported {
            unmeasured |= pool.min_replicas > 0;
            continue;
        }
        if pool.desired_replicas == 0 {
            if pool.ready_replicas > 0 {
                passed = true;
            }
            continue;
        }
        // Measured against the replicas the pool keeps whatever the demand, not against
        // a scale-up in progress: otherwise every scale-up (new bots not ready yet) would
        // fail the region it is meant to help, and move the demand away again.
        let baseline = pool.desired_replicas.min(pool.min_replicas.max(1));
        if f64::from(pool.ready_replicas) >= fraction * f64::from(baseline) {
            passed = true;
        } else {
            failures.push(format!(
                "botPool '{name}': {}/{} replicas ready, need {:.0}%",
                pool.ready_replicas,
                baseline,
                fraction * 100.0
            ));
        }
    }

    if trunk_names.is_empty() && pool_names.is_empty() {
        let states: Vec<EndpointState> = targets
            .iter()
            .filter(|t| t.region.as_deref() == Some(region))
            .filter_map(|t| t.uri.as_ref())
            .map(|u| observed.uris.get(u).copied().unwrap_or_default())
            .collect();
        if states.contains(&EndpointState::Up) {
            passed = true;
        } else if !states.is_empty() && states.iter().all(|s| *s == EndpointState::Down) {
            failures.push("every static target is down".to_string());
        }
    }

    if !failures.is_empty() {
        Health::Unhealthy(failures.join("; "))
    } else if passed && !unmeasured {
        Health::Healthy
    } else {
        Health::Unknown
    }
}

/// The override drain reason for `region`, when an override drains it at `now`.
fn drained_by_override(spec: &FallbackPolicySpec, region: &str, now: Timestamp) -> Option<String> {
    let o = spec.r#override.as_ref()?;
    if !o.drain_regions.iter().any(|r| r == region) {
        return None;
    }
    if let Some(until) = &o.until {
        // An unparseable time cannot be honoured; the CEL rule keeps it from happening.
        let until: Timestamp = until.parse().ok()?;
        if until <= now {
            return None;
        }
    }
    let reason = o.reason.clone().unwrap_or_else(|| "override".to_string());
    Some(format!("drained by override: {reason}"))
}

/// When the override on `region` ends, if it has an end in the future.
fn override_until(spec: &FallbackPolicySpec, region: &str, now: Timestamp) -> Option<Timestamp> {
    let o = spec.r#override.as_ref()?;
    if !o.drain_regions.iter().any(|r| r == region) {
        return None;
    }
    let until: Timestamp = o.until.as_ref()?.parse().ok()?;
    (until > now).then_some(until)
}

/// Reason of a region's first move to Active (it had never carried traffic).
pub(super) const FIRST_ACTIVE: &str = "healthy (first measurement)";

/// Reason of a new region that waits for its first health measurement.
pub(crate) const FIRST_MEASUREMENT: &str = "waiting for the first health measurement";

/// Decide the next state of every region and their effective weights.
pub(super) fn next_states(
    spec: &FallbackPolicySpec,
    observed: &Observed,
    previous: Option<&Plan>,
    now: Timestamp,
    history: &mut Vec<HistoryEntry>,
    events: &mut Vec<PlanEvent>,
    wakeups: &mut Wakeups,
) -> Vec<RegionPlan> {
    let f = &spec.failover;
    let budget = f.max_transitions_per_hour.max(2) as usize;
    let fail_after = SignedDuration::from_secs(i64::from(f.fail_after_seconds));
    let recover_after = SignedDuration::from_secs(i64::from(f.recover_after_seconds));
    let hour = SignedDuration::from_secs(3600);

    let mut out = Vec::with_capacity(spec.regions.len());
    for region in &spec.regions {
        let name = region.name.as_str();
        let prev = previous.and_then(|p| p.regions.iter().find(|r| r.name == name));
        let health = region_health(spec, observed, name);
        // A region seen for the first time takes calls once it is measured healthy; until
        // then it waits in Recovering (no transition recorded), so that bots still
        // starting up or trunks not probed yet never count as a failover.
        let mut cur = prev.cloned().unwrap_or_else(|| {
            let (state, reason) = match &health {
                Health::Healthy => (RegionState::Active, String::new()),
                Health::Unhealthy(why) => (RegionState::Failed, why.clone()),
                Health::Unknown => (RegionState::Recovering, FIRST_MEASUREMENT.to_string()),
            };
            RegionPlan {
                name: name.to_string(),
                state,
                since: now,
                reason,
                effective_weight: 0,
                unhealthy_since: None,
                failed_at: None,
                has_served: state == RegionState::Active,
                transitions: Vec::new(),
            }
        });
        // The flapping budget counts the moves of the last hour.
        cur.transitions.retain(|t| *t > now - hour);
        if let Some(until) = override_until(spec, name, now) {
            wakeups.at(until);
        }

        let mut go = |cur: &mut RegionPlan,
                      history: &mut Vec<HistoryEntry>,
                      to: RegionState,
                      reason: String| {
            history.push(history_entry(now, name, cur.state, to, &reason));
            events.push(PlanEvent::Transition {
                region: name.to_string(),
                from: cur.state,
                to,
                reason: reason.clone(),
            });
            if to == RegionState::Failed {
                cur.failed_at = Some(now);
            }
            // Moves before the region first carried traffic (start-up: bots starting,
            // lines not probed yet) are not flapping and do not use the budget.
            if cur.has_served {
                cur.transitions.push(now);
            }
            if to == RegionState::Active {
                cur.has_served = true;
            }
            cur.state = to;
            cur.since = now;
            cur.reason = reason;
            cur.unhealthy_since = None;
        };
        // `None` when one more move towards traffic fits in the budget (after it, one
        // more move must still fit), else when it will fit again.
        let hold_until = |transitions: &[Timestamp]| -> Option<Timestamp> {
            if transitions.len() + 2 <= budget {
                None
            } else {
                // The oldest entries must leave the window until two slots are free.
                let must_expire = transitions.len() + 2 - budget;
                transitions.get(must_expire - 1).map(|t| *t + hour)
            }
        };

        if prev.is_none() && drained_by_override(spec, name, now).is_none() {
            // Just created from its first measurement above: no transition yet.
        } else if let Some(reason) = drained_by_override(spec, name, now) {
            if cur.state != RegionState::Draining {
                go(&mut cur, history, RegionState::Draining, reason);
            }
        } else {
            match cur.state {
                RegionState::Draining => match &health {
                    Health::Unhealthy(why) => go(
                        &mut cur,
                        history,
                        RegionState::Failed,
                        format!("override ended; {why}"),
                    ),
                    _ => go(
                        &mut cur,
                        history,
                        RegionState::Active,
                        "override ended".to_string(),
                    ),
                },
                RegionState::Active => match &health {
                    Health::Unhealthy(why) => {
                        let started = *cur.unhealthy_since.get_or_insert(now);
                        if now.duration_since(started) >= fail_after {
                            go(&mut cur, history, RegionState::Failed, why.clone());
                        } else {
                            wakeups.at(started + fail_after);
                        }
                    }
                    _ => cur.unhealthy_since = None,
                },
                RegionState::Failed => {
                    if health == Health::Healthy {
                        match hold_until(&cur.transitions) {
                            None => {
                                go(
                                    &mut cur,
                                    history,
                                    RegionState::Recovering,
                                    "healthy again".to_string(),
                                );
                                wakeups.at(now + recover_after);
                            }
                            Some(until) => {
                                wakeups.at(until);
                                events.push(PlanEvent::FailbackHeld {
                                    region: name.to_string(),
                                    until,
                                });
                            }
                        }
                    }
                }
                RegionState::Recovering => match &health {
                    Health::Unhealthy(why) => {
                        go(&mut cur, history, RegionState::Failed, why.clone())
                    }
                    Health::Unknown => {}
                    Health::Healthy if !cur.has_served => {
                        // Never carried traffic: nothing to protect against flapping back
                        // into, so no recovery wait and no failback approval.
                        go(
                            &mut cur,
                            history,
                            RegionState::Active,
                            FIRST_ACTIVE.to_string(),
                        );
                    }
                    Health::Healthy => {
                        let ready_at = cur.since + recover_after;
                        let approved = match f.failback {
                            FailbackMode::Automatic => true,
                            FailbackMode::Manual => {
                                match (observed.failback_approved_at, cur.failed_at) {
                                    (Some(approved), Some(failed)) => approved > failed,
                                    (Some(_), None) => true,
                                    (None, _) => false,
                                }
                            }
                        };
                        if now < ready_at {
                            wakeups.at(ready_at);
                        } else if approved {
                            match hold_until(&cur.transitions) {
                                None => {
                                    let reason = match f.failback {
                                        FailbackMode::Automatic => {
                                            format!("healthy for {}s", f.recover_after_seconds)
                                        }
                                        FailbackMode::Manual => {
                                            "failback approved by lifeline.dev/failback".to_string()
                                        }
                                    };
                                    go(&mut cur, history, RegionState::Active, reason);
                                }
                                Some(until) => {
                                    wakeups.at(until);
                                    events.push(PlanEvent::FailbackHeld {
                                        region: name.to_string(),
                                        until,
                                    });
                                }
                            }
                        } else if cur.reason
                            != "waiting for manual failback (lifeline.dev/failback)"
                        {
                            // Say what the region waits for, without a transition.
                            cur.reason =
                                "waiting for manual failback (lifeline.dev/failback)".to_string();
                        }
                    }
                },
            }
        }
        out.push(cur);
    }

    let weights: Vec<u64> = spec
        .regions
        .iter()
        .zip(&out)
        .map(|(spec, r)| {
            if r.state == RegionState::Active {
                u64::from(spec.weight)
            } else {
                0
            }
        })
        .collect();
    for (r, w) in out.iter_mut().zip(super::apportion(100, &weights)) {
        r.effective_weight = u32::try_from(w).unwrap_or(0);
    }
    out
}
