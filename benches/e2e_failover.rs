//! Benchmark: one path end to end, as production runs it. A Trunk endpoint goes Down
//! (its responder stops answering) or Up again; the `lifeline operator` binary probes
//! it and writes the Trunk status, plans and writes the routing ConfigMap; the
//! `lifeline sip-sync` binary watches it, writes Kamailio's file and reloads; the
//! bench polls Kamailio's `dispatcher.list` RPC (every millisecond) until it shows the
//! new set.
//!
//! Per transition: the time from the probe verdict to Kamailio confirming, p50/p99
//! over 50 transitions (target p99 < 25 ms), split into verdict → routing ConfigMap
//! and ConfigMap → Kamailio; the Trunk status write is reported beside it (the policy
//! plans from the verdict, not from the written status, so the routing may come
//! first). The verdict's moment is read off the carrier's responder: Up is the answer
//! to the first probe after it answers again (success threshold 1); Down is the
//! first unanswered probe's arrival plus the probe timeout (failure threshold 1).
//! The detection time (responder silenced/answering → verdict) is printed for
//! reference.
//!
//! Run: `cargo bench --bench e2e_failover` (needs `make testenv-up` and
//! /usr/sbin/kamailio; binds 127.0.14.1:5060 and 127.0.14.10:5060/5071).
//! `E2E_FLIPS` sets the number of transitions (default 50).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use lifeline::crd::{EndpointState, FallbackPolicy, Trunk};
use lifeline::routing::dispatcher::Destination;
use lifeline::sip_sync::kamailio::KamailioRpc;
use serde_json::json;

use common::TempDir;
use common::kamailio::Kamailio;
use common::process::Process;
use common::sip::{ArrivalLog, Silenced, spawn_logged_options_responder};
use common::sync::ROUTING_CONFIGMAP;
use common::watch::{timestamped, weighted_set1};

const CARRIER: &str = "127.0.14.1";
const EDGE: &str = "127.0.14.10";
const PRIMARY: &str = "sip:primary@127.0.14.1:5060";
const STANDBY: &str = "sip:standby@127.0.14.1:5060";
/// The Trunks' probe timeout (`timeoutMillis`): a Down verdict comes this long after
/// the unanswered probe.
const TIMEOUT_MS: u64 = 200;

fn main() {
    let flips = std::env::var("E2E_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50usize);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(flips));
}

fn trunk(name: &str, uri: &str) -> Trunk {
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
        "metadata": { "name": name },
        "spec": {
            "region": "cologne", "endpoints": [{ "uri": uri }],
            "probe": { "periodSeconds": 1, "timeoutMillis": TIMEOUT_MS, "failureThreshold": 1, "successThreshold": 1 },
        },
    }))
    .expect("trunk")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn line(what: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let (p50, p99) = (percentile(&v, 0.5), percentile(&v, 0.99));
    println!(
        "  {what:<38} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        ms(p50),
        ms(p99),
        ms(*v.last().unwrap())
    );
    (p50, p99)
}

/// Set 1 as Kamailio holds it now.
async fn loaded_set1(rpc: &KamailioRpc) -> Option<Vec<String>> {
    let list = rpc.list_dispatcher().await.ok()?;
    Some(
        list.destinations()
            .iter()
            .filter(|d: &&Destination| d.set_id == 1)
            .map(|d| d.uri.clone())
            .collect(),
    )
}

async fn run(flips: usize) {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "bench-e2e", &[]).await;
    let silenced: Silenced = Default::default();
    let sock = UdpSocket::bind((CARRIER, 5060)).expect("bind the carrier responder");
    let arrivals = ArrivalLog::of("primary");
    spawn_logged_options_responder(sock, silenced.clone(), Some(arrivals.clone()));

    // Kamailio with a placeholder list until sip-sync writes the routing.
    let dir = TempDir::new("lifeline-bench-e2e");
    let file = dir.path().join("dispatcher.list");
    std::fs::write(&file, format!("9 {STANDBY} 0 0\n")).expect("placeholder list");
    let mut kamailio = Kamailio::edge(EDGE, &file, dir.path());
    kamailio.wait_ready(Duration::from_secs(20)).await;
    let rpc = KamailioRpc::new(&kamailio.rpc_url, Duration::from_secs(1)).expect("rpc client");

    let trunks: Api<Trunk> = ns.api();
    for (name, uri) in [("primary", PRIMARY), ("standby", STANDBY)] {
        trunks
            .create(&PostParams::default(), &trunk(name, uri))
            .await
            .expect("create trunk");
    }
    let policy: FallbackPolicy = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy", "metadata": { "name": "main" },
        "spec": {
            "routingConfigMap": { "name": ROUTING_CONFIGMAP },
            "regions": [{ "name": "cologne" }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "primary" }] },
                { "name": "mobile", "targets": [{ "trunk": "standby" }] },
            ]}],
        },
    }))
    .expect("policy");
    ns.api::<FallbackPolicy>()
        .create(&PostParams::default(), &policy)
        .await
        .expect("create policy");

    // The two binaries, as they run in production.
    let logs = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let op_addr = format!("127.0.0.1:{}", common::free_port("127.0.0.1"));
    let mut op_cmd = common::operator::command(&ns.name, &op_addr);
    // `E2E_LOG` sets both binaries' log filter (default `warn`), e.g. `debug` to see
    // the steps of a slow transition printed below.
    let log_filter = std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into());
    op_cmd
        .arg("--no-leader-election")
        .env("RUST_LOG", &log_filter);
    let mut operator =
        Process::spawn_logged("operator", &mut op_cmd, &logs.join("e2e-operator.log"));
    let mut sync = Process::spawn_logged(
        "sip-sync",
        Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args(["sip-sync", "--namespace", &ns.name])
            .args(["--configmap", ROUTING_CONFIGMAP, "--file"])
            .arg(&file)
            .args(["--rpc-url", &kamailio.rpc_url])
            .env("KUBECONFIG", common::kubeconfig_path())
            .env("RUST_LOG", &log_filter)
            .env("NO_COLOR", "1"),
        &logs.join("e2e-sip-sync.log"),
    );

    // Watches: the primary Trunk, the routing ConfigMap.
    let mut status_rx = timestamped(
        trunks,
        watcher::Config::default().fields("metadata.name=primary"),
    );
    let mut cm_rx = timestamped(
        ns.api::<ConfigMap>(),
        watcher::Config::default().fields(&format!("metadata.name={ROUTING_CONFIGMAP}")),
    );

    // Start: both Up, Kamailio routes set 1 through the primary (standby listed too).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if loaded_set1(&rpc)
            .await
            .is_some_and(|s| s.contains(&PRIMARY.to_string()))
        {
            break;
        }
        operator.assert_running();
        sync.assert_running();
        assert!(
            Instant::now() < deadline,
            "Kamailio never routed through the primary:\n{}",
            kamailio.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut total, mut to_cm, mut to_kamailio, mut detect) = (vec![], vec![], vec![], vec![]);
    // Status written relative to the verdict and to the routing (ms; negative: before).
    let (mut verdict_to_status, mut status_vs_cm) = (vec![], vec![]);
    for i in 0..flips {
        let down = i % 2 == 0;
        tokio::time::sleep(Duration::from_millis(300)).await;
        while status_rx.try_recv().is_ok() {}
        while cm_rx.try_recv().is_ok() {}
        let flipped = Instant::now();
        {
            let mut s = silenced.write().unwrap();
            if down {
                s.insert("primary".into());
            } else {
                s.remove("primary");
            }
        }
        let want = if down {
            EndpointState::Down
        } else {
            EndpointState::Up
        };
        // Kamailio confirms: down, set 1 holds only the standby; up, the primary again.
        let confirmed = |set: &[String]| {
            set.contains(&PRIMARY.to_string()) != down && set.contains(&STANDBY.to_string())
        };
        let kamailio_at = loop {
            if let Some(set) = loaded_set1(&rpc).await
                && confirmed(&set)
            {
                break Instant::now();
            }
            assert!(
                flipped.elapsed() < Duration::from_secs(20),
                "transition {i}: Kamailio not updated within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let status_at = loop {
            let (at, trunk) = tokio::time::timeout(Duration::from_secs(5), status_rx.recv())
                .await
                .expect("status event")
                .expect("watch alive");
            let state = trunk
                .status
                .and_then(|s| s.endpoints.first().map(|e| e.state));
            if state == Some(want) {
                break at;
            }
        };
        let cm_at = loop {
            let (at, cm) = tokio::time::timeout(Duration::from_secs(5), cm_rx.recv())
                .await
                .expect("ConfigMap event")
                .expect("watch alive");
            let text = cm
                .data
                .and_then(|d| d.get("dispatcher.list").cloned())
                .unwrap_or_default();
            if weighted_set1(&text) == [if down { STANDBY } else { PRIMARY }] {
                break at;
            }
        };
        // The verdict: the first probe of the primary that arrived after the flip.
        let verdict_at = {
            let first = arrivals
                .first_since(flipped)
                .expect("a probe of the primary after the flip");
            assert_eq!(
                first.answered, !down,
                "transition {i}: the probe saw the flip"
            );
            if down {
                first.at + Duration::from_millis(TIMEOUT_MS)
            } else {
                first.at
            }
        };
        arrivals.clear();
        let signed = |a: Instant, b: Instant| {
            if a >= b { ms(a - b) } else { -ms(b - a) }
        };
        // A slow one is named with its wall-clock time, to find it in the logs.
        if kamailio_at.saturating_duration_since(verdict_at) > Duration::from_millis(25) {
            println!(
                "  slow transition {i} (ended {}): verdict -> ConfigMap {:.1} ms, ConfigMap -> Kamailio {:.1} ms",
                jiff::Timestamp::now(),
                ms(cm_at.saturating_duration_since(verdict_at)),
                ms(kamailio_at.saturating_duration_since(cm_at)),
            );
        }
        detect.push(verdict_at.saturating_duration_since(flipped));
        total.push(kamailio_at.saturating_duration_since(verdict_at));
        to_cm.push(cm_at.saturating_duration_since(verdict_at));
        to_kamailio.push(kamailio_at.saturating_duration_since(cm_at));
        verdict_to_status.push(signed(status_at, verdict_at));
        status_vs_cm.push(signed(status_at, cm_at));
    }

    println!(
        "e2e_failover: Trunk endpoint Down/Up -> Kamailio dispatcher.list ({flips} transitions, operator and sip-sync binaries)"
    );
    let (_, p99) = line("probe verdict -> Kamailio confirms", total);
    line("  verdict -> routing ConfigMap", to_cm);
    line("  ConfigMap -> Kamailio (sip-sync)", to_kamailio);
    line("(detection: silenced -> verdict)", detect);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "  Trunk status seen by a watch: {:.1} ms after the verdict, {:+.1} ms relative to the routing ConfigMap (medians; + = after)",
        median(verdict_to_status),
        median(status_vs_cm)
    );
    println!(
        "  target p99 < 25 ms from the probe verdict: ratio {:.2}",
        ms(p99) / 25.0
    );
    operator.assert_running();
    sync.assert_running();
}
