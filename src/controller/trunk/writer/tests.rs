//! Unit tests of the writer step.

use super::*;

fn key(name: &str) -> Key {
    ("ns".to_string(), name.to_string())
}

fn pending(healthy: u32, notes: &[&str], urgent: bool) -> Pending {
    Pending {
        status: Arc::new(TrunkStatus {
            healthy_endpoints: healthy,
            ..TrunkStatus::default()
        }),
        events: notes
            .iter()
            .map(|n| Event {
                type_: kube::runtime::events::EventType::Normal,
                reason: "EndpointUp".into(),
                note: Some((*n).to_string()),
                action: "Probe".into(),
                secondary: None,
            })
            .collect(),
        reference: (!notes.is_empty()).then(ObjectReference::default),
        urgent,
    }
}

fn notes(p: &Pending) -> Vec<String> {
    p.events.iter().filter_map(|e| e.note.clone()).collect()
}

#[test]
fn a_failure_jumps_the_start_up_backlog() {
    let mut q = Queue::default();
    for name in ["a", "b", "c"] {
        q.submit(key(name), pending(1, &["first verdict"], false));
    }
    q.submit(key("flip"), pending(0, &["down"], true));
    // A first publication that turns urgent moves ahead too.
    q.submit(key("c"), pending(0, &["down"], true));
    let order: Vec<String> = std::iter::from_fn(|| q.next(true))
        .map(|(k, _)| k.1)
        .collect();
    assert_eq!(order, ["flip", "c", "a", "b"]);

    // A writer of changes of state leaves first publications to the bulk writer.
    q.submit(key("d"), pending(1, &["first verdict"], false));
    assert!(q.next(false).is_none());
    assert_eq!(q.next(true).map(|(k, _)| k.1), Some("d".to_string()));
}

#[test]
fn the_latest_decision_is_written_once_with_every_event() {
    let mut q = Queue::default();
    q.submit(key("a"), pending(1, &["up"], false));
    q.submit(key("a"), pending(0, &["down"], true));
    assert_eq!(q.backlog(), 1, "one Trunk waiting");
    let (k, p) = q.next(true).unwrap();
    assert_eq!(q.backlog(), 1, "one Trunk in flight");
    assert_eq!((k.1.as_str(), p.status.healthy_endpoints), ("a", 0));
    assert_eq!(notes(&p), ["up", "down"]);
    assert!(q.next(true).is_none(), "one pending write per Trunk");

    // A decision while the write is in flight waits for it, then goes out alone.
    q.submit(key("a"), pending(1, &["up again"], true));
    assert!(
        q.next(true).is_none(),
        "never two writes of one Trunk at once"
    );
    assert!(q.done(&k, None));
    let (_, p) = q.next(true).unwrap();
    assert_eq!(notes(&p), ["up again"]);
    assert!(!q.done(&k, None));
    assert_eq!(q.backlog(), 0, "everything written");

    // Events waiting keep the Trunk they are about when a later decision has none;
    // a decision without Events holds no reference at all.
    q.submit(key("a"), pending(0, &["down"], true));
    q.submit(key("a"), pending(0, &[], false));
    let (_, p) = q.next(true).unwrap();
    assert_eq!(notes(&p), ["down"]);
    assert!(p.reference.is_some(), "the Events can still be published");
    assert!(!q.done(&k, None));
    q.submit(key("b"), pending(1, &[], false));
    assert!(q.next(true).unwrap().1.reference.is_none());
}

#[test]
fn a_failed_write_keeps_its_events_and_takes_the_newest_status() {
    let mut q = Queue::default();
    q.submit(key("a"), pending(0, &["down"], true));
    let (k, failed) = q.next(true).unwrap();
    q.submit(key("a"), pending(1, &["up"], true));
    assert!(!q.done(&k, Some(failed)), "waits out its backoff");
    assert!(q.next(true).is_none());
    assert!(q.resume(&k));
    let (_, p) = q.next(true).unwrap();
    assert_eq!(p.status.healthy_endpoints, 1);
    assert_eq!(notes(&p), ["down", "up"]);

    // A Trunk deleted during its backoff is not written.
    assert!(!q.done(&k, Some(p)));
    q.forget(&k);
    assert!(!q.resume(&k));
    assert!(q.next(true).is_none());
}
