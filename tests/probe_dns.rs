//! RFC 3263 resolution against a real DNS server: dnsmasq on a loopback port serving
//! NAPTR, SRV and A records, sipp answering OPTIONS at the SRV targets.
//!
//! - NAPTR → SRV → A: every target is probed, in SRV priority/weight order, and the
//!   endpoint is Up because a target answers 200.
//! - DNS stopped for 20 s (operator, Trunk and FallbackPolicy controllers running
//!   against the real control plane): the endpoint never leaves Up, the region never
//!   leaves Active, the policy's history does not grow. DNS back with a changed SRV
//!   target: the new target is probed within its TTL.
//! - DNS stopped past the last answer's TTL + grace: Unknown, never Down.
//!
//! Run: `cargo test --test probe_dns` (needs dnsmasq and sipp; binds 127.0.71-73.x).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::free_port;
use common::sip::{dnsmasq, sipp_options};
use kube::api::PostParams;
use lifeline::crd::{EndpointState, FallbackPolicy, Trunk};
use lifeline::probe::policy::Rule;
use lifeline::probe::{DnsConfig, EndpointHealth, ProbeConfig, ProbeHub, ProbeTarget};
use lifeline::telemetry::Metrics;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn config(dns: &str, port: u16, allow: &str, grace: Duration) -> ProbeConfig {
    let mut c = ProbeConfig {
        dns: DnsConfig {
            servers: vec![format!("{dns}:{port}").parse().unwrap()],
            stale_grace: grace,
            ..DnsConfig::system()
        },
        ..ProbeConfig::default()
    };
    c.policy.allow([Rule::parse(allow).unwrap()]);
    c
}

fn fast() -> lifeline::crd::ProbeSpec {
    lifeline::crd::ProbeSpec {
        period_seconds: 1,
        // Generous: these tests are about DNS, and must not flake on a loaded machine.
        timeout_millis: 900,
        failure_threshold: 3,
        success_threshold: 1,
        ..Default::default()
    }
}

fn target(uri: &str) -> ProbeTarget {
    ProbeTarget {
        uri: uri.into(),
        spec: fast(),
        tls: None,
    }
}

async fn wait_health(
    hub: &ProbeHub,
    owner: &str,
    what: &str,
    ok: impl Fn(&EndpointHealth) -> bool,
) -> EndpointHealth {
    common::eventually(Duration::from_secs(15), what, || async {
        hub.health(owner).into_iter().next().filter(|h| ok(h))
    })
    .await
}

/// NAPTR (`SIP+D2U`) → SRV (two targets at priority 10 weighted 60/40, one at 20)
/// → A: all three are probed in failover order; the 503 and the silent one are
/// reported per target while the endpoint is Up through the 200.
#[tokio::test]
async fn naptr_srv_a_chain_probes_every_target_in_failover_order() {
    let ip = "127.0.71.1";
    let port = free_port(ip);
    let _dns = dnsmasq(
        ip,
        port,
        30,
        &[
            "--naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test".into(),
            // A less preferred NAPTR (TCP) must not be followed.
            "--naptr-record=carrier.test,20,50,s,SIP+D2T,,_sip._tcp.carrier.test".into(),
            "--srv-host=_sip._udp.carrier.test,sbc-b.carrier.test,5070,10,40".into(),
            "--srv-host=_sip._udp.carrier.test,sbc-a.carrier.test,5070,10,60".into(),
            "--srv-host=_sip._udp.carrier.test,sbc-c.carrier.test,5070,20,100".into(),
            "--srv-host=_sip._tcp.carrier.test,sbc-t.carrier.test,5080,10,100".into(),
            "--host-record=sbc-a.carrier.test,127.0.71.11".into(),
            "--host-record=sbc-b.carrier.test,127.0.71.12".into(),
            "--host-record=sbc-c.carrier.test,127.0.71.13".into(),
            "--host-record=sbc-t.carrier.test,127.0.71.14".into(),
        ],
    );
    let _a = sipp_options(200, "127.0.71.11", 5070, "u1");
    let _b = sipp_options(503, "127.0.71.12", 5070, "u1");
    // sbc-c: bound, never answers (no ICMP either).
    let _c = std::net::UdpSocket::bind("127.0.71.13:5070").unwrap();

    let hub = ProbeHub::new(
        Arc::new(Metrics::new()),
        config(ip, port, "127.0.71.0/24", Duration::from_secs(30)),
    );
    hub.set_targets("dns/naptr", vec![target("sip:carrier.test")]);
    let h = wait_health(&hub, "dns/naptr", "all three SRV targets probed", |h| {
        h.targets.len() == 3
            && h.targets.iter().all(|t| t.error.is_some() || t.alive)
            && h.targets[2].error.is_some()
    })
    .await;
    let seen: Vec<(&str, u16, u16, bool)> = h
        .targets
        .iter()
        .map(|t| (t.target.as_str(), t.priority, t.weight, t.alive))
        .collect();
    assert_eq!(
        seen,
        [
            ("udp:127.0.71.11:5070", 10, 60, true),
            ("udp:127.0.71.12:5070", 10, 40, false),
            ("udp:127.0.71.13:5070", 20, 100, false),
        ],
        "{h:?}"
    );
    assert_eq!(h.targets[1].error.as_deref(), Some("answered 503"));
    assert!(
        h.targets[2].error.as_deref().unwrap().contains("no answer"),
        "{h:?}"
    );
    assert_eq!(h.state, EndpointState::Up);
    assert_eq!(
        h.last_status_code,
        Some(200),
        "the answering target is reported"
    );
    assert!(h.stale_dns.is_none());

    // `;transport=tcp` skips NAPTR: _sip._tcp SRV → sbc-t, where nothing listens → Down
    // (a real verdict: the carrier's TCP side is not there).
    hub.set_targets("dns/tcp", vec![target("sip:carrier.test;transport=tcp")]);
    let h = wait_health(&hub, "dns/tcp", "the TCP SRV target probed", |h| {
        h.state == EndpointState::Down
    })
    .await;
    assert_eq!(h.targets.len(), 1);
    assert_eq!(h.targets[0].target, "tcp:127.0.71.14:5080");

    // A name without any record: Unknown (no verdict), never Down.
    hub.set_targets("dns/none", vec![target("sip:nothing.test")]);
    let h = wait_health(&hub, "dns/none", "resolution failure reported", |h| {
        h.last_error.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h2 = hub.health("dns/none").remove(0);
    assert_eq!(
        (h.state, h2.state),
        (EndpointState::Unknown, EndpointState::Unknown)
    );
    assert!(
        h2.last_error.as_deref().unwrap().contains("nothing.test"),
        "{h2:?}"
    );
    hub.shutdown();
}

/// The last good answer carries the endpoint through a DNS outage only for its TTL
/// plus the grace; after that the endpoint is Unknown (no verdict), never Down.
#[tokio::test]
async fn outage_past_ttl_and_grace_makes_unknown_never_down() {
    let ip = "127.0.73.1";
    let port = free_port(ip);
    let mut dns = dnsmasq(
        ip,
        port,
        1,
        &[
            "--srv-host=_sip._udp.grace.test,sbc.grace.test,5070,10,100".into(),
            "--host-record=sbc.grace.test,127.0.73.11".into(),
        ],
    );
    let _sbc = sipp_options(200, "127.0.73.11", 5070, "u1");
    let grace = Duration::from_secs(4);
    let hub = ProbeHub::new(
        Arc::new(Metrics::new()),
        config(ip, port, "127.0.73.0/24", grace),
    );
    hub.set_targets("dns/grace", vec![target("sip:grace.test;transport=udp")]);
    wait_health(&hub, "dns/grace", "Up through the SRV target", |h| {
        h.state == EndpointState::Up
    })
    .await;
    dns.kill();
    let stopped = Instant::now();
    let mut states = Vec::new();
    let unknown_at = loop {
        let h = hub.health("dns/grace").remove(0);
        assert_ne!(
            h.state,
            EndpointState::Down,
            "a DNS outage made the endpoint Down: {h:?}"
        );
        states.push((stopped.elapsed(), h.state));
        if h.state == EndpointState::Unknown {
            assert!(
                h.last_error.as_deref().unwrap().contains("grace.test"),
                "{h:?}"
            );
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "never Unknown: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The last good answer is at most TTL (1 s) + one period (1 s) old when DNS
    // stops, so it stays usable for at least grace − 1 s after the stop.
    assert!(
        unknown_at >= grace - Duration::from_secs(1),
        "Unknown after {unknown_at:?}, before the last answer's TTL + grace"
    );
    assert!(
        unknown_at <= grace + Duration::from_secs(4),
        "Unknown only after {unknown_at:?}"
    );
    hub.shutdown();
}

/// The full operator path: Trunk and FallbackPolicy controllers against the real
/// control plane, the Trunk's host resolved through dnsmasq.
#[tokio::test]
async fn dns_outage_moves_nothing_and_changed_srv_target_is_followed() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "probe-dns", &[]).await;

    let ip = "127.0.72.1";
    let port = free_port(ip);
    let ttl = 2;
    let records_v1 = [
        "--srv-host=_sip._udp.carrier.test,sbc1.carrier.test,5070,10,100".to_string(),
        "--host-record=sbc1.carrier.test,127.0.72.11".into(),
        "--host-record=sbc2.carrier.test,127.0.72.12".into(),
    ];
    let mut dns = dnsmasq(ip, port, ttl, &records_v1);
    let _sbc1 = sipp_options(200, "127.0.72.11", 5070, "u1");
    let _sbc2 = sipp_options(200, "127.0.72.12", 5070, "u1");

    let ctx = lifeline::controller::Context::with_probe_config(
        client.clone(),
        Arc::new(Metrics::new()),
        Some(ns.name.clone()),
        config(ip, port, "127.0.72.0/24", Duration::from_secs(60)),
    );
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    tokio::spawn(lifeline::controller::trunk::run(ctx.clone(), stop.clone()));
    tokio::spawn(lifeline::controller::policy::run(ctx.clone(), stop.clone()));

    let uri = "sip:carrier.test;transport=udp";
    let trunk: Trunk = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
        "metadata": { "name": "carrier" },
        "spec": { "region": "cologne", "endpoints": [{ "uri": uri }],
                  "probe": { "periodSeconds": 1, "timeoutMillis": 900,
                             "failureThreshold": 3, "successThreshold": 1 } },
    }))
    .unwrap();
    ns.api::<Trunk>()
        .create(&PostParams::default(), &trunk)
        .await
        .unwrap();
    let policy: FallbackPolicy = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": { "name": "main" },
        "spec": {
            "routingConfigMap": { "name": "sip-routing" },
            "regions": [{ "name": "cologne", "weight": 1 }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "carrier" }] }] }],
            "failover": { "failAfterSeconds": 1, "recoverAfterSeconds": 1 },
        },
    }))
    .unwrap();
    ns.api::<FallbackPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    let owner = lifeline::controller::trunk::owner_key(&ns.name, "carrier");
    let region_state = |p: &FallbackPolicy| {
        p.status
            .as_ref()
            .and_then(|s| s.regions.first())
            .map(|r| (r.state.to_string(), r.since.clone()))
    };
    let before = common::eventually(
        Duration::from_secs(20),
        "region Active, trunk Up",
        || async {
            let t = ns.api::<Trunk>().get("carrier").await.ok()?;
            let up = t.status?.endpoints.first()?.state == EndpointState::Up;
            let p = ns.api::<FallbackPolicy>().get("main").await.ok()?;
            let (state, _) = region_state(&p)?;
            (up && state == "Active").then_some(p)
        },
    )
    .await;
    let history_before = before.status.as_ref().unwrap().history.len();
    assert_eq!(
        ctx.probes.health(&owner)[0].targets[0].target,
        "udp:127.0.72.11:5070"
    );

    // DNS gone for 20 s: nothing may move.
    dns.kill();
    let stopped = Instant::now();
    let mut saw_stale = false;
    while stopped.elapsed() < Duration::from_secs(20) {
        let h = ctx.probes.health(&owner).remove(0);
        assert_eq!(
            h.state,
            EndpointState::Up,
            "endpoint left Up {:?} into the DNS outage: {h:?}",
            stopped.elapsed()
        );
        saw_stale |= h.stale_dns.is_some();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_stale,
        "the DNS outage was never noticed (stale answer in use)"
    );
    let t = ns.api::<Trunk>().get("carrier").await.unwrap();
    assert_eq!(t.status.unwrap().endpoints[0].state, EndpointState::Up);
    let after = ns.api::<FallbackPolicy>().get("main").await.unwrap();
    assert_eq!(
        region_state(&after),
        region_state(&before),
        "a region transition during the DNS outage"
    );
    assert_eq!(
        after.status.as_ref().unwrap().history.len(),
        history_before,
        "policy history grew during the DNS outage"
    );

    // DNS back, SRV now pointing at sbc2: followed within TTL + a period or two.
    let records_v2 = [
        "--srv-host=_sip._udp.carrier.test,sbc2.carrier.test,5070,10,100".to_string(),
        "--host-record=sbc1.carrier.test,127.0.72.11".into(),
        "--host-record=sbc2.carrier.test,127.0.72.12".into(),
    ];
    let _dns2 = dnsmasq(ip, port, ttl, &records_v2);
    let back = Instant::now();
    let h =
        common::eventually(
            Duration::from_secs(u64::from(ttl) + 8),
            "the changed SRV target probed",
            || async {
                ctx.probes.health(&owner).into_iter().next().filter(|h| {
                    h.targets.len() == 1 && h.targets[0].target == "udp:127.0.72.12:5070"
                })
            },
        )
        .await;
    eprintln!(
        "new SRV target followed {:?} after DNS came back",
        back.elapsed()
    );
    assert_eq!(h.state, EndpointState::Up);
    assert!(h.stale_dns.is_none());
    stop.cancel();
}
