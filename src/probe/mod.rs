//! SIP OPTIONS probing of trunk endpoints and static policy targets.
//!
//! The [`ProbeHub`] owns one schedule per endpoint; owners (a Trunk, a FallbackPolicy)
//! hand it their targets with [`ProbeHub::set_targets`] and read [`ProbeHub::health`].

use std::sync::Arc;

use crate::crd::{EndpointState, ProbeSpec};
use crate::telemetry::Metrics;

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
#[derive(Clone)]
pub struct ProbeHub {
    _metrics: Arc<Metrics>,
    changes: tokio::sync::broadcast::Sender<String>,
}

impl ProbeHub {
    /// A hub with no targets.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        Self {
            _metrics: metrics,
            changes,
        }
    }

    /// Replace the set of targets owned by `owner` (keys: `trunk/<ns>/<name>`,
    /// `policy/<ns>/<name>`). Idempotent; keeps the health of URIs that stay.
    pub fn set_targets(&self, owner: &str, targets: Vec<ProbeTarget>) {
        let _ = (owner, targets);
    }

    /// Stop probing the targets of `owner` and forget them.
    pub fn remove(&self, owner: &str) {
        let _ = owner;
    }

    /// Current health of the owner's targets, in the order given to `set_targets`.
    pub fn health(&self, owner: &str) -> Vec<EndpointHealth> {
        let _ = owner;
        Vec::new()
    }

    /// Owner keys whose endpoints changed state, or whose RTT is due for its 30 s refresh.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Stop every probe task.
    pub fn shutdown(&self) {}
}
