//! Which policies to plan again at once, past kube-runtime's scheduler (see
//! [`Expedite`](crate::controller::runtime::Expedite)):
//! - [`verdict_changes`]: a Trunk status this replica decided (the verdict board);
//! - [`HealthChanges`]: a Trunk whose health changed on the watch: a status written
//!   by someone else (another tool, a replica that led before), or this replica's own
//!   status coming back (then the pass finds nothing to write).
//!
//! Only a change of a known health is expedited. A first status (every Trunk at a
//! start) and an RTT refresh go through the controller's scheduler as before: at a
//! 10,000-Trunk start, expediting every first status slowed every policy's first
//! routing.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::observe::{referencing, targets};
use crate::controller::runtime::{Guarded, all_of, parsed};
use crate::crd::{FallbackPolicy, Trunk, TrunkStatus};

type PolicyRef = ObjectRef<Guarded<FallbackPolicy>>;

/// The policies to reconcile for each decided Trunk status (every policy after a lag).
pub fn verdict_changes(
    rx: tokio::sync::broadcast::Receiver<(String, String)>,
    store: Store<Guarded<FallbackPolicy>>,
) -> impl futures::Stream<Item = PolicyRef> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, move |mut rx| {
        let store = store.clone();
        async move {
            let refs = match rx.recv().await {
                Ok((ns, name)) => naming(&store, ns, &name),
                Err(RecvError::Lagged(_)) => all_of(&store),
                Err(RecvError::Closed) => return None,
            };
            Some((refs, rx))
        }
    })
    .flat_map(futures::stream::iter)
}

/// The policies in `namespace` that route on the Trunk `name`.
fn naming(store: &Store<Guarded<FallbackPolicy>>, namespace: String, name: &str) -> Vec<PolicyRef> {
    referencing(store, Some(namespace), |spec| {
        targets(spec).any(|t| t.trunk.as_deref() == Some(name))
    })
}

/// Remembers each Trunk's last seen health on the watch, as a 64-bit fingerprint per
/// Trunk (16 bytes of map entry each; 10,000 Trunks ≈ 0.3 MiB with the map's slack).
#[derive(Default)]
pub struct HealthChanges {
    seen: HashMap<u64, u64>,
}

impl HealthChanges {
    /// Takes one watch event; returns the Trunks (namespace, name) whose known health
    /// it changed.
    pub fn observe(&mut self, event: &watcher::Event<Guarded<Trunk>>) -> Vec<(String, String)> {
        match event {
            watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                self.apply(t).into_iter().collect()
            }
            watcher::Event::Delete(t) => {
                self.seen.remove(&key(t));
                Vec::new()
            }
            watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
        }
    }

    fn apply(&mut self, trunk: &Guarded<Trunk>) -> Option<(String, String)> {
        let key = key(trunk);
        let Some(health) = parsed(trunk)
            .and_then(|t| t.status.as_ref())
            .and_then(fingerprint)
        else {
            self.seen.remove(&key);
            return None;
        };
        let before = self.seen.insert(key, health)?;
        (before != health).then(|| (trunk.namespace().unwrap_or_default(), trunk.name_any()))
    }

    /// A stream of the watch events that also sends, for each changed health, the
    /// policies that route on the Trunk to `changed`.
    pub fn tap<S>(
        events: S,
        store: Store<Guarded<FallbackPolicy>>,
        changed: futures::channel::mpsc::UnboundedSender<PolicyRef>,
    ) -> impl futures::Stream<Item = S::Item> + Send + 'static
    where
        S: futures::Stream<Item = watcher::Result<watcher::Event<Guarded<Trunk>>>> + Send + 'static,
    {
        let mut health = HealthChanges::default();
        events.inspect(move |event| {
            let Ok(event) = event else { return };
            for (ns, name) in health.observe(event) {
                for policy in naming(&store, ns, &name) {
                    let _ = changed.unbounded_send(policy);
                }
            }
        })
    }
}

fn key(trunk: &Guarded<Trunk>) -> u64 {
    let mut h = DefaultHasher::new();
    (trunk.namespace(), trunk.name_any()).hash(&mut h);
    h.finish()
}

/// What the planner reads of a Trunk's health: each endpoint's state and every
/// condition's status. `None` while no endpoint has a verdict to plan from.
fn fingerprint(status: &TrunkStatus) -> Option<u64> {
    if status.endpoints.is_empty() {
        return None;
    }
    let mut h = DefaultHasher::new();
    for e in &status.endpoints {
        (&e.uri, e.state.as_str()).hash(&mut h);
    }
    for c in &status.conditions {
        (&c.type_, &c.status).hash(&mut h);
    }
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, status: Option<TrunkStatus>) -> Guarded<Trunk> {
        let mut t: Trunk = serde_json::from_value(serde_json::json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
            "metadata": { "name": name, "namespace": "cc" },
            "spec": { "region": "cologne", "endpoints": [{ "uri": "sip:carrier@127.0.0.1" }] },
        }))
        .unwrap();
        t.status = status;
        kube::core::DeserializeGuard(Ok(t))
    }

    fn status(state: &str, rtt: u32, healthy: &str) -> Option<TrunkStatus> {
        serde_json::from_value(serde_json::json!({
            "endpoints": [{ "uri": "sip:carrier@127.0.0.1", "state": state, "rttMillis": rtt }],
            "conditions": [{
                "type": "Healthy", "status": healthy, "reason": "Probed", "message": "",
                "lastTransitionTime": "2026-12-04T00:00:00Z",
            }],
        }))
        .unwrap()
    }

    fn apply(h: &mut HealthChanges, t: Guarded<Trunk>) -> Vec<(String, String)> {
        h.observe(&watcher::Event::Apply(t))
    }

    fn named(name: &str) -> Vec<(String, String)> {
        vec![("cc".to_string(), name.to_string())]
    }

    #[test]
    fn a_first_status_and_an_rtt_refresh_are_not_changes() {
        let mut h = HealthChanges::default();
        assert!(apply(&mut h, trunk("a", None)).is_empty(), "no status yet");
        let first = apply(&mut h, trunk("a", status("Up", 12, "True")));
        assert!(first.is_empty(), "a first status");
        let refreshed = apply(&mut h, trunk("a", status("Up", 40, "True")));
        assert!(refreshed.is_empty(), "an RTT refresh");
    }

    #[test]
    fn a_known_health_that_changes_names_the_trunk_both_ways() {
        let mut h = HealthChanges::default();
        apply(&mut h, trunk("a", status("Up", 12, "True")));
        assert_eq!(
            apply(&mut h, trunk("a", status("Down", 12, "False"))),
            named("a")
        );
        assert_eq!(
            apply(&mut h, trunk("a", status("Up", 12, "True"))),
            named("a")
        );
        // Another Trunk's first status is not this one's change.
        assert!(apply(&mut h, trunk("b", status("Down", 1, "False"))).is_empty());
    }

    #[test]
    fn a_deleted_trunk_is_forgotten_so_its_successor_starts_fresh() {
        let mut h = HealthChanges::default();
        apply(&mut h, trunk("a", status("Up", 12, "True")));
        h.observe(&watcher::Event::Delete(trunk("a", None)));
        assert!(h.seen.is_empty());
        let new = apply(&mut h, trunk("a", status("Down", 12, "False")));
        assert!(
            new.is_empty(),
            "a re-created Trunk's first status is not a change"
        );
    }
}
