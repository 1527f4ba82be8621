//! The BotPool controller's writes: the owned Deployment, Service and PDB, an HPA's
//! floor, and Events — each a server-side apply with lifeline's field manager (the
//! status goes through [`runtime::apply_status`](crate::controller::runtime::apply_status)).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::scaling::{self, FloorAction, HpaView};
use super::{Error, HANDOVER_MANAGER, Limit, USER_MIN_REPLICAS, build, kube_err, reason};
use crate::controller::Context;
use crate::controller::runtime::{publish, truncate};
use crate::crd::{BOTPOOL_AVAILABLE, BotPool, BotPoolStatus, FIELD_MANAGER, find_condition};

/// Apply the headless Service and the PodDisruptionBudget; returns the Service's
/// resourceVersion and the PDB's generation (for the "nothing changed" fingerprint).
pub async fn service_and_pdb(
    pool: &BotPool,
    ns: &str,
    owner: &OwnerReference,
    ctx: &Context,
) -> Result<(Option<String>, Option<i64>), Error> {
    let name = pool.name_any();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let service = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &pp, &Patch::Apply(build::service(pool, owner)))
        .await
        .map_err(kube_err("apply Service"))?;
    let pdb = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns)
        .patch(
            &name,
            &pp,
            &Patch::Apply(build::pod_disruption_budget(pool, owner)),
        )
        .await
        .map_err(kube_err("apply PodDisruptionBudget"))?;
    Ok((service.metadata.resource_version, pdb.metadata.generation))
}

/// Apply the Deployment. When `spec.replicas` leaves the apply (a switch to
/// `HpaFloor`) while lifeline still owns it, server-side apply would delete the field
/// and the API server would default it to 1, dropping most bots until the HPA reacts.
/// So the current value is first handed to a separate manager (the handover Kubernetes
/// documents for moving replicas to an HPA); the HPA takes it over on its next scale.
pub async fn deployment(
    pool: &BotPool,
    ns: &str,
    owner: &OwnerReference,
    inputs: &build::Inputs,
    existing: Option<&Deployment>,
    ctx: &Context,
) -> Result<Option<i64>, Error> {
    let api = Api::<Deployment>::namespaced(ctx.client.clone(), ns);
    let handover = existing.filter(|d| {
        inputs.replicas.is_none()
            && applies_spec_field(d.metadata.managed_fields.as_deref(), "f:replicas")
    });
    if let Some(replicas) = handover.and_then(|d| d.spec.as_ref()?.replicas) {
        let body = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": pool.name_any() },
            "spec": { "replicas": replicas },
        });
        api.patch(
            &pool.name_any(),
            &PatchParams::apply(HANDOVER_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(kube_err("hand Deployment replicas over"))?;
    }
    let applied = api
        .patch(
            &pool.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(build::deployment(pool, owner, inputs)),
        )
        .await
        .map_err(kube_err("apply Deployment"))?;
    Ok(applied.metadata.generation)
}

/// Whether lifeline's field manager owns `spec.<field>` (e.g. `f:replicas`) through
/// an Apply.
pub fn applies_spec_field(managed_fields: Option<&[ManagedFieldsEntry]>, field: &str) -> bool {
    managed_fields
        .into_iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| f.0.get("f:spec").and_then(|s| s.get(field)).is_some())
}

/// Raise or restore the floor of the HPA that targets the pool's Deployment.
/// Returns what limits scaling, if the HPA does.
///
/// The write is a forced server-side apply of only `spec.minReplicas` and the
/// annotation: lifeline takes over exactly that field from the user's manager (Argo
/// CD can ignore it with `ignoreDifferences.managedFieldsManagers`), never the rest
/// of the HPA. When lifeline no longer owns the field, someone else set it since, and
/// that value becomes the user's.
pub async fn hpa_floor(
    ns: &str,
    deployment: &str,
    hpa: Option<&HorizontalPodAutoscaler>,
    floor: u32,
    ctx: &Context,
) -> Result<Option<Limit>, Error> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    let Some(hpa) = hpa else {
        return Ok(Some(Limit::HpaNotFound(deployment.to_string())));
    };
    let Some(spec) = hpa.spec.as_ref() else {
        return Ok(None);
    };
    let view = HpaView {
        min_replicas: spec.min_replicas.unwrap_or(1),
        max_replicas: spec.max_replicas,
        remembered_user_min: hpa
            .annotations()
            .get(USER_MIN_REPLICAS)
            .and_then(|v| v.parse().ok()),
        floor_owned: applies_spec_field(hpa.metadata.managed_fields.as_deref(), "f:minReplicas"),
    };
    let (action, capped) = scaling::hpa_floor(view, floor);
    let hpa_name = hpa.name_any();
    let body = match action {
        FloorAction::Keep => None,
        FloorAction::Raise {
            min_replicas,
            user_min,
        } => Some(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": hpa_name,
                "annotations": { USER_MIN_REPLICAS: user_min.to_string() },
            },
            "spec": { "minReplicas": min_replicas },
        })),
        FloorAction::Restore { min_replicas } => Some(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": { "name": hpa_name },
            "spec": { "minReplicas": min_replicas },
        })),
    };
    if let Some(body) = body {
        tracing::info!(hpa = %hpa_name, ?action, "adjusting HPA floor");
        api.patch(
            &hpa_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(kube_err("apply HPA minReplicas"))?;
    }
    let wanted = i32::try_from(floor).unwrap_or(i32::MAX);
    Ok((capped < wanted).then_some(Limit::HpaMax(spec.max_replicas)))
}

/// Events on scale changes and on a newly rejected spec.
pub async fn transitions(
    pool: &BotPool,
    previous: Option<u32>,
    new: &BotPoolStatus,
    ctx: &Context,
) {
    let none = BotPoolStatus::default();
    let old = pool.status.as_ref().unwrap_or(&none);
    let mut events = Vec::new();
    if let Some(previous) = previous
        && previous != new.desired_replicas
    {
        let (reason, verb) = if new.desired_replicas > previous {
            ("ScaledUp", "up")
        } else {
            ("ScaledDown", "down")
        };
        events.push(Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(format!(
                "scaled {verb} from {previous} to {} replicas for a demand of {} calls",
                new.desired_replicas, new.demand
            )),
            action: "Scale".into(),
            secondary: None,
        });
    }
    let was_invalid = find_condition(&old.conditions, BOTPOOL_AVAILABLE)
        .is_some_and(|c| c.reason == reason::INVALID_SPEC);
    if let Some(c) = find_condition(&new.conditions, BOTPOOL_AVAILABLE)
        && c.reason == reason::INVALID_SPEC
        && !was_invalid
    {
        events.push(Event {
            type_: EventType::Warning,
            reason: reason::INVALID_SPEC.into(),
            note: Some(truncate(&c.message, 1000)),
            action: "Apply".into(),
            secondary: None,
        });
    }
    let reference = pool.object_ref(&());
    for event in events {
        publish(ctx, event, &reference).await;
    }
}

/// The inputs of an apply and the versions of the objects it produced. Deployments
/// and PDBs bump `metadata.generation` on every spec change (a user's edit
/// included) but not on status updates; a Service has no generation but no status
/// churn either, so its `resourceVersion` serves.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Fingerprint {
    pub(super) pool_generation: Option<i64>,
    pub(super) inputs: build::Inputs,
    pub(super) deployment_generation: Option<i64>,
    pub(super) service_version: Option<String>,
    pub(super) pdb_generation: Option<i64>,
}
