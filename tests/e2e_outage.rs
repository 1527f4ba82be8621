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

    common::replay::assert_outage_criteria(&s, &text, false);
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
