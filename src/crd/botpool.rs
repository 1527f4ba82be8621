//! `BotPool`: phone-bot pods in one region, sized to the calls they must carry.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A pool of phone-bot pods in one region. The bots answer routine calls around the
/// clock and hand complex ones to human agents at `escalationUri`. lifeline runs the
/// pool as a Deployment, a headless Service and a PodDisruptionBudget, and sizes it
/// to the calls that FallbackPolicies send to this region.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "BotPool",
    doc = "A pool of phone-bot pods in one region, sized by lifeline to the calls that FallbackPolicies send to it.",
    namespaced,
    cel,
    shortname = "bp",
    category = "lifeline",
    status = "BotPoolStatus",
    printcolumn(json_path = ".spec.region", name = "Region", type_ = "string"),
    printcolumn(json_path = ".status.readyReplicas", name = "Ready", type_ = "integer"),
    printcolumn(
        json_path = ".status.desiredReplicas",
        name = "Desired",
        type_ = "integer"
    ),
    printcolumn(
        json_path = ".status.readyCapacity",
        name = "Capacity",
        type_ = "integer",
        description = "calls the ready bots can carry"
    ),
    printcolumn(
        json_path = ".status.demand",
        name = "Demand",
        type_ = "integer",
        description = "calls policies assign to this pool"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BotPoolSpec {
    /// The region the bots serve, e.g. `cologne`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("spec.region must be a lowercase DNS label such as 'cologne' (a-z, 0-9, '-')"))]
    #[schemars(length(min = 1, max = 63))]
    pub region: String,

    /// Container image of the phone bot.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// SIP port the bot listens on.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub sip_port: i32,

    /// SIP transport the bot speaks.
    #[serde(default)]
    pub transport: Transport,

    /// Concurrent calls one bot replica handles.
    #[schemars(range(min = 1, max = 10000))]
    pub calls_per_replica: u32,

    /// Bounds for the number of replicas.
    #[serde(default)]
    pub replicas: ReplicaBounds,

    /// How lifeline scales the pool.
    #[serde(default)]
    pub scaling: ScalingSpec,

    /// SIP URI of the human agents that bots escalate complex calls to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::crd::SIP_URI_RULE).message("escalationUri must be a SIP URI such as 'sip:agents@pbx.example.net' (sip: or sips:, a host, an optional port 1-65535 and ;params)"))]
    #[x_kube(validation = Rule::new(crate::crd::SIP_TRANSPORT_RULE).message("escalationUri: ;transport= must be udp, tcp or tls"))]
    #[schemars(length(max = 256))]
    pub escalation_uri: Option<String>,

    /// Seconds a bot gets to finish its calls when it is stopped.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: u32,

    /// Image pull policy of the bot container (Always, IfNotPresent or Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: Option<String>,

    /// Compute resources of one bot container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// SIP transport.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum Transport {
    /// SIP over UDP.
    #[default]
    #[serde(rename = "UDP")]
    Udp,
    /// SIP over TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// SIP over TLS.
    #[serde(rename = "TLS")]
    Tls,
}

/// Replica bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("replicas.min must be less than or equal to replicas.max"))]
#[serde(rename_all = "camelCase")]
pub struct ReplicaBounds {
    /// Replicas kept running even without demand (24/7 answering).
    #[serde(default = "default_min")]
    #[schemars(range(min = 0, max = 1000))]
    pub min: u32,
    /// Upper bound; demand beyond `max × callsPerReplica` sets `ScalingLimited`.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max: u32,
}

impl Default for ReplicaBounds {
    fn default() -> Self {
        Self {
            min: default_min(),
            max: default_max(),
        }
    }
}

/// How replicas follow demand.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// `Direct`: lifeline sets the Deployment's replicas. `HpaFloor`: an HPA you manage
    /// owns the replicas and lifeline only raises its `minReplicas` to the demand floor.
    #[serde(default)]
    pub mode: ScalingMode,
    /// Seconds demand must stay lower before the pool shrinks. Growth is immediate.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: u32,
    /// Extra capacity on top of the demand, in percent.
    #[serde(default = "default_headroom")]
    #[schemars(range(min = 0, max = 500))]
    pub headroom_percent: u32,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            mode: ScalingMode::default(),
            scale_down_stabilization_seconds: default_stabilization(),
            headroom_percent: default_headroom(),
        }
    }
}

/// Scaling mode.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ScalingMode {
    /// lifeline writes the Deployment's `spec.replicas`.
    #[default]
    Direct,
    /// lifeline raises the floor (`minReplicas`) of the HPA that targets the Deployment.
    HpaFloor,
}

fn default_sip_port() -> i32 {
    5060
}
fn default_drain_seconds() -> u32 {
    30
}
fn default_min() -> u32 {
    1
}
fn default_max() -> u32 {
    10
}
fn default_stabilization() -> u32 {
    300
}
fn default_headroom() -> u32 {
    20
}

/// Observed state of a bot pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BotPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available` and `ScalingLimited`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Pods that exist.
    #[serde(default)]
    pub replicas: u32,
    /// Pods that are Ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Replicas lifeline wants, from demand, headroom and bounds.
    #[serde(default)]
    pub desired_replicas: u32,
    /// Concurrent calls that FallbackPolicies assign to this pool.
    #[serde(default)]
    pub demand: u32,
    /// readyReplicas × callsPerReplica.
    #[serde(default)]
    pub ready_capacity: u32,
    /// `ip:port` of every ready bot.
    #[serde(default)]
    pub endpoints: Vec<String>,
}
