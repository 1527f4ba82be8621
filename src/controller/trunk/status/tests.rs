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
    // A first Up is in the status only; Up after Unknown (probing) too.
    let up = [health("sip:a", EndpointState::Up, Some(3), 0)];
    let first_up = next_status(&tr, &up, None, &TrunkStatus::default(), true, t(1)).unwrap();
    assert!(transitions(&TrunkStatus::default(), &first_up, &up).is_empty());
    assert!(transitions(&s, &first_up, &up).is_empty());
    // A first Down, and every change of a known state, are Events.
    let first_down = next_status(&tr, &down, None, &s, true, t(2)).unwrap();
    assert_eq!(transitions(&s, &first_down, &down).len(), 1);
    let back = next_status(&tr, &up, None, &first_down, true, t(3)).unwrap();
    assert_eq!(transitions(&first_down, &back, &up)[0].1, EndpointState::Up);

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
        "destination 127.0.0.1:5060 is forbidden by the operator's deny rule 127.0.0.0/8".into(),
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
