//! Offline checks of the CRD validation rules: the CEL rules are evaluated with kube's
//! client-side CEL support, so a broken rule fails here in milliseconds, without a
//! cluster. The same invalid fixtures and examples are applied to a real API server by
//! `tests/crds.rs`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every `message` of every `x-kubernetes-validations` rule in the CRDs.
fn cel_messages() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                    out.extend(
                        rules
                            .iter()
                            .filter_map(|r| r.get("message")?.as_str().map(str::to_string)),
                    );
                }
                map.values().for_each(|child| walk(child, out));
            }
            Value::Array(items) => items.iter().for_each(|child| walk(child, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for crd in all_crds() {
        walk(&serde_json::to_value(&crd).unwrap(), &mut out);
    }
    out
}

/// A lifeline object parsed into its Rust type.
#[derive(Debug)]
enum Object {
    Trunk(Box<Trunk>),
    BotPool(Box<BotPool>),
    FallbackPolicy(Box<FallbackPolicy>),
    SipEdge(Box<SipEdge>),
}

impl Object {
    /// Parse one manifest by its `kind`. `Err` when it does not fit the Rust type (a
    /// missing required field, an unknown enum value, a number out of the type's range).
    fn parse(doc: Value) -> Result<Self, String> {
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let typed = match kind.as_str() {
            "Trunk" => serde_json::from_value(doc).map(|o| Object::Trunk(Box::new(o))),
            "BotPool" => serde_json::from_value(doc).map(|o| Object::BotPool(Box::new(o))),
            "FallbackPolicy" => {
                serde_json::from_value(doc).map(|o| Object::FallbackPolicy(Box::new(o)))
            }
            "SipEdge" => serde_json::from_value(doc).map(|o| Object::SipEdge(Box::new(o))),
            other => return Err(format!("not a lifeline kind: {other:?}")),
        };
        typed.map_err(|e| e.to_string())
    }

    /// Evaluate the CEL rules; the messages of the rules that fail.
    fn cel_failures(&self) -> Vec<String> {
        let result = match self {
            Object::Trunk(o) => o.validate_cel(),
            Object::BotPool(o) => o.validate_cel(),
            Object::FallbackPolicy(o) => o.validate_cel(),
            Object::SipEdge(o) => o.validate_cel(),
        };
        match result {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Each invalid fixture whose expected message comes from a CEL rule is rejected
/// offline with that message, and by that rule alone. Fixtures whose mistake only the
/// OpenAPI schema catches pass the CEL rules (or do not fit the Rust types at all).
#[test]
fn invalid_fixtures_fail_their_cel_rule_offline() {
    let messages = cel_messages();
    let mut cel_fixtures = 0;
    let mut problems = Vec::new();
    for path in yaml_files(&repo_path("tests/fixtures/invalid")) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|e| panic!("{name}: no .expected beside it: {e}"));
        let expected = expected.trim();
        let is_cel = messages.iter().any(|m| m.contains(expected));
        let mut docs = yaml_docs(&path);
        assert_eq!(docs.len(), 1, "{name}: one object per fixture");
        let parsed = Object::parse(docs.remove(0));
        match (is_cel, parsed) {
            (true, Err(e)) => problems.push(format!("{name}: CEL fixture does not parse: {e}")),
            (true, Ok(obj)) => {
                cel_fixtures += 1;
                let failures = obj.cel_failures();
                if failures.len() != 1 || !failures[0].contains(expected) {
                    problems.push(format!(
                        "{name}: expected one failure with {expected:?}, got {failures:?}"
                    ));
                }
            }
            (false, Ok(obj)) => {
                let failures = obj.cel_failures();
                if !failures.is_empty() {
                    problems.push(format!(
                        "{name}: OpenAPI-only mistake, but CEL also fails: {failures:?}"
                    ));
                }
            }
            // The Rust types already refuse it (required field, enum, integer range).
            (false, Err(_)) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "fixtures disagree with the CEL rules:\n{}",
        problems.join("\n")
    );
    assert!(
        cel_fixtures >= 25,
        "only {cel_fixtures} fixtures exercise CEL rules"
    );
}

/// Every example parses into the Rust types and passes every CEL rule.
#[test]
fn examples_pass_every_cel_rule() {
    let mut objects = 0;
    for dir in ["examples/minimal", "examples/carrier-outage"] {
        let files = yaml_files(&repo_path(dir));
        assert!(!files.is_empty(), "{dir} has no manifests");
        for path in files {
            for doc in yaml_docs(&path) {
                let obj = Object::parse(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let failures = obj.cel_failures();
                assert!(failures.is_empty(), "{}: {failures:?}", path.display());
                objects += 1;
            }
        }
    }
    // minimal: 3 objects; carrier-outage: 4 trunks, 2 bot pools, 1 policy, 1 SipEdge.
    assert_eq!(objects, 11);
}

fn trunk_with_uri(uri: &str) -> Trunk {
    let spec: TrunkSpec = serde_json::from_value(serde_json::json!({
        "region": "cologne",
        "endpoints": [{ "uri": uri }],
    }))
    .unwrap();
    Trunk::new("t", spec)
}

#[test]
fn sip_uri_rule_accepts_the_usual_forms() {
    for uri in [
        "sip:carrier.example.net",
        "sip:127.0.50.11:5060",
        "sip:127.0.50.11:1",
        "sip:127.0.50.11:65535",
        "sips:sbc.example.net:5061;transport=tls",
        "sip:trunk+49221@sbc.example.net:5060;transport=tcp",
        "sip:[2001:db8::10]:5060;transport=udp",
        "sip:sbc.example.net;lr;transport=udp",
    ] {
        let failures = Object::Trunk(Box::new(trunk_with_uri(uri))).cel_failures();
        assert!(failures.is_empty(), "{uri} rejected: {failures:?}");
    }
}

#[test]
fn sip_uri_rule_rejects_malformed_uris() {
    for (uri, why) in [
        ("carrier.example.net", "uri must be a SIP URI"),
        ("tel:+492211234567", "uri must be a SIP URI"),
        ("sip:-carrier.example.net", "uri must be a SIP URI"),
        ("sip:carrier.example.net:65536", "uri must be a SIP URI"),
        ("sip:carrier.example.net:123456", "uri must be a SIP URI"),
        ("sip:carrier.example.net:", "uri must be a SIP URI"),
        ("sip:carrier.example.net?subject=x", "uri must be a SIP URI"),
        (
            "sip:carrier.example.net;transport=sctp",
            "transport= must be udp, tcp or tls",
        ),
    ] {
        let failures = Object::Trunk(Box::new(trunk_with_uri(uri))).cel_failures();
        assert!(
            failures.iter().any(|f| f.contains(why)),
            "{uri}: expected {why:?}, got {failures:?}"
        );
    }
}

fn policy_until(until: &str) -> FallbackPolicy {
    let spec: FallbackPolicySpec = serde_json::from_value(serde_json::json!({
        "routingConfigMap": { "name": "sip-routing" },
        "regions": [{ "name": "cologne" }],
        "routes": [{ "name": "inbound", "setId": 1,
                     "tiers": [{ "name": "bots", "targets": [{ "botPool": "cologne-bots" }] }] }],
        "override": { "drainRegions": ["cologne"], "until": until },
    }))
    .unwrap();
    FallbackPolicy::new("p", spec)
}

#[test]
fn override_until_must_be_rfc3339() {
    for ok in [
        "2025-02-12T18:00:00Z",
        "2025-02-12T18:00:00.250Z",
        "2025-02-12T18:00:00+01:00",
    ] {
        let failures = Object::FallbackPolicy(Box::new(policy_until(ok))).cel_failures();
        assert!(failures.is_empty(), "{ok} rejected: {failures:?}");
    }
    for bad in [
        "2025-02-12",
        "2025-02-12 18:00:00Z",
        "18:00",
        "2025-02-12T18:00:00",
    ] {
        let failures = Object::FallbackPolicy(Box::new(policy_until(bad))).cel_failures();
        assert!(
            failures
                .iter()
                .any(|f| f.contains("override.until must be an RFC 3339 timestamp")),
            "{bad}: {failures:?}"
        );
    }
}
