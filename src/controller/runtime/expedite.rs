//! Reconciles started at once for the triggers a failover waits on.
//!
//! kube-runtime's scheduler holds every request until the next tick of its timer wheel
//! (the deadline rounded up to a whole millisecond, then the tokio timer's own tick):
//! 2.5 ms per hop measured from a probe verdict to the reconcile it triggers. A
//! failover crosses two such hops (the Trunk's verdict, then the policies that route on
//! it) before its routing write. [`Expedite`] runs the reconcile of such a trigger in
//! place, when no reconcile of the same object is running and one of its few permits is
//! free, and then hands the object to the controller as usual. That pass finds nothing
//! left to write; it keeps retries, requeues and backoff where they were (an expedited
//! pass that failed is simply retried by it). A trigger that cannot be expedited goes
//! to the controller unchanged.
//!
//! Every reconcile of an object, expedited or the controller's, holds the object's
//! turn, so two never overlap, and reads the newest cached version once it has it.
//!
//! Hand-written because kube-runtime has no way to run a request before its timer
//! tick: `reconcile_on` schedules every trigger at `Instant::now()` in a `DelayQueue`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::lock;

/// How many expedited reconciles of one controller run at once, beside the
/// controller's own: a burst (a start, a lagging trigger) goes through the controller's
/// queue and its concurrency limit as before.
pub const EXPEDITED: u32 = 4;

/// The turns and permits of one controller's expedited reconciles.
pub struct Expedite<K: Resource<DynamicType = ()> + 'static> {
    busy: Mutex<HashSet<ObjectRef<K>>>,
    released: Notify,
    permits: Arc<Semaphore>,
    store: Store<K>,
}

/// An object's turn: no other reconcile of it runs while this is held.
pub struct Turn<K: Resource<DynamicType = ()> + 'static> {
    owner: Arc<Expedite<K>>,
    key: ObjectRef<K>,
}

impl<K: Resource<DynamicType = ()> + 'static> Drop for Turn<K> {
    fn drop(&mut self) {
        lock(&self.owner.busy).remove(&self.key);
        self.owner.released.notify_waiters();
    }
}

impl<K> Expedite<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// Expedited reconciles of the objects in `store` ([`EXPEDITED`] at once).
    pub fn new(store: Store<K>) -> Arc<Self> {
        Arc::new(Self {
            busy: Mutex::default(),
            released: Notify::new(),
            permits: Arc::new(Semaphore::new(EXPEDITED as usize)),
            store,
        })
    }

    fn try_turn(self: &Arc<Self>, key: &ObjectRef<K>) -> Option<Turn<K>> {
        lock(&self.busy).insert(key.clone()).then(|| Turn {
            owner: self.clone(),
            key: key.clone(),
        })
    }

    async fn turn(self: &Arc<Self>, key: &ObjectRef<K>) -> Turn<K> {
        loop {
            // Registered before the check: a release between the two is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(turn) = self.try_turn(key) {
                return turn;
            }
            released.await;
        }
    }

    /// The controller's reconcile of `obj`: waits for an expedited one of the same
    /// object to end, then reconciles the newest cached version.
    pub async fn in_turn<F, Fut, E>(self: Arc<Self>, obj: Arc<K>, reconcile: F) -> Result<Action, E>
    where
        F: FnOnce(Arc<K>) -> Fut,
        Fut: Future<Output = Result<Action, E>>,
    {
        let key = ObjectRef::from_obj(obj.as_ref());
        let _turn = self.turn(&key).await;
        let newest = self.store.get(&key).unwrap_or(obj);
        reconcile(newest).await
    }

    /// `triggers` for `Controller::reconcile_on`: each is reconciled at once if it can
    /// be (see the module). The stream yields what the controller must reconcile: the
    /// triggers that were not expedited, and each expedited one after its pass.
    pub fn triggers<F, Fut, E>(
        self: Arc<Self>,
        triggers: impl Stream<Item = ObjectRef<K>> + Send + 'static,
        reconcile: F,
    ) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
    where
        F: Fn(Arc<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let (done, after) = futures::channel::mpsc::unbounded();
        let passed = triggers.filter_map(move |key| {
            let passed = match self.start(&key) {
                Some((obj, turn, permit)) => {
                    let (pass, done) = (reconcile(obj), done.clone());
                    tokio::spawn(async move {
                        // A failure is retried by the controller's pass that follows.
                        let _ = pass.await;
                        drop((turn, permit));
                        let _ = done.unbounded_send(key);
                    });
                    None
                }
                None => Some(key),
            };
            futures::future::ready(passed)
        });
        futures::stream::select(passed, after)
    }

    /// What an expedited pass of `key` needs, if it can start now.
    fn start(
        self: &Arc<Self>,
        key: &ObjectRef<K>,
    ) -> Option<(Arc<K>, Turn<K>, OwnedSemaphorePermit)> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        // An object missing from the cache is the controller's to judge.
        let obj = self.store.get(key)?;
        let turn = self.try_turn(key)?;
        Some((obj, turn, permit))
    }

    /// Waits until no expedited reconcile is running (at shutdown, after the
    /// controller stopped taking triggers).
    pub async fn drained(&self) {
        let _ = self.permits.acquire_many(EXPEDITED).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn cm(name: &str, version: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("ns".into());
        cm.metadata.resource_version = Some(version.into());
        cm
    }

    fn store_with(objs: &[ConfigMap]) -> (Store<ConfigMap>, reflector::store::Writer<ConfigMap>) {
        let (store, mut writer) = reflector::store();
        for o in objs {
            writer.apply_watcher_event(&Event::Apply(o.clone()));
        }
        (store, writer)
    }

    fn key(name: &str) -> ObjectRef<ConfigMap> {
        ObjectRef::new(name).within("ns")
    }

    #[tokio::test]
    async fn a_trigger_runs_at_once_and_the_controller_gets_it_after_the_pass() {
        let (store, _w) = store_with(&[cm("a", "1")]);
        let ex = Expedite::new(store);
        let ran = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let counted = ran.clone();
        let mut out = ex
            .clone()
            .triggers(rx, move |_obj: Arc<ConfigMap>| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(Action::await_change())
                }
            })
            .boxed();
        tx.unbounded_send(key("a")).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), out.next())
            .await
            .expect("the controller gets the object after the expedited pass");
        assert_eq!(next, Some(key("a")));
        assert_eq!(ran.load(Ordering::SeqCst), 1, "ran in place, once");
        // The turn is free again: the controller's pass does not wait.
        let pass = ex.in_turn(Arc::new(cm("a", "0")), |obj| async move {
            Ok::<_, ()>(Action::requeue(Duration::from_secs(
                obj.metadata
                    .resource_version
                    .as_deref()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )))
        });
        let action = tokio::time::timeout(Duration::from_secs(5), pass).await;
        assert_eq!(
            action.expect("not blocked").unwrap(),
            Action::requeue(Duration::from_secs(1)),
            "reads the newest cached version, not the one it was handed"
        );
    }

    #[tokio::test]
    async fn a_busy_object_and_an_unknown_one_go_to_the_controller_unchanged() {
        let (store, _w) = store_with(&[cm("a", "1")]);
        let ex = Expedite::new(store);
        let held = ex.try_turn(&key("a")).expect("free");
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut out = ex
            .clone()
            .triggers(
                rx,
                |_obj: Arc<ConfigMap>| -> std::future::Ready<Result<Action, ()>> {
                    panic!("must not run while the controller holds the turn")
                },
            )
            .boxed();
        tx.unbounded_send(key("a")).unwrap();
        tx.unbounded_send(key("gone")).unwrap();
        assert_eq!(out.next().await, Some(key("a")));
        assert_eq!(out.next().await, Some(key("gone")));
        drop(held);
    }

    #[tokio::test]
    async fn the_controllers_pass_waits_for_the_expedited_one_and_never_overlaps() {
        let (store, _w) = store_with(&[cm("a", "1")]);
        let ex = Expedite::new(store);
        let inside = Arc::new(AtomicUsize::new(0));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let pass = |inside: Arc<AtomicUsize>, overlaps: Arc<AtomicUsize>| async move {
            if inside.fetch_add(1, Ordering::SeqCst) > 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, ()>(Action::await_change())
        };
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (i, o) = (inside.clone(), overlaps.clone());
        let mut out = ex
            .clone()
            .triggers(rx, move |_| pass(i.clone(), o.clone()))
            .boxed();
        tx.unbounded_send(key("a")).unwrap();
        // Drive the trigger stream until the expedited pass started.
        let follow_up = tokio::spawn(async move { out.next().await });
        while inside.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let controllers = ex.clone().in_turn(Arc::new(cm("a", "1")), |_| {
            pass(inside.clone(), overlaps.clone())
        });
        controllers.await.unwrap();
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "passes overlapped");
        assert_eq!(follow_up.await.unwrap(), Some(key("a")));
        tokio::time::timeout(Duration::from_secs(5), ex.drained())
            .await
            .expect("no expedited pass left");
    }

    #[tokio::test]
    async fn at_most_the_permitted_number_run_at_once_and_the_rest_queue() {
        let names: Vec<String> = (0..EXPEDITED + 3).map(|i| format!("o{i}")).collect();
        let objs: Vec<ConfigMap> = names.iter().map(|n| cm(n, "1")).collect();
        let (store, _w) = store_with(&objs);
        let ex = Expedite::new(store);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let g = gate.clone();
        let mut out = ex
            .clone()
            .triggers(rx, move |_| {
                let g = g.clone();
                async move {
                    let _ = g.acquire().await;
                    Ok::<_, ()>(Action::await_change())
                }
            })
            .boxed();
        for n in &names {
            tx.unbounded_send(key(n)).unwrap();
        }
        // The ones beyond the permits come straight back, in order.
        for n in &names[EXPEDITED as usize..] {
            assert_eq!(out.next().await, Some(key(n)));
        }
        gate.add_permits(names.len());
        let mut after: Vec<_> = Vec::new();
        for _ in 0..EXPEDITED {
            after.push(out.next().await.unwrap().name);
        }
        after.sort();
        let mut first: Vec<_> = names[..EXPEDITED as usize].to_vec();
        first.sort();
        assert_eq!(after, first);
    }
}
