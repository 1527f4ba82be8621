//! The criteria both carrier-outage replays share (`make demo` on loopback processes,
//! `make demo-cluster` on pods), checked on the summary JSON each writes.

use serde_json::Value;

/// At most 1 % of the outage phase's calls failed, no new call reached the dead
/// carrier after the detection bound, the edge's routing dropped it, calls were
/// answered before and after, and a failback (when `require_failback`, or whenever one
/// is reported) came no sooner than `recoverAfterSeconds`.
pub fn assert_outage_criteria(s: &Value, text: &str, require_failback: bool) {
    let outage = &s["phases"]["outage"];
    let placed = outage["placed"].as_u64().unwrap();
    let failed = outage["failed"].as_u64().unwrap();
    assert!(
        placed >= 100,
        "a steady call rate during the outage: {placed} calls placed"
    );
    assert!(
        failed * 100 <= placed,
        "at most 1 % of calls fail during the outage: {failed} of {placed} failed"
    );
    let last = s["last_new_call_to_dead_carrier_s"].as_f64().unwrap();
    let bound = s["detection_bound_s"].as_f64().unwrap();
    assert!(
        last <= bound,
        "no new call reaches the dead carrier later than period × failureThreshold + timeout + 500 ms \
         ({bound} s): the last one went {last} s after the outage"
    );
    assert!(
        s["outage_to_routing_switch_s"].as_f64().is_some(),
        "the edge's Kamailio ran a routing without the dead carrier: {text}"
    );
    assert_eq!(
        s["failovers"].as_u64(),
        Some(1),
        "one carrier outage, one failover: starting up moves no region out of service \
         (a start-up failover also spends the flapping budget the failback needs): {}",
        s["history"]
    );
    let recover_after = s["recover_after_seconds"].as_f64().unwrap();
    let back = s["carrier_back_to_routing_s"].as_f64();
    if require_failback {
        assert!(
            back.is_some(),
            "the carrier was routed again after it came back: {text}"
        );
    }
    if let Some(back) = back {
        assert!(
            back >= recover_after,
            "failback only after recoverAfterSeconds ({recover_after} s), was {back} s"
        );
    }
    for phase in ["normal", "recovery"] {
        let p = &s["phases"][phase];
        assert!(
            p["answered"].as_u64().unwrap() > 0,
            "calls answered in phase {phase}: {p}"
        );
    }
}
