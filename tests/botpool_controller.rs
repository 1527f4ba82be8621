//! The BotPool controller against the real control plane from `tests/testenv`, with
//! pods run by its fake kubelet and the real deployment, HPA and garbage-collector
//! controllers. The controller runs in-process, watching only the test's namespace.
//! The tests play the policy controller: they write `FallbackPolicy.status.demand`.
//!
//! Every namespace enforces the "restricted" Pod Security profile, so any pod that
//! becomes Ready here was admitted under it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Controller, Harness, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use lifeline::crd::{BotPool, FIELD_MANAGER, FallbackPolicy, find_condition};
use serde_json::json;

const POOL: &str = "cologne-bots";
const WAIT: Duration = Duration::from_secs(30);

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!(
        "{}/tests/fixtures/botpool/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    serde_norway::from_str(&text).expect("fixture parses")
}

/// A namespace enforcing the "restricted" Pod Security profile, with the BotPool
/// controller running in it.
async fn start(prefix: &str) -> Option<Harness> {
    Harness::start(
        prefix,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
        &[Controller::BotPool],
    )
    .await
}

/// What the tests here read and write through the harness.
impl Harness {
    async fn create_pool(&self, pool: BotPool) {
        self.ns
            .api::<BotPool>()
            .create(&PostParams::default(), &pool)
            .await
            .expect("create BotPool");
    }

    async fn pool(&self) -> BotPool {
        self.ns
            .api::<BotPool>()
            .get(POOL)
            .await
            .expect("get BotPool")
    }

    async fn deployment(&self) -> Option<Deployment> {
        self.ns
            .api::<Deployment>()
            .get_opt(POOL)
            .await
            .expect("get Deployment")
    }

    async fn deployment_replicas(&self) -> Option<i32> {
        self.deployment().await?.spec?.replicas
    }

    /// Act as the policy controller: set the demand a policy assigns to the pool.
    async fn set_demand(&self, calls: u32) {
        let api = self.ns.api::<FallbackPolicy>();
        if api
            .get_opt("contact-center")
            .await
            .expect("get policy")
            .is_none()
        {
            let policy: FallbackPolicy = fixture("policy.yaml");
            api.create(&PostParams::default(), &policy)
                .await
                .expect("create FallbackPolicy");
        }
        let status = json!({ "status": { "demand": [
            { "botPool": POOL, "concurrentCalls": calls },
            { "botPool": "some-other-pool", "concurrentCalls": 500 },
        ] } });
        api.patch_status(
            "contact-center",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .expect("patch policy status");
    }

    async fn pods(&self) -> Vec<Pod> {
        self.ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("lifeline.dev/botpool={POOL}")))
            .await
            .expect("list pods")
            .items
    }

    /// Status once it shows exactly `ready` ready bots and `desired` desired replicas.
    async fn wait_status(&self, ready: u32, desired: u32, what: &str) -> BotPool {
        eventually(WAIT, what, || async {
            let pool = self.pool().await;
            let s = pool.status.as_ref()?;
            (s.ready_replicas == ready && s.desired_replicas == desired && s.replicas == ready)
                .then_some(pool)
        })
        .await
    }

    /// Completed reconciles so far (the duration histogram's sample count).
    fn reconciles(&self) -> u64 {
        let text = self.metrics().encode();
        text.lines()
            .find(|l| {
                l.starts_with("lifeline_reconcile_duration_seconds_count{controller=\"botpool\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }
}

fn ready_ips(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("{ip}:5060"))
        .collect()
}

async fn events_for(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(POOL))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_comes_up_under_restricted_profile_and_scales_with_demand() {
    let Some(h) = start("bp-scale").await else {
        return;
    };
    let ns: Namespace = Api::all(h.client()).get(&h.ns.name).await.unwrap();
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    h.create_pool(fixture("pool.yaml")).await;

    // min 2, no demand yet: two Ready bots, their endpoints in status.
    let pool = h.wait_status(2, 2, "2 ready bots").await;
    let status = pool.status.unwrap();
    let endpoints: BTreeSet<String> = status.endpoints.iter().cloned().collect();
    assert_eq!(endpoints, ready_ips(&h.pods().await));
    assert_eq!(endpoints.len(), 2);
    assert_eq!(status.ready_capacity, 20);
    let available = find_condition(&status.conditions, "Available").expect("Available");
    assert_eq!(available.status, "True", "{available:?}");
    let limited = find_condition(&status.conditions, "ScalingLimited").expect("ScalingLimited");
    assert_eq!(limited.status, "False", "{limited:?}");
    // The owned objects exist, owned by the pool.
    let service = h.ns.api::<Service>().get(POOL).await.expect("Service");
    assert_eq!(service.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    h.ns.api::<PodDisruptionBudget>()
        .get(POOL)
        .await
        .expect("PodDisruptionBudget");

    // 45 calls at 10 per replica: 5 replicas, at once.
    h.set_demand(45).await;
    eventually(
        Duration::from_secs(5),
        "Deployment at 5 replicas",
        || async { (h.deployment_replicas().await == Some(5)).then_some(()) },
    )
    .await;
    let pool = h.wait_status(5, 5, "5 ready bots").await;
    let status = pool.status.unwrap();
    assert_eq!(status.demand, 45);
    assert_eq!(status.ready_capacity, 50);
    assert_eq!(status.endpoints.len(), 5);
    eventually(WAIT, "a ScaledUp event", || async {
        (!events_for(&h.client(), &h.ns.name, "ScaledUp")
            .await
            .is_empty())
        .then_some(())
    })
    .await;

    // 80 calls exceed max 6 × 10: limited, with the shortfall in calls.
    h.set_demand(80).await;
    let pool = eventually(WAIT, "ScalingLimited", || async {
        let pool = h.pool().await;
        let c = find_condition(&pool.status.as_ref()?.conditions, "ScalingLimited")?.clone();
        (c.status == "True").then_some(c)
    })
    .await;
    assert!(
        pool.message.starts_with("20 calls short"),
        "{}",
        pool.message
    );
    h.wait_status(6, 6, "6 ready bots").await;

    // Demand falls to 15 calls (2 replicas): nothing shrinks during the 3 s window.
    let lowered = tokio::time::Instant::now();
    h.set_demand(15).await;
    while lowered.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(
            h.deployment_replicas().await,
            Some(6),
            "scaled down {:?} after demand fell, before the 3 s window",
            lowered.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = h.deployment().await.unwrap();
    assert!(
        pending
            .annotations()
            .contains_key("lifeline.dev/scale-down-since"),
        "pending scale-down recorded on the Deployment"
    );
    eventually(
        Duration::from_secs(10),
        "Deployment back at 2 replicas",
        || async { (h.deployment_replicas().await == Some(2)).then_some(()) },
    )
    .await;
    assert!(lowered.elapsed() >= Duration::from_secs(3));
    // And it stays there: no bounce back up once the scale-down is through.
    for _ in 0..15 {
        assert_eq!(
            h.deployment_replicas().await,
            Some(2),
            "bounced after scale-down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pool = h.wait_status(2, 2, "2 ready bots after scale-down").await;
    assert_eq!(pool.status.unwrap().demand, 15);
    let done = h.deployment().await.unwrap();
    assert!(
        !done
            .annotations()
            .contains_key("lifeline.dev/scale-down-since")
    );
    eventually(WAIT, "a ScaledDown event", || async {
        (!events_for(&h.client(), &h.ns.name, "ScaledDown")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_show_in_status() {
    let Some(h) = start("bp-ready").await else {
        return;
    };
    h.create_pool(fixture("pool.yaml")).await;
    h.wait_status(2, 2, "2 ready bots").await;
    let pods = h.pods().await;
    let victim = &pods[0];
    let victim_ip = format!(
        "{}:5060",
        victim.status.as_ref().unwrap().pod_ip.as_ref().unwrap()
    );
    let pods_api = h.ns.api::<Pod>();
    let annotate = |value: &'static str| {
        let patch =
            json!({ "metadata": { "annotations": { "testenv.lifeline.dev/ready": value } } });
        let api = pods_api.clone();
        let name = victim.name_any();
        async move {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("annotate pod");
        }
    };

    annotate("false").await;
    let pool = eventually(WAIT, "1 ready bot", || async {
        let pool = h.pool().await;
        (pool.status.as_ref()?.ready_replicas == 1).then_some(pool)
    })
    .await;
    let status = pool.status.unwrap();
    assert_eq!(status.replicas, 2);
    assert_eq!(status.ready_capacity, 10);
    assert_eq!(status.endpoints.len(), 1);
    assert!(
        !status.endpoints.contains(&victim_ip),
        "{:?}",
        status.endpoints
    );
    let available = find_condition(&status.conditions, "Available").unwrap();
    assert_eq!(available.status, "False", "1 ready < replicas.min 2");

    annotate("true").await;
    let pool = h.wait_status(2, 2, "2 ready bots again").await;
    let status = pool.status.unwrap();
    assert_eq!(status.ready_capacity, 20);
    assert!(
        status.endpoints.contains(&victim_ip),
        "{:?}",
        status.endpoints
    );
}

fn lifeline_owns_replicas(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec")?.get("f:replicas"))
                .is_some()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_floor_follows_demand_and_never_owns_replicas() {
    let Some(h) = start("bp-hpa").await else {
        return;
    };
    let hpas = h.ns.api::<HorizontalPodAutoscaler>();
    let hpa: HorizontalPodAutoscaler = fixture("hpa.yaml");
    hpas.patch(
        POOL,
        &PatchParams::apply("argocd-test"),
        &Patch::Apply(&hpa),
    )
    .await
    .expect("apply HPA");
    let mut pool: BotPool = fixture("pool.yaml");
    pool.spec.scaling.mode = lifeline::crd::ScalingMode::HpaFloor;
    pool.spec.replicas.min = 1;
    h.create_pool(pool).await;
    eventually(WAIT, "Deployment", || async { h.deployment().await }).await;

    // 35 calls: the floor is 4; the HPA (real controller) scales the Deployment.
    h.set_demand(35).await;
    let raised = eventually(WAIT, "HPA minReplicas 4", || async {
        let hpa = hpas.get(POOL).await.ok()?;
        (hpa.spec.as_ref()?.min_replicas == Some(4)).then_some(hpa)
    })
    .await;
    assert_eq!(
        raised
            .annotations()
            .get("lifeline.dev/user-min-replicas")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        raised.spec.unwrap().max_replicas,
        8,
        "the rest of the HPA is the user's"
    );
    eventually(
        Duration::from_secs(60),
        "Deployment scaled to 4 by the HPA",
        || async { (h.deployment_replicas().await == Some(4)).then_some(()) },
    )
    .await;
    let pool = eventually(WAIT, "4 ready bots", || async {
        let pool = h.pool().await;
        (pool.status.as_ref()?.ready_replicas == 4).then_some(pool)
    })
    .await;
    assert_eq!(pool.status.unwrap().desired_replicas, 4);
    let deployment = h.deployment().await.unwrap();
    assert!(
        !lifeline_owns_replicas(&deployment),
        "lifeline must not own spec.replicas: {:?}",
        deployment.metadata.managed_fields
    );

    // Demand gone: after the 3 s window the user's floor of 1 is back.
    let lowered = tokio::time::Instant::now();
    h.set_demand(0).await;
    let restored = eventually(WAIT, "HPA minReplicas back to 1", || async {
        let hpa = hpas.get(POOL).await.ok()?;
        (hpa.spec.as_ref()?.min_replicas == Some(1)).then_some(hpa)
    })
    .await;
    assert!(
        lowered.elapsed() >= Duration::from_secs(3),
        "restored before the window"
    );
    assert!(
        !restored
            .annotations()
            .contains_key("lifeline.dev/user-min-replicas")
    );
    for _ in 0..15 {
        let hpa = hpas.get(POOL).await.expect("get HPA");
        assert_eq!(
            hpa.spec.unwrap().min_replicas,
            Some(1),
            "floor bounced after restore"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deployment = h.deployment().await.unwrap();
    assert!(!lifeline_owns_replicas(&deployment));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_hpa_floor_keeps_the_running_bots() {
    let Some(h) = start("bp-switch").await else {
        return;
    };
    let mut pool: BotPool = fixture("pool.yaml");
    pool.spec.replicas.min = 3;
    h.create_pool(pool).await;
    h.wait_status(3, 3, "3 ready bots").await;
    assert!(lifeline_owns_replicas(&h.deployment().await.unwrap()));

    let hpa: HorizontalPodAutoscaler = fixture("hpa.yaml");
    h.ns.api::<HorizontalPodAutoscaler>()
        .patch(
            POOL,
            &PatchParams::apply("argocd-test"),
            &Patch::Apply(&hpa),
        )
        .await
        .expect("apply HPA");
    h.ns.api::<BotPool>()
        .patch(
            POOL,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "scaling": { "mode": "HpaFloor" } } })),
        )
        .await
        .expect("switch mode");
    eventually(WAIT, "lifeline lets go of spec.replicas", || async {
        (!lifeline_owns_replicas(&h.deployment().await?)).then_some(())
    })
    .await;
    // Dropping the field would have defaulted it to 1 until the HPA noticed.
    for _ in 0..20 {
        assert_eq!(
            h.deployment_replicas().await,
            Some(3),
            "replicas changed on the switch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_floor_without_hpa_is_reported() {
    let Some(h) = start("bp-nohpa").await else {
        return;
    };
    let mut pool: BotPool = fixture("pool.yaml");
    pool.spec.scaling.mode = lifeline::crd::ScalingMode::HpaFloor;
    h.create_pool(pool).await;
    let c = eventually(WAIT, "ScalingLimited HpaNotFound", || async {
        let pool = h.pool().await;
        find_condition(&pool.status.as_ref()?.conditions, "ScalingLimited").cloned()
    })
    .await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "HpaNotFound"),
        "{c:?}"
    );
    assert!(c.message.contains(POOL), "{}", c.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_undone_and_deletion_collects_everything() {
    let Some(h) = start("bp-drift").await else {
        return;
    };
    h.create_pool(fixture("pool.yaml")).await;
    h.wait_status(2, 2, "2 ready bots").await;

    // Someone scales the Deployment by hand: lifeline puts it back.
    let deployments = h.ns.api::<Deployment>();
    deployments
        .patch(
            POOL,
            &PatchParams {
                field_manager: Some("someone".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({ "spec": { "replicas": 5 } })),
        )
        .await
        .expect("scale by hand");
    eventually(WAIT, "replicas back to 2", || async {
        let d = h.deployment().await?;
        let generation = d.metadata.generation?;
        // The edit bumped the generation; back at 2 means lifeline rewrote it.
        (d.spec?.replicas == Some(2) && generation >= 3).then_some(())
    })
    .await;

    // Someone deletes the Service: lifeline recreates it.
    let services = h.ns.api::<Service>();
    let old_uid = services.get(POOL).await.unwrap().uid();
    services
        .delete(POOL, &DeleteParams::default())
        .await
        .expect("delete Service");
    eventually(WAIT, "Service recreated", || async {
        let s = services.get_opt(POOL).await.ok()??;
        (s.uid() != old_uid).then_some(())
    })
    .await;

    // Deleting the pool lets the garbage collector remove what it owned.
    h.ns.api::<BotPool>()
        .delete(POOL, &DeleteParams::background())
        .await
        .expect("delete BotPool");
    let pdbs = h.ns.api::<PodDisruptionBudget>();
    eventually(WAIT, "owned objects and pods gone", || async {
        let d = deployments.get_opt(POOL).await.ok()?;
        let s = services.get_opt(POOL).await.ok()?;
        let p = pdbs.get_opt(POOL).await.ok()?;
        (d.is_none() && s.is_none() && p.is_none() && h.pods().await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_spec_becomes_a_condition_without_hot_requeue() {
    let Some(h) = start("bp-invalid").await else {
        return;
    };
    // Requests above limits: the schema cannot tell, the API server rejects it.
    let mut pool: BotPool = fixture("pool.yaml");
    pool.spec.resources = Some(
        serde_json::from_value(json!({ "requests": { "cpu": "2" }, "limits": { "cpu": "1" } }))
            .unwrap(),
    );
    h.create_pool(pool).await;
    let c = eventually(WAIT, "Available False InvalidSpec", || async {
        let pool = h.pool().await;
        let c = find_condition(&pool.status.as_ref()?.conditions, "Available")?.clone();
        (c.reason == "InvalidSpec").then_some(c)
    })
    .await;
    assert_eq!(c.status, "False");
    assert!(
        c.message
            .contains("must be less than or equal to cpu limit"),
        "{}",
        c.message
    );
    assert!(h.deployment().await.is_none());
    eventually(WAIT, "an InvalidSpec event", || async {
        (!events_for(&h.client(), &h.ns.name, "InvalidSpec")
            .await
            .is_empty())
        .then_some(())
    })
    .await;

    // A permanent error waits for a spec change: at most the echo of its own status
    // write in 3 s, where a hot requeue would be hundreds of reconciles.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = h.reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = h.reconciles() - before;
    assert!(during <= 2, "{during} reconciles in 3 s without a change");

    // Fixing the spec recovers.
    h.ns.api::<BotPool>()
        .patch(
            POOL,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "resources": null } })),
        )
        .await
        .expect("fix spec");
    let pool = h.wait_status(2, 2, "2 ready bots after the fix").await;
    let c = find_condition(&pool.status.unwrap().conditions, "Available")
        .unwrap()
        .clone();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "MinimumReplicasReady")
    );
}
