//! lifeline keeps a contact center reachable when the network under it fails.
//!
//! A module per concept: `crd` is the public API, `probe` the SIP OPTIONS prober,
//! `plan` the pure fallback planner, `routing` the contract with the SIP edge (ConfigMap
//! key, content hash, annotations, the dispatcher format rendered and parsed),
//! `controller` the reconcilers, `notify` the alerts and webhook payloads of Notifiers,
//! `drill` the schedule and outcome rules of failover drills, `operator` the process
//! that runs them, `sip_sync` the `lifeline sip-sync` sidecar beside Kamailio, `admin` the `/metrics` and probe server
//! both processes run, `status_command` the `lifeline status` table, `telemetry` logs and
//! metrics, and `backoff` the one retry backoff every part shares.

pub mod admin;
pub mod backoff;
pub mod controller;
pub mod crd;
pub mod drill;
pub mod notify;
pub mod operator;
pub mod plan;
pub mod probe;
pub mod routing;
pub mod sip_sync;
pub mod status_command;
pub mod telemetry;

/// Lock `m` even when a panicking thread poisoned it: every critical section in lifeline
/// leaves its data whole (maps and counters updated in one step), so the data is usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
