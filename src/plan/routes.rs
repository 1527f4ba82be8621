//! Active tiers, destinations with weights, bot demand and fail-open, per route.

use std::collections::BTreeMap;

use super::{Destination, Excluded, Observed, Plan, RegionPlan, RoutePlan, apportion};
use crate::crd::{BotDemand, EndpointState, FallbackPolicySpec, RegionState, RouteSpec, TierSpec};

/// The routes of a plan and what follows from them.
pub(super) struct Routed {
    pub routes: Vec<RoutePlan>,
    pub demand: Vec<BotDemand>,
    /// Every region is out of traffic: keep the previous demand rather than zero it.
    pub demand_from_previous: bool,
    pub capacity_shortfalls: Vec<String>,
}

/// A destination that could take calls, before weights are assigned.
#[derive(Clone, Debug)]
struct Candidate {
    uri: String,
    region: String,
    duid: String,
    /// Relative weight within its target (trunk endpoint weight, else 1).
    base: u64,
    /// Bot pool name, for demand.
    pool: Option<String>,
    /// What the edge enforces for the candidate's target.
    limits: Option<super::Limits>,
}

/// One tier, evaluated.
#[derive(Debug, Default)]
struct TierEval {
    placeable: Vec<Candidate>,
    excluded: Vec<Excluded>,
    /// Calls the placeable targets can carry (`None`: no stated limit).
    capacity: Option<u64>,
    /// Every referenced destination regardless of health, for fail-open.
    all: Vec<(Candidate, bool)>,
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The limits of a target, or `None` when it states none. A stated limit of 0 (a bot
/// pool with no ready bot) is left out: such a pool has no destination anyway.
fn limits(group: String, calls: Option<u32>, cps: Option<u32>) -> Option<super::Limits> {
    let calls = calls.filter(|c| *c > 0);
    let cps = cps.filter(|c| *c > 0);
    (calls.is_some() || cps.is_some()).then(|| super::Limits {
        group: sanitize(&group),
        max_concurrent_calls: calls,
        max_calls_per_second: cps,
    })
}

fn add_capacity(total: &mut Option<u64>, cap: Option<u64>, first: &mut bool) {
    // `None` means unlimited; unlimited plus anything stays unlimited.
    *total = match (*first, *total, cap) {
        (true, _, c) => c,
        (false, Some(t), Some(c)) => Some(t + c),
        _ => None,
    };
    *first = false;
}

/// Evaluate one tier against region states (`active(region)` says whether a region
/// takes traffic).
fn eval_tier(
    tier: &TierSpec,
    observed: &Observed,
    active: &dyn Fn(&str) -> Result<(), String>,
    seen: &mut Vec<String>,
) -> TierEval {
    let mut ev = TierEval {
        capacity: Some(0),
        ..Default::default()
    };
    let mut first_cap = true;
    let mut any = false;
    for (index, target) in tier.targets.iter().enumerate() {
        let exclude = |ev: &mut TierEval, target: String, reason: String| {
            ev.excluded.push(Excluded {
                target,
                tier: tier.name.clone(),
                reason,
            });
        };
        if let Some(name) = &target.trunk {
            let Some(trunk) = observed.trunks.get(name) else {
                exclude(
                    &mut ev,
                    format!("trunk '{name}'"),
                    format!("trunk '{name}' not found"),
                );
                continue;
            };
            let region_ok = active(&trunk.region);
            let mut placed = false;
            for (i, ep) in trunk.endpoints.iter().enumerate() {
                if seen.contains(&ep.uri) {
                    continue;
                }
                let cand = Candidate {
                    uri: ep.uri.clone(),
                    region: trunk.region.clone(),
                    duid: sanitize(&format!("trk.{name}.{i}")),
                    base: u64::from(ep.weight.max(1)),
                    pool: None,
                    limits: limits(
                        format!("trk.{name}"),
                        trunk.max_concurrent_calls,
                        trunk.max_calls_per_second,
                    ),
                };
                let healthy = !trunk.disabled && ep.state == EndpointState::Up;
                ev.all.push((cand.clone(), ep.state != EndpointState::Down));
                let why = if trunk.disabled {
                    Some(format!("trunk '{name}' disabled"))
                } else if let Err(why) = &region_ok {
                    Some(why.clone())
                } else if ep.state != EndpointState::Up {
                    Some(format!("trunk '{name}' endpoint {}", ep.state))
                } else {
                    None
                };
                match why {
                    Some(why) => exclude(&mut ev, ep.uri.clone(), why),
                    None if healthy => {
                        seen.push(ep.uri.clone());
                        ev.placeable.push(cand);
                        placed = true;
                    }
                    None => {}
                }
            }
            if placed {
                any = true;
                add_capacity(
                    &mut ev.capacity,
                    trunk.max_concurrent_calls.map(u64::from),
                    &mut first_cap,
                );
            }
        } else if let Some(name) = &target.bot_pool {
            let Some(pool) = observed.bot_pools.get(name) else {
                exclude(
                    &mut ev,
                    format!("botPool '{name}'"),
                    format!("botPool '{name}' not found"),
                );
                continue;
            };
            let region_ok = active(&pool.region);
            let mut placed = false;
            for uri in &pool.destinations {
                if seen.contains(uri) {
                    continue;
                }
                let addr = uri
                    .trim_start_matches("sip:")
                    .split(';')
                    .next()
                    .unwrap_or_default();
                let cand = Candidate {
                    uri: uri.clone(),
                    region: pool.region.clone(),
                    duid: sanitize(&format!("bot.{name}.{addr}")),
                    base: 1,
                    pool: Some(name.clone()),
                    limits: limits(format!("bot.{name}"), Some(pool.ready_capacity), None),
                };
                ev.all.push((cand.clone(), true));
                match &region_ok {
                    Err(why) => exclude(&mut ev, uri.clone(), why.clone()),
                    Ok(()) => {
                        seen.push(uri.clone());
                        ev.placeable.push(cand);
                        placed = true;
                    }
                }
            }
            if pool.destinations.is_empty() {
                exclude(
                    &mut ev,
                    format!("botPool '{name}'"),
                    format!("botPool '{name}' has no ready bots"),
                );
            }
            if placed {
                any = true;
                add_capacity(
                    &mut ev.capacity,
                    Some(u64::from(pool.ready_capacity)),
                    &mut first_cap,
                );
            }
        } else if let Some(uri) = &target.uri {
            if seen.contains(uri) {
                continue;
            }
            let region = target.region.clone().unwrap_or_default();
            let state = observed.uris.get(uri).copied().unwrap_or_default();
            let cand = Candidate {
                uri: uri.clone(),
                region: region.clone(),
                duid: sanitize(&format!("uri.{}.{index}", tier.name)),
                base: 1,
                pool: None,
                limits: limits(
                    format!("uri.{}.{index}", tier.name),
                    target.max_concurrent_calls,
                    None,
                ),
            };
            ev.all.push((cand.clone(), state != EndpointState::Down));
            let why = if let Err(why) = active(&region) {
                Some(why)
            } else if state != EndpointState::Up {
                Some(format!("static target {state}"))
            } else {
                None
            };
            match why {
                Some(why) => exclude(&mut ev, uri.clone(), why),
                None => {
                    seen.push(uri.clone());
                    ev.placeable.push(cand);
                    any = true;
                    add_capacity(
                        &mut ev.capacity,
                        target.max_concurrent_calls.map(u64::from),
                        &mut first_cap,
                    );
                }
            }
        }
    }
    if !any {
        ev.capacity = Some(0);
    }
    ev
}

/// Split `amount` (percent or calls) over candidates: by region effective weight, then
/// by base weight within the region. Returns one amount per candidate.
fn split(amount: u64, cands: &[Candidate], regions: &[RegionPlan]) -> Vec<u64> {
    let mut region_order: Vec<&str> = Vec::new();
    for r in regions {
        if cands.iter().any(|c| c.region == r.name) {
            region_order.push(&r.name);
        }
    }
    let region_weights: Vec<u64> = region_order
        .iter()
        .map(|n| {
            regions
                .iter()
                .find(|r| r.name == *n)
                .map(|r| u64::from(r.effective_weight))
                .unwrap_or(0)
        })
        .collect();
    // With no Active region among them (fail-open) the regions share evenly.
    let region_weights = if region_weights.iter().all(|w| *w == 0) {
        vec![1; region_weights.len()]
    } else {
        region_weights
    };
    let per_region = apportion(amount, &region_weights);
    let mut out = vec![0; cands.len()];
    for (name, share) in region_order.iter().zip(per_region) {
        let idx: Vec<usize> = (0..cands.len())
            .filter(|i| cands[*i].region == *name)
            .collect();
        let bases: Vec<u64> = idx.iter().map(|i| cands[*i].base).collect();
        for (i, part) in idx.iter().zip(apportion(share, &bases)) {
            out[*i] = part;
        }
    }
    out
}

/// One route, computed with the given region states.
struct RouteOutcome {
    plan: RoutePlan,
    /// Calls per bot pool on this route for the declared `expectedConcurrentCalls`.
    floor: BTreeMap<String, u64>,
    /// Calls per bot pool on this route for the measured calls, when measured.
    measured: Option<BTreeMap<String, u64>>,
    /// Total placeable capacity over all tiers (`None`: unlimited).
    capacity: Option<u64>,
}

/// Which tiers carry `amount` calls and how many each: the first placeable tier, plus
/// the next placeable ones while the capacity so far is short; each carries what it
/// can, the last the rest.
fn allocate(tiers: &[TierEval], amount: u64) -> (Vec<usize>, Vec<u64>) {
    let mut active_tiers: Vec<usize> = Vec::new();
    let mut covered: Option<u64> = Some(0);
    for (i, t) in tiers.iter().enumerate() {
        if t.placeable.is_empty() {
            continue;
        }
        let short = match covered {
            None => false,
            Some(c) => active_tiers.is_empty() || c < amount,
        };
        if !short {
            break;
        }
        active_tiers.push(i);
        covered = match (covered, t.capacity) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    let mut tier_calls = Vec::with_capacity(active_tiers.len());
    let mut remaining = amount;
    for (k, i) in active_tiers.iter().enumerate() {
        let calls = if k + 1 == active_tiers.len() {
            remaining
        } else {
            tiers[*i].capacity.map_or(remaining, |c| c.min(remaining))
        };
        remaining -= calls;
        tier_calls.push(calls);
    }
    (active_tiers, tier_calls)
}

/// Calls per bot pool when the active tiers carry `tier_calls`.
fn pool_calls(
    tiers: &[TierEval],
    active_tiers: &[usize],
    tier_calls: &[u64],
    regions: &[RegionPlan],
) -> BTreeMap<String, u64> {
    let mut demand: BTreeMap<String, u64> = BTreeMap::new();
    for (i, calls) in active_tiers.iter().zip(tier_calls) {
        let tier = &tiers[*i];
        for (c, calls) in tier
            .placeable
            .iter()
            .zip(split(*calls, &tier.placeable, regions))
        {
            if let Some(pool) = &c.pool {
                *demand.entry(pool.clone()).or_default() += calls;
            }
        }
    }
    demand
}

fn compute_route(
    route: &RouteSpec,
    expected: u64,
    measured: Option<u64>,
    observed: &Observed,
    regions: &[RegionPlan],
    active: &dyn Fn(&str) -> Result<(), String>,
) -> RouteOutcome {
    let mut seen = Vec::new();
    let tiers: Vec<TierEval> = route
        .tiers
        .iter()
        .map(|t| eval_tier(t, observed, active, &mut seen))
        .collect();
    let n = route.tiers.len() as u32;

    let (active_tiers, tier_calls) = allocate(&tiers, expected);
    let tier_percent = if active_tiers.len() <= 1 || expected == 0 {
        let mut v = vec![0; active_tiers.len()];
        if let Some(first) = v.first_mut() {
            *first = 100;
        }
        v
    } else {
        apportion(100, &tier_calls)
    };

    let mut destinations = Vec::new();
    let mut excluded = Vec::new();
    for (i, tier) in tiers.iter().enumerate() {
        excluded.extend(tier.excluded.iter().cloned());
        let priority = n - i as u32;
        let percent = match active_tiers.iter().position(|a| *a == i) {
            Some(k) => tier_percent[k],
            // Standby (or skipped) tier: listed with weight 0 for per-call failover.
            None => 0,
        };
        let weights = split(percent, &tier.placeable, regions);
        for (c, w) in tier.placeable.iter().zip(weights) {
            destinations.push(Destination {
                uri: c.uri.clone(),
                tier: route.tiers[i].name.clone(),
                region: c.region.clone(),
                priority,
                weight: u32::try_from(w).unwrap_or(0),
                duid: c.duid.clone(),
                limits: c.limits.clone(),
            });
        }
    }
    let floor = pool_calls(&tiers, &active_tiers, &tier_calls, regions);
    let measured = measured.map(|calls| {
        let (active, calls) = allocate(&tiers, calls);
        pool_calls(&tiers, &active, &calls, regions)
    });

    // `None` (unlimited) as soon as one placeable tier has no stated limit.
    let capacity = tiers
        .iter()
        .filter(|t| !t.placeable.is_empty())
        .try_fold(0u64, |acc, t| t.capacity.map(|c| acc + c));

    RouteOutcome {
        plan: RoutePlan {
            name: route.name.clone(),
            set_id: route.set_id,
            active_tier: active_tiers.first().map(|i| route.tiers[*i].name.clone()),
            destinations,
            excluded,
            fail_open: false,
            failover_codes: route
                .failover
                .as_ref()
                .map(|f| f.on_status_codes.clone())
                .unwrap_or_else(crate::crd::default_failover_codes),
        },
        floor,
        measured,
        capacity,
    }
}

/// Fail-open destinations when no previous plan knows better: every referenced
/// destination of the first tier that has any, preferring ones not known Down.
fn fallback_destinations(
    route: &RouteSpec,
    observed: &Observed,
    regions: &[RegionPlan],
) -> Vec<Destination> {
    let n = route.tiers.len() as u32;
    let mut seen = Vec::new();
    let any_region = |_: &str| -> Result<(), String> { Ok(()) };
    for prefer_alive in [true, false] {
        for (i, tier) in route.tiers.iter().enumerate() {
            seen.clear();
            let ev = eval_tier(tier, observed, &any_region, &mut seen);
            let cands: Vec<Candidate> = ev
                .all
                .into_iter()
                .filter(|(_, alive)| *alive || !prefer_alive)
                .map(|(c, _)| c)
                .collect();
            if cands.is_empty() {
                continue;
            }
            let weights = split(100, &cands, regions);
            return cands
                .into_iter()
                .zip(weights)
                .map(|(c, w)| Destination {
                    uri: c.uri,
                    tier: tier.name.clone(),
                    region: c.region,
                    priority: n - i as u32,
                    weight: u32::try_from(w).unwrap_or(0),
                    duid: c.duid,
                    limits: c.limits,
                })
                .collect();
        }
    }
    Vec::new()
}

pub(super) fn plan_routes(
    spec: &FallbackPolicySpec,
    observed: &Observed,
    regions: &[RegionPlan],
    previous: Option<&Plan>,
) -> Routed {
    let expected = u64::from(spec.expected_concurrent_calls);
    let state_of = |name: &str| regions.iter().find(|r| r.name == name);
    let active = |name: &str| -> Result<(), String> {
        match state_of(name) {
            Some(r) if r.state == RegionState::Active => Ok(()),
            Some(r) => Err(format!("region '{}' {}: {}", r.name, r.state, r.reason)),
            None => Err(format!("region '{name}' is not in the policy")),
        }
    };
    let no_region_active = regions.iter().all(|r| r.state != RegionState::Active);

    let mut routes = Vec::new();
    let mut floor: BTreeMap<String, u64> = BTreeMap::new();
    // Pools on a route with measured calls, and what the calls ask of them.
    let mut measured: BTreeMap<String, u64> = BTreeMap::new();
    let mut shortfalls = Vec::new();
    for route in &spec.routes {
        let live = observed.live.routes.get(&route.name).copied();
        let mut out = compute_route(route, expected, live, observed, regions, &active);
        let has_weight = out.plan.destinations.iter().any(|d| d.weight > 0);
        if !has_weight {
            out.plan.fail_open = true;
            let last_good = previous
                .and_then(|p| {
                    p.routes
                        .iter()
                        .find(|r| r.set_id == route.set_id && r.name == route.name)
                })
                .filter(|r| r.destinations.iter().any(|d| d.weight > 0))
                .map(|r| r.destinations.clone());
            out.plan.destinations = match last_good {
                Some(d) => d,
                None => fallback_destinations(route, observed, regions),
            };
            out.plan.active_tier = out.plan.destinations.first().map(|d| d.tier.clone());
        }
        match out.capacity {
            Some(c) if c < expected => shortfalls.push(format!(
                "route '{}': healthy capacity {c} < expected {expected} calls",
                route.name
            )),
            _ => {}
        }
        for (pool, calls) in out.floor {
            let e = floor.entry(pool).or_default();
            *e = (*e).max(calls);
        }
        if out.measured.is_some() {
            // Every pool of a measured route has a measured figure, 0 included.
            for name in route
                .tiers
                .iter()
                .flat_map(|t| &t.targets)
                .filter_map(|t| t.bot_pool.as_ref())
                .filter(|n| observed.bot_pools.contains_key(*n))
            {
                measured.entry(name.clone()).or_default();
            }
        }
        for (pool, calls) in out.measured.into_iter().flatten() {
            let e = measured.entry(pool).or_default();
            *e = (*e).max(calls);
        }
        routes.push(out.plan);
    }
    // A pool needs at least the calls its bots carry now.
    for (pool, calls) in &observed.live.bot_pools {
        if observed.bot_pools.contains_key(pool) {
            let e = measured.entry(pool.clone()).or_default();
            *e = (*e).max(*calls);
        }
    }

    // Every referenced, existing pool appears, with 0 when it carries nothing.
    for name in spec
        .routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
        .filter_map(|t| t.bot_pool.as_ref())
    {
        if observed.bot_pools.contains_key(name) {
            floor.entry(name.clone()).or_default();
        }
    }
    let calls = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let demand = floor
        .into_iter()
        .map(|(bot_pool, floor_calls)| match measured.get(&bot_pool) {
            // Figures beside the demand only when something was measured, so that a
            // policy without edges keeps the status it always had.
            Some(m) => BotDemand {
                concurrent_calls: calls(floor_calls.max(*m)),
                floor_calls: Some(calls(floor_calls)),
                measured_calls: Some(calls(*m)),
                bot_pool,
            },
            None => BotDemand {
                bot_pool,
                concurrent_calls: calls(floor_calls),
                ..Default::default()
            },
        })
        .collect();
    Routed {
        routes,
        demand,
        demand_from_previous: no_region_active && previous.is_some_and(|p| !p.demand.is_empty()),
        capacity_shortfalls: shortfalls,
    }
}
