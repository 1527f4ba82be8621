//! Trunk health end to end: the Trunk controller runs in-process against the real
//! control plane (`make testenv-up`) and probes real SIP peers on 127.0.10.x — sipp
//! answering 200 or 503, Kamailio answering 200, a silent UDP socket and a closed TCP
//! port. Each Trunk must reach the right state through the API within
//! `period × threshold + timeout + 1 s`.
//!
//! Run: `cargo test --test trunk_probe` (needs `/usr/bin/sipp` and `/usr/sbin/kamailio`).

mod common;

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use lifeline::crd::{EndpointState, Trunk, TrunkStatus, find_condition};
use serde_json::json;

use common::kamailio::Kamailio;
use common::sip::sipp_options;
use common::{Controller, Harness, TempDir, eventually};

const PERIOD_S: u64 = 1;
const TIMEOUT_MS: u64 = 500;
const THRESHOLD: u64 = 2;

/// period × threshold + timeout + 1 s: the promise the issue makes.
fn deadline() -> Duration {
    Duration::from_millis(PERIOD_S * 1000 * THRESHOLD + TIMEOUT_MS + 1000)
}

/// A namespace with the Trunk controller watching it.
async fn start(prefix: &str) -> Option<Harness> {
    Harness::start(prefix, &[], &[Controller::Trunk]).await
}

/// What the tests here read and write through the harness.
impl Harness {
    async fn create_trunk(&self, name: &str, uris: &[&str]) -> Instant {
        let spec = json!({
            "region": "cologne",
            "endpoints": uris.iter().map(|u| json!({ "uri": u })).collect::<Vec<_>>(),
            "probe": {
                "periodSeconds": PERIOD_S,
                "timeoutMillis": TIMEOUT_MS,
                "failureThreshold": THRESHOLD,
                "successThreshold": THRESHOLD,
            },
        });
        self.create_trunk_spec(name, spec).await;
        Instant::now()
    }

    /// Wait until every endpoint of `name` is in `state`; return the status.
    async fn wait_for(&self, name: &str, state: EndpointState, within: Duration) -> TrunkStatus {
        let api = self.ns.api::<Trunk>();
        eventually(
            within,
            &format!("trunk {name}: all endpoints {state}"),
            || {
                let api = api.clone();
                async move {
                    let status = api.get(name).await.ok()?.status?;
                    (!status.endpoints.is_empty()
                        && status.endpoints.iter().all(|e| e.state == state))
                    .then_some(status)
                }
            },
        )
        .await
    }
}

fn healthy(status: &TrunkStatus) -> (String, String) {
    let c = find_condition(&status.conditions, "Healthy").expect("Healthy condition");
    (c.status.clone(), c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answering_200_is_up_then_down_when_it_dies() {
    let Some(h) = start("trk-sipp200").await else {
        return;
    };
    let mut peer = sipp_options(200, "127.0.10.1", 5060, "u1");
    let uri = "sip:127.0.10.1:5060";
    let created = h.create_trunk("carrier-a", &[uri]).await;
    let status = h.wait_for("carrier-a", EndpointState::Up, deadline()).await;
    eprintln!("sipp 200: Up after {:?}", created.elapsed());
    assert_eq!(status.healthy_summary.as_deref(), Some("1/1"));
    assert_eq!(status.healthy_endpoints, 1);
    assert_eq!(healthy(&status), ("True".into(), "AllEndpointsUp".into()));
    assert_eq!(status.endpoints[0].last_status_code, Some(200));
    assert!(status.endpoints[0].rtt_millis.is_some());
    assert!(status.observed_generation.is_some());

    // The carrier dies: Down within the same window, with an Event for each transition.
    peer.kill();
    let died = Instant::now();
    let status = h
        .wait_for("carrier-a", EndpointState::Down, deadline())
        .await;
    eprintln!("sipp killed: Down after {:?}", died.elapsed());
    assert_eq!(
        healthy(&status),
        ("False".into(), "AllEndpointsDown".into())
    );
    assert_eq!(status.healthy_summary.as_deref(), Some("0/1"));
    let err = status.endpoints[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("no answer within 500 ms"), "{err}");
    // The Down is an Event; the first Up was not (it is in the status only), and the
    // writer publishes each status's Events in order, so it would be there by now.
    let events = eventually(Duration::from_secs(5), "an EndpointDown event", || {
        let h = &h;
        async move {
            let ev = h.events("carrier-a").await;
            ev.iter()
                .any(|(reason, note)| reason == "EndpointDown" && note.contains(uri))
                .then_some(ev)
        }
    })
    .await;
    assert!(
        !events.iter().any(|(reason, _)| reason == "EndpointUp"),
        "a first Up publishes no Event: {events:?}"
    );

    // The carrier is back: Up again, with an Event.
    let _peer = sipp_options(200, "127.0.10.1", 5060, "u1");
    h.wait_for("carrier-a", EndpointState::Up, deadline()).await;
    let events = eventually(
        Duration::from_secs(5),
        "EndpointUp and EndpointDown events",
        || {
            let h = &h;
            async move {
                let ev = h.events("carrier-a").await;
                let has = |r: &str| {
                    ev.iter()
                        .any(|(reason, note)| reason == r && note.contains(uri))
                };
                (has("EndpointUp") && has("EndpointDown")).then_some(ev)
            }
        },
    )
    .await;
    assert!(
        events
            .iter()
            .any(|(_, note)| note.contains("no answer within")),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answering_503_is_down() {
    let Some(h) = start("trk-sipp503").await else {
        return;
    };
    let _peer = sipp_options(503, "127.0.10.2", 5060, "u1");
    let created = h.create_trunk("carrier-b", &["sip:127.0.10.2:5060"]).await;
    let status = h
        .wait_for("carrier-b", EndpointState::Down, deadline())
        .await;
    eprintln!("sipp 503: Down after {:?}", created.elapsed());
    assert_eq!(status.endpoints[0].last_status_code, Some(503));
    assert_eq!(
        status.endpoints[0].last_error.as_deref(),
        Some("answered 503")
    );
    assert_eq!(status.endpoints[0].consecutive_failures, THRESHOLD as u32);
    assert_eq!(healthy(&status).0, "False");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_udp_and_closed_tcp_are_down() {
    let Some(h) = start("trk-silent").await else {
        return;
    };
    // Bound but never read: datagrams vanish, no ICMP comes back.
    let _silent = std::net::UdpSocket::bind("127.0.10.3:5060").expect("bind silent socket");
    // Nothing listens on 127.0.10.4:5060/tcp: connections are refused.
    let created = h
        .create_trunk(
            "carrier-c",
            &["sip:127.0.10.3:5060", "sip:127.0.10.4:5060;transport=tcp"],
        )
        .await;
    let status = h
        .wait_for("carrier-c", EndpointState::Down, deadline())
        .await;
    eprintln!(
        "silent UDP + closed TCP: Down after {:?}",
        created.elapsed()
    );
    let silent = &status.endpoints[0];
    let closed = &status.endpoints[1];
    assert!(
        silent
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("no answer within 500 ms"),
        "{silent:?}"
    );
    assert!(
        closed
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("connecting"),
        "{closed:?}"
    );
    assert_eq!(
        (silent.last_status_code, closed.last_status_code),
        (None, None)
    );
    assert_eq!(
        healthy(&status),
        ("False".into(), "AllEndpointsDown".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_answering_options_is_up_over_udp_and_tcp() {
    let Some(h) = start("trk-kamailio").await else {
        return;
    };
    let rundir = TempDir::new("lifeline-trunk-kam");
    let _kam = Kamailio::options_responder("127.0.10.5", rundir.path());
    let created = h
        .create_trunk(
            "carrier-d",
            &["sip:127.0.10.5:5060", "sip:127.0.10.5;transport=tcp"],
        )
        .await;
    let status = h.wait_for("carrier-d", EndpointState::Up, deadline()).await;
    eprintln!("kamailio: Up after {:?}", created.elapsed());
    assert_eq!(status.healthy_summary.as_deref(), Some("2/2"));
    assert!(
        status
            .endpoints
            .iter()
            .all(|e| e.last_status_code == Some(200))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_and_deleted_trunks_stop_probing() {
    let Some(h) = start("trk-lifecycle").await else {
        return;
    };
    let _peer = sipp_options(200, "127.0.10.6", 5060, "t1");
    let uri = "sip:127.0.10.6:5060;transport=tcp";
    h.create_trunk("carrier-e", &[uri]).await;
    h.wait_for("carrier-e", EndpointState::Up, deadline()).await;
    let owner = format!("trunk/{}/carrier-e", h.ns.name);
    assert_eq!(h.ctx.probes.health(&owner).len(), 1);

    let api = h.ns.api::<Trunk>();
    api.patch(
        "carrier-e",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "disabled": true } })),
    )
    .await
    .expect("disable");
    let status = eventually(
        Duration::from_secs(5),
        "Healthy=False reason Disabled",
        || {
            let api = api.clone();
            async move {
                let s = api.get("carrier-e").await.ok()?.status?;
                (healthy(&s).1 == "Disabled").then_some(s)
            }
        },
    )
    .await;
    assert_eq!(status.healthy_summary.as_deref(), Some("0/1"));
    assert!(
        h.ctx.probes.health(&owner).is_empty(),
        "a disabled trunk is not probed"
    );

    api.patch(
        "carrier-e",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "disabled": false } })),
    )
    .await
    .expect("enable");
    h.wait_for("carrier-e", EndpointState::Up, deadline()).await;
    api.delete("carrier-e", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        Duration::from_secs(5),
        "probes stopped after delete",
        || {
            let probes = h.ctx.probes.clone();
            let owner = owner.clone();
            async move { probes.health(&owner).is_empty().then_some(()) }
        },
    )
    .await;
}

/// Health from real calls: an edge member reports a failure mark (Kamailio marked the
/// destination down after a 503 to an INVITE) for an endpoint that still answers
/// OPTIONS. The Trunk controller makes it Down at once, says why, and keeps it Down
/// until no mark has been reported for 30 s (docs/capacity.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_failure_mark_downs_an_endpoint_that_answers_options() {
    use lifeline::crd::{SipEdge, member_field_manager};
    let Some(h) = Harness::start("trk-passive", &[], &[Controller::Trunk, Controller::Edge]).await
    else {
        return;
    };
    let _peer = sipp_options(200, "127.0.10.8", 5060, "u1");
    let uri = "sip:127.0.10.8:5060";
    h.create_trunk("half-dead", &[uri]).await;
    h.wait_for("half-dead", EndpointState::Up, deadline()).await;

    let edges = h.ns.api::<SipEdge>();
    let edge: SipEdge = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
        "metadata": { "name": "edge" },
        "spec": { "routingConfigMap": "sip-routing" },
    }))
    .unwrap();
    edges
        .create(&PostParams::default(), &edge)
        .await
        .expect("create SipEdge");
    let report = |marks: serde_json::Value| {
        let edges = edges.clone();
        async move {
            let body = json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
                "metadata": { "name": "edge" },
                "status": { "members": [{ "name": "edge-0", "failureMarks": marks }] },
            });
            edges
                .patch_status(
                    "edge",
                    &PatchParams::apply(&member_field_manager("edge-0")).force(),
                    &Patch::Apply(&body),
                )
                .await
                .expect("report to the SipEdge");
        }
    };

    let marked = Instant::now();
    report(json!([{ "uri": uri, "statusCode": 503 }])).await;
    let status = h
        .wait_for("half-dead", EndpointState::Down, Duration::from_secs(5))
        .await;
    eprintln!("failure mark reported: Down after {:?}", marked.elapsed());
    let error = status.endpoints[0].last_error.clone().unwrap_or_default();
    assert!(
        error.contains("real calls failed at the SIP edge with 503"),
        "the status says why: {error}"
    );
    assert_eq!(
        status.endpoints[0].last_status_code,
        Some(200),
        "OPTIONS still answered"
    );

    // The mark goes; the endpoint stays Down for the hold, then the probes decide.
    report(json!([])).await;
    let cleared = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let trunk = h.ns.api::<Trunk>().get("half-dead").await.unwrap();
    assert_eq!(
        trunk.status.unwrap().endpoints[0].state,
        EndpointState::Down,
        "still Down 10 s after the mark went (hold 30 s)"
    );
    h.wait_for("half-dead", EndpointState::Up, Duration::from_secs(45))
        .await;
    let back = cleared.elapsed();
    eprintln!("mark cleared: Up again after {back:?}");
    assert!(
        back >= Duration::from_secs(25),
        "Up only after the hold: {back:?}"
    );
}
