//! The fallback planner: a pure function from a policy's spec, the observed health of
//! its trunks, bot pools and static targets, the previous plan and the current time to
//! a new plan and the events that led to it. No I/O happens here.
//!
//! # Rules
//!
//! **Region health.** A region is *unhealthy* when
//! (a) the policy references trunks in it and fewer than `health.minHealthyTrunks` of
//! them are Up (a trunk is Up when it is not disabled and at least one endpoint is Up),
//! (b) a referenced bot pool in it has fewer ready replicas than
//! `health.minReadyBotFraction` × its floor (`replicas.min`, at least 1, at most the
//! desired replicas) — not × a scale-up in progress, which would fail the very region
//! the new bots are for — or
//! (c) it has no referenced trunks or bot pools, only static `uri` targets, and all of
//! them are Down.
//! It is *healthy* when some check passes and none fails, and *unknown* otherwise (e.g.
//! endpoints not probed yet, or a pool with zero desired replicas). Unknown never
//! changes a region's state, so a fresh operator does not fail regions it has not
//! measured yet.
//!
//! **Region states.** `Active` → `Failed` once unhealthy for `failAfterSeconds`;
//! `Failed` → `Recovering` when healthy; `Recovering` → `Active` after
//! `recoverAfterSeconds` of health (with `failback: Manual` additionally only when the
//! policy's annotation `lifeline.dev/failback` holds an RFC 3339 time *later than the
//! region's last failure*, e.g. `kubectl annotate fbp main
//! lifeline.dev/failback=$(date -u +%FT%TZ) --overwrite`; an older approval does not
//! pre-approve a later failure); `Recovering` → `Failed` at once when health fails
//! again. `spec.override` puts its regions in `Draining` until `until` (or until the
//! override is removed), then they return to `Active` (or `Failed`, if unhealthy).
//!
//! **New regions.** A region the planner sees for the first time (a new policy, or a
//! region added to one) starts from its first measurement: `Active` when healthy,
//! `Failed` when unhealthy (bots still starting, say) and `Recovering` while unknown,
//! without a transition or Event. Until a region has carried traffic once (as far as
//! the bounded `history` shows), it becomes `Active` as soon as it is healthy: the
//! `recoverAfterSeconds` wait and the manual approval protect traffic from a region
//! that flaps, and there is no such traffic yet.
//!
//! **Flapping.** `maxTransitionsPerHour` bounds every region's state changes in any
//! sliding hour. Moves *away* from traffic (to `Failed`) are never held back, since
//! holding them would send calls to a dead region; moves *towards* traffic
//! (`Failed` → `Recovering` → `Active`) are held back unless, after them, one more
//! transition still fits in the budget. So the bound holds for health-driven changes
//! (override changes are the user's and are never held, but they count). With a budget
//! of 1 a region would never return; the planner treats the budget as at least 2.
//!
//! **Weights.** Active regions share 100 in proportion to `spec.regions[].weight`
//! (largest-remainder rounding, ties to the region listed first); other regions get 0.
//! Within each route the dispatcher weights also sum to 100: first over the active
//! tiers (see below) by the calls they carry, then over the regions present in a tier
//! by their effective weights, then over a region's destinations by endpoint weight
//! (trunk endpoints) or evenly (bots, static URIs).
//!
//! **Tiers.** The active tier of a route is the first with a placeable destination (an
//! Up trunk endpoint, a ready bot, an Up static URI, in an Active region). When the
//! healthy capacity of the active tiers (trunk `capacity.maxConcurrentCalls`, bot
//! `readyCapacity`, unlimited when unstated and for static URIs) is short of
//! `expectedConcurrentCalls`, the next tier with placeable destinations overflows:
//! each tier carries as many calls as it can and the last one the rest. Placeable
//! destinations of the remaining tiers stay in the set at lower priority with weight
//! 0: Kamailio can fail a single call over to them (`ds_next_dst`) before lifeline
//! notices anything.
//!
//! **Bot demand.** A bot pool's demand is the calls routed to its destinations: for
//! each route, the calls of each active tier are split over regions by effective
//! weight and within a region over its destinations (as for the weights, but in calls
//! rather than percent). A pool used by several routes gets the largest of its per-route
//! figures (routes describe alternative paths for the same calls, not extra calls).
//! Pools with no ready bot receive no calls and so no demand (they keep their
//! `replicas.min`). A `uri` target's `maxConcurrentCalls` (human agents) is its
//! capacity, so the calls beyond it overflow to the next tier, e.g. to bots.
//!
//! **Live demand.** When the SIP edges report calls ([`Observed::live`], see
//! [`demand`]), the same split is done a second time with the calls measured on each
//! route, and a pool's measured share is at least the calls its bots carry now. A
//! pool's demand is the larger of its floor share (of `expectedConcurrentCalls`, the
//! planning floor) and its measured share; the pool adds its headroom when it turns
//! demand into replicas. The routing's weights and active tiers follow the declared
//! `expectedConcurrentCalls` only (see [`demand`] for why).
//!
//! **Fail-open.** A route left without any placeable destination (for example because
//! every region failed) is not published empty: it keeps its last known good
//! destinations from the previous plan, or, after an operator restart, every
//! destination of the first tier that has any (preferring those whose endpoints are
//! not Down). The plan says so (`fail_open`), which becomes the `Degraded` condition
//! with reason `FailOpen` and a warning Event.
//!
//! **Restarts.** [`Plan::from_status`] rebuilds the previous plan from the policy's
//! status (region states with `since`, history, demand), so a restarted operator neither
//! flaps nor forgets a failure. Two things are not in the status and restart from
//! scratch: a pending failure timer (a region unhealthy for less than
//! `failAfterSeconds` waits the full time again) and the last known good destinations
//! (see fail-open).

mod apportion;
pub mod demand;
pub mod fixtures;
mod observe;
mod regions;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    BotDemand, FallbackPolicySpec, FallbackPolicyStatus, HISTORY_LIMIT, HistoryEntry, RegionState,
    RegionStatus, RouteStatus,
};

pub use apportion::apportion;
pub use demand::LiveCalls;
pub use observe::{
    BotPoolObservation, EndpointObservation, Observed, TrunkHealth, TrunkObservation,
    bot_destination,
};
#[cfg(test)]
pub(crate) use regions::FIRST_MEASUREMENT;

/// The annotation that approves a manual failback (an RFC 3339 time).
pub const FAILBACK_ANNOTATION: &str = "lifeline.dev/failback";

/// Where calls go, decided from health: the output of [`plan`].
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One entry per `spec.regions[]`, in spec order.
    pub regions: Vec<RegionPlan>,
    /// One entry per `spec.routes[]`, in spec order.
    pub routes: Vec<RoutePlan>,
    /// Calls per referenced bot pool, by pool name.
    pub demand: Vec<BotDemand>,
    /// Region transitions, oldest first: everything in the last hour, and at least the
    /// last [`HISTORY_LIMIT`] entries.
    pub history: Vec<HistoryEntry>,
    /// References to Trunks or BotPools that do not exist, e.g. `trunk 'fixed-cgn'`.
    pub missing: Vec<String>,
    /// Routes whose healthy capacity is short of `expectedConcurrentCalls`, with figures.
    pub capacity_shortfalls: Vec<String>,
    /// The earliest time at which the plan may change with no change in health (a
    /// failure timer, a recovery timer, the end of an override or of a flapping hold).
    pub next_wakeup: Option<Timestamp>,
}

/// State of one region in a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionPlan {
    /// Region name.
    pub name: String,
    /// Active, Failed, Draining or Recovering.
    pub state: RegionState,
    /// When the region entered `state`.
    pub since: Timestamp,
    /// Why the region is in `state`.
    pub reason: String,
    /// Share of calls (all regions add up to 100, or 0 when no region is Active).
    pub effective_weight: u32,
    /// Since when an Active region has been unhealthy (a pending failure).
    pub unhealthy_since: Option<Timestamp>,
    /// When the region last failed (for manual failback approvals).
    pub failed_at: Option<Timestamp>,
    /// Whether the region has carried traffic (been Active) at least once.
    pub has_served: bool,
    /// Times of its state changes in the last hour since it first served, oldest
    /// first: what `maxTransitionsPerHour` is counted against.
    pub transitions: Vec<Timestamp>,
}

/// One route (dispatcher set) in a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePlan {
    /// Route name.
    pub name: String,
    /// Dispatcher set id.
    pub set_id: u32,
    /// The tier that carries the calls (the first active one).
    pub active_tier: Option<String>,
    /// Destinations, highest priority first; weights sum to 100 when any is non-zero.
    pub destinations: Vec<Destination>,
    /// Referenced destinations left out, with the reason (become comments).
    pub excluded: Vec<Excluded>,
    /// True when the route has no placeable destination and keeps older ones.
    pub fail_open: bool,
    /// Final SIP codes after which the edge marks a destination down and tries the
    /// next (`spec.routes[].failover.onStatusCodes`, or the default).
    pub failover_codes: Vec<u16>,
}

/// One destination in a dispatcher set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// SIP URI.
    pub uri: String,
    /// Tier name.
    pub tier: String,
    /// Region name.
    pub region: String,
    /// Dispatcher priority: higher is tried first (first tier highest).
    pub priority: u32,
    /// Share of the route's calls, in percent (0 for standby tiers).
    pub weight: u32,
    /// Stable unique id within the set (Kamailio's `duid`).
    pub duid: String,
    /// Limits the edge enforces for the target this destination belongs to, shared
    /// by all its destinations (a trunk's endpoints, a pool's bots).
    pub limits: Option<Limits>,
}

/// Limits of one target (a Trunk, a BotPool, a static URI), enforced by the SIP edge
/// over every destination of the target: a call beyond them goes to the next
/// destination of the set (the next tier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Capacity group: the same for every destination of the target, in every set
    /// (`trk.<trunk>`, `bot.<pool>`, `uri.<tier>.<index>`).
    pub group: String,
    /// Calls in progress at once (`maxload`).
    pub max_concurrent_calls: Option<u32>,
    /// New calls per second (`cps`).
    pub max_calls_per_second: Option<u32>,
}

/// A referenced destination that is not in the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Excluded {
    /// SIP URI, or the name of the reference when there is no URI (`trunk 'x'`).
    pub target: String,
    /// Tier name.
    pub tier: String,
    /// Why it is left out.
    pub reason: String,
}

/// Something that happened while planning, for Events and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanEvent {
    /// A region changed state.
    Transition {
        /// Region name.
        region: String,
        /// Previous state.
        from: RegionState,
        /// New state.
        to: RegionState,
        /// Why.
        reason: String,
    },
    /// A region would return to traffic but the flapping budget holds it back.
    FailbackHeld {
        /// Region name.
        region: String,
        /// When the budget allows it again.
        until: Timestamp,
    },
    /// Routes started to fail open (no placeable destination; older ones kept).
    FailOpenStarted {
        /// Names of the routes.
        routes: Vec<String>,
    },
    /// No route fails open any more.
    FailOpenEnded,
    /// The tier carrying a route's calls changed (e.g. fixed line → mobile line).
    TierChanged {
        /// Route name.
        route: String,
        /// The tier that carried the calls.
        from: String,
        /// The tier that carries them now.
        to: String,
        /// What caused it, naming the trunks (or regions, bot pools) involved.
        cause: String,
    },
}

impl Plan {
    /// True when any route keeps old destinations because nothing is placeable.
    pub fn fail_open(&self) -> bool {
        self.routes.iter().any(|r| r.fail_open)
    }

    /// Names of the Active regions, comma-separated, for `kubectl get`.
    pub fn active_regions(&self) -> String {
        self.regions
            .iter()
            .filter(|r| r.state == RegionState::Active)
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Rebuild the previous plan from a policy's status, so that a restarted operator
    /// continues where it left off. `None` when the status has no regions yet.
    pub fn from_status(status: &FallbackPolicyStatus) -> Option<Plan> {
        if status.regions.is_empty() {
            return None;
        }
        let history = status.history.clone();
        let regions = status
            .regions
            .iter()
            .map(|r| {
                let since = r
                    .since
                    .as_ref()
                    .map(|t| t.0)
                    .unwrap_or(Timestamp::UNIX_EPOCH);
                let mine: Vec<&HistoryEntry> =
                    history.iter().filter(|h| h.region == r.name).collect();
                // Statuses written before these fields existed: infer from the history.
                let failed_at = r.failed_at.as_ref().map(|t| t.0).or_else(|| {
                    mine.iter()
                        .rev()
                        .find(|h| h.to == RegionState::Failed)
                        .map(|h| h.time.0)
                        .or_else(|| {
                            matches!(r.state, RegionState::Failed | RegionState::Recovering)
                                .then_some(since)
                        })
                });
                let inferred_served = mine
                    .iter()
                    .any(|h| h.from == RegionState::Active || h.to == RegionState::Active);
                let transitions = if r.has_served || !r.recent_transitions.is_empty() {
                    r.recent_transitions.iter().map(|t| t.0).collect()
                } else {
                    let served_from = mine
                        .iter()
                        .position(|h| {
                            h.to == RegionState::Active && h.reason == regions::FIRST_ACTIVE
                        })
                        .map_or(0, |i| i + 1);
                    mine[served_from..].iter().map(|h| h.time.0).collect()
                };
                RegionPlan {
                    name: r.name.clone(),
                    state: r.state,
                    since,
                    reason: r.reason.clone().unwrap_or_default(),
                    effective_weight: r.effective_weight,
                    unhealthy_since: None,
                    failed_at,
                    has_served: r.has_served || inferred_served || r.state == RegionState::Active,
                    transitions,
                }
            })
            .collect();
        // Destinations cannot be rebuilt with weights from the status; fail-open falls
        // back to the spec's destinations after a restart (see module docs). The active
        // tier and fail-open flag can, so a restart neither re-announces a fail-open
        // nor reports a tier change that did not happen.
        let routes = status
            .routes
            .iter()
            .map(|r| RoutePlan {
                name: r.name.clone(),
                set_id: r.set_id,
                active_tier: r.active_tier.clone(),
                destinations: Vec::new(),
                excluded: Vec::new(),
                fail_open: r.fail_open,
                failover_codes: Vec::new(),
            })
            .collect();
        Some(Plan {
            regions,
            routes,
            demand: status.demand.clone(),
            history,
            missing: Vec::new(),
            capacity_shortfalls: Vec::new(),
            next_wakeup: None,
        })
    }

    /// `status.regions`: what the plan says about each region, including the durable
    /// state ([`RegionStatus::has_served`], `failedAt`, `recentTransitions`) that
    /// [`Plan::from_status`] needs to continue after a restart.
    pub fn region_statuses(&self) -> Vec<RegionStatus> {
        self.regions
            .iter()
            .map(|r| RegionStatus {
                name: r.name.clone(),
                state: r.state,
                since: Some(Time(r.since)),
                reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
                effective_weight: r.effective_weight,
                has_served: r.has_served,
                failed_at: r.failed_at.map(Time),
                recent_transitions: r.transitions.iter().copied().map(Time).collect(),
            })
            .collect()
    }

    /// `status.history`: the newest [`HISTORY_LIMIT`] entries (for people; the
    /// planner's durable state is in the region statuses).
    pub fn status_history(&self) -> Vec<HistoryEntry> {
        let skip = self.history.len().saturating_sub(HISTORY_LIMIT);
        self.history[skip..].to_vec()
    }

    /// `status.routes`.
    pub fn route_statuses(&self) -> Vec<RouteStatus> {
        self.routes
            .iter()
            .map(|r| RouteStatus {
                name: r.name.clone(),
                set_id: r.set_id,
                active_tier: r.active_tier.clone(),
                destinations: r.destinations.iter().map(|d| d.uri.clone()).collect(),
                fail_open: r.fail_open,
            })
            .collect()
    }
}

/// Decide region states, weights, active tiers, destinations and bot demand.
///
/// Pure: the same arguments always give the same plan and events.
pub fn plan(
    spec: &FallbackPolicySpec,
    observed: &Observed,
    previous: Option<&Plan>,
    now: Timestamp,
) -> (Plan, Vec<PlanEvent>) {
    let mut events = Vec::new();
    let mut wakeups = Wakeups::default();

    let mut history: Vec<HistoryEntry> = previous.map(|p| p.history.clone()).unwrap_or_default();
    let regions = regions::next_states(
        spec,
        observed,
        previous,
        now,
        &mut history,
        &mut events,
        &mut wakeups,
    );
    trim_history(&mut history, now);

    let missing = missing_references(spec, observed);
    let mut routed = routes::plan_routes(spec, observed, &regions, previous);
    let demand = if routed.demand_from_previous {
        previous.map(|p| p.demand.clone()).unwrap_or_default()
    } else {
        routed.demand
    };

    // A route nothing was ever published for, none of whose targets has been measured
    // yet (a new policy, lines not probed yet), is waiting for its first measurement,
    // not failing open: no FailOpen page at start-up.
    for (route, spec_route) in routed.routes.iter_mut().zip(&spec.routes) {
        let published = previous.is_some_and(|p| p.routes.iter().any(|r| r.name == route.name));
        if route.fail_open && !published && unmeasured(spec_route, observed) {
            route.fail_open = false;
        }
    }
    let was_open = previous.is_some_and(|p| p.fail_open());
    let open_routes: Vec<String> = routed
        .routes
        .iter()
        .filter(|r| r.fail_open)
        .map(|r| r.name.clone())
        .collect();
    if !open_routes.is_empty() && !was_open {
        events.push(PlanEvent::FailOpenStarted {
            routes: open_routes,
        });
    } else if open_routes.is_empty() && was_open {
        events.push(PlanEvent::FailOpenEnded);
    }

    if let Some(previous) = previous {
        events.extend(tier_changes(
            spec,
            observed,
            &regions,
            previous,
            &routed.routes,
        ));
    }

    let plan = Plan {
        regions,
        routes: routed.routes,
        demand,
        history,
        missing,
        capacity_shortfalls: routed.capacity_shortfalls,
        next_wakeup: wakeups.earliest,
    };
    (plan, events)
}

/// A [`PlanEvent::TierChanged`] for every route whose active tier moved (not for a
/// route that starts or keeps failing open: `FailOpen` says that).
fn tier_changes(
    spec: &FallbackPolicySpec,
    observed: &Observed,
    regions: &[RegionPlan],
    previous: &Plan,
    routes: &[RoutePlan],
) -> Vec<PlanEvent> {
    let mut out = Vec::new();
    for (route_spec, now) in spec.routes.iter().zip(routes) {
        let Some(before) = previous
            .routes
            .iter()
            .find(|r| r.name == now.name && r.set_id == now.set_id)
        else {
            continue;
        };
        let (Some(from), Some(to)) = (&before.active_tier, &now.active_tier) else {
            continue;
        };
        if from == to || now.fail_open || before.fail_open {
            continue;
        }
        let index = |tier: &str| route_spec.tiers.iter().position(|t| t.name == tier);
        // Moving down: what failed in the old tier. Moving up: what recovered in the new.
        let moved_down = index(to) > index(from);
        let blame = if moved_down { from } else { to };
        let cause = tier_cause(route_spec, blame, observed, regions, moved_down);
        out.push(PlanEvent::TierChanged {
            route: now.name.clone(),
            from: from.clone(),
            to: to.clone(),
            cause,
        });
    }
    out
}

/// Why tier `tier` of `route` lost (`lost`) or regained its calls, naming trunks, bot
/// pools, static targets and regions.
fn tier_cause(
    route: &crate::crd::RouteSpec,
    tier: &str,
    observed: &Observed,
    regions: &[RegionPlan],
    lost: bool,
) -> String {
    let Some(tier) = route.tiers.iter().find(|t| t.name == tier) else {
        return String::new();
    };
    let region_active = |name: &str| {
        regions
            .iter()
            .any(|r| r.name == name && r.state == RegionState::Active)
    };
    let mut parts = Vec::new();
    for target in &tier.targets {
        if let Some(name) = &target.trunk {
            match observed.trunks.get(name) {
                None => parts.push(format!("trunk '{name}' not found")),
                Some(t) => {
                    let health = t.health();
                    let region_ok = region_active(&t.region);
                    if lost && health != TrunkHealth::Up {
                        parts.push(format!("trunk '{name}' {health:?}").to_lowercase());
                    } else if lost && !region_ok {
                        parts.push(format!("trunk '{name}': region '{}' not Active", t.region));
                    } else if !lost && health == TrunkHealth::Up && region_ok {
                        parts.push(format!("trunk '{name}' up"));
                    }
                }
            }
        }
        if let Some(name) = &target.bot_pool
            && let Some(p) = observed.bot_pools.get(name)
        {
            if lost && p.ready_replicas == 0 {
                parts.push(format!("botPool '{name}' has no ready bot"));
            } else if !lost && p.ready_replicas > 0 {
                parts.push(format!("botPool '{name}' ready"));
            }
        }
        if let Some(uri) = &target.uri {
            let state = observed.uris.get(uri).copied().unwrap_or_default();
            if lost && state != crate::crd::EndpointState::Up {
                parts.push(format!("{uri} {state}"));
            } else if !lost && state == crate::crd::EndpointState::Up {
                parts.push(format!("{uri} up"));
            }
        }
    }
    parts.sort();
    parts.dedup();
    if parts.is_empty() {
        if lost {
            "capacity or region changes".to_string()
        } else {
            "healthy again".to_string()
        }
    } else {
        parts.join(", ")
    }
}

/// True when no target of `route` has a measurement: every trunk endpoint and static
/// URI is Unknown (or its object has no status yet) and no bot pool wants bots.
fn unmeasured(route: &crate::crd::RouteSpec, observed: &Observed) -> bool {
    use crate::crd::EndpointState;
    route.tiers.iter().flat_map(|t| &t.targets).all(|t| {
        let trunk = t.trunk.as_ref().is_none_or(|name| {
            observed.trunks.get(name).is_none_or(|tr| {
                tr.endpoints
                    .iter()
                    .all(|e| e.state == EndpointState::Unknown)
            })
        });
        let uri = t.uri.as_ref().is_none_or(|u| {
            observed.uris.get(u).copied().unwrap_or_default() == EndpointState::Unknown
        });
        let pool = t.bot_pool.as_ref().is_none_or(|name| {
            observed
                .bot_pools
                .get(name)
                .is_none_or(|p| p.desired_replicas == 0 && p.ready_replicas == 0)
        });
        trunk && uri && pool
    })
}

/// The earliest of the times at which the plan must be recomputed.
#[derive(Default)]
struct Wakeups {
    earliest: Option<Timestamp>,
}

impl Wakeups {
    fn at(&mut self, t: Timestamp) {
        self.earliest = Some(match self.earliest {
            Some(e) if e <= t => e,
            _ => t,
        });
    }
}

/// Keep everything from the last hour (the flapping budget needs it) and at least the
/// newest [`HISTORY_LIMIT`] entries.
fn trim_history(history: &mut Vec<HistoryEntry>, now: Timestamp) {
    let hour_ago = now - jiff::SignedDuration::from_secs(3600);
    let recent = history.iter().filter(|h| h.time.0 > hour_ago).count();
    let keep = recent.max(HISTORY_LIMIT).min(history.len());
    let drop = history.len() - keep;
    history.drain(..drop);
}

/// `trunk 'x'` / `botPool 'y'` for every referenced object that is not observed.
fn missing_references(spec: &FallbackPolicySpec, observed: &Observed) -> Vec<String> {
    let mut missing = BTreeMap::new();
    for target in spec
        .routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
    {
        if let Some(name) = &target.trunk
            && !observed.trunks.contains_key(name)
        {
            missing.insert(format!("trunk '{name}'"), ());
        }
        if let Some(name) = &target.bot_pool
            && !observed.bot_pools.contains_key(name)
        {
            missing.insert(format!("botPool '{name}'"), ());
        }
    }
    missing.into_keys().collect()
}

/// A history entry with a Kubernetes `Time`.
fn history_entry(
    now: Timestamp,
    region: &str,
    from: RegionState,
    to: RegionState,
    reason: &str,
) -> HistoryEntry {
    HistoryEntry {
        time: Time(now),
        region: region.to_string(),
        from,
        to,
        reason: reason.to_string(),
    }
}
