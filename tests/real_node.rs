//! lifeline the way users run it: the released image and the packaged chart on a
//! real node (kubelet, containerd, runc, CNI bridge) of the testenv control plane.
//!
//! The test starts its own real-node plane (`NODE=real tests/testenv/up.sh`, in
//! `target/testenv-real`) unless one is already running, and stops it again when
//! it started it (also when an assertion fails: a Drop guard runs `down.sh`,
//! which removes every process, mount, namespace, interface and cgroup).
//!
//! It needs what `make test` builds first: `make release` (image archive,
//! packaged chart, SHA256SUMS), `make images-test` (the sipp test image and the
//! lifeline upgrade tag) and `make tools` (helm). Root is required (namespaces,
//! mounts, cgroups). `LIFELINE_SKIP_CLUSTER_TESTS=1` skips it, like the other
//! cluster tests.
//!
//! Traffic goes only to pods on the harness's bridge (10.244.0.0/24).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use lifeline::crd::{BotPool, FallbackPolicy, Trunk};
use serde_json::json;

use common::eventually;
use common::real_plane::RealPlane;
use common::tools::run_command;

const RELEASE_NS: &str = "lifeline-system";
const RELEASE: &str = "lifeline";
const IMAGE_REPO: &str = "ghcr.io/lifeline-dev/lifeline";
const SIPP_IMAGE: &str = "localhost/lifeline-test/sipp";
const PAUSE_IMAGE: &str = "localhost/lifeline-test/pause:3.10";
const KAMAILIO_IMAGE: &str = "localhost/lifeline-test/kamailio";
/// The operator's default `--lease-duration-seconds`.
const LEASE_SECONDS: f64 = 15.0;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn artifacts() -> PathBuf {
    root().join("target/release/artifacts")
}

fn real_kubeconfig() -> PathBuf {
    root().join("target/testenv-real/kubeconfig")
}

fn helm_bin() -> PathBuf {
    root().join("target/tools/bin/helm")
}

fn helm(args: &[&str]) -> String {
    run_command(
        Command::new(helm_bin())
            .args(args)
            .env("KUBECONFIG", real_kubeconfig()),
    )
}

async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(real_kubeconfig()).expect("real-node kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("client")
}

/// Everything this test needs that `make test` builds beforehand; `None` when asked to skip.
fn prerequisites() -> Option<()> {
    if std::env::var("LIFELINE_SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        eprintln!("LIFELINE_SKIP_CLUSTER_TESTS=1: skipping the real-node test");
        return None;
    }
    let is_root = run_command(Command::new("id").arg("-u")).trim() == "0";
    assert!(
        is_root,
        "the real-node test needs root (network namespaces, mounts, cgroups)"
    );
    let v = version();
    for p in [
        artifacts().join(format!("lifeline-{v}.tgz")),
        artifacts().join(format!("lifeline-{v}.oci.tar")),
        artifacts().join("SHA256SUMS"),
        root().join(format!("target/image/lifeline-{v}-upgrade.oci.tar")),
        root().join(format!("target/image/sipp-{v}.oci.tar")),
        root().join(format!("target/image/kamailio-{v}.oci.tar")),
        helm_bin(),
    ] {
        assert!(
            p.exists(),
            "{} is missing: run `make release images-test` (what `make test` does first)",
            p.display()
        );
    }
    Some(())
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn container_running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// Operator pods: Running, Ready, not terminating.
async fn operator_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels("app.kubernetes.io/name=lifeline"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn wait_two_ready_operators(pods: &Api<Pod>, image: &str, what: &str) -> Vec<Pod> {
    eventually(Duration::from_secs(180), what, || async {
        let all = operator_pods(pods).await;
        let ready: Vec<Pod> = all
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && pod_ready(p)
                    && p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image)
            })
            .cloned()
            .collect();
        (ready.len() == 2 && all.len() == 2).then_some(ready)
    })
    .await
}

/// `GET http://ip:8080/path` from the host, as the kubelet's probe does.
async fn http_get(ip: &str, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("http://{ip}:8080{path}"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET http://{ip}:8080{path}: {e}"));
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

/// The value of `lifeline_leader` on a pod's /metrics.
async fn leader_metric(ip: &str) -> f64 {
    let (code, body) = http_get(ip, "/metrics").await;
    assert_eq!(code, 200, "/metrics of {ip}");
    body.lines()
        .find_map(|l| l.strip_prefix("lifeline_leader "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no lifeline_leader gauge on {ip}/metrics"))
}

async fn lease_holder(leases: &Api<Lease>) -> Option<(String, Option<jiff::Timestamp>)> {
    let lease = leases.get_opt(RELEASE).await.ok().flatten()?;
    let spec = lease.spec?;
    let holder = spec.holder_identity.filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.map(|t| t.0);
    Some((holder, renewed))
}

/// Addresses in a Service's EndpointSlices with their `ready` condition, sorted.
async fn slice_endpoints(client: &Client, ns: &str, service: &str) -> Vec<(String, bool)> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut out: Vec<(String, bool)> = api
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.endpoints)
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            e.addresses.into_iter().map(move |a| (a, ready))
        })
        .collect();
    out.sort();
    out
}

/// One SIP OPTIONS over UDP to `addr`; the status line of the answer.
fn sip_options(addr: SocketAddr) -> String {
    let sock = UdpSocket::bind("10.244.0.1:0").expect("bind on the pod bridge");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = sock.local_addr().unwrap();
    let call_id = format!("{:016x}@lifeline-real-node", rand::random::<u64>());
    let msg = format!(
        "OPTIONS sip:{addr} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{:08x};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{}>;tag={:08x}\r\n\
         To: <sip:{addr}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        rand::random::<u32>(),
        local.ip(),
        rand::random::<u32>(),
    );
    for _ in 0..3 {
        sock.send_to(msg.as_bytes(), addr).expect("send OPTIONS");
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            return text.lines().next().unwrap_or_default().to_string();
        }
    }
    String::from("<no answer>")
}

async fn create_namespace(client: &Client, name: &str) -> Api<Namespace> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    api
}

/// The SIP edge as charts/lifeline/README.md tells users to run it: the Kamailio
/// test image with sip-sync from the lifeline image as a native sidecar (its
/// /startupz holds Kamailio back until the dispatcher file is written).
fn edge_manifest(ns: &str) -> String {
    let v = version();
    let restricted = r#"{"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "runAsNonRoot": true, "runAsUser": 65532, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}"#;
    let docs = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kamailio", "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "kamailio-sip-sync", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["edge-routing"],
                       "verbs": ["get", "list", "watch", "patch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "kamailio-sip-sync", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kamailio-sip-sync"},
            "subjects": [{"kind": "ServiceAccount", "name": "kamailio", "namespace": ns}]}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "edge", "namespace": ns},
        "spec": {
            "serviceAccountName": "kamailio",
            "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "dispatcher", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
            "initContainers": [{
                "name": "sip-sync", "restartPolicy": "Always",
                "image": format!("{IMAGE_REPO}:{v}"), "imagePullPolicy": "IfNotPresent",
                "args": ["sip-sync", "--configmap=edge-routing", "--key=dispatcher.list",
                         "--file=/etc/kamailio/dispatcher/dispatcher.list",
                         "--rpc-url=http://127.0.0.1:5071/RPC", "--metrics-addr=0.0.0.0:9090",
                         // opt-in: the test reads the applied hash from the ConfigMap
                         "--annotate"],
                "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                "startupProbe": {"httpGet": {"path": "/startupz", "port": 9090}, "periodSeconds": 1, "failureThreshold": 60},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9090}, "periodSeconds": 2},
                "volumeMounts": [{"name": "dispatcher", "mountPath": "/etc/kamailio/dispatcher"}],
                "securityContext": serde_json::from_str::<serde_json::Value>(restricted).unwrap(),
            }],
            "containers": [{
                "name": "kamailio",
                "image": format!("{KAMAILIO_IMAGE}:{v}"), "imagePullPolicy": "Never",
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                    // Kamailio answers OPTIONS for itself only when it listens on the pod IP
                    "args": ["-A", "SIP_IP=$(POD_IP)", "-A", "DS_LIST_FILE=\"/etc/kamailio/dispatcher/dispatcher.list\""],
                "readinessProbe": {"tcpSocket": {"port": 5060}, "periodSeconds": 2},
                "volumeMounts": [{"name": "dispatcher", "mountPath": "/etc/kamailio/dispatcher"},
                                 {"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": serde_json::from_str::<serde_json::Value>(restricted).unwrap(),
            }],
        }}),
    ];
    serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": docs})).unwrap()
}

fn kubectl_apply(ns: &str, path: &Path) {
    run_command(
        Command::new("kubectl")
            .env("KUBECONFIG", real_kubeconfig())
            .args(["apply", "-n", ns, "-f"])
            .arg(path),
    );
}

/// Samples of "is there a live leader" while something happens; returns the longest
/// interval without one, in seconds, and the holders seen in order.
struct LeaderSampler {
    samples: Vec<(Instant, Option<String>)>,
}

impl LeaderSampler {
    async fn sample(&mut self, leases: &Api<Lease>, pods: &Api<Pod>) {
        let now = Instant::now();
        let live = match lease_holder(leases).await {
            Some((holder, renewed)) => {
                let fresh = renewed.is_some_and(|r| {
                    (jiff::Timestamp::now() - r).get_seconds() as f64 <= LEASE_SECONDS
                });
                // A holder counts while its Lease is fresh and its container still runs
                // (a terminating pod that still runs its controllers is still leading).
                let running = pods
                    .get_opt(&holder)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|p| container_running(&p));
                (fresh && running).then_some(holder)
            }
            None => None,
        };
        self.samples.push((now, live));
    }

    fn longest_gap(&self) -> f64 {
        let mut longest = 0.0f64;
        let mut last_live: Option<Instant> = None;
        let mut in_gap = false;
        for (t, h) in &self.samples {
            match h {
                Some(_) => {
                    if in_gap && let Some(l) = last_live {
                        longest = longest.max((*t - l).as_secs_f64());
                    }
                    in_gap = false;
                    last_live = Some(*t);
                }
                None => in_gap = true,
            }
        }
        if in_gap && let (Some(l), Some((t, _))) = (last_live, self.samples.last()) {
            longest = longest.max((*t - l).as_secs_f64());
        }
        longest
    }

    fn holders(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for h in self.samples.iter().filter_map(|(_, h)| h.clone()) {
            if seen.last() != Some(&h) {
                seen.push(h);
            }
        }
        seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installed_operator_runs_on_a_real_node() {
    if prerequisites().is_none() {
        return;
    }
    let t_all = Instant::now();
    let v = version();

    // The release is what users download: check its checksums first.
    run_command(
        Command::new("sha256sum")
            .current_dir(artifacts())
            .args(["-c", "SHA256SUMS"]),
    );

    let plane = RealPlane::up();
    let client = client().await;
    for archive in [
        artifacts().join(format!("lifeline-{v}.oci.tar")),
        root().join(format!("target/image/lifeline-{v}-upgrade.oci.tar")),
        root().join(format!("target/image/sipp-{v}.oci.tar")),
        root().join(format!("target/image/kamailio-{v}.oci.tar")),
    ] {
        plane.import(&archive);
    }
    // Leftovers of an earlier run on a reused plane.
    let _ = Command::new(helm_bin())
        .env("KUBECONFIG", real_kubeconfig())
        .args(["uninstall", RELEASE, "-n", RELEASE_NS, "--wait"])
        .output();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [RELEASE_NS, "rn-example"] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
        eventually(Duration::from_secs(90), "old namespace gone", || async {
            namespaces.get_opt(ns).await.ok()?.is_none().then_some(())
        })
        .await;
    }

    // --- helm install from the packaged chart, default values --------------------------
    let chart = artifacts().join(format!("lifeline-{v}.tgz"));
    let t = Instant::now();
    helm(&[
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        RELEASE_NS,
        "--create-namespace",
    ]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let image = format!("{IMAGE_REPO}:{v}");
    let ready =
        wait_two_ready_operators(&pods, &image, "both operator pods Running and Ready").await;
    let install_secs = t.elapsed().as_secs_f64();
    eprintln!("helm install -> 2 operator pods Ready in {install_secs:.1} s");
    for p in &ready {
        let spec = p.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        assert!(
            pod_ip(p).starts_with("10.244.0."),
            "pod IP on the bridge: {}",
            pod_ip(p)
        );
        // What the kubelet's probe sees, asked from the host.
        let (code, body) = http_get(&pod_ip(p), "/readyz").await;
        assert_eq!(code, 200, "/readyz of {}: {body}", name(p));
        let st = &p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        assert!(st.ready && st.restart_count == 0, "{}: {st:?}", name(p));
        assert!(
            st.image_id.contains("sha256:"),
            "image from the node's store: {}",
            st.image_id
        );
    }

    // The metrics Service gets an EndpointSlice with the pods' real IPs, both ready.
    let mut want: Vec<(String, bool)> = ready.iter().map(|p| (pod_ip(p), true)).collect();
    want.sort();
    eventually(
        Duration::from_secs(60),
        "EndpointSlice of lifeline-metrics",
        || async {
            (slice_endpoints(&client, RELEASE_NS, "lifeline-metrics").await == want).then_some(())
        },
    )
    .await;

    // --- exactly one leader --------------------------------------------------------------
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    let names: Vec<String> = ready.iter().map(name).collect();
    let (leader, _) = eventually(Duration::from_secs(60), "a Lease holder", || async {
        lease_holder(&leases)
            .await
            .filter(|(h, _)| names.contains(h))
    })
    .await;
    let mut leaders = 0;
    for p in &ready {
        let m = leader_metric(&pod_ip(p)).await;
        assert_eq!(
            m == 1.0,
            name(p) == leader,
            "{} reports lifeline_leader {m}",
            name(p)
        );
        leaders += (m == 1.0) as u32;
    }
    assert_eq!(leaders, 1, "exactly one operator pod leads");
    eprintln!("Lease {RELEASE_NS}/{RELEASE} held by {leader}; the other pod stands by");

    // --- the in-cluster operator reconciles examples/minimal -----------------------------
    create_namespace(&client, "rn-example").await;
    kubectl_apply("rn-example", &root().join("examples/minimal"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "rn-example");
    let t = Instant::now();
    let routing = eventually(
        Duration::from_secs(90),
        "routing ConfigMap sip-routing written by the in-cluster operator",
        || async { cms.get_opt("sip-routing").await.ok().flatten() },
    )
    .await;
    eprintln!(
        "examples/minimal -> ConfigMap sip-routing in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let managers = common::field_managers(&routing.metadata);
    assert!(
        managers.iter().any(|m| m == "lifeline.dev/operator"),
        "written by the operator's field manager: {managers:?}"
    );
    let list = routing
        .data
        .as_ref()
        .and_then(|d| d.get("dispatcher.list"))
        .expect("dispatcher.list in sip-routing")
        .clone();
    // The example's bots cannot pull their image here (no registry), so they are not
    // ready: the inbound route falls back to the agents' PBX; outbound uses the trunk.
    assert!(
        list.contains("sip:agents@pbx.example.net:5060") || list.contains("pbx.example.net"),
        "inbound falls back to the agents' PBX:\n{list}"
    );
    let policies: Api<FallbackPolicy> = Api::namespaced(client.clone(), "rn-example");
    eventually(
        Duration::from_secs(60),
        "FallbackPolicy status observed",
        || async {
            let p = policies.get("contact-center").await.ok()?;
            p.status?.observed_generation.filter(|g| *g >= 1)
        },
    )
    .await;

    // --- a bot pool of sipp pods: real probes, real pod IPs -------------------------------
    let pools: Api<BotPool> = Api::namespaced(client.clone(), "rn-example");
    for (pool, img, min) in [
        ("sip-bots", format!("{SIPP_IMAGE}:{v}"), 2),
        // pause never listens on the SIP port: the kubelet's TCP probe keeps it unready
        ("silent-bots", PAUSE_IMAGE.to_string(), 1),
    ] {
        let bp: BotPool = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "BotPool",
            "metadata": {"name": pool},
            "spec": {"region": "cologne", "image": img, "imagePullPolicy": "Never",
                     "callsPerReplica": 10, "replicas": {"min": min, "max": min},
                     "drainSeconds": 0}
        }))
        .unwrap();
        pools
            .create(&PostParams::default(), &bp)
            .await
            .expect("create BotPool");
    }
    let t = Instant::now();
    let status = eventually(
        Duration::from_secs(120),
        "sip-bots: 2 ready endpoints",
        || async {
            let s = pools.get("sip-bots").await.ok()?.status?;
            (s.ready_replicas == 2 && s.endpoints.len() == 2).then_some(s)
        },
    )
    .await;
    eprintln!(
        "BotPool sip-bots: 2 ready bots in {:.1} s: {:?}",
        t.elapsed().as_secs_f64(),
        status.endpoints
    );
    let bot_pods: Api<Pod> = Api::namespaced(client.clone(), "rn-example");
    let bots = bot_pods
        .list(&ListParams::default().labels("lifeline.dev/botpool=sip-bots"))
        .await
        .unwrap()
        .items;
    let ips: Vec<String> = bots.iter().map(pod_ip).collect();
    for ep in &status.endpoints {
        let addr: SocketAddr = ep.parse().expect("endpoint ip:port");
        assert!(
            ips.contains(&addr.ip().to_string()),
            "endpoint {ep} is a bot pod's IP {ips:?}"
        );
        let answer = sip_options(addr);
        assert!(
            answer.starts_with("SIP/2.0 200"),
            "OPTIONS to the bot at {addr}: {answer}"
        );
    }
    // The pool's headless Service lists the bots by their pod IPs, ready.
    let mut want: Vec<(String, bool)> = ips.iter().map(|ip| (ip.clone(), true)).collect();
    want.sort();
    eventually(
        Duration::from_secs(60),
        "EndpointSlice of sip-bots",
        || async {
            (slice_endpoints(&client, "rn-example", "sip-bots").await == want).then_some(())
        },
    )
    .await;
    let silent = eventually(
        Duration::from_secs(60),
        "silent-bots: pod running, not ready",
        || async {
            let pods = bot_pods
                .list(&ListParams::default().labels("lifeline.dev/botpool=silent-bots"))
                .await
                .ok()?
                .items;
            let p = pods.first()?.clone();
            (container_running(&p) && !pod_ready(&p)).then_some(p)
        },
    )
    .await;
    // Two failed TCP probes (period 5 s) later the kubelet still says not ready.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let p = bot_pods.get(&name(&silent)).await.unwrap();
    assert!(
        container_running(&p) && !pod_ready(&p),
        "pause bot stays unready"
    );
    let s = pools.get("silent-bots").await.unwrap().status.unwrap();
    assert_eq!(
        (s.replicas, s.ready_replicas),
        (1, 0),
        "silent-bots status: {s:?}"
    );
    assert!(
        s.endpoints.is_empty(),
        "no endpoints for an unready bot: {s:?}"
    );
    let available = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(available.status, "False", "{available:?}");
    assert_eq!(
        slice_endpoints(&client, "rn-example", "silent-bots").await,
        vec![(pod_ip(&p), false)],
        "the unready bot is in its EndpointSlice as not ready"
    );

    // --- the SIP edge: Kamailio with the sip-sync sidecar, as the chart README shows ---
    // The example's destinations are host names that nothing resolves here (pods get
    // no DNS server), and Kamailio's dispatcher skips what it cannot resolve, so the
    // edge follows a policy whose destinations are the sipp bots' pod IPs.
    let edge_policy: FallbackPolicy = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": {"name": "edge"},
        "spec": {
            "routingConfigMap": {"name": "edge-routing"},
            "expectedConcurrentCalls": 10,
            "regions": [{"name": "cologne"}],
            "routes": [{"name": "inbound", "setId": 1,
                        "tiers": [{"name": "bots", "targets": [{"botPool": "sip-bots"}]}]}]
        }
    }))
    .unwrap();
    policies
        .create(&PostParams::default(), &edge_policy)
        .await
        .expect("create FallbackPolicy edge");
    let manifest = root().join("target/tmp/real-node-edge.yaml");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, edge_manifest("rn-example")).unwrap();
    kubectl_apply("rn-example", &manifest);
    let t = Instant::now();
    let edge = eventually(
        Duration::from_secs(120),
        "edge pod Ready (sip-sync confirmed the routing in Kamailio)",
        || async {
            let p = bot_pods.get("edge").await.ok()?;
            pod_ready(&p).then_some(p)
        },
    )
    .await;
    eprintln!(
        "Kamailio + sip-sync pod Ready in {:.1} s at {}",
        t.elapsed().as_secs_f64(),
        pod_ip(&edge)
    );
    let cm = eventually(
        Duration::from_secs(30),
        "sip-sync's applied-hash",
        || async {
            let cm = cms.get("edge-routing").await.ok()?;
            let a = cm.metadata.annotations.clone()?;
            let applied = a.get("lifeline.dev/applied-hash")?;
            (Some(applied) == a.get("lifeline.dev/content-hash")).then_some(cm)
        },
    )
    .await;
    let list = &cm.data.as_ref().unwrap()["dispatcher.list"];
    for ep in &status.endpoints {
        assert!(
            list.contains(ep.as_str()),
            "bot {ep} in the edge's routing:\n{list}"
        );
    }
    eprintln!(
        "sip-sync applied routing {} (the bots' pod IPs) in Kamailio",
        cm.metadata.annotations.as_ref().unwrap()["lifeline.dev/applied-hash"]
    );
    let answer = sip_options(SocketAddr::new(pod_ip(&edge).parse().unwrap(), 5060));
    assert!(
        answer.starts_with("SIP/2.0 200"),
        "OPTIONS to Kamailio at its pod IP: {answer}"
    );

    // Routing as the operator wrote it with the bots in place; our own lifecycle
    // below (leader loss, upgrade) must not change it.
    let before = eventually(Duration::from_secs(60), "routing settles", || async {
        let a = cms.get("sip-routing").await.ok()?.data?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let b = cms.get("sip-routing").await.ok()?.data?;
        (a == b).then_some(b)
    })
    .await;

    // --- delete the leader pod: the stand-in takes over -------------------------------------
    let (leader, _) = lease_holder(&leases).await.expect("a holder");
    let t = Instant::now();
    pods.delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader pod");
    let (new_leader, _) = eventually(Duration::from_secs(60), "a new Lease holder", || async {
        lease_holder(&leases).await.filter(|(h, _)| *h != leader)
    })
    .await;
    let takeover = t.elapsed().as_secs_f64();
    // Released on SIGTERM, the Lease goes to whichever replica asks first: the
    // stand-in, or the Deployment's replacement pod if it starts sooner.
    let standby = names.contains(&new_leader);
    eprintln!(
        "leader {leader} deleted -> {new_leader} ({}) leads after {takeover:.2} s",
        if standby {
            "the stand-in"
        } else {
            "the replacement pod"
        }
    );
    let current: Vec<String> = operator_pods(&pods).await.iter().map(name).collect();
    assert!(
        current.contains(&new_leader),
        "the new leader {new_leader} is a live operator pod ({current:?})"
    );
    assert!(
        takeover < LEASE_SECONDS,
        "takeover {takeover:.2} s is not within the lease duration ({LEASE_SECONDS} s)"
    );
    wait_two_ready_operators(&pods, &image, "the Deployment replaces the deleted pod").await;

    // --- helm upgrade to a newly built tag: leadership gap -------------------------------
    let new_image = format!("{IMAGE_REPO}:{v}-upgrade");
    let mut sampler = LeaderSampler { samples: vec![] };
    for _ in 0..10 {
        sampler.sample(&leases, &pods).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    let upgrade = tokio::task::spawn_blocking(move || {
        helm(&[
            "upgrade",
            RELEASE,
            chart.to_str().unwrap(),
            "-n",
            RELEASE_NS,
            "--reuse-values",
            "--set",
            &format!("image.tag={}-upgrade", version()),
        ])
    });
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NS);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut rolled_at = None;
    loop {
        sampler.sample(&leases, &pods).await;
        if rolled_at.is_none() {
            let all = operator_pods(&pods).await;
            let done = all.len() == 2
                && all.iter().all(|p| {
                    pod_ready(p)
                        && p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().unwrap().containers[0].image.as_deref()
                            == Some(new_image.as_str())
                });
            if done {
                rolled_at = Some(Instant::now());
            }
        }
        // keep sampling a few seconds after the roll, and until a leader is back:
        // a gap at the end of the roll is measured in full
        let leading_now = sampler.samples.last().is_some_and(|(_, h)| h.is_some());
        if leading_now && rolled_at.is_some_and(|r| r.elapsed() > Duration::from_secs(5)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "helm upgrade did not roll both pods in 240 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    upgrade.await.expect("helm upgrade");
    let roll = (rolled_at.unwrap() - t).as_secs_f64();
    let gap = sampler.longest_gap();
    let holders = sampler.holders();
    eprintln!(
        "helm upgrade -> both pods on {new_image} in {roll:.1} s; longest interval without a \
         live leader {gap:.2} s; leaders in order {holders:?}"
    );
    assert!(
        gap < LEASE_SECONDS,
        "leaderless for {gap:.2} s during the upgrade (lease duration {LEASE_SECONDS} s)"
    );
    let d = deployments.get(RELEASE).await.unwrap();
    assert_eq!(d.status.as_ref().unwrap().ready_replicas, Some(2));
    let new_pods: Vec<String> = operator_pods(&pods).await.iter().map(name).collect();
    let (final_leader, _) = eventually(Duration::from_secs(30), "an upgraded leader", || async {
        lease_holder(&leases)
            .await
            .filter(|(h, _)| new_pods.contains(h))
    })
    .await;
    eprintln!("after the upgrade {final_leader} leads");

    // Our own lifecycle moved no call: the routing is what it was.
    let after = cms.get("sip-routing").await.unwrap().data.unwrap();
    assert_eq!(before, after, "leader loss and upgrade changed the routing");

    // --- helm uninstall keeps the CRDs and the users' objects ----------------------------
    helm(&["uninstall", RELEASE, "-n", RELEASE_NS, "--wait"]);
    eventually(
        Duration::from_secs(60),
        "operator Deployment gone",
        || async {
            deployments
                .get_opt(RELEASE)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        "trunks.lifeline.dev",
        "botpools.lifeline.dev",
        "fallbackpolicies.lifeline.dev",
    ] {
        assert!(crds.get_opt(crd).await.unwrap().is_some(), "CRD {crd} kept");
    }
    let trunks: Api<Trunk> = Api::namespaced(client.clone(), "rn-example");
    assert!(trunks.get_opt("cologne-fixed").await.unwrap().is_some());
    assert!(pools.get_opt("cologne-bots").await.unwrap().is_some());
    assert!(pools.get_opt("sip-bots").await.unwrap().is_some());
    assert!(policies.get_opt("contact-center").await.unwrap().is_some());
    assert!(cms.get_opt("sip-routing").await.unwrap().is_some());
    eprintln!("helm uninstall: CRDs, Trunk, BotPools, FallbackPolicy and routing kept");

    for ns in ["rn-example", RELEASE_NS] {
        let _ = namespaces.delete(ns, &DeleteParams::background()).await;
    }
    eprintln!(
        "real-node test: {:.1} s in all (install {install_secs:.1} s, takeover {takeover:.2} s, \
         upgrade roll {roll:.1} s, upgrade leader gap {gap:.2} s)",
        t_all.elapsed().as_secs_f64()
    );
    drop(plane);
}
