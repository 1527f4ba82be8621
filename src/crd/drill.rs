//! `FailoverDrill`: rehearse a failover on a schedule, and roll it back by itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Rehearses a failover: drains one region of a FallbackPolicy for a while, once or on
/// a cron schedule, and restores it by itself. A drill never starts while its policy is
/// degraded, and a real failure during a drill (another region failing, capacity
/// running short, fail-open routing) ends it at once and leaves routing to normal
/// failover. Status records every run: when, how long the shift took, bots scaled,
/// and the outcome.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "FailoverDrill",
    doc = "Rehearses a failover: drains one region of a FallbackPolicy for a while, once or on a cron schedule, rolls back by itself and aborts on a real failure.",
    namespaced,
    cel,
    shortname = "fod",
    category = "lifeline",
    status = "FailoverDrillStatus",
    printcolumn(json_path = ".spec.policy", name = "Policy", type_ = "string"),
    printcolumn(json_path = ".spec.drainRegion", name = "Drains", type_ = "string"),
    printcolumn(json_path = ".status.phase", name = "Phase", type_ = "string"),
    printcolumn(
        json_path = ".status.lastOutcome",
        name = "Last Outcome",
        type_ = "string"
    ),
    printcolumn(json_path = ".status.nextRun", name = "Next Run", type_ = "string"),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FailoverDrillSpec {
    /// Name of the FallbackPolicy, in this namespace, to rehearse on.
    #[schemars(length(min = 1, max = 253))]
    pub policy: String,

    /// The region to drain during the drill (a name in the policy's `spec.regions`).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("drainRegion must be a region name such as 'cologne'"))]
    #[schemars(length(min = 1, max = 63))]
    pub drain_region: String,

    /// When to run: a five-field cron expression in UTC (minute hour day-of-month month
    /// day-of-week), e.g. `0 3 * * 2` for Tuesdays at 03:00 UTC. Omitted: run once, as
    /// soon as the drill is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 128))]
    pub schedule: Option<String>,

    /// How long the region stays drained before the drill rolls back (30 s – 24 h).
    #[serde(default = "default_duration")]
    #[schemars(range(min = 30, max = 86400))]
    pub duration_seconds: u32,

    /// Abort when the policy's healthy capacity falls short of its expected calls
    /// during the drill (`CapacitySufficient=False`).
    #[serde(default = "default_true")]
    pub abort_on_capacity_short: bool,

    /// Abort when the region has not left traffic within this many seconds of the
    /// start (the drill then counts as Failed: the fallback did not move calls).
    #[serde(default = "default_shift_deadline")]
    #[schemars(range(min = 1, max = 600))]
    pub shift_deadline_seconds: u32,

    /// Pause the schedule; a running drill is rolled back at once.
    #[serde(default)]
    pub suspend: bool,
}

fn default_duration() -> u32 {
    300
}
fn default_true() -> bool {
    true
}
fn default_shift_deadline() -> u32 {
    30
}

/// Where a drill stands.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DrillPhase {
    /// Waiting for the next run.
    #[default]
    Scheduled,
    /// The region is drained now.
    Running,
    /// A one-shot drill has run; nothing more to do.
    Completed,
    /// `spec.suspend` is set.
    Suspended,
}

/// How a drill run ended.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrillOutcome {
    /// The region was drained, calls moved, and the drill rolled back on time.
    Passed,
    /// Ended early by an abort condition (a real failure, capacity short, suspend).
    Aborted,
    /// The fallback did not work: the region did not leave traffic in time.
    Failed,
    /// Not started: the policy was degraded, missing, or already drained.
    Skipped,
}

/// Observed state of a drill.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverDrillStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the spec is valid and the policy exists.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Scheduled, Running, Completed or Suspended.
    #[serde(default)]
    pub phase: DrillPhase,
    /// When the next run starts (absent for a completed one-shot drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// Outcome of the most recent run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<DrillOutcome>,
    /// The run in progress, if any. The policy controller drains `region` while it
    /// is present and `until` is in the future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveDrill>,
    /// Recent runs, newest last (at most 10).
    #[serde(default)]
    pub runs: Vec<DrillRun>,
}

/// The run in progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveDrill {
    /// The drained region.
    pub region: String,
    /// When the drain started.
    pub started: Time,
    /// When the drill rolls back.
    pub until: Time,
    /// When the policy first showed the region out of traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shifted: Option<Time>,
    /// Bot replicas the policy's pools desired when the drill started (to report how
    /// many were scaled).
    #[serde(default)]
    pub bots_before: u32,
    /// The most bot replicas desired during the drill.
    #[serde(default)]
    pub bots_peak: u32,
}

/// One finished run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrillRun {
    /// When it started (or was skipped).
    pub started: Time,
    /// When it ended.
    pub ended: Time,
    /// The drained region.
    pub region: String,
    /// Passed, Aborted, Failed or Skipped.
    pub outcome: DrillOutcome,
    /// Why it ended this way.
    pub reason: String,
    /// Seconds from the start until the region was out of traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_seconds: Option<u32>,
    /// Bot replicas desired by the policy's pools before the drill and at its peak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bots: Option<String>,
}

/// Maximum number of runs kept in `status.runs`.
pub const DRILL_RUNS_LIMIT: usize = 10;
