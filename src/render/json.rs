//! The routing as JSON, for SIP proxies other than Kamailio. Same content as the
//! dispatcher list; field order is fixed by the structs, so output is deterministic.

use serde::Serialize;

use crate::plan::Plan;

/// Version of the document layout.
pub const JSON_VERSION: u32 = 1;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Doc<'a> {
    version: u32,
    policy: &'a str,
    fail_open: bool,
    regions: Vec<Region<'a>>,
    routes: Vec<Route<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Region<'a> {
    name: &'a str,
    state: String,
    effective_weight: u32,
    reason: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Route<'a> {
    name: &'a str,
    set_id: u32,
    active_tier: Option<&'a str>,
    fail_open: bool,
    failover_codes: &'a [u16],
    destinations: Vec<Dest<'a>>,
    excluded: Vec<Excl<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Dest<'a> {
    uri: &'a str,
    tier: &'a str,
    region: &'a str,
    priority: u32,
    weight: u32,
    duid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent_calls: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_calls_per_second: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Excl<'a> {
    target: &'a str,
    tier: &'a str,
    reason: &'a str,
}

/// Render `plan` for the policy `namespace/name` as pretty-printed JSON.
pub fn render(policy: &str, plan: &Plan) -> String {
    let doc = Doc {
        version: JSON_VERSION,
        policy,
        fail_open: plan.fail_open(),
        regions: plan
            .regions
            .iter()
            .map(|r| Region {
                name: &r.name,
                state: r.state.to_string(),
                effective_weight: r.effective_weight,
                reason: &r.reason,
            })
            .collect(),
        routes: plan
            .routes
            .iter()
            .map(|r| Route {
                name: &r.name,
                set_id: r.set_id,
                active_tier: r.active_tier.as_deref(),
                fail_open: r.fail_open,
                failover_codes: &r.failover_codes,
                destinations: r
                    .destinations
                    .iter()
                    .map(|d| Dest {
                        uri: &d.uri,
                        tier: &d.tier,
                        region: &d.region,
                        priority: d.priority,
                        weight: d.weight,
                        duid: &d.duid,
                        capacity_group: d.limits.as_ref().map(|l| l.group.as_str()),
                        max_concurrent_calls: d
                            .limits
                            .as_ref()
                            .and_then(|l| l.max_concurrent_calls),
                        max_calls_per_second: d
                            .limits
                            .as_ref()
                            .and_then(|l| l.max_calls_per_second),
                    })
                    .collect(),
                excluded: r
                    .excluded
                    .iter()
                    .map(|x| Excl {
                        target: &x.target,
                        tier: &x.tier,
                        reason: &x.reason,
                    })
                    .collect(),
            })
            .collect(),
    };
    // Serialising plain structs of strings and integers cannot fail.
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}
