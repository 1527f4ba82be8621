//! Command-line tools the chart tests drive: helm and kube-score built by
//! `scripts/tools.sh` into `target/tools/bin`, promtool from Debian, kubectl.

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
