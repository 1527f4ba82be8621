//! SIP OPTIONS probing of trunk endpoints and static policy targets.
//!
//! The [`ProbeHub`] owns one schedule per endpoint; owners (a Trunk, a FallbackPolicy)
//! hand it their targets with [`ProbeHub::set_targets`] and read [`ProbeHub::health`].

pub mod codec;
pub mod health;
mod hub;
pub mod transport;

use std::sync::Arc;

use crate::crd::{EndpointState, ProbeSpec};
use crate::telemetry::Metrics;

pub use health::{FailureKind, Outcome};
pub use hub::RTT_REFRESH;

/// One endpoint to probe, with the probe settings of its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTarget {
    /// SIP URI, e.g. `sip:203.0.113.10:5060;transport=udp`.
    pub uri: String,
    /// Period, timeout, thresholds and alive status codes.
    pub spec: ProbeSpec,
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
    /// A hub with no targets.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(hub::Inner::new(metrics)),
        }
    }

    /// Replace the set of targets owned by `owner` (keys: `trunk/<ns>/<name>`,
    /// `policy/<ns>/<name>`). Idempotent; keeps the health of URIs that stay (a URI
    /// whose probe settings change keeps its health and restarts its schedule); starts
    /// and stops per-endpoint schedules. Not async: callable from sync code, inside or
    /// outside a runtime (schedules then run on the runtime the hub was created in).
    pub fn set_targets(&self, owner: &str, targets: Vec<ProbeTarget>) {
        self.inner.set_targets(owner, targets);
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
