//! The scheduler: one task per endpoint, each probing on its own jittered phase.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::health::{FailureKind, HealthState, Outcome};
use super::transport::{ProbeReport, Prober};
use super::{Admission, EndpointHealth, ProbeConfig, ProbeTarget, Quotas, TargetHealth};
use crate::crd::{EndpointState, ProbeSpec};
use crate::lock;
use crate::telemetry::{Metrics, ReasonLabels, StateLabels};

mod owners;
use owners::Owners;

/// How often an owner is told that the RTT of an Up endpoint changed, at most.
pub const RTT_REFRESH: Duration = Duration::from_secs(30);

pub(super) struct Inner {
    metrics: Arc<Metrics>,
    quotas: Quotas,
    /// Owners refused for quota, with the targets they asked for (retried when
    /// another owner of their namespace shrinks or goes).
    refused: Mutex<HashMap<String, Vec<ProbeTarget>>>,
    changes: broadcast::Sender<String>,
    owners: Mutex<Owners>,
    prober: Arc<Prober>,
    shutdown: CancellationToken,
    runtime: Mutex<Option<tokio::runtime::Handle>>,
}

struct Endpoint {
    uri: String,
    spec: ProbeSpec,
    tls: Option<super::TlsSettings>,
    /// Refused for quota: never scheduled, never counted.
    refused: bool,
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
    /// What the last round found per resolved target.
    targets: Vec<TargetHealth>,
    /// Set while the last good DNS answer is used because DNS fails.
    stale_dns: Option<String>,
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
    pub(super) fn new(metrics: Arc<Metrics>, config: ProbeConfig) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let shutdown = CancellationToken::new();
        Self {
            metrics,
            quotas: config.quotas,
            refused: Mutex::new(HashMap::new()),
            changes,
            owners: Mutex::default(),
            prober: Arc::new(
                Prober::new(shutdown.clone(), config.policy, config.dns)
                    .with_source(config.source, config.source_port),
            ),
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

    pub(super) fn set_targets(
        self: &Arc<Self>,
        owner_key: &str,
        targets: Vec<ProbeTarget>,
    ) -> Admission {
        if self.shutdown.is_cancelled() {
            return Admission::Admitted;
        }
        let Some(runtime) = self.runtime() else {
            tracing::error!(owner = owner_key, "no tokio runtime: cannot start probes");
            return Admission::Admitted;
        };
        let mut owners = lock(&self.owners);
        let mut refused = lock(&self.refused);
        if let Some(why) = self.over_quota(&owners, owner_key, &targets) {
            tracing::warn!(owner = owner_key, reason = %why, "probe quota exceeded; endpoints not probed");
            owners.update(owner_key, |owner| {
                for (_, gone) in owner.endpoints.drain() {
                    self.stop(&gone);
                }
                owner.order = targets.iter().map(|t| t.uri.clone()).collect();
                for t in &targets {
                    owner
                        .endpoints
                        .entry(t.uri.clone())
                        .or_insert_with(|| Arc::new(Endpoint::refused(t, &why)));
                }
            });
            refused.insert(owner_key.to_string(), targets);
            return Admission::QuotaExceeded(why);
        }
        refused.remove(owner_key);
        let freed = owners.update(owner_key, |owner| {
            let mut next: HashMap<String, Arc<Endpoint>> = HashMap::new();
            let mut order = Vec::with_capacity(targets.len());
            for t in targets {
                order.push(t.uri.clone());
                if next.contains_key(&t.uri) {
                    continue;
                }
                let endpoint = match owner.endpoints.remove(&t.uri) {
                    Some(old) if old.spec == t.spec && old.tls == t.tls && !old.is_refused() => old,
                    Some(old) if !old.is_refused() => {
                        // New settings: restart the schedule but keep what we know.
                        old.stop.cancel();
                        let kept = lock(&old.health).health.clone();
                        self.start(&runtime, owner_key, t, kept, false)
                    }
                    _ => self.start(&runtime, owner_key, t, HealthState::default(), true),
                };
                next.insert(endpoint.uri.clone(), endpoint);
            }
            for (_, gone) in owner.endpoints.drain() {
                self.stop(&gone);
            }
            owner.order = order;
            owner.endpoints = next;
        });
        drop(refused);
        drop(owners);
        // Only a smaller owner can make room (most calls set the same targets again).
        if freed {
            self.readmit();
        }
        Admission::Admitted
    }

    /// Why `targets` for `owner_key` would break its namespace's quotas, if they would.
    /// The owner's current endpoints are not counted against it.
    fn over_quota(
        &self,
        owners: &Owners,
        owner_key: &str,
        targets: &[ProbeTarget],
    ) -> Option<String> {
        if self.quotas == Quotas::default() {
            return None;
        }
        let ns = namespace_of(owner_key);
        let mut usage = owners.usage_without(owner_key);
        let mut seen = std::collections::HashSet::new();
        for t in targets.iter().filter(|t| seen.insert(&t.uri)) {
            usage.add(&t.spec);
        }
        let (endpoints, rate) = (usage.endpoints, usage.rate());
        if let Some(max) = self.quotas.max_endpoints_per_namespace
            && endpoints > max
        {
            return Some(format!(
                "namespace {ns} would probe {endpoints} endpoints, over the operator's quota of {max} per namespace; remove or disable Trunks, or ask for a higher --probe-max-endpoints-per-namespace"
            ));
        }
        if let Some(max) = self.quotas.max_probes_per_second_per_namespace
            && rate > max + 1e-9
        {
            return Some(format!(
                "namespace {ns} would send {rate:.1} probes/s, over the operator's quota of {max} per namespace; lengthen probe.periodSeconds, or ask for a higher --probe-max-rate-per-namespace"
            ));
        }
        None
    }

    /// Give refused owners another chance (after another owner shrank or went).
    fn readmit(self: &Arc<Self>) {
        let waiting: Vec<(String, Vec<ProbeTarget>)> = lock(&self.refused)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, targets) in waiting {
            let fits = self
                .over_quota(&lock(&self.owners), &key, &targets)
                .is_none();
            if fits && lock(&self.refused).contains_key(&key) {
                tracing::info!(owner = %key, "probe quota available again; probing");
                if let Admission::Admitted = self.set_targets(&key, targets) {
                    let _ = self.changes.send(key);
                }
            }
        }
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
            tls: target.tls,
            refused: false,
            health: Mutex::new(Tracked {
                health,
                rtt_notified: None,
                rtt_notified_value: None,
                probed: false,
                targets: Vec::new(),
                stale_dns: None,
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
        if endpoint.is_refused() {
            // Never counted in the endpoint gauge.
            return;
        }
        let state = lock(&endpoint.health).health.state;
        self.metrics
            .endpoints
            .get_or_create(&state_label(state))
            .dec();
    }

    pub(super) fn remove(self: &Arc<Self>, owner_key: &str) {
        lock(&self.refused).remove(owner_key);
        let removed = lock(&self.owners).remove(owner_key);
        if let Some(owner) = removed {
            for e in owner.endpoints.values() {
                self.stop(e);
            }
            self.readmit();
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
                let tracked = lock(&e.health);
                let h = &tracked.health;
                EndpointHealth {
                    uri: e.uri.clone(),
                    state: h.state,
                    rtt_millis: h.rtt_millis,
                    last_status_code: h.last_status_code,
                    consecutive_failures: h.consecutive_failures,
                    last_transition: h.last_transition,
                    last_error: h.last_error.clone(),
                    last_failure: h.last_failure,
                    targets: tracked.targets.clone(),
                    stale_dns: tracked.stale_dns.clone(),
                }
            })
            .collect()
    }

    pub(super) fn uri_states(&self, namespace: &str) -> HashMap<String, EndpointState> {
        let owners = lock(&self.owners);
        let mut out = HashMap::new();
        for (_, owner) in owners.in_namespace(namespace) {
            for e in owner.endpoints.values() {
                let state = lock(&e.health).health.state;
                // Two owners probing one URI: a judged state beats Unknown.
                let slot = out.entry(e.uri.clone()).or_insert(state);
                if *slot == EndpointState::Unknown {
                    *slot = state;
                }
            }
        }
        out
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
        for owner in owners.drain() {
            for e in owner.endpoints.values() {
                self.stop(e);
            }
        }
    }

    /// Record one probe round; true when the owner should hear about it.
    fn record(&self, endpoint: &Endpoint, report: &ProbeReport) -> bool {
        let outcome = &report.outcome(|code| super::health::is_alive(code, &endpoint.spec));
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
        let no_verdict = |k: Option<FailureKind>| k.filter(|k| k.is_no_verdict());
        let blocked_before = no_verdict(tracked.health.last_failure);
        let transition = tracked
            .health
            .apply(outcome, &endpoint.spec, jiff::Timestamp::now());
        // Unknown → Unknown for a new reason (forbidden, DNS gone): worth telling.
        let blocked_changed = no_verdict(tracked.health.last_failure) != blocked_before;
        // Rebuilt only when a target, its verdict or its failure changed: a steady
        // endpoint costs no allocation here, at 10,000 probes a second.
        let alive = |o: &Outcome| matches!(o, Outcome::Answered { code, .. } if super::health::is_alive(*code, &endpoint.spec));
        let same = tracked.targets.len() == report.targets.len()
            && tracked
                .targets
                .iter()
                .zip(&report.targets)
                .all(|(old, new)| {
                    old.alive == alive(&new.outcome)
                        && old.priority == new.target.priority
                        && old.weight == new.target.weight
                        && match (&old.error, &new.outcome) {
                            (None, Outcome::Answered { .. }) => true,
                            (Some(e), Outcome::Failed { detail, .. }) => e == detail,
                            _ => false,
                        }
                        && old.addr == Some(new.target.addr)
                });
        if !same {
            tracked.targets = report
                .targets
                .iter()
                .map(|t| TargetHealth {
                    target: t.target.to_string(),
                    addr: Some(t.target.addr),
                    priority: t.target.priority,
                    weight: t.target.weight,
                    alive: alive(&t.outcome),
                    error: match &t.outcome {
                        Outcome::Failed { detail, .. } => Some(detail.clone()),
                        Outcome::Answered { code, .. } if !alive(&t.outcome) => {
                            Some(format!("answered {code}"))
                        }
                        Outcome::Answered { .. } => None,
                    },
                })
                .collect();
        }
        if report.stale_dns.is_some() && tracked.stale_dns.is_none() {
            tracing::warn!(uri = %endpoint.uri, error = ?report.stale_dns, "DNS failed; probing the last good answer's targets");
        }
        tracked.stale_dns = report.stale_dns.clone();
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
        if transition.is_some() || rtt_due || first || blocked_changed {
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

impl Endpoint {
    /// An endpoint the quota refused: never scheduled, Unknown with the reason.
    fn refused(target: &ProbeTarget, why: &str) -> Self {
        let health = HealthState {
            last_error: Some(why.to_string()),
            last_failure: Some(FailureKind::Quota),
            ..HealthState::default()
        };
        let stop = CancellationToken::new();
        stop.cancel();
        Self {
            uri: target.uri.clone(),
            spec: target.spec.clone(),
            tls: target.tls.clone(),
            refused: true,
            health: Mutex::new(Tracked {
                health,
                rtt_notified: None,
                rtt_notified_value: None,
                // Refused before any probe: its verdict is known now, so it never holds
                // back an owner waiting for a full probe round.
                probed: true,
                targets: Vec::new(),
                stale_dns: None,
            }),
            stop,
        }
    }

    fn is_refused(&self) -> bool {
        self.refused
    }
}

/// The namespace of an owner key (`trunk/<ns>/<name>`, `policy/<ns>/<name>`); other
/// keys are their own namespace.
fn namespace_of(key: &str) -> &str {
    let mut parts = key.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(ns), Some(_)) => ns,
        _ => key,
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
        // Boxed: the probe's state (resolver, socket, TLS) exists only while a probe
        // runs, instead of inflating every endpoint's task between rounds (at 10,000
        // endpoints that idle space was the larger part of the prober's memory).
        let probe = Box::pin(prober.probe(&endpoint.uri, endpoint.tls.as_ref(), timeout));
        let report = tokio::select! {
            _ = endpoint.stop.cancelled() => return,
            r = probe => r,
        };
        let Some(hub) = hub.upgrade() else { return };
        if endpoint.stop.is_cancelled() {
            return;
        }
        if hub.record(&endpoint, &report) {
            // No receivers is fine: nobody is watching yet.
            let _ = hub.changes.send(owner_key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_task_between_rounds_is_small() {
        // Every endpoint has its task for its whole life (10,000 at the scale bench):
        // the probe's own state must not be part of it.
        let target = ProbeTarget {
            uri: "sip:carrier@127.0.0.1".into(),
            spec: ProbeSpec::default(),
            tls: None,
        };
        let endpoint = Arc::new(Endpoint::refused(&target, "test"));
        let task = schedule(std::sync::Weak::new(), "trunk/ns/a".into(), endpoint);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 512, "an endpoint's task takes {size} bytes");
    }
}
