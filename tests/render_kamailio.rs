//! Every `dispatcher.list` the planner scenarios render is accepted by a real Kamailio
//! 5.6: `kamailio -c` passes with a config that loads it, and after a
//! `dispatcher.reload` the `dispatcher.list` RPC shows exactly the planned sets
//! (destinations, priorities, weights, duids).
//!
//! The rendered files are also kept under `tests/fixtures/kamailio-render/` as golden
//! files (regenerate with `LIFELINE_BLESS=1`), so a format change shows up in review.
//!
//! Addresses: Kamailio on 127.0.20.1 (SIP 5060/udp, JSON-RPC 5071/tcp).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kamailio::Kamailio;
use jiff::Timestamp;
use lifeline::crd::{EndpointState, FallbackPolicySpec};
use lifeline::plan::fixtures::*;
use lifeline::plan::{Plan, plan};

const IP: &str = "127.0.20.1";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kamailio-render")
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_739_350_800 + secs).unwrap()
}

fn two_regions() -> (FallbackPolicySpec, World) {
    let spec = policy()
        .region("cologne", 60)
        .region("berlin", 40)
        .expected_calls(100)
        .route("inbound", 1, |r| {
            r.tier("fixed", [trunk("fixed-cgn"), trunk("fixed-ber")])
                .tier("mobile", [trunk("mobile-cgn"), trunk("mobile-ber")])
        })
        .route("bots", 2, |r| {
            r.tier("bots", [bots("bots-cgn"), bots("bots-ber")])
                .tier("agents", [uri("sip:agents@127.0.20.40:5060", "cologne")])
        })
        .build();
    let world = world()
        .trunk(
            "fixed-cgn",
            "cologne",
            ["sip:127.0.20.10:5060", "sip:127.0.20.12:5060;transport=tcp"],
        )
        .trunk("mobile-cgn", "cologne", ["sip:127.0.20.11:5060"])
        .trunk("fixed-ber", "berlin", ["sip:127.0.20.20:5060"])
        .trunk("mobile-ber", "berlin", ["sip:127.0.20.21:5060"])
        .bot_pool(
            "bots-cgn",
            "cologne",
            10,
            ["10.0.1.1", "10.0.1.2", "10.0.1.3"],
        )
        .bot_pool("bots-ber", "berlin", 10, ["10.0.2.1", "10.0.2.2"])
        .uri_state("sip:agents@127.0.20.40:5060", EndpointState::Up);
    (spec, world)
}

/// (name, plan) for every scenario worth loading into Kamailio.
fn scenarios() -> Vec<(&'static str, Plan)> {
    let (spec, w) = two_regions();
    let (healthy, _) = plan(&spec, &w.observed(), None, t(0));
    let outage_world = w
        .clone()
        .trunk_state("fixed-cgn", EndpointState::Down)
        .trunk_state("fixed-ber", EndpointState::Down);
    let (outage, _) = plan(&spec, &outage_world.observed(), Some(&healthy), t(10));
    let (bots_down, _) = plan(
        &spec,
        &w.clone().bots_ready("bots-cgn", 0, 3).observed(),
        Some(&healthy),
        t(10),
    );
    let drained_spec = FallbackPolicySpec {
        r#override: policy()
            .drain(
                &["berlin"],
                Some("2025-02-12T12:00:00Z"),
                "carrier maintenance; window 2",
            )
            .build()
            .r#override,
        ..spec.clone()
    };
    let (drained, _) = plan(&drained_spec, &w.observed(), Some(&healthy), t(10));
    let dead = w
        .clone()
        .bots_ready("bots-cgn", 0, 3)
        .bots_ready("bots-ber", 0, 2)
        .trunk_state("fixed-cgn", EndpointState::Down)
        .trunk_state("fixed-ber", EndpointState::Down)
        .trunk_state("mobile-cgn", EndpointState::Down)
        .trunk_state("mobile-ber", EndpointState::Down)
        .uri_state("sip:agents@127.0.20.40:5060", EndpointState::Down);
    let (fail_open, _) = plan(&spec, &dead.observed(), Some(&healthy), t(10));
    assert!(fail_open.fail_open());
    let overflow_spec = FallbackPolicySpec {
        expected_concurrent_calls: 80,
        ..spec.clone()
    };
    let (overflow, _) = plan(&overflow_spec, &w.observed(), None, t(0));
    vec![
        ("healthy", healthy),
        ("carrier-outage", outage),
        ("bots-not-ready", bots_down),
        ("override-drain", drained),
        ("fail-open", fail_open),
        ("bot-overflow", overflow),
    ]
}

/// Kamailio with the fixture config (`tests/fixtures/kamailio-render/kamailio.cfg`).
struct RenderKamailio;

impl RenderKamailio {
    fn args(list: &Path) -> Vec<String> {
        vec![
            "-f".into(),
            fixtures()
                .join("kamailio.cfg")
                .to_string_lossy()
                .into_owned(),
            "-A".into(),
            format!("SIP_LISTEN=udp:{IP}:5060"),
            "-A".into(),
            format!("RPC_LISTEN=tcp:{IP}:5071"),
            "-A".into(),
            format!("DS_LIST=\"{}\"", list.display()),
        ]
    }

    /// `kamailio -c`: does the configuration, with this list, check?
    fn check(list: &Path) -> Result<(), String> {
        let out = Command::new("/usr/sbin/kamailio")
            .arg("-c")
            .args(Self::args(list))
            .output()
            .map_err(|e| format!("run kamailio -c: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn start(list: &Path, dir: &Path) -> Kamailio {
        let mut args = Self::args(list);
        args.extend(["-m", "32", "-M", "4"].map(String::from));
        Kamailio::launch(&args, format!("http://{IP}:5071/RPC"), dir)
    }
}

async fn rpc(http: &reqwest::Client, method: &str) -> Result<serde_json::Value, String> {
    let body = format!(r#"{{"jsonrpc":"2.0","method":"{method}","id":1}}"#);
    let resp = http
        .post(format!("http://{IP}:5071/RPC"))
        .body(body)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    if let Some(err) = v.get("error") {
        return Err(err.to_string());
    }
    Ok(v["result"].clone())
}

/// set id → sorted (uri, priority, weight, duid) as Kamailio reports them.
type Sets = BTreeMap<u64, Vec<(String, u64, u64, String)>>;

fn sets_from_rpc(result: &serde_json::Value) -> Sets {
    let mut sets = Sets::new();
    for record in result["RECORDS"].as_array().into_iter().flatten() {
        let set = &record["SET"];
        let id = set["ID"].as_u64().unwrap();
        let mut dests: Vec<_> = set["TARGETS"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let d = &t["DEST"];
                (
                    d["URI"].as_str().unwrap_or_default().to_string(),
                    d["PRIORITY"].as_u64().unwrap_or_default(),
                    d["ATTRS"]["WEIGHT"].as_u64().unwrap_or_default(),
                    d["ATTRS"]["DUID"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        dests.sort();
        sets.insert(id, dests);
    }
    sets
}

fn sets_from_plan(plan: &Plan) -> Sets {
    let mut sets = Sets::new();
    for r in &plan.routes {
        if r.destinations.is_empty() {
            continue;
        }
        let mut dests: Vec<_> = r
            .destinations
            .iter()
            .map(|d| {
                (
                    d.uri.clone(),
                    u64::from(d.priority),
                    u64::from(d.weight),
                    d.duid.clone(),
                )
            })
            .collect();
        dests.sort();
        sets.insert(u64::from(r.set_id), dests);
    }
    sets
}

/// Rendered text equals the golden file (or rewrites it under `LIFELINE_BLESS=1`).
fn golden(name: &str, text: &str) {
    let path = fixtures().join(format!("{name}.list"));
    if std::env::var("LIFELINE_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with LIFELINE_BLESS=1 once", path.display()));
    assert_eq!(
        text, want,
        "rendering of scenario {name} changed (LIFELINE_BLESS=1 to accept)"
    );
}

#[tokio::test]
async fn every_rendered_scenario_is_loaded_by_kamailio() {
    let dir = std::env::temp_dir().join(format!("lifeline-render-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("dispatcher.list");
    let scenarios = scenarios();

    // Start on the first scenario, then reload each one into the same process.
    std::fs::write(
        &list,
        lifeline::routing::dispatcher::render("calls/main", &scenarios[0].1),
    )
    .unwrap();
    let kamailio = RenderKamailio::start(&list, &dir);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while rpc(&http, "core.version").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "kamailio not ready:\n{}",
            kamailio.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (name, plan) in &scenarios {
        let text = lifeline::routing::dispatcher::render("calls/main", plan);
        golden(name, &text);
        std::fs::write(&list, &text).unwrap();
        if let Err(e) = RenderKamailio::check(&list) {
            panic!("kamailio -c rejects scenario {name}:\n{text}\n{e}");
        }
        rpc(&http, "dispatcher.reload")
            .await
            .unwrap_or_else(|e| panic!("reload of {name} failed: {e}\n{}", kamailio.log_tail()));
        // A malformed line does not fail the reload; it is logged and dropped, so the
        // log and the listed sets are what prove the file was accepted.
        let log = std::fs::read_to_string(&kamailio.log).unwrap_or_default();
        assert!(
            !log.contains("ERROR: dispatcher"),
            "scenario {name}:\n{}",
            kamailio.log_tail()
        );
        let listed = rpc(&http, "dispatcher.list").await.unwrap();
        assert_eq!(
            sets_from_rpc(&listed),
            sets_from_plan(plan),
            "scenario {name}:\n{text}"
        );
        // The weights Kamailio uses add up to 100 in every set.
        for (set, dests) in sets_from_rpc(&listed) {
            assert_eq!(
                dests.iter().map(|d| d.2).sum::<u64>(),
                100,
                "scenario {name} set {set}"
            );
        }
    }

    // What a user would check after the carrier outage: set 1 carries calls only on
    // the mobile lines, Cologne and Berlin at 60/40.
    let outage = &scenarios[1].1;
    std::fs::write(
        &list,
        lifeline::routing::dispatcher::render("calls/main", outage),
    )
    .unwrap();
    rpc(&http, "dispatcher.reload").await.unwrap();
    let sets = sets_from_rpc(&rpc(&http, "dispatcher.list").await.unwrap());
    let carrying: Vec<(&str, u64)> = sets[&1]
        .iter()
        .filter(|d| d.2 > 0)
        .map(|d| (d.0.as_str(), d.2))
        .collect();
    assert_eq!(
        carrying,
        vec![("sip:127.0.20.11:5060", 60), ("sip:127.0.20.21:5060", 40)]
    );
    let text = lifeline::routing::dispatcher::render("calls/main", outage);
    assert!(
        text.contains(
            "# set 1 excluded sip:127.0.20.10:5060 (tier fixed): trunk 'fixed-cgn' endpoint Down"
        ),
        "{text}"
    );

    drop(kamailio);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_same_plan_renders_byte_identical_text() {
    for (name, plan) in scenarios() {
        let a = lifeline::routing::dispatcher::render("calls/main", &plan);
        let b = lifeline::routing::dispatcher::render("calls/main", &plan.clone());
        assert_eq!(a, b, "{name}");
        let ja = lifeline::routing::json::render("calls/main", &plan);
        let v: serde_json::Value = serde_json::from_str(&ja).unwrap();
        assert_eq!(v["routes"].as_array().unwrap().len(), plan.routes.len());
        assert_eq!(
            ja,
            lifeline::routing::json::render("calls/main", &plan.clone())
        );
    }
}
