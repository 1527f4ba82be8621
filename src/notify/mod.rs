//! Notifications: what is alerting, what a receiver still has to hear, and the payloads
//! it hears it in. Plain functions over plain data; the Notifier controller does the I/O.
//!
//! Alerts are *states* read from FallbackPolicy status, not a stream of events: an
//! alert fires while its state holds and resolves when it ends. A receiver's delivered
//! set lives in the Notifier's status, so the next deliveries are always
//! `firing − delivered` (triggers) and `delivered − firing` (resolves). That makes
//! delivery at-least-once across restarts and leader changes without an outbox, and
//! deduplicated by construction: an alert that stays firing is never sent twice.
//! A transition that starts and ends while a receiver is unreachable is not replayed;
//! the region's `history` in the policy status keeps it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::crd::{
    FallbackPolicy, NotifiedAlert, POLICY_CAPACITY_SUFFICIENT, POLICY_DEGRADED, ReceiverFormat,
    RegionState, Severity, find_condition,
};

/// Kind of alert, as sent in payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertKind {
    /// A region that carried calls is out of traffic because its health failed
    /// (`Failed`, or `Recovering` after a failure; not a region that never served).
    RegionDown,
    /// A route carries calls on a tier other than its first.
    TierFallback,
    /// A route has no healthy destination and keeps its last known good one.
    FailOpen,
    /// Healthy capacity is short of the expected calls.
    CapacityShort,
}

impl AlertKind {
    /// The name used in payloads and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RegionDown => "RegionDown",
            AlertKind::TierFallback => "TierFallback",
            AlertKind::FailOpen => "FailOpen",
            AlertKind::CapacityShort => "CapacityShort",
        }
    }
}

/// One firing alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Deduplication key: `<namespace>/<policy>/<what>`.
    pub key: String,
    /// What kind of alert.
    pub kind: AlertKind,
    /// How urgent.
    pub severity: Severity,
    /// Namespace of the policy.
    pub namespace: String,
    /// Policy name.
    pub policy: String,
    /// Region or route the alert is about, if any.
    pub subject: Option<String>,
    /// One line for humans.
    pub summary: String,
}

/// Every alert a policy's status shows now.
pub fn alerts_of(policy: &FallbackPolicy) -> Vec<Alert> {
    let ns = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let Some(status) = &policy.status else {
        return Vec::new();
    };
    let base = |what: String| format!("{ns}/{name}/{what}");
    let mut out = Vec::new();
    for region in &status.regions {
        // A region that never carried calls (new, waiting for its first measurement,
        // or unhealthy from it) moved no call out: not an alert.
        if matches!(region.state, RegionState::Failed | RegionState::Recovering)
            && region.has_served
        {
            let reason = region.reason.as_deref().unwrap_or("health failed");
            out.push(Alert {
                key: base(format!("region/{}", region.name)),
                kind: AlertKind::RegionDown,
                severity: Severity::Critical,
                namespace: ns.clone(),
                policy: name.clone(),
                subject: Some(region.name.clone()),
                summary: format!(
                    "region {} of {ns}/{name} is out of traffic ({}): {reason}",
                    region.name, region.state
                ),
            });
        }
    }
    for route in &status.routes {
        let first = policy
            .spec
            .routes
            .iter()
            .find(|r| r.name == route.name)
            .and_then(|r| r.tiers.first())
            .map(|t| t.name.as_str());
        let Some(active) = route.active_tier.as_deref() else {
            continue;
        };
        if first.is_some_and(|first| first != active) {
            out.push(Alert {
                key: base(format!("route/{}/tier/{active}", route.name)),
                kind: AlertKind::TierFallback,
                severity: Severity::Warning,
                namespace: ns.clone(),
                policy: name.clone(),
                subject: Some(route.name.clone()),
                summary: format!(
                    "route {} of {ns}/{name} carries calls on tier {active} instead of {}",
                    route.name,
                    first.unwrap_or("?")
                ),
            });
        }
    }
    // Fail-open before any region carried calls (a policy just created, a carrier not
    // measured yet) moved no call: reported in the policy's conditions, not paged.
    let served = status.regions.iter().any(|r| r.has_served);
    if let Some(c) = find_condition(&status.conditions, POLICY_DEGRADED)
        && served
        && c.status == "True"
        && c.reason == "FailOpen"
    {
        out.push(Alert {
            key: base("fail-open".into()),
            kind: AlertKind::FailOpen,
            severity: Severity::Critical,
            namespace: ns.clone(),
            policy: name.clone(),
            subject: None,
            summary: format!("{ns}/{name} routes fail-open: {}", c.message),
        });
    }
    if let Some(c) = find_condition(&status.conditions, POLICY_CAPACITY_SUFFICIENT)
        && c.status == "False"
    {
        out.push(Alert {
            key: base("capacity".into()),
            kind: AlertKind::CapacityShort,
            severity: Severity::Warning,
            namespace: ns.clone(),
            policy: name.clone(),
            subject: None,
            summary: format!("{ns}/{name} capacity short: {}", c.message),
        });
    }
    out
}

/// A notification to send: a trigger of a firing alert or a resolve of one that ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// The alert started.
    Trigger(Alert),
    /// The alert ended; what the receiver was told at the trigger.
    Resolve(NotifiedAlert),
}

impl Delivery {
    /// The deduplication key.
    pub fn key(&self) -> &str {
        match self {
            Delivery::Trigger(a) => &a.key,
            Delivery::Resolve(n) => &n.key,
        }
    }
}

/// What a receiver still has to hear: triggers for firing alerts at or above
/// `min_severity` it was not told about, resolves for alerts it was told about that no
/// longer fire. Resolves come first (they close pages), then triggers, each by key.
pub fn pending(
    firing: &[Alert],
    notified: &[NotifiedAlert],
    min_severity: Severity,
) -> Vec<Delivery> {
    let wanted: BTreeMap<&str, &Alert> = firing
        .iter()
        .filter(|a| a.severity >= min_severity)
        .map(|a| (a.key.as_str(), a))
        .collect();
    let told: BTreeMap<&str, &NotifiedAlert> =
        notified.iter().map(|n| (n.key.as_str(), n)).collect();
    let mut out: Vec<Delivery> = told
        .iter()
        .filter(|(k, _)| !wanted.contains_key(*k))
        .map(|(_, n)| Delivery::Resolve((*n).clone()))
        .collect();
    out.extend(
        wanted
            .iter()
            .filter(|(k, _)| !told.contains_key(*k))
            .map(|(_, a)| Delivery::Trigger((*a).clone())),
    );
    out
}

/// Record a successful delivery in a receiver's notified set.
pub fn record(notified: &mut Vec<NotifiedAlert>, delivery: &Delivery) {
    match delivery {
        Delivery::Trigger(a) => {
            if !notified.iter().any(|n| n.key == a.key) {
                notified.push(NotifiedAlert {
                    key: a.key.clone(),
                    summary: a.summary.clone(),
                    severity: a.severity,
                });
                notified.sort_by(|x, y| x.key.cmp(&y.key));
            }
        }
        Delivery::Resolve(n) => notified.retain(|x| x.key != n.key),
    }
}

/// The request body for a receiver. `routing_key` is the PagerDuty integration key.
pub fn payload(
    format: ReceiverFormat,
    delivery: &Delivery,
    routing_key: Option<&str>,
    now: jiff::Timestamp,
) -> Value {
    let (status, key, summary, severity, alert) = match delivery {
        Delivery::Trigger(a) => ("firing", &a.key, &a.summary, a.severity, Some(a)),
        Delivery::Resolve(n) => ("resolved", &n.key, &n.summary, n.severity, None),
    };
    let severity_str = match severity {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    };
    match format {
        ReceiverFormat::Json => {
            let mut doc = json!({
                "apiVersion": "lifeline.dev/v1alpha1",
                "status": status,
                "key": key,
                "severity": severity_str,
                "summary": summary,
                "time": now.to_string(),
            });
            if let Some(a) = alert {
                doc["kind"] = json!(a.kind.as_str());
                doc["namespace"] = json!(a.namespace);
                doc["policy"] = json!(a.policy);
                if let Some(s) = &a.subject {
                    doc["subject"] = json!(s);
                }
            }
            doc
        }
        ReceiverFormat::Slack => {
            let text = match delivery {
                Delivery::Trigger(_) => format!(":rotating_light: [{severity_str}] {summary}"),
                Delivery::Resolve(_) => format!(":white_check_mark: resolved: {summary}"),
            };
            json!({ "text": text })
        }
        ReceiverFormat::PagerDuty => match delivery {
            Delivery::Trigger(a) => {
                let mut details = json!({ "kind": a.kind.as_str() });
                if let Some(s) = &a.subject {
                    details["subject"] = json!(s);
                }
                json!({
                    "routing_key": routing_key.unwrap_or_default(),
                    "event_action": "trigger",
                    "dedup_key": key,
                    "payload": {
                        "summary": truncate(summary, 1024),
                        "source": format!("lifeline/{}/{}", a.namespace, a.policy),
                        "severity": severity_str,
                        "timestamp": now.to_string(),
                        "component": a.subject.clone().unwrap_or_else(|| a.policy.clone()),
                        "group": a.policy,
                        "class": a.kind.as_str(),
                        "custom_details": details,
                    },
                })
            }
            Delivery::Resolve(_) => json!({
                "routing_key": routing_key.unwrap_or_default(),
                "event_action": "resolve",
                "dedup_key": key,
            }),
        },
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A per-receiver token bucket: `per_minute` sends in any minute, refilled evenly.
#[derive(Clone, Debug)]
pub struct RateLimit {
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(per_minute: u32, now: std::time::Instant) -> Self {
        Self {
            tokens: f64::from(per_minute.max(1)),
            last: now,
        }
    }

    /// Take one token, or say how long until one is available.
    pub fn take(
        &mut self,
        per_minute: u32,
        now: std::time::Instant,
    ) -> Result<(), std::time::Duration> {
        let cap = f64::from(per_minute.max(1));
        let rate = cap / 60.0;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64(
                (1.0 - self.tokens) / rate,
            ))
        }
    }
}

#[cfg(test)]
mod tests;
