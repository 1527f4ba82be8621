//! Notifiers against the real control plane (`make testenv-up`), real sipp carriers on
//! 127.0.31.x, and a webhook receiver on 127.0.0.1 run by the test itself.
//!
//! - A failover (a carrier dies, its region fails, the carrier returns, the region
//!   recovers) gives each receiver — JSON, Slack, PagerDuty — exactly one trigger and
//!   one resolve, in the documented shapes.
//! - With the receiver down for 30 s and the operator SIGKILLed after the transition
//!   but before any delivery, the trigger arrives once the receiver is back, once.
//!
//! Run: `cargo test --test notify` (needs `/usr/bin/sipp`).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use common::Process;
use common::operator::Operator;
use common::sip::sipp_options;
use common::{TestNamespace, eventually};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use lifeline::crd::{FallbackPolicy, Notifier, RegionState, Trunk};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Requests the receiver got: (path, body).
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A webhook receiver on `addr`; stops when `stop` is cancelled.
async fn receiver(addr: SocketAddr, received: Received, stop: CancellationToken) {
    async fn hook(
        State(received): State<Received>,
        Path(path): Path<String>,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        received.lock().unwrap().push((path, value));
        StatusCode::ACCEPTED
    }
    let app = Router::new()
        .route("/{path}", post(hook))
        .with_state(received);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind receiver");
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
}

/// Trunks `fixed-a` (region a) and `fixed-b` (region b) probed every second, a policy
/// over both regions with one tier, a Secret with the three receivers' URLs and a
/// Notifier sending to them.
async fn setup(ns: &TestNamespace, ip_a: &str, ip_b: &str, port: u16) {
    for (name, region, ip) in [("fixed-a", "a", ip_a), ("fixed-b", "b", ip_b)] {
        let trunk: Trunk = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
            "metadata": { "name": name },
            "spec": { "region": region, "endpoints": [{ "uri": format!("sip:{ip}:5060") }],
                      "probe": { "periodSeconds": 1, "timeoutMillis": 400, "failureThreshold": 2, "successThreshold": 1 } },
        }))
        .unwrap();
        ns.api::<Trunk>()
            .create(&PostParams::default(), &trunk)
            .await
            .expect("create trunk");
    }
    let policy: FallbackPolicy = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": { "name": "main" },
        "spec": {
            "routingConfigMap": { "name": "routing" },
            "regions": [{ "name": "a" }, { "name": "b" }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "fixed-a" }, { "trunk": "fixed-b" }] },
            ]}],
            "health": { "minHealthyTrunks": 1 },
            "failover": { "recoverAfterSeconds": 2 },
        },
    }))
    .unwrap();
    ns.api::<FallbackPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");
    let base = format!("http://127.0.0.1:{port}");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "hooks" },
        "stringData": {
            "json": format!("{base}/json"), "slack": format!("{base}/slack"),
            "pagerduty": format!("{base}/pagerduty"), "routing-key": "R0UTINGKEY",
        },
    }))
    .unwrap();
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let notifier: Notifier = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Notifier",
        "metadata": { "name": "oncall" },
        "spec": { "receivers": [
            { "name": "json", "format": "Json", "urlSecretRef": { "name": "hooks", "key": "json" } },
            { "name": "slack", "format": "Slack", "urlSecretRef": { "name": "hooks", "key": "slack" } },
            { "name": "pager", "format": "PagerDuty", "urlSecretRef": { "name": "hooks", "key": "pagerduty" },
              "routingKeySecretRef": { "name": "hooks", "key": "routing-key" } },
        ]},
    }))
    .unwrap();
    ns.api::<Notifier>()
        .create(&PostParams::default(), &notifier)
        .await
        .expect("create notifier");
}

async fn region_state(ns: &TestNamespace, region: &str) -> Option<RegionState> {
    let p = ns.api::<FallbackPolicy>().get("main").await.ok()?;
    p.status?
        .regions
        .into_iter()
        .find(|r| r.name == region)
        .map(|r| r.state)
}

async fn wait_region(ns: &TestNamespace, region: &str, state: RegionState, within: Duration) {
    eventually(within, &format!("region {region} {state}"), || async {
        (region_state(ns, region).await == Some(state)).then_some(())
    })
    .await;
}

/// What each receiver got, as (path, status or event_action) pairs.
fn actions(received: &Received) -> Vec<(String, String)> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(path, v)| {
            let action = match path.as_str() {
                "json" => v["status"].as_str().unwrap_or("?").to_string(),
                "slack" => {
                    let text = v["text"].as_str().unwrap_or("?");
                    if text.starts_with(":white_check_mark: resolved") {
                        "resolved".to_string()
                    } else {
                        "firing".to_string()
                    }
                }
                _ => v["event_action"].as_str().unwrap_or("?").to_string(),
            };
            (path.clone(), action)
        })
        .collect()
}

fn count(received: &Received, path: &str, action: &str) -> usize {
    actions(received)
        .iter()
        .filter(|(p, a)| {
            p == path
                && (a == action
                    || (action == "firing" && a == "trigger")
                    || (action == "resolved" && a == "resolve"))
        })
        .count()
}

/// Wait until every receiver (json, slack, pagerduty) got exactly one `action`.
async fn wait_every_receiver(received: &Received, action: &str, within: Duration) {
    eventually(within, &format!("a {action} at every receiver"), || async {
        (["json", "slack", "pagerduty"]
            .iter()
            .all(|p| count(received, p, action) == 1))
        .then_some(())
    })
    .await;
}

/// Checks the documented payload shapes of a RegionDown trigger for region `a`.
fn assert_trigger_payloads(received: &Received, ns: &str) {
    let all = received.lock().unwrap().clone();
    let key = format!("{ns}/main/region/a");
    let json_doc = &all
        .iter()
        .find(|(p, _)| p == "json")
        .expect("json trigger")
        .1;
    assert_eq!(json_doc["apiVersion"], "lifeline.dev/v1alpha1");
    assert_eq!(json_doc["status"], "firing");
    assert_eq!(json_doc["kind"], "RegionDown");
    assert_eq!(json_doc["key"], key.as_str());
    assert_eq!(json_doc["severity"], "critical");
    assert_eq!(json_doc["namespace"], ns);
    assert_eq!(json_doc["policy"], "main");
    assert_eq!(json_doc["subject"], "a");
    let slack = &all.iter().find(|(p, _)| p == "slack").expect("slack").1;
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.contains("region a of") && text.contains("out of traffic"),
        "{text}"
    );
    let pd = &all
        .iter()
        .find(|(p, _)| p == "pagerduty")
        .expect("pagerduty")
        .1;
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["routing_key"], "R0UTINGKEY");
    assert_eq!(pd["dedup_key"], key.as_str());
    assert_eq!(pd["payload"]["severity"], "critical");
    assert_eq!(pd["payload"]["source"], format!("lifeline/{ns}/main"));
    assert_eq!(pd["payload"]["component"], "a");
}

#[tokio::test]
async fn a_failover_gives_each_receiver_one_trigger_and_one_resolve() {
    let Some(client): Option<Client> = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = TestNamespace::create(client.clone(), "notify", &[]).await;
    let (ip_a, ip_b) = ("127.0.31.1", "127.0.31.2");
    let mut carrier_a = sipp_options(200, ip_a, 5060, "u1");
    let _carrier_b = sipp_options(200, ip_b, 5060, "u1");
    let port = common::free_port("127.0.0.1");
    let received: Received = Arc::default();
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    tokio::spawn(receiver(
        SocketAddr::from(([127, 0, 0, 1], port)),
        received.clone(),
        stop.clone(),
    ));
    let metrics = Arc::new(lifeline::telemetry::Metrics::new());
    let ctx = lifeline::controller::Context::new(client, metrics, Some(ns.name.clone()));
    tokio::spawn(lifeline::controller::run_all(ctx, stop.clone()));
    setup(&ns, ip_a, ip_b, port).await;

    wait_region(&ns, "a", RegionState::Active, Duration::from_secs(20)).await;
    wait_region(&ns, "b", RegionState::Active, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing is sent while everything is healthy: {:?}",
        received.lock().unwrap()
    );

    carrier_a.kill();
    let died = Instant::now();
    wait_region(&ns, "a", RegionState::Failed, Duration::from_secs(15)).await;
    wait_every_receiver(&received, "firing", Duration::from_secs(15)).await;
    eprintln!(
        "carrier died → every receiver triggered after {:?}",
        died.elapsed()
    );
    assert_trigger_payloads(&received, &ns.name);

    let _carrier_a = sipp_options(200, ip_a, 5060, "u1");
    wait_region(&ns, "a", RegionState::Active, Duration::from_secs(30)).await;
    wait_every_receiver(&received, "resolved", Duration::from_secs(15)).await;
    // Quiet again: no repeats.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for path in ["json", "slack", "pagerduty"] {
        assert_eq!(
            (
                count(&received, path, "firing"),
                count(&received, path, "resolved")
            ),
            (1, 1),
            "{path}: exactly one trigger and one resolve: {:?}",
            actions(&received)
        );
    }
    assert_eq!(
        received.lock().unwrap().len(),
        6,
        "{:?}",
        actions(&received)
    );
    let pd_resolve = received
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(p, _)| p == "pagerduty")
        .unwrap()
        .1
        .clone();
    assert_eq!(
        pd_resolve,
        json!({ "routing_key": "R0UTINGKEY", "event_action": "resolve", "dedup_key": format!("{}/main/region/a", ns.name) })
    );
    let n = ns.api::<Notifier>().get("oncall").await.unwrap();
    let status = n.status.expect("notifier status");
    assert_eq!((status.firing, status.pending), (0, 0));
    assert!(
        status
            .receivers
            .iter()
            .all(|r| r.delivered == 2 && r.notified.is_empty())
    );
}

/// The operator binary, watching one namespace, without leader election.
fn start_operator(ns: &str) -> Operator {
    let mut cmd = common::operator::command(ns, "127.0.0.1:0");
    cmd.args(["--no-leader-election", "--probe-allow", "127.0.31.0/24"]);
    Operator::spawn("operator", &mut cmd, "127.0.0.1:0", None)
}

#[tokio::test]
async fn a_receiver_down_30s_and_an_operator_sigkill_still_deliver_once() {
    let Some(client): Option<Client> = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = TestNamespace::create(client.clone(), "notify-kill", &[]).await;
    let (ip_a, ip_b) = ("127.0.31.3", "127.0.31.4");
    let mut carrier_a: Process = sipp_options(200, ip_a, 5060, "u1");
    let _carrier_b = sipp_options(200, ip_b, 5060, "u1");
    // The receiver's port is chosen now but nothing listens on it yet: "down".
    let port = common::free_port("127.0.0.1");
    let mut operator = start_operator(&ns.name);
    setup(&ns, ip_a, ip_b, port).await;
    wait_region(&ns, "a", RegionState::Active, Duration::from_secs(30)).await;

    carrier_a.kill();
    let down_since = Instant::now();
    wait_region(&ns, "a", RegionState::Failed, Duration::from_secs(15)).await;
    // The transition happened and delivery was attempted and failed: the notifier
    // says so in its status.
    let notifiers: Api<Notifier> = ns.api();
    eventually(
        Duration::from_secs(15),
        "a failed delivery in status",
        || async {
            let s = notifiers.get("oncall").await.ok()?.status?;
            (s.pending == 3 && s.receivers.iter().all(|r| r.last_error.is_some())).then_some(s)
        },
    )
    .await;
    operator.process.kill();
    eprintln!(
        "operator SIGKILLed {:?} after the carrier died",
        down_since.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _operator = start_operator(&ns.name);

    let received: Received = Arc::default();
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let until_up = Duration::from_secs(30).saturating_sub(down_since.elapsed());
    tokio::time::sleep(until_up).await;
    tokio::spawn(receiver(
        SocketAddr::from(([127, 0, 0, 1], port)),
        received.clone(),
        stop.clone(),
    ));
    let up = Instant::now();
    eprintln!("receiver up after {:?} down", down_since.elapsed());
    eventually(
        Duration::from_secs(40),
        "the trigger after the receiver returned",
        || async {
            (["json", "slack", "pagerduty"]
                .iter()
                .all(|p| count(&received, p, "firing") == 1))
            .then_some(())
        },
    )
    .await;
    eprintln!("delivered {:?} after the receiver came back", up.elapsed());
    assert_trigger_payloads(&received, &ns.name);
    let s = eventually(Duration::from_secs(10), "pending 0 in status", || async {
        let s = notifiers.get("oncall").await.ok()?.status?;
        (s.pending == 0).then_some(s)
    })
    .await;
    assert!(
        s.receivers
            .iter()
            .all(|r| r.last_error.is_none() && r.notified.len() == 1)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        received.lock().unwrap().len(),
        3,
        "each receiver got the trigger exactly once: {:?}",
        actions(&received)
    );
}
