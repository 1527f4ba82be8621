//! Unit tests of the observe step.

use super::*;
use k8s_openapi::api::autoscaling::v2::{CrossVersionObjectReference, HorizontalPodAutoscalerSpec};
use std::sync::Mutex;

#[test]
fn an_hpa_wakes_the_pool_whose_deployment_it_scales() {
    let hpa = |kind: &str| HorizontalPodAutoscaler {
        metadata: kube::api::ObjectMeta {
            name: Some("h".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                kind: kind.into(),
                name: "bots-cgn".into(),
                api_version: Some("apps/v1".into()),
            },
            max_replicas: 5,
            ..Default::default()
        }),
        status: None,
    };
    let r = pool_of_hpa(hpa("Deployment")).unwrap();
    assert_eq!(
        (r.name.as_str(), r.namespace.as_deref()),
        ("bots-cgn", Some("ns"))
    );
    assert!(pool_of_hpa(hpa("StatefulSet")).is_none());
}

#[test]
fn a_stripped_cache_still_knows_who_applies_replicas() {
    use crate::controller::botpool::apply::applies_spec_field;
    let entry = |manager: &str, operation: &str, fields: serde_json::Value| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        fields_v1: Some(FieldsV1(fields)),
        ..Default::default()
    };
    let spec = serde_json::json!({
        "f:spec": { "f:replicas": {}, "f:template": { "f:spec": { "f:containers": {} } } },
    });
    let deployment = |entries: Vec<ManagedFieldsEntry>| {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "bots", "namespace": "ns", "generation": 3,
                "annotations": { build::SCALE_DOWN_SINCE: "2026-12-04T08:00:00Z" },
            },
            "spec": {
                "replicas": 4,
                "selector": { "matchLabels": { "app": "bots" } },
                "template": { "spec": { "containers": [{ "name": "bot", "image": "bot:1" }] } },
            },
            "status": { "readyReplicas": 4 },
        }))
        .unwrap();
        d.metadata.managed_fields = Some(entries);
        strip_deployment(&mut d);
        d
    };
    let ours = deployment(vec![
        entry(FIELD_MANAGER, "Apply", spec.clone()),
        entry(
            "kube-controller-manager",
            "Update",
            serde_json::json!({ "f:status": {} }),
        ),
    ]);
    assert!(applies_spec_field(
        ours.metadata.managed_fields.as_deref(),
        "f:replicas"
    ));
    // What a reconcile reads is kept; the template and status are gone.
    assert_eq!(ours.spec.as_ref().unwrap().replicas, Some(4));
    assert_eq!(ours.metadata.generation, Some(3));
    assert!(ours.annotations().contains_key(build::SCALE_DOWN_SINCE));
    assert!(ours.spec.as_ref().unwrap().template.spec.is_none());
    assert!(ours.status.is_none());
    assert_eq!(ours.metadata.managed_fields.as_ref().unwrap().len(), 1);
    // Replicas held by someone else (an HPA took them over), or by an Update: not ours.
    for other in [
        entry("kube-controller-manager", "Update", spec.clone()),
        entry(FIELD_MANAGER, "Update", spec.clone()),
        entry(
            FIELD_MANAGER,
            "Apply",
            serde_json::json!({ "f:spec": { "f:template": {} } }),
        ),
    ] {
        let d = deployment(vec![other]);
        assert!(!applies_spec_field(
            d.metadata.managed_fields.as_deref(),
            "f:replicas"
        ));
        assert!(d.metadata.managed_fields.is_none());
    }
}

#[test]
fn a_stripped_hpa_keeps_its_bounds_and_the_remembered_floor() {
    let mut hpa: HorizontalPodAutoscaler = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "h", "namespace": "ns",
            "annotations": {
                crate::controller::botpool::USER_MIN_REPLICAS: "2",
                LAST_APPLIED: "{\"a\":\"big copy\"}",
            },
            "managedFields": [{
                "manager": FIELD_MANAGER, "operation": "Apply",
                "fieldsV1": { "f:spec": { "f:minReplicas": {} } },
            }],
        },
        "spec": {
            "scaleTargetRef": { "kind": "Deployment", "name": "bots", "apiVersion": "apps/v1" },
            "minReplicas": 3, "maxReplicas": 9,
            "metrics": [{ "type": "Resource", "resource": { "name": "cpu",
                "target": { "type": "Utilization", "averageUtilization": 60 } } }],
        },
    }))
    .unwrap();
    strip_hpa(&mut hpa);
    let spec = hpa.spec.as_ref().unwrap();
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 9));
    assert!(spec.metrics.is_none());
    assert_eq!(
        hpa.annotations()
            .get(crate::controller::botpool::USER_MIN_REPLICAS)
            .map(String::as_str),
        Some("2")
    );
    assert!(!hpa.annotations().contains_key(LAST_APPLIED));
    assert!(crate::controller::botpool::apply::applies_spec_field(
        hpa.metadata.managed_fields.as_deref(),
        "f:minReplicas"
    ));
    assert_eq!(pool_of_hpa(hpa).unwrap().name, "bots");
}

#[test]
fn a_pool_awaits_the_first_plan_of_the_policies_that_route_to_it() {
    use crate::plan::fixtures::{bots, policy};
    let make = |pool: &str, planned: bool| {
        let spec = policy()
            .region("cologne", 1)
            .route("inbound", 1, |r| r.tier("bots", [bots(pool)]))
            .build();
        let mut p = FallbackPolicy::new("cc", spec);
        if planned {
            p.status = Some(Default::default());
        }
        p
    };
    let (new, planned, other) = (make("a", false), make("a", true), make("b", false));
    assert!(awaits_first_plan([&new, &planned], "a"));
    assert!(!awaits_first_plan([&planned, &other], "a"));
    assert!(
        !awaits_first_plan([], "a"),
        "a pool no policy names starts at once"
    );
}

#[test]
fn a_policy_wakes_the_pools_it_names_now_and_before() {
    use crate::plan::fixtures::{bots, policy};
    let named = Mutex::default();
    let make = |pool: &str| {
        let spec = policy()
            .region("cologne", 1)
            .route("inbound", 1, |r| r.tier("bots", [bots(pool)]))
            .build();
        let mut p = FallbackPolicy::new("cc", spec);
        p.metadata.namespace = Some("ns".into());
        kube::core::DeserializeGuard(Ok(p))
    };
    let names = |refs: Vec<ObjectRef<Guarded<BotPool>>>| {
        refs.into_iter().map(|r| r.name).collect::<Vec<_>>()
    };
    assert_eq!(names(pools_of_policy(&named, &make("a"))), ["a"]);
    // Moved to pool b: a is reconciled once more (its demand drops).
    assert_eq!(names(pools_of_policy(&named, &make("b"))), ["a", "b"]);
    assert_eq!(names(pools_of_policy(&named, &make("b"))), ["b"]);
}
