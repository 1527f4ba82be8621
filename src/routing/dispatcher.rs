//! The Kamailio `dispatcher.list` format: rendered by the operator, parsed by sip-sync.
//!
//! A line is `setid destination [flags [priority [attrs]]]`, fields separated by
//! blanks; blank lines and lines starting with `#` are ignored. What lifeline writes:
//! - `flags` 0: lifeline probes, so Kamailio's own keepalives are not switched on;
//! - `priority`: the tier order, first tier highest, because Kamailio orders a set by
//!   descending priority (algorithm 8 tries the highest first, and algorithm 9 fills
//!   its 100 weight slots in that order);
//! - `attrs`: `duid=<stable id>;weight=<percent>;tier=<tier>;region=<region>`, then the
//!   limits of the destination's target `cap=<group>;maxload=<calls>;cps=<calls/s>`
//!   (only those stated) and the route's failover codes `fo=408.500.502.503.504`.
//!   Weights of a set sum to 100. Standby destinations (tiers that carry no calls now)
//!   have no `weight` attribute, since Kamailio accepts only 1–100 there; they are
//!   reached through `ds_next_dst` when a call fails or a destination is full.
//!
//! The edge configuration (`examples/kamailio/kamailio.cfg`) enforces `maxload` and
//! `cps` per `cap` group (a full destination is skipped for the next one of the set,
//! in priority order) and marks a destination down after a final reply listed in
//! `fo`. `maxload` is also Kamailio's own attribute name for the call-load algorithm
//! (10), so the list reads the same with either algorithm.
//!
//! Every destination left out, and why, is a `#` comment after its set, so that an
//! operator reading the file on the SIP edge sees what lifeline did.
//!
//! Kamailio itself accepts (and silently drops) lines it cannot use, so sip-sync
//! validates strictly with [`parse`] before writing, and compares what Kamailio reports
//! back after a reload ([`from_rpc_result`]) by set and URI only: flags and state are
//! Kamailio's business (it rewrites flags with its own state letters).

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use crate::plan::Plan;

/// Replace characters that would break a line or an attribute.
fn clean(s: &str, attr: bool) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            ';' | '=' | ' ' if attr => '_',
            c => c,
        })
        .collect()
}

/// Render `plan` for the policy `namespace/name`.
pub fn render(policy: &str, plan: &Plan) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# lifeline routing for FallbackPolicy {} (generated; do not edit)",
        clean(policy, false)
    );
    for r in &plan.regions {
        let _ = writeln!(
            out,
            "# region {} {} weight {}{}",
            r.name,
            r.state,
            r.effective_weight,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", clean(&r.reason, false))
            }
        );
    }
    for route in &plan.routes {
        let _ = writeln!(
            out,
            "# set {} route {} active tier {}{}",
            route.set_id,
            route.name,
            route.active_tier.as_deref().unwrap_or("none"),
            if route.fail_open {
                " FAIL-OPEN: no healthy destination, keeping the last known good ones"
            } else {
                ""
            }
        );
        for d in &route.destinations {
            let mut attrs = format!("duid={}", clean(&d.duid, true));
            if d.weight > 0 {
                let _ = write!(attrs, ";weight={}", d.weight);
            }
            let _ = write!(
                attrs,
                ";tier={};region={}",
                clean(&d.tier, true),
                clean(&d.region, true)
            );
            if let Some(limits) = &d.limits {
                let _ = write!(attrs, ";cap={}", clean(&limits.group, true));
                if let Some(calls) = limits.max_concurrent_calls {
                    let _ = write!(attrs, ";maxload={calls}");
                }
                if let Some(cps) = limits.max_calls_per_second {
                    let _ = write!(attrs, ";cps={cps}");
                }
            }
            if !route.failover_codes.is_empty() {
                let codes: Vec<String> = route.failover_codes.iter().map(u16::to_string).collect();
                let _ = write!(attrs, ";fo={}", codes.join("."));
            }
            let entry = Entry {
                destination: Destination {
                    set_id: route.set_id,
                    uri: d.uri.clone(),
                },
                flags: 0,
                priority: i32::try_from(d.priority).unwrap_or(i32::MAX),
                attrs,
            };
            let _ = writeln!(out, "{entry}");
        }
        for x in &route.excluded {
            let _ = writeln!(
                out,
                "# set {} excluded {} (tier {}): {}",
                route.set_id,
                clean(&x.target, false),
                x.tier,
                clean(&x.reason, false)
            );
        }
    }
    out
}

/// One destination as sip-sync compares it: set id and URI. Flags, priority and
/// attributes are Kamailio's business (it rewrites flags with its own state letters).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// Dispatcher set id.
    pub set_id: u32,
    /// Destination SIP URI, exactly as written.
    pub uri: String,
}

/// A parsed list: destinations sorted by set id and URI (duplicates kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatcherList {
    destinations: Vec<Destination>,
}

/// Why a dispatcher list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No destination at all: applying it would leave Kamailio without routing.
    #[error("the dispatcher list has no destinations")]
    Empty,
    /// A line that Kamailio would drop or misread.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl DispatcherList {
    /// Build a list from destinations in any order.
    pub fn new(mut destinations: Vec<Destination>) -> Self {
        destinations.sort();
        Self { destinations }
    }

    /// The destinations, sorted by set id then URI.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// True when there is no destination.
    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }

    /// Number of destinations per set id.
    pub fn set_sizes(&self) -> BTreeMap<u32, usize> {
        let mut sizes = BTreeMap::new();
        for d in &self.destinations {
            *sizes.entry(d.set_id).or_insert(0) += 1;
        }
        sizes
    }

    /// Describe how `loaded` differs from `self` (the expected list), or `None` when
    /// both hold the same destinations in the same sets.
    pub fn difference(&self, loaded: &DispatcherList) -> Option<String> {
        if self == loaded {
            return None;
        }
        let missing: Vec<String> = self
            .destinations
            .iter()
            .filter(|d| !loaded.destinations.contains(d))
            .map(ToString::to_string)
            .collect();
        let unexpected: Vec<String> = loaded
            .destinations
            .iter()
            .filter(|d| !self.destinations.contains(d))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() && unexpected.is_empty() {
            return Some(format!(
                "same destinations, different counts (expected {}, loaded {})",
                self.destinations.len(),
                loaded.destinations.len()
            ));
        }
        Some(format!(
            "missing [{}], unexpected [{}]",
            missing.join(", "),
            unexpected.join(", ")
        ))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.set_id, self.uri)
    }
}

/// One line of a dispatcher list, every field read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Set id and URI.
    pub destination: Destination,
    /// Kamailio's flags (lifeline writes 0); 0 when the line leaves them out.
    pub flags: i32,
    /// Higher is tried first; 0 when the line leaves it out.
    pub priority: i32,
    /// `key=value` pairs separated by `;` (no blanks), or empty.
    pub attrs: String,
}

impl Entry {
    /// The value of attribute `key`, e.g. `weight` or `duid`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    /// The `weight` attribute: the destination's share of calls in percent, or `None`
    /// for a standby destination.
    pub fn weight(&self) -> Option<u32> {
        self.attr("weight").and_then(|w| w.parse().ok())
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Destination { set_id, uri } = &self.destination;
        write!(f, "{set_id} {uri} {} {}", self.flags, self.priority)?;
        if !self.attrs.is_empty() {
            write!(f, " {}", self.attrs)?;
        }
        Ok(())
    }
}

/// Parse and validate a dispatcher list. Rejects an empty list and any line Kamailio
/// would skip, so that what is written is exactly what gets loaded.
pub fn parse(text: &str) -> Result<DispatcherList, ParseError> {
    let entries = parse_entries(text)?;
    Ok(DispatcherList::new(
        entries.into_iter().map(|e| e.destination).collect(),
    ))
}

/// [`parse`], keeping every field of every line, in file order.
pub fn parse_entries(text: &str) -> Result<Vec<Entry>, ParseError> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = parse_line(line).map_err(|reason| ParseError::Line {
            line: index + 1,
            reason,
        })?;
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(entries)
}

fn parse_line(line: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 2 {
        return Err("expected `setid destination [flags [priority [attrs]]]`".into());
    }
    if fields.len() > 5 {
        return Err(format!(
            "{} fields; attributes must not contain blanks",
            fields.len()
        ));
    }
    let set_id: u32 = fields[0]
        .parse()
        .map_err(|_| format!("set id {:?} is not a non-negative integer", fields[0]))?;
    let uri = fields[1];
    if !valid_sip_uri(uri) {
        return Err(format!(
            "destination {uri:?} is not a sip:/sips: URI with a host"
        ));
    }
    let integer = |name: &str, value: Option<&&str>| match value {
        None => Ok(0),
        Some(v) => v
            .parse::<i32>()
            .map_err(|_| format!("{name} {v:?} is not an integer")),
    };
    Ok(Entry {
        destination: Destination {
            set_id,
            uri: uri.to_string(),
        },
        flags: integer("flags", fields.get(2))?,
        priority: integer("priority", fields.get(3))?,
        attrs: fields.get(4).map(|a| a.to_string()).unwrap_or_default(),
    })
}

/// Each destination's entry, for telling whether a destination's line changed between
/// two lists (fields left out count as their defaults). Lines [`parse`] would reject
/// are skipped.
pub fn lines_by_destination(text: &str) -> HashMap<Destination, Entry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| parse_line(l).ok())
        .map(|e| (e.destination.clone(), e))
        .collect()
}

/// `sip:` or `sips:`, then an optional `user@`, then a non-empty host.
fn valid_sip_uri(uri: &str) -> bool {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"));
    let Some(rest) = rest else { return false };
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host_part.split([';', '?']).next().unwrap_or_default();
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    !host.is_empty() && host != "["
}

/// Why Kamailio's `dispatcher.list` answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected dispatcher.list result: {0}")]
pub struct RpcShapeError(pub String);

/// Read the `result` of Kamailio's `dispatcher.list` RPC
/// (`{"NRSETS":n,"RECORDS":[{"SET":{"ID":1,"TARGETS":[{"DEST":{"URI":..}}]}}]}`).
pub fn from_rpc_result(result: &serde_json::Value) -> Result<DispatcherList, RpcShapeError> {
    let shape = |what: &str| RpcShapeError(what.to_string());
    let records = result
        .get("RECORDS")
        .and_then(|r| r.as_array())
        .ok_or_else(|| shape("no RECORDS array"))?;
    let mut destinations = Vec::new();
    for record in records {
        let set = record
            .get("SET")
            .ok_or_else(|| shape("record without SET"))?;
        let id = set
            .get("ID")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| shape("SET without a numeric ID"))?;
        // A set whose destinations all failed to load has no TARGETS.
        let targets = match set.get("TARGETS") {
            Some(t) => t
                .as_array()
                .ok_or_else(|| shape("TARGETS is not an array"))?,
            None => continue,
        };
        for target in targets {
            let uri = target
                .get("DEST")
                .and_then(|d| d.get("URI"))
                .and_then(|u| u.as_str())
                .ok_or_else(|| shape("TARGET without DEST.URI"))?;
            destinations.push(Destination {
                set_id: id,
                uri: uri.to_string(),
            });
        }
    }
    Ok(DispatcherList::new(destinations))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EndpointState;
    use crate::plan::fixtures::{bots, policy, trunk, uri, world};
    use proptest::prelude::*;
    use serde_json::json;

    fn dest(set_id: u32, uri: &str) -> Destination {
        Destination {
            set_id,
            uri: uri.into(),
        }
    }

    #[test]
    fn parses_sets_and_ignores_comments_and_optional_fields() {
        let text = "# lifeline routing\n\n1 sip:10.0.0.1:5060 0 10 weight=50;duid=a\n  # tier mobile\n1 sip:gw@10.0.0.2:5060;transport=tcp 8\n2 sips:[2001:db8::1]:5061\n";
        let list = parse(text).unwrap();
        assert_eq!(
            list.destinations(),
            &[
                dest(1, "sip:10.0.0.1:5060"),
                dest(1, "sip:gw@10.0.0.2:5060;transport=tcp"),
                dest(2, "sips:[2001:db8::1]:5061"),
            ]
        );
        assert_eq!(list.set_sizes(), BTreeMap::from([(1, 2), (2, 1)]));
    }

    #[test]
    fn rejects_empty_and_comment_only_lists() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("# nothing here\n\n"), Err(ParseError::Empty));
    }

    #[test]
    fn rejects_lines_kamailio_would_drop() {
        for (text, needle) in [
            ("garbage line\n", "set id"),
            ("1\n", "expected"),
            ("x sip:a:5060\n", "set id"),
            ("-1 sip:a:5060\n", "set id"),
            ("1 10.0.0.1:5060\n", "sip:/sips:"),
            ("1 sip:\n", "sip:/sips:"),
            ("1 sip:user@\n", "sip:/sips:"),
            ("1 sip:a:5060 x\n", "flags"),
            ("1 sip:a:5060 0 high\n", "priority"),
            ("1 sip:a:5060 0 0 a=b c=d\n", "blanks"),
        ] {
            let err = parse(&format!("1 sip:ok:5060\n{text}")).unwrap_err();
            match err {
                ParseError::Line { line, reason } => {
                    assert_eq!(line, 2, "{text:?}");
                    assert!(reason.contains(needle), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_kamailio_rpc_answer() {
        let result = json!({"NRSETS":2,"RECORDS":[
            {"SET":{"ID":3,"TARGETS":[{"DEST":{"URI":"sip:x@127.0.30.8","FLAGS":"AP","PRIORITY":0}}]}},
            {"SET":{"ID":1,"TARGETS":[{"DEST":{"URI":"sip:127.0.30.9:5070;transport=tcp","FLAGS":"AX","PRIORITY":5,
                "ATTRS":{"BODY":"weight=50","WEIGHT":50}}}]}}]});
        let list = from_rpc_result(&result).unwrap();
        assert_eq!(
            list,
            parse("1 sip:127.0.30.9:5070;transport=tcp 0 5 weight=50\n3 sip:x@127.0.30.8\n")
                .unwrap()
        );
        assert!(from_rpc_result(&json!({"RECORDS": [{"SET": {}}]})).is_err());
        assert!(from_rpc_result(&json!("Ok")).is_err());
    }

    #[test]
    fn difference_names_missing_and_unexpected_destinations() {
        let expected = parse("1 sip:a:5060\n1 sip:b:5060\n").unwrap();
        let loaded = DispatcherList::new(vec![dest(1, "sip:a:5060"), dest(2, "sip:c:5060")]);
        let diff = expected.difference(&loaded).unwrap();
        assert!(diff.contains("missing [1 sip:b:5060]"), "{diff}");
        assert!(diff.contains("unexpected [2 sip:c:5060]"), "{diff}");
        assert_eq!(expected.difference(&expected.clone()), None);
        let doubled = parse("1 sip:a:5060\n1 sip:a:5060\n1 sip:b:5060\n").unwrap();
        assert!(expected.difference(&doubled).unwrap().contains("counts"));
    }

    proptest! {
        /// Whatever order and comments surround them, the same destinations parse to
        /// the same list, and a rendered list round-trips.
        #[test]
        fn order_and_comments_do_not_matter(
            entries in proptest::collection::vec((0u32..70000, "[a-z]{1,8}", 1u16..65535), 1..20),
            comment in "[ -~]{0,30}",
        ) {
            let lines: Vec<String> = entries
                .iter()
                .map(|(set, host, port)| format!("{set} sip:{host}:{port} 0 0"))
                .collect();
            let forward = format!("# {comment}\n{}\n", lines.join("\n"));
            let mut reversed_lines = lines.clone();
            reversed_lines.reverse();
            let reversed = format!("{}\n\n#{comment}\n", reversed_lines.join("\n"));
            let a = parse(&forward).unwrap();
            let b = parse(&reversed).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.destinations().len(), entries.len());
        }

        /// What the operator renders is what sip-sync reads: for any plan, parsing the
        /// rendered list gives back every destination's set, URI, priority, weight
        /// (none for standby), tier, region and duid, and nothing else (reasons and
        /// names with line breaks stay inside their comments).
        #[test]
        fn render_then_parse_round_trips(plan in arb_plan()) {
            let text = render("ns/policy", &plan);
            let mut want: Vec<_> = plan.routes.iter().flat_map(|r| {
                r.destinations.iter().map(move |d| (
                    r.set_id,
                    d.uri.clone(),
                    d.priority as i32,
                    (d.weight > 0).then_some(d.weight),
                    d.tier.clone(),
                    d.region.clone(),
                    d.duid.clone(),
                ))
            }).collect();
            let mut got: Vec<_> = parse_entries(&text).unwrap().into_iter().map(|e| (
                e.destination.set_id,
                e.destination.uri.clone(),
                e.priority,
                e.weight(),
                e.attr("tier").unwrap_or_default().to_string(),
                e.attr("region").unwrap_or_default().to_string(),
                e.attr("duid").unwrap_or_default().to_string(),
            )).collect();
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
            prop_assert!(parse_entries(&text).unwrap().iter().all(|e| e.flags == 0));
            let sets = parse(&text).unwrap();
            let dests: Vec<Destination> = plan.routes.iter().flat_map(|r| r.destinations.iter().map(|d| Destination {
                set_id: r.set_id,
                uri: d.uri.clone(),
            })).collect();
            prop_assert_eq!(sets, DispatcherList::new(dests));
        }
    }

    fn arb_uri() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("sip"), Just("sips")],
            proptest::option::of("[a-z0-9+]{1,8}"),
            prop_oneof![
                "[a-z0-9][a-z0-9.-]{0,20}",
                (0u8..=255, 0u8..=255).prop_map(|(a, b)| format!("127.0.{a}.{b}")),
                Just("[2001:db8::1]".to_string()),
            ],
            proptest::option::of(1u16..),
            prop_oneof![
                Just(""),
                Just(";transport=tcp"),
                Just(";transport=tls"),
                Just(";lr")
            ],
        )
            .prop_map(|(scheme, user, host, port, params)| {
                let user = user.map(|u| format!("{u}@")).unwrap_or_default();
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("{scheme}:{user}{host}{port}{params}")
            })
    }

    fn arb_destination() -> impl Strategy<Value = crate::plan::Destination> {
        let name = "[a-z][a-z0-9-]{0,15}";
        (
            arb_uri(),
            name,
            name,
            0u32..10_000,
            0u32..=100,
            "[a-z0-9./:-]{1,40}",
        )
            .prop_map(|(uri, tier, region, priority, weight, duid)| {
                crate::plan::Destination {
                    uri,
                    tier,
                    region,
                    priority,
                    weight,
                    duid,
                    limits: None,
                }
            })
    }

    fn arb_route() -> impl Strategy<Value = crate::plan::RoutePlan> {
        (
            1u32..100_000,
            proptest::collection::vec(arb_destination(), 0..6),
            proptest::collection::vec("[ -~\n\r\t]{0,40}", 0..3),
            any::<bool>(),
        )
            .prop_map(|(set_id, destinations, reasons, fail_open)| {
                crate::plan::RoutePlan {
                    name: format!("route-{set_id}"),
                    set_id,
                    active_tier: destinations.first().map(|d| d.tier.clone()),
                    destinations,
                    excluded: reasons
                        .into_iter()
                        .map(|reason| crate::plan::Excluded {
                            target: format!("sip:gone\n1 sip:injected:{}", reason.len()),
                            tier: "t".into(),
                            reason,
                        })
                        .collect(),
                    fail_open,
                    failover_codes: Vec::new(),
                }
            })
    }

    fn arb_plan() -> impl Strategy<Value = Plan> {
        (
            proptest::collection::vec(arb_route(), 1..5),
            "[ -~\n\r]{0,40}",
        )
            .prop_filter("at least one destination", |(routes, _)| {
                routes.iter().any(|r| !r.destinations.is_empty())
            })
            .prop_map(|(routes, reason)| Plan {
                regions: vec![crate::plan::RegionPlan {
                    name: "cologne".into(),
                    state: crate::crd::RegionState::Failed,
                    since: jiff::Timestamp::UNIX_EPOCH,
                    reason,
                    effective_weight: 0,
                    unhealthy_since: None,
                    failed_at: None,
                    has_served: true,
                    transitions: Vec::new(),
                }],
                routes,
                demand: Vec::new(),
                history: Vec::new(),
                missing: Vec::new(),
                capacity_shortfalls: Vec::new(),
                next_wakeup: None,
            })
    }

    fn line<'a>(text: &'a str, uri: &str) -> &'a str {
        text.lines()
            .find(|l| !l.starts_with('#') && l.contains(uri))
            .unwrap_or_else(|| panic!("no line for {uri}:\n{text}"))
    }

    #[test]
    fn limits_and_failover_codes_become_attributes_the_edge_enforces() {
        let mut agents = uri("sip:pbx.example.net", "cgn");
        agents.max_concurrent_calls = Some(25);
        let spec = policy()
            .region("cgn", 1)
            .expected_calls(40)
            .route("inbound", 1, |r| {
                r.tier("agents", [agents])
                    .tier("bots", [bots("bots")])
                    .tier("mobile", [trunk("mobile")])
            })
            .build();
        let mut spec = spec;
        spec.routes[0].failover = Some(crate::crd::RouteFailover {
            on_status_codes: vec![408, 503],
        });
        let mut observed = world()
            .bot_pool("bots", "cgn", 10, ["10.0.0.1", "10.0.0.2"])
            .trunk("mobile", "cgn", ["sip:mobile.example.net"])
            .trunk_capacity("mobile", 30)
            .uri_state("sip:pbx.example.net", EndpointState::Up)
            .observed();
        observed
            .trunks
            .get_mut("mobile")
            .unwrap()
            .max_calls_per_second = Some(5);
        let (plan, _) = crate::plan::plan(&spec, &observed, None, jiff::Timestamp::now());
        let text = render("ns/p", &plan);
        assert!(
            line(&text, "pbx.example.net").ends_with("cap=uri.agents.0;maxload=25;fo=408.503"),
            "{text}"
        );
        // Both bots share the pool's ready capacity as one group.
        for bot in ["10.0.0.1", "10.0.0.2"] {
            assert!(
                line(&text, bot).ends_with("cap=bot.bots;maxload=20;fo=408.503"),
                "{text}"
            );
        }
        assert!(
            line(&text, "mobile.example.net")
                .ends_with("cap=trk.mobile;maxload=30;cps=5;fo=408.503"),
            "{text}"
        );
        // 40 expected calls: 25 fit the agents, the bots take the other 15.
        let weights: Vec<u32> = plan.routes[0]
            .destinations
            .iter()
            .map(|d| d.weight)
            .collect();
        assert_eq!(weights, vec![63, 19, 18, 0], "{text}");
    }

    #[test]
    fn targets_without_limits_carry_only_the_failover_codes() {
        let spec = policy()
            .region("cgn", 1)
            .route("inbound", 1, |r| r.tier("fixed", [trunk("fixed")]))
            .build();
        let observed = world()
            .trunk("fixed", "cgn", ["sip:fixed.example.net"])
            .observed();
        let (plan, _) = crate::plan::plan(&spec, &observed, None, jiff::Timestamp::now());
        let text = render("ns/p", &plan);
        let l = line(&text, "fixed.example.net");
        assert!(!l.contains("cap=") && !l.contains("maxload"), "{l}");
        assert!(l.ends_with(";fo=408.500.502.503.504"), "{l}");
    }
}
