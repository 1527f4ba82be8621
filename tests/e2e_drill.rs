//! End-to-end: FailoverDrills on the carrier-outage setup (`scripts/drill.py`) on the
//! real control plane, real Kamailio and real sipp: a scheduled drill drains Cologne
//! while calls keep flowing and rolls back on time; a drill during which Frankfurt's
//! carrier dies aborts and normal failover takes over with no routing gap.

mod common;

use std::process::Command;

#[tokio::test]
async fn drills_drain_roll_back_and_abort_on_a_real_failure() {
    if common::client().await.is_none() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let summary_path = format!("{root}/target/e2e/drill-summary.json");
    let _ = std::fs::remove_file(&summary_path);
    let status = Command::new("python3")
        .args([&format!("{root}/scripts/drill.py"), "--json", &summary_path])
        .status()
        .expect("python3 runs the drills");
    let text = std::fs::read_to_string(&summary_path).unwrap_or_else(|e| {
        panic!("the drills wrote no summary ({e}); exit {status}; logs in target/demo/logs/")
    });
    let s: serde_json::Value = serde_json::from_str(&text).expect("summary is JSON");

    let r = &s["rehearsal"];
    assert_eq!(r["outcome"], "Passed", "scheduled drill: {r}");
    assert_eq!(
        r["phase"], "Scheduled",
        "a cron drill waits for its next run: {r}"
    );
    assert!(r["next_run"].is_string(), "next run shown: {r}");
    let shift = r["shift_s"].as_f64().expect("Cologne left the routing");
    assert!(
        shift <= 5.0,
        "calls moved {shift} s after the scheduled start"
    );
    let late = r["rollback_late_s"].as_f64().expect("Cologne came back");
    assert!(
        (-1.5..=3.0).contains(&late),
        "rolled back {late} s after the drill's end"
    );

    let i = &s["injected"];
    assert_eq!(i["outcome"], "Aborted", "drill with a real failure: {i}");
    assert!(
        i["reason"].as_str().unwrap_or("").contains("frankfurt"),
        "the abort names the failed region: {i}"
    );
    let handover = i["handover_s"].as_f64().expect("Cologne routed again");
    assert!(handover <= 6.0, "normal failover took {handover} s");
    assert_eq!(
        s["empty_route_samples"].as_array().map(Vec::len),
        Some(0),
        "no moment without a destination: {}",
        s["empty_route_samples"]
    );
    for phase in ["drill", "after-failure"] {
        let p = &s["phases"][phase];
        let (placed, failed) = (p["placed"].as_u64().unwrap(), p["failed"].as_u64().unwrap());
        assert!(placed >= 50, "calls flowed in phase {phase}: {p}");
        assert!(failed * 100 <= placed, "≤ 1 % failed in phase {phase}: {p}");
    }
    let events: Vec<String> = serde_json::from_value(s["events"].clone()).unwrap();
    for reason in [
        "DrillStarted",
        "DrillShifted",
        "DrillPassed",
        "DrillAborted",
    ] {
        assert!(
            events.iter().any(|e| e.starts_with(reason)),
            "Event {reason} published: {events:?}"
        );
    }
    assert!(
        status.success(),
        "the drills reported missed criteria: {:?}",
        s["problems"]
    );
}
