//! Every owner's endpoints, indexed by namespace, with what each namespace's admitted
//! endpoints cost against its quotas.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{Endpoint, namespace_of};
use crate::crd::ProbeSpec;

/// One owner's endpoints (a Trunk's, or a policy's static targets).
#[derive(Default)]
pub(super) struct Owner {
    pub(super) order: Vec<String>,
    pub(super) endpoints: HashMap<String, Arc<Endpoint>>,
}

/// Every owner's endpoints, indexed by namespace, with what each namespace's admitted
/// endpoints cost. Both are kept with every change: a quota check or a namespace's
/// states read only that namespace. (Walking every owner on each `set_targets` —
/// once per Trunk reconcile — was most of the operator's CPU while 10,000 Trunks
/// started, and it held this lock, so first probes started late.)
#[derive(Default)]
pub(super) struct Owners {
    by_key: HashMap<String, Owner>,
    by_namespace: HashMap<String, BTreeSet<String>>,
    usage: HashMap<String, Usage>,
}

/// What a namespace's admitted (not refused) endpoints cost against its quotas.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Usage {
    pub(super) endpoints: usize,
    /// Endpoints by probe period in seconds: the rate is Σ count / period, exact
    /// however often owners come and go.
    by_period: BTreeMap<u32, usize>,
}

impl Usage {
    pub(super) fn add(&mut self, spec: &ProbeSpec) {
        self.endpoints += 1;
        *self
            .by_period
            .entry(spec.period_seconds.max(1))
            .or_default() += 1;
    }

    fn of(owner: &Owner) -> Self {
        let mut usage = Self::default();
        for e in owner.endpoints.values().filter(|e| !e.is_refused()) {
            usage.add(&e.spec);
        }
        usage
    }

    fn plus(&mut self, other: &Self) {
        self.endpoints += other.endpoints;
        for (period, n) in &other.by_period {
            *self.by_period.entry(*period).or_default() += n;
        }
    }

    fn minus(&mut self, other: &Self) {
        self.endpoints = self.endpoints.saturating_sub(other.endpoints);
        for (period, n) in &other.by_period {
            if let Some(have) = self.by_period.get_mut(period) {
                *have = have.saturating_sub(*n);
                if *have == 0 {
                    self.by_period.remove(period);
                }
            }
        }
    }

    /// Probes per second.
    pub(super) fn rate(&self) -> f64 {
        self.by_period
            .iter()
            .map(|(period, n)| *n as f64 / f64::from(*period))
            .sum()
    }
}

impl Owners {
    pub(super) fn get(&self, key: &str) -> Option<&Owner> {
        self.by_key.get(key)
    }

    /// Change `key`'s owner (created empty if new) with `f`, keeping the indexes. True
    /// when the owner costs less than before: an owner refused for quota may fit now.
    pub(super) fn update(&mut self, key: &str, f: impl FnOnce(&mut Owner)) -> bool {
        let ns = namespace_of(key);
        // Called on every Trunk reconcile: the key is copied (and indexed) only for a
        // new owner.
        if !self.by_key.contains_key(key) {
            self.by_key.insert(key.to_string(), Owner::default());
            self.by_namespace
                .entry(ns.to_string())
                .or_default()
                .insert(key.to_string());
        }
        let Some(owner) = self.by_key.get_mut(key) else {
            unreachable!("inserted above");
        };
        let before = Usage::of(owner);
        f(owner);
        let after = Usage::of(owner);
        let freed = after.endpoints < before.endpoints || after.rate() < before.rate();
        if before != after {
            let usage = self.usage.entry(ns.to_string()).or_default();
            usage.minus(&before);
            usage.plus(&after);
            if usage.endpoints == 0 {
                self.usage.remove(ns);
            }
        }
        freed
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<Owner> {
        let owner = self.by_key.remove(key)?;
        let ns = namespace_of(key);
        if let Some(usage) = self.usage.get_mut(ns) {
            usage.minus(&Usage::of(&owner));
            if usage.endpoints == 0 {
                self.usage.remove(ns);
            }
        }
        if let Some(keys) = self.by_namespace.get_mut(ns) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_namespace.remove(ns);
            }
        }
        Some(owner)
    }

    /// What the admitted endpoints of `owner_key`'s namespace cost, leaving out its own.
    pub(super) fn usage_without(&self, owner_key: &str) -> Usage {
        let ns = namespace_of(owner_key);
        let mut usage = self.usage.get(ns).cloned().unwrap_or_default();
        if let Some(owner) = self.by_key.get(owner_key) {
            usage.minus(&Usage::of(owner));
        }
        usage
    }

    /// The owners in namespace `ns`.
    pub(super) fn in_namespace<'a>(
        &'a self,
        ns: &str,
    ) -> impl Iterator<Item = (&'a String, &'a Owner)> {
        self.by_namespace
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(|key| Some((key, self.by_key.get(key)?)))
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = Owner> + '_ {
        self.usage.clear();
        self.by_namespace.clear();
        self.by_key.drain().map(|(_, owner)| owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeTarget;

    fn endpoint(uri: &str, period: u32, refused: bool) -> Arc<Endpoint> {
        let target = ProbeTarget {
            uri: uri.into(),
            spec: ProbeSpec {
                period_seconds: period,
                ..ProbeSpec::default()
            },
            tls: None,
        };
        let mut e = Endpoint::refused(&target, "test");
        e.refused = refused;
        Arc::new(e)
    }

    fn set(owners: &mut Owners, key: &str, endpoints: &[(&str, u32, bool)]) -> bool {
        owners.update(key, |owner| {
            owner.endpoints = endpoints
                .iter()
                .map(|(uri, period, refused)| (uri.to_string(), endpoint(uri, *period, *refused)))
                .collect();
        })
    }

    /// The kept totals equal a count over the namespace's owners from scratch.
    fn assert_consistent(owners: &Owners) {
        let mut expected: HashMap<String, Usage> = HashMap::new();
        for (key, owner) in &owners.by_key {
            let usage = Usage::of(owner);
            if usage.endpoints > 0 {
                expected
                    .entry(namespace_of(key).to_string())
                    .or_default()
                    .plus(&usage);
            }
        }
        assert_eq!(owners.usage, expected);
        for (ns, keys) in &owners.by_namespace {
            let listed: BTreeSet<String> =
                owners.in_namespace(ns).map(|(k, _)| k.clone()).collect();
            let actual: BTreeSet<String> = owners
                .by_key
                .keys()
                .filter(|k| namespace_of(k) == ns)
                .cloned()
                .collect();
            assert_eq!((keys, &listed), (&actual, &actual), "owners of {ns}");
        }
    }

    #[test]
    fn namespace_usage_follows_every_change() {
        let mut owners = Owners::default();
        let a_one = [("sip:1@x", 5, false), ("sip:2@x", 1, false)];
        // New owners, and the same targets again (every reconcile): nothing freed.
        assert!(!set(&mut owners, "trunk/a/one", &a_one));
        assert!(!set(&mut owners, "trunk/a/one", &a_one));
        assert!(!set(&mut owners, "trunk/a/two", &[("sip:3@x", 5, false)]));
        assert!(!set(&mut owners, "trunk/b/one", &[("sip:4@x", 10, false)]));
        assert_consistent(&owners);
        let a = &owners.usage["a"];
        assert_eq!(a.endpoints, 3);
        assert!((a.rate() - (1.0 / 5.0 + 1.0 + 1.0 / 5.0)).abs() < 1e-12);

        // A period changes, an endpoint goes, another is refused: quota freed.
        assert!(set(&mut owners, "trunk/a/one", &[("sip:1@x", 2, false)]));
        assert!(set(&mut owners, "trunk/a/two", &[("sip:3@x", 5, true)]));
        assert_consistent(&owners);
        assert_eq!(owners.usage["a"].endpoints, 1);
        assert!((owners.usage["a"].rate() - 0.5).abs() < 1e-12);

        // What a quota check counts leaves the asking owner out.
        assert_eq!(owners.usage_without("trunk/a/one").endpoints, 0);
        assert_eq!(owners.usage_without("trunk/a/new").endpoints, 1);
        assert_eq!(owners.usage_without("trunk/b/new").endpoints, 1);

        owners.remove("trunk/a/one");
        assert_consistent(&owners);
        assert!(
            !owners.usage.contains_key("a"),
            "no admitted endpoint left in a"
        );
        owners.remove("trunk/a/two");
        assert!(!owners.by_namespace.contains_key("a"));
        assert_eq!(owners.in_namespace("b").count(), 1);
        assert_eq!(owners.drain().count(), 1);
        assert_consistent(&owners);
        assert!(owners.usage.is_empty());
    }
}
