//! The FallbackPolicy controller against the real control plane (`make testenv-up`).
//!
//! - Trunk health flips (Trunk status patched through the status subresource as a
//!   stand-in for the prober, which has its own tests) rewrite the routing ConfigMap;
//!   a quiet period writes nothing; missing references and fail-open are reported.
//! - With the Trunk controller running too, real sipp peers on 127.0.20.x answer SIP
//!   OPTIONS; killing the fixed-line peer moves the route to the mobile tier, and a
//!   static `uri` target is probed by the policy controller itself.
//!
//! Run: `cargo test --test policy_controller` (needs `/usr/bin/sipp`).

mod common;

use std::time::Duration;

use common::sip::sipp_options;
use common::{Controller, Harness, eventually};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use lifeline::crd::{BotPool, FallbackPolicy, Trunk, find_condition};
use serde_json::json;

const CONTENT_HASH: &str = "lifeline.dev/content-hash";

/// A namespace with the policy controller (and optionally the trunk controller).
async fn start(prefix: &str, with_trunk_controller: bool) -> Option<Harness> {
    let controllers: &[Controller] = if with_trunk_controller {
        &[Controller::Policy, Controller::Trunk]
    } else {
        &[Controller::Policy]
    };
    Harness::start(prefix, &[], controllers).await
}

/// What the tests here read and write through the harness.
impl Harness {
    async fn create_trunk(&self, name: &str, region: &str, uri: &str, fast_probe: bool) {
        let mut spec = json!({ "region": region, "endpoints": [{ "uri": uri }] });
        if fast_probe {
            spec["probe"] = json!({
                "periodSeconds": 1, "timeoutMillis": 300,
                "failureThreshold": 1, "successThreshold": 1
            });
        }
        self.create_trunk_spec(name, spec).await;
    }

    /// Stand-in for the prober: every endpoint of `name` in `state`.
    async fn set_trunk_state(&self, name: &str, uri: &str, state: &str) {
        let up = u32::from(state == "Up");
        let status = json!({ "status": {
            "healthyEndpoints": up,
            "endpoints": [{ "uri": uri, "state": state, "consecutiveFailures": 1 - up }],
        }});
        self.ns
            .api::<Trunk>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch trunk status");
    }

    async fn create_bot_pool(&self, name: &str, region: &str) {
        let _: BotPool = self
            .ns
            .create_from(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "BotPool",
                "metadata": { "name": name },
                "spec": { "region": region, "image": "example.org/bot:1", "callsPerReplica": 10 },
            }))
            .await;
    }

    async fn set_bots(&self, name: &str, ready: u32, desired: u32, ips: &[&str]) {
        let status = json!({ "status": {
            "replicas": desired, "readyReplicas": ready, "desiredReplicas": desired,
            "readyCapacity": ready * 10,
            "endpoints": ips.iter().map(|ip| format!("{ip}:5060")).collect::<Vec<_>>(),
        }});
        self.ns
            .api::<BotPool>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch botpool status");
    }

    async fn create_policy(&self, spec: serde_json::Value) {
        let _: FallbackPolicy = self
            .ns
            .create_from(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
                "metadata": { "name": "main" }, "spec": spec,
            }))
            .await;
    }

    /// Wait until the routing ConfigMap satisfies `ok`; return its text.
    async fn routing_where(&self, what: &str, ok: impl Fn(&str) -> bool) -> (ConfigMap, String) {
        let api = self.ns.api::<ConfigMap>();
        eventually(Duration::from_secs(20), what, || {
            let api = api.clone();
            let ok = &ok;
            async move {
                let cm = api.get_opt("sip-routing").await.ok()??;
                let text = cm.data.as_ref()?.get("dispatcher.list")?.clone();
                ok(&text).then_some((cm, text))
            }
        })
        .await
    }

    async fn policy(&self) -> FallbackPolicy {
        self.ns
            .api::<FallbackPolicy>()
            .get("main")
            .await
            .expect("get policy")
    }
}

/// The destinations of set `set` that carry calls (have a weight).
fn weighted(text: &str, set: u32) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{set} ")) && l.contains(";weight="))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn trunk_health_flips_rewrite_the_routing_and_quiet_periods_write_nothing() {
    let Some(h) = start("policy-flip", false).await else {
        return;
    };
    h.create_trunk("fixed-cgn", "cologne", "sip:127.0.20.10:5060", false)
        .await;
    h.create_trunk("mobile-cgn", "cologne", "sip:127.0.20.11:5060", false)
        .await;
    h.set_trunk_state("fixed-cgn", "sip:127.0.20.10:5060", "Up")
        .await;
    h.set_trunk_state("mobile-cgn", "sip:127.0.20.11:5060", "Up")
        .await;
    h.create_bot_pool("bots-cgn", "cologne").await;
    h.set_bots("bots-cgn", 2, 2, &["10.0.1.1", "10.0.1.2"])
        .await;
    h.create_policy(json!({
        "routingConfigMap": { "name": "sip-routing" },
        "expectedConcurrentCalls": 10,
        "regions": [{ "name": "cologne", "weight": 1 }],
        "routes": [
            { "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "fixed-cgn" }, { "trunk": "ghost" }] },
                { "name": "mobile", "targets": [{ "trunk": "mobile-cgn" }] },
            ]},
            { "name": "bots", "setId": 2, "tiers": [
                { "name": "bots", "targets": [{ "botPool": "bots-cgn" }] },
            ]},
        ],
        "failover": { "recoverAfterSeconds": 1 },
    }))
    .await;

    // Published: fixed line carries the calls, the ConfigMap is owned and hashed.
    let (cm, text) = h
        .routing_where("fixed line routed", |t| {
            weighted(t, 1) == ["sip:127.0.20.10:5060"]
        })
        .await;
    assert_eq!(cm.annotations().get(CONTENT_HASH), Some(&sha256_hex(&text)));
    assert_eq!(
        cm.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("lifeline")
    );
    let owner = &cm.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("FallbackPolicy", "main", Some(true))
    );
    assert_eq!(
        weighted(&text, 2),
        [
            "sip:10.0.1.1:5060;transport=udp",
            "sip:10.0.1.2:5060;transport=udp"
        ]
    );

    let policy = eventually(Duration::from_secs(10), "status written", || async {
        let p = h.policy().await;
        p.status.as_ref()?.config_map_hash.as_ref()?;
        Some(p)
    })
    .await;
    let status = policy.status.clone().unwrap();
    assert_eq!(
        status.config_map_hash.as_deref(),
        Some(sha256_hex(&text).as_str())
    );
    assert_eq!(status.routes[0].active_tier.as_deref(), Some("fixed"));
    assert_eq!(
        status
            .demand
            .iter()
            .map(|d| (d.bot_pool.as_str(), d.concurrent_calls))
            .collect::<Vec<_>>(),
        [("bots-cgn", 10)]
    );
    assert_eq!(status.active_regions.as_deref(), Some("cologne"));
    let ready = find_condition(&status.conditions, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "MissingReference")
    );
    assert!(
        ready.message.contains("trunk 'ghost' not found"),
        "{}",
        ready.message
    );
    assert_eq!(status.observed_generation, policy.metadata.generation);

    // Quiet: nothing changes, nothing is written.
    let cm_version = cm.resource_version();
    let policy_version = policy.resource_version();
    let writes_before = h.ctx.metrics.configmap_writes.get();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cm_now = h.ns.api::<ConfigMap>().get("sip-routing").await.unwrap();
    assert_eq!(
        cm_now.resource_version(),
        cm_version,
        "ConfigMap rewritten without a change"
    );
    assert_eq!(
        h.policy().await.resource_version(),
        policy_version,
        "status rewritten without a change"
    );
    assert_eq!(h.ctx.metrics.configmap_writes.get(), writes_before);

    // The carrier fails: the route moves to the mobile tier.
    h.set_trunk_state("fixed-cgn", "sip:127.0.20.10:5060", "Down")
        .await;
    let (_, text) = h
        .routing_where("mobile line routed", |t| {
            weighted(t, 1) == ["sip:127.0.20.11:5060"]
        })
        .await;
    assert!(
        text.contains(
            "# set 1 excluded sip:127.0.20.10:5060 (tier fixed): trunk 'fixed-cgn' endpoint Down"
        ),
        "{text}"
    );
    eventually(
        Duration::from_secs(10),
        "status shows the mobile tier",
        || async {
            let s = h.policy().await.status?;
            (s.routes[0].active_tier.as_deref() == Some("mobile")).then_some(())
        },
    )
    .await;

    // And back.
    h.set_trunk_state("fixed-cgn", "sip:127.0.20.10:5060", "Up")
        .await;
    h.routing_where("fixed line routed again", |t| {
        weighted(t, 1) == ["sip:127.0.20.10:5060"]
    })
    .await;

    // The only region's bots stop being ready: the region fails, the routing fails open
    // (keeps the last good destinations) and says so.
    h.set_bots("bots-cgn", 0, 2, &[]).await;
    let status = eventually(
        Duration::from_secs(10),
        "region failed, fail-open",
        || async {
            let s = h.policy().await.status?;
            let degraded = find_condition(&s.conditions, "Degraded")?;
            (degraded.reason == "FailOpen").then_some(s)
        },
    )
    .await;
    assert_eq!(status.regions[0].effective_weight, 0);
    assert_eq!(format!("{}", status.regions[0].state), "Failed");
    let (_, text) = h
        .routing_where("fail-open routing", |t| t.contains("FAIL-OPEN"))
        .await;
    assert_eq!(
        weighted(&text, 1),
        ["sip:127.0.20.10:5060"],
        "last known good kept:\n{text}"
    );
    let events = eventually(
        Duration::from_secs(10),
        "Failover and FailOpen events",
        || async {
            let ev = h.events("main").await;
            (ev.iter().any(|e| e.0 == "Failover") && ev.iter().any(|e| e.0 == "FailOpen"))
                .then_some(ev)
        },
    )
    .await;
    let failover = events.iter().find(|e| e.0 == "Failover").unwrap();
    assert!(
        failover
            .1
            .contains("botPool 'bots-cgn': 0/1 replicas ready"),
        "{failover:?}"
    );

    // Bots back: Recovering, then (recoverAfterSeconds: 1) Active with a Failback event.
    h.set_bots("bots-cgn", 2, 2, &["10.0.1.1", "10.0.1.2"])
        .await;
    eventually(
        Duration::from_secs(15),
        "Failback event and Active region",
        || async {
            let s = h.policy().await.status?;
            let ev = h.events("main").await;
            (s.regions[0].effective_weight == 100 && ev.iter().any(|e| e.0 == "Failback"))
                .then_some(())
        },
    )
    .await;
    assert!(h.ctx.metrics.failovers.get() >= 1 && h.ctx.metrics.failbacks.get() >= 1);
}

#[tokio::test]
async fn a_carrier_that_stops_answering_probes_moves_the_route() {
    let Some(h) = start("policy-probe", true).await else {
        return;
    };
    let fixed = sipp_options(200, "127.0.20.50", 5060, "u1");
    let _mobile = sipp_options(200, "127.0.20.51", 5060, "u1");
    let _agents = sipp_options(200, "127.0.20.52", 5060, "u1");
    h.create_trunk("fixed-cgn", "cologne", "sip:127.0.20.50:5060", true)
        .await;
    h.create_trunk("mobile-cgn", "cologne", "sip:127.0.20.51:5060", true)
        .await;
    h.create_policy(json!({
        "routingConfigMap": { "name": "sip-routing" },
        "regions": [{ "name": "cologne", "weight": 1 }],
        "routes": [
            { "name": "inbound", "setId": 1, "tiers": [
                { "name": "fixed", "targets": [{ "trunk": "fixed-cgn" }] },
                { "name": "mobile", "targets": [{ "trunk": "mobile-cgn" }] },
            ]},
            { "name": "agents", "setId": 2, "tiers": [
                { "name": "pbx", "targets": [{ "uri": "sip:127.0.20.52:5060", "region": "cologne" }] },
            ]},
        ],
    }))
    .await;

    h.routing_where("fixed line routed after real probes", |t| {
        weighted(t, 1) == ["sip:127.0.20.50:5060"] && !t.contains("FAIL-OPEN")
    })
    .await;
    // The static PBX target is probed by the policy controller (default probe: 5 s
    // period, 2 successes) and becomes a routed destination once Up.
    h.routing_where("static target probed Up", |t| {
        weighted(t, 2) == ["sip:127.0.20.52:5060"] && !t.contains("FAIL-OPEN")
    })
    .await;

    drop(fixed);
    let (_, text) = h
        .routing_where("mobile line routed after the carrier died", |t| {
            weighted(t, 1) == ["sip:127.0.20.51:5060"]
                && t.contains("trunk 'fixed-cgn' endpoint Down")
        })
        .await;
    assert!(text.contains("trunk 'fixed-cgn' endpoint Down"), "{text}");
    // The move from the fixed line to the mobile line is an Event naming the route,
    // both tiers and the trunk that caused it.
    let tier_event = eventually(Duration::from_secs(20), "a TierFallback event", || async {
        h.events("main")
            .await
            .into_iter()
            .find(|(reason, _)| reason == "TierFallback")
    })
    .await;
    assert_eq!(
        tier_event.1,
        "route inbound: tier fixed → mobile: trunk 'fixed-cgn' down"
    );
}

/// A ConfigMap of the routing's name that is not lifeline's is left alone: the policy
/// says so once (condition and one Warning Event) and waits, without retrying; when
/// the user deletes it, the routing is published at once (the deletion is watched).
#[tokio::test]
async fn a_foreign_configmap_is_reported_once_and_its_deletion_publishes_the_routing() {
    let Some(h) = start("policy-conflict", false).await else {
        return;
    };
    let foreign: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "sip-routing" },
        "data": { "dispatcher.list": "# the PBX team's own list\n" },
    }))
    .unwrap();
    h.ns.api::<ConfigMap>()
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create foreign configmap");
    h.create_trunk("fixed-cgn", "cologne", "sip:127.0.20.30:5060", false)
        .await;
    h.set_trunk_state("fixed-cgn", "sip:127.0.20.30:5060", "Up")
        .await;
    h.create_policy(json!({
        "routingConfigMap": { "name": "sip-routing" },
        "expectedConcurrentCalls": 1,
        "regions": [{ "name": "cologne", "weight": 1 }],
        "routes": [{ "name": "inbound", "setId": 1, "tiers": [
            { "name": "fixed", "targets": [{ "trunk": "fixed-cgn" }] },
        ]}],
    }))
    .await;

    let ready = eventually(Duration::from_secs(20), "conflict reported", || async {
        let p = h.policy().await;
        let c = find_condition(&p.status?.conditions, "Ready")?.clone();
        (c.reason == "ConfigMapConflict").then_some(c)
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("'sip-routing'"), "{}", ready.message);
    // Permanent: no retries, so nothing is rewritten while it stands.
    let version = h.policy().await.resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        h.policy().await.resource_version(),
        version,
        "status rewritten"
    );
    let cm = h.ns.api::<ConfigMap>().get("sip-routing").await.unwrap();
    assert_eq!(
        cm.data.unwrap()["dispatcher.list"],
        "# the PBX team's own list\n",
        "the foreign ConfigMap was touched"
    );
    let warnings = |events: Vec<(String, String)>| {
        events
            .into_iter()
            .filter(|(reason, _)| reason == "ConfigMapConflict")
            .count()
    };
    assert_eq!(
        warnings(h.events("main").await),
        1,
        "{:?}",
        h.events("main").await
    );

    // The user deletes it: published without waiting for any retry.
    h.ns.api::<ConfigMap>()
        .delete("sip-routing", &Default::default())
        .await
        .expect("delete foreign configmap");
    let (cm, _) = h
        .routing_where("routing published after the deletion", |t| {
            weighted(t, 1) == ["sip:127.0.20.30:5060"]
        })
        .await;
    assert_eq!(cm.owner_references()[0].name, "main");
    let ready = eventually(Duration::from_secs(10), "Ready again", || async {
        let p = h.policy().await;
        let c = find_condition(&p.status?.conditions, "Ready")?.clone();
        (c.status == "True").then_some(c)
    })
    .await;
    assert_eq!(ready.reason, "Published");
}
