//! The status a Trunk's probe results give it (pure), and the endpoint transitions
//! that become Events. Written on transitions only: a steady line costs no writes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    EndpointState, EndpointStatus, TRUNK_FORBIDDEN, TRUNK_HEALTHY, TRUNK_QUOTA_EXCEEDED, Trunk,
    TrunkStatus, VantageStatus, condition, find_condition, merge_condition,
};
use crate::probe::health::rtt_moved;
use crate::probe::{EndpointHealth, FailureKind};

/// `Healthy` reasons.
pub mod reasons {
    /// Every endpoint is Up.
    pub const ALL_UP: &str = "AllEndpointsUp";
    /// Some, not all, endpoints are Up.
    pub const PARTIAL: &str = "SomeEndpointsDown";
    /// Every endpoint is Down.
    pub const ALL_DOWN: &str = "AllEndpointsDown";
    /// No endpoint is Up and some have not been judged yet.
    pub const PROBING: &str = "Probing";
    /// `spec.disabled` is true.
    pub const DISABLED: &str = "Disabled";
    /// Event reason: an endpoint became Up.
    pub const ENDPOINT_UP: &str = "EndpointUp";
    /// Event reason: an endpoint became Down.
    pub const ENDPOINT_DOWN: &str = "EndpointDown";
    /// `Forbidden` reason: a destination matches the operator's deny list.
    pub const DESTINATION_DENIED: &str = "DestinationDenied";
    /// `Forbidden` reason once every destination is allowed again.
    pub const DESTINATIONS_ALLOWED: &str = "DestinationsAllowed";
    /// `QuotaExceeded` reason: the namespace's probe quota is used up.
    pub const NAMESPACE_QUOTA: &str = "NamespaceQuota";
    /// `QuotaExceeded` reason once the trunk fits again.
    pub const WITHIN_QUOTA: &str = "WithinQuota";
}

/// The status to write, or `None` when nothing worth a write changed.
///
/// An endpoint whose state did not change keeps its previous entry (its failure count
/// and last error are as of its last transition), except that its RTT is refreshed when
/// `rtt_due` (the last write is at least [`RTT_REFRESH`](crate::probe::RTT_REFRESH) old) and it moved noticeably
/// ([`rtt_moved`]), so a steady line causes no writes at all. Everything else —
/// endpoint states, the endpoint list, the `Healthy` condition, `observedGeneration` —
/// is written as soon as it changes.
pub fn next_status(
    trunk: &Trunk,
    health: &[EndpointHealth],
    vantages: Option<(Vec<VantageStatus>, String)>,
    old: &TrunkStatus,
    rtt_due: bool,
    now: jiff::Timestamp,
) -> Option<TrunkStatus> {
    let generation = trunk.metadata.generation;
    let endpoints: Vec<EndpointStatus> = if trunk.spec.disabled {
        trunk
            .spec
            .endpoints
            .iter()
            .map(|e| EndpointStatus {
                uri: e.uri.clone(),
                state: EndpointState::Unknown,
                rtt_millis: None,
                last_status_code: None,
                consecutive_failures: 0,
                last_transition_time: None,
                last_error: None,
            })
            .collect()
    } else {
        health
            .iter()
            .map(|h| {
                let fresh = EndpointStatus {
                    uri: h.uri.clone(),
                    state: h.state,
                    rtt_millis: h.rtt_millis,
                    last_status_code: h.last_status_code,
                    consecutive_failures: h.consecutive_failures,
                    last_transition_time: h.last_transition.map(Time),
                    last_error: h.last_error.clone(),
                };
                // An Unknown endpoint's reason (forbidden, no DNS answer, no quota) is
                // news even without a state change.
                match old.endpoints.iter().find(|o| {
                    o.uri == h.uri
                        && o.state == h.state
                        && (h.state != EndpointState::Unknown || o.last_error == h.last_error)
                }) {
                    Some(prev) => EndpointStatus {
                        rtt_millis: if rtt_due && rtt_moved(prev.rtt_millis, h.rtt_millis) {
                            h.rtt_millis
                        } else {
                            prev.rtt_millis
                        },
                        ..prev.clone()
                    },
                    None => fresh,
                }
            })
            .collect()
    };
    let total = endpoints.len();
    let up = endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Up)
        .count();
    let down = endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Down)
        .count();
    let (healthy, reason, message) = if trunk.spec.disabled {
        (
            false,
            reasons::DISABLED,
            "spec.disabled is true: the trunk is not probed and gets no traffic".to_string(),
        )
    } else if total > 0 && up == total {
        (
            true,
            reasons::ALL_UP,
            format!("all {total} endpoints answer OPTIONS"),
        )
    } else if up > 0 {
        (
            true,
            reasons::PARTIAL,
            format!("{up} of {total} endpoints answer OPTIONS, {down} down"),
        )
    } else if total > 0 && down == total {
        (
            false,
            reasons::ALL_DOWN,
            format!("none of {total} endpoints answers OPTIONS"),
        )
    } else {
        (
            false,
            reasons::PROBING,
            format!(
                "no endpoint is up yet; {} of {total} not judged yet",
                total - down
            ),
        )
    };
    let mut conditions = old.conditions.clone();
    merge_condition(
        &mut conditions,
        condition(TRUNK_HEALTHY, healthy, reason, message, generation),
        now,
    );
    if !trunk.spec.disabled {
        for (type_, kind, raised, cleared, cleared_msg) in [
            (
                TRUNK_FORBIDDEN,
                FailureKind::Forbidden,
                reasons::DESTINATION_DENIED,
                reasons::DESTINATIONS_ALLOWED,
                "every endpoint resolves to destinations the operator may probe",
            ),
            (
                TRUNK_QUOTA_EXCEEDED,
                FailureKind::Quota,
                reasons::NAMESPACE_QUOTA,
                reasons::WITHIN_QUOTA,
                "the namespace's probe quota has room for this trunk",
            ),
        ] {
            let hit: Vec<&EndpointHealth> = health
                .iter()
                .filter(|h| h.last_failure == Some(kind))
                .collect();
            if let Some(first) = hit.first() {
                let mut msg = format!(
                    "{}: {}",
                    first.uri,
                    first.last_error.as_deref().unwrap_or_default()
                );
                if hit.len() > 1 {
                    msg.push_str(&format!(" (and {} more endpoints)", hit.len() - 1));
                }
                merge_condition(
                    &mut conditions,
                    condition(type_, true, raised, msg, generation),
                    now,
                );
            } else if find_condition(&conditions, type_).is_some() {
                // Only a condition that was ever raised is kept (as False): Trunks that
                // never hit a limit carry no extra conditions and cost no writes.
                merge_condition(
                    &mut conditions,
                    condition(type_, false, cleared, cleared_msg, generation),
                    now,
                );
            }
        }
    }
    let new = TrunkStatus {
        observed_generation: generation,
        conditions,
        healthy_endpoints: u32::try_from(up).unwrap_or(u32::MAX),
        healthy_summary: Some(format!("{up}/{total}")),
        endpoints,
        vantage_summary: vantages.as_ref().map(|v| v.1.clone()),
        vantages: vantages.map(|v| v.0).unwrap_or_default(),
    };
    (new != *old).then_some(new)
}

/// Endpoints that became Up or Down between `old` and `new`, with the cause: the
/// changes worth an Event.
///
/// An endpoint's first verdict is one only when it is Down (a new Trunk whose carrier
/// does not answer is news); a first Up is in the status and nothing else. Creating
/// 10,000 Trunks at once (a cluster's first sync) would otherwise publish 10,000
/// `EndpointUp` Events, each an API write while the routing waits for the API server,
/// and each kept in the Event recorder's cache for six minutes.
pub fn transitions(
    old: &TrunkStatus,
    new: &TrunkStatus,
    health: &[EndpointHealth],
) -> Vec<(String, EndpointState, String)> {
    new.endpoints
        .iter()
        .filter(|e| e.state != EndpointState::Unknown)
        .filter(|e| {
            let before = old
                .endpoints
                .iter()
                .find(|o| o.uri == e.uri)
                .map_or(EndpointState::Unknown, |o| o.state);
            before != e.state
                && (before != EndpointState::Unknown || e.state == EndpointState::Down)
        })
        .map(|e| {
            let h = health.iter().find(|h| h.uri == e.uri);
            let cause = match (e.state, h) {
                (EndpointState::Up, Some(h)) => match (h.last_status_code, h.rtt_millis) {
                    (Some(code), Some(rtt)) => format!("answered {code} in {rtt} ms"),
                    _ => "answers OPTIONS".to_string(),
                },
                (_, Some(h)) => h
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "probes failed".to_string()),
                (_, None) => String::new(),
            };
            (e.uri.clone(), e.state, cause)
        })
        .collect()
}

#[cfg(test)]
mod tests;
