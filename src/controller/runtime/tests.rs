use super::*;
use crate::crd::{FallbackPolicy, Trunk};

#[test]
fn status_body_names_kind_and_carries_only_the_status() {
    let body = status_body::<Trunk, _>(&serde_json::json!({ "healthyEndpoints": 1 }));
    assert_eq!(body["apiVersion"], "lifeline.dev/v1alpha1");
    assert_eq!(body["kind"], "Trunk");
    assert_eq!(body["status"]["healthyEndpoints"], 1);
    assert_eq!(body.as_object().map(|o| o.len()), Some(3));
}

#[test]
fn owner_keys_parse_only_their_prefix() {
    let r = parse_owner_key::<Trunk>("trunk", "trunk/ns1/a").unwrap();
    assert_eq!(
        (r.name.as_str(), r.namespace.as_deref()),
        ("a", Some("ns1"))
    );
    assert!(parse_owner_key::<Trunk>("trunk", "policy/ns1/a").is_none());
    assert!(parse_owner_key::<FallbackPolicy>("policy", "policyx/ns1/a").is_none());
    assert!(parse_owner_key::<Trunk>("trunk", "trunk/ns1").is_none());
}

#[test]
fn an_unreadable_object_keeps_its_name() {
    let bad: Guarded<Trunk> = serde_json::from_value(serde_json::json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
        "metadata": { "name": "t1", "namespace": "n" },
        "spec": { "region": 7 }
    }))
    .unwrap();
    assert!(parsed(&bad).is_none());
    assert_eq!(bad.name_any(), "t1");
    assert_eq!(truncate("äöü", 2), "äö");
}
