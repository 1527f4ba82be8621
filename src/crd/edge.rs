//! `SipEdge`: one SIP edge (Kamailio + `lifeline sip-sync`) and what it reports.
//!
//! Why a kind of its own rather than fields on Trunk or FallbackPolicy status: an edge
//! knows things about many trunks and policies at once (its probes, its live calls, the
//! routing it confirmed), and its sidecar should be allowed to write exactly one object,
//! by name, and nothing else. One `SipEdge` per edge Deployment; each edge pod owns one
//! entry of `status.members` (server-side apply, one field manager per member), and
//! the operator reads every member and writes what it concludes (combined trunk health,
//! measured demand, isolation) into Trunk and FallbackPolicy status and into
//! `status.conditions` here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::EndpointState;

/// A SIP edge: Kamailio with `lifeline sip-sync` beside it, serving one routing
/// ConfigMap. Its pods report here what they see from where calls leave: the routing
/// they confirmed, their own SIP OPTIONS probes of the destinations they route to, and
/// their live calls.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "SipEdge",
    doc = "A SIP edge (Kamailio + lifeline sip-sync) serving one routing ConfigMap; its pods report the routing they confirmed, their own probes of the destinations, and their live calls.",
    namespaced,
    cel,
    shortname = "sipe",
    category = "lifeline",
    status = "SipEdgeStatus",
    printcolumn(
        json_path = ".spec.routingConfigMap",
        name = "Routing",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".status.memberSummary",
        name = "Members",
        type_ = "string",
        description = "members whose pod is alive / members reported"
    ),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Isolated\")].status",
        name = "Isolated",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SipEdgeSpec {
    /// Name of the routing ConfigMap (in this namespace) that this edge's sip-sync
    /// watches: the `spec.routingConfigMap.name` of a FallbackPolicy.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$')").message("spec.routingConfigMap must be a ConfigMap name (lowercase DNS subdomain), e.g. 'lifeline-routing'"))]
    #[schemars(length(min = 1, max = 253))]
    pub routing_config_map: String,
}

/// What the edge's members reported, and what the operator concluded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SipEdgeStatus {
    /// The `metadata.generation` the operator's part of this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Written by the operator. `Isolated`: a member sees every destination fail while
    /// other vantages see them healthy (its own uplink is gone); its probes are not
    /// believed.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Members the operator does not believe because they are cut off (see the
    /// `Isolated` condition). Written by the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_members: Vec<String>,
    /// `live/reported`: members whose pod still exists (or that run outside a pod)
    /// over every member entry, for `kubectl get`. Written by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_summary: Option<String>,
    /// One entry per edge pod (or per `lifeline sip-sync --edge-member` process), each
    /// written only by that member's sip-sync.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub members: Vec<EdgeMember>,
}

/// What one edge member (one Kamailio + sip-sync) reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeMember {
    /// Member identity: the pod name (or `--edge-member`).
    pub name: String,
    /// UID of the member's pod, when it runs in one. The operator ignores a member
    /// whose pod no longer exists (a member that stops cleanly removes its entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// When this member's sip-sync started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Content hash of the routing this member's Kamailio has loaded and confirmed
    /// (the `lifeline.dev/content-hash` of the routing ConfigMap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_hash: Option<String>,
    /// When `routingHash` was confirmed with `dispatcher.list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_confirmed_at: Option<Time>,
    /// This member's own SIP OPTIONS view of the destinations it routes to (sent from
    /// the edge's address). Written on transitions only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<EdgeProbe>,
    /// Live calls through this member's Kamailio per destination, reported at most once
    /// per second and only when a figure changed beyond a small delta.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<EdgeCalls>,
    /// Destinations this member's Kamailio marked down after real calls failed
    /// (passive health), read back from `dispatcher.list`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_marks: Vec<EdgeFailureMark>,
}

/// One destination as one member's probes see it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeProbe {
    /// The destination URI, as in the routing (a Trunk endpoint or a `uri` target).
    pub uri: String,
    /// Up, Down or Unknown (not probed enough yet), debounced by the destination's
    /// thresholds.
    pub state: EndpointState,
    /// SIP status code of the last final response, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<u16>,
    /// When `state` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// Live calls to one destination through one member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeCalls {
    /// The destination URI, as in the routing.
    pub uri: String,
    /// Dispatcher set the calls were routed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_id: Option<u32>,
    /// Calls in progress (confirmed or being set up) to this destination.
    pub active_calls: u32,
    /// New calls per second to this destination, averaged over the last few seconds.
    #[serde(default)]
    pub calls_per_second: f64,
}

/// A destination Kamailio marked down because real calls to it failed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeFailureMark {
    /// The destination URI, as in the routing.
    pub uri: String,
    /// When this member first saw the mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The SIP status code (or 408 for a timeout) of the failure that set the mark,
    /// when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// Field manager of one edge member's server-side applies to `SipEdge` status: one per
/// member, so members never overwrite each other's entries.
pub fn member_field_manager(member: &str) -> String {
    format!("lifeline.dev/sip-sync.{member}")
}
