//! Policy controller latency and steady-state writes, on the real control plane
//! (`make testenv-up`).
//!
//! 1. Flip a Trunk's health (its status patched through the status subresource, as
//!    the prober would) N times and time each flip from the start of the status patch
//!    to the moment a watch on the routing ConfigMap delivers the rewritten routing
//!    (target: p99 under 100 ms), and split it: patch sent → the bench's own watch of
//!    the Trunk delivers the new status, and that → the routing delivered (the
//!    operator's part: both ends are seen by watches of the same client, so the API
//!    server's delivery delay is on both sides).
//!    Between flips, the bench also measures the floor of the operator's hop on the same
//!    plane: it applies a scratch ConfigMap the size of the routing itself (server-side
//!    apply, as the operator writes) and times it until its own watch delivers it. The
//!    operator's own share is "status seen → routing seen" less that floor; the least
//!    the whole path can take here is the bench's patch plus that floor.
//! 2. Leave everything alone for a quiet window and count the writes the operator
//!    makes: ConfigMap and FallbackPolicy modifications seen by watches, and the
//!    `configmap_writes` metric. Target: 0.
//!
//! `cargo bench --bench policy_latency` (env: `LIFELINE_BENCH_FLIPS`, default 200, so
//! that the p99 is the second-largest and not the maximum, after one uncounted pair;
//! `LIFELINE_BENCH_QUIET_SECS`, default 60).

#[path = "../tests/common/mod.rs"]
mod common;

use common::watch::{timestamped, weighted_set1};
use common::{Controller, Harness};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use lifeline::crd::{FallbackPolicy, Trunk};
use serde_json::json;

/// The endpoints of the flipped Trunk (tier 1) and of the fallback (tier 2).
const FIXED: &str = "sip:127.0.20.10:5060";
const MOBILE: &str = "sip:127.0.20.11:5060";

/// Flips slower than this are listed one by one.
const SLOW: Duration = Duration::from_millis(20);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// p50, p90, p99 and the maximum of sorted durations, in milliseconds.
fn spread(sorted: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.9)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
    )
}

async fn set_state(api: &Api<Trunk>, name: &str, uri: &str, up: bool) {
    let state = if up { "Up" } else { "Down" };
    let status = json!({ "status": {
        "healthyEndpoints": u32::from(up),
        "endpoints": [{ "uri": uri, "state": state, "consecutiveFailures": u32::from(!up) }],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch trunk status");
}

/// Apply the scratch ConfigMap with `text` (made unique by `n`) and time it until the
/// watch delivers that version.
async fn floor_write(
    api: &Api<ConfigMap>,
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, ConfigMap)>,
    text: &str,
    n: u64,
) -> Duration {
    while seen.try_recv().is_ok() {}
    let text = format!("{text}# {n}\n");
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "plane-floor" },
        "data": { "dispatcher.list": text },
    });
    let start = Instant::now();
    api.patch(
        "plane-floor",
        &PatchParams::apply("lifeline-bench").force(),
        &Patch::Apply(&cm),
    )
    .await
    .expect("apply the scratch ConfigMap");
    loop {
        let (at, cm) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("scratch ConfigMap within 10 s")
            .expect("watch alive");
        if cm.data.and_then(|d| d.get("dispatcher.list").cloned()) == Some(text.clone()) {
            return at - start;
        }
    }
}

/// Wait until the watch delivers a routing whose set 1 carries calls only to `want`;
/// returns when, and the routing's text.
async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, String)>,
    want: &str,
) -> (Instant, String) {
    loop {
        let (at, text) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("ConfigMap update within 10 s")
            .expect("watch alive");
        if weighted_set1(&text) == [want] {
            return (at, text);
        }
    }
}

#[tokio::main]
async fn main() {
    let flips = env_num("LIFELINE_BENCH_FLIPS", 200);
    let quiet = Duration::from_secs(env_num("LIFELINE_BENCH_QUIET_SECS", 60));
    let Some(harness) = Harness::start("bench-policy", &[], &[Controller::Policy]).await else {
        return;
    };
    let (ns, metrics) = (&harness.ns, harness.metrics());

    let trunks: Api<Trunk> = ns.api();
    for (name, uri) in [("fixed-cgn", FIXED), ("mobile-cgn", MOBILE)] {
        let t: Trunk = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk", "metadata": { "name": name },
            "spec": { "region": "cologne", "endpoints": [{ "uri": uri }] },
        }))
        .unwrap();
        trunks
            .create(&PostParams::default(), &t)
            .await
            .expect("create trunk");
        set_state(&trunks, name, uri, true).await;
    }
    let policy: FallbackPolicy = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy", "metadata": { "name": "main" },
        "spec": {
            "routingConfigMap": { "name": "sip-routing" },
            "regions": [{ "name": "cologne" }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "fixed-cgn" }] },
                { "name": "mobile", "targets": [{ "trunk": "mobile-cgn" }] },
            ]}],
        },
    }))
    .unwrap();
    let policies: Api<FallbackPolicy> = ns.api();
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");

    // Every ConfigMap version, with the time the watch delivered it.
    let cms: Api<ConfigMap> = ns.api();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
    let cm_events = Arc::new(AtomicU64::new(0));
    let policy_events = Arc::new(AtomicU64::new(0));
    {
        let cm_events = cm_events.clone();
        let cfg = watcher::Config::default().fields("metadata.name=sip-routing");
        tokio::spawn(async move {
            let mut s = watcher(cms, cfg).applied_objects().boxed();
            while let Some(Ok(cm)) = s.next().await {
                cm_events.fetch_add(1, Ordering::Relaxed);
                let text = cm
                    .data
                    .and_then(|d| d.get("dispatcher.list").cloned())
                    .unwrap_or_default();
                let _ = tx.send((Instant::now(), text));
            }
        });
        let policy_events = policy_events.clone();
        let policies = policies.clone();
        tokio::spawn(async move {
            let mut s = watcher(policies, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(_)) = s.next().await {
                policy_events.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    wait_for(&mut rx, FIXED).await;
    // The flipped Trunk as a watch delivers it.
    let mut trunk_seen = timestamped(
        trunks.clone(),
        watcher::Config::default().fields("metadata.name=fixed-cgn"),
    );

    // The floor of the operator's hop: a scratch ConfigMap, written and watched the same way.
    let floor_cms: Api<ConfigMap> = ns.api();
    let mut floor_seen = timestamped(
        floor_cms.clone(),
        watcher::Config::default().fields("metadata.name=plane-floor"),
    );

    let mut latencies = Vec::with_capacity(flips as usize);
    let (mut to_status, mut status_to_routing) = (Vec::new(), Vec::new());
    let mut floor = Vec::with_capacity(flips as usize);
    // One Down/Up pair first, not counted: the bench's first status patch of a run took
    // 40-50 ms (its own request, before the operator has anything to do).
    for up in [false, true] {
        let want = if up { FIXED } else { MOBILE };
        set_state(&trunks, "fixed-cgn", FIXED, up).await;
        wait_for(&mut rx, want).await;
    }
    for i in 0..flips {
        let up = i % 2 == 1;
        let want = if up { FIXED } else { MOBILE };
        // Let the previous write settle so that flips do not overlap.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        while trunk_seen.try_recv().is_ok() {}
        let (start, wall) = (Instant::now(), std::time::SystemTime::now());
        set_state(&trunks, "fixed-cgn", FIXED, up).await;
        let patched = Instant::now();
        let (seen, routing_text) = wait_for(&mut rx, want).await;
        let status_seen = loop {
            let (at, trunk) = tokio::time::timeout(Duration::from_secs(10), trunk_seen.recv())
                .await
                .expect("Trunk status within 10 s")
                .expect("watch alive");
            if trunk
                .status
                .is_some_and(|s| s.healthy_endpoints == u32::from(up))
            {
                break at;
            }
        };
        if seen - start > SLOW {
            // With the wall time, to find the flip in the API server's and etcd's logs.
            let at = wall
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            println!(
                "  slow flip {i} at {}.{:06} (unix): patch answered {:.1} ms, status seen {:.1} ms, routing seen {:.1} ms",
                at.as_secs(),
                at.subsec_micros(),
                (patched - start).as_secs_f64() * 1e3,
                (status_seen - start).as_secs_f64() * 1e3,
                (seen - start).as_secs_f64() * 1e3,
            );
        }
        latencies.push(seen - start);
        to_status.push(status_seen - start);
        status_to_routing.push(seen.saturating_duration_since(status_seen));

        tokio::time::sleep(Duration::from_millis(100)).await;
        floor.push(floor_write(&floor_cms, &mut floor_seen, &routing_text, i).await);
    }
    latencies.sort();
    to_status.sort();
    status_to_routing.sort();
    floor.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("policy_latency: trunk status change -> routing ConfigMap update ({flips} flips)");
    println!(
        "  {}  (target p99 < 100 ms: ratio {:.2})",
        spread(&latencies),
        ms(percentile(&latencies, 0.99)) / 100.0
    );
    println!("    patch sent -> status seen: {}", spread(&to_status));
    println!(
        "    status seen -> routing seen: {}",
        spread(&status_to_routing)
    );
    println!(
        "  status seen -> routing seen p99 against the issue's 10 ms: ratio {:.2}",
        ms(percentile(&status_to_routing, 0.99)) / 10.0
    );
    println!(
        "  plane floor, interleaved with the flips: a ConfigMap of the routing's size applied -> seen by its watch: {}",
        spread(&floor)
    );
    println!(
        "    the operator's own share (status seen -> routing seen, less the floor): p50 {:+.1} ms (below 0: the operator's watch saw the status before the bench's did); the plane's two writes alone (patch -> status seen, plus the floor): p50 {:.1} ms",
        ms(percentile(&status_to_routing, 0.5)) - ms(percentile(&floor, 0.5)),
        ms(percentile(&to_status, 0.5)) + ms(percentile(&floor, 0.5)),
    );

    // Quiet window: settle, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cm_before = cm_events.load(Ordering::Relaxed);
    let policy_before = policy_events.load(Ordering::Relaxed);
    let writes_before = metrics.configmap_writes.get();
    let cm_rv = ns
        .api::<ConfigMap>()
        .get("sip-routing")
        .await
        .unwrap()
        .resource_version();
    let policy_rv = policies.get("main").await.unwrap().resource_version();
    tokio::time::sleep(quiet).await;
    let cm_rv_after = ns
        .api::<ConfigMap>()
        .get("sip-routing")
        .await
        .unwrap()
        .resource_version();
    let policy_rv_after = policies.get("main").await.unwrap().resource_version();
    let cm_writes = cm_events.load(Ordering::Relaxed) - cm_before;
    let policy_writes = policy_events.load(Ordering::Relaxed) - policy_before;
    let metric_writes = metrics.configmap_writes.get() - writes_before;
    println!(
        "policy_latency: quiet window of {} s (target 0 writes)",
        quiet.as_secs()
    );
    println!(
        "  ConfigMap modifications {cm_writes} (resourceVersion {}), policy modifications {policy_writes} (resourceVersion {}), configmap_writes metric +{metric_writes}",
        if cm_rv == cm_rv_after {
            "unchanged"
        } else {
            "CHANGED"
        },
        if policy_rv == policy_rv_after {
            "unchanged"
        } else {
            "CHANGED"
        },
    );
}
