//! Live demand against the real control plane (`make testenv-up`): the policy and
//! BotPool controllers run in-process, bot pods are run by the testenv's fake kubelet,
//! the human agents are a real sipp answering the policy's SIP OPTIONS probes on
//! 127.0.61.1, and the test plays the SIP edge's sip-sync: it writes `SipEdge` member
//! reports with live calls (server-side apply, one field manager per member, as
//! sip-sync does).
//!
//! What a user checks: `FallbackPolicy.status.measured` shows the calls the edge
//! reports per route, region and tier; the calls beyond the agents'
//! `maxConcurrentCalls` become the bot pool's demand, its Deployment grows, and shrinks
//! back after the stabilization window when the calls end; a member whose pod is gone
//! does not count.
//!
//! Run: `cargo test --test live_demand` (needs `/usr/bin/sipp`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::eventually;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use lifeline::crd::{
    BotPool, FallbackPolicy, POLICY_DEGRADED, RegionState, SipEdge, member_field_manager,
};
use serde_json::json;

const AGENTS: &str = "sip:127.0.61.1:5060";
const POOL: &str = "frankfurt-bots";
const WAIT: Duration = Duration::from_secs(30);

/// The agents' PBX: a sipp answering OPTIONS with 200, killed (process group) on drop.
struct Agents(Child);

impl Agents {
    fn start() -> Self {
        use std::os::unix::process::CommandExt as _;
        let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sip/uas_options_200.xml");
        let child = Command::new("/usr/bin/sipp")
            .args(["-sf", &scenario.to_string_lossy(), "-i", "127.0.61.1"])
            .args(["-p", "5060", "-t", "u1", "-nostdin", "-m", "1000"])
            .args(["-timeout", "180s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start /usr/bin/sipp");
        std::thread::sleep(Duration::from_millis(300));
        Self(child)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// The policy, BotPool and SipEdge controllers in a namespace of their own.
struct Harness {
    h: common::Harness,
}

impl Harness {
    async fn start() -> Option<Self> {
        use common::Controller::{BotPool, Edge, Policy};
        let h = common::Harness::start("live-demand", &[], &[Policy, BotPool, Edge]).await?;
        Some(Self { h })
    }

    async fn create<K>(&self, value: serde_json::Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let obj: K = serde_json::from_value(value).expect("valid object");
        self.h
            .ns
            .api::<K>()
            .create(&PostParams::default(), &obj)
            .await
            .expect("create");
    }

    /// Write one member's report as that member's sip-sync would.
    async fn report(&self, member: &str, pod_uid: Option<&str>, calls: serde_json::Value) {
        let mut entry = json!({ "name": member, "calls": calls });
        if let Some(uid) = pod_uid {
            entry["podUid"] = json!(uid);
        }
        let body = json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
            "metadata": { "name": "edge" },
            "status": { "members": [entry] },
        });
        self.h
            .ns
            .api::<SipEdge>()
            .patch_status(
                "edge",
                &PatchParams::apply(&member_field_manager(member)).force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("report to the SipEdge");
    }

    async fn policy(&self) -> FallbackPolicy {
        self.h
            .ns
            .api::<FallbackPolicy>()
            .get("main")
            .await
            .expect("get policy")
    }

    async fn pool(&self) -> BotPool {
        self.h
            .ns
            .api::<BotPool>()
            .get(POOL)
            .await
            .expect("get pool")
    }

    async fn deployment_replicas(&self) -> Option<i32> {
        self.h
            .ns
            .api::<Deployment>()
            .get_opt(POOL)
            .await
            .ok()
            .flatten()?
            .spec?
            .replicas
    }
}

fn calls(uri: &str, active: u32, cps: f64) -> serde_json::Value {
    json!({ "uri": uri, "setId": 1, "activeCalls": active, "callsPerSecond": cps })
}

#[tokio::test]
async fn bots_follow_the_calls_the_edge_measures_beyond_the_agents_capacity() {
    let Some(h) = Harness::start().await else {
        return;
    };
    let _agents = Agents::start();
    h.create::<BotPool>(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "BotPool",
        "metadata": { "name": POOL },
        "spec": {
            "region": "frankfurt", "image": "example.org/bot:1", "callsPerReplica": 5,
            "replicas": { "min": 1, "max": 8 },
            "scaling": { "scaleDownStabilizationSeconds": 5, "headroomPercent": 20 },
        },
    }))
    .await;
    h.create::<FallbackPolicy>(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": { "name": "main" },
        "spec": {
            "routingConfigMap": { "name": "sip-routing" },
            // The planning floor fits the agents: only measured calls move the bots.
            "expectedConcurrentCalls": 5,
            "regions": [{ "name": "frankfurt" }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "agents", "targets": [
                    { "uri": AGENTS, "region": "frankfurt", "maxConcurrentCalls": 10 } ] },
                { "name": "bots", "targets": [{ "botPool": POOL }] },
            ]}],
        },
    }))
    .await;
    h.create::<SipEdge>(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "SipEdge",
        "metadata": { "name": "edge" },
        "spec": { "routingConfigMap": "sip-routing" },
    }))
    .await;

    // One bot up (the floor), its address in the routing.
    let bot = eventually(WAIT, "the pool's floor bot is ready", || async {
        let pool = h.pool().await;
        let st = pool.status?;
        (st.ready_replicas == 1).then(|| st.endpoints.first().cloned())?
    })
    .await;
    let bot_ip = bot.split(':').next().unwrap().to_string();
    let bot_uri = format!("sip:{bot_ip}:5060;transport=udp");
    // The agents answer from the start and the floor bot is up: the region takes calls
    // on the first tier. Start-up may pass through Failed while the floor bot starts
    // (a region that never served is not an alert), so this is awaited, not sampled.
    let st = eventually(
        WAIT,
        "the policy routes to the agents of an Active region",
        || async {
            let st = h.policy().await.status?;
            let region = st.regions.first()?;
            let on_agents = st.routes.first()?.active_tier.as_deref() == Some("agents");
            (on_agents && region.state == RegionState::Active).then_some(st)
        },
    )
    .await;
    let region = &st.regions[0];
    assert!(region.has_served, "{region:?}");
    assert!(
        st.conditions
            .iter()
            .all(|c| !(c.type_ == POLICY_DEGRADED && c.status == "True")),
        "no fail-open once the agents and the bot are up: {:?}",
        st.conditions
    );

    // A member whose pod is gone still has calls in its entry: they must not count.
    h.report(
        "edge-gone-0",
        Some("00000000-0000-0000-0000-000000000000"),
        json!([calls(AGENTS, 100, 50.0)]),
    )
    .await;
    // The live member: agents full (10), 16 calls overflowed to the bot.
    h.report(
        "edge-0",
        None,
        json!([calls(AGENTS, 10, 5.0), calls(&bot_uri, 16, 8.0)]),
    )
    .await;

    let measured = eventually(WAIT, "status.measured shows the live calls", || async {
        let m = h.policy().await.status?.measured?;
        (m.concurrent_calls == 26).then_some(m)
    })
    .await;
    assert_eq!(
        measured.edge_members, 1,
        "the member without a pod is not counted"
    );
    assert_eq!(measured.calls_per_second, 13.0);
    let route = &measured.routes[0];
    assert_eq!((route.name.as_str(), route.set_id), ("inbound", 1));
    let tiers: Vec<(&str, u32)> = route
        .tiers
        .iter()
        .map(|t| (t.name.as_str(), t.concurrent_calls))
        .collect();
    assert_eq!(tiers, vec![("agents", 10), ("bots", 16)]);
    assert_eq!(route.regions[0].name, "frankfurt");
    assert_eq!(route.regions[0].concurrent_calls, 26);

    let policy = h.policy().await;
    let demand = &policy.status.as_ref().unwrap().demand[0];
    assert_eq!(demand.bot_pool, POOL);
    assert_eq!(demand.concurrent_calls, 16, "26 calls − 10 agents");
    assert_eq!(
        demand.floor_calls,
        Some(0),
        "5 expected calls fit the agents"
    );
    assert_eq!(demand.measured_calls, Some(16));

    // 16 calls + 20 % headroom = 19.2 → 4 bots of 5 calls.
    eventually(WAIT, "the pool wants 4 bots", || async {
        let st = h.pool().await.status?;
        (st.desired_replicas == 4 && st.demand == 16).then_some(())
    })
    .await;
    eventually(WAIT, "the Deployment runs 4 bots", || async {
        (h.deployment_replicas().await? == 4).then_some(())
    })
    .await;

    // The surge ends: measured calls 0, the floor again; back to 1 bot after the
    // 5 s stabilization window, not before.
    h.report("edge-0", None, json!([])).await;
    let calm = eventually(WAIT, "the demand falls to the floor", || async {
        let st = h.policy().await.status?;
        (st.demand.first()?.concurrent_calls == 0).then_some(st)
    })
    .await;
    assert_eq!(calm.measured.as_ref().unwrap().concurrent_calls, 0);
    assert_eq!(calm.demand[0].measured_calls, None);
    // Right after the fall, within the window: still 4.
    assert_eq!(h.pool().await.status.unwrap().desired_replicas, 4);
    eventually(WAIT, "the pool shrinks back to its floor", || async {
        let st = h.pool().await.status?;
        (st.desired_replicas == 1).then_some(())
    })
    .await;
    eventually(WAIT, "the Deployment runs 1 bot", || async {
        (h.deployment_replicas().await? == 1).then_some(())
    })
    .await;
}
