//! Surge response on the real control plane (`make testenv-up`): a SIP edge member
//! reports more calls than the agents take → how long until the bot pool follows.
//!
//! The policy and BotPool controllers run in-process; the bot pods are run by the
//! testenv's fake kubelet. The agents are a Trunk with `capacity.maxConcurrentCalls`
//! 10 (its status written as the prober would), the bots a pool of 5 calls per bot
//! with 20 % headroom and no scale-down window. Each round writes the member's calls
//! (10 at the agents, 16 at the bot: 4 bots wanted) through the SipEdge status, as
//! sip-sync does, and times from the start of that write until
//! 1. `FallbackPolicy.status.demand` names 16 calls for the pool,
//! 2. `BotPool.status.desiredReplicas` is 4,
//! 3. the Deployment's `spec.replicas` is 4;
//!
//! then it reports 0 calls and waits for the pool to return to 1 (timed the same way).
//! Each stage is observed by polling every 5 ms. Target: the surge reaches
//! `desiredReplicas` within 2 s (median and p99 printed, with their ratio to 2 s).
//!
//! `cargo bench --bench demand_latency` (env: `LIFELINE_BENCH_SURGES`, default 30).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use lifeline::crd::{BotPool, FallbackPolicy, SipEdge, Trunk, member_field_manager};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const POOL: &str = "bench-bots";
const TARGET: Duration = Duration::from_secs(2);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn call0(uri: &str, n: u32) -> serde_json::Value {
    json!({ "uri": uri, "setId": 1, "activeCalls": n, "callsPerSecond": n as f64 / 2.0 })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn create<K>(api: &Api<K>, value: serde_json::Value)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).expect("valid object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create");
}

async fn report(api: &Api<SipEdge>, calls: serde_json::Value) {
    let body = json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
        "metadata": { "name": "edge" },
        "status": { "members": [{ "name": "edge-0", "calls": calls }] },
    });
    api.patch_status(
        "edge",
        &PatchParams::apply(&member_field_manager("edge-0")).force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("report to the SipEdge");
}

/// Poll `probe` every 5 ms until it holds; the time since `start` when it did.
async fn until<F, Fut>(start: Instant, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if probe().await {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!("no {what} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Stages {
    policy: Vec<Duration>,
    pool: Vec<Duration>,
    deployment: Vec<Duration>,
}

fn print_stages(title: &str, s: &mut Stages) {
    println!("{title}");
    println!(
        "  {:<44} {:>9} {:>9} {:>11}",
        "stage (from the SipEdge write)", "median", "p99", "p99 / 2 s"
    );
    for (name, v) in [
        ("FallbackPolicy.status.demand", &mut s.policy),
        ("BotPool.status.desiredReplicas", &mut s.pool),
        ("Deployment.spec.replicas", &mut s.deployment),
    ] {
        v.sort();
        let (med, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "  {name:<44} {:>7.1}ms {:>7.1}ms {:>11.3}",
            med.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            p99.as_secs_f64() / TARGET.as_secs_f64()
        );
    }
}

#[tokio::main]
async fn main() {
    let Some(client) = common::client().await else {
        eprintln!("control plane not running: make testenv-up");
        std::process::exit(2);
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "bench-demand", &[]).await;
    let metrics = Arc::new(lifeline::telemetry::Metrics::new());
    let ctx = lifeline::controller::Context::new(client, metrics, Some(ns.name.clone()));
    let stop = CancellationToken::new();
    tokio::spawn(lifeline::controller::policy::run(ctx.clone(), stop.clone()));
    tokio::spawn(lifeline::controller::edge::run(ctx.clone(), stop.clone()));
    tokio::spawn(lifeline::controller::botpool::run(
        ctx.clone(),
        stop.clone(),
    ));
    let surges = env_num("LIFELINE_BENCH_SURGES", 30) as usize;

    let trunks = ns.api::<Trunk>();
    let pools = ns.api::<BotPool>();
    let policies = ns.api::<FallbackPolicy>();
    let edges = ns.api::<SipEdge>();
    let deployments = ns.api::<Deployment>();
    let agents = "sip:127.0.62.1:5060";
    create(
        &trunks,
        json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
            "metadata": { "name": "agents" },
            "spec": { "region": "frankfurt", "endpoints": [{ "uri": agents }],
                      "capacity": { "maxConcurrentCalls": 10 } },
        }),
    )
    .await;
    let up = json!({ "status": { "healthyEndpoints": 1,
        "endpoints": [{ "uri": agents, "state": "Up", "consecutiveFailures": 0 }] } });
    trunks
        .patch_status("agents", &PatchParams::default(), &Patch::Merge(&up))
        .await
        .expect("trunk status");
    create(
        &pools,
        json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "BotPool",
            "metadata": { "name": POOL },
            "spec": { "region": "frankfurt", "image": "example.org/bot:1", "callsPerReplica": 5,
                      "replicas": { "min": 1, "max": 8 },
                      "scaling": { "scaleDownStabilizationSeconds": 0, "headroomPercent": 20 } },
        }),
    )
    .await;
    create(
        &policies,
        json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
            "metadata": { "name": "main" },
            "spec": {
                "routingConfigMap": { "name": "sip-routing" },
                "expectedConcurrentCalls": 5,
                "regions": [{ "name": "frankfurt" }],
                "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                    { "name": "agents", "targets": [{ "trunk": "agents" }] },
                    { "name": "bots", "targets": [{ "botPool": POOL }] } ] }],
                "health": { "minHealthyTrunks": 1 },
                // Set-up order may fail the region for a moment; no wait to come back.
                "failover": { "recoverAfterSeconds": 0 },
            },
        }),
    )
    .await;
    create(
        &edges,
        json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
            "metadata": { "name": "edge" }, "spec": { "routingConfigMap": "sip-routing" },
        }),
    )
    .await;

    let start = Instant::now();
    until(start, "ready floor bot", || async {
        pools
            .get(POOL)
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| s.ready_replicas == 1 && !s.endpoints.is_empty())
    })
    .await;
    let bot = pools.get(POOL).await.unwrap().status.unwrap().endpoints[0].clone();
    let bot_uri = format!("sip:{}:5060;transport=udp", bot.split(':').next().unwrap());
    println!(
        "setup: floor bot ready at {bot} after {:.1}s; {surges} surges of 10 → 26 calls (16 beyond the agents' 10)",
        start.elapsed().as_secs_f64()
    );

    let demand_is = |calls: u32| {
        let policies = policies.clone();
        move || {
            let policies = policies.clone();
            async move {
                policies
                    .get("main")
                    .await
                    .ok()
                    .and_then(|p| p.status)
                    .and_then(|s| s.demand.first().map(|d| d.concurrent_calls))
                    == Some(calls)
            }
        }
    };
    let desired_is = |n: u32| {
        let pools = pools.clone();
        move || {
            let pools = pools.clone();
            async move {
                pools
                    .get(POOL)
                    .await
                    .ok()
                    .and_then(|p| p.status)
                    .is_some_and(|s| s.desired_replicas == n)
            }
        }
    };
    let replicas_is = |n: i32| {
        let deployments = deployments.clone();
        move || {
            let deployments = deployments.clone();
            async move {
                deployments
                    .get(POOL)
                    .await
                    .ok()
                    .and_then(|d| d.spec)
                    .and_then(|s| s.replicas)
                    == Some(n)
            }
        }
    };

    until(start, "the region Active", || async {
        policies
            .get("main")
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| s.active_regions.as_deref() == Some("frankfurt"))
    })
    .await;
    let mut up = Stages {
        policy: Vec::new(),
        pool: Vec::new(),
        deployment: Vec::new(),
    };
    let mut down = Stages {
        policy: Vec::new(),
        pool: Vec::new(),
        deployment: Vec::new(),
    };
    let call = call0;
    for _ in 0..surges {
        let t0 = Instant::now();
        report(&edges, json!([call(agents, 10), call(&bot_uri, 16)])).await;
        up.policy
            .push(until(t0, "policy demand 16", demand_is(16)).await);
        up.pool
            .push(until(t0, "desiredReplicas 4", desired_is(4)).await);
        up.deployment
            .push(until(t0, "Deployment replicas 4", replicas_is(4)).await);

        let t0 = Instant::now();
        report(&edges, json!([call(agents, 3)])).await;
        down.policy
            .push(until(t0, "policy demand 0", demand_is(0)).await);
        down.pool
            .push(until(t0, "desiredReplicas 1", desired_is(1)).await);
        down.deployment
            .push(until(t0, "Deployment replicas 1", replicas_is(1)).await);
    }
    print_stages(
        "surge (26 calls): SipEdge write → bot pool at 4 replicas",
        &mut up,
    );
    print_stages(
        "calm (3 calls, scaleDownStabilizationSeconds 0): SipEdge write → back to 1",
        &mut down,
    );
    let p99 = percentile(&up.pool, 0.99);
    println!(
        "target: surge → desiredReplicas p99 {:.1} ms vs 2000 ms: {}",
        p99.as_secs_f64() * 1e3,
        if p99 <= TARGET { "met" } else { "MISSED" }
    );
    stop.cancel();
    ctx.probes.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
}
