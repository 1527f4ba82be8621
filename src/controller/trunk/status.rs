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

/// Endpoints that became Up or Down between `old` and `new`, with the cause.
pub fn transitions(
    old: &TrunkStatus,
    new: &TrunkStatus,
    health: &[EndpointHealth],
) -> Vec<(String, EndpointState, String)> {
    new.endpoints
        .iter()
        .filter(|e| e.state != EndpointState::Unknown)
        .filter(|e| {
            old.endpoints
                .iter()
                .find(|o| o.uri == e.uri)
                .is_none_or(|o| o.state != e.state)
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
mod tests {
    use super::*;
    use crate::crd::{ProbeSpec, TrunkEndpoint, TrunkSpec, find_condition};

    fn trunk(uris: &[&str], disabled: bool) -> Trunk {
        let mut t = Trunk::new(
            "carrier-a",
            TrunkSpec {
                region: "cologne".into(),
                medium: Default::default(),
                endpoints: uris
                    .iter()
                    .map(|u| TrunkEndpoint {
                        uri: u.to_string(),
                        weight: 1,
                    })
                    .collect(),
                capacity: None,
                probe: ProbeSpec::default(),
                disabled,
                tls: None,
            },
        );
        t.metadata.generation = Some(3);
        t
    }

    fn health(uri: &str, state: EndpointState, rtt: Option<u32>, failures: u32) -> EndpointHealth {
        EndpointHealth {
            uri: uri.into(),
            state,
            rtt_millis: rtt,
            last_status_code: rtt.map(|_| 200),
            consecutive_failures: failures,
            last_transition: Some(jiff::Timestamp::from_second(100).unwrap()),
            last_error: (failures > 0).then(|| "no answer within 500 ms".into()),
            last_failure: (failures > 0).then_some(FailureKind::Timeout),
            targets: Vec::new(),
            stale_dns: None,
        }
    }

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn writes_on_transitions_only() {
        let tr = trunk(&["sip:a", "sip:b"], false);
        let h1 = [
            health("sip:a", EndpointState::Up, Some(4), 0),
            health("sip:b", EndpointState::Down, None, 3),
        ];
        let s1 = next_status(&tr, &h1, None, &TrunkStatus::default(), true, t(1000)).unwrap();
        assert_eq!(s1.healthy_summary.as_deref(), Some("1/2"));
        assert_eq!(s1.healthy_endpoints, 1);
        assert_eq!(s1.observed_generation, Some(3));
        let c = find_condition(&s1.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::PARTIAL)
        );

        // More failures, a new RTT: no write before the refresh is due.
        let h2 = [
            health("sip:a", EndpointState::Up, Some(40), 0),
            health("sip:b", EndpointState::Down, None, 9),
        ];
        assert_eq!(next_status(&tr, &h2, None, &s1, false, t(1010)), None);
        // The refresh writes the RTT but not the failure count.
        let s2 = next_status(&tr, &h2, None, &s1, true, t(1040)).unwrap();
        assert_eq!(s2.endpoints[0].rtt_millis, Some(40));
        // Jitter alone is not worth a write, even when the refresh is due.
        let jitter = [
            health("sip:a", EndpointState::Up, Some(42), 0),
            health("sip:b", EndpointState::Down, None, 12),
        ];
        assert_eq!(next_status(&tr, &jitter, None, &s2, true, t(1100)), None);
        assert_eq!(s2.endpoints[1].consecutive_failures, 3);

        // b comes back: written at once, condition keeps its transition time.
        let h3 = [
            health("sip:a", EndpointState::Up, Some(40), 0),
            health("sip:b", EndpointState::Up, Some(2), 0),
        ];
        let s3 = next_status(&tr, &h3, None, &s2, false, t(1050)).unwrap();
        let c3 = find_condition(&s3.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(c3.reason, reasons::ALL_UP);
        assert_eq!(c3.last_transition_time, Time(t(1000)));
        let ev = transitions(&s2, &s3, &h3);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].0.as_str(), ev[0].1), ("sip:b", EndpointState::Up));
        assert_eq!(ev[0].2, "answered 200 in 2 ms");
    }

    #[test]
    fn all_down_probing_and_disabled() {
        let tr = trunk(&["sip:a"], false);
        let down = [health("sip:a", EndpointState::Down, None, 3)];
        let s = next_status(&tr, &down, None, &TrunkStatus::default(), true, t(1)).unwrap();
        let c = find_condition(&s.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::ALL_DOWN)
        );
        let ev = transitions(&TrunkStatus::default(), &s, &down);
        assert_eq!(ev[0].2, "no answer within 500 ms");

        let unknown = [health("sip:a", EndpointState::Unknown, None, 1)];
        let s = next_status(&tr, &unknown, None, &TrunkStatus::default(), true, t(1)).unwrap();
        assert_eq!(
            find_condition(&s.conditions, TRUNK_HEALTHY).unwrap().reason,
            reasons::PROBING
        );
        assert!(transitions(&TrunkStatus::default(), &s, &unknown).is_empty());

        let off = trunk(&["sip:a"], true);
        let s = next_status(&off, &[], None, &s, true, t(2)).unwrap();
        let c = find_condition(&s.conditions, TRUNK_HEALTHY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::DISABLED)
        );
        assert_eq!(s.endpoints[0].state, EndpointState::Unknown);
        assert_eq!(next_status(&off, &[], None, &s, true, t(3)), None);
    }

    /// A denied destination raises `Forbidden` (the endpoint stays Unknown, not Down),
    /// and clearing it turns the condition False instead of leaving it stale.
    #[test]
    fn forbidden_and_quota_conditions() {
        let tr = trunk(&["sip:a", "sip:b"], false);
        let mut denied = health("sip:a", EndpointState::Unknown, None, 0);
        denied.last_error = Some(
            "destination 127.0.0.1:5060 is forbidden by the operator's deny rule 127.0.0.0/8"
                .into(),
        );
        denied.last_failure = Some(FailureKind::Forbidden);
        let up = health("sip:b", EndpointState::Up, Some(3), 0);
        let s1 = next_status(
            &tr,
            &[denied.clone(), up.clone()],
            None,
            &TrunkStatus::default(),
            true,
            t(1),
        )
        .unwrap();
        let c = find_condition(&s1.conditions, TRUNK_FORBIDDEN).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::DESTINATION_DENIED)
        );
        assert!(
            c.message
                .starts_with("sip:a: destination 127.0.0.1:5060 is forbidden"),
            "{}",
            c.message
        );
        assert_eq!(s1.endpoints[0].state, EndpointState::Unknown);
        assert!(find_condition(&s1.conditions, TRUNK_QUOTA_EXCEEDED).is_none());
        // Unchanged: no write.
        assert_eq!(
            next_status(&tr, &[denied, up.clone()], None, &s1, false, t(2)),
            None
        );
        let fine = health("sip:a", EndpointState::Up, Some(3), 0);
        let s2 = next_status(&tr, &[fine, up.clone()], None, &s1, false, t(3)).unwrap();
        let c = find_condition(&s2.conditions, TRUNK_FORBIDDEN).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::DESTINATIONS_ALLOWED)
        );

        let mut over = health("sip:a", EndpointState::Unknown, None, 0);
        over.last_error =
            Some("namespace t would probe 9 endpoints, over the operator's quota of 8".into());
        over.last_failure = Some(FailureKind::Quota);
        let mut over_b = over.clone();
        over_b.uri = "sip:b".into();
        let s3 = next_status(
            &tr,
            &[over, over_b],
            None,
            &TrunkStatus::default(),
            true,
            t(4),
        )
        .unwrap();
        let c = find_condition(&s3.conditions, TRUNK_QUOTA_EXCEEDED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::NAMESPACE_QUOTA)
        );
        assert!(
            c.message.contains("(and 1 more endpoints)"),
            "{}",
            c.message
        );
    }
}
