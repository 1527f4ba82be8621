//! The chart's prober values, rendered by helm (built by `scripts/tools.sh`):
//!
//! - `watchNamespaces: [a, b]` gives a Role and RoleBinding in each namespace, the
//!   operator `LIFELINE_NAMESPACE=a,b`, and no cluster-wide write verb at all.
//! - `probe.*` values reach the operator as the environment its `--probe-*` flags
//!   read, and the values schema rejects a destination rule that is not a CIDR.
//!
//! Run: `cargo test --test chart_probe_values`.

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm(args: &[&str]) -> std::process::Output {
    let tools = Command::new(root().join("scripts/tools.sh"))
        .output()
        .expect("run scripts/tools.sh");
    assert!(tools.status.success(), "scripts/tools.sh failed");
    let chart = root().join("charts/lifeline");
    let mut all = vec![
        "template",
        "lifeline",
        chart.to_str().unwrap(),
        "--namespace",
        "lifeline-system",
    ];
    all.extend_from_slice(args);
    Command::new(root().join("target/tools/bin/helm"))
        .args(&all)
        .output()
        .expect("run helm")
}

fn render(args: &[&str]) -> Vec<serde_norway::Value> {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v = serde_norway::Value::deserialize(d).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn env_of(docs: &[serde_norway::Value]) -> Vec<(String, String)> {
    let deploy = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("operator Deployment");
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn watch_namespaces_list_gives_a_role_per_namespace_and_no_cluster_writes() {
    let docs = render(&["--set", "watchNamespaces={calls-a,calls-b}"]);
    for ns in ["calls-a", "calls-b"] {
        for kind in ["Role", "RoleBinding"] {
            assert!(
                docs.iter().any(|d| d["kind"] == kind
                    && d["metadata"]["namespace"] == ns
                    && d["metadata"]["name"] == "lifeline"),
                "no {kind} in {ns}"
            );
        }
    }
    for d in docs.iter().filter(|d| d["kind"] == "ClusterRole") {
        for rule in d["rules"].as_sequence().unwrap() {
            for verb in rule["verbs"].as_sequence().unwrap() {
                let verb = verb.as_str().unwrap();
                assert!(
                    matches!(verb, "get" | "list" | "watch"),
                    "cluster-wide {verb} in {:?}",
                    d["metadata"]["name"]
                );
            }
        }
    }
    let env = env_of(&docs);
    assert!(env.contains(&("LIFELINE_NAMESPACE".into(), "calls-a,calls-b".into())));
}

#[test]
fn probe_values_reach_the_operator_and_bad_rules_are_rejected() {
    let docs = render(&[
        "--set",
        "probe.deny={10.96.0.0/12,192.0.2.0/24:5060-5061}",
        "--set",
        "probe.allow={10.96.5.0/24}",
        "--set",
        "probe.dnsServers={10.96.0.10:53}",
        "--set",
        "probe.quotas.maxEndpointsPerNamespace=50",
    ]);
    let env = env_of(&docs);
    for (k, v) in [
        ("LIFELINE_PROBE_DENY", "10.96.0.0/12,192.0.2.0/24:5060-5061"),
        ("LIFELINE_PROBE_ALLOW", "10.96.5.0/24"),
        ("LIFELINE_PROBE_DNS_SERVERS", "10.96.0.10:53"),
        ("LIFELINE_PROBE_MAX_ENDPOINTS_PER_NAMESPACE", "50"),
        ("LIFELINE_PROBE_MAX_RATE_PER_NAMESPACE", "1000"),
        ("LIFELINE_PROBE_DNS_GRACE_SECONDS", "300"),
    ] {
        assert!(
            env.contains(&(k.into(), v.into())),
            "{k}={v} missing: {env:?}"
        );
    }
    // The operator reads the same strings with its own parser.
    let deny: Vec<String> = "10.96.0.0/12,192.0.2.0/24:5060-5061"
        .split(',')
        .map(String::from)
        .collect();
    lifeline::probe::DestinationPolicy::with_rules(&["10.96.5.0/24".into()], &deny)
        .expect("chart values parse as operator rules");
    // The cluster-address lookups are granted read-only, and turned off with the value.
    let docs = render(&["--set", "probe.denyClusterAddresses=false"]);
    assert!(env_of(&docs).contains(&("LIFELINE_PROBE_NO_CLUSTER_DENY".into(), "true".into())));
    let out = helm(&["--set", "probe.deny={not-a-cidr}"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/probe/deny/0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
