//! What the planner sees: plain snapshots of Trunk, BotPool and static-target health,
//! built from the Kubernetes objects (or by hand in tests).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::crd::{BotPool, EndpointState, Transport, Trunk, TrunkStatus};

/// Everything the planner reads besides the spec and the previous plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Trunks by name (only those that exist; a referenced name that is absent is
    /// reported as a missing reference).
    pub trunks: BTreeMap<String, TrunkObservation>,
    /// Bot pools by name.
    pub bot_pools: BTreeMap<String, BotPoolObservation>,
    /// Probe state of static `uri` targets; an absent URI counts as `Unknown`.
    pub uris: BTreeMap<String, EndpointState>,
    /// Manual failback approval: the time in the policy's `lifeline.dev/failback`
    /// annotation, if it holds a valid RFC 3339 timestamp.
    pub failback_approved_at: Option<jiff::Timestamp>,
    /// Calls in progress reported by the SIP edges (empty when none report).
    pub live: super::LiveCalls,
}

/// One Trunk as the planner needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrunkObservation {
    /// `spec.region`.
    pub region: String,
    /// `spec.disabled`.
    pub disabled: bool,
    /// `spec.capacity.maxConcurrentCalls` (`None`: no stated limit).
    pub max_concurrent_calls: Option<u32>,
    /// `spec.capacity.maxCallsPerSecond` (`None`: no stated limit).
    pub max_calls_per_second: Option<u32>,
    /// Endpoints in spec order with their probed state.
    pub endpoints: Vec<EndpointObservation>,
}

/// One trunk endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointObservation {
    /// SIP URI as in the spec.
    pub uri: String,
    /// `weight` from the spec.
    pub weight: u32,
    /// Probe state from `status.endpoints` (`Unknown` when not reported yet).
    pub state: EndpointState,
}

/// One BotPool as the planner needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct BotPoolObservation {
    /// `spec.region`.
    pub region: String,
    /// `status.readyReplicas`.
    pub ready_replicas: u32,
    /// `status.desiredReplicas`.
    pub desired_replicas: u32,
    /// `status.readyCapacity`.
    pub ready_capacity: u32,
    /// `spec.replicas.min`: the bots the pool keeps whatever the demand.
    pub min_replicas: u32,
    /// SIP URIs of the ready bots, sorted (see [`bot_destination`]).
    pub destinations: Vec<String>,
    /// Whether the pool has a status yet. A new pool has none until its controller
    /// sized it (it waits for its policies' first plan): its bots are neither ready
    /// nor missing yet, and with `replicas.min` > 0 its region is not measured.
    pub reported: bool,
}

/// The health of a trunk as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrunkHealth {
    /// At least one endpoint is Up and the trunk is not disabled.
    Up,
    /// Disabled, or no endpoint Up while at least one is Down.
    Down,
    /// Not probed enough yet to tell.
    Unknown,
}

impl TrunkObservation {
    /// Build from a Trunk object: endpoints from the spec, states from `status` (the
    /// published one, or one decided and not yet published).
    pub fn from_trunk(trunk: &Trunk, status: Option<&TrunkStatus>) -> Self {
        let endpoints = trunk
            .spec
            .endpoints
            .iter()
            .map(|e| EndpointObservation {
                uri: e.uri.clone(),
                weight: e.weight,
                state: status
                    .and_then(|s| s.endpoints.iter().find(|x| x.uri == e.uri))
                    .map(|x| x.state)
                    .unwrap_or(EndpointState::Unknown),
            })
            .collect();
        Self {
            region: trunk.spec.region.clone(),
            disabled: trunk.spec.disabled,
            max_concurrent_calls: trunk
                .spec
                .capacity
                .as_ref()
                .and_then(|c| c.max_concurrent_calls),
            max_calls_per_second: trunk
                .spec
                .capacity
                .as_ref()
                .and_then(|c| c.max_calls_per_second),
            endpoints,
        }
    }

    /// Up, Down or Unknown, from the endpoint states.
    pub fn health(&self) -> TrunkHealth {
        if self.disabled {
            return TrunkHealth::Down;
        }
        if self.endpoints.iter().any(|e| e.state == EndpointState::Up) {
            TrunkHealth::Up
        } else if self
            .endpoints
            .iter()
            .any(|e| e.state == EndpointState::Down)
        {
            TrunkHealth::Down
        } else {
            TrunkHealth::Unknown
        }
    }
}

impl BotPoolObservation {
    /// Build from a BotPool object.
    pub fn from_bot_pool(pool: &BotPool) -> Self {
        let status = pool.status.clone().unwrap_or_default();
        let mut destinations: Vec<String> = status
            .endpoints
            .iter()
            .filter_map(|e| bot_destination(e, pool.spec.sip_port, pool.spec.transport))
            .collect();
        destinations.sort();
        destinations.dedup();
        Self {
            region: pool.spec.region.clone(),
            ready_replicas: status.ready_replicas,
            desired_replicas: status.desired_replicas,
            ready_capacity: status.ready_capacity,
            min_replicas: pool.spec.replicas.min,
            destinations,
            reported: pool.status.is_some(),
        }
    }
}

/// The SIP URI of one ready bot: `sip:<ip>:<sipPort>;transport=<udp|tcp|tls>`, from a
/// status endpoint `ip:port` (or a bare IP). The pool's `sipPort` wins over the port in
/// the endpoint, because that is the port the bot's SIP stack listens on. Returns
/// `None` for an endpoint that is not an IP address.
pub fn bot_destination(endpoint: &str, sip_port: i32, transport: Transport) -> Option<String> {
    let ip: IpAddr = match endpoint.parse::<SocketAddr>() {
        Ok(addr) => addr.ip(),
        Err(_) => endpoint.parse::<IpAddr>().ok()?,
    };
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let transport = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    };
    Some(format!("sip:{host}:{sip_port};transport={transport}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_destinations_use_the_pool_port_and_transport() {
        assert_eq!(
            bot_destination("10.1.2.3:8080", 5060, Transport::Udp).as_deref(),
            Some("sip:10.1.2.3:5060;transport=udp")
        );
        assert_eq!(
            bot_destination("[fd00::1]:5060", 5070, Transport::Tls).as_deref(),
            Some("sip:[fd00::1]:5070;transport=tls")
        );
        assert_eq!(
            bot_destination("10.0.0.9", 5060, Transport::Tcp).as_deref(),
            Some("sip:10.0.0.9:5060;transport=tcp")
        );
        assert_eq!(bot_destination("bot-0.example", 5060, Transport::Udp), None);
    }
}
