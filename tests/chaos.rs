//! Chaos suite: our own lifecycle must not move a call. Each case runs real operator
//! processes (`lifeline operator`, leader election on) against the testenv control
//! plane with a steady workload — four trunks in two regions (fixed line with one
//! endpoint Up and one Down, a mobile standby tier Up), two bot pools run by the
//! fake kubelet, and a policy routing both — and asserts what a user would check:
//! routing ConfigMap writes, Trunk endpoints regressing to `Unknown`, Warning events,
//! bot replicas, and who writes when.
//!
//! SIP peers are sipp processes on 127.0.7x.y answering OPTIONS. The API faults use a
//! TCP proxy written here (loopback) between an operator and the API server: it can
//! blackhole (a partition: nothing flows, connections hang) or refuse (the API server
//! is down: connections close at once). Only the operator under test is cut off; the
//! control plane and the other tests keep running.
//!
//! Run: `cargo test --test chaos -- --nocapture` (prints the figures).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::operator::Operator;
use common::sip::sipp_options;
use common::{Process, TestNamespace, eventually};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use lifeline::crd::{BotPool, EndpointState, FallbackPolicy, RegionState, Trunk};
use serde_json::json;

/// Lease duration of the operators under test (renew deadline 4 s, retry 1 s).
const LEASE_SECONDS: u64 = 6;
const WAIT: Duration = Duration::from_secs(60);
/// Probe settings of the workload's trunks.
const PROBE_PERIOD: u64 = 1;
const FAILURE_THRESHOLD: u64 = 3;

// ---------------------------------------------------------------------------------
// Processes

/// One `lifeline operator` replica with its metrics on `ip:19180`, talking to the API
/// server through `kubeconfig` (directly, or through a test's proxy).
fn start_operator(ns: &str, identity: &str, ip: &str, kubeconfig: &Path) -> Operator {
    let addr = format!("{ip}:19180");
    let mut cmd = common::operator::command(ns, &addr);
    cmd.args(["--leader-election-namespace", ns, "--identity", identity])
        .args(["--lease-duration-seconds", &LEASE_SECONDS.to_string()])
        .env("KUBECONFIG", kubeconfig)
        // Events then name the replica that reported them.
        .env("POD_NAME", identity)
        .env("RUST_LOG", "info,kube=warn");
    let log = format!(
        "{}/target/chaos-{ns}-{identity}.log",
        env!("CARGO_MANIFEST_DIR")
    );
    Operator::spawn(identity, &mut cmd, &addr, Some(Path::new(&log)))
}

// ---------------------------------------------------------------------------------
// A TCP proxy between one operator and the API server

const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;
const REFUSE: u8 = 2;

/// Forwards `listen → upstream` while in `PASS`; in `BLACKHOLE` nothing moves (open
/// connections hang, new ones are accepted and left waiting: a network partition); in
/// `REFUSE` every connection is closed at once (the API server is down). Stops with
/// its runtime (the test's), so nothing outlives the test.
struct Proxy {
    mode: Arc<AtomicU8>,
    port: u16,
    kubeconfig: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(name: &str) -> Self {
        let kubeconfig = std::fs::read_to_string(common::kubeconfig_path()).unwrap();
        let server = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("server in kubeconfig")
            .to_string();
        let upstream = server.trim_start_matches("https://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig.replace(&server, &format!("https://127.0.0.1:{port}")),
        )
        .unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mode = m.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if mode.load(Ordering::SeqCst) == REFUSE {
                        return;
                    }
                    while mode.load(Ordering::SeqCst) == BLACKHOLE {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, mode.clone()) => {}
                        _ = pump(sr, cw, mode.clone()) => {}
                    }
                });
            }
        });
        Self {
            mode,
            port,
            kubeconfig: path,
            task,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.kubeconfig);
        let _ = self.port;
    }
}

/// Copy one direction, honouring the mode before every chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            match mode.load(Ordering::SeqCst) {
                PASS => break,
                REFUSE => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            // Re-check the mode while waiting for data.
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        // Data read while passing: hold it through a blackhole, drop it on refuse.
        loop {
            match mode.load(Ordering::SeqCst) {
                PASS => break,
                REFUSE => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------
// The steady workload

/// Addresses of one case's SIP peers: 127.0.<net>.1-4 answer, .9 never does.
struct Workload {
    ns: TestNamespace,
    peers: Vec<Process>,
    net: u8,
}

impl Workload {
    fn ip(&self, host: u8) -> String {
        format!("127.0.{}.{host}", self.net)
    }

    async fn start(client: Client, prefix: &str, net: u8) -> Self {
        common::install_crds(&client).await;
        let ns = TestNamespace::create(
            client,
            prefix,
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await;
        let peers = (1..=4)
            .map(|h| sipp_options(200, &format!("127.0.{net}.{h}"), 5060, "u1"))
            .collect();
        let w = Self { ns, peers, net };
        // Margins for a loaded machine: a live peer on loopback answers in
        // milliseconds, so only a dead one misses three 800 ms timeouts in a row.
        let probe = json!({ "periodSeconds": PROBE_PERIOD, "timeoutMillis": 800,
                            "failureThreshold": FAILURE_THRESHOLD, "successThreshold": 2 });
        let trunks = [
            ("fixed-cgn", "cologne", "FixedLine", vec![w.ip(1), w.ip(9)]),
            ("mobile-cgn", "cologne", "Mobile", vec![w.ip(2)]),
            ("fixed-ber", "berlin", "FixedLine", vec![w.ip(3)]),
            ("mobile-ber", "berlin", "Mobile", vec![w.ip(4)]),
        ];
        for (name, region, medium, ips) in trunks {
            let endpoints: Vec<_> = ips
                .iter()
                .map(|ip| json!({ "uri": format!("sip:{ip}:5060") }))
                .collect();
            w.ns.create_from::<Trunk>(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
                "metadata": { "name": name },
                "spec": { "region": region, "medium": medium, "endpoints": endpoints,
                          "capacity": { "maxConcurrentCalls": 30 }, "probe": probe },
            }))
            .await;
        }
        for (name, region) in [("bots-cgn", "cologne"), ("bots-ber", "berlin")] {
            w.ns.create_from::<BotPool>(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "BotPool",
                "metadata": { "name": name },
                "spec": { "region": region, "image": "registry.example.net/voice-bot:1.0",
                          "callsPerReplica": 10, "replicas": { "min": 1, "max": 4 },
                          "scaling": { "scaleDownStabilizationSeconds": 5 } },
            }))
            .await;
        }
        w.ns.create_from::<FallbackPolicy>(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
            "metadata": { "name": "main" },
            "spec": {
                "routingConfigMap": { "name": "routing" },
                "expectedConcurrentCalls": 20,
                "regions": [ { "name": "cologne", "weight": 60 }, { "name": "berlin", "weight": 40 } ],
                "routes": [
                    { "name": "inbound", "setId": 1, "tiers": [
                        { "name": "fixed", "targets": [ { "trunk": "fixed-cgn" }, { "trunk": "fixed-ber" } ] },
                        { "name": "mobile", "targets": [ { "trunk": "mobile-cgn" }, { "trunk": "mobile-ber" } ] } ] },
                    { "name": "bots", "setId": 2, "tiers": [
                        { "name": "bots", "targets": [ { "botPool": "bots-cgn" }, { "botPool": "bots-ber" } ] } ] }
                ],
                "failover": { "failAfterSeconds": 2, "recoverAfterSeconds": 5 }
            },
        }))
        .await;
        w
    }

    /// Endpoint states by URI, over every Trunk (missing status counts as Unknown).
    async fn endpoint_states(&self) -> Option<BTreeMap<String, EndpointState>> {
        let trunks = self
            .ns
            .api::<Trunk>()
            .list(&ListParams::default())
            .await
            .ok()?;
        let mut out = BTreeMap::new();
        for t in trunks {
            for e in &t.spec.endpoints {
                let state = t
                    .status
                    .as_ref()
                    .and_then(|s| s.endpoints.iter().find(|x| x.uri == e.uri))
                    .map(|x| x.state)
                    .unwrap_or(EndpointState::Unknown);
                out.insert(e.uri.clone(), state);
            }
        }
        Some(out)
    }

    async fn routing(&self) -> Option<ConfigMap> {
        self.ns.api::<ConfigMap>().get_opt("routing").await.ok()?
    }

    async fn policy(&self) -> FallbackPolicy {
        self.ns.api::<FallbackPolicy>().get("main").await.unwrap()
    }

    async fn replicas(&self) -> BTreeMap<String, Option<i32>> {
        let mut out = BTreeMap::new();
        for name in ["bots-cgn", "bots-ber"] {
            let d = self
                .ns
                .api::<Deployment>()
                .get_opt(name)
                .await
                .ok()
                .flatten();
            out.insert(name.to_string(), d.and_then(|d| d.spec?.replicas));
        }
        out
    }

    /// The steady state every case starts from: the fixed line's first endpoint Up,
    /// its second Down, every other line Up, both regions Active, bots ready, routing
    /// published, and no routing write for 5 s.
    async fn wait_steady(&self) {
        let (a, dead) = (
            format!("sip:{}:5060", self.ip(1)),
            format!("sip:{}:5060", self.ip(9)),
        );
        eventually(WAIT, "steady workload", || async {
            let states = self.endpoint_states().await?;
            let ok = states.iter().all(|(uri, s)| {
                if *uri == dead {
                    *s == EndpointState::Down
                } else {
                    *s == EndpointState::Up
                }
            });
            if !ok || !states.contains_key(&a) {
                return None;
            }
            let policy = self.policy().await;
            let status = policy.status?;
            let active = status.regions.len() == 2
                && status
                    .regions
                    .iter()
                    .all(|r| r.state == RegionState::Active);
            let pools = self
                .ns
                .api::<BotPool>()
                .list(&ListParams::default())
                .await
                .ok()?;
            let ready = pools
                .iter()
                .all(|p| p.status.as_ref().is_some_and(|s| s.ready_replicas >= 1));
            let cm = self.routing().await?;
            let published = status.config_map_hash.as_deref()
                == cm
                    .annotations()
                    .get("lifeline.dev/content-hash")
                    .map(String::as_str);
            (active && ready && published).then_some(())
        })
        .await;
        // Quiet: nothing more to write.
        let mut version = self.routing().await.and_then(|c| c.resource_version());
        let mut quiet_since = Instant::now();
        let deadline = Instant::now() + WAIT;
        while quiet_since.elapsed() < Duration::from_secs(5) {
            assert!(Instant::now() < deadline, "routing never quiet for 5 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let v = self.routing().await.and_then(|c| c.resource_version());
            if v != version {
                version = v;
                quiet_since = Instant::now();
            }
        }
    }

    /// lifeline's Warning events, and FailOpen/Failback events, created after `since`
    /// (by replica `by`, when given). Other controllers' events (the control plane's
    /// complaints about the fake kubelet's loopback pod IPs) are not ours.
    async fn pages_since(&self, since: jiff::Timestamp, by: Option<&str>) -> Vec<String> {
        let events = self
            .ns
            .api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap();
        events
            .items
            .iter()
            .filter(|e| {
                e.metadata
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|t| t.0 >= since)
            })
            .filter(|e| e.reporting_controller.as_deref() == Some("lifeline"))
            .filter(|e| by.is_none() || e.reporting_instance.as_deref() == by)
            .filter(|e| {
                e.type_.as_deref() == Some("Warning")
                    || matches!(e.reason.as_deref(), Some("FailOpen" | "Failback"))
            })
            .map(|e| {
                format!(
                    "{} {}: {}",
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.note.clone().unwrap_or_default()
                )
            })
            .collect()
    }
}

/// Counts what happens while a fault plays out: routing ConfigMap writes (from a
/// watch, so none is missed), and samples (every 100 ms) of endpoints that are not in
/// their steady state, of Unknown endpoints and of instants with two leaders.
struct Sampler {
    writes: Arc<AtomicU32>,
    unknown: Arc<AtomicU32>,
    two_leaders: Arc<AtomicU32>,
    samples: Arc<AtomicU32>,
    stop: tokio_util::sync::CancellationToken,
}

impl Sampler {
    async fn start(w: &Workload, operators: Vec<String>) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let writes = Arc::new(AtomicU32::new(0));
        let start_version = w.routing().await.and_then(|c| c.resource_version());
        let api = w.ns.api::<ConfigMap>();
        let (s, counter) = (stop.clone(), writes.clone());
        tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=routing");
            let mut stream = watcher(api, config).applied_objects().boxed();
            let mut last = start_version;
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    next = stream.next() => match next {
                        Some(Ok(cm)) => {
                            if cm.resource_version() != last {
                                last = cm.resource_version();
                                counter.fetch_add(1, Ordering::SeqCst);
                                eprintln!("routing written: {:?}", cm.annotations().get("lifeline.dev/content-hash"));
                            }
                        }
                        Some(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                        None => return,
                    }
                }
            }
        });
        let unknown = Arc::new(AtomicU32::new(0));
        let two_leaders = Arc::new(AtomicU32::new(0));
        let samples = Arc::new(AtomicU32::new(0));
        let trunks = w.ns.api::<Trunk>();
        let (s, u, t, n) = (
            stop.clone(),
            unknown.clone(),
            two_leaders.clone(),
            samples.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            while !s.is_cancelled() {
                if let Ok(list) = trunks.list(&ListParams::default()).await {
                    let unknown = list
                        .iter()
                        .flat_map(|t| {
                            let published = t.status.as_ref().map(|s| s.endpoints.clone());
                            t.spec.endpoints.iter().map(move |e| {
                                published
                                    .as_ref()
                                    .and_then(|p| p.iter().find(|x| x.uri == e.uri))
                                    .map(|x| x.state)
                                    .unwrap_or(EndpointState::Unknown)
                            })
                        })
                        .filter(|s| *s == EndpointState::Unknown)
                        .count();
                    u.fetch_add(unknown as u32, Ordering::SeqCst);
                }
                let mut leaders = 0;
                for url in &operators {
                    if let Ok(r) = http.get(url).send().await
                        && let Ok(text) = r.text().await
                        && text.lines().any(|l| l.trim() == "lifeline_leader 1")
                    {
                        leaders += 1;
                    }
                }
                if leaders > 1 {
                    t.fetch_add(1, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            writes,
            unknown,
            two_leaders,
            samples,
            stop,
        }
    }

    fn writes(&self) -> u32 {
        self.writes.load(Ordering::SeqCst)
    }
    fn unknown(&self) -> u32 {
        self.unknown.load(Ordering::SeqCst)
    }
    fn two_leaders(&self) -> u32 {
        self.two_leaders.load(Ordering::SeqCst)
    }
    fn samples(&self) -> u32 {
        self.samples.load(Ordering::SeqCst)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn leader_of<'a>(ops: &'a [&'a Operator]) -> &'a Operator {
    eventually(WAIT, "exactly one operator leads", || async {
        let mut leaders = Vec::new();
        for op in ops {
            if op.is_leader().await? {
                leaders.push(*op);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

/// Stop the leader (`sig`) and measure until the other one leads and 10 s more have
/// passed. Returns the takeover time.
async fn handover(
    w: &Workload,
    leader: &Operator,
    standby: &Operator,
    sig: &str,
    what: &str,
) -> Duration {
    let replicas = w.replicas().await;
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let sampler = Sampler::start(w, vec![leader.metrics_url(), standby.metrics_url()]).await;
    leader.process.signal(sig);
    let stopped = Instant::now();
    eventually(WAIT, "the standby takes over", || async {
        (standby.is_leader().await == Some(true)).then_some(())
    })
    .await;
    let takeover = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pages = w.pages_since(since, None).await;
    eprintln!(
        "{what}: takeover {:.2} s; routing writes {}; Unknown endpoint samples {} of {} samples; \
         two-leader samples {}; pages {pages:?}",
        takeover.as_secs_f64(),
        sampler.writes(),
        sampler.unknown(),
        sampler.samples(),
        sampler.two_leaders(),
    );
    assert_eq!(
        sampler.writes(),
        0,
        "{what}: the routing ConfigMap was rewritten"
    );
    assert_eq!(
        sampler.unknown(),
        0,
        "{what}: endpoints regressed to Unknown"
    );
    assert_eq!(sampler.two_leaders(), 0, "{what}: two leaders at once");
    assert!(pages.is_empty(), "{what}: pages: {pages:?}");
    assert_eq!(w.replicas().await, replicas, "{what}: bot replicas changed");
    takeover
}

// ---------------------------------------------------------------------------------
// The cases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_and_sigterm_move_nothing() {
    let Some(client) = common::client().await else {
        return;
    };
    let w = Workload::start(client, "chaos-handover", 71).await;
    let kubeconfig = common::kubeconfig_path();
    let a = start_operator(&w.ns.name, "op-a", "127.0.71.101", &kubeconfig);
    let b = start_operator(&w.ns.name, "op-b", "127.0.71.102", &kubeconfig);
    w.wait_steady().await;
    let both = [&a, &b];
    let leader = leader_of(&both).await;
    let standby = if leader.name == a.name { &b } else { &a };
    // Let the standby probe for a while: it must be warm, not just started.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let kill = handover(&w, leader, standby, "KILL", "SIGKILL").await;
    assert!(
        kill <= Duration::from_secs(LEASE_SECONDS + 4),
        "takeover within the lease (+ retry): {kill:?}"
    );

    // A rolling upgrade: a new replica joins, the leader gets SIGTERM.
    let c = start_operator(&w.ns.name, "op-c", "127.0.71.103", &kubeconfig);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.is_leader().await, Some(false), "the new replica waits");
    let term = handover(&w, standby, &c, "TERM", "SIGTERM").await;
    assert!(
        term <= Duration::from_secs(3),
        "a released lease is taken at the next poll: {term:?}"
    );

    // A hand edit of the routing data (annotations kept) is reverted within one
    // reconcile: the ConfigMap change itself triggers it.
    let cm = w.routing().await.unwrap();
    let good = cm.data.clone().unwrap()["dispatcher.list"].clone();
    let edited = format!("{good}1 sip:198.51.100.66:5060 0 100 duid=hand-edit\n");
    let started = Instant::now();
    w.ns.api::<ConfigMap>()
        .patch(
            "routing",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "dispatcher.list": edited } })),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "hand edit reverted", || async {
        let now = w.routing().await?.data?.get("dispatcher.list")?.clone();
        (now == good).then_some(())
    })
    .await;
    eprintln!(
        "hand edit of the routing data reverted after {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_writing_before_its_lease_expires() {
    let Some(client) = common::client().await else {
        return;
    };
    let w = Workload::start(client, "chaos-partition", 72).await;
    let proxy = Proxy::start(&format!("partition-{}", w.ns.name)).await;
    // The leader talks to the API through the proxy; the standby directly.
    let mut a = start_operator(&w.ns.name, "op-a", "127.0.72.101", &proxy.kubeconfig);
    eventually(WAIT, "op-a leads", || async {
        (a.is_leader().await == Some(true)).then_some(())
    })
    .await;
    let b = start_operator(
        &w.ns.name,
        "op-b",
        "127.0.72.102",
        &common::kubeconfig_path(),
    );
    w.wait_steady().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a.is_leader().await, Some(true));

    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = w.ns.api();
    let renewed = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.spec
            .as_ref()
            .and_then(|s| Some((s.holder_identity.clone()?, s.renew_time.clone()?.0)))
    };
    let sampler = Sampler::start(&w, vec![a.metrics_url(), b.metrics_url()]).await;
    proxy.set(BLACKHOLE);
    let cut = Instant::now();
    // Follow the Lease (directly): the last renewal by op-a gives its expiry.
    let mut last_renewal = None;
    let mut a_stopped = None;
    let mut b_leads = None;
    while b_leads.is_none() && cut.elapsed() < WAIT {
        if let Ok(l) = leases.get("lifeline-operator").await
            && let Some((holder, at)) = renewed(&l)
            && holder == "op-a"
        {
            last_renewal = Some(at);
        }
        if a_stopped.is_none() && a.is_leader().await == Some(false) {
            a_stopped = Some(jiff::Timestamp::now());
        }
        if b.is_leader().await == Some(true) {
            b_leads = Some(jiff::Timestamp::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (Some(last_renewal), Some(a_stopped), Some(b_leads)) = (last_renewal, a_stopped, b_leads)
    else {
        panic!(
            "partition: renewal {last_renewal:?}, op-a stopped {a_stopped:?}, op-b leads {b_leads:?}"
        );
    };
    let expiry = last_renewal + jiff::SignedDuration::from_secs(LEASE_SECONDS as i64);
    eprintln!(
        "partition: op-a stopped writing {:.2} s after its last renewal (lease {LEASE_SECONDS} s), \
         op-b leads {:.2} s after it; two-leader samples {} of {}; routing writes {}",
        a_stopped.duration_since(last_renewal).as_secs_f64(),
        b_leads.duration_since(last_renewal).as_secs_f64(),
        sampler.two_leaders(),
        sampler.samples(),
        sampler.writes(),
    );
    assert!(
        a_stopped < expiry,
        "op-a stopped at {a_stopped}, its lease expired at {expiry}"
    );
    assert!(a_stopped < b_leads, "op-a stopped after op-b took over");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sampler.two_leaders(), 0, "two replicas wrote at once");
    assert_eq!(sampler.writes(), 0, "the handover rewrote the routing");
    assert!(
        a.process.running(),
        "the partitioned replica must not crash"
    );
    // Healed: op-a stays a standby (the Lease is op-b's).
    proxy.set(PASS);
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS)).await;
    assert_eq!(a.is_leader().await, Some(false));
    assert_eq!(b.is_leader().await, Some(true));
    assert_eq!(
        sampler.two_leaders(),
        0,
        "two replicas wrote at once after healing"
    );
}

/// The API server goes away for `outage` while the fixed line's working endpoint dies.
/// Returns the catch-up time after the API returns.
async fn api_outage(w: &Workload, proxy: &Proxy, op: &mut Operator, outage: Duration) -> Duration {
    let before = w.routing().await.unwrap();
    let text = before.data.clone().unwrap()["dispatcher.list"].clone();
    let dying = format!("sip:{}:5060", w.ip(1));
    assert!(
        routes_to(&text, &dying),
        "steady routing uses {dying}:\n{text}"
    );
    proxy.set(REFUSE);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The carrier dies during the outage (its sipp stops answering).
    let peer_pid = w.peers[0].id().to_string();
    let _ = Command::new("kill").args(["-STOP", &peer_pid]).status();
    let remaining = outage.saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;
    // Meanwhile: the routing is the last known good one (nobody could change it), and
    // the operator is alive.
    assert!(
        op.process.running(),
        "the operator crashed during the API outage"
    );
    assert_eq!(
        w.routing().await.unwrap().resource_version(),
        before.resource_version()
    );
    proxy.set(PASS);
    let back = Instant::now();
    eventually(
        Duration::from_secs(30),
        "routing without the dead carrier",
        || async {
            let text = w.routing().await?.data?.get("dispatcher.list")?.clone();
            (!routes_to(&text, &dying)).then_some(())
        },
    )
    .await;
    let catch_up = back.elapsed();
    assert!(
        op.process.running(),
        "the operator crashed after the API outage"
    );
    // Revive the carrier for the next round.
    let _ = Command::new("kill").args(["-CONT", &peer_pid]).status();
    catch_up
}

/// True when a (non-comment) line of the dispatcher list routes to `uri`.
fn routes_to(text: &str, uri: &str) -> bool {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.split_whitespace().nth(1) == Some(uri))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outages_of_30_and_120_s_with_a_carrier_dying() {
    let Some(client) = common::client().await else {
        return;
    };
    let w = Workload::start(client, "chaos-outage", 73).await;
    let proxy = Proxy::start(&format!("outage-{}", w.ns.name)).await;
    let mut op = start_operator(&w.ns.name, "op-a", "127.0.73.101", &proxy.kubeconfig);
    w.wait_steady().await;
    // period × failureThreshold + 5 s.
    let bound = Duration::from_secs(PROBE_PERIOD * FAILURE_THRESHOLD + 5);
    for secs in [30, 120] {
        let catch_up = api_outage(&w, &proxy, &mut op, Duration::from_secs(secs)).await;
        eprintln!(
            "API outage {secs} s: routing excludes the dead carrier {:.2} s after the API returned (bound {} s)",
            catch_up.as_secs_f64(),
            bound.as_secs()
        );
        assert!(
            catch_up <= bound,
            "catch-up after {secs} s outage took {catch_up:?}"
        );
        w.wait_steady().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_status_and_routing_write_loses_no_transition() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let Some(client) = common::client().await else {
        return;
    };
    let mut w = Workload::start(client.clone(), "chaos-kill", 74).await;
    let kubeconfig = common::kubeconfig_path();
    let op = start_operator(&w.ns.name, "op-a", "127.0.74.101", &kubeconfig);
    w.wait_steady().await;

    // The API refuses routing writes in this namespace: the operator can write the
    // status, not the routing — it is caught between the two writes.
    let name = format!("deny-routing-{}", w.ns.name);
    let vap: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": w.ns.name } },
                "resourceRules": [{ "apiGroups": [""], "apiVersions": ["v1"],
                                    "operations": ["UPDATE"], "resources": ["configmaps"] }]
            },
            "validations": [{ "expression": "object.metadata.name != 'routing'",
                              "message": "chaos test: routing writes refused" }]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "policyName": name, "validationActions": ["Deny"] }
    }))
    .unwrap();
    let vaps: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let _guard = AdmissionGuard(name.clone());
    vaps.create(&PostParams::default(), &vap).await.unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The policy takes effect asynchronously: wait until a routing write is refused.
    eventually(WAIT, "routing writes refused", || async {
        let r =
            w.ns.api::<ConfigMap>()
                .patch(
                    "routing",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "labels": { "chaos-probe": "x" } } })),
                )
                .await;
        r.is_err().then_some(())
    })
    .await;
    let routing_before = w.routing().await.unwrap();

    // Berlin dies: both its lines stop answering.
    w.peers.truncate(2);
    let policy = eventually(WAIT, "berlin Failed in the status", || async {
        let p = w.policy().await;
        let berlin = p
            .status
            .as_ref()?
            .regions
            .iter()
            .find(|r| r.name == "berlin")?
            .clone();
        (berlin.state == RegionState::Failed).then_some(p)
    })
    .await;
    let status = policy.status.unwrap();
    assert_ne!(
        status.config_map_hash.as_deref(),
        routing_before
            .annotations()
            .get("lifeline.dev/content-hash")
            .map(String::as_str),
        "the status holds the new routing's hash"
    );
    // SIGKILL now: the routing write never happened.
    op.process.signal("KILL");
    drop(op);
    assert_eq!(
        w.routing().await.unwrap().resource_version(),
        routing_before.resource_version(),
        "the routing was not written"
    );
    let _ = bindings.delete(&name, &Default::default()).await;
    let _ = vaps.delete(&name, &Default::default()).await;
    let berlin = [
        format!("sip:{}:5060", w.ip(3)),
        format!("sip:{}:5060", w.ip(4)),
    ];

    // A new operator: region state and routing agree, the transition is kept once.
    let restarted_at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let _op2 = start_operator(&w.ns.name, "op-b", "127.0.74.102", &kubeconfig);
    let started = Instant::now();
    eventually(WAIT, "routing agrees with the status", || async {
        let p = w.policy().await;
        let s = p.status?;
        let cm = w.routing().await?;
        let text = cm.data.as_ref()?.get("dispatcher.list")?.clone();
        let agree = s.config_map_hash.as_deref()
            == cm
                .annotations()
                .get("lifeline.dev/content-hash")
                .map(String::as_str);
        (agree && !berlin.iter().any(|b| routes_to(&text, b))).then_some(())
    })
    .await;
    eprintln!(
        "killed between status and routing write: routing caught up {:.2} s after the restart",
        started.elapsed().as_secs_f64()
    );
    let s = w.policy().await.status.unwrap();
    let berlin = s.regions.iter().find(|r| r.name == "berlin").unwrap();
    assert_eq!(berlin.state, RegionState::Failed);
    assert!(berlin.has_served);
    let failures = s
        .history
        .iter()
        .filter(|h| {
            h.region == "berlin" && h.from == RegionState::Active && h.to == RegionState::Failed
        })
        .count();
    assert_eq!(
        failures, 1,
        "the transition is recorded once: {:?}",
        s.history
    );
    // The restart itself pages nobody: no Warning, no FailOpen, no Failback.
    let pages = w.pages_since(restarted_at, Some("op-b")).await;
    assert!(pages.is_empty(), "pages at start-up: {pages:?}");
}

/// Deletes the test's admission policy and binding on drop, also on failure.
struct AdmissionGuard(String);

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use k8s_openapi::api::admissionregistration::v1::{
                    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
                };
                if let Some(client) = common::client().await {
                    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                        .delete(&name, &Default::default())
                        .await;
                    let _ = Api::<ValidatingAdmissionPolicy>::all(client)
                        .delete(&name, &Default::default())
                        .await;
                }
            });
        })
        .join();
    }
}
