//! Benchmark: the SIP OPTIONS prober at scale, and how fast it notices a dead carrier.
//!
//! 1. 10,000 endpoints probed every second against UDP responders on 127.0.11.1–4 that
//!    run in a child process (this binary, re-executed), so that the prober's CPU share
//!    (`/proc/self/stat` utime+stime) and resident memory (`VmRSS`) are its own.
//!    Targets: under 25 % of one core, under 64 MiB.
//! 2. At the same time, a silent UDP carrier (a bound socket that never answers) probed
//!    at a 1 s period by lifeline and by Kamailio's dispatcher (`ds_ping_interval` 1 s,
//!    every other setting at Kamailio's defaults): the time each takes to mark it
//!    Down/inactive, and the ratio.
//!
//! 3. Then 1,000 TLS endpoints at a 5 s period (a realistic carrier setting) are added
//!    next to the 10,000 UDP ones, probed against Kamailio's tls module with a
//!    certificate made by openssl and verified against its CA: CPU and memory are
//!    measured again in the same run, and the TLS share printed as the difference.
//!
//! Run: `cargo bench --bench probe_10k` (release build; needs /usr/sbin/kamailio,
//! /usr/sbin/kamcmd, kamailio-tls-modules and openssl; binds 127.0.11.0/24).
//! `PROBE_10K_SECONDS` changes the 20 s windows.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeline::crd::{EndpointState, ProbeSpec};
use lifeline::probe::policy::Rule;
use lifeline::probe::{ProbeConfig, ProbeHub, ProbeTarget};
use lifeline::telemetry::Metrics;

const ENDPOINTS: usize = 10_000;
const RESPONDERS: [&str; 4] = ["127.0.11.1", "127.0.11.2", "127.0.11.3", "127.0.11.4"];
const SILENT: &str = "127.0.11.200:5060";
const KAMAILIO_LISTEN: &str = "127.0.11.250:5060";
const TLS_ENDPOINTS: usize = 1_000;
const TLS_PEER: &str = "127.0.11.5";

fn main() {
    if std::env::var_os("PROBE_10K_RESPONDER").is_some() {
        responder();
        return;
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    let window = std::env::var("PROBE_10K_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(window));
}

/// Kills a child (and its process group) on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(200));
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

async fn run(window: u64) {
    use std::os::unix::process::CommandExt;
    // Responders in a child process, so their CPU is not ours.
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env("PROBE_10K_RESPONDER", "1")
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start responders");
    let mut ready = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut ready);
    assert_eq!(ready.trim(), "ready", "responders did not start");
    let responders = ChildGuard(child);

    // The dead carrier: bound so no ICMP comes back, never read.
    let _silent = UdpSocket::bind(SILENT).expect("bind the silent carrier");
    let kamailio = tokio::task::spawn_blocking(kamailio_time_to_inactive);

    let metrics = Arc::new(Metrics::new());
    // The default destination list, with this bench's loopback range as the exception
    // (so the policy check is part of what is measured).
    let mut config = ProbeConfig::default();
    config
        .policy
        .allow([Rule::parse("127.0.11.0/24").expect("rule")]);
    let hub = ProbeHub::new(metrics.clone(), config);
    let spec = ProbeSpec {
        period_seconds: 1,
        ..ProbeSpec::default()
    };
    let owners = ENDPOINTS / 100;
    for o in 0..owners {
        let targets = (0..100)
            .map(|i| {
                let n = o * 100 + i;
                ProbeTarget {
                    uri: format!("sip:ep{n}@{}:5060", RESPONDERS[n % RESPONDERS.len()]),
                    spec: spec.clone(),
                    tls: None,
                }
            })
            .collect();
        hub.set_targets(&format!("bench/{o}"), targets);
    }
    let silent_default = detect_down(
        hub.clone(),
        "silent/default",
        spec.clone(),
        "defaults but period 1 s: timeout 1000 ms, failureThreshold 3",
    );
    let silent_tuned = detect_down(
        hub.clone(),
        "silent/tuned",
        ProbeSpec {
            period_seconds: 1,
            timeout_millis: 500,
            failure_threshold: 2,
            ..ProbeSpec::default()
        },
        "timeout 500 ms, failureThreshold 2",
    );

    // Let every schedule reach its phase, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent0 = metrics.probes_sent.get();
    let child_pid = responders.0.id();
    let mut samples = Vec::new();
    let (mut cpu_prev, mut child_prev) = (cpu_seconds("self"), cpu_seconds(&child_pid.to_string()));
    let (cpu_start, child_start, started) = (cpu_prev, child_prev, Instant::now());
    for _ in 0..window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (cpu, child_cpu) = (cpu_seconds("self"), cpu_seconds(&child_pid.to_string()));
        samples.push(((cpu - cpu_prev) * 100.0, (child_cpu - child_prev) * 100.0));
        (cpu_prev, child_prev) = (cpu, child_cpu);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let probes = (metrics.probes_sent.get() - sent0) as f64 / elapsed;
    let mean = (cpu_prev - cpu_start) / elapsed * 100.0;
    let child_mean = (child_prev - child_start) / elapsed * 100.0;
    let rss = rss_mib();
    let up = (0..owners)
        .flat_map(|o| hub.health(&format!("bench/{o}")))
        .filter(|h| h.state == EndpointState::Up)
        .count();
    let failed: String = metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("lifeline_probes_failed_total{"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut own: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mut theirs: Vec<f64> = samples.iter().map(|s| s.1).collect();

    println!("== {ENDPOINTS} endpoints, 1 s period, {window} s window (release) ==");
    println!(
        "prober CPU: median {:.1} % of one core per second, mean {mean:.1} %, max {:.1} %  (target < 25 %)",
        median(&mut own),
        own.iter().cloned().fold(0.0, f64::max)
    );
    println!("prober RSS: {rss:.1} MiB  (target < 64 MiB)");
    println!("probes sent: {probes:.0}/s; endpoints Up at the end: {up}/{ENDPOINTS}");
    println!("failed probes (all, incl. the silent carrier): [{failed}]");
    println!(
        "responders (separate process, not counted above): median {:.1} %, mean {child_mean:.1} %",
        median(&mut theirs)
    );
    // Phase 2: the same hub plus 1,000 TLS endpoints at 5 s.
    match tls_phase(&hub, &metrics, window, probes).await {
        Ok(t) => {
            println!(
                "== + {TLS_ENDPOINTS} TLS endpoints (sips:, CA-verified, 5 s period) next to the {ENDPOINTS} UDP ones, {window} s window =="
            );
            println!(
                "prober CPU: median {:.1} % of one core (UDP alone: median {:.1} %), mean {:.1} %; TLS share {:.1} % of a core",
                t.cpu_median,
                median(&mut own.clone()),
                t.cpu_mean,
                t.cpu_mean - mean
            );
            println!(
                "prober RSS: {:.1} MiB (UDP alone: {rss:.1} MiB); TLS endpoints Up: {}/{TLS_ENDPOINTS}; TLS handshakes: {:.0}/s",
                t.rss, t.up, t.rate
            );
            println!(
                "cost per TLS probe vs per UDP probe: {:.1}x",
                ((t.cpu_mean - mean) / t.rate.max(1.0)) / (mean / probes.max(1.0))
            );
        }
        Err(e) => println!("TLS phase: not measured: {e}"),
    }
    drop(responders);

    let (lifeline_default, what_default) = silent_default.await.expect("detector");
    let (lifeline_tuned, what_tuned) = silent_tuned.await.expect("detector");
    let kam = kamailio.await.expect("kamailio task");
    println!("== silent UDP carrier {SILENT}, probed every 1 s ==");
    println!(
        "lifeline ({what_default}): Down after {:.2} s",
        lifeline_default.as_secs_f64()
    );
    println!(
        "lifeline ({what_tuned}): Down after {:.2} s",
        lifeline_tuned.as_secs_f64()
    );
    match kam {
        Ok(k) => {
            println!(
                "kamailio dispatcher (ds_ping_interval 1 s, ds_probing_threshold and tm fr_timer at defaults): inactive after {:.2} s",
                k.as_secs_f64()
            );
            println!(
                "ratio kamailio/lifeline: {:.1}x with lifeline defaults, {:.1}x tuned",
                k.as_secs_f64() / lifeline_default.as_secs_f64(),
                k.as_secs_f64() / lifeline_tuned.as_secs_f64()
            );
        }
        Err(e) => println!("kamailio dispatcher: not measured: {e}"),
    }
    hub.shutdown();
}

struct TlsFigures {
    cpu_median: f64,
    cpu_mean: f64,
    rss: f64,
    up: usize,
    rate: f64,
}

/// Kamailio with TLS on `TLS_PEER:5061`, then 1,000 `sips:` endpoints on `hub`.
async fn tls_phase(
    hub: &ProbeHub,
    metrics: &Metrics,
    window: u64,
    udp_rate: f64,
) -> Result<TlsFigures, String> {
    use lifeline::probe::TlsSettings;
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("lifeline-probe-10k-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _cleanup = DirGuard(dir.clone());
    let openssl = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=bench CA",
        "-days",
        "2",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "peer.key",
        "-out",
        "peer.csr",
        "-subj",
        "/CN=peer",
    ])?;
    std::fs::write(dir.join("ext"), format!("subjectAltName=IP:{TLS_PEER}\n"))
        .map_err(|e| e.to_string())?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "peer.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "peer.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ])?;
    let d = dir.display();
    std::fs::write(
        dir.join("tls.cfg"),
        format!("[server:default]\nmethod = TLSv1.2+\ncertificate = {d}/peer.crt\nprivate_key = {d}/peer.key\n\n[client:default]\nverify_certificate = no\n"),
    )
    .map_err(|e| e.to_string())?;
    let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kamailio/tls_options_200.cfg");
    let child = Command::new("/usr/sbin/kamailio")
        .arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-n", "1", "-Y"])
        .arg(&dir)
        .arg("-w")
        .arg(&dir)
        .args(["-l", &format!("tls:{TLS_PEER}:5061")])
        .args(["-A", &format!("TLS_CFG=\"{d}/tls.cfg\"")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start kamailio: {e}"))?;
    let kamailio = ChildGuard(child);
    let started = Instant::now();
    while std::net::TcpStream::connect((TLS_PEER, 5061)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("kamailio TLS did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca: Arc<str> =
        Arc::from(std::fs::read_to_string(dir.join("ca.crt")).map_err(|e| e.to_string())?);
    let spec = ProbeSpec {
        period_seconds: 5,
        ..ProbeSpec::default()
    };
    for o in 0..TLS_ENDPOINTS / 100 {
        let targets = (0..100)
            .map(|i| ProbeTarget {
                uri: format!("sips:tls{}@{TLS_PEER}:5061", o * 100 + i),
                spec: spec.clone(),
                tls: Some(TlsSettings {
                    ca_pem: Some(ca.clone()),
                    ..TlsSettings::default()
                }),
            })
            .collect();
        hub.set_targets(&format!("tls/{o}"), targets);
    }
    // One full period for every schedule to reach its phase.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sent0 = metrics.probes_sent.get();
    let (mut prev, start, t0) = (cpu_seconds("self"), cpu_seconds("self"), Instant::now());
    let mut samples = Vec::new();
    for _ in 0..window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_seconds("self");
        samples.push((now - prev) * 100.0);
        prev = now;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let all = (metrics.probes_sent.get() - sent0) as f64 / elapsed;
    let up = (0..TLS_ENDPOINTS / 100)
        .flat_map(|o| hub.health(&format!("tls/{o}")))
        .filter(|h| h.state == EndpointState::Up)
        .count();
    let figures = TlsFigures {
        cpu_median: median(&mut samples),
        cpu_mean: (prev - start) / elapsed * 100.0,
        rss: rss_mib(),
        up,
        // The UDP endpoints keep their rate from the first window; the rest is TLS.
        rate: all - udp_rate,
    };
    for o in 0..TLS_ENDPOINTS / 100 {
        hub.remove(&format!("tls/{o}"));
    }
    drop(kamailio);
    Ok(figures)
}

/// Removes a directory on drop.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Probe the silent carrier under `owner` and report how long until it is Down.
fn detect_down(
    hub: ProbeHub,
    owner: &'static str,
    spec: ProbeSpec,
    what: &'static str,
) -> tokio::task::JoinHandle<(Duration, &'static str)> {
    tokio::spawn(async move {
        let started = Instant::now();
        hub.set_targets(
            owner,
            vec![ProbeTarget {
                uri: format!("sip:{SILENT}"),
                spec,
                tls: None,
            }],
        );
        loop {
            if hub
                .health(owner)
                .first()
                .is_some_and(|h| h.state == EndpointState::Down)
            {
                return (started.elapsed(), what);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Start Kamailio with the dispatcher probing the silent carrier and time, from its
/// first answer to `dispatcher.list`, until the destination's flags show `I`
/// (inactive). Gives up after 90 s.
fn kamailio_time_to_inactive() -> Result<Duration, String> {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("lifeline-probe-10k-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // flags 8: probe this destination (ds_probing_mode stays at its default, 0).
    std::fs::write(dir.join("dispatcher.list"), format!("1 sip:{SILENT} 8 0\n"))
        .map_err(|e| e.to_string())?;
    let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kamailio/dispatcher_probe.cfg");
    let sock = dir.join("ctl.sock");
    let d = dir.display();
    let child = Command::new("/usr/sbin/kamailio")
        .arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-n", "1", "-Y"])
        .arg(&dir)
        .arg("-w")
        .arg(&dir)
        .args(["-l", &format!("udp:{KAMAILIO_LISTEN}")])
        .args(["-A", &format!("DS_LIST=\"{d}/dispatcher.list\"")])
        .args(["-A", &format!("CTL_SOCK=\"unix:{}\"", sock.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start kamailio: {e}"))?;
    let _guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut started = None;
    let result = loop {
        if Instant::now() > deadline {
            break Err("no inactive flag within 90 s".to_string());
        }
        if let Some(flags) = dispatcher_flags(&sock) {
            let t0 = *started.get_or_insert_with(Instant::now);
            if flags.contains('I') {
                break Ok(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `FLAGS` of the first destination in `dispatcher.list`, via kamcmd.
fn dispatcher_flags(sock: &Path) -> Option<String> {
    let out = Command::new("/usr/sbin/kamcmd")
        .arg("-s")
        .arg(format!("unix:{}", sock.display()))
        .arg("dispatcher.list")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("FLAGS:")
            .map(|f| f.trim().to_string())
    })
}

/// CPU seconds (user + system) of `/proc/<pid>`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Child-process mode: answer every OPTIONS on the responder addresses with 200 OK,
/// echoing Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2).
fn responder() {
    let threads: Vec<_> = RESPONDERS
        .iter()
        .map(|ip| {
            let sock = UdpSocket::bind((*ip, 5060)).expect("bind responder");
            common::sip::spawn_options_responder(sock, Default::default())
        })
        .collect();
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
}
