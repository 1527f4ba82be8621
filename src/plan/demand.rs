//! Live demand: what the SIP edges report about the calls that actually arrive, summed
//! over edge members and mapped onto a policy's routes, regions, tiers and bot pools.
//!
//! The planner places `max(measured, expectedConcurrentCalls)` calls per route when it
//! sizes bot pools ([`LiveCalls`]): `expectedConcurrentCalls` stays the planning floor,
//! and a surge beyond it reaches the pools that take the overflow as soon as an edge
//! reports it. Routing weights keep following health and the declared figures only:
//! a routing that moved with every call would reload Kamailio every second and reset
//! its call-load counters, which are what enforces each target's
//! `maxConcurrentCalls`.
//!
//! Destination URIs are matched to targets by host and port (parameters such as
//! `;transport=udp` and the default port 5060 aside), so a report that spells a URI
//! slightly differently from the routing still counts. Calls are attributed to a route
//! by their dispatcher set id, or else by the route whose targets include the URI.

use std::collections::BTreeMap;

use super::Observed;
use crate::crd::{EdgeMember, FallbackPolicySpec, MeasuredLoad, MeasuredRoute, MeasuredShare};

/// Region or tier name for calls to a destination that is not among the policy's
/// targets (any more), e.g. a bot whose pod was replaced.
pub const UNKNOWN: &str = "unknown";

/// Live calls as the planner uses them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveCalls {
    /// Calls in progress per route name (routes without calls are absent).
    pub routes: BTreeMap<String, u64>,
    /// Calls in progress at each bot pool's bots (pools without calls are absent).
    pub bot_pools: BTreeMap<String, u64>,
}

impl LiveCalls {
    /// True when no edge reports a call in progress.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.bot_pools.is_empty()
    }
}

/// Where a destination URI belongs in one route.
#[derive(Clone, Debug, PartialEq)]
struct Location {
    tier: String,
    region: String,
}

/// `host:port` of a SIP URI, lowercase, default port 5060, without scheme, user part
/// and parameters: the part that identifies a destination.
pub fn destination_key(uri: &str) -> String {
    let rest = uri
        .trim()
        .trim_start_matches("sips:")
        .trim_start_matches("sip:");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let hostport = rest.split([';', '?']).next().unwrap_or_default();
    let has_port = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split_once(']').is_some_and(|(_, p)| p.starts_with(':'))
    } else {
        hostport.contains(':')
    };
    let mut key = hostport.to_ascii_lowercase();
    if !has_port {
        key.push_str(":5060");
    }
    key
}

/// Per route, every destination it can send calls to, by [`destination_key`] (the
/// first tier naming a destination wins).
fn locations(spec: &FallbackPolicySpec, observed: &Observed) -> Vec<BTreeMap<String, Location>> {
    spec.routes
        .iter()
        .map(|r| {
            let mut out = BTreeMap::new();
            for tier in &r.tiers {
                let mut add = |uri: &str, region: &str| {
                    out.entry(destination_key(uri)).or_insert_with(|| Location {
                        tier: tier.name.clone(),
                        region: region.to_string(),
                    });
                };
                for target in &tier.targets {
                    if let Some(name) = &target.trunk
                        && let Some(t) = observed.trunks.get(name)
                    {
                        for e in &t.endpoints {
                            add(&e.uri, &t.region);
                        }
                    }
                    if let Some(name) = &target.bot_pool
                        && let Some(p) = observed.bot_pools.get(name)
                    {
                        for d in &p.destinations {
                            add(d, &p.region);
                        }
                    }
                    if let Some(uri) = &target.uri {
                        add(uri, target.region.as_deref().unwrap_or(UNKNOWN));
                    }
                }
            }
            out
        })
        .collect()
}

/// The bot pool (of those the policy references) each ready bot belongs to.
fn pool_of_bot(spec: &FallbackPolicySpec, observed: &Observed) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in spec
        .routes
        .iter()
        .flat_map(|r| &r.tiers)
        .flat_map(|t| &t.targets)
        .filter_map(|t| t.bot_pool.as_ref())
    {
        if let Some(p) = observed.bot_pools.get(name) {
            for d in &p.destinations {
                out.entry(destination_key(d))
                    .or_insert_with(|| name.clone());
            }
        }
    }
    out
}

/// Running totals of one share (route, region or tier).
#[derive(Clone, Copy, Debug, Default)]
struct Sum {
    calls: u64,
    cps: f64,
}

impl Sum {
    fn add(&mut self, calls: u32, cps: f64) {
        self.calls += u64::from(calls);
        if cps.is_finite() && cps > 0.0 {
            self.cps += cps;
        }
    }
}

/// A route's total, and its sums per region and per tier.
type RouteSums = (Sum, BTreeMap<String, Sum>, BTreeMap<String, Sum>);

/// Calls per second with one decimal, so that the status changes only when a figure
/// does.
fn one_decimal(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn calls_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn shares(sums: &BTreeMap<String, Sum>) -> Vec<MeasuredShare> {
    sums.iter()
        .map(|(name, s)| MeasuredShare {
            name: name.clone(),
            concurrent_calls: calls_u32(s.calls),
            calls_per_second: one_decimal(s.cps),
        })
        .collect()
}

/// Sum the call reports of `members` (only those that count: the caller leaves out
/// members whose pod is gone) over the policy's routes, regions, tiers and bot pools.
///
/// Returns `None` when no member counts (no edge serves this policy), else the
/// figures for `status.measured` and the [`LiveCalls`] for the planner.
pub fn aggregate<'a>(
    spec: &FallbackPolicySpec,
    observed: &Observed,
    members: impl IntoIterator<Item = &'a EdgeMember>,
) -> Option<(MeasuredLoad, LiveCalls)> {
    let locations = locations(spec, observed);
    let bots = pool_of_bot(spec, observed);
    let mut counted = 0u32;
    let mut routes: Vec<RouteSums> = vec![Default::default(); spec.routes.len()];
    let mut pools: BTreeMap<String, u64> = BTreeMap::new();
    for member in members {
        counted += 1;
        for calls in &member.calls {
            let key = destination_key(&calls.uri);
            // A set id that is not one of this policy's routes is another policy's
            // call through the same edge (or a stale set): not ours.
            let route = match calls.set_id {
                Some(id) => spec.routes.iter().position(|r| r.set_id == id),
                None => locations.iter().position(|l| l.contains_key(&key)),
            };
            let Some(route) = route else { continue };
            let (region, tier) = locations[route]
                .get(&key)
                .map_or((UNKNOWN, UNKNOWN), |l| (l.region.as_str(), l.tier.as_str()));
            let (total, regions, tiers) = &mut routes[route];
            total.add(calls.active_calls, calls.calls_per_second);
            regions
                .entry(region.to_string())
                .or_default()
                .add(calls.active_calls, calls.calls_per_second);
            tiers
                .entry(tier.to_string())
                .or_default()
                .add(calls.active_calls, calls.calls_per_second);
            if let Some(pool) = bots.get(&key)
                && calls.active_calls > 0
            {
                *pools.entry(pool.clone()).or_default() += u64::from(calls.active_calls);
            }
        }
    }
    if counted == 0 {
        return None;
    }
    let mut live = LiveCalls {
        routes: BTreeMap::new(),
        bot_pools: pools,
    };
    let mut load = MeasuredLoad {
        edge_members: counted,
        ..Default::default()
    };
    let mut cps = 0.0;
    let mut total_calls = 0u64;
    for (spec_route, (sum, regions, tiers)) in spec.routes.iter().zip(routes) {
        if sum.calls == 0 && sum.cps == 0.0 && regions.is_empty() {
            continue;
        }
        if sum.calls > 0 {
            live.routes.insert(spec_route.name.clone(), sum.calls);
        }
        total_calls += sum.calls;
        cps += sum.cps;
        load.routes.push(MeasuredRoute {
            name: spec_route.name.clone(),
            set_id: spec_route.set_id,
            concurrent_calls: calls_u32(sum.calls),
            calls_per_second: one_decimal(sum.cps),
            regions: shares(&regions),
            tiers: shares(&tiers),
        });
    }
    load.concurrent_calls = calls_u32(total_calls);
    load.calls_per_second = one_decimal(cps);
    Some((load, live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EdgeCalls;
    use crate::plan::fixtures::*;

    fn member(name: &str, calls: &[(&str, Option<u32>, u32, f64)]) -> EdgeMember {
        EdgeMember {
            name: name.to_string(),
            calls: calls
                .iter()
                .map(|(uri, set_id, active, cps)| EdgeCalls {
                    uri: uri.to_string(),
                    set_id: *set_id,
                    active_calls: *active,
                    calls_per_second: *cps,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn contact_center() -> (FallbackPolicySpec, Observed) {
        let spec = policy()
            .region("cologne", 60)
            .region("frankfurt", 40)
            .expected_calls(20)
            .route("inbound", 1, |r| {
                r.tier(
                    "agents",
                    [
                        uri("sip:127.0.50.31:5060", "cologne"),
                        uri("sip:127.0.50.32:5060", "frankfurt"),
                    ],
                )
                .tier("bots", [bots("bots-cgn"), bots("bots-fra")])
            })
            .route("outbound", 2, |r| {
                r.tier("fixed", [trunk("fixed-cgn"), trunk("fixed-fra")])
            })
            .build();
        let world = world()
            .trunk(
                "fixed-cgn",
                "cologne",
                ["sip:127.0.50.11:5060;transport=udp"],
            )
            .trunk(
                "fixed-fra",
                "frankfurt",
                ["sip:127.0.50.21:5060;transport=udp"],
            )
            .bot_pool("bots-cgn", "cologne", 5, ["10.0.0.1"])
            .bot_pool("bots-fra", "frankfurt", 5, ["10.0.1.1", "10.0.1.2"])
            .uri_state("sip:127.0.50.31:5060", crate::crd::EndpointState::Up)
            .uri_state("sip:127.0.50.32:5060", crate::crd::EndpointState::Up);
        (spec, world.observed())
    }

    #[test]
    fn destination_keys_ignore_parameters_user_and_default_port() {
        assert_eq!(
            destination_key("sip:127.0.50.11:5060;transport=udp"),
            "127.0.50.11:5060"
        );
        assert_eq!(
            destination_key("sip:agents@PBX.example.net"),
            "pbx.example.net:5060"
        );
        assert_eq!(
            destination_key("sips:[fd00::1]:5061;transport=tls"),
            "[fd00::1]:5061"
        );
        assert_eq!(destination_key("sip:[fd00::1]"), "[fd00::1]:5060");
    }

    #[test]
    fn calls_are_summed_over_members_per_route_region_and_tier() {
        let (spec, observed) = contact_center();
        let a = member(
            "edge-a",
            &[
                ("sip:127.0.50.32:5060", Some(1), 25, 12.5),
                ("sip:10.0.1.1:5060;transport=udp", Some(1), 7, 3.0),
                ("sip:127.0.50.21:5060;transport=udp", Some(2), 4, 2.04),
            ],
        );
        let b = member(
            "edge-b",
            &[
                ("sip:10.0.1.2:5060", Some(1), 8, 3.0),
                ("sip:127.0.50.31:5060", None, 2, 1.0),
            ],
        );
        let (load, live) = aggregate(&spec, &observed, [&a, &b]).unwrap();
        assert_eq!(load.edge_members, 2);
        assert_eq!(load.concurrent_calls, 46);
        assert_eq!(load.calls_per_second, 21.5);
        let inbound = &load.routes[0];
        assert_eq!((inbound.name.as_str(), inbound.set_id), ("inbound", 1));
        assert_eq!(inbound.concurrent_calls, 42);
        assert_eq!(
            inbound.regions,
            vec![
                MeasuredShare {
                    name: "cologne".into(),
                    concurrent_calls: 2,
                    calls_per_second: 1.0
                },
                MeasuredShare {
                    name: "frankfurt".into(),
                    concurrent_calls: 40,
                    calls_per_second: 18.5
                },
            ]
        );
        let tiers: Vec<(&str, u32)> = inbound
            .tiers
            .iter()
            .map(|t| (t.name.as_str(), t.concurrent_calls))
            .collect();
        assert_eq!(tiers, vec![("agents", 27), ("bots", 15)]);
        assert_eq!(load.routes[1].concurrent_calls, 4);
        assert_eq!(load.routes[1].calls_per_second, 2.0);
        assert_eq!(live.routes.get("inbound"), Some(&42));
        assert_eq!(live.routes.get("outbound"), Some(&4));
        assert_eq!(live.bot_pools.get("bots-fra"), Some(&15));
        assert_eq!(live.bot_pools.get("bots-cgn"), None);
    }

    #[test]
    fn unknown_destinations_count_for_their_set_and_other_sets_do_not_count() {
        let (spec, observed) = contact_center();
        let m = member(
            "edge-a",
            &[
                // A bot that is gone from the pool's status: still calls on set 1.
                ("sip:10.9.9.9:5060", Some(1), 3, 0.0),
                // Another policy's set through the same edge.
                ("sip:127.0.50.32:5060", Some(7), 50, 9.0),
                // No set id and not a destination of this policy.
                ("sip:192.0.2.1:5060", None, 5, 1.0),
            ],
        );
        let (load, live) = aggregate(&spec, &observed, [&m]).unwrap();
        assert_eq!(load.concurrent_calls, 3);
        assert_eq!(load.routes.len(), 1);
        assert_eq!(load.routes[0].regions[0].name, UNKNOWN);
        assert_eq!(load.routes[0].tiers[0].name, UNKNOWN);
        assert_eq!(live.routes.get("inbound"), Some(&3));
        assert!(live.bot_pools.is_empty());
    }

    #[test]
    fn no_member_means_no_measurement_and_quiet_members_measure_zero() {
        let (spec, observed) = contact_center();
        assert_eq!(aggregate(&spec, &observed, []), None);
        let quiet = member("edge-a", &[]);
        let (load, live) = aggregate(&spec, &observed, [&quiet]).unwrap();
        assert_eq!(load.edge_members, 1);
        assert_eq!(load.concurrent_calls, 0);
        assert!(load.routes.is_empty());
        assert!(live.is_empty());
    }

    #[test]
    fn nonsense_rates_are_ignored() {
        let (spec, observed) = contact_center();
        let m = member(
            "edge-a",
            &[
                ("sip:127.0.50.32:5060", Some(1), 1, f64::NAN),
                ("sip:127.0.50.32:5060", Some(1), 1, -4.0),
            ],
        );
        let (load, _) = aggregate(&spec, &observed, [&m]).unwrap();
        assert_eq!(load.calls_per_second, 0.0);
        assert_eq!(load.concurrent_calls, 2);
    }
}
