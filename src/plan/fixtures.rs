//! Builders that make planner and renderer tests read like the scenario they set up:
//!
//! ```
//! use lifeline::plan::fixtures::*;
//! let spec = policy()
//!     .region("cologne", 1)
//!     .expected_calls(100)
//!     .route("inbound", 1, |r| r.tier("fixed", [trunk("fixed-cgn")]).tier("mobile", [trunk("mobile-cgn")]))
//!     .build();
//! let world = world()
//!     .trunk("fixed-cgn", "cologne", ["sip:127.0.20.10:5060"])
//!     .trunk("mobile-cgn", "cologne", ["sip:127.0.20.11:5060"]);
//! assert_eq!(spec.routes[0].tiers.len(), 2);
//! assert_eq!(world.observed().trunks.len(), 2);
//! ```
//!
//! Public (not `cfg(test)`) so that integration tests can render the same scenarios.

use crate::crd::{
    EndpointState, FailbackMode, FailoverSpec, FallbackPolicySpec, HealthSpec, OverrideSpec,
    RegionSpec, RouteSpec, RoutingConfigMap, RoutingFormat, TargetSpec, TierSpec,
};

use super::{BotPoolObservation, EndpointObservation, Observed, TrunkObservation};

/// A target naming a Trunk.
pub fn trunk(name: &str) -> TargetSpec {
    TargetSpec {
        trunk: Some(name.to_string()),
        ..Default::default()
    }
}

/// A target naming a BotPool.
pub fn bots(name: &str) -> TargetSpec {
    TargetSpec {
        bot_pool: Some(name.to_string()),
        ..Default::default()
    }
}

/// A static URI target in a region.
pub fn uri(uri: &str, region: &str) -> TargetSpec {
    TargetSpec {
        uri: Some(uri.to_string()),
        region: Some(region.to_string()),
        ..Default::default()
    }
}

/// Start a policy.
pub fn policy() -> PolicyBuilder {
    PolicyBuilder {
        spec: FallbackPolicySpec {
            routing_config_map: RoutingConfigMap {
                name: "sip-routing".to_string(),
                format: RoutingFormat::KamailioDispatcher,
            },
            expected_concurrent_calls: 0,
            regions: Vec::new(),
            routes: Vec::new(),
            health: HealthSpec::default(),
            failover: FailoverSpec::default(),
            probe: Default::default(),
            r#override: None,
        },
    }
}

/// Builds a [`FallbackPolicySpec`].
#[derive(Clone, Debug)]
pub struct PolicyBuilder {
    spec: FallbackPolicySpec,
}

impl PolicyBuilder {
    /// Add a region with its preferred weight.
    pub fn region(mut self, name: &str, weight: u32) -> Self {
        self.spec.regions.push(RegionSpec {
            name: name.to_string(),
            weight,
        });
        self
    }
    /// Set `expectedConcurrentCalls`.
    pub fn expected_calls(mut self, calls: u32) -> Self {
        self.spec.expected_concurrent_calls = calls;
        self
    }
    /// Add a route built by `f`.
    pub fn route(
        mut self,
        name: &str,
        set_id: u32,
        f: impl FnOnce(RouteBuilder) -> RouteBuilder,
    ) -> Self {
        let r = f(RouteBuilder {
            route: RouteSpec {
                name: name.to_string(),
                set_id,
                tiers: Vec::new(),
                failover: None,
            },
        });
        self.spec.routes.push(r.route);
        self
    }
    /// Set `failover.failAfterSeconds`.
    pub fn fail_after(mut self, secs: u32) -> Self {
        self.spec.failover.fail_after_seconds = secs;
        self
    }
    /// Set `failover.recoverAfterSeconds`.
    pub fn recover_after(mut self, secs: u32) -> Self {
        self.spec.failover.recover_after_seconds = secs;
        self
    }
    /// Set `failover.failback: Manual`.
    pub fn manual_failback(mut self) -> Self {
        self.spec.failover.failback = FailbackMode::Manual;
        self
    }
    /// Set `failover.maxTransitionsPerHour`.
    pub fn max_transitions_per_hour(mut self, n: u32) -> Self {
        self.spec.failover.max_transitions_per_hour = n;
        self
    }
    /// Set `health.minHealthyTrunks`.
    pub fn min_healthy_trunks(mut self, n: u32) -> Self {
        self.spec.health.min_healthy_trunks = n;
        self
    }
    /// Set `health.minReadyBotFraction`.
    pub fn min_ready_bot_fraction(mut self, f: f64) -> Self {
        self.spec.health.min_ready_bot_fraction = f;
        self
    }
    /// Drain regions until `until` (RFC 3339) for `reason`.
    pub fn drain(mut self, regions: &[&str], until: Option<&str>, reason: &str) -> Self {
        self.spec.r#override = Some(OverrideSpec {
            drain_regions: regions.iter().map(|s| s.to_string()).collect(),
            until: until.map(str::to_string),
            reason: Some(reason.to_string()),
        });
        self
    }
    /// Render as JSON rather than Kamailio.
    pub fn json(mut self) -> Self {
        self.spec.routing_config_map.format = RoutingFormat::Json;
        self
    }
    /// The spec.
    pub fn build(self) -> FallbackPolicySpec {
        self.spec
    }
}

/// Builds a [`RouteSpec`].
#[derive(Clone, Debug)]
pub struct RouteBuilder {
    route: RouteSpec,
}

impl RouteBuilder {
    /// Add a tier (in order of preference).
    pub fn tier(mut self, name: &str, targets: impl IntoIterator<Item = TargetSpec>) -> Self {
        self.route.tiers.push(TierSpec {
            name: name.to_string(),
            targets: targets.into_iter().collect(),
        });
        self
    }
}

/// Start an observed world.
pub fn world() -> World {
    World {
        observed: Observed::default(),
    }
}

/// Builds an [`Observed`]: trunks start with every endpoint Up, bot pools fully ready.
#[derive(Clone, Debug)]
pub struct World {
    observed: Observed,
}

impl World {
    /// A trunk in `region` with endpoints (all Up, weight 1).
    pub fn trunk<'a>(
        mut self,
        name: &str,
        region: &str,
        endpoints: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        self.observed.trunks.insert(
            name.to_string(),
            TrunkObservation {
                region: region.to_string(),
                disabled: false,
                max_concurrent_calls: None,
                max_calls_per_second: None,
                endpoints: endpoints
                    .into_iter()
                    .map(|u| EndpointObservation {
                        uri: u.to_string(),
                        weight: 1,
                        state: EndpointState::Up,
                    })
                    .collect(),
            },
        );
        self
    }
    /// Set a trunk's `capacity.maxConcurrentCalls`.
    pub fn trunk_capacity(mut self, name: &str, calls: u32) -> Self {
        if let Some(t) = self.observed.trunks.get_mut(name) {
            t.max_concurrent_calls = Some(calls);
        }
        self
    }
    /// Set every endpoint of a trunk to `state`.
    pub fn trunk_state(mut self, name: &str, state: EndpointState) -> Self {
        if let Some(t) = self.observed.trunks.get_mut(name) {
            for e in &mut t.endpoints {
                e.state = state;
            }
        }
        self
    }
    /// Set one endpoint's state (by URI).
    pub fn endpoint_state(mut self, name: &str, uri: &str, state: EndpointState) -> Self {
        if let Some(t) = self.observed.trunks.get_mut(name) {
            for e in t.endpoints.iter_mut().filter(|e| e.uri == uri) {
                e.state = state;
            }
        }
        self
    }
    /// Set a trunk's `spec.disabled`.
    pub fn trunk_disabled(mut self, name: &str, disabled: bool) -> Self {
        if let Some(t) = self.observed.trunks.get_mut(name) {
            t.disabled = disabled;
        }
        self
    }
    /// A bot pool in `region` whose ready bots listen at `ips` (port 5060, UDP),
    /// `calls_per_replica` each; ready = desired = number of IPs.
    pub fn bot_pool<'a>(
        mut self,
        name: &str,
        region: &str,
        calls_per_replica: u32,
        ips: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let destinations: Vec<String> = ips
            .into_iter()
            .filter_map(|ip| super::bot_destination(ip, 5060, crate::crd::Transport::Udp))
            .collect();
        let n = destinations.len() as u32;
        let mut destinations = destinations;
        destinations.sort();
        self.observed.bot_pools.insert(
            name.to_string(),
            BotPoolObservation {
                region: region.to_string(),
                ready_replicas: n,
                desired_replicas: n,
                ready_capacity: n * calls_per_replica,
                min_replicas: n,
                destinations,
                reported: true,
            },
        );
        self
    }
    /// A pool just created: no status yet (its controller has not sized it).
    pub fn bots_unreported(mut self, name: &str) -> Self {
        if let Some(p) = self.observed.bot_pools.get_mut(name) {
            p.destinations.clear();
            p.ready_replicas = 0;
            p.desired_replicas = 0;
            p.ready_capacity = 0;
            p.reported = false;
        }
        self
    }
    /// Make only `ready` of a pool's `desired` replicas ready (the first `ready` bots
    /// keep their addresses).
    pub fn bots_ready(mut self, name: &str, ready: u32, desired: u32) -> Self {
        if let Some(p) = self.observed.bot_pools.get_mut(name) {
            let per = p.ready_capacity.checked_div(p.ready_replicas).unwrap_or(0);
            p.destinations.truncate(ready as usize);
            p.ready_replicas = p.destinations.len() as u32;
            p.desired_replicas = desired;
            // The pool's floor: these bots are expected whatever the demand.
            p.min_replicas = desired;
            p.ready_capacity = p.ready_replicas * per;
        }
        self
    }
    /// A pool scaling up: `desired` bots wanted for the demand, `ready` of them up, and a
    /// floor (`replicas.min`) of `min`.
    pub fn bots_scaling(mut self, name: &str, ready: u32, desired: u32, min: u32) -> Self {
        self = self.bots_ready(name, ready, desired);
        if let Some(p) = self.observed.bot_pools.get_mut(name) {
            p.min_replicas = min;
        }
        self
    }
    /// The probe state of a static URI target.
    pub fn uri_state(mut self, uri: &str, state: EndpointState) -> Self {
        self.observed.uris.insert(uri.to_string(), state);
        self
    }
    /// Approve a manual failback at `at`.
    pub fn failback_approved(mut self, at: jiff::Timestamp) -> Self {
        self.observed.failback_approved_at = Some(at);
        self
    }
    /// The observation.
    pub fn observed(&self) -> Observed {
        self.observed.clone()
    }
}
