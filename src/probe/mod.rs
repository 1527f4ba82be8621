//! SIP OPTIONS probing of trunk endpoints and static policy targets.
//!
//! The [`ProbeHub`] owns one schedule per endpoint; owners (a Trunk, a FallbackPolicy)
//! hand it their targets with [`ProbeHub::set_targets`] and read [`ProbeHub::health`].
//!
//! Each round resolves the endpoint as RFC 3263 says ([`resolve`]), refuses
//! destinations the operator's list forbids ([`policy`]), and probes every target over
//! UDP, TCP or TLS ([`transport`], [`tls`]). An endpoint is **Up** when at least one of
//! its targets answers alive (Kamailio's DNS failover reaches it); the per-target
//! results are in [`EndpointHealth::targets`]. It is **Unknown**, never Down, when the
//! prober could not ask the carrier at all: no usable DNS answer (after the last good
//! answer's TTL plus the grace), a forbidden destination, or a namespace over quota.

pub mod cluster;
pub mod codec;
pub mod health;
mod hub;
pub mod passive;
pub mod policy;
pub mod quorum;
pub mod resolve;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use crate::crd::{EndpointState, ProbeSpec};
use crate::telemetry::Metrics;

pub use health::{FailureKind, Outcome};
pub use hub::RTT_REFRESH;
pub use policy::DestinationPolicy;
pub use resolve::DnsConfig;
pub use tls::TlsSettings;

/// How the hub probes: where it may send, how it resolves, how much each namespace
/// may ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// The destination allow/deny list.
    pub policy: DestinationPolicy,
    /// Name servers, stale-answer grace and cache bound.
    pub dns: DnsConfig,
    /// Per-namespace limits.
    pub quotas: Quotas,
    /// Source address of every probe (`lifeline sip-sync --probe-bind`: the edge's
    /// address); `None` lets the kernel pick.
    pub source: Option<std::net::IpAddr>,
    /// Source port of UDP probes when `source` is set (0: any).
    pub source_port: u16,
}

impl Default for ProbeConfig {
    /// The built-in deny list, the system resolver, no quotas.
    fn default() -> Self {
        Self {
            policy: DestinationPolicy::default(),
            dns: DnsConfig::system(),
            quotas: Quotas::default(),
            source: None,
            source_port: 0,
        }
    }
}

/// Per-namespace probing limits (`None`: unlimited).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quotas {
    /// Endpoints probed per namespace.
    pub max_endpoints_per_namespace: Option<usize>,
    /// Probes per second per namespace (each endpoint costs 1 / `periodSeconds`).
    pub max_probes_per_second_per_namespace: Option<f64>,
}

/// Whether an owner's targets are probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Probed.
    Admitted,
    /// Not probed: the namespace's quota would be exceeded. The endpoints report
    /// Unknown with this reason until quota frees up.
    QuotaExceeded(String),
}

/// What the last round found for one resolved target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetHealth {
    /// `transport:ip:port`, e.g. `udp:192.0.2.10:5060`.
    pub target: String,
    /// The address alone.
    pub addr: Option<std::net::SocketAddr>,
    /// SRV priority (0 without SRV).
    pub priority: u16,
    /// SRV weight (0 without SRV).
    pub weight: u16,
    /// Answered with an alive status code.
    pub alive: bool,
    /// Why not, if not.
    pub error: Option<String>,
}

/// One endpoint to probe, with the probe settings of its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTarget {
    /// SIP URI, e.g. `sip:203.0.113.10:5060;transport=udp`.
    pub uri: String,
    /// Period, timeout, thresholds and alive status codes.
    pub spec: ProbeSpec,
    /// TLS settings for `sips:`/`transport=tls` (CA bundle, server name).
    pub tls: Option<TlsSettings>,
}

/// What the prober currently knows about one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointHealth {
    /// The endpoint URI, as given to [`ProbeHub::set_targets`].
    pub uri: String,
    /// Up, Down or Unknown (not probed enough yet).
    pub state: EndpointState,
    /// Round-trip time of the last successful probe.
    pub rtt_millis: Option<u32>,
    /// Status code of the last final response.
    pub last_status_code: Option<u16>,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// When `state` last changed.
    pub last_transition: Option<jiff::Timestamp>,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    /// Kind of the last failure (e.g. [`FailureKind::Forbidden`]).
    pub last_failure: Option<FailureKind>,
    /// Per resolved target, in failover order.
    pub targets: Vec<TargetHealth>,
    /// Set while DNS fails and the last good answer is in use.
    pub stale_dns: Option<String>,
}

/// Probes SIP endpoints on their schedules and keeps their health. Cheap to clone.
///
/// Each endpoint gets its own task that probes it every `periodSeconds`, starting at a
/// random phase so that thousands of endpoints do not fire together. UDP probes share
/// one socket per address family (see [`transport`]).
#[derive(Clone)]
pub struct ProbeHub {
    inner: Arc<hub::Inner>,
}

impl ProbeHub {
    /// A hub with no targets, probing as `config` says.
    pub fn new(metrics: Arc<Metrics>, config: ProbeConfig) -> Self {
        Self {
            inner: Arc::new(hub::Inner::new(metrics, config)),
        }
    }

    /// Replace the set of targets owned by `owner` (keys: `trunk/<ns>/<name>`,
    /// `policy/<ns>/<name>`). Idempotent; keeps the health of URIs that stay (a URI
    /// whose probe settings change keeps its health and restarts its schedule); starts
    /// and stops per-endpoint schedules. Not async: callable from sync code, inside or
    /// outside a runtime (schedules then run on the runtime the hub was created in).
    ///
    /// Refused (not probed, endpoints Unknown) when the owner's namespace would go over
    /// its [`Quotas`]; admitted later on its own once quota frees up (the owner is then
    /// notified through [`ProbeHub::subscribe`]).
    pub fn set_targets(&self, owner: &str, targets: Vec<ProbeTarget>) -> Admission {
        self.inner.set_targets(owner, targets)
    }

    /// Stop probing the targets of `owner` and forget them.
    pub fn remove(&self, owner: &str) {
        self.inner.remove(owner);
    }

    /// Current health of the owner's targets, in the order given to `set_targets`
    /// (empty for an unknown owner).
    pub fn health(&self, owner: &str) -> Vec<EndpointHealth> {
        self.inner.health(owner)
    }

    /// The state of every URI probed for owners in `namespace` (the operator's own
    /// vantage, for telling an edge that is cut off from a carrier that is down).
    pub fn uri_states(&self, namespace: &str) -> std::collections::HashMap<String, EndpointState> {
        self.inner.uri_states(namespace)
    }

    /// Owner keys whose endpoints changed state (Up/Down/Unknown), or whose RTT is due
    /// for its [`RTT_REFRESH`]. A lagging receiver should re-read every owner.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.subscribe()
    }

    /// Start `uri` of `owner` from its last published state instead of Unknown (no-op
    /// once it has been probed, for Unknown, or for a URI the owner does not have).
    pub fn seed(
        &self,
        owner: &str,
        uri: &str,
        state: EndpointState,
        since: Option<jiff::Timestamp>,
    ) {
        self.inner.seed(owner, uri, state, since);
    }

    /// True when every target of `owner` has been probed at least once by this process.
    pub fn fully_probed(&self, owner: &str) -> bool {
        self.inner.fully_probed(owner)
    }

    /// Stop every probe task. The hub accepts no targets afterwards.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}
