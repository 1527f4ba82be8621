//! Logs and metrics.
//!
//! Every metric is registered here, with a `lifeline_` prefix and labels drawn from
//! small fixed sets (controller names, error categories, states) so that cardinality
//! stays bounded no matter how many objects a cluster has. Each process has its own
//! registry: [`Metrics`] for the operator, [`SyncMetrics`] for sip-sync, so neither
//! exports the other's (always zero) series. Both carry `lifeline_build_info`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub mod objects;

/// The source revision this binary was built from: `LIFELINE_REVISION` at build time
/// (the image build sets it, e.g. to `git rev-parse --short HEAD`), else `unknown`.
/// Read from the environment rather than from git in a build script so that a commit
/// does not force every crate that depends on this one to rebuild.
pub const REVISION: &str = match option_env!("LIFELINE_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Install the global tracing subscriber. The filter comes from `RUST_LOG`
/// (default `info`). Safe to call more than once (later calls are ignored).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
        LogFormat::Plain => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
}

/// Label: which controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `trunk`, `botpool` or `policy`.
    pub controller: &'static str,
}

/// Label: controller and error category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `trunk`, `botpool` or `policy`.
    pub controller: &'static str,
    /// Short static error category (see each controller's error enum).
    pub error: &'static str,
}

/// Label: a failure reason from a small fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// e.g. `timeout`, `status`, `connect`, `io`, `parse`, `resolve`.
    pub reason: &'static str,
}

/// Label: a state name (endpoint Up/Down/Unknown, region Active/Failed/...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: &'static str,
}

/// Label: the outcome of an attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `delivered` or `failed`.
    pub result: &'static str,
}

/// Labels: one SIP edge member.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeMemberLabels {
    /// `namespace/SipEdge name`.
    pub edge: String,
    /// The member (pod) name.
    pub member: String,
}

/// A process's registry, as the admin server's `/metrics` encodes it.
pub trait Exposition: Send + Sync + 'static {
    /// The registry.
    fn registry(&self) -> &Registry;

    /// The registry in the Prometheus (OpenMetrics) text format.
    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, self.registry());
        out
    }
}

/// A registry with the `lifeline_` prefix and `lifeline_build_info`.
fn new_registry() -> Registry {
    let mut registry = Registry::with_prefix("lifeline");
    registry.register(
        "build",
        "Version and source revision of the running binary",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", REVISION),
        ]),
    );
    registry
}

/// The metrics of the operator process.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Reconcile duration per controller.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Reconcile errors per controller and category.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// SIP OPTIONS probes sent.
    pub probes_sent: Counter,
    /// Failed probes by reason.
    pub probes_failed: Family<ReasonLabels, Counter>,
    /// Probed endpoints per state.
    pub endpoints: Family<StateLabels, Gauge>,
    /// Regions (over all policies) per state.
    pub regions: Family<StateLabels, Gauge>,
    /// Region failovers (Active → Failed/Draining).
    pub failovers: Counter,
    /// Region failbacks (back to Active).
    pub failbacks: Counter,
    /// Routing ConfigMap writes.
    pub configmap_writes: Counter,
    /// 1 while this process holds the leader Lease.
    pub leader: Gauge,
    /// Trunk statuses decided and not yet written (queued, in flight or retrying).
    pub status_writes_pending: Gauge,
    /// Round trip of answered SIP OPTIONS probes (millisecond resolution).
    pub probe_rtt: Histogram,
    /// Notifier webhook attempts by result.
    pub notifications: Family<ResultLabels, Counter>,
    /// 1 while an edge member is `Isolated` (its own uplink is gone). Series of
    /// members that left are removed.
    pub edge_isolated: Family<EdgeMemberLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut registry = new_registry();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            });
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let probes_sent = Counter::default();
        let probes_failed = Family::<ReasonLabels, Counter>::default();
        let endpoints = Family::<StateLabels, Gauge>::default();
        let regions = Family::<StateLabels, Gauge>::default();
        let failovers = Counter::default();
        let failbacks = Counter::default();
        let configmap_writes = Counter::default();
        let leader = Gauge::default();
        let status_writes_pending = Gauge::default();
        // 1 ms doubling to ~8 s: loopback and LAN peers land in the first buckets,
        // carriers in the tens of milliseconds, the longest probe timeouts at the top.
        let probe_rtt = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let notifications = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by category",
            reconcile_errors.clone(),
        );
        registry.register(
            "probes_sent",
            "SIP OPTIONS probes sent",
            probes_sent.clone(),
        );
        registry.register(
            "probes_failed",
            "Failed SIP OPTIONS probes by reason",
            probes_failed.clone(),
        );
        registry.register("endpoints", "Probed endpoints by state", endpoints.clone());
        registry.register("regions", "Policy regions by state", regions.clone());
        registry.register(
            "failovers",
            "Regions taken out of traffic",
            failovers.clone(),
        );
        registry.register(
            "failbacks",
            "Regions returned to traffic",
            failbacks.clone(),
        );
        registry.register(
            "configmap_writes",
            "Routing ConfigMap writes",
            configmap_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "status_writes_pending",
            "Trunk statuses decided from the probes and not yet written (routing does not wait for them)",
            status_writes_pending.clone(),
        );
        registry.register(
            "notifications",
            "Notifier webhook attempts by result (delivered, failed)",
            notifications.clone(),
        );
        registry.register(
            "probe_rtt_seconds",
            "Round trip of answered SIP OPTIONS probes",
            probe_rtt.clone(),
        );
        let edge_isolated = Family::<EdgeMemberLabels, Gauge>::default();
        registry.register(
            "edge_isolated",
            "1 while a SIP edge member sees every destination fail while other vantages see them answer (its uplink is gone)",
            edge_isolated.clone(),
        );
        Self {
            registry,
            reconcile_duration,
            reconcile_errors,
            probes_sent,
            probes_failed,
            endpoints,
            regions,
            failovers,
            failbacks,
            configmap_writes,
            leader,
            status_writes_pending,
            probe_rtt,
            notifications,
            edge_isolated,
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        Exposition::encode(self)
    }
}

impl Exposition for Metrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The metrics of the sip-sync process.
pub struct SyncMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Routing versions applied to Kamailio and confirmed.
    pub sync_applied: Counter,
    /// Failed apply attempts by reason.
    pub sync_failures: Family<ReasonLabels, Counter>,
    /// Time from seeing a ConfigMap change to a confirmed reload.
    pub sync_duration: Histogram,
    /// 1 while Kamailio does not load every destination of the current routing and
    /// sip-sync has stopped reloading it (see `sip_sync::MAX_UNCONFIRMED`).
    pub sync_unconfirmed: Gauge,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncMetrics {
    /// Create and register every sip-sync metric (`lifeline_sync_*`).
    pub fn new() -> Self {
        let mut registry = new_registry();
        let sync_applied = Counter::default();
        let sync_failures = Family::<ReasonLabels, Counter>::default();
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let sync_unconfirmed = Gauge::default();
        registry.register(
            "sync_applied",
            "Routing versions reloaded into Kamailio and confirmed",
            sync_applied.clone(),
        );
        registry.register(
            "sync_failures",
            "Failed sip-sync apply attempts by reason",
            sync_failures.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Time from a ConfigMap change to a confirmed Kamailio reload",
            sync_duration.clone(),
        );
        registry.register(
            "sync_unconfirmed",
            "1 while Kamailio drops destinations of the current routing and sip-sync stopped reloading it",
            sync_unconfirmed.clone(),
        );
        Self {
            registry,
            sync_applied,
            sync_failures,
            sync_duration,
            sync_unconfirmed,
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        Exposition::encode(self)
    }
}

impl Exposition for SyncMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_and_encoded() {
        let m = Metrics::new();
        m.probes_sent.inc();
        m.probes_failed
            .get_or_create(&ReasonLabels { reason: "timeout" })
            .inc();
        let text = m.encode();
        assert!(text.contains("lifeline_probes_sent_total 1"), "{text}");
        assert!(
            text.contains("lifeline_probes_failed_total{reason=\"timeout\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn build_info_and_probe_rtt_are_exposed() {
        let m = Metrics::new();
        m.probe_rtt.observe(0.012);
        let text = m.encode();
        let info = format!(
            "lifeline_build_info{{version=\"{}\",revision=\"{REVISION}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&info), "{text}");
        assert!(
            text.contains("lifeline_probe_rtt_seconds_bucket{le=\"0.016\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lifeline_probe_rtt_seconds_bucket{le=\"0.008\"} 0"),
            "{text}"
        );
    }
}
