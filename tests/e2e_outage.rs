//! End-to-end: the carrier-outage replay (`scripts/demo.py --quick`) on the real control
//! plane, real Kamailio and real sipp, with the mission's criteria asserted on its
//! measured summary: ≤ 1 % of outage calls failed, the detection bound, failback after
//! `recoverAfterSeconds`, and the receiving region's bots growing above their floor,
//! carrying calls, and shrinking back after failback.

mod common;

use std::process::Command;

#[tokio::test]
async fn carrier_outage_keeps_calls_answered() {
    if common::client().await.is_none() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let summary_path = format!("{root}/target/e2e/summary.json");
    let _ = std::fs::remove_file(&summary_path);
    let status = Command::new("python3")
        .args([
            &format!("{root}/scripts/demo.py"),
            "--quick",
            "--json",
            &summary_path,
        ])
        .status()
        .expect("python3 runs the demo");
    let text = std::fs::read_to_string(&summary_path).unwrap_or_else(|e| {
        panic!("the demo wrote no summary ({e}); exit {status}; logs in target/demo/logs/")
    });
    let s: serde_json::Value = serde_json::from_str(&text).expect("summary is JSON");

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
        "Kamailio's routing dropped the dead carrier: {text}"
    );
    let recover_after = s["recover_after_seconds"].as_f64().unwrap();
    if let Some(back) = s["carrier_back_to_routing_s"].as_f64() {
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
    // The seed's story: the receiving region's bots take the overflow and grow from
    // their floor, then return to it after failback.
    let pool = s["receiving_pool"].as_str().unwrap();
    let during = &s["bot_phases"]["outage"][pool];
    let after = &s["bots_after"][pool];
    let floor = after["min"].as_u64().unwrap();
    assert!(
        during["max_desired"].as_u64().unwrap() > floor,
        "{pool} scales above its floor ({floor}) during the outage: {during}"
    );
    assert!(
        during["max_ready"].as_u64().unwrap() > floor,
        "{pool} runs more than its floor ({floor}) of ready bots during the outage: {during}"
    );
    assert!(
        during["calls"].as_u64().unwrap() > 0,
        "{pool}'s bots carry calls during the outage: {during}"
    );
    assert_eq!(
        after["desired"].as_u64().unwrap(),
        floor,
        "{pool} returns to its floor after failback: {after}"
    );
    let picture = s["timeline_png"]
        .as_str()
        .expect("timeline picture written");
    assert!(
        std::fs::metadata(picture).is_ok_and(|m| m.len() > 10_000),
        "{picture} is a picture"
    );
    assert!(
        status.success(),
        "the demo reported missed criteria: {:?}",
        s["problems"]
    );
}
