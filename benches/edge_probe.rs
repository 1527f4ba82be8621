//! What probing costs the SIP edge: two real `lifeline sip-sync` processes side by
//! side, each beside its own Kamailio 5.6 edge, reporting to the same `SipEdge`.
//! One (`idle`) runs with `--no-probe`; the other (`probing`) probes the 1,000
//! destinations listed in the routing ConfigMap's `probes.json` from its edge address,
//! every 5 s (the Trunk default; `LIFELINE_BENCH_PERIOD=1` for the 1 s worst case). A real Kamailio on 127.0.95.20
//! answers all of them (1,000 URIs, one address).
//!
//! Once every destination is reported Up, the bench measures for a quiet minute
//! (`LIFELINE_BENCH_QUIET_SECONDS`, default 60):
//! - CPU of each process (utime + stime from `/proc/<pid>/stat`) in 10 s slices:
//!   the median slice, as % of one core, and the difference probing − idle;
//! - resident memory (`VmRSS`) at the end, and the difference;
//! - writes to the API: every watch event on the `SipEdge` and the routing ConfigMap
//!   during the minute (the report is written on transitions only: expected 0).
//!
//! Targets (issue #14): the difference < 5 % of a core and < 16 MiB; 0 writes. The
//! process exits non-zero when a target is missed.
//!
//! Run: `cargo bench --bench edge_probe` (needs `make testenv-up` and kamailio).

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use lifeline::crd::{EndpointState, ProbeSpec, SipEdge};
use lifeline::routing::probes::{EdgeTarget, render};
use serde_json::json;

const CONFIGMAP: &str = "sip-routing";
const EDGE: &str = "edge";
const DESTINATIONS: usize = 1000;
const CARRIER: &str = "127.0.95.20";

/// A child process (group) killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// CPU ticks (utime + stime) and resident KiB of `pid`.
fn usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn sip_sync(
    ns: &str,
    member: &str,
    ip: &str,
    kam: &common::kamailio::Kamailio,
    file: &std::path::Path,
    probe: bool,
) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    cmd.args(["sip-sync", "--namespace", ns, "--configmap", CONFIGMAP])
        .args(["--file", &file.to_string_lossy(), "--rpc-url", &kam.rpc_url])
        .args(["--edge", EDGE, "--edge-member", member])
        .args(["--probe-bind", ip, "--probe-allow", "127.0.0.0/8"]);
    if !probe {
        cmd.arg("--no-probe");
    }
    let child = cmd
        .env("KUBECONFIG", common::kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start lifeline sip-sync");
    Proc(child)
}

/// Count watch events of `name` from now on (every write shows up as one).
fn count_writes<K>(api: Api<K>, name: &str) -> Arc<AtomicU64>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = event {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    count
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let period: u32 = std::env::var("LIFELINE_BENCH_PERIOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let quiet: u64 = std::env::var("LIFELINE_BENCH_QUIET_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let Some(client): Option<Client> = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "bench-edge-probe", &[]).await;

    let dir = common::TempDir::new("lifeline-bench-edge-probe");
    let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kamailio/options_filtered.cfg");
    let run = dir.0.join("carrier");
    std::fs::create_dir_all(&run).unwrap();
    let run = run.to_string_lossy().into_owned();
    let carrier = Proc(
        Command::new("/usr/sbin/kamailio")
            .args(["-f", &cfg.to_string_lossy(), "-DD", "-E", "-n", "2"])
            .args(["-Y", &run, "-w", &run, "-l", &format!("udp:{CARRIER}:5060")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start /usr/sbin/kamailio"),
    );

    let edge: SipEdge = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
        "metadata": { "name": EDGE }, "spec": { "routingConfigMap": CONFIGMAP },
    }))
    .unwrap();
    let edges: Api<SipEdge> = ns.api();
    edges
        .create(&PostParams::default(), &edge)
        .await
        .expect("create SipEdge");
    let routing = format!("1 sip:{CARRIER}:5060 0 0 duid=carrier\n");
    let spec = ProbeSpec {
        period_seconds: period,
        timeout_millis: 500,
        ..ProbeSpec::default()
    };
    let probes = render(
        (0..DESTINATIONS)
            .map(|i| EdgeTarget {
                uri: format!("sip:c{i}@{CARRIER}:5060"),
                probe: spec.clone(),
                server_name: None,
            })
            .collect(),
    );
    let cms: Api<ConfigMap> = ns.api();
    cms.patch(
        CONFIGMAP,
        &PatchParams::apply("lifeline-bench").force(),
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": CONFIGMAP,
                "annotations": { "lifeline.dev/content-hash": lifeline::routing::content_hash(&routing) } },
            "data": { "dispatcher.list": routing, "probes.json": probes },
        })),
    )
    .await
    .expect("apply routing ConfigMap");

    let mut procs = Vec::new();
    let mut kams = Vec::new();
    for (member, ip, probe) in [
        ("idle", "127.0.95.10", false),
        ("probing", "127.0.95.11", true),
    ] {
        let file = dir.0.join(format!("{member}.list"));
        std::fs::write(&file, &routing).unwrap();
        let work = dir.0.join(member);
        std::fs::create_dir_all(&work).unwrap();
        let mut kam = common::kamailio::Kamailio::edge(ip, &file, &work);
        kam.wait_ready(Duration::from_secs(20)).await;
        procs.push(sip_sync(&ns.name, member, ip, &kam, &file, probe));
        kams.push(kam);
    }

    // Every destination judged Up from the edge and reported.
    let started = std::time::Instant::now();
    common::eventually(
        Duration::from_secs(90),
        "the probing member reports 1,000 destinations Up",
        || async {
            let e = edges.get(EDGE).await.ok()?;
            let m = e
                .status?
                .members
                .into_iter()
                .find(|m| m.name == "probing")?;
            (m.probes.len() == DESTINATIONS
                && m.probes.iter().all(|p| p.state == EndpointState::Up))
            .then_some(())
        },
    )
    .await;
    println!(
        "edge_probe: {DESTINATIONS} destinations every {period} s reported Up after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let edge_writes = count_writes(edges.clone(), EDGE);
    let cm_writes = count_writes(cms.clone(), CONFIGMAP);
    // Let both watches deliver their initial state before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (edge_base, cm_base) = (
        edge_writes.load(Ordering::Relaxed),
        cm_writes.load(Ordering::Relaxed),
    );
    let tps = ticks_per_second();
    let slice = 10u64;
    let slices = (quiet / slice).max(1);
    let pids: Vec<u32> = procs.iter().map(|p| p.0.id()).collect();
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); pids.len()];
    let mut last: Vec<u64> = pids.iter().map(|p| usage(*p).0).collect();
    for _ in 0..slices {
        tokio::time::sleep(Duration::from_secs(slice)).await;
        for (i, pid) in pids.iter().enumerate() {
            let (ticks, _) = usage(*pid);
            cpu[i].push((ticks - last[i]) as f64 / tps / slice as f64 * 100.0);
            last[i] = ticks;
        }
    }
    let rss: Vec<f64> = pids.iter().map(|p| usage(*p).1 as f64 / 1024.0).collect();
    let writes = edge_writes.load(Ordering::Relaxed) - edge_base
        + cm_writes.load(Ordering::Relaxed)
        - cm_base;

    let (idle_cpu, probing_cpu) = (median(cpu[0].clone()), median(cpu[1].clone()));
    let added_cpu = probing_cpu - idle_cpu;
    let added_rss = rss[1] - rss[0];
    println!(
        "edge_probe: {} s quiet, CPU median of {slice} s slices (% of one core)",
        slices * slice
    );
    println!(
        "  sip-sync --no-probe     cpu {idle_cpu:6.2} %   rss {:7.1} MiB",
        rss[0]
    );
    println!(
        "  sip-sync probing {DESTINATIONS}  cpu {probing_cpu:6.2} %   rss {:7.1} MiB",
        rss[1]
    );
    println!(
        "  added by probing        cpu {added_cpu:6.2} % (target < 5 %)   rss {added_rss:7.1} MiB (target < 16 MiB)"
    );
    println!("  API writes in the quiet window: {writes} (SipEdge + routing ConfigMap; target 0)");
    let ok = added_cpu < 5.0 && added_rss < 16.0 && writes == 0;
    drop(procs);
    drop(kams);
    drop(carrier);
    drop(ns);
    if !ok {
        eprintln!("edge_probe: a target was missed");
        std::process::exit(1);
    }
}
