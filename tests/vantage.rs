//! Every SIP edge is a vantage point: real Kamailio edges with `lifeline sip-sync`
//! beside them probe the carriers from the edge's own address, report to their
//! `SipEdge`, and the operator combines their views with its own by quorum.
//!
//! Real components only, on loopback: the control plane from `tests/testenv`, Kamailio
//! 5.6 edges running `examples/kamailio/kamailio.cfg`, and carriers that are Kamailio
//! too (`tests/fixtures/kamailio/options_filtered.cfg`: answers OPTIONS, optionally
//! only from the edges' addresses, like an SBC that accepts the addresses it was told).
//! The operator's controllers and sip-sync run in this process. Each test has its own
//! namespace and its own 127.0.9x.0/24.
//!
//! - (a) a carrier that answers only the edge: Down (and a false failover) with
//!   `vantage: Operator`, Up again (routing back) with `vantage: Edges`.
//! - (b) two edges, one whose outbound traffic is dropped (an iptables rule scoped to
//!   that edge's source address, removed on drop): it becomes `Isolated`, the
//!   carriers stay Up and the routing does not move.
//! - (c) a carrier really dies: both edges and the operator agree, and the edges'
//!   Kamailio routes elsewhere within period × failureThreshold + timeout + 1 s.
//!
//! Run: `cargo test --test vantage` (needs kamailio, and root for iptables in (b)).

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::eventually;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use lifeline::crd::{
    EDGE_ISOLATED, EndpointState, FallbackPolicy, SipEdge, Trunk, VantageVote, find_condition,
};
use lifeline::sip_sync::SyncArgs;
use lifeline::sip_sync::probe::ProbeArgs;
use lifeline::sip_sync::report::ReportArgs;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::TempDir;
use common::kamailio::Kamailio;

const ROUTING: &str = "sip-routing";
const EDGE: &str = "edge";
const WAIT: Duration = Duration::from_secs(30);
/// Probe settings of every Trunk here.
const PERIOD_S: u64 = 1;
const TIMEOUT_MS: u64 = 500;
const THRESHOLD: u64 = 3;

/// A carrier: Kamailio answering OPTIONS on `ip:5060`, only from sources matching
/// `allowed` when given. Its process group is killed on drop.
struct Carrier {
    child: Child,
    _dir: TempDir,
}

impl Carrier {
    fn start(ip: &str, allowed: Option<&str>) -> Self {
        let dir = TempDir::new("lifeline-vantage-carrier");
        let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kamailio/options_filtered.cfg");
        let run = dir.0.to_string_lossy().into_owned();
        let mut cmd = Command::new("/usr/sbin/kamailio");
        cmd.args(["-f", &cfg.to_string_lossy(), "-DD", "-E", "-n", "1"])
            .args(["-Y", &run, "-w", &run, "-l", &format!("udp:{ip}:5060")]);
        if let Some(re) = allowed {
            cmd.args(["-A", &format!("ALLOWED_SRC=\"{re}\"")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start /usr/sbin/kamailio");
        std::thread::sleep(Duration::from_millis(500));
        Self { child, _dir: dir }
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// One edge member: a Kamailio on `ip` and sip-sync probing from `ip`, reporting to
/// the `SipEdge` as `member`. Stopped on drop (sip-sync removes its entry).
struct EdgeMember {
    kamailio: Kamailio,
    stop: CancellationToken,
    _dir: TempDir,
}

impl EdgeMember {
    async fn start(client: &Client, ns: &str, ip: &str, member: &str) -> Self {
        let dir = TempDir::new("lifeline-vantage-edge");
        let file = dir.0.join("dispatcher.list");
        // Kamailio needs a list to start; sip-sync replaces it with the routing.
        std::fs::write(&file, "9 sip:127.0.0.1:9\n").unwrap();
        let mut kamailio = Kamailio::edge(ip, &file, &dir.0);
        kamailio.wait_ready(WAIT).await;
        let args = SyncArgs {
            namespace: ns.to_string(),
            configmap: ROUTING.into(),
            key: "dispatcher.list".into(),
            file,
            rpc_url: kamailio.rpc_url.clone(),
            rpc_timeout_ms: 1000,
            max_backoff_ms: 1000,
            metrics_addr: None,
            watch_list: false,
            annotate: false,
            report: ReportArgs {
                edge: Some(EDGE.into()),
                member: Some(member.into()),
                pod_uid: None,
            },
            probe: ProbeArgs {
                bind: Some(ip.parse().unwrap()),
                allow: vec!["127.0.0.0/8".into()],
                ..ProbeArgs::default()
            },
        };
        let stop = CancellationToken::new();
        tokio::spawn(lifeline::sip_sync::run_with_client(
            client.clone(),
            args,
            Arc::new(lifeline::telemetry::SyncMetrics::new()),
            stop.clone(),
        ));
        Self {
            kamailio,
            stop,
            _dir: dir,
        }
    }

    /// The URIs Kamailio sends new calls of set 1 to: loaded destinations with a
    /// `weight` (standby tiers are loaded without one), read from `dispatcher.list`.
    async fn loaded(&self) -> Vec<String> {
        let body = json!({ "jsonrpc": "2.0", "method": "dispatcher.list", "id": 1 });
        let Ok(resp) = reqwest::Client::new()
            .post(&self.kamailio.rpc_url)
            .json(&body)
            .timeout(Duration::from_secs(1))
            .send()
            .await
        else {
            return Vec::new();
        };
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for record in v["result"]["RECORDS"].as_array().into_iter().flatten() {
            if record["SET"]["ID"] != 1 {
                continue;
            }
            for t in record["SET"]["TARGETS"].as_array().into_iter().flatten() {
                let attrs = t["DEST"]["ATTRS"]["BODY"].as_str().unwrap_or_default();
                if attrs.contains("weight=")
                    && let Some(uri) = t["DEST"]["URI"].as_str()
                {
                    out.push(uri.to_string());
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for EdgeMember {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = &self.kamailio;
    }
}

/// Drops every packet sent from `source` to `dest_net` (iptables OUTPUT; loopback
/// traffic passes that chain too) until dropped.
struct Blackhole {
    spec: Vec<String>,
}

impl Blackhole {
    fn new(source: &str, dest_net: &str) -> Self {
        let spec: Vec<String> = ["OUTPUT", "-s", source, "-d", dest_net, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ok = Command::new("iptables")
            .arg("-I")
            .args(&spec)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "iptables -I {} failed: this test needs root and iptables (scripts/install-deps.sh)",
            spec.join(" ")
        );
        Self { spec }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.spec).status();
    }
}

/// The operator's controllers for one namespace.
/// The controllers that combine vantages (Trunk, FallbackPolicy, SipEdge) in a test
/// namespace, with the SipEdge the members report to.
struct Operator(common::Harness);

impl std::ops::Deref for Operator {
    type Target = common::Harness;
    fn deref(&self) -> &common::Harness {
        &self.0
    }
}

impl Operator {
    async fn start(prefix: &str) -> Option<Self> {
        use common::Controller;
        let h = common::Harness::start(
            prefix,
            &[],
            &[Controller::Trunk, Controller::Policy, Controller::Edge],
        )
        .await?;
        let _: SipEdge =
            h.ns.create_from(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
                "metadata": { "name": EDGE },
                "spec": { "routingConfigMap": ROUTING },
            }))
            .await;
        Some(Self(h))
    }

    async fn create_trunk(&self, name: &str, uri: &str, vantage: &str) {
        let spec = json!({
            "region": "cologne",
            "endpoints": [{ "uri": uri }],
            "probe": {
                "periodSeconds": PERIOD_S, "timeoutMillis": TIMEOUT_MS,
                "failureThreshold": THRESHOLD, "successThreshold": 1,
                "vantage": vantage,
            },
        });
        self.create_trunk_spec(name, spec).await;
    }

    /// One route: `primary` first, `backup` when the primary is down.
    async fn create_policy(&self, primary: &str, backup: &str) {
        let _: FallbackPolicy = self
            .ns
            .create_from(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
                "metadata": { "name": "main" },
                "spec": {
                    "routingConfigMap": { "name": ROUTING },
                    "regions": [{ "name": "cologne", "weight": 1 }],
                    "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                        { "name": "primary", "targets": [{ "trunk": primary }] },
                        { "name": "backup", "targets": [{ "trunk": backup }] },
                    ]}],
                    "failover": { "failAfterSeconds": 0, "recoverAfterSeconds": 0 },
                },
            }))
            .await;
    }

    async fn trunk(&self, name: &str) -> Trunk {
        self.ns.api::<Trunk>().get(name).await.expect("get trunk")
    }

    async fn wait_trunk(&self, name: &str, state: EndpointState, what: &str) -> Trunk {
        let api = self.ns.api::<Trunk>();
        eventually(WAIT, what, || {
            let api = api.clone();
            async move {
                let t = api.get(name).await.ok()?;
                let s = t.status.as_ref()?;
                (!s.endpoints.is_empty() && s.endpoints.iter().all(|e| e.state == state))
                    .then_some(t)
            }
        })
        .await
    }

    async fn active_tier(&self) -> Option<String> {
        let p = self.ns.api::<FallbackPolicy>().get("main").await.ok()?;
        p.status?.routes.first()?.active_tier.clone()
    }

    async fn wait_tier(&self, tier: &str, what: &str) {
        eventually(WAIT, what, || async {
            (self.active_tier().await.as_deref() == Some(tier)).then_some(())
        })
        .await
    }

    async fn routing_hash(&self) -> Option<String> {
        let cm = self.ns.api::<ConfigMap>().get_opt(ROUTING).await.ok()??;
        cm.metadata
            .annotations?
            .get("lifeline.dev/content-hash")
            .cloned()
    }

    async fn edge(&self) -> SipEdge {
        self.ns
            .api::<SipEdge>()
            .get(EDGE)
            .await
            .expect("get SipEdge")
    }

    /// Wait until member `member` reports `uri` in `state`.
    async fn wait_report(&self, member: &str, uri: &str, state: EndpointState) {
        let api = self.ns.api::<SipEdge>();
        eventually(
            WAIT,
            &format!("edge member {member} reports {uri} {state}"),
            || {
                let api = api.clone();
                async move {
                    let e = api.get(EDGE).await.ok()?;
                    let m = e.status?.members.into_iter().find(|m| m.name == member)?;
                    m.probes
                        .iter()
                        .any(|p| p.uri == uri && p.state == state)
                        .then_some(())
                }
            },
        )
        .await
    }

    async fn event_reasons(&self, kind: &str, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = self.ns.api();
        let list = api.list(&ListParams::default()).await.expect("list events");
        list.items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

fn vote_of(trunk: &Trunk, vantage: &str) -> Option<(VantageVote, String)> {
    trunk
        .status
        .as_ref()?
        .vantages
        .iter()
        .find(|v| v.name == vantage)
        .map(|v| (v.vote, v.healthy_summary.clone()))
}

/// (a) A carrier that accepts SIP only from the edge's address (as carriers do) looks
/// dead from the operator pod: with `vantage: Operator` lifeline fails over for
/// nothing; with `vantage: Edges` the carrier is Up and the routing goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_filtering_carrier_is_down_from_the_operator_and_up_from_the_edge() {
    let Some(op) = Operator::start("vantage-filter").await else {
        return;
    };
    let filtered = "sip:127.0.90.20:5060";
    let open = "sip:127.0.90.21:5060";
    let _carrier_a = Carrier::start("127.0.90.20", Some("^127[.]0[.]90[.]10$"));
    let _carrier_b = Carrier::start("127.0.90.21", None);
    let edge = EdgeMember::start(&op.client(), &op.ns.name, "127.0.90.10", "a").await;
    op.create_trunk("carrier-a", filtered, "Operator").await;
    op.create_trunk("carrier-b", open, "Operator").await;
    op.create_policy("carrier-a", "carrier-b").await;

    // The edge reaches the carrier; the operator pod does not.
    op.wait_report("a", filtered, EndpointState::Up).await;
    let trunk = op
        .wait_trunk(
            "carrier-a",
            EndpointState::Down,
            "carrier-a Down (Operator)",
        )
        .await;
    // The false failover: calls leave the carrier that works for them.
    op.wait_tier("backup", "route on the backup tier (false failover)")
        .await;
    eventually(WAIT, "edge Kamailio routes to carrier-b", || async {
        (edge.loaded().await == [open]).then_some(())
    })
    .await;
    let trunk = match vote_of(&trunk, "edge/a") {
        Some(_) => trunk,
        None => {
            eventually(WAIT, "Trunk status lists the edge's view", || async {
                let t = op.trunk("carrier-a").await;
                vote_of(&t, "edge/a").map(|_| t)
            })
            .await
        }
    };
    assert_eq!(
        vote_of(&trunk, "edge/a"),
        Some((VantageVote::NotSelected, "1/1".into()))
    );
    let summary = trunk.status.as_ref().unwrap().vantage_summary.clone();
    assert_eq!(
        summary.as_deref(),
        Some("disagree: edge/a (NotSelected) sees 1/1"),
        "the disagreement is visible in kubectl get"
    );

    // Believe the edge: the carrier is Up, the routing goes back to it.
    op.ns
        .api::<Trunk>()
        .patch(
            "carrier-a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "probe": { "vantage": "Edges" } } })),
        )
        .await
        .expect("patch vantage");
    let trunk = op
        .wait_trunk("carrier-a", EndpointState::Up, "carrier-a Up (Edges)")
        .await;
    assert_eq!(
        vote_of(&trunk, "edge/a"),
        Some((VantageVote::Counted, "1/1".into()))
    );
    assert_eq!(
        vote_of(&trunk, "operator"),
        Some((VantageVote::NotSelected, "0/1".into()))
    );
    let err = trunk.status.as_ref().unwrap().endpoints[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        err.contains("1 of 1 counted vantages see it Up"),
        "the status says why the operator's own probe was overruled: {err}"
    );
    op.wait_tier("primary", "route back on carrier-a").await;
    eventually(WAIT, "edge Kamailio routes to carrier-a again", || async {
        (edge.loaded().await == [filtered]).then_some(())
    })
    .await;
}

/// (b) One of two edges loses its uplink (its outbound packets are dropped): it sees
/// every carrier fail while the other edge and the operator see them answer. It is
/// marked Isolated (condition, Event, metric); the carriers stay Up and the routing
/// does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_lost_its_uplink_is_isolated_and_nothing_fails_over() {
    let Some(op) = Operator::start("vantage-isolated").await else {
        return;
    };
    let (uri_a, uri_b) = ("sip:127.0.91.20:5060", "sip:127.0.91.21:5060");
    let _carrier_a = Carrier::start("127.0.91.20", None);
    let _carrier_b = Carrier::start("127.0.91.21", None);
    let edge_a = EdgeMember::start(&op.client(), &op.ns.name, "127.0.91.10", "a").await;
    let _edge_b = EdgeMember::start(&op.client(), &op.ns.name, "127.0.91.11", "b").await;
    op.create_trunk("carrier-a", uri_a, "Both").await;
    op.create_trunk("carrier-b", uri_b, "Both").await;
    op.create_policy("carrier-a", "carrier-b").await;
    for m in ["a", "b"] {
        for uri in [uri_a, uri_b] {
            op.wait_report(m, uri, EndpointState::Up).await;
        }
    }
    op.wait_trunk("carrier-a", EndpointState::Up, "carrier-a Up")
        .await;
    op.wait_tier("primary", "route on carrier-a").await;
    let hash = op.routing_hash().await.expect("routing written");
    let history = |p: FallbackPolicy| p.status.map(|s| s.history.len()).unwrap_or(0);
    let history_before = history(op.ns.api::<FallbackPolicy>().get("main").await.unwrap());

    // Edge b's uplink goes: nothing it sends reaches the carriers.
    let cut = Blackhole::new("127.0.91.11", "127.0.91.20/31");
    op.wait_report("b", uri_a, EndpointState::Down).await;
    op.wait_report("b", uri_b, EndpointState::Down).await;
    let edge = eventually(WAIT, "SipEdge Isolated=True", || async {
        let e = op.edge().await;
        let s = e.status.as_ref()?;
        (find_condition(&s.conditions, EDGE_ISOLATED)?.status == "True").then_some(e)
    })
    .await;
    let status = edge.status.as_ref().unwrap();
    assert_eq!(status.isolated_members, ["b"]);
    let c = find_condition(&status.conditions, EDGE_ISOLATED).unwrap();
    assert!(
        c.message.contains("b sees all 2 destinations fail"),
        "{}",
        c.message
    );
    let metrics = op.ctx.metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lifeline_edge_isolated{")
                && l.contains("member=\"b\"")
                && l.ends_with(" 1")),
        "lifeline_edge_isolated{{member=b}} is 1:\n{metrics}"
    );
    let events = eventually(WAIT, "an UplinkLost Event", || async {
        let ev = op.event_reasons("SipEdge", EDGE).await;
        ev.iter().any(|(r, _)| r == "UplinkLost").then_some(ev)
    })
    .await;
    assert!(
        events
            .iter()
            .any(|(_, n)| n.contains("edge edge lost its uplink")),
        "{events:?}"
    );

    // The isolated view is shown but not believed: both carriers stay Up.
    let trunk = eventually(WAIT, "Trunk shows edge/b as Isolated", || async {
        let t = op.trunk("carrier-a").await;
        (vote_of(&t, "edge/b")?.0 == VantageVote::Isolated).then_some(t)
    })
    .await;
    assert_eq!(
        vote_of(&trunk, "edge/b"),
        Some((VantageVote::Isolated, "0/1".into()))
    );
    // Hold the cut for a few more detection windows: nothing may move.
    tokio::time::sleep(Duration::from_secs(PERIOD_S * THRESHOLD + 2)).await;
    for name in ["carrier-a", "carrier-b"] {
        let t = op.trunk(name).await;
        let s = t.status.unwrap();
        assert!(
            s.endpoints.iter().all(|e| e.state == EndpointState::Up),
            "{name} stays Up: {:?}",
            s.endpoints
        );
        assert!(
            s.vantage_summary
                .as_deref()
                .is_some_and(|v| v.contains("edge/b (Isolated)")),
            "{:?}",
            s.vantage_summary
        );
    }
    assert_eq!(op.active_tier().await.as_deref(), Some("primary"));
    assert_eq!(op.routing_hash().await.as_deref(), Some(hash.as_str()));
    assert_eq!(
        history(op.ns.api::<FallbackPolicy>().get("main").await.unwrap()),
        history_before,
        "no region transition"
    );
    assert_eq!(edge_a.loaded().await, [uri_a]);

    // The uplink returns: the edge is believed again.
    drop(cut);
    eventually(WAIT, "SipEdge Isolated=False", || async {
        let e = op.edge().await;
        let s = e.status.as_ref()?;
        (find_condition(&s.conditions, EDGE_ISOLATED)?.status == "False"
            && s.isolated_members.is_empty())
        .then_some(())
    })
    .await;
    assert_eq!(op.routing_hash().await.as_deref(), Some(hash.as_str()));
}

/// (c) A carrier really dies: the operator and both edges see it Down, and the
/// edges' Kamailio routes new calls to the backup within the detection window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_carrier_is_seen_by_every_vantage_and_routing_moves_in_time() {
    let Some(op) = Operator::start("vantage-dead").await else {
        return;
    };
    let (uri_a, uri_b) = ("sip:127.0.92.20:5060", "sip:127.0.92.21:5060");
    let carrier_a = Carrier::start("127.0.92.20", None);
    let _carrier_b = Carrier::start("127.0.92.21", None);
    let edge_a = EdgeMember::start(&op.client(), &op.ns.name, "127.0.92.10", "a").await;
    let edge_b = EdgeMember::start(&op.client(), &op.ns.name, "127.0.92.11", "b").await;
    op.create_trunk("carrier-a", uri_a, "Both").await;
    op.create_trunk("carrier-b", uri_b, "Both").await;
    op.create_policy("carrier-a", "carrier-b").await;
    for m in ["a", "b"] {
        op.wait_report(m, uri_a, EndpointState::Up).await;
    }
    op.wait_tier("primary", "route on carrier-a").await;
    for e in [&edge_a, &edge_b] {
        eventually(WAIT, "edges route to carrier-a", || async {
            (e.loaded().await == [uri_a]).then_some(())
        })
        .await;
    }

    let died = Instant::now();
    drop(carrier_a);
    let bound = Duration::from_millis(PERIOD_S * THRESHOLD * 1000 + TIMEOUT_MS + 1000);
    let mut moved = [None, None];
    while moved.iter().any(Option::is_none) && died.elapsed() < bound + WAIT {
        for (i, e) in [&edge_a, &edge_b].iter().enumerate() {
            if moved[i].is_none() && e.loaded().await == [uri_b] {
                moved[i] = Some(died.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved: Vec<Duration> = moved
        .iter()
        .map(|m| m.expect("edge routes to carrier-b"))
        .collect();
    eprintln!("routing moved on the edges after {moved:?} (bound {bound:?})");
    for m in &moved {
        assert!(
            *m <= bound,
            "routing moved after {m:?}, over period × failureThreshold + timeout + 1 s = {bound:?}"
        );
    }

    // Everyone agrees: the operator and both edges see carrier-a Down.
    let trunk = eventually(WAIT, "every vantage sees carrier-a Down", || async {
        let t = op.trunk("carrier-a").await;
        let s = t.status.as_ref()?;
        (s.vantage_summary.as_deref() == Some("agree")
            && s.vantages.len() == 3
            && s.vantages.iter().all(|v| v.healthy_summary == "0/1"))
        .then_some(t)
    })
    .await;
    assert_eq!(
        trunk.status.unwrap().endpoints[0].state,
        EndpointState::Down
    );
    // A real outage is not an isolated edge.
    let edge = op.edge().await;
    let s = edge.status.unwrap();
    assert!(s.isolated_members.is_empty());
}
