//! The policy controller's writes: the routing ConfigMap and Events (the status goes
//! through [`runtime::apply_status`](crate::controller::runtime::apply_status)). Every
//! write is a server-side apply with lifeline's one field manager.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::decide::{Count, Notice};
use super::{CONTENT_HASH_ANNOTATION, CONTROLLER, Error, MANAGED_BY_LABEL, reasons};
use crate::controller::Context;
use crate::controller::runtime::{publish, truncate};
use crate::crd::{FIELD_MANAGER, FallbackPolicy, POLICY_READY, RoutingFormat, find_condition};

/// Server-side apply the routing ConfigMap; returns the resourceVersion written.
pub async fn config_map(
    policy: &FallbackPolicy,
    ns: &str,
    format: RoutingFormat,
    text: &str,
    hash: &str,
    probes: &str,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let cm_name = &policy.spec.routing_config_map.name;
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let key = crate::routing::data_key(format);
    let owner = policy.controller_owner_ref(&());
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": cm_name,
            "namespace": ns,
            "labels": { MANAGED_BY_LABEL: "lifeline", "lifeline.dev/policy": policy.name_any() },
            "annotations": { CONTENT_HASH_ANNOTATION: hash },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "data": { key: text, crate::routing::probes::PROBES_KEY: probes },
    });
    let written = api
        .patch(
            cm_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
    ctx.metrics.configmap_writes.inc();
    tracing::info!(configmap = %cm_name, hash = %hash, "routing written");
    Ok(written.metadata.resource_version)
}

/// Publish `notices` as Events on the policy (and bump their counters).
pub async fn events(policy: &FallbackPolicy, notices: Vec<Notice>, ctx: &Context) {
    let reference = policy.object_ref(&());
    for n in notices {
        match n.count {
            Some(Count::Failover) => ctx.metrics.failovers.inc(),
            Some(Count::Failback) => ctx.metrics.failbacks.inc(),
            None => 0,
        };
        if n.type_ == kube::runtime::events::EventType::Warning {
            tracing::warn!(reason = n.reason, "{}", n.note);
        } else {
            tracing::info!(reason = n.reason, "{}", n.note);
        }
        let event = Event {
            type_: n.type_,
            reason: n.reason.to_string(),
            note: Some(truncate(&n.note, 1000)),
            action: "Route".to_string(),
            secondary: None,
        };
        publish(ctx, event, &reference).await;
    }
}

/// A ConfigMap in the way was just reported in the status: say it once as a Warning.
pub async fn conflict_found(policy: &FallbackPolicy, cm: &str, ctx: &Context) {
    let already = policy
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, POLICY_READY))
        .is_some_and(|c| c.reason == reasons::CONFIGMAP_CONFLICT);
    if already {
        return;
    }
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::telemetry::ErrorLabels {
            controller: CONTROLLER,
            error: "conflict",
        })
        .inc();
    let note = format!(
        "ConfigMap '{cm}' exists and is not managed by this policy: routing is not published; delete or rename it, or set spec.routingConfigMap.name"
    );
    tracing::warn!(configmap = %cm, "{note}");
    let event = Event {
        type_: EventType::Warning,
        reason: reasons::CONFIGMAP_CONFLICT.into(),
        note: Some(note),
        action: "Route".into(),
        secondary: None,
    };
    publish(ctx, event, &kube::Resource::object_ref(policy, &())).await;
}
