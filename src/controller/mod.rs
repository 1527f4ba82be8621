//! Reconcilers, one file per kind. Each exposes `run(ctx, shutdown)` that drives a
//! kube-runtime `Controller` until `shutdown` is cancelled.

pub mod botpool;
pub mod policy;
pub mod trunk;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;

use crate::probe::{ProbeConfig, ProbeHub};
use crate::telemetry::Metrics;

/// Shared state of every reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events (as `lifeline`).
    pub recorder: Recorder,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The SIP OPTIONS prober shared by the Trunk controller and static policy targets.
    pub probes: ProbeHub,
    /// Namespace to watch; `None` watches all namespaces.
    pub namespace: Option<String>,
}

impl Context {
    /// A context for a test that runs the controllers itself: probes may reach
    /// loopback (where tests run their SIP peers), everything else follows the
    /// built-in deny list. The operator process uses [`Context::with_probe_config`].
    pub fn new(client: Client, metrics: Arc<Metrics>, namespace: Option<String>) -> Arc<Self> {
        let mut probes = ProbeConfig::default();
        probes.policy.allow(
            ["127.0.0.0/8", "::1/128"]
                .into_iter()
                .filter_map(|r| crate::probe::policy::Rule::parse(r).ok()),
        );
        Self::with_probe_config(client, metrics, namespace, probes)
    }

    /// A context whose prober follows `probes` (destination list, DNS, quotas).
    pub fn with_probe_config(
        client: Client,
        metrics: Arc<Metrics>,
        namespace: Option<String>,
        probes: ProbeConfig,
    ) -> Arc<Self> {
        let hub = ProbeHub::new(metrics.clone(), probes);
        Self::with_probe_hub(client, metrics, namespace, hub)
    }

    /// A context sharing `probes` with other contexts (one per watched namespace).
    pub fn with_probe_hub(
        client: Client,
        metrics: Arc<Metrics>,
        namespace: Option<String>,
        probes: ProbeHub,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "lifeline".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            probes,
            client,
            metrics,
            namespace,
        })
    }

    /// An `Api` for `K`, scoped to the watched namespace (or all namespaces).
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }
}

impl Context {
    /// Run one reconcile inside a tracing span named after the object, and record its
    /// duration for `controller` (the same shape for every kind).
    pub async fn instrumented<T>(
        &self,
        controller: &'static str,
        namespace: &str,
        name: &str,
        reconcile: impl std::future::Future<Output = T>,
    ) -> T {
        use tracing::Instrument;
        let span =
            tracing::info_span!("reconcile", controller, namespace = %namespace, name = %name);
        let started = std::time::Instant::now();
        let result = reconcile.instrument(span).await;
        self.metrics
            .reconcile_duration
            .get_or_create(&crate::telemetry::ControllerLabels { controller })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Failed reconciles in a row per object (namespace, name), for exponential backoff.
/// Shared by the controllers so that every kind backs off the same way.
#[derive(Default)]
pub struct Retries(std::sync::Mutex<std::collections::HashMap<(String, String), u32>>);

impl Retries {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), u32>> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one more failure of `key`; returns how many failures in a row.
    pub fn failed(&self, key: (String, String)) -> u32 {
        let mut map = self.map();
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Forget `key` after a success or a deletion.
    pub fn reset(&self, key: &(String, String)) {
        self.map().remove(key);
    }
}

/// `first`, 2 × `first`, 4 × `first` … capped at `cap`, with ±20 % jitter so that many
/// failing objects do not retry in lockstep.
pub fn backoff(
    failures: u32,
    first: std::time::Duration,
    cap: std::time::Duration,
) -> std::time::Duration {
    let base = first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    base.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

/// Run the three controllers until `shutdown` is cancelled.
pub async fn run_all(ctx: Arc<Context>, shutdown: CancellationToken) {
    tokio::join!(
        trunk::run(ctx.clone(), shutdown.clone()),
        botpool::run(ctx.clone(), shutdown.clone()),
        policy::run(ctx.clone(), shutdown.clone()),
    );
}
