//! The Notifier controller: tells webhooks about the alerts that FallbackPolicy status
//! shows (see [`crate::notify`] for what an alert is and why delivery state lives in
//! the Notifier's status).
//!
//! Triggers: the Notifier itself, and every FallbackPolicy in its namespace (a
//! reflector store, so a reconcile reads policies from memory). Sending happens here,
//! never in the policy controller, so a slow or dead receiver cannot delay routing.
//! A reconcile sends what is pending in order, stops a receiver at its first failure
//! (retried with the shared backoff) or when its rate limit is spent, and records what
//! was delivered with one status write. Sending to one receiver is in `deliver`.

mod deliver;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::runtime::{Guarded, parsed, reconcile_parsed, write_status};
use super::{Context, Retries};
use crate::backoff::Backoff;
use crate::crd::{
    FallbackPolicy, Notifier, NotifierStatus, ReceiverStatus, condition, merge_condition,
};
use crate::lock;
use crate::notify::{self, Alert, RateLimit};
use deliver::deliver;

/// Condition type: every receiver is up to date.
pub const DELIVERING: &str = "Delivering";

/// Errors of the Notifier controller.
pub type Error = super::runtime::WriterError;

type ReceiverKey = (String, String, String);

struct NotifierCtx {
    ctx: Arc<Context>,
    policies: Store<Guarded<FallbackPolicy>>,
    http: reqwest::Client,
    limits: Mutex<HashMap<ReceiverKey, RateLimit>>,
    failures: Mutex<HashMap<ReceiverKey, u32>>,
    retries: Retries,
}

/// Whether `notifier` reports on `policy`.
fn selects(notifier: &Notifier, policy: &FallbackPolicy) -> bool {
    notifier.namespace() == policy.namespace()
        && (notifier.spec.policies.is_empty()
            || notifier
                .spec
                .policies
                .iter()
                .any(|p| *p == policy.name_any()))
}

/// Run the Notifier controller until `shutdown` is cancelled.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let (policies, policy_events) = ctx.policies.cached();
    let controller = Controller::new(ctx.api::<Guarded<Notifier>>(), watcher::Config::default())
        .trigger_backoff(crate::backoff::WATCH)
        .with_config(super::runtime::controller_config());
    let notifiers = controller.store();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    let nctx = Arc::new(NotifierCtx {
        ctx,
        policies,
        http,
        limits: Mutex::default(),
        failures: Mutex::default(),
        retries: Retries::new(Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
        )),
    });
    controller
        .watches_stream(policy_events, move |policy: Guarded<FallbackPolicy>| {
            let Some(policy) = parsed(&policy) else {
                return Vec::new();
            };
            notifiers
                .state()
                .into_iter()
                .filter(|n| parsed(n).is_some_and(|n| selects(n, policy)))
                .map(|n| ObjectRef::from_obj(&*n))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, nctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(notifier: Arc<Guarded<Notifier>>, error: &Error, nctx: Arc<NotifierCtx>) -> Action {
    nctx.ctx.reconcile_failed(
        "notifier",
        &nctx.retries,
        &*notifier,
        error.category(),
        error,
    )
}

async fn reconcile(obj: Arc<Guarded<Notifier>>, nctx: Arc<NotifierCtx>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let name = obj.name_any();
    let inner = |notifier| reconcile_inner(notifier, &ns, &name, &nctx);
    reconcile_parsed(
        &nctx.ctx,
        "notifier",
        &nctx.retries,
        &obj,
        (&ns, &name),
        inner,
    )
    .await
}

async fn reconcile_inner(
    notifier: &Notifier,
    ns: &str,
    name: &str,
    nctx: &NotifierCtx,
) -> Result<Action, Error> {
    // An empty cache would look like "every alert resolved": wait for the first list.
    if !super::runtime::is_ready(&nctx.policies) {
        return Ok(Action::requeue(super::runtime::CACHE_WAIT));
    }
    let mut firing: Vec<Alert> = nctx
        .policies
        .state()
        .iter()
        .filter_map(|p| parsed(p))
        .filter(|p| selects(notifier, p))
        .flat_map(notify::alerts_of)
        .collect();
    firing.sort_by(|a, b| a.key.cmp(&b.key));

    let old = notifier.status.clone().unwrap_or_default();
    let mut status = NotifierStatus {
        observed_generation: notifier.metadata.generation,
        conditions: old.conditions.clone(),
        firing: u32::try_from(firing.len()).unwrap_or(u32::MAX),
        pending: 0,
        receivers: Vec::new(),
    };
    let mut retry_in: Option<Duration> = None;
    let mut problems: Vec<String> = Vec::new();
    for spec in &notifier.spec.receivers {
        let mut rs = old
            .receivers
            .iter()
            .find(|r| r.name == spec.name)
            .cloned()
            .unwrap_or_else(|| ReceiverStatus {
                name: spec.name.clone(),
                ..Default::default()
            });
        let key: ReceiverKey = (ns.to_string(), name.to_string(), spec.name.clone());
        let outcome = deliver(ns, spec, &firing, &mut rs, &key, nctx).await;
        if let Some(wait) = outcome.retry_in {
            retry_in = Some(retry_in.map_or(wait, |r| r.min(wait)));
        }
        if let Some(problem) = outcome.problem {
            problems.push(format!("receiver {}: {problem}", spec.name));
        }
        status.pending += outcome.left;
        status.receivers.push(rs);
    }
    let now = jiff::Timestamp::now();
    let delivering = if problems.is_empty() && status.pending == 0 {
        condition(
            DELIVERING,
            true,
            "UpToDate",
            "every receiver has been told about every alert",
            notifier.metadata.generation,
        )
    } else if problems.is_empty() {
        condition(
            DELIVERING,
            true,
            "RateLimited",
            format!(
                "{} notification(s) wait for receivers' rate limits",
                status.pending
            ),
            notifier.metadata.generation,
        )
    } else {
        condition(
            DELIVERING,
            false,
            "DeliveryFailing",
            format!(
                "{} notification(s) pending; {}",
                status.pending,
                problems.join("; ")
            ),
            notifier.metadata.generation,
        )
    };
    merge_condition(&mut status.conditions, delivering, now);
    if notifier.status.as_ref() != Some(&status) {
        write_status::<Notifier, _>(&nctx.ctx, ns, name, &status).await?;
    }
    Ok(match retry_in {
        Some(wait) => Action::requeue(wait.max(Duration::from_millis(100))),
        // Policy changes wake us; the periodic pass only re-reads Secrets.
        None => Action::requeue(Duration::from_secs(300)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn notifier(policies: &[&str]) -> Notifier {
        serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Notifier",
            "metadata": { "name": "oncall", "namespace": "cc" },
            "spec": { "policies": policies, "receivers": [{
                "name": "pager", "urlSecretRef": { "name": "hooks", "key": "url" }
            }]},
        }))
        .unwrap()
    }

    fn policy(ns: &str, name: &str) -> FallbackPolicy {
        serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "routingConfigMap": { "name": "r" }, "regions": [{ "name": "a" }],
                      "routes": [{ "name": "in", "setId": 1, "tiers": [{ "name": "t", "targets": [{ "trunk": "x" }] }] }] },
        }))
        .unwrap()
    }

    #[test]
    fn a_notifier_selects_policies_of_its_namespace() {
        assert!(selects(&notifier(&[]), &policy("cc", "main")));
        assert!(!selects(&notifier(&[]), &policy("other", "main")));
        assert!(selects(&notifier(&["main"]), &policy("cc", "main")));
        assert!(!selects(&notifier(&["main"]), &policy("cc", "lab")));
    }
}
