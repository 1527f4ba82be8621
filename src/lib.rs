//! lifeline keeps a contact center reachable when the network under it fails.
//!
//! A module per concept: `crd` is the public API, `probe` the SIP OPTIONS prober,
//! `plan` the pure fallback planner, `render` the routing renderers, `controller` the
//! reconcilers, `notify` the alerts and webhook payloads of Notifiers, `drill` the
//! schedule and outcome rules of failover drills, `operator` the process that runs
//! them, `sync` the Kamailio sidecar,
//! `status` the `lifeline status` table, `telemetry` logs and metrics, and `backoff`
//! the one retry backoff every part shares.

pub mod backoff;
pub mod controller;
pub mod crd;
pub mod drill;
pub mod notify;
pub mod operator;
pub mod plan;
pub mod probe;
pub mod render;
pub mod status;
pub mod sync;
pub mod telemetry;
