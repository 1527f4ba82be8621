//! `Notifier`: who hears about failovers, and how.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Sends lifeline's alerts (a region out of traffic, a route on a fallback tier,
/// fail-open routing, capacity short) to webhooks: generic JSON, Slack-compatible, or
/// PagerDuty Events v2. Each alert is triggered once when it starts and resolved once
/// when it ends; delivery is retried with backoff until it succeeds, and what was
/// delivered is kept in status so that an operator restart neither loses nor repeats
/// a notification.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lifeline.dev",
    version = "v1alpha1",
    kind = "Notifier",
    doc = "Sends lifeline's alerts (region out of traffic, route on a fallback tier, fail-open, capacity short) to webhooks: JSON, Slack or PagerDuty Events v2; at-least-once, deduplicated, rate-limited.",
    namespaced,
    cel,
    shortname = "ntf",
    category = "lifeline",
    status = "NotifierStatus",
    printcolumn(json_path = ".status.firing", name = "Firing", type_ = "integer"),
    printcolumn(json_path = ".status.pending", name = "Pending", type_ = "integer"),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Delivering\")].status",
        name = "Delivering",
        type_ = "string"
    ),
    printcolumn(
        json_path = ".metadata.creationTimestamp",
        name = "Age",
        type_ = "date"
    )
)]
#[x_kube(validation = Rule::new("self.receivers.all(r, self.receivers.exists_one(x, x.name == r.name))").message("spec.receivers[].name must be unique; status tracks delivery per receiver name"))]
#[serde(rename_all = "camelCase")]
pub struct NotifierSpec {
    /// Names of the FallbackPolicies in this namespace to report on; empty means every
    /// policy in the namespace.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub policies: Vec<String>,

    /// Where alerts go.
    #[schemars(length(min = 1, max = 8))]
    pub receivers: Vec<ReceiverSpec>,
}

/// One webhook receiver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.format == 'PagerDuty' || !has(self.routingKeySecretRef)").message("receivers[].routingKeySecretRef is only for format PagerDuty"))]
#[x_kube(validation = Rule::new("self.format != 'PagerDuty' || has(self.routingKeySecretRef)").message("a PagerDuty receiver needs routingKeySecretRef: the Secret key holding the Events v2 integration (routing) key"))]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// Receiver name, e.g. `pager` or `team-channel`.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("receivers[].name must be a lowercase DNS label such as 'pager'"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Payload shape: `Json` (lifeline's own document), `Slack` (an incoming-webhook
    /// message with `text`), `PagerDuty` (Events API v2 trigger/resolve with a dedup key
    /// per policy and region or route).
    #[serde(default)]
    pub format: ReceiverFormat,
    /// The Secret key holding the webhook URL (http or https), in this namespace. For
    /// PagerDuty, the Events API URL, e.g. `https://events.pagerduty.com/v2/enqueue`.
    pub url_secret_ref: SecretKeyRef,
    /// PagerDuty only: the Secret key holding the integration (routing) key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key_secret_ref: Option<SecretKeyRef>,
    /// Lowest severity sent to this receiver: `Warning` sends everything, `Critical`
    /// only regions out of traffic and fail-open routing.
    #[serde(default)]
    pub min_severity: Severity,
    /// At most this many notifications per minute to this receiver; the rest wait
    /// (nothing is dropped: a burst is delivered over the following minutes).
    #[serde(default = "default_max_per_minute")]
    #[schemars(range(min = 1, max = 600))]
    pub max_per_minute: u32,
}

/// A key of a Secret in the Notifier's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Payload shape of a receiver.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ReceiverFormat {
    /// lifeline's JSON document (see docs/notifications.md).
    #[default]
    Json,
    /// A Slack-compatible incoming-webhook message.
    Slack,
    /// PagerDuty Events API v2.
    PagerDuty,
}

/// Alert severity.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
)]
pub enum Severity {
    /// Degraded but calls are placed: a route on a fallback tier, capacity short.
    #[default]
    Warning,
    /// Calls moved or at risk: a region out of traffic, fail-open routing.
    Critical,
}

fn default_max_per_minute() -> u32 {
    30
}

/// Delivery state of a Notifier.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotifierStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Delivering`: every receiver is up to date (False with the error while
    /// notifications wait for a receiver).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Alerts firing now over the selected policies.
    #[serde(default)]
    pub firing: u32,
    /// Notifications not yet delivered, over all receivers.
    #[serde(default)]
    pub pending: u32,
    /// Per receiver: the alerts it has been told are firing (the source of truth for
    /// what to trigger and resolve next, so a restart neither loses nor repeats one).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub receivers: Vec<ReceiverStatus>,
}

/// Delivery state of one receiver.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverStatus {
    /// Receiver name.
    pub name: String,
    /// Alerts delivered as triggered and not yet resolved.
    #[serde(default)]
    pub notified: Vec<NotifiedAlert>,
    /// Notifications delivered since the Notifier was created.
    #[serde(default)]
    pub delivered: u64,
    /// When the last notification was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_time: Option<Time>,
    /// The last delivery error, cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An alert a receiver was told about.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NotifiedAlert {
    /// Deduplication key, e.g. `contact-center/main/region/cologne`.
    pub key: String,
    /// Summary sent with the trigger (repeated in the resolve).
    pub summary: String,
    /// Severity sent with the trigger.
    pub severity: Severity,
}
