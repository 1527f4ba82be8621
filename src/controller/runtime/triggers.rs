//! What wakes a reconcile besides the watches: leadership gained or the API back
//! (every object), the edge board (a namespace's SIP edge reports changed) and the
//! prober (an owner's measured health changed).

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::controller::Context;

/// Every object in `store`, as reconcile requests (leadership gained, API back).
pub fn all_of<K>(store: &Store<K>) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Requests for every object in `store` each time leadership is gained or the API
/// answers again after an outage; `on_leading` runs first on leadership (e.g. to forget
/// in-memory state of an earlier term).
pub fn everyone_on_recovery<K>(
    ctx: &Arc<Context>,
    store: Store<K>,
    on_leading: impl Fn() + Send + 'static,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    futures::stream::select(
        crate::controller::on_change(ctx.leading.clone(), |l| *l).map(move |()| on_leading()),
        crate::controller::on_change(ctx.api_returned(), |_| true),
    )
    .flat_map(move |()| {
        let all = all_of(&store);
        tracing::debug!(objects = all.len(), kind = %K::kind(&()), "reconciling every object");
        futures::stream::iter(all)
    })
}

/// The edge board's notifications (a namespace's SIP edge reports changed) as reconcile
/// requests for the cached objects of that namespace that `wanted` selects (all of
/// them after a lag).
pub fn edge_changes<K>(
    rx: tokio::sync::broadcast::Receiver<String>,
    store: Store<K>,
    wanted: fn(&K) -> bool,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, move |mut rx| {
        let store = store.clone();
        async move {
            let ns = match rx.recv().await {
                Ok(ns) => Some(ns),
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return None,
            };
            let refs: Vec<ObjectRef<K>> = store
                .state()
                .iter()
                .filter(|o| ns.is_none() || o.namespace() == ns)
                .filter(|o| wanted(o))
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect();
            Some((refs, rx))
        }
    })
    .flat_map(futures::stream::iter)
}

/// Keys `ns/name` of the objects a prober owner key names (`<prefix>/<ns>/<name>`).
pub fn parse_owner_key<K>(prefix: &str, key: &str) -> Option<ObjectRef<K>>
where
    K: Resource<DynamicType = ()>,
{
    let (ns, name) = key
        .strip_prefix(prefix)?
        .strip_prefix('/')?
        .split_once('/')?;
    Some(ObjectRef::new(name).within(ns))
}

/// The prober's change notifications for owners with `prefix`, as reconcile requests.
/// A lagging receiver requeues everything in `store`.
pub fn probe_changes<K>(
    rx: tokio::sync::broadcast::Receiver<String>,
    prefix: &'static str,
    store: Store<K>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, move |mut rx| {
        let store = store.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(key) => {
                        if let Some(r) = parse_owner_key(prefix, &key) {
                            return Some((vec![r], rx));
                        }
                    }
                    Err(RecvError::Lagged(_)) => return Some((all_of(&store), rx)),
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
    .flat_map(futures::stream::iter)
}
