//! SIP OPTIONS probing (being written; see its issue).

use std::sync::Arc;

use crate::telemetry::Metrics;

/// Probes SIP endpoints on their schedules and keeps their health.
#[derive(Clone)]
pub struct ProbeHub {
    _metrics: Arc<Metrics>,
}

impl ProbeHub {
    /// A hub with no targets.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { _metrics: metrics }
    }
}
