//! The alerts and the dashboard the chart ships, checked as shipped:
//!
//! - `helm template` renders `templates/prometheusrule.yaml`; its `spec` (the rule
//!   groups) goes through `promtool check rules` and `promtool test rules` with the
//!   unit tests in `tests/prometheus_rules/` — in both renders (per-object gauges on,
//!   the default, and off). Every alert the chart renders must fire in at least one
//!   unit test, and carry a severity, a summary, a description and a runbook link.
//! - `docs/metrics.md` lists exactly the alerts the chart renders, each with its
//!   runbook section (the anchor of its `runbook_url`).
//! - The Grafana dashboard ConfigMap carries the sidecar's label and the very
//!   dashboard in `docs/grafana/`.
//!
//! - The API server accepts the dashboard ConfigMap (server-side dry run).
//!
//! promtool comes from Debian's `prometheus` package (`make deps`); helm is built by
//! `scripts/tools.sh` into `target/tools/bin`.

mod common;

use common::tools::{
    assert_chart_lints, chart_template, chart_template_ok, run_in as run, run_ok_in as run_ok,
    server_dry_run, yaml_documents,
};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_norway::Value;

const PROMTOOL: &str = "promtool";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `helm template` of the chart with `--set` values; the documents, without empty ones.
fn render(set: &[&str]) -> Vec<Value> {
    let mut args = vec![];
    for s in set {
        args.extend(["--set", s]);
    }
    yaml_documents(&chart_template_ok("lifeline-system", &args))
}

fn one_of_kind(docs: &[Value], kind: &str) -> Option<Value> {
    let mut found = docs.iter().filter(|d| d["kind"].as_str() == Some(kind));
    let first = found.next().cloned();
    assert!(found.next().is_none(), "more than one {kind}");
    first
}

/// The rules of the rendered PrometheusRule.
fn rules(set: &[&str]) -> Vec<Value> {
    let docs = render(set);
    let rule = one_of_kind(&docs, "PrometheusRule").expect("a PrometheusRule is rendered");
    rule["spec"]["groups"]
        .as_sequence()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

fn alert_names(rules: &[Value]) -> BTreeSet<String> {
    rules
        .iter()
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

/// Alerts that some `alert_rule_test` in `file` expects to fire.
fn alerts_fired_in(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).expect("read promtool test file");
    let doc: Value = serde_norway::from_str(&text).expect("test file is YAML");
    let mut fired = BTreeSet::new();
    for test in doc["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().unwrap_or(&Vec::new()) {
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            if fires {
                fired.insert(case["alertname"].as_str().expect("alertname").to_string());
            }
        }
    }
    fired
}

/// Render with `set`, write the rule groups as `rules.yaml` beside copies of the
/// test files, run `promtool check rules` and `promtool test rules`, and check that
/// every rendered alert fires in some unit test.
fn check_with_promtool(variant: &str, set: &[&str], test_files: &[&str]) {
    let docs = render(set);
    let rule = one_of_kind(&docs, "PrometheusRule").expect("a PrometheusRule is rendered");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-rules-{variant}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create work dir");
    std::fs::write(
        dir.join("rules.yaml"),
        serde_norway::to_string(&rule["spec"]).expect("rules as YAML"),
    )
    .expect("write rules.yaml");
    let mut fired = BTreeSet::new();
    for file in test_files {
        let src = root().join("tests/prometheus_rules").join(file);
        std::fs::copy(&src, dir.join(file)).expect("copy test file");
        fired.extend(alerts_fired_in(&src));
    }
    let check = run_ok(
        Path::new(PROMTOOL),
        &["check", "rules", "rules.yaml"],
        Some(&dir),
    );
    assert!(check.contains("SUCCESS"), "{check}");

    let mut args = vec!["test", "rules"];
    args.extend_from_slice(test_files);
    let out = run(Path::new(PROMTOOL), &args, Some(&dir));
    assert!(
        out.status.success(),
        "promtool test rules ({variant}) failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let rules: Vec<Value> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .clone();
    let names = alert_names(&rules);
    let untested: Vec<_> = names.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "{variant}: alerts without a unit test that makes them fire: {untested:?}"
    );
    for r in &rules {
        let name = r["alert"].as_str().unwrap_or("<recording rule>");
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: no {key} annotation"
            );
        }
        let anchor = format!("#{}", name.to_lowercase());
        assert!(
            r["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_default()
                .ends_with(&anchor),
            "{name}: runbook_url must end in {anchor}"
        );
    }
}

#[test]
fn alerts_pass_promtool_with_per_object_gauges() {
    check_with_promtool(
        "objects",
        &["prometheusRule.enabled=true"],
        &["common_test.yaml", "objects_test.yaml"],
    );
    let names = alert_names(&rules(&["prometheusRule.enabled=true"]));
    assert_eq!(names.len(), 9, "{names:?}");
}

#[test]
fn alerts_pass_promtool_with_aggregate_gauges_only() {
    let set = ["prometheusRule.enabled=true", "objectMetrics.enabled=false"];
    check_with_promtool(
        "aggregate",
        &set,
        &["common_test.yaml", "aggregate_test.yaml"],
    );
    // Without per-object gauges nothing may read them.
    for r in rules(&set) {
        let expr = r["expr"].as_str().unwrap_or_default();
        for gauge in lifeline::telemetry::objects::GAUGES {
            assert!(
                !expr.contains(&format!("lifeline_{gauge}")),
                "{}: {expr}",
                r["alert"].as_str().unwrap_or_default()
            );
        }
    }
    // And the operator is told not to export them.
    let docs = render(&["objectMetrics.enabled=false"]);
    let deployment = one_of_kind(&docs, "Deployment").expect("Deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_sequence()
            .expect("args")
            .iter()
            .any(|a| a.as_str() == Some("--no-object-metrics")),
        "{args:?}"
    );
    let docs = render(&[]);
    let deployment = one_of_kind(&docs, "Deployment").expect("Deployment");
    let args =
        serde_norway::to_string(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
            .unwrap();
    assert!(
        !args.contains("--no-object-metrics"),
        "on by default: {args}"
    );
}

/// Nothing monitoring-related is rendered unless asked for.
#[test]
fn monitoring_objects_are_opt_in() {
    let docs = render(&[]);
    assert!(one_of_kind(&docs, "PrometheusRule").is_none());
    assert!(
        !docs.iter().any(|d| d["kind"] == "ConfigMap"),
        "no dashboard ConfigMap by default"
    );
}

#[test]
fn values_shape_the_alerts() {
    let set = [
        "prometheusRule.enabled=true",
        "prometheusRule.disabled={LifelineFlapping,LifelineEndpointsDown}",
        "prometheusRule.alertLabels.team=contact-center",
        "prometheusRule.labels.release=kube-prometheus-stack",
        "prometheusRule.selector=job=\"lifeline\"\\,namespace=\"ops\"",
        "prometheusRule.sipSyncSelector=job=\"kamailio\"",
        "prometheusRule.runbookUrl=https://wiki.example.net/lifeline",
    ];
    let docs = render(&set);
    let rule = one_of_kind(&docs, "PrometheusRule").expect("PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"].as_str(),
        Some("kube-prometheus-stack")
    );
    let rules = rules(&set);
    let names = alert_names(&rules);
    assert!(
        !names.contains("LifelineFlapping") && !names.contains("LifelineEndpointsDown"),
        "{names:?}"
    );
    assert_eq!(names.len(), 7, "{names:?}");
    for r in &rules {
        let name = r["alert"].as_str().unwrap_or_default();
        assert_eq!(
            r["labels"]["team"].as_str(),
            Some("contact-center"),
            "{name}"
        );
        let url = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
        assert!(
            url.starts_with("https://wiki.example.net/lifeline#"),
            "{name}: {url}"
        );
        let expr = r["expr"].as_str().unwrap_or_default();
        if name == "LifelineSipSyncFailing" {
            assert!(expr.contains(r#"{job="kamailio"}"#), "{expr}");
        } else {
            assert!(
                expr.contains(r#"job="lifeline",namespace="ops""#),
                "{name}: {expr}"
            );
            assert!(!expr.contains("lifeline-metrics"), "{name}: {expr}");
        }
    }
    // A misspelt alert name is refused by the schema, with the field named.
    let out = chart_template(
        "lifeline-system",
        &["--set", "prometheusRule.disabled={LifelineFlaping}"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("prometheusRule/disabled"),
        "{err}"
    );
}

/// `docs/metrics.md` documents exactly the alerts the chart ships, each with a
/// runbook section whose anchor the alert's `runbook_url` points at.
#[test]
fn docs_list_the_shipped_alerts() {
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let shipped = alert_names(&rules(&["prometheusRule.enabled=true"]));
    let table: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter(|cell| cell.starts_with("Lifeline"))
        .map(String::from)
        .collect();
    assert_eq!(table, shipped, "the alert table in docs/metrics.md");
    for name in &shipped {
        assert!(
            docs.contains(&format!("\n### {name}\n")),
            "docs/metrics.md has no runbook section `### {name}`"
        );
    }
}

#[test]
fn dashboard_configmap_for_the_grafana_sidecar() {
    let docs = render(&[
        "grafanaDashboard.enabled=true",
        "grafanaDashboard.namespace=monitoring",
        "grafanaDashboard.labelValue=lifeline",
        "grafanaDashboard.annotations.grafana_folder=Telephony",
    ]);
    let cm = one_of_kind(&docs, "ConfigMap").expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["namespace"].as_str(), Some("monitoring"));
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("lifeline")
    );
    assert_eq!(
        cm["metadata"]["annotations"]["grafana_folder"].as_str(),
        Some("Telephony")
    );
    let shipped = cm["data"]["lifeline-dashboard.json"]
        .as_str()
        .expect("dashboard JSON in data");
    let docs_copy = std::fs::read_to_string(root().join("docs/grafana/lifeline-dashboard.json"))
        .expect("docs/grafana/lifeline-dashboard.json");
    assert_eq!(
        shipped.trim_end(),
        docs_copy.trim_end(),
        "charts/lifeline/dashboards/lifeline-dashboard.json must equal docs/grafana/lifeline-dashboard.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(shipped).expect("dashboard is JSON");
    // The per-object gauges, the probe round trip and the build are on it.
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(String::from))
        .collect();
    for metric in lifeline::telemetry::objects::GAUGES
        .iter()
        .map(|g| format!("lifeline_{g}"))
        .chain([
            "lifeline_probe_rtt_seconds_bucket".into(),
            "lifeline_build_info".into(),
        ])
    {
        assert!(
            exprs.iter().any(|e| e.contains(&metric)),
            "no dashboard panel shows {metric}"
        );
    }

    // The default label is the one kube-prometheus-stack's sidecar looks for.
    let docs = render(&["grafanaDashboard.enabled=true"]);
    let cm = one_of_kind(&docs, "ConfigMap").expect("the dashboard ConfigMap");
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    assert_eq!(
        cm["metadata"]["namespace"].as_str(),
        Some("lifeline-system")
    );
}

#[test]
fn helm_lint_with_monitoring_enabled() {
    for set in [
        "prometheusRule.enabled=true,grafanaDashboard.enabled=true,serviceMonitor.enabled=true",
        "prometheusRule.enabled=true,objectMetrics.enabled=false",
    ] {
        assert_chart_lints(&["--set", set]);
    }
    // The ServiceMonitor keeps the gauges' own `namespace` label.
    let docs = render(&["serviceMonitor.enabled=true"]);
    let sm = one_of_kind(&docs, "ServiceMonitor").expect("ServiceMonitor");
    assert_eq!(
        sm["spec"]["endpoints"][0]["honorLabels"].as_bool(),
        Some(true)
    );
}

/// The dashboard ConfigMap is a valid object for the API server (size, label and
/// key syntax): server-side dry run in a temporary namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_configmap_passes_the_api_server() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client, "dashboard-dryrun", &[]).await;
    let rendered = chart_template_ok(
        &ns.name,
        &[
            "--set",
            "grafanaDashboard.enabled=true",
            "--set-string",
            "grafanaDashboard.annotations.grafana_folder=Telephony",
            "--show-only",
            "templates/grafana-dashboard.yaml",
        ],
    );
    let stdout = server_dry_run(&ns.name, &rendered);
    assert!(
        stdout.contains("configmap/lifeline-dashboard created (server dry run)"),
        "{stdout}"
    );
}

/// The PromQL users copy: every query in `docs/metrics.md` and every panel query of
/// the dashboard (Grafana variables filled in) parses, checked by promtool as
/// recording rules.
#[test]
fn documented_and_dashboard_queries_parse() {
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let mut queries = Vec::new();
    let mut rest = docs.as_str();
    while let Some(start) = rest.find("```promql\n") {
        let body = &rest[start + 10..];
        let end = body.find("```").expect("closed code block");
        queries.extend(
            body[..end]
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
        rest = &body[end + 3..];
    }
    assert!(queries.len() >= 10, "docs/metrics.md queries: {queries:?}");
    let from_docs = queries.len();

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/grafana/lifeline-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push(
                    expr.replace("$__rate_interval", "5m")
                        .replace("$job", ".*")
                        .replace("$namespace", ".*"),
                );
            }
        }
    }
    assert!(queries.len() > from_docs + 20, "dashboard queries missing");

    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("lifeline:query_{i}"), "expr": q}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "queries", "rules": rules}]});
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prometheus-queries");
    std::fs::create_dir_all(&dir).expect("create work dir");
    std::fs::write(
        dir.join("queries.yaml"),
        serde_norway::to_string(&file).expect("YAML"),
    )
    .expect("write queries.yaml");
    let out = run(
        Path::new(PROMTOOL),
        &["check", "rules", "queries.yaml"],
        Some(&dir),
    );
    assert!(
        out.status.success(),
        "a documented or dashboard query does not parse:\n{}{}\n{queries:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
