//! ConfigMap change → Kamailio reloaded and confirmed, 100 times.
//!
//! Real control plane (`make testenv-up`), real Kamailio 5.6 on 127.0.30.10 running
//! `examples/kamailio/kamailio.cfg`, sip-sync in-process. Each round applies a new
//! dispatcher list to the routing ConfigMap (server-side apply, as the operator
//! does) and measures from the moment the API call returns until Kamailio's
//! `dispatcher.list` RPC shows exactly the new destinations (polled every 2 ms).
//! The reference is the ~60 s a kubelet-mounted ConfigMap volume takes to update.
//!
//! Run: `cargo bench --bench sync_reload` (`LIFELINE_BENCH_ROUNDS` changes the count).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use lifeline::routing::CONTENT_HASH_ANNOTATION;
use lifeline::routing::content_hash;
use lifeline::routing::dispatcher;
use lifeline::sip_sync::kamailio::KamailioRpc;
use lifeline::telemetry::SyncMetrics;
use serde_json::json;

const CONFIGMAP: &str = common::sync::ROUTING_CONFIGMAP;
const MOUNTED_VOLUME_SYNC: Duration = Duration::from_secs(60);

/// A routing as the operator would render it for round `i`: two regions' carriers
/// in set 1 (the failed one moves around), bots in set 2, agents in set 3.
fn routing(i: usize) -> String {
    let mut text =
        format!("# lifeline routing, round {i}\n# setid destination flags priority attrs\n");
    for d in 0..4 {
        let host = 101 + (i + d) % 20;
        text.push_str(&format!(
            "1 sip:127.0.30.{host}:{} 0 {} duid=carrier-{d}\n",
            5080 + d,
            10 - d
        ));
    }
    for b in 0..(2 + i % 5) {
        text.push_str(&format!(
            "2 sip:127.0.30.{}:5090 0 0 duid=bot-{b}\n",
            130 + b
        ));
    }
    text.push_str("3 sip:agents@127.0.30.150:5060 0 0 duid=agents\n");
    text
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("LIFELINE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "bench-sync", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = common::TempDir::new("lifeline-bench-sync");
    let file = dir.0.join("dispatcher.list");
    std::fs::write(&file, routing(0)).expect("initial dispatcher file");
    let mut kam = common::kamailio::Kamailio::edge("127.0.30.10", &file, &dir.0);
    kam.wait_ready(Duration::from_secs(20)).await;
    let rpc = KamailioRpc::new(&kam.rpc_url, Duration::from_secs(1)).expect("rpc client");

    let sync = common::sync::SipSync::spawn(client, &ns.name, file.clone(), &kam.rpc_url);
    let metrics = sync.metrics.clone();

    let params = PatchParams::apply("lifeline-bench").force();
    let mut latencies = Vec::with_capacity(rounds);
    let mut with_api_call = Vec::with_capacity(rounds);
    let mut polls = 0u64;
    // Round 0 only creates the ConfigMap (and warms the watch); rounds 1..=n count.
    for i in 0..=rounds {
        let text = routing(i + 1);
        let expected = dispatcher::parse(&text).expect("bench routing parses");
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": CONFIGMAP,
                "annotations": { CONTENT_HASH_ANNOTATION: content_hash(&text) },
            },
            "data": { "dispatcher.list": text },
        });
        let before_call = Instant::now();
        api.patch(CONFIGMAP, &params, &Patch::Apply(&body))
            .await
            .expect("apply routing ConfigMap");
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(30);
        loop {
            polls += 1;
            if rpc.list_dispatcher().await.ok().as_ref() == Some(&expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {i}: Kamailio did not show the new routing within 30 s\n{}",
                kam.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let done = Instant::now();
        // Let sip-sync finish its own confirmation and annotation before the next
        // change, so that rounds do not overlap.
        let wanted = (i + 1) as f64;
        let settle = Instant::now() + Duration::from_secs(10);
        while applied(&metrics) < wanted && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if i > 0 {
            latencies.push(done - returned);
            with_api_call.push(done - before_call);
        }
    }
    drop(sync);

    latencies.sort();
    with_api_call.sort();
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    let (sum, count) = duration_stats(&metrics);
    println!("sync_reload: {rounds} ConfigMap changes -> Kamailio reloaded and confirmed");
    println!(
        "  API update returned -> dispatcher.list shows new sets: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(p50),
        ms(percentile(&latencies, 90.0)),
        ms(p99),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "  including the API update call itself:                p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&with_api_call, 50.0)),
        ms(percentile(&with_api_call, 99.0))
    );
    println!(
        "  sip-sync's own sync_duration_seconds (watch event -> confirmed): mean {:.1} ms over {count} applies",
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        }
    );
    println!("  RPC polls: {polls}");
    println!(
        "  vs a kubelet-mounted volume (~{} s): {:.0}x faster at p50, {:.0}x at p99 (target: p99 < 200 ms, > 300x)",
        MOUNTED_VOLUME_SYNC.as_secs(),
        MOUNTED_VOLUME_SYNC.as_secs_f64() / p50.as_secs_f64(),
        MOUNTED_VOLUME_SYNC.as_secs_f64() / p99.as_secs_f64()
    );
    if p99 >= Duration::from_millis(200) {
        println!("  WARNING: p99 above the 200 ms target");
    }
}

fn metric(metrics: &SyncMetrics, name: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn applied(metrics: &SyncMetrics) -> f64 {
    metric(metrics, "lifeline_sync_applied_total")
}

fn duration_stats(metrics: &SyncMetrics) -> (f64, f64) {
    (
        metric(metrics, "lifeline_sync_duration_seconds_sum"),
        metric(metrics, "lifeline_sync_duration_seconds_count"),
    )
}
