//! lifeline keeps a contact center reachable when the network under it fails.
//!
//! The crate is organised a module per concept (see `README.md` and `docs/concepts.md`):
//! `crd` is the public API, `probe` the SIP OPTIONS prober, `plan` the pure fallback
//! planner, `render` the routing renderers, `controller` the reconcilers, `sync` the
//! Kamailio sidecar and `telemetry` logs and metrics.

pub mod crd;
