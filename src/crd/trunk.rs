//! `Trunk`: one carrier connection (or alternative line) into one region.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A SIP trunk: one carrier connection into one region, on one medium, with one or
/// more endpoints that lifeline probes continuously with SIP OPTIONS.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "Trunk",
    doc = "A SIP trunk: one carrier connection (or alternative line) into one region, probed continuously with SIP OPTIONS.",
    namespaced,
    cel,
    shortname = "trk",
    category = "lifeline",
    status = "TrunkStatus",
    printcolumn(json_path = ".spec.region", name = "Region", type_ = "string"),
    printcolumn(json_path = ".spec.medium", name = "Medium", type_ = "string"),
    printcolumn(
        json_path = ".status.healthySummary",
        name = "Healthy",
        type_ = "string",
        description = "healthy endpoints / endpoints"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Healthy\")].reason",
        name = "State",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".status.vantageSummary",
        name = "Vantages",
        type_ = "string",
        description = "agree, or which vantages see the endpoints differently"
    ),
    printcolumn(
        json_path = ".spec.disabled",
        name = "Disabled",
        type_ = "boolean",
        priority = 1
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrunkSpec {
    /// The region this line brings calls into, e.g. `cologne`. FallbackPolicies group
    /// trunks and bot pools by this name.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.region must be a lowercase DNS label such as 'cologne' (a-z, 0-9, '-')"))]
    #[schemars(length(min = 1, max = 63))]
    pub region: String,

    /// The medium the line runs on. Lines on different media rarely fail together,
    /// which is the point of having several.
    #[serde(default)]
    pub medium: Medium,

    /// The carrier's SIP endpoints for this line. Each is probed on its own.
    #[schemars(length(min = 1, max = 16))]
    pub endpoints: Vec<TrunkEndpoint>,

    /// How much traffic the line can carry. Used by FallbackPolicies to decide whether
    /// healthy capacity covers the expected calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<TrunkCapacity>,

    /// How lifeline probes the endpoints.
    #[serde(default)]
    pub probe: ProbeSpec,

    /// Maintenance switch: a disabled trunk gets no traffic and is not probed.
    #[serde(default)]
    pub disabled: bool,

    /// TLS settings for `sips:` and `;transport=tls` endpoints: which CA signs the
    /// carrier's certificate and which name it must carry. Without them the system
    /// roots and the endpoint's host name are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TrunkTls>,
}

/// How lifeline verifies a carrier's TLS certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrunkTls {
    /// PEM CA certificates (a ConfigMap or Secret in the Trunk's namespace) that sign
    /// the carrier's certificate. When set, only these CAs are trusted for this trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Name to verify in the carrier's certificate and to send as SNI, when it differs
    /// from the endpoint URI's host (e.g. the carrier gave you IP addresses but its
    /// certificate names `sbc.carrier.example`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-.A-Za-z0-9]*[A-Za-z0-9])?$')").message("spec.tls.serverName must be a DNS name such as 'sbc.carrier.example' (letters, digits, '-' and '.')"))]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// A key of a ConfigMap or Secret in the Trunk's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// `ConfigMap` or `Secret`.
    pub kind: CaBundleKind,
    /// Name of the object, in the Trunk's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the PEM certificates.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Kind of object holding a CA bundle.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaBundleKind {
    /// A ConfigMap (CA certificates are public).
    ConfigMap,
    /// A Secret.
    Secret,
}

fn default_ca_key() -> String {
    "ca.crt".to_string()
}

/// The medium a trunk runs on.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum Medium {
    /// A fixed-line (landline) carrier connection.
    #[default]
    FixedLine,
    /// A connection over a mobile network.
    Mobile,
    /// SIP over the public internet.
    Internet,
}

impl std::fmt::Display for Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Medium::FixedLine => "FixedLine",
            Medium::Mobile => "Mobile",
            Medium::Internet => "Internet",
        })
    }
}

/// One SIP endpoint of a trunk.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrunkEndpoint {
    /// SIP URI of the endpoint, e.g. `sip:203.0.113.10:5060;transport=udp`. Use `sips:`
    /// for TLS. `transport` may be `udp` (default for `sip:`), `tcp` or `tls`.
    #[x_kube(validation = Rule::new(crate::crd::SIP_URI_RULE).message("uri must be a SIP URI such as 'sip:carrier.example.net:5060' (sip: or sips:, a host, an optional port 1-65535 and ;params)"))]
    #[x_kube(validation = Rule::new(crate::crd::SIP_TRANSPORT_RULE).message("uri: ;transport= must be udp, tcp or tls"))]
    #[schemars(length(min = 5, max = 256))]
    pub uri: String,

    /// Relative share of this trunk's traffic sent to this endpoint (1–100).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,
}

/// Traffic limits of a trunk.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrunkCapacity {
    /// Calls the line can carry at once. Enforced by the SIP edge (each Kamailio
    /// counts the trunk's calls in progress over all its endpoints): a call beyond it
    /// goes to the next destination of the route (the next tier) instead of this line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_concurrent_calls: Option<u32>,
    /// New calls per second the line accepts. Enforced by the SIP edge (Kamailio's
    /// pipelimit, per second, over all endpoints): calls beyond it in a second go to
    /// the next destination of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_calls_per_second: Option<u32>,
}

/// SIP OPTIONS probing of a trunk's endpoints.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.timeoutMillis <= self.periodSeconds * 1000").message("probe.timeoutMillis must not exceed probe.periodSeconds × 1000; lower the timeout or lengthen the period"))]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Seconds between two probes of one endpoint.
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 300))]
    pub period_seconds: u32,
    /// How long to wait for a final response before the probe counts as failed. This
    /// is independent of SIP's 32 s transaction timer, which is far too slow to notice
    /// a dead carrier.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 50, max = 30000))]
    pub timeout_millis: u32,
    /// Consecutive failed probes before an endpoint is marked Down.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 20))]
    pub failure_threshold: u32,
    /// Consecutive successful probes before a Down endpoint is marked Up again.
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 1, max = 20))]
    pub success_threshold: u32,
    /// Final response codes that count as alive. Any other final response, a timeout or
    /// a connection error counts as a failure.
    #[serde(default = "default_alive_codes")]
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(validation = Rule::new("self.all(c, c >= 100 && c <= 699)").message("probe.aliveStatusCodes must be SIP status codes between 100 and 699, e.g. [200]"))]
    pub alive_status_codes: Vec<u16>,
    /// Whose probes decide the state: `Operator` (the operator pod's own probes
    /// only), `Edges` (the probes of the SIP edges that route to this destination,
    /// reported in their `SipEdge`; the operator's view is used only while no edge
    /// reports one), or `Both` (default: every vantage votes). An endpoint is Down when
    /// more counted vantages see it Down than Up; on a tie the edges' majority decides
    /// (calls leave from the edges), and a tie among the edges too keeps it Up.
    /// Vantages whose edge pod is gone, and edge members that are `Isolated` (they see
    /// every destination fail while others see them answer), are not counted. With
    /// one vantage this is simply that vantage's view.
    #[serde(default)]
    pub vantage: Vantage,
}

/// Which probes decide an endpoint's state.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum Vantage {
    /// Only the operator pod's own probes (lifeline before SIP edges reported).
    Operator,
    /// Only the SIP edges' probes (from the address carriers expect); the operator's
    /// view stands in while no edge reports the destination.
    Edges,
    /// The operator and every SIP edge member vote (majority, edges break ties).
    #[default]
    Both,
}

impl std::fmt::Display for Vantage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vantage::Operator => "Operator",
            Vantage::Edges => "Edges",
            Vantage::Both => "Both",
        })
    }
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            period_seconds: default_period(),
            timeout_millis: default_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
            alive_status_codes: default_alive_codes(),
            vantage: Vantage::default(),
        }
    }
}

fn default_weight() -> u32 {
    1
}
fn default_period() -> u32 {
    5
}
fn default_timeout() -> u32 {
    1000
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_success_threshold() -> u32 {
    2
}
fn default_alive_codes() -> Vec<u16> {
    vec![200]
}

/// Observed state of a trunk, written by lifeline on transitions only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrunkStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Healthy`: at least one endpoint is Up. `Forbidden`: an endpoint resolves only
    /// to destinations the operator may not probe. `QuotaExceeded`: the namespace's
    /// probe quota leaves no room for this trunk.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Number of endpoints that are Up.
    #[serde(default)]
    pub healthy_endpoints: u32,
    /// `healthy/total`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_summary: Option<String>,
    /// Per-endpoint probe results. `state` is the combined verdict of the counted
    /// vantages (see `spec.probe.vantage`); the other fields are the operator's own
    /// probe.
    #[serde(default)]
    pub endpoints: Vec<EndpointStatus>,
    /// Each vantage's view of the endpoints: the operator (`operator`) and every SIP
    /// edge member that reports them (`<SipEdge>/<member>`). Written when a view
    /// changes state, not on every probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vantages: Vec<VantageStatus>,
    /// `agree`, or which vantages disagree with the combined state, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vantage_summary: Option<String>,
}

/// One vantage's view of a trunk's endpoints.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VantageStatus {
    /// `operator`, or `<SipEdge name>/<member name>`.
    pub name: String,
    /// Whether this view counts towards the combined state: `Counted`, or why not
    /// (`NotSelected` by `spec.probe.vantage`, `Stale` edge pod gone, `Isolated`).
    pub vote: VantageVote,
    /// `up/known` endpoints as this vantage sees them.
    pub healthy_summary: String,
    /// Endpoint states as this vantage sees them (endpoints it has no view of are
    /// left out).
    #[serde(default)]
    pub endpoints: Vec<VantageEndpoint>,
}

/// Whether a vantage's view counts.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VantageVote {
    /// Counts towards the combined state.
    Counted,
    /// Not selected by `spec.probe.vantage`.
    NotSelected,
    /// The edge member's pod is gone: its last report is not believed.
    Stale,
    /// The edge member sees every destination fail while other vantages see them
    /// answer: its own uplink is gone, its view is not believed.
    Isolated,
}

impl std::fmt::Display for VantageVote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VantageVote::Counted => "Counted",
            VantageVote::NotSelected => "NotSelected",
            VantageVote::Stale => "Stale",
            VantageVote::Isolated => "Isolated",
        })
    }
}

/// One endpoint as one vantage sees it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VantageEndpoint {
    /// The endpoint URI.
    pub uri: String,
    /// Up, Down or Unknown as this vantage sees it.
    pub state: EndpointState,
}

/// Probe state of one endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The endpoint URI, as in the spec.
    pub uri: String,
    /// Up, Down or Unknown (not probed enough yet).
    pub state: EndpointState,
    /// Round-trip time of the successful probes: the median of the last five (one slow
    /// answer does not move it), refreshed at most every 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_millis: Option<u32>,
    /// SIP status code of the last final response, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    /// Failed probes in a row.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Why the last probe failed, if it did (timeout, status code, connection error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Health of one probed endpoint.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum EndpointState {
    /// Answers probes with an alive status code.
    Up,
    /// Failed `failureThreshold` probes in a row.
    Down,
    /// Not probed often enough yet to tell.
    #[default]
    Unknown,
}

impl EndpointState {
    /// The name as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Up => "Up",
            EndpointState::Down => "Down",
            EndpointState::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
