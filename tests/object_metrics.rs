//! The per-object gauges as on-call sees them: two `lifeline operator` processes
//! (leader and standby, as the chart runs them) against the real control plane, a
//! carrier that stops answering and one that answers (sipp on 127.0.70.1), and
//! `/metrics` scraped over HTTP.
//!
//! - The standby's `/metrics` names the Trunk that is down (`lifeline_trunk_healthy 0`
//!   with its namespace, name and region) as soon as the Trunk's status says so, and
//!   the policy's regions and conditions exactly as its status has them.
//! - The leader runs with `--no-object-metrics`: no per-object series at all.
//! - Both serve `lifeline_build_info`; the leader, which probes, fills
//!   `lifeline_probe_rtt_seconds` from the answering carrier.
//!
//! Run: `cargo test --test object_metrics` (needs `make testenv-up` and sipp).

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use common::operator::{Operator, sample};
use common::sip::sipp_options;
use common::{TestNamespace, eventually};
use kube::api::PostParams;
use lifeline::crd::{EndpointState, FallbackPolicy, Trunk, find_condition};
use serde_json::json;

const ANSWERING: &str = "127.0.70.1";
const SILENT: &str = "127.0.70.2";

/// `lifeline operator` confined to `namespace`, serving /metrics on a free port.
fn operator(namespace: &str, name: &str, extra: &[&str]) -> (Operator, String) {
    let addr = format!("127.0.0.1:{}", common::free_port("127.0.0.1"));
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{namespace}-{name}.log"));
    let mut cmd = common::operator::command(namespace, &addr);
    cmd.args(["--leader-election-namespace", namespace])
        .args(["--lease-name", "lifeline-metrics-test"])
        .args(["--lease-duration-seconds", "15"])
        .args(extra)
        .env("POD_NAME", name)
        .env("LIFELINE_LOG_FORMAT", "plain");
    (Operator::spawn(name, &mut cmd, &addr, Some(&log)), addr)
}

async fn scrape(addr: &str) -> Option<String> {
    let resp = reqwest::get(format!("http://{addr}/metrics")).await.ok()?;
    resp.text().await.ok()
}

fn trunk(name: &str, ip: &str, disabled: bool) -> Trunk {
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1",
        "kind": "Trunk",
        "metadata": {"name": name},
        "spec": {
            "region": "cologne",
            "medium": "FixedLine",
            "disabled": disabled,
            "endpoints": [{"uri": format!("sip:{ip}:5060;transport=udp"), "weight": 50}],
            "probe": {"periodSeconds": 1, "timeoutMillis": 300, "failureThreshold": 2, "successThreshold": 1},
        },
    }))
    .expect("trunk")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_object_gauges_name_the_down_trunk() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = TestNamespace::create(client.clone(), "object-metrics", &[]).await;

    // The carriers: one answers OPTIONS with 200, one swallows them (a socket that
    // never reads holds the port so nothing else answers there).
    let _sipp = sipp_options(200, ANSWERING, 5060, "u1");
    let _silent = UdpSocket::bind((SILENT, 5060)).expect("bind the silent carrier");

    let trunks = ns.api::<Trunk>();
    for t in [
        trunk("cologne-fixed", SILENT, false),
        trunk("cologne-mobile", ANSWERING, false),
        trunk("parked", SILENT, true),
    ] {
        trunks
            .create(&PostParams::default(), &t)
            .await
            .expect("create trunk");
    }
    let policy: FallbackPolicy = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1",
        "kind": "FallbackPolicy",
        "metadata": {"name": "hotline"},
        "spec": {
            "routingConfigMap": {"name": "hotline-routing"},
            "expectedConcurrentCalls": 10,
            "regions": [{"name": "cologne"}],
            "routes": [{"name": "inbound", "setId": 1, "tiers": [
                {"name": "fixed", "targets": [{"trunk": "cologne-fixed"}]},
                {"name": "mobile", "targets": [{"trunk": "cologne-mobile"}]},
            ]}],
        },
    }))
    .expect("policy");
    ns.api::<FallbackPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");

    // The leader exports no per-object gauges; the standby does.
    let (_leader, leader_addr) = operator(&ns.name, "leader", &["--no-object-metrics"]);
    eventually(
        Duration::from_secs(60),
        "the first operator leads",
        || async {
            let text = scrape(&leader_addr).await?;
            (sample(&text, "lifeline_leader") == Some(1.0)).then_some(())
        },
    )
    .await;
    let (_standby, standby_addr) = operator(&ns.name, "standby", &[]);

    // The Trunk's status says Down (the real prober and controller got it there).
    eventually(
        Duration::from_secs(60),
        "cologne-fixed Down in its status",
        || async {
            let t = trunks.get("cologne-fixed").await.ok()?;
            let status = t.status?;
            let down = status
                .endpoints
                .iter()
                .all(|e| e.state == EndpointState::Down);
            let healthy = find_condition(&status.conditions, "Healthy")?;
            (down && healthy.status == "False").then_some(())
        },
    )
    .await;

    let n = &ns.name;
    let down = format!(
        r#"lifeline_trunk_healthy{{namespace="{n}",name="cologne-fixed",region="cologne"}}"#
    );
    let up = format!(
        r#"lifeline_trunk_healthy{{namespace="{n}",name="cologne-mobile",region="cologne"}}"#
    );
    let down_endpoints =
        format!(r#"lifeline_trunk_endpoints{{namespace="{n}",name="cologne-fixed",state="Down"}}"#);
    let parked = format!(r#"lifeline_trunk_disabled{{namespace="{n}",name="parked"}}"#);
    let text = eventually(
        Duration::from_secs(30),
        "the standby names the down trunk",
        || async {
            let text = scrape(&standby_addr).await?;
            (sample(&text, &down) == Some(0.0) && sample(&text, &up) == Some(1.0)).then_some(text)
        },
    )
    .await;
    assert_eq!(sample(&text, &down_endpoints), Some(1.0), "{text}");
    assert_eq!(sample(&text, &parked), Some(1.0), "{text}");
    assert!(
        !text.contains(r#"name="parked",region"#),
        "a disabled trunk is neither up nor down:\n{text}"
    );
    assert_eq!(
        sample(&text, "lifeline_leader"),
        Some(0.0),
        "B is the standby"
    );

    // The policy's regions and conditions, exactly as its status has them.
    let status = eventually(
        Duration::from_secs(60),
        "the policy has regions in its status",
        || async {
            let p = ns.api::<FallbackPolicy>().get("hotline").await.ok()?;
            let status = p.status?;
            (!status.regions.is_empty() && !status.conditions.is_empty()).then_some(status)
        },
    )
    .await;
    let text = eventually(
        Duration::from_secs(30),
        "the standby shows the policy",
        || async {
            let text = scrape(&standby_addr).await?;
            text.contains(r#"name="hotline""#).then_some(text)
        },
    )
    .await;
    // Re-read: the status may have moved on between the two reads; compare with the
    // same generation of both by retrying until they agree.
    let mut agreed = false;
    for _ in 0..50 {
        let p = ns
            .api::<FallbackPolicy>()
            .get("hotline")
            .await
            .expect("get policy");
        let status = p.status.clone().unwrap_or(status.clone());
        let text = scrape(&standby_addr).await.unwrap_or(text.clone());
        let regions_match = status.regions.iter().all(|r| {
            let series = format!(
                r#"lifeline_policy_region_state{{namespace="{n}",name="hotline",region="{}",state="{}"}}"#,
                r.name, r.state
            );
            sample(&text, &series) == Some(1.0)
        });
        let conditions_match = status.conditions.iter().all(|c| {
            let series = format!(
                r#"lifeline_policy_condition{{namespace="{n}",name="hotline",condition="{}"}}"#,
                c.type_
            );
            match c.status.as_str() {
                "True" => sample(&text, &series) == Some(1.0),
                "False" => sample(&text, &series) == Some(0.0),
                _ => sample(&text, &series).is_none(),
            }
        });
        if regions_match && conditions_match {
            agreed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        agreed,
        "per-object policy gauges never matched the policy's status"
    );

    // The leader: no per-object series, but the build and the probe round trips.
    let leader = scrape(&leader_addr).await.expect("leader /metrics");
    assert!(
        !leader.contains("lifeline_trunk_") && !leader.contains("lifeline_policy_"),
        "--no-object-metrics exports no per-object gauge:\n{leader}"
    );
    let build = format!(
        r#"lifeline_build_info{{version="{}",revision="{}"}}"#,
        env!("CARGO_PKG_VERSION"),
        lifeline::telemetry::REVISION
    );
    assert_eq!(sample(&leader, &build), Some(1.0), "{leader}");
    assert_eq!(sample(&text, &build), Some(1.0), "{text}");
    let answered = sample(&leader, "lifeline_probe_rtt_seconds_count").unwrap_or_default();
    assert!(
        answered >= 1.0,
        "the answering carrier's round trips are observed:\n{leader}"
    );
    assert_eq!(
        sample(&leader, r#"lifeline_probe_rtt_seconds_bucket{le="+Inf"}"#),
        Some(answered),
        "{leader}"
    );
}
