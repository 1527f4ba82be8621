//! What every controller does the same way: guarded watches feeding caches, cleanup on
//! deletions seen by those watches, status by server-side apply, the handling of an
//! object that cannot be read, and (in `runtime/triggers.rs`) what else wakes a reconcile.

use std::fmt::Debug;

use futures::{Stream, TryStreamExt};
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Retries};
use crate::crd::FIELD_MANAGER;

mod expedite;
mod routing_first;
mod shared;
mod triggers;
mod wait;
pub use expedite::Expedite;
pub use routing_first::RoutingFirst;
pub use shared::SharedWatch;
pub use triggers::{all_of, edge_changes, everyone_on_recovery, parse_owner_key, probe_changes};
pub use wait::BoundedWaits;

/// An object as the watches deliver it: either the parsed object or, for one that does
/// not match its type (an older CRD version, a hand-made object that bypassed the
/// schema), its metadata and the parse error. One such object must not stall a watch:
/// without the guard, one bad item fails the whole list and the cache never fills.
pub type Guarded<K> = DeserializeGuard<K>;

/// The parsed object of a guarded one, if it parsed.
pub fn parsed<K>(guarded: &Guarded<K>) -> Option<&K> {
    guarded.0.as_ref().ok()
}

/// How many objects one controller reconciles at once. Unbounded (kube's default), a
/// start with 10,000 Trunks sent 10,000 status writes at the same moment: the API
/// server answered 504 and refused connections, every reconcile failed and retried,
/// and the operator held the requests' buffers (730 MiB). Sixteen writes in flight per
/// controller keep a 2-core API server busy without queueing past its timeouts; a
/// reconcile that finds nothing to write takes microseconds, so a quiet start is not
/// slowed by it.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// How many FallbackPolicies are reconciled at once: twice the others. The routing is
/// what calls follow; at a start with 500 policies it shares the API server with
/// 10,000 Trunk statuses and 500 bot pools' Deployments, and with the same share as
/// them the last policy's routing waited about 45 s (10,000 Trunks, 2-core machine).
pub const ROUTING_CONCURRENCY: u16 = 32;

/// The runtime settings every controller uses: [`RECONCILE_CONCURRENCY`].
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// A watch of `api`, with the shared watch backoff, guarded against unreadable objects.
/// Managed fields are dropped before an object reaches a cache: no controller reads
/// them, and at 10,000 Trunks they were a large share of each cached object.
pub fn guarded_watch<K>(
    api: Api<Guarded<K>>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<Guarded<K>>>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .backoff(crate::backoff::WATCH)
        .modify(|guarded| {
            if let Ok(obj) = guarded.0.as_mut() {
                obj.meta_mut().managed_fields = None;
            }
        })
}

/// A cache of `K` (guarded) filled by `stream`, and the stream of objects it touched
/// (for `watches_stream`/`owns_stream`). The cache is current before an object is
/// passed on, so a reconcile triggered by it reads the new version.
pub fn cached<K>(
    stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = watcher::Result<K>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    (store, stream.reflect(writer).touched_objects())
}

/// Calls `forget` for every object that left the watch: deleted (a `Delete` event), or
/// gone when the watch re-listed (after a disconnect, deletions arrive as a new list:
/// `known` names what the caller holds state for, compared with the store once the list
/// is in). Event-driven: nothing polls.
pub fn on_deleted<K, S>(
    stream: S,
    store: Store<K>,
    known: impl Fn() -> Vec<(String, String)> + Send + 'static,
    forget: impl Fn(&str, &str) + Send + 'static,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    stream.inspect_ok(move |event| match event {
        watcher::Event::Delete(obj) => {
            forget(&obj.namespace().unwrap_or_default(), &obj.name_any());
        }
        watcher::Event::InitDone => {
            for (ns, name) in known() {
                if store.get(&ObjectRef::new(&name).within(&ns)).is_none() {
                    forget(&ns, &name);
                }
            }
        }
        _ => {}
    })
}

/// A namespaced kind whose status subresource the controllers write.
pub trait StatusKind:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
{
}

impl<K> StatusKind for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
{
}

/// Server-side apply `status` to the status subresource of `K` `ns/name` with the one
/// field manager, while this replica leads. `None`: not leading (nothing written).
///
/// The body names `apiVersion` and `kind` (server-side apply needs them) and nothing
/// but the status: fields other managers own are left alone, and fields this manager
/// set before and leaves out now are removed.
pub async fn apply_status<K, S>(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &S,
) -> Option<Result<(), kube::Error>>
where
    K: StatusKind,
    S: Serialize,
{
    ctx.while_leading(write_status::<K, S>(ctx, ns, name, status))
        .await
        .map(|written| written.map(|_| ()))
}

/// [`apply_status`] without the leadership guard, for the controllers that run only
/// while this replica leads (FailoverDrill, Notifier), and for the Trunk status writer
/// (which guards it itself): the write always completes. Returns the
/// `resourceVersion` the API server gave the object.
pub async fn write_status<K, S>(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &S,
) -> Result<Option<String>, kube::Error>
where
    K: StatusKind,
    S: Serialize,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let body = status_body::<K, S>(status);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&body))
        .await
        .map(|written| written.meta().resource_version.clone())
}

/// The server-side apply body of a status write.
pub fn status_body<K: Resource<DynamicType = ()>, S: Serialize>(status: &S) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Publish `event` about `reference` while leading; a failure is logged, not retried
/// (the state it describes is already written).
pub async fn publish(
    ctx: &Context,
    event: Event,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) {
    if let Some(Err(e)) = ctx
        .while_leading(ctx.recorder.publish(&event, reference))
        .await
    {
        tracing::warn!(error = %e, reason = %event.reason, "could not publish an event");
    }
}

/// `s` cut to at most `max` characters (Event notes are limited to 1 kB).
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// The reconcile of an object that does not parse: a Warning Event that says why
/// (once per version: the controller waits for a change), counted as an error.
pub async fn report_invalid<K>(
    ctx: &Context,
    controller: &'static str,
    obj: &Guarded<K>,
    error: &kube::core::error_boundary::InvalidObject,
) -> Action
where
    K: Resource<DynamicType = ()>,
{
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::telemetry::ErrorLabels {
            controller,
            error: "invalid_object",
        })
        .inc();
    tracing::warn!(
        controller,
        namespace = obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        error = %error.error,
        "object does not match its type: skipped until it changes"
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(truncate(
            &format!(
                "cannot read this {}: {}; fix the object (kubectl edit) — nothing else is affected",
                K::kind(&()),
                error.error
            ),
            1000,
        )),
        action: "Reconcile".into(),
        secondary: None,
    };
    publish(ctx, event, &obj.object_ref(&())).await;
    Action::await_change()
}

/// The reconcile of `obj` (`ns/name`) around a controller's own `reconcile`, the same
/// for every kind: an object that does not parse is reported ([`report_invalid`]) and
/// waits for a change; a parsed one is reconciled inside
/// [`Context::reconcile_counted`] (span, duration, retries forgotten on success).
pub async fn reconcile_parsed<'a, K, E, F>(
    ctx: &Context,
    controller: &'static str,
    retries: &Retries,
    obj: &'a Guarded<K>,
    (ns, name): (&str, &str),
    reconcile: impl FnOnce(&'a K) -> F,
) -> Result<Action, E>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, E>>,
{
    match &obj.0 {
        Ok(parsed) => {
            ctx.reconcile_counted(controller, retries, ns, name, reconcile(parsed))
                .await
        }
        Err(invalid) => Ok(report_invalid(ctx, controller, obj, invalid).await),
    }
}

/// Whether `store` holds its first complete list. Checked, never awaited inside a
/// reconcile: kube's readiness future wakes only the last task that polled it, so two
/// reconciles awaiting the same cache at once would leave one waiting forever.
pub fn is_ready<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    use futures::FutureExt;
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// How soon a reconcile that found a cache not filled yet looks again.
pub const CACHE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// What can go wrong in a reconcile of the Trunk, FallbackPolicy and SipEdge
/// controllers (all transient: retried with the shared backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a request (transient).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace (cannot happen for a namespaced kind); names the kind.
    #[error("{0} without a namespace")]
    NoNamespace(&'static str),
}

impl ReconcileError {
    /// Short static category for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "kube",
            ReconcileError::NoNamespace(_) => "invalid",
        }
    }
}

/// What can go wrong in a reconcile of the FailoverDrill and Notifier controllers,
/// which read only caches and write only while leading (all transient: retried with
/// the controller's backoff).
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Kubernetes API error.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace.
    #[error("object has no namespace")]
    NoNamespace,
    /// A cache is not synced (shutting down).
    #[error("cache not ready")]
    Cache,
}

impl WriterError {
    /// Short static category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            WriterError::Kube(_) => "kube",
            WriterError::NoNamespace => "missing_namespace",
            WriterError::Cache => "cache",
        }
    }
}

#[cfg(test)]
mod tests;
