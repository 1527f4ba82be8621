//! End-to-end on pods: the carrier-outage replay (`scripts/demo_cluster.py --quick`) on
//! the real node — the operator from the packaged chart, the edge from
//! charts/lifeline-edge, carriers, agents' PBXs and BotPool bots as sipp pods, callers
//! on the pod bridge — with the mission's criteria asserted on its measured summary.
//!
//! Like tests/real_node.rs it needs root and what `make test` builds first (`make
//! release images-test tools`), reuses a running real-node plane or starts its own
//! (stopped again on drop, also when an assertion fails), and is skipped with
//! `LIFELINE_SKIP_CLUSTER_TESTS=1`. The script removes its releases and namespaces
//! itself. Traffic goes only to pods on the harness's bridge (10.244.0.0/24).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::real_plane::RealPlane;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn carrier_outage_on_pods_keeps_calls_answered() {
    if std::env::var("LIFELINE_SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        eprintln!("LIFELINE_SKIP_CLUSTER_TESTS=1: skipping the pod replay");
        return;
    }
    let v = env!("CARGO_PKG_VERSION");
    for p in [
        root().join(format!("target/release/artifacts/lifeline-{v}.tgz")),
        root().join(format!("target/release/artifacts/lifeline-{v}.oci.tar")),
        root().join(format!("target/image/sipp-{v}.oci.tar")),
        root().join(format!("target/image/kamailio-{v}.oci.tar")),
        root().join("target/tools/bin/helm"),
    ] {
        assert!(
            p.exists(),
            "{} is missing: run `make release images-test tools` (what `make test` does first)",
            p.display()
        );
    }
    let _plane = RealPlane::up();
    let summary_path = root().join("target/e2e/cluster-summary.json");
    let _ = std::fs::remove_file(&summary_path);
    let status = Command::new("python3")
        .arg(root().join("scripts/demo_cluster.py"))
        .args(["--quick", "--json"])
        .arg(&summary_path)
        .status()
        .expect("python3 runs the pod replay");
    let text = std::fs::read_to_string(&summary_path).unwrap_or_else(|e| {
        panic!("the pod replay wrote no summary ({e}); exit {status}; logs in target/demo-cluster/logs/")
    });
    let s: serde_json::Value = serde_json::from_str(&text).expect("summary is JSON");

    // The edge: held back until sip-sync confirmed the routing in Kamailio.
    let edge = &s["edge"];
    assert_eq!(
        edge["ready_without_routing"], false,
        "edge pod Ready without a routing ConfigMap: {edge}"
    );
    assert_eq!(
        edge["kamailio_started_without_routing"], false,
        "Kamailio started before sip-sync wrote a routing: {edge}"
    );
    assert_eq!(
        edge["ready_after_confirmation"], true,
        "edge pod Ready only after sip-sync confirmed the routing: {edge}"
    );
    assert!(
        edge["sync_applied_total"].as_f64().unwrap_or(0.0) >= 1.0,
        "sip-sync's /metrics counts the confirmed routing: {edge}"
    );

    common::replay::assert_outage_criteria(&s, &text, true);
    for (pool, b) in s["bot_pools"].as_object().expect("bot pools") {
        assert!(
            b["pods"].as_u64().unwrap() >= 1,
            "BotPool {pool} runs real, ready bot pods: {b}"
        );
    }
    assert!(
        status.success(),
        "the pod replay reported missed criteria: {:?}",
        s["problems"]
    );
}
