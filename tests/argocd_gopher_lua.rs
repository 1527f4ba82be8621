//! The Argo CD health checks under Argo CD's own Lua engine: runs the Go test in
//! `tests/argocd/`, which loads each `resource_customizations/lifeline.dev/<Kind>/health.lua`
//! (and the app-of-apps check in `docs/argocd/argoproj.io/Application/`) into gopher-lua (the Lua 5.1 VM Argo CD embeds, from its Go module) with the
//! libraries Argo CD opens, sets `obj` from every `testdata/*.yaml` and compares the
//! result with `health_test.yaml`.
//!
//! Needs `go` (the control-plane harness needs it too); the Go modules come from the
//! module proxy the first time and from the module cache after that (`.ci/run`
//! downloads them before the tests).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn health_checks_pass_under_gopher_lua() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/argocd");
    let out = Command::new("go")
        .args(["test", "-count=1", "-v", "./..."])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("run `go test` in {} (is Go installed?): {e}", dir.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go test in tests/argocd failed:\n{stdout}{stderr}"
    );
    // Every sample of every kind ran, in both library setups: a harness that found
    // nothing would also "pass".
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let samples: usize = [
        "resource_customizations/lifeline.dev/Trunk",
        "resource_customizations/lifeline.dev/BotPool",
        "resource_customizations/lifeline.dev/FallbackPolicy",
        "docs/argocd/argoproj.io/Application",
    ]
    .iter()
    .map(|kind| {
        let dir = root.join(kind).join("testdata");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .count()
    })
    .sum();
    let passed = stdout
        .lines()
        .filter(|l| {
            l.trim_start()
                .starts_with("--- PASS: TestHealthChecksUnderGopherLua/")
        })
        .count();
    assert!(samples >= 21, "expected the 21+ samples, found {samples}");
    assert_eq!(
        passed,
        samples * 2,
        "each sample runs once per library setup (argocd-cm and built-in):\n{stdout}"
    );
}
