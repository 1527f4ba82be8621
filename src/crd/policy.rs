//! `FallbackPolicy`: how calls flow, and where they go when something fails.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Pre-configured fallback, enforced by lifeline: ordered tiers per route and weights
/// per region. When health fails, lifeline shifts traffic across regions and lines,
/// rewrites the routing ConfigMap that the SIP edge follows, sizes the bot pools that
/// receive the calls, and shifts back without flapping when health returns.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "FallbackPolicy",
    doc = "Pre-configured fallback: ordered tiers per route and weights per region, rewritten by lifeline into the SIP edge's routing when health fails and restored without flapping.",
    namespaced,
    cel,
    shortname = "fbp",
    category = "lifeline",
    status = "FallbackPolicyStatus",
    printcolumn(
        json_path = ".status.activeRegions",
        name = "Active Regions",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Degraded\")].status",
        name = "Degraded",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"CapacitySufficient\")].status",
        name = "Capacity OK",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".spec.routingConfigMap.name",
        name = "ConfigMap",
        type_ = "string",
        priority = 1
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[x_kube(validation = Rule::new("self.regions.all(r, self.regions.exists_one(x, x.name == r.name))").message("spec.regions[].name must be unique; list each region once"))]
#[x_kube(validation = Rule::new("self.routes.all(r, self.routes.exists_one(x, x.name == r.name))").message("spec.routes[].name must be unique within the policy"))]
#[x_kube(validation = Rule::new("self.routes.all(r, self.routes.exists_one(x, x.setId == r.setId))").message("spec.routes[].setId must be unique within the policy; give each route its own dispatcher set id"))]
#[x_kube(validation = Rule::new("self.routes.all(r, r.tiers.all(t, t.targets.all(g, !has(g.region) || self.regions.exists(x, x.name == g.region))))").message("spec.routes[].tiers[].targets[].region must name a region listed in spec.regions"))]
#[x_kube(validation = Rule::new("!has(self.override) || !has(self.override.drainRegions) || self.override.drainRegions.all(d, self.regions.exists(x, x.name == d))").message("spec.override.drainRegions must name regions listed in spec.regions"))]
#[serde(rename_all = "camelCase")]
pub struct FallbackPolicySpec {
    /// The ConfigMap lifeline writes the routing to (created and owned by lifeline).
    pub routing_config_map: RoutingConfigMap,

    /// Concurrent calls this policy must place. Spread over regions by weight; bot
    /// pools are sized to the share they receive.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub expected_concurrent_calls: u32,

    /// The regions calls are spread over, with their preferred shares.
    #[schemars(length(min = 1, max = 12))]
    pub regions: Vec<RegionSpec>,

    /// Routes, one dispatcher set each, with tiers in order of preference.
    #[schemars(length(min = 1, max = 8))]
    pub routes: Vec<RouteSpec>,

    /// When a region counts as failed.
    #[serde(default)]
    pub health: HealthSpec,

    /// How quickly lifeline fails over and back.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// How the static `uri` targets (e.g. the agents' PBX) are probed: period, timeout,
    /// thresholds, alive status codes and vantage, as for a Trunk's endpoints. The
    /// detection window is `periodSeconds × failureThreshold` (+ `timeoutMillis`).
    #[serde(default)]
    pub probe: crate::crd::ProbeSpec,

    /// Drain regions by hand, e.g. for maintenance; expires by itself at `until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<OverrideSpec>,
}

/// Where the routing goes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoutingConfigMap {
    /// Name of the ConfigMap, in the policy's namespace.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("routingConfigMap.name must be a DNS subdomain name, e.g. 'sip-routing'"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `KamailioDispatcher` writes key `dispatcher.list`; `Json` writes `routing.json`.
    #[serde(default)]
    pub format: RoutingFormat,
}

/// Rendering format of the routing ConfigMap.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum RoutingFormat {
    /// A Kamailio `dispatcher.list` (key `dispatcher.list`).
    #[default]
    KamailioDispatcher,
    /// A JSON document with the same plan (key `routing.json`), for other SIP proxies.
    Json,
}

/// A region and its preferred share of calls.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegionSpec {
    /// Region name, as used in Trunk and BotPool `spec.region`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("regions[].name must be a lowercase DNS label such as 'cologne'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Preferred share when every region is healthy (1–100, relative to the others).
    #[serde(default = "default_region_weight")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,
}

/// One route: a dispatcher set with ordered tiers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.tiers.all(t, self.tiers.exists_one(x, x.name == t.name))").message("routes[].tiers[].name must be unique within a route"))]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Route name, e.g. `inbound`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("routes[].name must be a lowercase DNS label such as 'inbound'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Kamailio dispatcher set id for this route (what `ds_select_dst(setId, ...)` uses).
    #[schemars(range(min = 1, max = 65535))]
    pub set_id: u32,
    /// Tiers in order of preference; the first with healthy targets carries the calls.
    #[schemars(length(min = 1, max = 6))]
    pub tiers: Vec<TierSpec>,
    /// Which failed calls make the SIP edge take a destination out of service and try
    /// the next one (health learned from real calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<RouteFailover>,
}

/// Failover on real call failures, for one route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteFailover {
    /// Final SIP status codes of an INVITE after which the edge marks the destination
    /// down (Kamailio `ds_mark_dst`, reported by sip-sync as a failure mark) and tries
    /// the call on the next destination. 408 also stands for no answer within the
    /// edge's transaction timer. A 503 carrying `Retry-After` (a peer that is alive but
    /// busy) retries the call on the next destination without the mark. The callee's
    /// own answers (486 Busy Here, 600 Busy Everywhere, 603 Decline) are never
    /// allowed: the call goes back to the caller.
    #[serde(default = "default_failover_codes")]
    #[x_kube(validation = Rule::new("self.all(c, c >= 408 && c <= 699)").message("failover.onStatusCodes: use final failure codes between 408 and 699, e.g. [408, 500, 502, 503, 504]"))]
    #[x_kube(validation = Rule::new("self.all(c, c != 486 && c != 600 && c != 603)").message("failover.onStatusCodes must not contain 486, 600 or 603: they are the callee's answer (busy, declined), not a failure of the line"))]
    #[schemars(length(min = 1, max = 32))]
    pub on_status_codes: Vec<u16>,
}

impl Default for RouteFailover {
    fn default() -> Self {
        Self {
            on_status_codes: default_failover_codes(),
        }
    }
}

/// Fail over on 408 (or no answer), 500, 502, 503 (without Retry-After) and 504.
pub fn default_failover_codes() -> Vec<u16> {
    vec![408, 500, 502, 503, 504]
}

/// A tier: a group of equivalent targets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// Tier name, e.g. `agents`, `bots`, `fixed`, `mobile`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("tiers[].name must be a lowercase DNS label such as 'fixed'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Destinations of this tier.
    #[schemars(length(min = 1, max = 16))]
    pub targets: Vec<TargetSpec>,
}

/// A destination: exactly one of `trunk`, `botPool` or `uri`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.trunk), has(self.botPool), has(self.uri)].filter(x, x).size() == 1").message("each target needs exactly one of trunk, botPool or uri"))]
#[x_kube(validation = Rule::new("!has(self.uri) || has(self.region)").message("a uri target needs a region (the region whose calls it takes), e.g. region: cologne"))]
#[x_kube(validation = Rule::new("!has(self.region) || has(self.uri)").message("targets[].region is only for uri targets; trunks and bot pools take the region from their own spec"))]
#[x_kube(validation = Rule::new("!has(self.maxConcurrentCalls) || has(self.uri)").message("targets[].maxConcurrentCalls is only for uri targets; set a trunk's limit in its spec.capacity.maxConcurrentCalls (bot pools: callsPerReplica)"))]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Name of a Trunk in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub trunk: Option<String>,
    /// Name of a BotPool in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub bot_pool: Option<String>,
    /// A static SIP destination such as a human agents' PBX, probed like a trunk endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::crd::SIP_URI_RULE).message("targets[].uri must be a SIP URI such as 'sip:agents.example.net:5060' (sip: or sips:, a host, an optional port 1-65535 and ;params)"))]
    #[x_kube(validation = Rule::new(crate::crd::SIP_TRANSPORT_RULE).message("targets[].uri: ;transport= must be udp, tcp or tls"))]
    #[schemars(length(min = 5, max = 256))]
    pub uri: Option<String>,
    /// Region of a `uri` target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,
    /// Calls a `uri` target (e.g. the agents' PBX) can take at once. The planner counts
    /// it as the target's capacity (calls beyond it are planned on the next tier) and
    /// the SIP edge enforces it: a call beyond it goes to the next destination of the
    /// route instead. Unset: unlimited. Trunks and bot pools state their capacity in
    /// their own spec (`capacity.maxConcurrentCalls`, ready bots × `callsPerReplica`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrent_calls: Option<u32>,
}

/// When a region counts as failed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// A region with fewer healthy trunks (among those the policy references) fails.
    #[serde(default = "default_min_trunks")]
    #[schemars(range(min = 0, max = 100))]
    pub min_healthy_trunks: u32,
    /// A region whose bot pools have fewer ready replicas than this fraction of their
    /// floor (`replicas.min`, at least 1) fails (0 disables the check). A scale-up in
    /// progress does not count against it.
    #[serde(default = "default_min_ready_fraction")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_ready_bot_fraction: f64,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            min_healthy_trunks: default_min_trunks(),
            min_ready_bot_fraction: default_min_ready_fraction(),
        }
    }
}

/// Timing of failover and failback.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Seconds a region must be unhealthy before it is marked Failed (0: at once; the
    /// probe thresholds already debounce).
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub fail_after_seconds: u32,
    /// Seconds a failed region must stay healthy before traffic returns.
    #[serde(default = "default_recover_after")]
    #[schemars(range(min = 0, max = 86400))]
    pub recover_after_seconds: u32,
    /// `Automatic` returns traffic after `recoverAfterSeconds`; `Manual` waits until a
    /// user sets the annotation `lifeline.dev/failback` on the policy.
    #[serde(default)]
    pub failback: FailbackMode,
    /// Upper bound of region state changes per hour, against flapping.
    #[serde(default = "default_max_transitions")]
    #[schemars(range(min = 1, max = 120))]
    pub max_transitions_per_hour: u32,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            fail_after_seconds: 0,
            recover_after_seconds: default_recover_after(),
            failback: FailbackMode::default(),
            max_transitions_per_hour: default_max_transitions(),
        }
    }
}

/// Failback mode.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum FailbackMode {
    /// Return traffic once the region has been healthy for `recoverAfterSeconds`.
    #[default]
    Automatic,
    /// Keep traffic away until a user approves with the `lifeline.dev/failback` annotation.
    Manual,
}

/// A manual drain.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OverrideSpec {
    /// Regions to drain: no new calls go there.
    #[serde(default)]
    #[schemars(length(max = 12))]
    pub drain_regions: Vec<String>,
    /// RFC 3339 time when the drain ends by itself, e.g. `2025-02-12T18:00:00Z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("override.until must be an RFC 3339 timestamp such as '2025-02-12T18:00:00Z'"))]
    #[schemars(length(max = 64))]
    pub until: Option<String>,
    /// Why, shown in status, Events and the routing comments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
}

fn default_region_weight() -> u32 {
    1
}
fn default_min_trunks() -> u32 {
    1
}
fn default_min_ready_fraction() -> f64 {
    0.5
}
fn default_recover_after() -> u32 {
    60
}
fn default_max_transitions() -> u32 {
    6
}

/// Observed state of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FallbackPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Degraded` and `CapacitySufficient`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Comma-separated Active regions, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_regions: Option<String>,
    /// State of each region.
    #[serde(default)]
    pub regions: Vec<RegionStatus>,
    /// Where each route sends calls now.
    #[serde(default)]
    pub routes: Vec<RouteStatus>,
    /// Concurrent calls assigned to each bot pool; bot pools scale to this.
    #[serde(default)]
    pub demand: Vec<BotDemand>,
    /// Live calls measured at the SIP edges (`SipEdge` reports of the edges serving
    /// this policy's routing ConfigMap), per route, region and tier. Absent while no
    /// edge reports calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<MeasuredLoad>,
    /// Content hash of the routing ConfigMap lifeline last wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_hash: Option<String>,
    /// The most recent region transitions, newest last (bounded).
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// State of one region.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegionStatus {
    /// Region name.
    pub name: String,
    /// Active, Failed, Draining or Recovering.
    pub state: RegionState,
    /// When the region entered this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why the region is in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Share of calls the region carries now (all regions add up to 100, or 0 when
    /// nothing can be placed).
    pub effective_weight: u32,
    /// True once the region has carried traffic (been Active). Until then it becomes
    /// Active as soon as it is healthy; afterwards `recoverAfterSeconds` and, with
    /// `failback: Manual`, the approval apply. Kept here so that a restart or a long
    /// history cannot forget it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_served: bool,
    /// When the region last failed; a manual failback approval must be later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Time>,
    /// Times of the region's state changes in the last hour (since it first served),
    /// the flapping budget `maxTransitionsPerHour` is counted against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_transitions: Vec<Time>,
}

/// Region state.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum RegionState {
    /// Carries its share of calls.
    #[default]
    Active,
    /// Health failed; its share moved to other regions.
    Failed,
    /// Drained by an override; no new calls.
    Draining,
    /// Healthy again, waiting `recoverAfterSeconds` (or a manual failback) before
    /// taking calls.
    Recovering,
}

impl RegionState {
    /// The name as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Active => "Active",
            RegionState::Failed => "Failed",
            RegionState::Draining => "Draining",
            RegionState::Recovering => "Recovering",
        }
    }
}

impl std::fmt::Display for RegionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one route sends calls now.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Route name.
    pub name: String,
    /// Dispatcher set id.
    pub set_id: u32,
    /// Name of the tier that carries calls, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_tier: Option<String>,
    /// SIP destinations in the rendered set, in priority order.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// True when the route has no healthy destination and keeps the last known good
    /// ones (see the `Degraded` condition, reason `FailOpen`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
}

/// Calls assigned to one bot pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BotDemand {
    /// BotPool name.
    pub bot_pool: String,
    /// Concurrent calls it must carry: the larger of the measured figure and the
    /// planning floor.
    pub concurrent_calls: u32,
    /// The planning floor: its share of `spec.expectedConcurrentCalls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_calls: Option<u32>,
    /// Its share of the calls measured at the SIP edges (the overflow beyond the
    /// earlier tiers' capacity, or the calls its bots carry, whichever is larger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_calls: Option<u32>,
}

/// Live calls measured at the SIP edges.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredLoad {
    /// Calls in progress over all routes.
    pub concurrent_calls: u32,
    /// New calls per second over all routes (one decimal).
    pub calls_per_second: f64,
    /// Edge members whose reports were counted (members whose pod is gone are not).
    pub edge_members: u32,
    /// Per route (dispatcher set).
    #[serde(default)]
    pub routes: Vec<MeasuredRoute>,
}

/// Live calls of one route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredRoute {
    /// Route name.
    pub name: String,
    /// Dispatcher set id.
    pub set_id: u32,
    /// Calls in progress on this route.
    pub concurrent_calls: u32,
    /// New calls per second on this route (one decimal).
    pub calls_per_second: f64,
    /// Per region of the destinations the calls went to.
    #[serde(default)]
    pub regions: Vec<MeasuredShare>,
    /// Per tier of the destinations the calls went to.
    #[serde(default)]
    pub tiers: Vec<MeasuredShare>,
}

/// Live calls to the destinations of one region or tier.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeasuredShare {
    /// Region or tier name (`unknown` for destinations not in the routing any more).
    pub name: String,
    /// Calls in progress.
    pub concurrent_calls: u32,
    /// New calls per second (one decimal).
    pub calls_per_second: f64,
}

/// One region transition.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When it happened.
    pub time: Time,
    /// Region name.
    pub region: String,
    /// Previous state.
    pub from: RegionState,
    /// New state.
    pub to: RegionState,
    /// Why.
    pub reason: String,
}

/// Maximum number of entries kept in `status.history`.
pub const HISTORY_LIMIT: usize = 20;
