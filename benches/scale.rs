//! Benchmark: the operator at scale, on the testenv control plane (`make testenv-up`).
//!
//! Creates 10,000 Trunks (one endpoint each, answered by live loopback responders in
//! this process), 500 BotPools and 500 FallbackPolicies across 50 namespaces, then
//! starts the `lifeline operator` binary as a child process (cluster-wide,
//! `--probe-allow 127.0.0.0/8`, leader election only with `SCALE_LEADER_ELECTION=1`)
//! and measures:
//!
//! 1. time from its start to every policy's routing ConfigMap written (target < 30 s),
//!    and to the routing settling (no ConfigMap change for 5 s);
//! 2. Trunk probe verdict → routing ConfigMap under that load: one extra Trunk with a
//!    fast probe is flipped Down and Up by silencing its responder; the time from the
//!    verdict (read off the responder: the first probe after the flip, answered, or
//!    unanswered plus its 200 ms timeout) to the watch delivering the rewritten
//!    routing, p50/p99 (target p99 < 50 ms). The policy plans from the verdict, not
//!    from the written status; when the status reached a watch is printed beside it.
//!    Measured twice: while the operator still writes the 10,000 first Trunk statuses
//!    (the start-up burst), and in the steady state once they are written;
//! 3. once the operator has written every Trunk status it decided
//!    (`lifeline_status_writes_pending` 0), a quiet steady-state window: API requests by
//!    verb and resource, from the API
//!    server's `apiserver_request_total` (this bench is the only other client and
//!    sends nothing then; its watches are long-running) and, when the operator exports
//!    it, `lifeline_api_requests_total`. Target: 0 writes and 0 reads beyond watches.
//!    Leases and Nodes are listed apart: leader election renews its Lease, and the
//!    testenv kubelet its node heartbeat;
//! 4. operator resident memory (VmRSS, peak and at the end; target < 128 MiB) and CPU.
//!
//! Run: `cargo bench --bench scale`. Sizes: `SCALE_TRUNKS` (10000), `SCALE_POLICIES`
//! (500), `SCALE_BOTPOOLS` (500), `SCALE_NAMESPACES` (50), `SCALE_QUIET_SECS` (60),
//! `SCALE_FLIPS` (50 Down+Up pairs: 100 transitions per phase, so that the p99 is the
//! second-largest, not the maximum); `SCALE_OPERATOR_LOG` sets the operator's
//! `RUST_LOG` (default `warn`); the operator inherits the environment, so
//! `LIFELINE_PROBE_MAX_ENDPOINTS_PER_NAMESPACE=2000 LIFELINE_PROBE_MAX_RATE_PER_NAMESPACE=1000`
//! runs it with the chart's probe quotas (the bench's namespaces fit them). E.g. `SCALE_TRUNKS=1000 SCALE_POLICIES=50
//! SCALE_BOTPOOLS=50 SCALE_NAMESPACES=5 cargo bench --bench scale` for a quick run.
//! Binds UDP 127.0.13.1–4:5060. Waits first until no namespace is being deleted (an
//! earlier run's objects).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use lifeline::crd::{BotPool, EndpointState, FallbackPolicy, Trunk};
use serde_json::json;

use common::TestNamespace;
use common::operator::{Operator, sample};
use common::sip::{ArrivalLog, Silenced, spawn_logged_options_responder};
use common::watch::{timestamped, weighted_set1};

const RESPONDERS: [&str; 4] = ["127.0.13.1", "127.0.13.2", "127.0.13.3", "127.0.13.4"];
/// The flipped Trunk's endpoint user (its responder drops requests while silenced).
const FLIP_USER: &str = "flip";

struct Sizes {
    trunks: usize,
    policies: usize,
    pools: usize,
    namespaces: usize,
    quiet: Duration,
    flips: usize,
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Sizes {
    fn from_env() -> Self {
        let s = Self {
            trunks: env_num("SCALE_TRUNKS", 10_000),
            policies: env_num("SCALE_POLICIES", 500),
            pools: env_num("SCALE_BOTPOOLS", 500),
            namespaces: env_num("SCALE_NAMESPACES", 50).max(1),
            quiet: Duration::from_secs(env_num("SCALE_QUIET_SECS", 60) as u64),
            flips: env_num("SCALE_FLIPS", 50),
        };
        assert!(
            s.trunks >= 2 * s.policies && s.policies >= s.namespaces && s.pools >= s.namespaces,
            "need at least 2 Trunks per policy and one policy and pool per namespace"
        );
        s
    }
}

fn main() {
    let sizes = Sizes::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(sizes));
}

// ---------------------------------------------------------------------------------
// Responders: answer SIP OPTIONS with 200, except for silenced users

fn start_responders(silenced: &Silenced, flips: &Arc<ArrivalLog>) {
    for ip in RESPONDERS {
        let sock = UdpSocket::bind((ip, 5060)).expect("bind responder (127.0.13.x:5060 free?)");
        // Detached: the sockets close when the bench process exits.
        spawn_logged_options_responder(sock, silenced.clone(), Some(flips.clone()));
    }
}

// ---------------------------------------------------------------------------------
// The objects

fn endpoint(user: &str, n: usize) -> String {
    format!("sip:{user}@{}:5060", RESPONDERS[n % RESPONDERS.len()])
}

fn trunk(name: &str, region: &str, uri: &str, fast: bool) -> Trunk {
    let mut spec =
        json!({ "region": region, "medium": "FixedLine", "endpoints": [{ "uri": uri }] });
    if fast {
        spec["probe"] = json!({
            "periodSeconds": 1, "timeoutMillis": 200, "failureThreshold": 1, "successThreshold": 1
        });
    }
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
        "metadata": { "name": name }, "spec": spec,
    }))
    .expect("trunk")
}

fn pool(name: &str) -> BotPool {
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "BotPool",
        "metadata": { "name": name },
        "spec": {
            "region": "north", "image": "example.org/bot:1", "callsPerReplica": 10,
            "replicas": { "min": 0, "max": 2 },
        },
    }))
    .expect("botpool")
}

/// A policy over two regions: tier `fixed` with the first half of `trunks`, `mobile`
/// with the second half, then the bot pool.
fn policy(name: &str, trunks: &[String], bots: &str) -> FallbackPolicy {
    let half = trunks.len().div_ceil(2);
    let targets = |ts: &[String]| ts.iter().map(|t| json!({ "trunk": t })).collect::<Vec<_>>();
    serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": { "name": name },
        "spec": {
            "routingConfigMap": { "name": format!("{name}-routing") },
            "expectedConcurrentCalls": 10,
            "regions": [{ "name": "north", "weight": 50 }, { "name": "south", "weight": 50 }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": targets(&trunks[..half]) },
                { "name": "mobile", "targets": targets(&trunks[half..]) },
                { "name": "bots", "targets": [{ "botPool": bots }] },
            ]}],
        },
    }))
    .expect("policy")
}

async fn create_all<K>(api: Api<K>, objects: Vec<K>)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("create objects");
}

/// Create the namespaces and every object in them; the flip Trunks and policy go to
/// the first namespace.
async fn populate(client: &Client, sizes: &Sizes) -> Vec<TestNamespace> {
    let namespaces: Vec<TestNamespace> =
        futures::stream::iter(0..sizes.namespaces)
            .map(|i| async move {
                TestNamespace::create(client.clone(), &format!("scale-{i}"), &[]).await
            })
            .buffer_unordered(8)
            .collect()
            .await;
    let started = Instant::now();
    for (i, ns) in namespaces.iter().enumerate() {
        let share =
            |total: usize| total / sizes.namespaces + usize::from(i < total % sizes.namespaces);
        let (trunks, policies, pools) = (
            share(sizes.trunks),
            share(sizes.policies),
            share(sizes.pools),
        );
        let names: Vec<String> = (0..trunks).map(|t| format!("trunk-{t}")).collect();
        let objects = names
            .iter()
            .enumerate()
            .map(|(t, name)| {
                let user = format!("n{i}t{t}");
                let region = if t % 2 == 0 { "north" } else { "south" };
                trunk(name, region, &endpoint(&user, i * 7919 + t), false)
            })
            .collect();
        create_all(ns.api::<Trunk>(), objects).await;
        create_all(
            ns.api::<BotPool>(),
            (0..pools).map(|p| pool(&format!("bots-{p}"))).collect(),
        )
        .await;
        let per_policy = trunks / policies;
        create_all(
            ns.api::<FallbackPolicy>(),
            (0..policies)
                .map(|q| {
                    let slice = &names[q * per_policy..(q + 1) * per_policy];
                    policy(
                        &format!("policy-{q}"),
                        slice,
                        &format!("bots-{}", q % pools),
                    )
                })
                .collect(),
        )
        .await;
    }
    let first = &namespaces[0];
    create_all(
        first.api::<Trunk>(),
        vec![
            trunk("flip-a", "north", &endpoint(FLIP_USER, 0), true),
            trunk("flip-b", "north", &endpoint("flip-standby", 1), true),
        ],
    )
    .await;
    create_all(
        first.api::<FallbackPolicy>(),
        vec![policy(
            "flip",
            &["flip-a".into(), "flip-b".into()],
            "bots-0",
        )],
    )
    .await;
    println!(
        "scale: created {} Trunks, {} BotPools, {} FallbackPolicies in {} namespaces in {:.1} s",
        sizes.trunks + 2,
        sizes.pools,
        sizes.policies + 1,
        sizes.namespaces,
        started.elapsed().as_secs_f64()
    );
    namespaces
}

// ---------------------------------------------------------------------------------
// Observation

/// A routing ConfigMap as `(namespace/name, dispatcher list)`.
fn routing(cm: &ConfigMap) -> (String, String) {
    let key = format!("{}/{}", cm.namespace().unwrap_or_default(), cm.name_any());
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("dispatcher.list").cloned())
        .unwrap_or_default();
    (key, text)
}

fn endpoint_state(trunk: &Trunk) -> EndpointState {
    trunk
        .status
        .as_ref()
        .and_then(|s| s.endpoints.first().map(|e| e.state))
        .unwrap_or_default()
}

/// `apiserver_request_total` summed by (verb, resource), watches left out.
async fn apiserver_requests(client: &Client) -> BTreeMap<(String, String), f64> {
    apiserver_series(client, "apiserver_request_total").await
}

/// One line per (verb, resource) and count, after `who` and before `why`.
fn print_rows(who: &str, rows: &[(&(String, String), &f64)], why: &str) {
    for ((verb, resource), n) in rows {
        println!("  {who}{verb:<7} {resource:<40} {n}{why}");
    }
}

/// The value of label `name` in a Prometheus label set (`{a="x",b="y"}`), or "".
fn label(labels: &str, name: &str) -> String {
    labels
        .split(&format!("{name}=\""))
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_default()
        .to_string()
}

/// The operator's `lifeline_api_requests_total` by (verb, resource), watches left out.
fn operator_requests(text: &str) -> BTreeMap<(String, String), f64> {
    requests_by_verb(text, "lifeline_api_requests_total")
}

/// One series family of the API server's `/metrics`, as [`requests_by_verb`] sums it.
async fn apiserver_series(client: &Client, family: &str) -> BTreeMap<(String, String), f64> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.expect("apiserver /metrics");
    requests_by_verb(&text, family)
}

/// A request series family (`family{labels} value` lines, with `verb` and `resource`
/// labels and perhaps `subresource`) summed by (verb, resource[/subresource]), watches
/// and connections left out. The API server's verbs are upper case, the operator's
/// audit verbs lower case (its resource already carries `/status`).
fn requests_by_verb(text: &str, family: &str) -> BTreeMap<(String, String), f64> {
    let prefix = format!("{family}{{");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| label(labels, name);
        let verb = label("verb");
        if verb.eq_ignore_ascii_case("watch") || verb.eq_ignore_ascii_case("connect") {
            continue;
        }
        let resource = match label("subresource").as_str() {
            "" => label("resource"),
            sub => format!("{}/{sub}", label("resource")),
        };
        *out.entry((verb, resource)).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// The API server's request counts and mean latencies by (verb, resource), to compare
/// two moments with [`ApiLoad::report`].
struct ApiLoad {
    count: BTreeMap<(String, String), f64>,
    seconds: BTreeMap<(String, String), f64>,
}

impl ApiLoad {
    async fn read(client: &Client) -> Self {
        Self {
            count: apiserver_series(client, "apiserver_request_duration_seconds_count").await,
            seconds: apiserver_series(client, "apiserver_request_duration_seconds_sum").await,
        }
    }

    /// What every client asked of the API server since `self`: the busiest (verb,
    /// resource) pairs with their mean latency, so that a slow phase can be told apart
    /// as the plane's (every request slow) or the operator's.
    fn report(&self, after: &Self, what: &str, secs: f64) {
        let count = delta(&self.count, &after.count);
        let seconds = delta(&self.seconds, &after.seconds);
        let total: f64 = count.values().sum();
        let mut busiest: Vec<_> = count.iter().collect();
        busiest.sort_by(|a, b| b.1.total_cmp(a.1));
        println!(
            "  API server during {what} ({secs:.1} s, every client): {total} requests ({:.0}/s); busiest, with mean latency:",
            total / secs.max(0.001)
        );
        for (key, n) in busiest.into_iter().take(8) {
            let mean = seconds.get(key).copied().unwrap_or(0.0) / n * 1000.0;
            println!("    {:<7} {:<32} {n:>7} {mean:>8.1} ms", key.0, key.1);
        }
    }
}

fn delta(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
) -> BTreeMap<(String, String), f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold blanks) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------

async fn run(sizes: Sizes) {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    settle_deletions(&client).await;
    let silenced: Silenced = Arc::default();
    let flip_probes = ArrivalLog::of(FLIP_USER);
    start_responders(&silenced, &flip_probes);
    let namespaces = populate(&client, &sizes).await;
    let policies_total = sizes.policies + 1;

    let mut cm_rx = timestamped(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=lifeline"),
    );
    let mut trunk_rx = timestamped(
        namespaces[0].api::<Trunk>(),
        watcher::Config::default().fields("metadata.name=flip-a"),
    );

    // The operator, cluster-wide. Leader election is off unless SCALE_LEADER_ELECTION=1:
    // under the start-up burst its Lease renewals time out (they share the client and
    // the API server with it) and the replica stops writing, which would leave nothing
    // to measure; the targets are about the controllers.
    let leader_election = std::env::var("SCALE_LEADER_ELECTION").as_deref() == Ok("1");
    let addr = format!("127.0.0.1:{}", common::free_port("127.0.0.1"));
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scale-operator.log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lifeline"));
    cmd.args(["operator", "--metrics-addr", &addr])
        .args(if leader_election {
            vec!["--leader-election-namespace", namespaces[0].name.as_str()]
        } else {
            vec!["--no-leader-election"]
        })
        .args(["--probe-allow", "127.0.0.0/8"])
        .env("KUBECONFIG", common::kubeconfig_path())
        // SCALE_OPERATOR_LOG (a RUST_LOG filter) turns on more of the operator's log,
        // e.g. to time its start-up phases; the figures then include the logging.
        .env(
            "RUST_LOG",
            std::env::var("SCALE_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("NO_COLOR", "1");
    let load_before = ApiLoad::read(&client).await;
    let started = Instant::now();
    let mut operator = Operator::spawn("operator", &mut cmd, &addr, Some(&log));
    let pid = operator.process.id();
    println!("scale: operator pid {pid}, log {}", log.display());
    let peak_rss = Arc::new(Mutex::new(0.0f64));
    {
        let peak = peak_rss.clone();
        std::thread::spawn(move || {
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let r = rss_mib(pid);
                let mut p = peak.lock().unwrap();
                *p = p.max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }

    // 1. Every policy's routing written, then settled.
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut latest: HashMap<String, String> = HashMap::new();
    let deadline = started + Duration::from_secs(env_num("SCALE_WRITE_DEADLINE_SECS", 300) as u64);
    while first_seen.len() < policies_total {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, cm_rx.recv()).await;
        let Ok(Some((at, cm))) = next else {
            operator.process.assert_running();
            assert!(next.is_err(), "the ConfigMap watch ended");
            break;
        };
        let (key, text) = routing(&cm);
        first_seen.entry(key.clone()).or_insert(at);
        latest.insert(key, text);
    }
    if first_seen.len() < policies_total {
        // Not met: say so with what there is, and still measure memory and the API
        // requests of the state it is in (they explain why).
        println!(
            "scale: only {} of {policies_total} policies' routing written {:.0} s after the operator started (target: all within 30 s); RSS {:.1} MiB",
            first_seen.len(),
            started.elapsed().as_secs_f64(),
            rss_mib(pid)
        );
        report_quiet_and_memory(&client, &operator, pid, &peak_rss, sizes.quiet, &mut cm_rx).await;
        return;
    }
    let all_written = first_seen.values().max().copied().unwrap_or(started) - started;
    let mut firsts: Vec<f64> = first_seen
        .values()
        .map(|at| (*at - started).as_secs_f64())
        .collect();
    firsts.sort_by(f64::total_cmp);
    println!(
        "scale: routing written, seconds after the operator started: first {:.2}, half {:.2}, 90 % {:.2}",
        firsts[0],
        firsts[firsts.len() / 2],
        firsts[firsts.len() * 9 / 10],
    );
    println!(
        "scale: every policy's routing written {:.2} s after the operator started (target < 30 s: ratio {:.2})",
        all_written.as_secs_f64(),
        all_written.as_secs_f64() / 30.0
    );
    load_before.report(
        &ApiLoad::read(&client).await,
        "the start",
        started.elapsed().as_secs_f64(),
    );
    // The operator's own requests since it started (its counters start at 0): reads
    // should be only the first list of each watch, no get inside a reconcile.
    if let Some(text) = operator.scrape().await {
        let own = operator_requests(&text);
        let line: Vec<String> = own
            .iter()
            .map(|((verb, resource), n)| format!("{verb} {resource} {n}"))
            .collect();
        let gets = own
            .iter()
            .filter(|((verb, resource), _)| verb == "get" && !resource.starts_with("leases"))
            .fold(0.0, |sum, (_, n)| sum + n);
        println!(
            "  the operator's own requests so far (watches left out; {gets} get beside leader election's Lease): {}",
            line.join(", ")
        );
    }
    let mut last_change = Instant::now();
    let mut changes = 0usize;
    let settle_deadline = Instant::now() + Duration::from_secs(180);
    while let Ok(Some((at, cm))) = tokio::time::timeout(Duration::from_secs(5), cm_rx.recv()).await
    {
        let (key, text) = routing(&cm);
        if latest.get(&key) != Some(&text) {
            last_change = at;
            changes += 1;
            latest.insert(key, text);
        }
        if Instant::now() > settle_deadline {
            println!("scale: routing still changing after 180 s");
            break;
        }
    }
    println!(
        "scale: routing settled {:.2} s after start ({changes} rewrites after the first writes); RSS now {:.1} MiB",
        (last_change - started).as_secs_f64(),
        rss_mib(pid)
    );
    let flip_key = format!("{}/flip-routing", namespaces[0].name);
    let healthy_flip =
        weighted_set1(latest.get(&flip_key).map(String::as_str).unwrap_or("")).join(",");
    assert_eq!(
        healthy_flip,
        endpoint(FLIP_USER, 0),
        "the flip policy routes to flip-a once it is Up"
    );

    // 2. Trunk status -> routing ConfigMap, under that load: first while the operator
    // still writes the first Trunk statuses (the start-up burst), then again once they
    // are written (the steady state: 10,000 Trunks probed, nothing else writing).
    let flips = Flips {
        sizes: &sizes,
        silenced: &silenced,
        probes: &flip_probes,
        flip_key: &flip_key,
    };
    flips
        .measure(
            "during the first Trunk status writes",
            &mut cm_rx,
            &mut trunk_rx,
        )
        .await;

    // 3. Quiet steady state (once every decided Trunk status is written); 4. memory.
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let backlog = operator.metric("lifeline_status_writes_pending").await;
        if backlog == Some(0.0) {
            break;
        }
        if Instant::now() > drain_deadline {
            println!("scale: Trunk status backlog still {backlog:?} after 600 s");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "scale: every decided Trunk status written {:.1} s after the operator started; RSS now {:.1} MiB",
        started.elapsed().as_secs_f64(),
        rss_mib(pid)
    );
    flips
        .measure("in the steady state", &mut cm_rx, &mut trunk_rx)
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    report_quiet_and_memory(&client, &operator, pid, &peak_rss, sizes.quiet, &mut cm_rx).await;
    operator.process.assert_running();
    drop(operator);
    println!("scale: deleting {} namespaces", namespaces.len());
    drop(namespaces);
}

/// Wait (at most 5 minutes) until no namespace is being deleted: the last run's 10,000
/// Trunks take the API server minutes to remove, and a run that starts meanwhile
/// measures that work, not the operator.
async fn settle_deletions(client: &Client) {
    use k8s_openapi::api::core::v1::Namespace;
    let api = Api::<Namespace>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut said = false;
    loop {
        let terminating = match api.list(&Default::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|ns| ns.metadata.deletion_timestamp.is_some())
                .count(),
            Err(_) => 0,
        };
        if terminating == 0 {
            return;
        }
        if Instant::now() > deadline {
            println!(
                "scale: {terminating} namespaces still being deleted after 300 s; measuring anyway"
            );
            return;
        }
        if !said {
            println!("scale: waiting for {terminating} namespaces of an earlier run to be deleted");
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One Trunk (`flip-a`) flipped Down and Up by silencing its responder, and the policy
/// naming it (`flip-routing`) watched for the rewritten routing.
struct Flips<'a> {
    sizes: &'a Sizes,
    silenced: &'a Silenced,
    probes: &'a ArrivalLog,
    flip_key: &'a str,
}

impl Flips<'_> {
    /// Flip `sizes.flips` times Down and Up; print verdict -> routing ConfigMap p50/p99
    /// and when the Trunk status reached a watch, labelled with `phase`.
    async fn measure(
        &self,
        phase: &str,
        cm_rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, ConfigMap)>,
        trunk_rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, Trunk)>,
    ) {
        let mut latencies = Vec::new();
        let mut status_times = Vec::new();
        // The status write relative to the routing write (ms; negative: the status first).
        let mut status_vs_routing = Vec::new();
        for i in 0..self.sizes.flips * 2 {
            let down = i % 2 == 0;
            tokio::time::sleep(Duration::from_millis(300)).await;
            while cm_rx.try_recv().is_ok() {}
            while trunk_rx.try_recv().is_ok() {}
            self.probes.clear();
            let flipped = Instant::now();
            {
                let mut s = self.silenced.write().unwrap();
                if down {
                    s.insert(FLIP_USER.to_string());
                } else {
                    s.remove(FLIP_USER);
                }
            }
            let want_state = if down {
                EndpointState::Down
            } else {
                EndpointState::Up
            };
            let status_at = loop {
                let (at, trunk) = tokio::time::timeout(Duration::from_secs(20), trunk_rx.recv())
                    .await
                    .expect("flip-a status within 20 s")
                    .expect("trunk watch alive");
                if endpoint_state(&trunk) == want_state {
                    break at;
                }
            };
            let want = if down {
                endpoint("flip-standby", 1)
            } else {
                endpoint(FLIP_USER, 0)
            };
            let routed_at = loop {
                let (at, cm) = tokio::time::timeout(Duration::from_secs(20), cm_rx.recv())
                    .await
                    .expect("routing rewritten within 20 s")
                    .expect("ConfigMap watch alive");
                let (key, text) = routing(&cm);
                if key == self.flip_key && weighted_set1(&text) == [want.as_str()] {
                    break at;
                }
            };
            // The verdict: the first probe after the flip, answered (Up) or timed out
            // (Down: the flip Trunk's timeout is 200 ms, thresholds 1).
            let first = self
                .probes
                .first_since(flipped)
                .expect("a probe of flip-a after the flip");
            assert_eq!(first.answered, !down, "flip {i}: the probe saw the flip");
            let verdict_at = if down {
                first.at + Duration::from_millis(200)
            } else {
                first.at
            };
            status_times.push(status_at.saturating_duration_since(verdict_at));
            latencies.push(routed_at.saturating_duration_since(verdict_at));
            status_vs_routing.push(if status_at >= routed_at {
                ms(status_at - routed_at)
            } else {
                -ms(routed_at - status_at)
            });
        }
        latencies.sort();
        status_times.sort();
        status_vs_routing.sort_by(f64::total_cmp);
        if !latencies.is_empty() {
            // The policy plans from the verdict this process decided, not from the written
            // status: the figure is verdict -> routing ConfigMap (the target's "Trunk
            // status" is the verdict; its write is reported beside it).
            println!(
                "scale: Trunk probe verdict -> routing ConfigMap {phase} ({} transitions): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (target p99 < 50 ms: ratio {:.2})",
                latencies.len(),
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.99)),
                ms(*latencies.last().unwrap()),
                ms(percentile(&latencies, 0.99)) / 50.0,
            );
            let n = status_vs_routing.len();
            println!(
                "  the Trunk status reached a watch {:.1} ms (p50) / {:.1} ms (p99) after the verdict; relative to the routing ConfigMap: p50 {:+.1} ms, p99 {:+.1} ms (+ = after)",
                ms(percentile(&status_times, 0.5)),
                ms(percentile(&status_times, 0.99)),
                status_vs_routing[n / 2],
                status_vs_routing[((n - 1) as f64 * 0.99).round() as usize],
            );
        }
    }
}

/// A quiet window: API requests by verb and resource, the operator's probes, writes and
/// CPU; then its memory.
async fn report_quiet_and_memory(
    client: &Client,
    operator: &Operator,
    pid: u32,
    peak_rss: &Mutex<f64>,
    quiet: Duration,
    cm_rx: &mut tokio::sync::mpsc::UnboundedReceiver<(Instant, ConfigMap)>,
) {
    while cm_rx.try_recv().is_ok() {}
    let api_before = apiserver_requests(client).await;
    let op_before = operator.scrape().await.unwrap_or_default();
    let cpu_before = cpu_seconds(pid);
    let quiet_start = Instant::now();
    tokio::time::sleep(quiet).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let quiet_secs = quiet_start.elapsed().as_secs_f64();
    let api_after = apiserver_requests(client).await;
    let op_after = operator.scrape().await.unwrap_or_default();
    let mut cm_changes = 0;
    while cm_rx.try_recv().is_ok() {
        cm_changes += 1;
    }
    let requests = delta(&api_before, &api_after);
    // The bench's own two /metrics GETs are not resource requests; leases and nodes are
    // leader election and the kubelet's heartbeat.
    let (apart, ours): (Vec<_>, Vec<_>) = requests
        .iter()
        .partition(|((_, r), _)| r.starts_with("leases") || r.starts_with("nodes"));
    // Both the API server's verbs (upper case) and the operator's audit verbs.
    let is_write = |v: &str| {
        matches!(
            v.to_ascii_uppercase().as_str(),
            "POST"
                | "PUT"
                | "PATCH"
                | "APPLY"
                | "DELETE"
                | "DELETECOLLECTION"
                | "CREATE"
                | "UPDATE"
        )
    };
    // Folded from +0.0: an empty float sum is -0.0.
    let count = |rows: &[(&(String, String), &f64)], write: bool| -> f64 {
        rows.iter()
            .filter(|((v, _), _)| is_write(v) == write)
            .fold(0.0, |sum, (_, n)| sum + **n)
    };
    if op_after.contains("lifeline_api_requests_total") {
        // The operator's own count is the verdict: the API server's counts below include
        // the controller manager (it re-reads discovery, `/api` and `/apis`, every 30 s).
        let own = delta(
            &operator_requests(&op_before),
            &operator_requests(&op_after),
        );
        // Leader election (`SCALE_LEADER_ELECTION=1`) renews its Lease: listed apart.
        let (lease, own): (Vec<_>, Vec<_>) =
            own.iter().partition(|((_, r), _)| r.starts_with("leases"));
        println!(
            "scale: quiet window of {quiet_secs:.0} s: the operator sent {} writes and {} non-watch reads (its own lifeline_api_requests_total; target 0 and 0); routing ConfigMap changes seen {cm_changes}",
            count(&own, true),
            count(&own, false),
        );
        print_rows("operator ", &own, "");
        print_rows("operator ", &lease, "  (leader election)");
    } else {
        println!(
            "scale: quiet window of {quiet_secs:.0} s: this operator does not export lifeline_api_requests_total, only the API server's counts below; routing ConfigMap changes seen {cm_changes}"
        );
    }
    println!(
        "  API server, every client (the controller manager and the testenv kubelet too): {} writes, {} non-watch reads",
        count(&ours, true),
        count(&ours, false),
    );
    print_rows("", &ours, "");
    print_rows("", &apart, "  (leader election / kubelet heartbeat)");
    let family = |text: &str, name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    if op_after.contains("lifeline_api_requests_total") {
        println!(
            "  operator's own count, watches included: lifeline_api_requests_total +{}",
            family(&op_after, "lifeline_api_requests_total")
                - family(&op_before, "lifeline_api_requests_total")
        );
    }
    let probes = sample(&op_after, "lifeline_probes_sent_total").unwrap_or(0.0)
        - sample(&op_before, "lifeline_probes_sent_total").unwrap_or(0.0);
    let cm_writes = sample(&op_after, "lifeline_configmap_writes_total").unwrap_or(0.0)
        - sample(&op_before, "lifeline_configmap_writes_total").unwrap_or(0.0);
    println!(
        "  operator: {:.0} probes/s, configmap_writes +{cm_writes}, CPU {:.1} % of one core",
        probes / quiet_secs,
        cpu / quiet_secs * 100.0
    );

    // 4. Memory.
    let rss = rss_mib(pid);
    let peak = *peak_rss.lock().unwrap();
    println!(
        "scale: operator RSS {rss:.1} MiB at the end, peak {peak:.1} MiB (target < 128 MiB: ratio {:.2})",
        peak / 128.0
    );
}
