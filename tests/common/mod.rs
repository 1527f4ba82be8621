//! The one support module of the integration tests and benchmarks:
//! - here: the real control plane from `tests/testenv` (`make testenv-up`): a client,
//!   a namespace per test, the CRDs, polling;
//! - [`harness`]: controllers running in the test process in such a namespace;
//! - [`process`]: the guard of every process a test starts, scratch directories;
//! - [`sip`]: sipp and dnsmasq peers; [`kamailio`]: Kamailio as edge or carrier;
//! - [`operator`]: the `lifeline operator` binary as a child process; [`sync`]:
//!   `lifeline sip-sync` in the test process; [`replay`]: the carrier-outage replays'
//!   shared criteria.
//!
//! Each test gets its own namespace, deleted when the guard drops, even when the test
//! panics. When the control plane is not running, `TestEnv::connect` panics with a
//! clear message, unless `LIFELINE_SKIP_CLUSTER_TESTS=1` asks to skip (then tests return early).
#![allow(dead_code, unused_imports)]

pub mod harness;
pub mod kamailio;
pub mod operator;
pub mod process;
pub mod real_plane;
pub mod replay;
pub mod sip;
pub mod sync;
pub mod tools;
pub mod watch;

pub use harness::{Controller, Harness};
pub use process::{Process, TempDir, free_port, wait_bound};

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

/// Path of the kubeconfig `make testenv-up` writes.
pub fn kubeconfig_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/testenv/kubeconfig")
}

/// A client for the testenv control plane, or `None` when tests are asked to skip.
pub async fn client() -> Option<Client> {
    let path = kubeconfig_path();
    if !path.exists() {
        if std::env::var("LIFELINE_SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
            eprintln!(
                "control plane not available ({} missing): skipping",
                path.display()
            );
            return None;
        }
        panic!(
            "control plane not available: {} is missing. Run `make testenv-up` first \
             (or set LIFELINE_SKIP_CLUSTER_TESTS=1 to skip cluster tests)",
            path.display()
        );
    }
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Some(Client::try_from(config).expect("client"))
}

/// A temporary namespace, deleted on drop.
pub struct TestNamespace {
    /// The client used to create it.
    pub client: Client,
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Create a namespace `<prefix>-<random>` with the given labels.
    pub async fn create(client: Client, prefix: &str, labels: &[(&str, &str)]) -> Self {
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        // Pods need the default ServiceAccount, created asynchronously by the controller-manager.
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        for _ in 0..100 {
            if sas.get_opt("default").await.ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { client, name }
    }

    /// A namespaced `Api` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Create the object `manifest` (JSON with apiVersion, kind and metadata, as in a
    /// YAML file) in this namespace; the object as created.
    pub async fn create_from<K>(&self, manifest: serde_json::Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let object: K = serde_json::from_value(manifest)
            .unwrap_or_else(|e| panic!("not a valid {}: {e}", K::kind(&())));
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("create {}: {e}", K::kind(&())))
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The test's runtime may be blocked (we are in its thread) or shutting down, and
        // the test's client lives on it; delete with a fresh client on a fresh thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Some(client) = client().await {
                    let _ = Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::background())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Apply the CRDs (server-side) and wait until they are established.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("lifeline-tests").force();
    for crd in lifeline::crd::all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
        let cond = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), &name, cond),
        )
        .await
        .expect("CRD established in 30 s")
        .expect("watch CRD");
    }
}

/// Poll `f` every 100 ms until it returns `Some`, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The field managers that wrote an object (its `managedFields`).
pub fn field_managers(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect()
}
