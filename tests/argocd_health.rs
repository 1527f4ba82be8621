//! The Argo CD health checks in `docs/argocd/` run in Debian's `lua5.4` against sample
//! objects (`tests/fixtures/argocd/*.json`), the way Argo CD runs them: `obj` is a
//! global holding the live object and the script returns `{status, message}`.
//!
//! lua5.4 has no JSON decoder, so each fixture is turned into a Lua table literal here
//! (a few lines of Rust beat shipping a Lua JSON library just for tests). Argo CD runs
//! the scripts in gopher-lua (Lua 5.1); they use nothing that differs between 5.1 and
//! 5.4.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const LUA: &str = "/usr/bin/lua5.4";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

/// Run `script` with `obj` set to the fixture, as Argo CD does.
fn run_health(script: &Path, fixture: &str) -> Health {
    let json = std::fs::read_to_string(root().join("tests/fixtures/argocd").join(fixture))
        .unwrap_or_else(|e| panic!("read fixture {fixture}: {e}"));
    let obj: Value = serde_json::from_str(&json).expect("fixture is JSON");
    let mut harness = String::from("obj = ");
    lua_literal(&obj, &mut harness);
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
    root()
        .join("docs/argocd/lifeline.dev")
        .join(kind)
        .join("health.lua")
}

fn check(kind: &str, cases: &[(&str, &str, &str)]) {
    let script = script(kind);
    let mut failures = Vec::new();
    for (fixture, status, message) in cases {
        let got = run_health(&script, fixture);
        let want = Health {
            status: status.to_string(),
            message: message.to_string(),
        };
        if got != want {
            failures.push(format!("{fixture}: got {got:?}, want {want:?}"));
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
                "trunk-healthy.json",
                "Healthy",
                "AllEndpointsUp: all 2 endpoints answer OPTIONS (2/2 endpoints healthy)",
            ),
            (
                "trunk-down.json",
                "Degraded",
                "AllEndpointsDown: none of 2 endpoints answers OPTIONS (0/2 endpoints healthy)",
            ),
            (
                "trunk-new.json",
                "Progressing",
                "Waiting for lifeline to observe generation 1",
            ),
            (
                "trunk-stale-generation.json",
                "Progressing",
                "Waiting for lifeline to observe generation 4",
            ),
            (
                "trunk-probing.json",
                "Progressing",
                "Probing: no endpoint is up yet; 2 of 2 not judged yet",
            ),
            (
                "trunk-partial.json",
                "Healthy",
                "SomeEndpointsDown: 1 of 2 endpoints answer OPTIONS, 1 down (1/2 endpoints healthy)",
            ),
            (
                "trunk-disabled.json",
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
                "botpool-available.json",
                "Healthy",
                "4/4 bots ready, capacity 80 calls, demand 60",
            ),
            (
                "botpool-unavailable.json",
                "Degraded",
                "MinimumReplicasUnavailable: 0 of 4 bots ready (replicas.min 2, desired 4)",
            ),
            (
                "botpool-scaling-limited.json",
                "Degraded",
                "MaxReplicasReached: 112 calls short: demand 260 calls (312 with 20% headroom) needs more than replicas.max 10 × 20 calls; raise replicas.max",
            ),
            (
                "botpool-scaling-up.json",
                "Progressing",
                "Scaling: 5/8 bots ready",
            ),
            (
                "botpool-stale-generation.json",
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
                "policy-healthy.json",
                "Healthy",
                "Routing published; active regions: cologne,frankfurt",
            ),
            (
                "policy-region-failed.json",
                "Degraded",
                "RegionsNotActive: region cologne Failed: 0 of 2 trunks healthy (minHealthyTrunks 1)",
            ),
            (
                "policy-capacity-short.json",
                "Degraded",
                "Capacity short: CapacityShort: healthy capacity 300 is below 400 expected calls",
            ),
            (
                "policy-not-ready.json",
                "Degraded",
                "Routing not published: ConfigMapConflict: ConfigMap 'sip-routing' exists and is not managed by this policy",
            ),
            (
                "policy-new.json",
                "Progressing",
                "Waiting for lifeline to observe generation 1",
            ),
            (
                "policy-stale-generation.json",
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
    for kind in ["Trunk", "BotPool", "FallbackPolicy"] {
        let key = format!("  resource.customizations.health.lifeline.dev_{kind}: |\n");
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
        let lua = std::fs::read_to_string(script(kind)).expect("health.lua");
        assert_eq!(
            block.trim_end(),
            lua.trim_end(),
            "README snippet for {kind} differs from {}",
            script(kind).display()
        );
    }
}
