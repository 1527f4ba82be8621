//! The Argo CD health checks in `resource_customizations/lifeline.dev/<Kind>/` run in
//! Debian's `lua5.4` against their sample objects (`testdata/*.yaml`, expectations in
//! `health_test.yaml`), the way Argo CD runs them: `obj` is a global holding the live
//! object and the script returns `{status, message}`.
//!
//! Argo CD itself runs them in gopher-lua (Lua 5.1), which rejects some code Lua 5.4
//! accepts; `tests/argocd_gopher_lua.rs` runs the same cases under gopher-lua. This
//! file keeps a second engine and the checks on the docs snippet.
//!
//! lua5.4 has no YAML or JSON decoder, so each sample is turned into a Lua table
//! literal here (a few lines of Rust beat shipping a Lua decoder just for tests).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const LUA: &str = "/usr/bin/lua5.4";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kind_dir(kind: &str) -> PathBuf {
    root()
        .join("resource_customizations/lifeline.dev")
        .join(kind)
}

/// A sample object from `testdata/`, as JSON (what Argo CD's decoder hands to Lua).
fn sample(kind: &str, input_path: &str) -> Value {
    let path = kind_dir(kind).join(input_path);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let yaml: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(yaml).expect("YAML sample converts to JSON")
}

/// The cases in `health_test.yaml`: (inputPath, status, message).
fn health_tests(kind: &str) -> Vec<(String, Health)> {
    let path = kind_dir(kind).join("health_test.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: serde_norway::Value =
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let field = |v: &serde_norway::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    doc["tests"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{} has no tests list", path.display()))
        .iter()
        .map(|t| {
            (
                field(t, "inputPath"),
                Health {
                    status: field(&t["healthStatus"], "status"),
                    message: field(&t["healthStatus"], "message"),
                },
            )
        })
        .collect()
}

/// A JSON value as a Lua expression. `null` becomes `nil`, which is what Argo CD's
/// conversion does too (the key is simply absent).
fn lua_literal(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => lua_string(s, out),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, item) in map {
                out.push('[');
                lua_string(k, out);
                out.push_str("]=");
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
    }
}

/// A Lua string literal; every byte outside printable ASCII is a decimal escape.
fn lua_string(s: &str, out: &mut String) {
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
}

#[derive(Debug, PartialEq)]
struct Health {
    status: String,
    message: String,
}

/// Run `script` with `obj` set to the sample, as Argo CD does.
fn run_health(script: &Path, obj: &Value, fixture: &str) -> Health {
    let mut harness = String::from("obj = ");
    lua_literal(obj, &mut harness);
    harness.push_str(
        "\nlocal check = assert(loadfile(arg[1]))\n\
         local hs = check()\n\
         assert(type(hs) == 'table', 'health.lua must return a table')\n\
         io.write(tostring(hs.status), '\\n', tostring(hs.message), '\\n')\n",
    );
    let mut child = Command::new(LUA)
        .arg("-")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {LUA} (`make deps` installs lua5.4): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(harness.as_bytes())
        .expect("write harness");
    let out = child.wait_with_output().expect("lua runs");
    assert!(
        out.status.success(),
        "{} on {fixture} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let mut lines = text.lines();
    Health {
        status: lines.next().unwrap_or_default().to_string(),
        message: lines.next().unwrap_or_default().to_string(),
    }
}

fn script(kind: &str) -> PathBuf {
    kind_dir(kind).join("health.lua")
}

/// Each listed case gives the expected health under lua5.4 and is listed with the same
/// expectation in `health_test.yaml` (which the gopher-lua test reads); every other
/// case of `health_test.yaml` passes under lua5.4 too.
fn check(kind: &str, cases: &[(&str, &str, &str)]) {
    let script = script(kind);
    let listed = health_tests(kind);
    let mut failures = Vec::new();
    for (fixture, status, message) in cases {
        let want = Health {
            status: status.to_string(),
            message: message.to_string(),
        };
        let input = format!("testdata/{fixture}");
        match listed.iter().find(|(path, _)| *path == input) {
            Some((_, expected)) if *expected == want => {}
            Some((_, expected)) => failures.push(format!(
                "{input}: health_test.yaml expects {expected:?}, this test {want:?}"
            )),
            None => failures.push(format!("{input} is missing from health_test.yaml")),
        }
        let got = run_health(&script, &sample(kind, &input), &input);
        if got != want {
            failures.push(format!("{fixture}: got {got:?}, want {want:?}"));
        }
    }
    for (input, want) in &listed {
        let got = run_health(&script, &sample(kind, input), input);
        if got != *want {
            failures.push(format!("{input}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{kind}:\n{}", failures.join("\n"));
}

#[test]
fn trunk_health() {
    check(
        "Trunk",
        &[
            (
                "healthy.yaml",
                "Healthy",
                "AllEndpointsUp: all 2 endpoints answer OPTIONS (2/2 endpoints healthy)",
            ),
            (
                "down.yaml",
                "Degraded",
                "AllEndpointsDown: none of 2 endpoints answers OPTIONS (0/2 endpoints healthy)",
            ),
            (
                "new.yaml",
                "Progressing",
                "Waiting for lifeline to observe generation 1",
            ),
            (
                "stale-generation.yaml",
                "Progressing",
                "Waiting for lifeline to observe generation 4",
            ),
            (
                "probing.yaml",
                "Progressing",
                "Probing: no endpoint is up yet; 2 of 2 not judged yet",
            ),
            (
                "partial.yaml",
                "Healthy",
                "SomeEndpointsDown: 1 of 2 endpoints answer OPTIONS, 1 down (1/2 endpoints healthy)",
            ),
            (
                "disabled.yaml",
                "Suspended",
                "Trunk is disabled (maintenance): no traffic, no probes",
            ),
        ],
    );
}

#[test]
fn botpool_health() {
    check(
        "BotPool",
        &[
            (
                "available.yaml",
                "Healthy",
                "4/4 bots ready, capacity 80 calls, demand 60",
            ),
            (
                "unavailable.yaml",
                "Degraded",
                "MinimumReplicasUnavailable: 0 of 4 bots ready (replicas.min 2, desired 4)",
            ),
            (
                "scaling-limited.yaml",
                "Degraded",
                "MaxReplicasReached: 112 calls short: demand 260 calls (312 with 20% headroom) needs more than replicas.max 10 × 20 calls; raise replicas.max",
            ),
            ("scaling-up.yaml", "Progressing", "Scaling: 5/8 bots ready"),
            (
                "stale-generation.yaml",
                "Progressing",
                "Waiting for lifeline to observe generation 3",
            ),
        ],
    );
}

#[test]
fn fallback_policy_health() {
    check(
        "FallbackPolicy",
        &[
            (
                "healthy.yaml",
                "Healthy",
                "Routing published; active regions: cologne,frankfurt",
            ),
            (
                "region-failed.yaml",
                "Degraded",
                "RegionsNotActive: region cologne Failed: 0 of 2 trunks healthy (minHealthyTrunks 1)",
            ),
            (
                "capacity-short.yaml",
                "Degraded",
                "Capacity short: CapacityShort: healthy capacity 300 is below 400 expected calls",
            ),
            (
                "not-ready.yaml",
                "Degraded",
                "Routing not published: ConfigMapConflict: ConfigMap 'sip-routing' exists and is not managed by this policy",
            ),
            (
                "new.yaml",
                "Progressing",
                "Waiting for lifeline to observe generation 1",
            ),
            (
                "stale-generation.yaml",
                "Progressing",
                "Waiting for lifeline to observe generation 8",
            ),
        ],
    );
}

/// An object without `metadata.generation` (as some Argo CD diff previews hand over)
/// and without status must not make the script fail.
#[test]
fn scripts_tolerate_bare_objects() {
    for kind in ["Trunk", "BotPool", "FallbackPolicy"] {
        let mut harness = String::from("obj = ");
        lua_literal(
            &serde_json::json!({"apiVersion": "lifeline.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}}),
            &mut harness,
        );
        harness.push_str("\nlocal hs = assert(loadfile(arg[1]))()\nio.write(hs.status, '\\n')\n");
        let mut child = Command::new(LUA)
            .arg("-")
            .arg(script(kind))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lua5.4");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(harness.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("lua runs");
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "Progressing",
            "{kind}"
        );
    }
}

#[test]
fn lua_literal_escapes_strings() {
    let mut out = String::new();
    lua_literal(
        &serde_json::json!({"a": "q\"b\\s\nü", "n": [1, 2.5, null, true]}),
        &mut out,
    );
    assert_eq!(
        out,
        r#"{["a"]="q\"b\\s\010\195\188",["n"]={1,2.5,nil,true,},}"#
    );
}

/// The `argocd-cm` snippet in `docs/argocd/README.md` carries exactly the tested
/// scripts, so what users paste is what this file tests.
#[test]
fn readme_snippet_matches_the_scripts() {
    let readme = std::fs::read_to_string(root().join("docs/argocd/README.md"))
        .expect("docs/argocd/README.md");
    let scripts = ["Trunk", "BotPool", "FallbackPolicy"]
        .map(|kind| (format!("lifeline.dev_{kind}"), script(kind)))
        .into_iter()
        .chain([(
            "argoproj.io_Application".to_string(),
            root().join("docs/argocd/argoproj.io/Application/health.lua"),
        )]);
    for (kind, script) in scripts {
        let key = format!("  resource.customizations.health.{kind}: |\n");
        let start = readme
            .find(&key)
            .unwrap_or_else(|| panic!("README has no argocd-cm key for {kind}"))
            + key.len();
        let mut block = String::new();
        for line in readme[start..].lines() {
            if let Some(code) = line.strip_prefix("    ") {
                block.push_str(code);
            } else if !line.is_empty() {
                break;
            }
            block.push('\n');
        }
        let lua = std::fs::read_to_string(&script).expect("health.lua");
        assert_eq!(
            block.trim_end(),
            lua.trim_end(),
            "README snippet for {kind} differs from {}",
            script.display()
        );
    }
}

/// Every YAML example in `docs/argocd/README.md` parses, and the CRD annotations it
/// recommends carry the three sync options that keep the CRDs.
#[test]
fn readme_yaml_examples_parse() {
    let readme = std::fs::read_to_string(root().join("docs/argocd/README.md"))
        .expect("docs/argocd/README.md");
    let mut blocks = 0;
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed code block");
        for doc in serde_norway::Deserializer::from_str(&body[..end]) {
            use serde::Deserialize;
            serde_norway::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("YAML example does not parse: {e}\n{}", &body[..end]));
        }
        blocks += 1;
        rest = &body[end + 3..];
    }
    assert!(blocks >= 5, "found {blocks} YAML examples");
    let options = "argocd.argoproj.io/sync-options: Prune=false,Delete=false,ServerSideApply=true";
    assert!(
        readme.matches(options).count() >= 2,
        "the README must recommend `{options}` on the CRDs"
    );
}
