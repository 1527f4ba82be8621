//! Command-line tools the chart tests drive: helm and kube-score built by
//! `scripts/tools.sh` into `target/tools/bin`, promtool from Debian, kubectl; the
//! operator's chart rendered and linted; a kubeconfig for a ServiceAccount.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/tools/bin/<name>`, after `scripts/tools.sh` ran once in this test binary
/// (a no-op when the tools are already built).
pub fn tool(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new(root().join("scripts/tools.sh"))
            .output()
            .expect("run scripts/tools.sh");
        assert!(
            out.status.success(),
            "scripts/tools.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    root().join("target/tools/bin").join(name)
}

/// helm (see [`tool`]).
pub fn helm() -> PathBuf {
    tool("helm")
}

/// Run `program` with the testenv kubeconfig and helm's directories under
/// `target/tools/helm`, in `dir` when given; return its output (not checked).
pub fn run_in(program: &Path, args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("KUBECONFIG", super::kubeconfig_path())
        .env("HELM_CACHE_HOME", root().join("target/tools/helm/cache"))
        .env("HELM_CONFIG_HOME", root().join("target/tools/helm/config"))
        .env("HELM_DATA_HOME", root().join("target/tools/helm/data"))
        .stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.output().unwrap_or_else(|e| {
        panic!(
            "run {} (`make deps` installs promtool, `make tools` helm): {e}",
            program.display()
        )
    })
}

/// [`run_in`] in the current directory.
pub fn run(program: &Path, args: &[&str]) -> Output {
    run_in(program, args, None)
}

/// [`run_in`], returning stdout; panics with both streams when it fails.
pub fn run_ok_in(program: &Path, args: &[&str], dir: Option<&Path>) -> String {
    let out = run_in(program, args, dir);
    assert!(
        out.status.success(),
        "{} {} failed:\n{}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// [`run_ok_in`] in the current directory.
pub fn run_ok(program: &Path, args: &[&str]) -> String {
    run_ok_in(program, args, None)
}

/// Run a command to completion; panic with its output when it fails.
pub fn run_command(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if !out.status.success() {
        panic!(
            "{shown} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The operator's chart, `charts/lifeline`.
pub fn chart() -> PathBuf {
    root().join("charts/lifeline")
}

/// `helm template lifeline charts/lifeline --namespace NAMESPACE` with `args` after
/// it; the output, not checked.
pub fn chart_template(namespace: &str, args: &[&str]) -> Output {
    let chart = chart();
    let mut all = vec![
        "template",
        "lifeline",
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        namespace,
    ];
    all.extend_from_slice(args);
    run(&helm(), &all)
}

/// [`chart_template`], returning the manifests; panics with both streams when it fails.
pub fn chart_template_ok(namespace: &str, args: &[&str]) -> String {
    let out = chart_template(namespace, args);
    assert!(
        out.status.success(),
        "helm template charts/lifeline {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `helm lint --strict charts/lifeline` with `args` after it passes.
pub fn assert_chart_lints(args: &[&str]) {
    let chart = chart();
    let mut all = vec!["lint", "--strict", chart.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = run_ok(&helm(), &all);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

/// The documents of a YAML stream, without empty ones.
pub fn yaml_documents(yaml: &str) -> Vec<serde_norway::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde_norway::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// A kubeconfig in `dir` that authenticates as the ServiceAccount `sa` of `namespace`
/// (a token from `kubectl create token`), with the testenv's server and CA.
pub fn service_account_kubeconfig(namespace: &str, sa: &str, dir: &Path) -> PathBuf {
    let token = run_ok(
        Path::new("kubectl"),
        &[
            "create",
            "token",
            sa,
            "--namespace",
            namespace,
            "--duration",
            "1h",
        ],
    );
    let admin: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(super::kubeconfig_path()).expect("admin kubeconfig"),
    )
    .expect("kubeconfig YAML");
    let cluster = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": cluster["server"].as_str().expect("server"),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().expect("CA"),
        }}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": sa, "context": {"cluster": "testenv", "user": sa, "namespace": namespace}}],
        "current-context": sa,
    });
    let path = dir.join(format!("{namespace}-{sa}.kubeconfig"));
    std::fs::write(&path, serde_norway::to_string(&config).expect("YAML"))
        .expect("write kubeconfig");
    path
}

/// `kubectl apply --dry-run=server` of `manifests` (through a scratch file named after
/// `name`); stdout, and a panic with both streams when the API server refuses them.
pub fn server_dry_run(name: &str, manifests: &str) -> String {
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.yaml"));
    std::fs::write(&file, manifests).expect("write manifests");
    let out = run_in(
        Path::new("kubectl"),
        &[
            "apply",
            "--dry-run=server",
            "-f",
            file.to_str().expect("utf-8 path"),
        ],
        None,
    );
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "kubectl apply --dry-run=server failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
