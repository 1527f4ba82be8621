//! No abuse of the operator's network position, against the real control plane:
//!
//! - A Trunk pointing into a denied loopback range is refused with a `Forbidden`
//!   condition, its endpoint stays Unknown (never Down), and not one packet reaches
//!   the UDP socket or TCP listener there; an allowed exception next to it is probed.
//! - Per-namespace quotas: a Trunk that would take its namespace over the endpoint
//!   quota gets `QuotaExceeded` and is not probed, and is admitted on its own when
//!   room frees up.
//! - Fair scheduling: a tenant with 10,000 endpoints (all silent, the worst case: every
//!   probe waits for its full timeout) does not make another tenant's endpoints time
//!   out.
//!
//! The destination list is built exactly as `lifeline operator` builds it from its
//! `--probe-allow`/`--probe-deny` flags. Run: `cargo test --test probe_policy`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sip::sipp_options;
use kube::api::{DeleteParams, PostParams};
use lifeline::crd::{EndpointState, TRUNK_FORBIDDEN, TRUNK_QUOTA_EXCEEDED, Trunk, find_condition};
use lifeline::operator::ProbeArgs;
use lifeline::probe::{ProbeHub, ProbeTarget};
use lifeline::telemetry::Metrics;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The Trunk controller in `ns` with the probe policy of `args`, until the returned
/// guard drops.
fn start_trunk_controller(
    client: &kube::Client,
    ns: &common::TestNamespace,
    args: ProbeArgs,
) -> tokio_util::sync::DropGuard {
    let ctx = lifeline::controller::Context::with_probe_config(
        client.clone(),
        Arc::new(Metrics::new()),
        Some(ns.name.clone()),
        args.config().unwrap(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(lifeline::controller::trunk::run(ctx, stop.clone()));
    stop.drop_guard()
}

fn trunk(name: &str, uris: &[&str]) -> Trunk {
    let endpoints: Vec<_> = uris.iter().map(|u| json!({ "uri": u })).collect();
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
        "metadata": { "name": name },
        "spec": { "region": "cologne", "endpoints": endpoints,
                  "probe": { "periodSeconds": 1, "timeoutMillis": 300,
                             "failureThreshold": 1, "successThreshold": 1 } },
    }))
    .unwrap()
}

#[tokio::test]
async fn denied_destination_is_refused_with_a_condition_and_gets_no_packet() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "probe-deny", &[]).await;
    // What would answer, if a packet ever arrived.
    let udp = std::net::UdpSocket::bind("127.0.75.1:5060").unwrap();
    udp.set_nonblocking(true).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.75.1:5061").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let _allowed_peer = sipp_options(200, "127.0.75.129", 5060, "u1");

    // As `lifeline operator --probe-deny 127.0.75.0/25 --probe-allow 127.0.75.128/25`.
    let args = ProbeArgs {
        deny: vec!["127.0.75.0/25".into()],
        allow: vec!["127.0.75.128/25".into()],
        ..ProbeArgs::default()
    };
    let controller = start_trunk_controller(&client, &ns, args);

    let api = ns.api::<Trunk>();
    api.create(
        &PostParams::default(),
        &trunk(
            "sneaky",
            &["sip:127.0.75.1:5060", "sip:127.0.75.1:5061;transport=tcp"],
        ),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &trunk("fine", &["sip:127.0.75.129:5060"]),
    )
    .await
    .unwrap();

    let status = common::eventually(Duration::from_secs(15), "Forbidden condition", || async {
        let s = api.get("sneaky").await.ok()?.status?;
        let both = s.endpoints.len() == 2
            && s.endpoints.iter().all(|e| {
                e.last_error
                    .as_deref()
                    .is_some_and(|m| m.contains("forbidden"))
            });
        find_condition(&s.conditions, TRUNK_FORBIDDEN)?;
        both.then_some(s)
    })
    .await;
    let c = find_condition(&status.conditions, TRUNK_FORBIDDEN).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "DestinationDenied")
    );
    assert!(
        c.message.contains("127.0.75.0/25") && c.message.contains("forbidden"),
        "{}",
        c.message
    );
    assert!(
        c.message.contains("(and 1 more endpoints)"),
        "{}",
        c.message
    );
    for e in &status.endpoints {
        assert_eq!(e.state, EndpointState::Unknown, "{e:?}");
        assert!(
            e.last_error.as_deref().unwrap().contains("forbidden"),
            "{e:?}"
        );
    }
    common::eventually(
        Duration::from_secs(15),
        "the allowed exception Up",
        || async {
            let s = api.get("fine").await.ok()?.status?;
            (s.endpoints.first()?.state == EndpointState::Up).then_some(())
        },
    )
    .await;
    // Several more probe periods: still nothing may have arrived, still not Down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = api.get("sneaky").await.unwrap().status.unwrap();
    assert!(
        s.endpoints
            .iter()
            .all(|e| e.state == EndpointState::Unknown)
    );
    let mut buf = [0u8; 2048];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a datagram reached the denied listener"
    );
    assert!(
        tcp.accept().is_err(),
        "a connection reached the denied listener"
    );
    drop(controller);
}

#[tokio::test]
async fn namespace_endpoint_quota_refuses_then_readmits() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "probe-quota", &[]).await;
    let _peer = sipp_options(200, "127.0.75.140", 5060, "u1");
    let args = ProbeArgs {
        allow: vec!["127.0.75.128/25".into()],
        max_endpoints_per_namespace: Some(2),
        ..ProbeArgs::default()
    };
    let controller = start_trunk_controller(&client, &ns, args);
    let api = ns.api::<Trunk>();
    api.create(
        &PostParams::default(),
        &trunk(
            "first",
            &["sip:127.0.75.140:5060", "sip:a@127.0.75.140:5060"],
        ),
    )
    .await
    .unwrap();
    common::eventually(Duration::from_secs(15), "first Up", || async {
        let s = api.get("first").await.ok()?.status?;
        (s.healthy_endpoints == 2).then_some(())
    })
    .await;
    api.create(
        &PostParams::default(),
        &trunk("second", &["sip:b@127.0.75.140:5060"]),
    )
    .await
    .unwrap();
    let s = common::eventually(Duration::from_secs(15), "QuotaExceeded", || async {
        let s = api.get("second").await.ok()?.status?;
        find_condition(&s.conditions, TRUNK_QUOTA_EXCEEDED)?;
        Some(s)
    })
    .await;
    let c = find_condition(&s.conditions, TRUNK_QUOTA_EXCEEDED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "NamespaceQuota")
    );
    assert!(c.message.contains("quota of 2"), "{}", c.message);
    assert_eq!(s.endpoints[0].state, EndpointState::Unknown);
    // The first trunk is untouched by the second one's refusal.
    let first = api.get("first").await.unwrap().status.unwrap();
    assert_eq!(first.healthy_endpoints, 2);

    api.delete("first", &DeleteParams::default()).await.unwrap();
    let s = common::eventually(
        Duration::from_secs(20),
        "second admitted and Up",
        || async {
            let s = api.get("second").await.ok()?.status?;
            (s.endpoints.first()?.state == EndpointState::Up).then_some(s)
        },
    )
    .await;
    let c = find_condition(&s.conditions, TRUNK_QUOTA_EXCEEDED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "WithinQuota")
    );
    drop(controller);
}

/// 10,000 silent endpoints in one namespace (at the default 5 s period: 2,000 probes/s,
/// each waiting its full 1 s timeout) next to 20 answering ones in another probed
/// every second with a 500 ms timeout: the small tenant's probes never time out.
#[tokio::test]
async fn a_tenant_with_10k_endpoints_does_not_delay_another() {
    let _peer = sipp_options(200, "127.0.76.1", 5060, "u1");
    let _silent = std::net::UdpSocket::bind("127.0.76.200:5060").unwrap();
    let args = ProbeArgs {
        allow: vec!["127.0.76.0/24".into()],
        ..ProbeArgs::default()
    };
    let hub = ProbeHub::new(Arc::new(Metrics::new()), args.config().unwrap());
    let spec = |period, timeout| lifeline::crd::ProbeSpec {
        period_seconds: period,
        timeout_millis: timeout,
        failure_threshold: 1,
        success_threshold: 1,
        ..Default::default()
    };
    // The big tenant: 100 Trunks × 100 endpoints, every probe waits its full 1 s.
    for t in 0..100 {
        let targets = (0..100)
            .map(|i| ProbeTarget {
                uri: format!("sip:big{}@127.0.76.200:5060", t * 100 + i),
                spec: spec(5, 1000),
                tls: None,
            })
            .collect();
        hub.set_targets(&format!("trunk/big/t{t}"), targets);
    }
    let small: Vec<ProbeTarget> = (0..20)
        .map(|i| ProbeTarget {
            uri: format!("sip:small{i}@127.0.76.1:5060"),
            spec: spec(1, 500),
            tls: None,
        })
        .collect();
    hub.set_targets("trunk/small/carrier", small);
    common::eventually(Duration::from_secs(10), "small tenant Up", || async {
        let h = hub.health("trunk/small/carrier");
        h.iter().all(|e| e.state == EndpointState::Up).then_some(())
    })
    .await;
    let started = Instant::now();
    let mut worst_rtt = 0;
    let mut big_failures = 0;
    while started.elapsed() < Duration::from_secs(12) {
        for e in hub.health("trunk/small/carrier") {
            assert_eq!(
                (e.state, e.consecutive_failures),
                (EndpointState::Up, 0),
                "the small tenant's probe failed {:?} in: {e:?}",
                started.elapsed()
            );
            worst_rtt = worst_rtt.max(e.rtt_millis.unwrap_or(0));
        }
        big_failures = hub
            .health("trunk/big/t0")
            .iter()
            .filter(|e| e.consecutive_failures > 0)
            .count();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("small tenant: worst RTT {worst_rtt} ms; big tenant t0: {big_failures}/100 failing");
    assert!(
        big_failures > 90,
        "the big tenant was not actually probed ({big_failures}/100)"
    );
    hub.shutdown();
}
