//! Delivery to one receiver: what it still has to hear, sent in order until done, a
//! failure (retried with a backoff) or its rate limit; the webhook URL read from its
//! Secret at the moment of sending.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use tracing::{info, warn};

use super::{NotifierCtx, ReceiverKey, lock};
use crate::backoff::Backoff;
use crate::crd::{ReceiverSpec, ReceiverStatus};
use crate::notify::{self, Alert, Delivery, RateLimit};

/// What one pass left for a receiver: notifications still pending, when to try again,
/// and the failure to report in the `Delivering` condition.
pub(super) struct Outcome {
    pub(super) left: u32,
    pub(super) retry_in: Option<Duration>,
    pub(super) problem: Option<String>,
}

/// Send what `rs` still has to hear, in order, until done, a failure or the rate limit.
pub(super) async fn deliver(
    ns: &str,
    spec: &ReceiverSpec,
    firing: &[Alert],
    rs: &mut ReceiverStatus,
    key: &ReceiverKey,
    nctx: &NotifierCtx,
) -> Outcome {
    let todo = notify::pending(firing, &rs.notified, spec.min_severity);
    if todo.is_empty() {
        return Outcome {
            left: 0,
            retry_in: None,
            problem: None,
        };
    }
    let total = u32::try_from(todo.len()).unwrap_or(u32::MAX);
    let target = match secrets(ns, spec, nctx).await {
        Ok(t) => t,
        Err(problem) => {
            rs.last_error = Some(problem.clone());
            return Outcome {
                left: total,
                retry_in: Some(Duration::from_secs(30)),
                problem: Some(problem),
            };
        }
    };
    let mut sent = 0u32;
    for delivery in &todo {
        let limited = lock(&nctx.limits)
            .entry(key.clone())
            .or_insert_with(|| RateLimit::new(spec.max_per_minute, Instant::now()))
            .take(spec.max_per_minute, Instant::now());
        if let Err(wait) = limited {
            return Outcome {
                left: total - sent,
                retry_in: Some(wait),
                problem: None,
            };
        }
        let body = notify::payload(
            spec.format,
            delivery,
            target.routing_key.as_deref(),
            jiff::Timestamp::now(),
        );
        match post(&nctx.http, &target.url, &body).await {
            Ok(()) => {
                notify::record(&mut rs.notified, delivery);
                rs.delivered += 1;
                rs.last_delivery_time = Some(Time(jiff::Timestamp::now()));
                rs.last_error = None;
                lock(&nctx.failures).remove(key);
                nctx.ctx
                    .metrics
                    .notifications
                    .get_or_create(&crate::telemetry::ResultLabels {
                        result: "delivered",
                    })
                    .inc();
                let action = match delivery {
                    Delivery::Trigger(_) => "trigger",
                    Delivery::Resolve(_) => "resolve",
                };
                info!(receiver = %spec.name, alert = %delivery.key(), action, "notification delivered");
                sent += 1;
            }
            Err(problem) => {
                nctx.ctx
                    .metrics
                    .notifications
                    .get_or_create(&crate::telemetry::ResultLabels { result: "failed" })
                    .inc();
                let n = {
                    let mut failures = lock(&nctx.failures);
                    let n = failures.entry(key.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                };
                warn!(receiver = %spec.name, alert = %delivery.key(), error = %problem, attempt = n, "notification not delivered; will retry");
                rs.last_error = Some(problem.clone());
                return Outcome {
                    left: total - sent,
                    retry_in: Some(
                        Backoff::new(Duration::from_secs(1), Duration::from_secs(10)).delay(n),
                    ),
                    problem: Some(problem),
                };
            }
        }
    }
    Outcome {
        left: 0,
        retry_in: None,
        problem: None,
    }
}

struct Target {
    url: reqwest::Url,
    routing_key: Option<String>,
}

/// Read a receiver's URL (and PagerDuty routing key) from its Secret. The error names
/// the field to fix.
///
/// The one API read on a reconcile path, on purpose: it happens only when a
/// notification is about to be sent (never in a quiet cluster), the chart grants `get`
/// on Secrets but not `list`/`watch` (a cache would need every Secret in the
/// namespace), and a rotated webhook URL is used at once.
async fn secrets(ns: &str, spec: &ReceiverSpec, nctx: &NotifierCtx) -> Result<Target, String> {
    let api: Api<Secret> = Api::namespaced(nctx.ctx.client.clone(), ns);
    let read = |r: &crate::crd::SecretKeyRef, field: &'static str| {
        let api = api.clone();
        let r = r.clone();
        async move {
            let secret = api
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("{field}: cannot read Secret {ns}/{}: {e}", r.name))?
                .ok_or_else(|| format!("{field}: Secret {ns}/{} does not exist", r.name))?;
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .ok_or_else(|| format!("{field}: Secret {ns}/{} has no key '{}'", r.name, r.key))?;
            String::from_utf8(bytes.0.clone())
                .map(|s| s.trim().to_string())
                .map_err(|_| {
                    format!(
                        "{field}: Secret {ns}/{} key '{}' is not UTF-8",
                        r.name, r.key
                    )
                })
        }
    };
    let raw = read(&spec.url_secret_ref, "urlSecretRef").await?;
    let url = reqwest::Url::parse(&raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            format!(
                "urlSecretRef: Secret {ns}/{} key '{}' must hold an http(s) URL",
                spec.url_secret_ref.name, spec.url_secret_ref.key
            )
        })?;
    let routing_key = match &spec.routing_key_secret_ref {
        Some(r) => Some(read(r, "routingKeySecretRef").await?),
        None => None,
    };
    Ok(Target { url, routing_key })
}

async fn post(
    http: &reqwest::Client,
    url: &reqwest::Url,
    body: &serde_json::Value,
) -> Result<(), String> {
    // The URL is a secret (webhook tokens live in it): errors name the host only.
    let host = url.host_str().unwrap_or("?").to_string();
    let response = http
        .post(url.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| format!("POST to {host} failed: {}", e.without_url()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("POST to {host} answered {}", response.status()))
    }
}
