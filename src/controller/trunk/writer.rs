//! Writes the Trunk statuses the controller decided, off the reconcile path.
//!
//! A reconcile decides in microseconds; the write takes an API round trip, and at
//! 10,000 Trunks the API server's write rate (about a hundred a second on a small
//! control plane) made the decisions wait for the writes. The policy controller reads
//! the decision at once (see [`super::verdicts`]); this queue writes it:
//!
//! - one write per Trunk at a time, the latest decision (server-side apply of the whole
//!   status, so a newer decision replaces one not yet written), then its Events in
//!   order, after the status;
//! - a change of an endpoint's known state (Up ↔ Down, a new condition) goes before
//!   first publications and RTT refreshes, so that a failure during a start-up backlog
//!   reaches `kubectl` and the pager in seconds;
//! - a failed write is retried with the shared backoff (at once when the API answers
//!   again after an outage), keeping its Events; a Trunk that is gone is dropped;
//! - nothing is written unless this replica leads; leadership lost drops the queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::Event;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::verdicts::{Key, Verdicts};
use crate::controller::runtime::{publish, write_status};
use crate::controller::{Context, Retries, is_unreachable};
use crate::crd::{Trunk, TrunkStatus};
use crate::lock;

/// Writes in flight at once. Fewer than a controller's reconciles: the statuses share
/// the API server with the policies' routing, which should not queue behind them.
/// Only one of them writes first publications and refreshes (a start-up backlog of
/// 10,000 first statuses then takes one write at a time of the API server); the
/// others write changes of state only.
pub const WRITERS: usize = 4;

/// One Trunk's decided status waiting to be written, with the Events that follow it.
pub struct Pending {
    /// The status to apply.
    pub status: Arc<TrunkStatus>,
    /// Events about the transitions, published after the status.
    pub events: Vec<Event>,
    /// The Trunk the Events are about (`None` without Events: at a 10,000-Trunk start
    /// the queue holds 10,000 first publications, and a reference each was 4 MiB).
    pub reference: Option<ObjectReference>,
    /// A known state changed: written before first publications and refreshes.
    pub urgent: bool,
}

/// The queue's bookkeeping, apart from the I/O (unit-tested).
#[derive(Default)]
struct Queue {
    pending: HashMap<Key, Pending>,
    urgent: VecDeque<Key>,
    bulk: VecDeque<Key>,
    /// Keys in `urgent` or `bulk` (a key may sit in both after it turned urgent; the
    /// first pop takes it).
    queued: HashSet<Key>,
    in_flight: HashSet<Key>,
    /// Failed writes waiting out their backoff.
    waiting: HashSet<Key>,
}

impl Queue {
    /// Add a decision: it replaces a waiting one's status and adds its Events.
    fn submit(&mut self, key: Key, mut next: Pending) {
        if let Some(prev) = self.pending.remove(&key) {
            let mut events = prev.events;
            events.append(&mut next.events);
            next.events = events;
            next.urgent |= prev.urgent;
            next.reference = next.reference.or(prev.reference);
        }
        let urgent = next.urgent;
        self.pending.insert(key.clone(), next);
        self.enqueue(key, urgent);
    }

    fn enqueue(&mut self, key: Key, urgent: bool) {
        if self.in_flight.contains(&key) || self.waiting.contains(&key) {
            // Handed out again when the write in flight ends or the backoff is over.
            return;
        }
        let fresh = self.queued.insert(key.clone());
        if urgent {
            self.urgent.push_back(key);
        } else if fresh {
            self.bulk.push_back(key);
        }
    }

    /// The next write: urgent ones first, then (if `bulk`) the others.
    fn next(&mut self, bulk: bool) -> Option<(Key, Pending)> {
        while let Some(key) = self
            .urgent
            .pop_front()
            .or_else(|| bulk.then(|| self.bulk.pop_front()).flatten())
        {
            if !self.queued.remove(&key) {
                continue;
            }
            if let Some(p) = self.pending.remove(&key) {
                self.in_flight.insert(key.clone());
                return Some((key, p));
            }
        }
        None
    }

    /// The write of `key` ended; a failed one puts `retry` back (a newer decision keeps
    /// its status, the Events stay in order) to be handed out after [`Queue::resume`].
    /// True when a decision is waiting to be handed out now.
    fn done(&mut self, key: &Key, retry: Option<Pending>) -> bool {
        self.in_flight.remove(key);
        if let Some(mut failed) = retry {
            if let Some(newer) = self.pending.remove(key) {
                failed.events.extend(newer.events);
                failed.reference = failed.reference.or(newer.reference);
                failed.status = newer.status;
                failed.urgent |= newer.urgent;
            }
            self.pending.insert(key.clone(), failed);
            self.waiting.insert(key.clone());
            return false;
        }
        self.requeue(key)
    }

    /// Queue `key` again if a decision for it waits; true if one does.
    fn requeue(&mut self, key: &Key) -> bool {
        match self.pending.get(key).map(|p| p.urgent) {
            Some(urgent) => {
                self.enqueue(key.clone(), urgent);
                true
            }
            None => false,
        }
    }

    /// A failed write's backoff is over.
    fn resume(&mut self, key: &Key) -> bool {
        if !self.waiting.remove(key) {
            return false;
        }
        self.requeue(key)
    }

    /// Trunks with a decision not yet written (waiting, in backoff or in flight).
    fn backlog(&self) -> usize {
        self.pending.len()
            + self
                .in_flight
                .iter()
                .filter(|k| !self.pending.contains_key(*k))
                .count()
    }

    fn forget(&mut self, key: &Key) {
        self.pending.remove(key);
        self.waiting.remove(key);
        self.queued.remove(key);
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.waiting.clear();
        self.queued.clear();
        self.urgent.clear();
        self.bulk.clear();
    }
}

/// The Trunk status write queue of one context.
pub struct StatusWriter {
    queue: Mutex<Queue>,
    /// Wakes a writer of changes of state.
    wake: Notify,
    /// Wakes the one writer that also writes first publications and refreshes.
    wake_bulk: Notify,
    retries: Retries,
    /// This queue's share of `lifeline_status_writes_pending` (each watched namespace
    /// has a queue; they add up in the one gauge).
    reported: std::sync::atomic::AtomicI64,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl StatusWriter {
    /// An empty queue whose backlog is added to `gauge`; [`StatusWriter::run`] writes
    /// it.
    pub fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::default(),
            wake: Notify::new(),
            wake_bulk: Notify::new(),
            reported: Default::default(),
            gauge,
            retries: Retries::new(crate::backoff::Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(300),
            )),
        })
    }

    /// Change the queue under its lock, then report its backlog.
    fn with_queue<T>(&self, change: impl FnOnce(&mut Queue) -> T) -> T {
        let mut q = lock(&self.queue);
        let out = change(&mut q);
        let now = i64::try_from(q.backlog()).unwrap_or(i64::MAX);
        let before = self
            .reported
            .swap(now, std::sync::atomic::Ordering::Relaxed);
        self.gauge.inc_by(now - before);
        out
    }

    /// Write `pending` for `key` (replacing a decision not yet written).
    pub fn submit(&self, key: Key, pending: Pending) {
        let urgent = pending.urgent;
        self.with_queue(|q| q.submit(key, pending));
        self.wake_all(urgent);
    }

    /// Something may be handed out: the bulk writer looks in any case, a writer of
    /// changes when one may be waiting.
    fn wake_all(&self, urgent: bool) {
        self.wake_bulk.notify_one();
        if urgent {
            self.wake.notify_one();
        }
    }

    /// The Trunk is gone: drop what waits for it.
    pub fn forget(&self, key: &Key) {
        self.with_queue(|q| q.forget(key));
        self.retries.reset(key);
    }

    /// Leadership ended: drop everything not yet written.
    pub fn clear(&self) {
        self.with_queue(Queue::clear);
    }

    /// Write until `shutdown`, [`WRITERS`] at a time.
    pub async fn run(
        self: Arc<Self>,
        ctx: Arc<Context>,
        verdicts: Arc<Verdicts>,
        shutdown: CancellationToken,
    ) {
        let workers: Vec<_> = (0..WRITERS)
            .map(|n| {
                let (me, ctx, verdicts) = (self.clone(), ctx.clone(), verdicts.clone());
                let bulk = n == 0;
                async move {
                    loop {
                        if bulk {
                            // A failover's routing write goes first.
                            ctx.routing_first.clear().await;
                        }
                        let next = me.with_queue(|q| q.next(bulk));
                        match next {
                            Some((key, p)) => me.write(&ctx, &verdicts, key, p).await,
                            None if bulk => me.wake_bulk.notified().await,
                            None => me.wake.notified().await,
                        }
                    }
                }
            })
            .collect();
        tokio::select! {
            _ = futures::future::join_all(workers) => {}
            () = shutdown.cancelled() => {}
        }
    }

    async fn write(
        self: &Arc<Self>,
        ctx: &Arc<Context>,
        verdicts: &Verdicts,
        key: Key,
        p: Pending,
    ) {
        let (ns, name) = (&key.0, &key.1);
        let written = ctx
            .while_leading(write_status::<Trunk, _>(ctx, ns, name, &*p.status))
            .await;
        let retry = match written {
            // Not leading: the next leader decides and writes for itself.
            None => None,
            Some(Ok(version)) => {
                self.retries.reset(&key);
                verdicts.written(&key, &p.status, version.as_deref());
                // The watch may have delivered the write before its answer came.
                let cached = ctx
                    .trunks
                    .store()
                    .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns));
                if let Some(trunk) = cached {
                    verdicts.cached(
                        &key,
                        kube::Resource::meta(&*trunk).resource_version.as_deref(),
                    );
                }
                tracing::info!(namespace = %ns, name = %name, healthy = ?p.status.healthy_summary, "trunk status written");
                if let Some(reference) = &p.reference {
                    for event in p.events {
                        // The status is written; a lost Event must not make us write it
                        // again.
                        publish(ctx, event, reference).await;
                    }
                }
                None
            }
            Some(Err(kube::Error::Api(e))) if e.code == 404 => {
                tracing::debug!(namespace = %ns, name = %name, "trunk gone before its status was written");
                None
            }
            Some(Err(e)) => {
                if is_unreachable(&e) {
                    ctx.api_call_failed();
                }
                ctx.metrics
                    .reconcile_errors
                    .get_or_create(&crate::telemetry::ErrorLabels {
                        controller: super::CONTROLLER,
                        error: "kube",
                    })
                    .inc();
                let n = self.retries.failed(key.clone());
                let delay = self.retries.backoff.delay(n);
                tracing::warn!(namespace = %ns, name = %name, error = %e, retry = n, ?delay, "trunk status write failed");
                let (me, key, mut returned) = (self.clone(), key.clone(), ctx.api_returned());
                returned.borrow_and_update();
                tokio::spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        // The API answers again: retry now, not after the backoff.
                        _ = returned.changed() => {}
                    }
                    if me.with_queue(|q| q.resume(&key)) {
                        me.wake_all(true);
                    }
                });
                Some(p)
            }
        };
        if self.with_queue(|q| q.done(&key, retry)) {
            self.wake_all(true);
        }
    }
}

#[cfg(test)]
mod tests;
