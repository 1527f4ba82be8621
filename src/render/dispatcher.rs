//! Kamailio `dispatcher.list`.
//!
//! One line per destination, `setid destination flags priority attrs`:
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

use std::fmt::Write;

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
            let _ = writeln!(out, "{} {} 0 {} {}", route.set_id, d.uri, d.priority, attrs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EndpointState;
    use crate::plan::fixtures::{bots, policy, trunk, uri, world};

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
