//! Reconcilers, one file per kind. Each exposes `run(ctx, shutdown)` that drives a
//! kube-runtime `Controller` until `shutdown` is cancelled.

pub mod botpool;
pub mod drill;
pub mod edge;
pub mod notifier;
pub mod policy;
pub mod runtime;
pub mod trunk;

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
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
    /// What the SIP edges report (filled by [`edge::run`]; empty without it).
    pub edges: edge::EdgeBoard,
    /// Whether this replica leads and may write (see [`Context::while_leading`]).
    pub leading: watch::Receiver<bool>,
    /// The one Trunk watch and cache of this context, read by the Trunk and policy
    /// controllers (at 10,000 Trunks a cache each was tens of MiB twice).
    pub trunks: runtime::SharedWatch<runtime::Guarded<crate::crd::Trunk>>,
    /// The one FallbackPolicy watch and cache, read by the policy, BotPool, Notifier
    /// and FailoverDrill controllers and the per-object gauges (five copies before).
    pub policies: runtime::SharedWatch<runtime::Guarded<crate::crd::FallbackPolicy>>,
    /// The one BotPool watch and cache, read by the BotPool, policy and FailoverDrill
    /// controllers.
    pub bot_pools: runtime::SharedWatch<runtime::Guarded<crate::crd::BotPool>>,
    /// The one FailoverDrill watch and cache, read by the FailoverDrill and policy
    /// controllers.
    pub drills: runtime::SharedWatch<runtime::Guarded<crate::crd::FailoverDrill>>,
    /// Trunk statuses this replica decided and has not seen in `trunks` yet: the policy
    /// controller plans from them without waiting for the write (see
    /// [`trunk::verdicts`]).
    pub verdicts: Arc<trunk::verdicts::Verdicts>,
    /// Routing updates in flight: the Trunk statuses' bulk writes wait for them (see
    /// [`runtime::RoutingFirst`]).
    pub routing_first: runtime::RoutingFirst,
    /// Wakes the API watchdog after a failed API call (see [`api_watchdog`]).
    api_failed: Arc<tokio::sync::Notify>,
    /// Bumped each time the API answers again after failures; controllers then retry
    /// every object at once instead of waiting out their backoff.
    api_returned: watch::Sender<u64>,
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

    /// A context sharing `probes` with other contexts (one per watched namespace),
    /// always leading (no leader election).
    pub fn with_probe_hub(
        client: Client,
        metrics: Arc<Metrics>,
        namespace: Option<String>,
        probes: ProbeHub,
    ) -> Arc<Self> {
        // Always leading: the sender is dropped, the value stays `true`.
        Self::with_leadership(client, metrics, namespace, probes, watch::channel(true).1)
    }

    /// A context whose writes follow `leading` (a replica under leader election).
    pub fn with_leadership(
        client: Client,
        metrics: Arc<Metrics>,
        namespace: Option<String>,
        probes: ProbeHub,
        leading: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "lifeline".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            trunks: runtime::SharedWatch::of(&client, namespace.as_deref()),
            policies: runtime::SharedWatch::of(&client, namespace.as_deref()),
            bot_pools: runtime::SharedWatch::of(&client, namespace.as_deref()),
            drills: runtime::SharedWatch::of(&client, namespace.as_deref()),
            verdicts: Arc::default(),
            routing_first: runtime::RoutingFirst::default(),
            probes,
            client,
            metrics,
            namespace,
            edges: edge::EdgeBoard::default(),
            leading,
            api_failed: Arc::new(tokio::sync::Notify::new()),
            api_returned: watch::channel(0).0,
        })
    }

    /// True while this replica may write.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Run the write `write` only while this replica leads, and abandon it (dropping the
    /// request) the moment leadership ends: a replica past its renew deadline must not
    /// finish a write that a new leader could contradict. `None` when not leading.
    pub async fn while_leading<F: Future>(&self, write: F) -> Option<F::Output> {
        let mut rx = self.leading.clone();
        if !*rx.borrow_and_update() {
            return None;
        }
        let lost = async move {
            // A dropped sender (no election) never ends leadership.
            if rx.wait_for(|leading| !*leading).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            _ = lost => None,
            out = write => Some(out),
        }
    }

    /// Report a failed API call: the watchdog then polls the API server until it answers
    /// and tells the controllers to retry at once (see [`api_watchdog`]).
    pub fn api_call_failed(&self) {
        self.api_failed.notify_one();
    }

    /// Fires (value changes) each time the API server answers again after failures.
    pub fn api_returned(&self) -> watch::Receiver<u64> {
        self.api_returned.subscribe()
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
    /// [`Context::instrumented`] plus the retry bookkeeping every controller needs: a
    /// success forgets the object's failures in `retries`.
    pub async fn reconcile_counted<T, E>(
        &self,
        controller: &'static str,
        retries: &Retries,
        namespace: &str,
        name: &str,
        reconcile: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let result = self
            .instrumented(controller, namespace, name, reconcile)
            .await;
        if result.is_ok() {
            retries.reset(&(namespace.to_string(), name.to_string()));
        }
        result
    }

    /// A failed reconcile of `obj`: counted in `lifeline_reconcile_errors_total` under
    /// `category`, logged, and requeued after the shared backoff ([`Retries::backoff`]).
    pub fn reconcile_failed(
        &self,
        controller: &'static str,
        retries: &Retries,
        obj: &impl kube::Resource,
        category: &'static str,
        error: &dyn std::fmt::Display,
    ) -> kube::runtime::controller::Action {
        use kube::ResourceExt;
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        self.metrics
            .reconcile_errors
            .get_or_create(&crate::telemetry::ErrorLabels {
                controller,
                error: category,
            })
            .inc();
        let n = retries.failed(key.clone());
        tracing::warn!(controller, namespace = %key.0, name = %key.1, %error, retry = n, "reconcile failed");
        kube::runtime::controller::Action::requeue(retries.backoff.delay(n))
    }

    /// Run one reconcile inside a tracing span named after the object, and record its
    /// duration for `controller` (the same shape for every kind).
    pub async fn instrumented<T>(
        &self,
        controller: &'static str,
        namespace: &str,
        name: &str,
        reconcile: impl Future<Output = T>,
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

/// Failed reconciles in a row per object (namespace, name), and the one backoff they
/// are retried with. Shared by the controllers so that every kind backs off the same way.
pub struct Retries {
    counts: std::sync::Mutex<std::collections::HashMap<(String, String), u32>>,
    /// The delays (first, cap) of this controller's retries.
    pub backoff: crate::backoff::Backoff,
}

impl Default for Retries {
    fn default() -> Self {
        Self::new(crate::backoff::RECONCILE)
    }
}

impl Retries {
    /// No failures yet; retries follow `backoff`.
    pub fn new(backoff: crate::backoff::Backoff) -> Self {
        Self {
            counts: std::sync::Mutex::default(),
            backoff,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), u32>> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
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

/// Run every controller until `shutdown` is cancelled (no leader election: this
/// replica always writes).
pub async fn run_all(ctx: Arc<Context>, shutdown: CancellationToken) {
    tokio::join!(
        trunk::run(ctx.clone(), shutdown.clone()),
        botpool::run(ctx.clone(), shutdown.clone()),
        policy::run(ctx.clone(), shutdown.clone()),
        notifier::run(ctx.clone(), shutdown.clone()),
        drill::run(ctx.clone(), shutdown.clone()),
        api_watchdog(ctx.clone(), shutdown.clone()),
    );
}

/// After a failed API call, poll the API server (`/version`, every second) until it
/// answers, then bump [`Context::api_returned`] so every controller retries at once.
/// Idle (no requests) while the API works: steady state makes no extra reads.
///
/// Why: a reconcile that failed during an outage waits out its exponential backoff
/// (up to minutes) after the API is back, so routing would lag measured health.
pub async fn api_watchdog(ctx: Arc<Context>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ctx.api_failed.notified() => {}
        }
        let mut polls = 0u32;
        loop {
            let answered = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                ctx.client.apiserver_version(),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if answered {
                break;
            }
            polls += 1;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        // Only after a real outage: a failure the API answers right after is a plain
        // error, retried by the controllers' own backoff (no retry storm).
        if polls > 0 {
            tracing::info!(
                unreachable_polls = polls,
                "API server answers again: retrying every object now"
            );
            ctx.api_returned.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// True when `e` says the API server could not be reached or could not serve (a
/// connection failure, a timeout, a 5xx), rather than that it refused the request.
pub fn is_unreachable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// A stream that yields once each time `rx` changes to a value for which `when` holds
/// (leadership gained, API returned); ends with the sender.
pub fn on_change<T: Clone + Send + Sync + 'static>(
    rx: watch::Receiver<T>,
    when: fn(&T) -> bool,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if when(&rx.borrow_and_update()) {
                return Some(((), rx));
            }
        }
    })
}
