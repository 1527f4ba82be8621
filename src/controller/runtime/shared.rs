//! One watch and one cache of a kind, shared by the controllers of one context that
//! read it. At 10,000 Trunks the Trunk and policy controllers each kept a full copy;
//! now they keep one (and so for FallbackPolicies, BotPools and FailoverDrills).
//!
//! kube's shared reflector (`reflector::store_shared`) was the first choice, but its
//! subscribers are told only about objects that were applied, never about deletions,
//! and both readers here act on a deletion (the Trunk controller stops probing, a
//! policy routes around the missing Trunk). So the events themselves are shared: the
//! cache is filled first, then every subscriber gets each watch event in order, with
//! backpressure (a bounded channel each, no event is ever dropped).

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use super::{Guarded, guarded_watch};

use crate::lock;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// Events a subscriber may have waiting before the watch waits for it.
const BUFFER: usize = 1024;

type Events<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;

/// A watch of `K` whose cache and events several controllers share.
pub struct SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    store: Store<K>,
    inner: Arc<Mutex<Inner<K>>>,
}

struct Inner<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// The watch, filling the store, while no task drives it; `None` while one does.
    idle: Option<Events<K>>,
    subscribers: Vec<mpsc::Sender<watcher::Event<K>>>,
}

impl<K> SharedWatch<Guarded<K>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    /// A shared watch of the custom resource `K` in `namespace` (or everywhere), each
    /// object guarded against a malformed one (see [`guarded_watch`]). Any resource
    /// version will do for its lists (the API server's watch cache).
    pub fn of(client: &Client, namespace: Option<&str>) -> Self {
        let api = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        Self::new(guarded_watch(
            api,
            watcher::Config::default().any_semantic(),
        ))
    }
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    /// A shared watch of `events` (not started: the first [`subscribe`](Self::subscribe)
    /// starts it).
    pub fn new(
        events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store::<K>();
        Self {
            store,
            inner: Arc::new(Mutex::new(Inner {
                idle: Some(events.reflect(writer).boxed()),
                subscribers: Vec::new(),
            })),
        }
    }

    /// The shared cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The shared cache and the objects each event touches (for `watches_stream` or
    /// `owns_stream`), like [`super::cached`] for a watch of one's own.
    pub fn cached(
        &self,
    ) -> (
        Store<K>,
        impl Stream<Item = watcher::Result<K>> + Send + 'static,
    )
    where
        K: Debug,
    {
        (self.store(), self.subscribe().touched_objects())
    }

    /// The watch events from now on, after the cache has taken each one. A subscriber
    /// that comes after others first gets every cached object as an `Apply` (the list it
    /// missed); a deletion it missed is already out of the cache. The watch runs on a
    /// task of its own while anyone subscribes, and pauses when the last one goes.
    /// Watch errors are not passed on: the watch retries them with its own backoff.
    pub fn subscribe(
        &self,
    ) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut inner = lock(&self.inner);
        // Under the lock: the driver passes an event on only to the subscribers it finds
        // after the cache took the event, so this snapshot and the events that follow
        // miss nothing between them (at worst one object arrives twice).
        let missed: Vec<watcher::Event<K>> = self
            .store
            .state()
            .into_iter()
            .map(|obj| watcher::Event::Apply(K::clone(&obj)))
            .collect();
        inner.subscribers.push(tx);
        if let Some(events) = inner.idle.take() {
            tokio::spawn(drive(events, self.inner.clone()));
        }
        drop(inner);
        futures::stream::iter(missed)
            .chain(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|event| (event, rx))
            }))
            .map(Ok)
    }
}

/// Pass every event of `events` on to the subscribers until none is left; then hand the
/// watch back for the next subscriber.
async fn drive<K>(mut events: Events<K>, inner: Arc<Mutex<Inner<K>>>)
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, kind = %K::kind(&()), "shared watch failed; it retries");
                continue;
            }
        };
        let subscribers = lock(&inner).subscribers.clone();
        let mut gone = false;
        for tx in &subscribers {
            gone |= tx.send(event.clone()).await.is_err();
        }
        if gone {
            let mut inner = lock(&inner);
            inner.subscribers.retain(|tx| !tx.is_closed());
            if inner.subscribers.is_empty() {
                inner.idle = Some(events);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector::ObjectRef;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn name(event: &watcher::Event<ConfigMap>) -> String {
        match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
                o.name_any()
            }
            watcher::Event::Init => "<init>".into(),
            watcher::Event::InitDone => "<done>".into(),
        }
    }

    async fn next(
        s: &mut (impl Stream<Item = watcher::Result<watcher::Event<ConfigMap>>> + Unpin),
    ) -> watcher::Event<ConfigMap> {
        tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .expect("no error")
    }

    #[tokio::test]
    async fn every_subscriber_sees_every_event_after_the_cache_and_late_ones_the_cache() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let shared = SharedWatch::new(rx);
        let store = shared.store();
        let mut first = Box::pin(shared.subscribe());
        let mut second = Box::pin(shared.subscribe());
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(cm("a")),
            watcher::Event::InitApply(cm("b")),
            watcher::Event::InitDone,
        ] {
            tx.unbounded_send(Ok(e)).unwrap();
        }
        for s in [&mut first, &mut second] {
            let names: Vec<String> = [next(s).await, next(s).await, next(s).await, next(s).await]
                .iter()
                .map(name)
                .collect();
            assert_eq!(names, ["<init>", "a", "b", "<done>"]);
        }
        assert_eq!(store.state().len(), 2, "one cache, filled once");

        // A deletion reaches both readers (kube's shared reflector would not pass it on),
        // and the cache no longer holds the object when they hear of it.
        tx.unbounded_send(Ok(watcher::Event::Delete(cm("a"))))
            .unwrap();
        for s in [&mut first, &mut second] {
            let event = next(s).await;
            assert!(
                matches!(event, watcher::Event::Delete(_)),
                "{}",
                name(&event)
            );
            assert!(store.get(&ObjectRef::new("a").within("ns")).is_none());
        }

        // A reader that comes later gets what is cached, then the events.
        let mut late = Box::pin(shared.subscribe());
        let event = next(&mut late).await;
        assert!(matches!(&event, watcher::Event::Apply(o) if o.name_any() == "b"));
        tx.unbounded_send(Ok(watcher::Event::Apply(cm("c"))))
            .unwrap();
        for s in [&mut first, &mut second, &mut late] {
            assert_eq!(name(&next(s).await), "c");
        }

        // Readers that go away do not hold the watch up for the others.
        drop(first);
        drop(late);
        tx.unbounded_send(Ok(watcher::Event::Apply(cm("d"))))
            .unwrap();
        assert_eq!(name(&next(&mut second).await), "d");
        assert_eq!(store.state().len(), 3);
    }
}
