//! `lifeline sip-sync` against the real control plane and a real Kamailio 5.6 running
//! `examples/kamailio/kamailio.cfg` on 127.0.30.x.
//!
//! Each test: its own namespace, its own Kamailio address, sip-sync in-process.

mod common;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use lifeline::routing::dispatcher::{self, DispatcherList};
use lifeline::routing::{
    APPLIED_HASH_ANNOTATION, CONTENT_HASH_ANNOTATION, SYNC_ERROR_ANNOTATION, content_hash,
};
use lifeline::sip_sync::kamailio::KamailioRpc;
use serde_json::json;

use common::TempDir;
use common::kamailio::Kamailio;
use common::sip::{sipp_calls_succeed, sipp_uas};
use common::sync::{ROUTING_CONFIGMAP, SipSync};

const CONFIGMAP: &str = ROUTING_CONFIGMAP;
const WAIT: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sync")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Write the routing ConfigMap the way the operator does: the data key plus the
/// content-hash annotation, by server-side apply.
async fn put_routing(api: &Api<ConfigMap>, text: &str) {
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "annotations": { CONTENT_HASH_ANNOTATION: content_hash(text) },
        },
        "data": { "dispatcher.list": text },
    });
    api.patch(
        CONFIGMAP,
        &PatchParams::apply("lifeline-tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("apply routing ConfigMap");
}

async fn annotation(api: &Api<ConfigMap>, key: &str) -> Option<String> {
    let cm = api.get_opt(CONFIGMAP).await.ok().flatten()?;
    cm.metadata.annotations?.get(key).cloned()
}

async fn loaded(rpc: &KamailioRpc) -> Option<DispatcherList> {
    rpc.list_dispatcher().await.ok()
}

async fn probe(addr: &str, path: &str) -> u16 {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Wait until Kamailio reports exactly the destinations of `text` and the ConfigMap
/// carries its hash as applied.
async fn assert_applied(api: &Api<ConfigMap>, rpc: &KamailioRpc, text: &str, what: &str) {
    let expected = dispatcher::parse(text).expect("fixture parses");
    common::eventually(WAIT, &format!("Kamailio loads {what}"), || {
        let expected = expected.clone();
        async move { (loaded(rpc).await? == expected).then_some(()) }
    })
    .await;
    let hash = content_hash(text);
    common::eventually(WAIT, &format!("applied-hash of {what}"), || {
        let hash = hash.clone();
        async move { (annotation(api, APPLIED_HASH_ANNOTATION).await? == hash).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_changes_reach_kamailio_and_are_confirmed() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "sipsync-apply", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = TempDir::new("lifeline-sipsync-apply");
    let file = dir.0.join("dispatcher.list");
    // Kamailio starts with a routing that lifeline knows nothing about.
    std::fs::write(&file, "9 sip:127.0.30.199:5080\n").unwrap();
    let mut kamailio = Kamailio::edge("127.0.30.1", &file, &dir.0);
    kamailio.wait_ready(WAIT).await;
    let rpc = KamailioRpc::new(&kamailio.rpc_url, Duration::from_secs(1)).unwrap();
    let sync = SipSync::spawn(client, &ns.name, file.clone(), &kamailio.rpc_url);

    let a = fixture("routing-a.list");
    put_routing(&api, &a).await;
    assert_applied(&api, &rpc, &a, "routing A").await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), a);

    let b = fixture("routing-b.list");
    put_routing(&api, &b).await;
    assert_applied(&api, &rpc, &b, "routing B").await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), b);
    let sets = loaded(&rpc).await.unwrap().set_sizes();
    assert_eq!(sets.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);

    assert_eq!(sync.metric("lifeline_sync_applied_total"), 2.0);
    assert_eq!(sync.metric("lifeline_sync_duration_seconds_count"), 2.0);
    assert_eq!(annotation(&api, SYNC_ERROR_ANNOTATION).await, None);
    // No temporary file is left next to the dispatcher file.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("dispatcher"))
        .collect();
    assert_eq!(names, vec!["dispatcher.list".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_or_empty_lists_are_rejected_and_the_old_routing_stays() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "sipsync-reject", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = TempDir::new("lifeline-sipsync-reject");
    let file = dir.0.join("dispatcher.list");
    let a = fixture("routing-a.list");
    std::fs::write(&file, "9 sip:127.0.30.199:5080\n").unwrap();
    let mut kamailio = Kamailio::edge("127.0.30.2", &file, &dir.0);
    kamailio.wait_ready(WAIT).await;
    let rpc = KamailioRpc::new(&kamailio.rpc_url, Duration::from_secs(1)).unwrap();
    let sync = SipSync::spawn(client, &ns.name, file.clone(), &kamailio.rpc_url);
    put_routing(&api, &a).await;
    assert_applied(&api, &rpc, &a, "routing A").await;

    for (name, reason) in [("invalid.list", "parse"), ("empty.list", "empty")] {
        put_routing(&api, &fixture(name)).await;
        let error = common::eventually(WAIT, &format!("sync-error for {name}"), || async {
            annotation(&api, SYNC_ERROR_ANNOTATION)
                .await
                .filter(|e| e.contains(&content_hash(fixture(name))[..12]))
        })
        .await;
        assert!(error.contains("rejected"), "{error}");
        assert_eq!(
            sync.metric(&format!(
                "lifeline_sync_failures_total{{reason=\"{reason}\"}}"
            )),
            1.0,
            "{}",
            sync.metrics.encode()
        );
        // The old routing stays: in Kamailio, on disk and in the annotation.
        assert_eq!(loaded(&rpc).await, Some(dispatcher::parse(&a).unwrap()));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), a);
        assert_eq!(
            annotation(&api, APPLIED_HASH_ANNOTATION).await,
            Some(content_hash(&a))
        );
    }

    // A valid version afterwards is applied and clears the warning.
    let b = fixture("routing-b.list");
    put_routing(&api, &b).await;
    assert_applied(&api, &rpc, &b, "routing B").await;
    common::eventually(WAIT, "sync-error cleared", || async {
        annotation(&api, SYNC_ERROR_ANNOTATION)
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_sync_retries_until_kamailio_starts() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "sipsync-late", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = TempDir::new("lifeline-sipsync-late");
    let file = dir.0.join("dispatcher.list");
    let rpc_url = "http://127.0.30.3:5071/RPC";
    let probes = "127.0.30.3:9464";
    let sync =
        SipSync::spawn_with_probes(client, &ns.name, file.clone(), rpc_url, probes.parse().ok());
    let a = fixture("routing-a.list");
    put_routing(&api, &a).await;

    // No Kamailio yet: the file is written (so Kamailio finds it at start-up) but
    // nothing is reported as applied, and the failures are counted.
    common::eventually(WAIT, "connect failures counted", || async {
        (sync.metric("lifeline_sync_failures_total{reason=\"connect\"}") >= 2.0).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), a);
    assert_eq!(annotation(&api, APPLIED_HASH_ANNOTATION).await, None);
    let error = annotation(&api, SYNC_ERROR_ANNOTATION)
        .await
        .unwrap_or_default();
    assert!(error.contains("cannot reach Kamailio"), "{error}");
    // Kamailio may start now (the file is there) but the pod is not ready yet.
    assert_eq!(probe(probes, "/startupz").await, 200);
    assert_eq!(probe(probes, "/readyz").await, 503);

    let mut kamailio = Kamailio::edge("127.0.30.3", &file, &dir.0);
    kamailio.wait_ready(WAIT).await;
    let rpc = KamailioRpc::new(rpc_url, Duration::from_secs(1)).unwrap();
    assert_applied(&api, &rpc, &a, "routing A after Kamailio started").await;
    assert_eq!(sync.metric("lifeline_sync_applied_total"), 1.0);
    assert_eq!(probe(probes, "/readyz").await, 200);
    let metrics = reqwest::get(format!("http://{probes}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("lifeline_sync_applied_total 1"),
        "{metrics}"
    );
    common::eventually(WAIT, "sync-error cleared", || async {
        annotation(&api, SYNC_ERROR_ANNOTATION)
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

/// The example configuration routes by the set sip-sync applied, and its failure
/// route moves a call to the next destination when the first does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_the_applied_routing_and_fail_over() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "sipsync-route", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = TempDir::new("lifeline-sipsync-route");
    let file = dir.0.join("dispatcher.list");
    std::fs::write(&file, "9 sip:127.0.30.199:5080\n").unwrap();
    // The caller (.42) is not in the routing list: declare it, as a deployment would.
    let mut kamailio = Kamailio::edge_with(
        "127.0.30.4",
        &file,
        &dir.0,
        &["ALLOW_FROM=\"127.0.30.42/32\""],
    );
    kamailio.wait_ready(WAIT).await;
    let rpc = KamailioRpc::new(&kamailio.rpc_url, Duration::from_secs(1)).unwrap();
    let _sync = SipSync::spawn(client, &ns.name, file.clone(), &kamailio.rpc_url);
    let _bots = sipp_uas("127.0.30.41", 5080, None);

    // Set 1 prefers a carrier that is down (nothing listens on .40), then the bots.
    let routing = "# inbound: dead carrier first, bots second\n\
                   1 sip:127.0.30.40:5080 0 10 duid=dead-carrier\n\
                   1 sip:127.0.30.41:5080 0 5 duid=bots\n";
    put_routing(&api, routing).await;
    assert_applied(&api, &rpc, routing, "routing with a dead first destination").await;

    let ok = tokio::task::spawn_blocking(|| {
        sipp_calls_succeed("127.0.30.42", 5070, "127.0.30.4:5060", "inbound", 2)
    })
    .await
    .unwrap();
    assert!(ok, "calls failed over to the bots\n{}", kamailio.log_tail());
    // The failure route marked the dead carrier inactive (and probing).
    let answer = rpc.call("dispatcher.list").await.unwrap();
    let flags = answer["RECORDS"][0]["SET"]["TARGETS"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["DEST"]["URI"] == "sip:127.0.30.40:5080")
        .map(|t| t["DEST"]["FLAGS"].as_str().unwrap_or_default().to_string());
    assert_eq!(flags.as_deref(), Some("IP"), "{answer}");
}

/// A restarted sidecar finds the file and Kamailio already holding the routing and
/// does not reload: a reload would reset the state of every destination, e.g. bring
/// back one the failure route had just marked down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sip_sync_does_not_reload_what_kamailio_already_runs() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "sipsync-restart", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = TempDir::new("lifeline-sipsync-restart");
    let file = dir.0.join("dispatcher.list");
    std::fs::write(&file, "9 sip:127.0.30.199:5080\n").unwrap();
    let mut kamailio = Kamailio::edge("127.0.30.5", &file, &dir.0);
    kamailio.wait_ready(WAIT).await;
    let rpc = KamailioRpc::new(&kamailio.rpc_url, Duration::from_secs(1)).unwrap();
    let first = SipSync::spawn(client.clone(), &ns.name, file.clone(), &kamailio.rpc_url);
    let a = fixture("routing-a.list");
    put_routing(&api, &a).await;
    assert_applied(&api, &rpc, &a, "routing A").await;
    drop(first);

    // Kamailio takes a destination out on its own, as its failure route does.
    let down = "sip:127.0.30.101:5080";
    let answer = reqwest::Client::new()
        .post(&kamailio.rpc_url)
        .json(&json!({"jsonrpc": "2.0", "method": "dispatcher.set_state", "params": ["i", 1, down], "id": 1}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(answer.contains("state updated"), "{answer}");
    assert_eq!(state_of(&rpc, down).await.as_deref(), Some("IX"));

    let second = SipSync::spawn(client, &ns.name, file.clone(), &kamailio.rpc_url);
    common::eventually(WAIT, "restarted sip-sync confirms routing A", || async {
        (second.metric("lifeline_sync_applied_total") == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        state_of(&rpc, down).await.as_deref(),
        Some("IX"),
        "no reload happened"
    );
    assert_eq!(
        annotation(&api, APPLIED_HASH_ANNOTATION).await,
        Some(content_hash(&a))
    );

    // The check above can fail: a reload does reset the state.
    rpc.reload_dispatcher().await.unwrap();
    assert_eq!(state_of(&rpc, down).await.as_deref(), Some("AX"));
}

/// Kamailio's FLAGS for a destination URI (e.g. `AX` active, `IP` inactive+probing).
async fn state_of(rpc: &KamailioRpc, uri: &str) -> Option<String> {
    let answer = rpc.call("dispatcher.list").await.ok()?;
    answer["RECORDS"]
        .as_array()?
        .iter()
        .flat_map(|r| r["SET"]["TARGETS"].as_array().into_iter().flatten())
        .find(|t| t["DEST"]["URI"] == uri)
        .and_then(|t| t["DEST"]["FLAGS"].as_str())
        .map(str::to_string)
}

/// An edge restarted during an API outage: the dispatcher file from before is on disk,
/// the API server cannot be reached. `/startupz` passes at once (Kamailio can start with
/// that routing); `/readyz` waits for a confirmed routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_api_server_starts_from_the_file_on_disk() {
    let dir = TempDir::new("lifeline-sipsync-noapi");
    let file = dir.0.join("dispatcher.list");
    std::fs::write(&file, fixture("routing-a.list")).unwrap();
    // A client for an API server that is not there (nothing listens on this port).
    let config = kube::Config::new("https://127.0.30.7:1".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let probes = "127.0.30.7:9464";
    let _sync = SipSync::spawn_with_probes(
        client,
        "nowhere",
        file.clone(),
        "http://127.0.30.7:5071/RPC",
        probes.parse().ok(),
    );
    common::eventually(WAIT, "/startupz passes from the file on disk", || async {
        (probe(probes, "/startupz").await == 200).then_some(())
    })
    .await;
    assert_eq!(probe(probes, "/readyz").await, 503);

    // A file that is not a valid routing does not pass.
    let bad = TempDir::new("lifeline-sipsync-noapi-bad");
    let bad_file = bad.0.join("dispatcher.list");
    std::fs::write(&bad_file, fixture("invalid.list")).unwrap();
    let config = kube::Config::new("https://127.0.30.8:1".parse().unwrap());
    let bad_probes = "127.0.30.8:9464";
    let _bad_sync = SipSync::spawn_with_probes(
        kube::Client::try_from(config).unwrap(),
        "nowhere",
        bad_file,
        "http://127.0.30.8:5071/RPC",
        bad_probes.parse().ok(),
    );
    common::eventually(WAIT, "probe server up", || async {
        (probe(bad_probes, "/healthz").await == 200).then_some(())
    })
    .await;
    assert_eq!(probe(bad_probes, "/startupz").await, 503);
}

/// Kamailio drops a destination it cannot resolve without an error; reloading again
/// cannot help. sip-sync reloads a bounded number of times, then stops and says so
/// (metric, annotation), until the routing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dropped_destination_gets_bounded_reloads_and_a_clear_signal() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "sipsync-dropped", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = TempDir::new("lifeline-sipsync-dropped");
    let file = dir.0.join("dispatcher.list");
    std::fs::write(&file, "9 sip:127.0.30.199:5080\n").unwrap();
    let mut kamailio = Kamailio::edge("127.0.30.9", &file, &dir.0);
    kamailio.wait_ready(WAIT).await;
    let sync = SipSync::spawn(client, &ns.name, file.clone(), &kamailio.rpc_url);
    let dropped = format!(
        "{}1 sip:lifeline-test-no-such-host.invalid:5080 0 1 duid=unresolvable\n",
        fixture("routing-a.list")
    );
    put_routing(&api, &dropped).await;
    common::eventually(WAIT, "sip-sync gives up and says so", || async {
        (sync.metric("lifeline_sync_unconfirmed") == 1.0).then_some(())
    })
    .await;
    let error = annotation(&api, SYNC_ERROR_ANNOTATION)
        .await
        .unwrap_or_default();
    assert!(
        error.contains("lifeline-test-no-such-host.invalid"),
        "{error}"
    );
    // No more reloads: the count of confirm failures stays at the bound.
    let failures = sync.metric("lifeline_sync_failures_total{reason=\"confirm\"}");
    assert_eq!(failures, f64::from(lifeline::sip_sync::MAX_UNCONFIRMED));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sync.metric("lifeline_sync_failures_total{reason=\"confirm\"}"),
        failures,
        "sip-sync kept reloading"
    );
    eprintln!("silently dropped destination: {failures} reloads, then stopped");

    // A routing Kamailio can load clears the signal.
    let a = fixture("routing-a.list");
    put_routing(&api, &a).await;
    let rpc = KamailioRpc::new(&kamailio.rpc_url, Duration::from_secs(1)).unwrap();
    assert_applied(&api, &rpc, &a, "routing A").await;
    assert_eq!(sync.metric("lifeline_sync_unconfirmed"), 0.0);
}

/// A destination Kamailio marked down (failure route, its own probing) stays down when
/// sip-sync reloads for other destinations' sake; it starts afresh only when its own
/// entry changed (the operator's view of it changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_marks_survive_our_reloads_unless_the_destination_changed() {
    let Some(client) = common::client().await else {
        return;
    };
    let ns = common::TestNamespace::create(client.clone(), "sipsync-marks", &[]).await;
    let api: Api<ConfigMap> = ns.api();
    let dir = TempDir::new("lifeline-sipsync-marks");
    let file = dir.0.join("dispatcher.list");
    std::fs::write(&file, "9 sip:127.0.30.199:5080\n").unwrap();
    let mut kamailio = Kamailio::edge("127.0.30.10", &file, &dir.0);
    kamailio.wait_ready(WAIT).await;
    let rpc = KamailioRpc::new(&kamailio.rpc_url, Duration::from_secs(1)).unwrap();
    let _sync = SipSync::spawn(client, &ns.name, file.clone(), &kamailio.rpc_url);
    let a = fixture("routing-a.list");
    put_routing(&api, &a).await;
    assert_applied(&api, &rpc, &a, "routing A").await;

    let down = "sip:127.0.30.101:5080";
    let answer = rpc
        .call_with("dispatcher.set_state", json!(["ip", 1, down]))
        .await
        .unwrap();
    assert!(answer.to_string().contains("state updated"), "{answer}");
    assert_eq!(state_of(&rpc, down).await.as_deref(), Some("IP"));

    // Another destination is added: reload, and the mark stays.
    let b = format!("{a}2 sip:127.0.30.104:5080 0 0 duid=carrier-out-2\n");
    put_routing(&api, &b).await;
    assert_applied(&api, &rpc, &b, "routing A + one").await;
    assert_eq!(
        state_of(&rpc, down).await.as_deref(),
        Some("IP"),
        "our reload re-activated a destination Kamailio had marked down"
    );

    // The destination's own entry changes (new priority): it starts afresh.
    let c = b.replace(
        "1 sip:127.0.30.101:5080 0 10 duid=cologne-fixed",
        "1 sip:127.0.30.101:5080 0 3 duid=cologne-fixed",
    );
    assert_ne!(b, c);
    put_routing(&api, &c).await;
    assert_applied(&api, &rpc, &c, "routing with a changed entry").await;
    let flags = state_of(&rpc, down).await.unwrap_or_default();
    assert!(
        flags.starts_with('A'),
        "changed entry not re-activated: {flags}"
    );
}
