//! The scheduler: one task per endpoint, each probing on its own jittered phase.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::health::{HealthState, Outcome};
use super::transport::Prober;
use super::{EndpointHealth, ProbeTarget};
use crate::crd::{EndpointState, ProbeSpec};
use crate::telemetry::{Metrics, ReasonLabels, StateLabels};

/// How often an owner is told that the RTT of an Up endpoint changed, at most.
pub const RTT_REFRESH: Duration = Duration::from_secs(30);

pub(super) struct Inner {
    metrics: Arc<Metrics>,
    changes: broadcast::Sender<String>,
    owners: Mutex<HashMap<String, Owner>>,
    prober: Arc<Prober>,
    shutdown: CancellationToken,
    runtime: Mutex<Option<tokio::runtime::Handle>>,
}

#[derive(Default)]
struct Owner {
    order: Vec<String>,
    endpoints: HashMap<String, Arc<Endpoint>>,
}

struct Endpoint {
    uri: String,
    spec: ProbeSpec,
    health: Mutex<Tracked>,
    stop: CancellationToken,
}

struct Tracked {
    health: HealthState,
    /// When the owner was last told about an RTT change.
    rtt_notified: Option<tokio::time::Instant>,
    rtt_notified_value: Option<u32>,
    /// At least one probe result arrived in this process (not just a seeded state).
    probed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn state_label(s: EndpointState) -> StateLabels {
    StateLabels {
        state: match s {
            EndpointState::Up => "Up",
            EndpointState::Down => "Down",
            EndpointState::Unknown => "Unknown",
        },
    }
}

impl Inner {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let shutdown = CancellationToken::new();
        Self {
            metrics,
            changes,
            owners: Mutex::new(HashMap::new()),
            prober: Arc::new(Prober::new(shutdown.clone())),
            runtime: Mutex::new(
                probe_runtime(shutdown.clone())
                    .or_else(|| tokio::runtime::Handle::try_current().ok()),
            ),
            shutdown,
        }
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// The runtime to spawn schedules on: the hub's own probe thread (or, if that
    /// could not start, the runtime the hub was created in, else the caller's).
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        lock(&self.runtime)
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
    }

    pub(super) fn set_targets(self: &Arc<Self>, owner_key: &str, targets: Vec<ProbeTarget>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some(runtime) = self.runtime() else {
            tracing::error!(owner = owner_key, "no tokio runtime: cannot start probes");
            return;
        };
        let mut owners = lock(&self.owners);
        let owner = owners.entry(owner_key.to_string()).or_default();
        let mut next: HashMap<String, Arc<Endpoint>> = HashMap::new();
        let mut order = Vec::with_capacity(targets.len());
        for t in targets {
            order.push(t.uri.clone());
            if next.contains_key(&t.uri) {
                continue;
            }
            let endpoint = match owner.endpoints.remove(&t.uri) {
                Some(old) if old.spec == t.spec => old,
                Some(old) => {
                    // New settings: restart the schedule but keep what we know.
                    old.stop.cancel();
                    let kept = lock(&old.health).health.clone();
                    self.start(&runtime, owner_key, t, kept, false)
                }
                None => self.start(&runtime, owner_key, t, HealthState::default(), true),
            };
            next.insert(endpoint.uri.clone(), endpoint);
        }
        for (_, gone) in owner.endpoints.drain() {
            self.stop(&gone);
        }
        owner.order = order;
        owner.endpoints = next;
    }

    fn start(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        owner_key: &str,
        target: ProbeTarget,
        health: HealthState,
        new: bool,
    ) -> Arc<Endpoint> {
        if new {
            self.metrics
                .endpoints
                .get_or_create(&state_label(health.state))
                .inc();
        }
        let endpoint = Arc::new(Endpoint {
            uri: target.uri,
            spec: target.spec,
            health: Mutex::new(Tracked {
                health,
                rtt_notified: None,
                rtt_notified_value: None,
                probed: false,
            }),
            stop: self.shutdown.child_token(),
        });
        runtime.spawn(schedule(
            Arc::downgrade(self),
            owner_key.to_string(),
            endpoint.clone(),
        ));
        endpoint
    }

    fn stop(&self, endpoint: &Endpoint) {
        endpoint.stop.cancel();
        let state = lock(&endpoint.health).health.state;
        self.metrics
            .endpoints
            .get_or_create(&state_label(state))
            .dec();
    }

    pub(super) fn remove(&self, owner_key: &str) {
        if let Some(owner) = lock(&self.owners).remove(owner_key) {
            for e in owner.endpoints.values() {
                self.stop(e);
            }
        }
    }

    pub(super) fn health(&self, owner_key: &str) -> Vec<EndpointHealth> {
        let owners = lock(&self.owners);
        let Some(owner) = owners.get(owner_key) else {
            return Vec::new();
        };
        owner
            .order
            .iter()
            .filter_map(|uri| owner.endpoints.get(uri))
            .map(|e| {
                let h = &lock(&e.health).health;
                EndpointHealth {
                    uri: e.uri.clone(),
                    state: h.state,
                    rtt_millis: h.rtt_millis,
                    last_status_code: h.last_status_code,
                    consecutive_failures: h.consecutive_failures,
                    last_transition: h.last_transition,
                    last_error: h.last_error.clone(),
                }
            })
            .collect()
    }

    /// Start `uri` of `owner` from a published state (Up or Down) instead of Unknown,
    /// when nothing was probed for it yet in this process. Thresholds then count from
    /// that state, so a restart or takeover does not publish Unknown first.
    pub(super) fn seed(
        &self,
        owner_key: &str,
        uri: &str,
        state: EndpointState,
        since: Option<jiff::Timestamp>,
    ) {
        if state == EndpointState::Unknown {
            return;
        }
        let owners = lock(&self.owners);
        let Some(endpoint) = owners.get(owner_key).and_then(|o| o.endpoints.get(uri)) else {
            return;
        };
        let mut tracked = lock(&endpoint.health);
        if tracked.probed || tracked.health.state != EndpointState::Unknown {
            return;
        }
        tracked.health.state = state;
        tracked.health.last_transition = since;
        self.metrics
            .endpoints
            .get_or_create(&state_label(EndpointState::Unknown))
            .dec();
        self.metrics
            .endpoints
            .get_or_create(&state_label(state))
            .inc();
    }

    /// True when every target of `owner` has had at least one probe result in this
    /// process (false for an unknown owner).
    pub(super) fn fully_probed(&self, owner_key: &str) -> bool {
        let owners = lock(&self.owners);
        owners
            .get(owner_key)
            .is_some_and(|o| o.endpoints.values().all(|e| lock(&e.health).probed))
    }

    pub(super) fn shutdown(&self) {
        self.shutdown.cancel();
        let mut owners = lock(&self.owners);
        for (_, owner) in owners.drain() {
            for e in owner.endpoints.values() {
                self.stop(e);
            }
        }
    }

    /// Record one probe result; true when the owner should hear about it.
    fn record(&self, endpoint: &Endpoint, outcome: &Outcome) -> bool {
        self.metrics.probes_sent.inc();
        if let Outcome::Answered { rtt_millis, .. } = outcome {
            self.metrics
                .probe_rtt
                .observe(f64::from(*rtt_millis) / 1000.0);
        }
        if let Outcome::Failed { kind, .. } = outcome {
            self.metrics
                .probes_failed
                .get_or_create(&ReasonLabels {
                    reason: kind.category(),
                })
                .inc();
        }
        if let Outcome::Answered { code, .. } = outcome
            && !super::health::is_alive(*code, &endpoint.spec)
        {
            self.metrics
                .probes_failed
                .get_or_create(&ReasonLabels { reason: "status" })
                .inc();
        }
        let mut tracked = lock(&endpoint.health);
        let first = !tracked.probed;
        tracked.probed = true;
        let transition = tracked
            .health
            .apply(outcome, &endpoint.spec, jiff::Timestamp::now());
        if let Some(t) = &transition {
            tracing::info!(uri = %endpoint.uri, from = %t.from, to = %t.to, cause = %t.cause, "endpoint state changed");
            self.metrics
                .endpoints
                .get_or_create(&state_label(t.from))
                .dec();
            self.metrics
                .endpoints
                .get_or_create(&state_label(t.to))
                .inc();
        }
        let now = tokio::time::Instant::now();
        let rtt_due =
            super::health::rtt_moved(tracked.rtt_notified_value, tracked.health.rtt_millis)
                && tracked
                    .rtt_notified
                    .is_none_or(|at| now.duration_since(at) >= RTT_REFRESH);
        // The first result also counts: an owner withholding writes until a full probe
        // round (see `fully_probed`) must hear when the round completes.
        if transition.is_some() || rtt_due || first {
            tracked.rtt_notified = Some(now);
            tracked.rtt_notified_value = tracked.health.rtt_millis;
            true
        } else {
            false
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the probe thread when the last hub handle goes away.
        self.shutdown.cancel();
    }
}

/// A single-threaded runtime on its own thread for every probe task and the UDP
/// receive loops, until `shutdown`. Probing is thousands of tiny wake-ups; on one
/// thread they cost no cross-thread signalling (which made up most of the CPU on a
/// multi-threaded runtime), and they cannot be starved by, nor slow down, the
/// reconcilers. It also lets sync callers outside any runtime add targets.
fn probe_runtime(shutdown: CancellationToken) -> Option<tokio::runtime::Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("lifeline-probes".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the probe runtime");
                    return;
                }
            };
            let _ = tx.send(runtime.handle().clone());
            runtime.block_on(shutdown.cancelled());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the probe thread");
        return None;
    }
    rx.recv().ok()
}

/// Probe one endpoint every period until stopped. The first probe waits a random
/// fraction of the period, so endpoints added together spread over the period.
async fn schedule(hub: std::sync::Weak<Inner>, owner_key: String, endpoint: Arc<Endpoint>) {
    let period = Duration::from_secs(u64::from(endpoint.spec.period_seconds.max(1)));
    let timeout = Duration::from_millis(u64::from(endpoint.spec.timeout_millis.max(1))).min(period);
    let phase = period.mul_f64(rand::random::<f64>());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let prober = match hub.upgrade() {
        Some(h) => h.prober.clone(),
        None => return,
    };
    loop {
        tokio::select! {
            _ = endpoint.stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let outcome = tokio::select! {
            _ = endpoint.stop.cancelled() => return,
            o = prober.probe(&endpoint.uri, timeout) => o,
        };
        let Some(hub) = hub.upgrade() else { return };
        if endpoint.stop.is_cancelled() {
            return;
        }
        if hub.record(&endpoint, &outcome) {
            // No receivers is fine: nobody is watching yet.
            let _ = hub.changes.send(owner_key.clone());
        }
    }
}
