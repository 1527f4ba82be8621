//! `charts/lifeline-edge`: lints and renders the blessed sidecar layout, refuses
//! missing or malformed values with a message naming the field, ships the example's
//! kamailio.cfg unchanged, and — against the real API server — its sip-sync
//! ServiceAccount may get and watch exactly the one routing ConfigMap and nothing
//! else, not even write it (and `lifeline sip-sync --watch-list` works with that and
//! nothing more); `list` and `patch` appear only with the values that need them.

mod common;

use common::tools::{helm, run, run_ok, service_account_kubeconfig};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

const IMAGE: [&str; 4] = [
    "--set",
    "kamailio.image.repository=localhost/lifeline-test/kamailio",
    "--set-string",
    "kamailio.image.tag=0.1.0",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> String {
    root()
        .join("charts/lifeline-edge")
        .to_string_lossy()
        .into_owned()
}

fn run_helm(args: &[&str]) -> Output {
    run(&helm(), args)
}

fn helm_ok(args: &[&str]) -> String {
    run_ok(&helm(), args)
}

fn template(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "edge", &chart, "--namespace", "callcenter"];
    args.extend_from_slice(extra);
    let yaml = helm_ok(&args);
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn chart_lints_and_renders_the_sidecar_layout() {
    let chart = chart();
    let mut lint = vec!["lint", "--strict", &chart];
    lint.extend_from_slice(&IMAGE);
    helm_ok(&lint);

    let mut extra = IMAGE.to_vec();
    extra.extend([
        "--set",
        "sip.allowFrom={203.0.113.0/28,10.244.0.0/16}",
        "--set",
        "sip.trustHintsFrom={10.244.7.0/24}",
        "--set",
        "sip.advertise=198.51.100.7",
        "--set",
        "routing.configMap=cc-routing",
    ]);
    let docs = template(&extra);
    let pod = &find(&docs, "Deployment")["spec"]["template"]["spec"];

    // sip-sync: a native sidecar whose probes are the sidecar's own endpoints.
    let sync = &pod["initContainers"][0];
    assert_eq!(sync["name"], "sip-sync");
    assert_eq!(sync["restartPolicy"], "Always", "native sidecar");
    assert_eq!(sync["startupProbe"]["httpGet"]["path"], "/startupz");
    assert_eq!(sync["readinessProbe"]["httpGet"]["path"], "/readyz");
    let sync_args = strings(&sync["args"]);
    for want in [
        "sip-sync",
        "--configmap=cc-routing",
        "--file=/routing/dispatcher.list",
        "--watch-list",
    ] {
        assert!(
            sync_args.contains(&want),
            "sip-sync args {sync_args:?} lack {want}"
        );
    }

    // Kamailio: `command` (works with shell-form ENTRYPOINT images), never `args`.
    let kam = &pod["containers"][0];
    assert_eq!(kam["name"], "kamailio");
    assert!(
        kam.get("args").is_none(),
        "args would be ignored by the official images"
    );
    let cmd = strings(&kam["command"]);
    assert_eq!(cmd.first(), Some(&"/usr/sbin/kamailio"));
    for want in [
        "SIP_IP=$(POD_IP)",
        "DS_LIST_FILE=\"/routing/dispatcher.list\"",
        "SIP_ADVERTISE=198.51.100.7",
        "ALLOW_FROM=\"203.0.113.0/28,10.244.0.0/16\"",
        "TRUST_HINTS_FROM=\"10.244.7.0/24\"",
        "/etc/kamailio-lifeline/kamailio.cfg",
    ] {
        assert!(cmd.contains(&want), "kamailio command {cmd:?} lacks {want}");
    }
    // The routing is an emptyDir shared with the sidecar, never a ConfigMap mount.
    let routing = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "routing")
        .expect("routing volume");
    assert!(routing.get("emptyDir").is_some(), "{routing}");
    assert!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array()
    );

    let svc = &find(&docs, "Service")["spec"]["ports"];
    let ports: Vec<(String, String)> = svc
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].to_string(),
                p["protocol"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("5060".into(), "UDP".into()), ("5060".into(), "TCP".into())]
    );
    assert_eq!(
        find(&docs, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );

    let rules = &find(&docs, "Role")["rules"];
    assert_eq!(
        rules,
        &json!([{"apiGroups": [""], "resources": ["configmaps"],
                 "resourceNames": ["cc-routing"], "verbs": ["get", "watch"]},
                {"apiGroups": ["lifeline.dev"], "resources": ["sipedges/status"],
                 "resourceNames": ["edge-lifeline-edge"], "verbs": ["get", "patch"]}])
    );
    assert!(
        !sync_args.contains(&"--annotate"),
        "sip-sync writes nothing by default: {sync_args:?}"
    );
    // The SipEdge its pods report to, for the routing it serves.
    let edge = find(&docs, "SipEdge");
    assert_eq!(edge["metadata"]["name"], "edge-lifeline-edge");
    assert_eq!(edge["spec"]["routingConfigMap"], "cc-routing");
    let cfg = find(&docs, "ConfigMap")["data"]["kamailio.cfg"]
        .as_str()
        .unwrap();
    assert!(cfg.starts_with("#!KAMAILIO"));
}

/// Without edge reports (`sipSync.report=false`) the Role is get/watch on the one
/// ConfigMap and nothing more; `list` only without WatchList, `patch` only with the
/// opt-in annotations, both still by the one ConfigMap's name. (With reports, the
/// default, one more rule: get/patch on this edge's own SipEdge status; see
/// `chart_lints_and_renders_the_sidecar_layout`.)
#[test]
fn role_grows_only_with_the_values_that_need_it() {
    for (values, verbs, annotate) in [
        (vec![], json!(["get", "watch"]), false),
        (
            vec!["--set", "sipSync.watchList=false"],
            json!(["get", "watch", "list"]),
            false,
        ),
        (
            vec!["--set", "sipSync.annotate=true"],
            json!(["get", "watch", "patch"]),
            true,
        ),
    ] {
        let mut extra = IMAGE.to_vec();
        extra.extend(["--set", "sipSync.report=false"]);
        extra.extend(values.iter().copied());
        let docs = template(&extra);
        assert_eq!(
            find(&docs, "Role")["rules"],
            json!([{"apiGroups": [""], "resources": ["configmaps"],
                     "resourceNames": ["sip-routing"], "verbs": verbs}]),
            "{values:?}"
        );
        let sync = &find(&docs, "Deployment")["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(
            strings(&sync["args"]).contains(&"--annotate"),
            annotate,
            "{values:?}"
        );
    }
}

#[test]
fn chart_refuses_missing_image_and_bad_values_naming_the_field() {
    let chart = chart();
    let out = run_helm(&["template", "edge", &chart]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("kamailio.image.repository is required"),
        "{err}"
    );

    let mut args = vec!["template", "edge", chart.as_str()];
    args.extend_from_slice(&IMAGE);
    args.extend(["--set", "sip.allowFrom={everyone}"]);
    let out = run_helm(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/sip/allowFrom/0"),
        "{err}"
    );
}

#[test]
fn chart_ships_the_example_kamailio_cfg_unchanged() {
    let example = std::fs::read_to_string(root().join("examples/kamailio/kamailio.cfg")).unwrap();
    let shipped =
        std::fs::read_to_string(root().join("charts/lifeline-edge/files/kamailio.cfg")).unwrap();
    assert!(
        example == shipped,
        "charts/lifeline-edge/files/kamailio.cfg differs from examples/kamailio/kamailio.cfg: \
         copy it (cp examples/kamailio/kamailio.cfg charts/lifeline-edge/files/)"
    );
}

/// A Helm release, uninstalled on drop (before its namespace is deleted).
struct Release(String, String);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = run_helm(&["uninstall", &self.0, "--namespace", &self.1]);
    }
}

/// `kubectl auth can-i VERB TARGET` as the identity in `kubeconfig` (TARGET may be
/// `resource/name`, followed by flags such as `--subresource=status`).
fn can_i(kubeconfig: &Path, namespace: &str, verb: &str, target: &str) -> bool {
    let out = Command::new("kubectl")
        .args(["auth", "can-i", verb])
        .args(target.split_whitespace())
        .args(["--namespace", namespace])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl auth can-i");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "can-i {verb} {target}: {answer}"
    );
    answer == "yes"
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_sync_account_reads_only_its_configmap() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "edge-rbac", &[]).await;
    let cms: Api<ConfigMap> = ns.api();
    let routing = "1 sip:127.0.70.201:5060 0 0 duid=carrier\n";
    for (name, value) in [("sip-routing", routing), ("other", "secret-ish")] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name}, "data": {"dispatcher.list": value}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create ConfigMap");
    }
    let chart = chart();
    let mut args = vec!["install", "edge", &chart, "--namespace", &ns.name];
    args.extend_from_slice(&IMAGE);
    helm_ok(&args);
    let _release = Release("edge".into(), ns.name.clone());

    let tmp = TempDir::new();
    let dir = tmp.0.clone();
    let kubeconfig = service_account_kubeconfig(&ns.name, "edge-lifeline-edge", &dir);
    for (verb, target) in [
        ("get", "configmaps/sip-routing"),
        ("watch", "configmaps/sip-routing"),
        (
            "get",
            "sipedges.lifeline.dev/edge-lifeline-edge --subresource=status",
        ),
        (
            "patch",
            "sipedges.lifeline.dev/edge-lifeline-edge --subresource=status",
        ),
    ] {
        assert!(
            can_i(&kubeconfig, &ns.name, verb, target),
            "{verb} {target} is allowed"
        );
    }
    for (namespace, verb, target) in [
        (ns.name.as_str(), "list", "configmaps"),
        (ns.name.as_str(), "list", "configmaps/sip-routing"),
        (ns.name.as_str(), "watch", "configmaps"),
        (ns.name.as_str(), "get", "configmaps/other"),
        (ns.name.as_str(), "watch", "configmaps/other"),
        (ns.name.as_str(), "patch", "configmaps/sip-routing"),
        (ns.name.as_str(), "patch", "configmaps/other"),
        (ns.name.as_str(), "update", "configmaps/sip-routing"),
        (ns.name.as_str(), "delete", "configmaps/sip-routing"),
        (ns.name.as_str(), "create", "configmaps"),
        (ns.name.as_str(), "get", "secrets"),
        (ns.name.as_str(), "list", "secrets"),
        (ns.name.as_str(), "patch", "pods"),
        (ns.name.as_str(), "list", "pods"),
        (ns.name.as_str(), "get", "fallbackpolicies.lifeline.dev"),
        (
            ns.name.as_str(),
            "patch",
            "sipedges.lifeline.dev/edge-lifeline-edge",
        ),
        (
            ns.name.as_str(),
            "patch",
            "sipedges.lifeline.dev/other --subresource=status",
        ),
        (ns.name.as_str(), "list", "sipedges.lifeline.dev"),
        ("default", "get", "configmaps/sip-routing"),
    ] {
        assert!(
            !can_i(&kubeconfig, namespace, verb, target),
            "{verb} {target} in {namespace} must be forbidden"
        );
    }
    // A real read of another ConfigMap is refused by the API server.
    let out = Command::new("kubectl")
        .args(["get", "configmap", "other", "--namespace", &ns.name])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The real sidecar with exactly these rights: it receives the routing and writes
    // the dispatcher file (Kamailio is absent here, so it then retries the reload).
    let file = dir.join("dispatcher.list");
    let log = std::fs::File::create(dir.join("sip-sync.log")).unwrap();
    let _sync = Process(
        Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .args([
                "sip-sync",
                "--namespace",
                &ns.name,
                "--configmap",
                "sip-routing",
            ])
            .args(["--file", &file.to_string_lossy()])
            .args(["--rpc-url", "http://127.0.70.202:9/RPC", "--watch-list"])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lifeline sip-sync"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&file).ok().as_deref() != Some(routing) {
        assert!(
            Instant::now() < deadline,
            "sip-sync did not write the routing with get/watch only:\n{}",
            std::fs::read_to_string(dir.join("sip-sync.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its reload then fails (no Kamailio): the error path runs, and it writes nothing
    // to the API (no `sync-error` annotation, no forbidden patch attempt).
    let log = || std::fs::read_to_string(dir.join("sip-sync.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log().contains("applying routing failed") {
        assert!(
            Instant::now() < deadline,
            "sip-sync never tried the reload:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !log().contains("cannot annotate"),
        "sip-sync tried to write the ConfigMap:\n{}",
        log()
    );
    let cm = cms.get("sip-routing").await.unwrap();
    let managers = common::field_managers(&cm.metadata);
    assert!(
        !managers.iter().any(|m| m == "lifeline.dev/sip-sync"),
        "sip-sync wrote the ConfigMap: {managers:?}"
    );
    assert!(
        cm.metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("lifeline.dev/")),
        "no sip-sync annotation by default"
    );

    // The opt-ins add exactly their verb, on the same name only.
    let mut args = vec!["upgrade", "edge", &chart, "--namespace", &ns.name];
    args.extend_from_slice(&IMAGE);
    args.extend([
        "--set",
        "sipSync.annotate=true",
        "--set",
        "sipSync.watchList=false",
    ]);
    helm_ok(&args);
    for verb in ["get", "watch", "list", "patch"] {
        assert!(
            can_i(&kubeconfig, &ns.name, verb, "configmaps/sip-routing"),
            "{verb} configmaps/sip-routing is allowed with the opt-ins"
        );
    }
    for (verb, target) in [
        ("patch", "configmaps/other"),
        ("list", "configmaps"),
        ("update", "configmaps/sip-routing"),
        ("delete", "configmaps/sip-routing"),
        ("get", "secrets"),
    ] {
        assert!(
            !can_i(&kubeconfig, &ns.name, verb, target),
            "{verb} {target} stays forbidden with the opt-ins"
        );
    }
}

/// A scratch directory (token kubeconfig, dispatcher file, log), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let name = format!("lifeline-edge-rbac-{:08x}", rand::random::<u32>());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// kube-score finds nothing critical in the rendered edge except what is a choice:
/// `IfNotPresent` (an edge must restart from the node's cache while the registry is
/// unreachable, the outage lifeline exists for) and no NetworkPolicy (SIP peers'
/// addresses are the user's; the config's allow-lists are the filter).
#[test]
fn rendered_edge_passes_kube_score() {
    let chart = chart();
    let mut args = vec![
        "template",
        "edge",
        chart.as_str(),
        "--namespace",
        "callcenter",
    ];
    args.extend_from_slice(&IMAGE);
    let manifests = helm_ok(&args);
    let file = std::env::temp_dir().join(format!("edge-{:08x}.yaml", rand::random::<u32>()));
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new(root().join("target/tools/bin/kube-score"))
        .args(["score", "--output-format", "ci", &file.to_string_lossy()])
        .output()
        .expect("run kube-score (make tools)");
    let _ = std::fs::remove_file(&file);
    let report = String::from_utf8_lossy(&out.stdout);
    let critical: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("[CRITICAL]"))
        .filter(|l| !l.contains("ImagePullPolicy is not set to Always"))
        .filter(|l| !l.contains("does not have a matching NetworkPolicy"))
        .collect();
    assert!(
        critical.is_empty(),
        "kube-score criticals:\n{}",
        critical.join("\n")
    );
    assert!(
        report.contains("[OK]"),
        "kube-score produced no report:\n{report}"
    );
}
