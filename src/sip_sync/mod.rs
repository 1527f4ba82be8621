//! `lifeline sip-sync`: the sidecar that brings the routing ConfigMap into Kamailio
//! within milliseconds.
//!
//! A ConfigMap mounted as a volume reaches a pod only after the kubelet's sync
//! (about a minute). sip-sync instead watches the one ConfigMap through the API and,
//! for every new content: validates it ([`dispatcher::parse`], the parser of the
//! [routing contract](crate::routing)), writes the file
//! Kamailio loads atomically ([`file::replace`]), calls `dispatcher.reload`,
//! reads `dispatcher.list` back and checks that the sets and URIs match. It retries
//! with capped exponential backoff while Kamailio is not up or the check fails, and
//! reports the outcome in metrics, logs and its `/readyz`.
//!
//! It only reads the ConfigMap (get/watch, by name), so its Role grants nothing
//! else. With `--annotate` (opt-in, for a single edge without a `SipEdge` report) it
//! also writes two annotations on the ConfigMap (`lifeline.dev/applied-hash`,
//! `lifeline.dev/applied-at`, plus `lifeline.dev/sync-error` while the latest version
//! is not applied) by server-side apply with the field manager
//! `lifeline.dev/sip-sync`; that needs `patch` on the ConfigMap. With several
//! Kamailio replicas the annotations show the last writer; each pod's own truth is
//! its metrics and logs.

pub mod calls;
pub mod file;
pub mod kamailio;
pub mod probe;
pub mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::routing::dispatcher::{self, DispatcherList};
use crate::routing::{
    APPLIED_AT_ANNOTATION, APPLIED_HASH_ANNOTATION, SYNC_ERROR_ANNOTATION, content_hash,
};
use crate::telemetry::{ReasonLabels, SyncMetrics};
use kamailio::{KamailioRpc, RpcError};

/// Field manager of every write sip-sync makes.
pub const FIELD_MANAGER: &str = "lifeline.dev/sip-sync";
/// Reloads of one content whose result Kamailio does not confirm before sip-sync stops
/// reloading it (and sets `lifeline_sync_unconfirmed` to 1).
pub const MAX_UNCONFIRMED: u32 = 3;

/// Arguments of `lifeline sip-sync`.
#[derive(clap::Args, Debug, Clone)]
pub struct SyncArgs {
    /// Namespace of the routing ConfigMap (in a pod: from the downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Name of the routing ConfigMap (FallbackPolicy `spec.routingConfigMap.name`).
    #[arg(long, env = "LIFELINE_CONFIGMAP")]
    pub configmap: String,
    /// Data key holding the dispatcher list.
    #[arg(long, env = "LIFELINE_KEY", default_value = "dispatcher.list")]
    pub key: String,
    /// The dispatcher file Kamailio loads (its `list_file`); written atomically.
    #[arg(long, env = "LIFELINE_DISPATCHER_FILE")]
    pub file: PathBuf,
    /// Kamailio's JSON-RPC endpoint (jsonrpcs over xhttp; the example config serves
    /// it on a loopback-only TCP listener).
    #[arg(
        long,
        env = "LIFELINE_RPC_URL",
        default_value = "http://127.0.0.1:5071/RPC"
    )]
    pub rpc_url: String,
    /// Timeout of one JSON-RPC call, in milliseconds.
    #[arg(long, env = "LIFELINE_RPC_TIMEOUT_MS", default_value_t = 2000)]
    pub rpc_timeout_ms: u64,
    /// Upper bound of the retry backoff, in milliseconds.
    #[arg(long, env = "LIFELINE_MAX_BACKOFF_MS", default_value_t = 10_000)]
    pub max_backoff_ms: u64,
    /// Serve `/metrics`, `/healthz`, `/startupz` (200 once the dispatcher file holds a
    /// valid routing, so Kamailio can start) and `/readyz` (200 once Kamailio runs a
    /// confirmed routing) on this address.
    #[arg(long, env = "LIFELINE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Receive the ConfigMap's current state as the watch's initial events
    /// (Kubernetes WatchList, on by default since 1.32) instead of a LIST, so the
    /// sidecar's Role needs only `get` and `watch` on that one ConfigMap.
    #[arg(long, env = "LIFELINE_WATCH_LIST")]
    pub watch_list: bool,
    /// Also write `lifeline.dev/applied-hash`, `applied-at` and `sync-error`
    /// annotations on the routing ConfigMap (needs `patch` on it). Off by default: the
    /// sidecar then only reads the ConfigMap, and reports through metrics and logs.
    #[arg(long, env = "LIFELINE_ANNOTATE")]
    pub annotate: bool,
    /// Where this member reports what it sees (its `SipEdge`).
    #[command(flatten)]
    pub report: report::ReportArgs,
    /// This edge's own probes of the destinations (reported to its `SipEdge`).
    #[command(flatten)]
    pub probe: probe::ProbeArgs,
}

/// Errors of the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes API error (client setup, annotation patch).
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The ConfigMap has no such data key.
    #[error("ConfigMap has no data key {0:?}")]
    MissingKey(String),
    /// The dispatcher list is empty or malformed; not written.
    #[error("rejected dispatcher list: {0}")]
    Invalid(#[from] dispatcher::ParseError),
    /// Reading or writing the dispatcher file failed.
    #[error("dispatcher file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The JSON-RPC call failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// Kamailio reloaded but holds other destinations than the file.
    #[error("Kamailio did not load the new list: {0}")]
    Mismatch(String),
    /// Binding the admin HTTP server failed.
    #[error(transparent)]
    Bind(#[from] crate::admin::Error),
}

impl Error {
    /// Short static category for metric labels and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingKey(_) => "missing-key",
            Error::Invalid(dispatcher::ParseError::Empty) => "empty",
            Error::Invalid(_) => "parse",
            Error::Io { .. } => "io",
            Error::Rpc(e) => e.category(),
            Error::Mismatch(_) => "confirm",
            Error::Bind(_) => "bind",
        }
    }

    /// True when retrying the same content cannot help (wait for a new version).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::MissingKey(_) | Error::Invalid(_))
    }
}

/// One version of the ConfigMap as sip-sync sees it.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The data text under the key, or `None` when the key is missing.
    pub content: Option<String>,
    /// `probes.json`: what this edge probes (absent: nothing).
    pub probes: Option<String>,
    /// `applied-hash` currently on the ConfigMap (kept when sip-sync rewrites its
    /// annotations after a restart).
    pub applied_hash: Option<String>,
    /// `applied-at` currently on the ConfigMap.
    pub applied_at: Option<String>,
    /// When the watch delivered it; the start of `sync_duration_seconds`.
    pub seen: Instant,
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This hash was already confirmed by this process: nothing to do.
    Unchanged,
    /// Kamailio already held this content (e.g. after a sidecar restart): no reload.
    AlreadyLoaded,
    /// Written, reloaded and confirmed.
    Reloaded,
}

/// Applies dispatcher lists to one Kamailio and remembers the last confirmed hash.
pub struct Applier {
    rpc: KamailioRpc,
    file: PathBuf,
    confirmed: Option<String>,
    written: bool,
}

impl Applier {
    /// An applier writing `file` and talking to `rpc`.
    pub fn new(rpc: KamailioRpc, file: PathBuf) -> Self {
        Self {
            rpc,
            file,
            confirmed: None,
            written: false,
        }
    }

    /// True once the dispatcher file holds a valid routing (written by this process
    /// or found there), i.e. Kamailio can start: it refuses to start without the file.
    pub fn file_written(&self) -> bool {
        self.written
    }

    /// Hash of the last content this process confirmed in Kamailio.
    pub fn confirmed_hash(&self) -> Option<&str> {
        self.confirmed.as_deref()
    }

    /// Make Kamailio run `content`: validate, write (unless the file already holds
    /// it), reload (unless Kamailio already shows it) and confirm.
    pub async fn apply(&mut self, content: &str) -> Result<Outcome, Error> {
        let expected = dispatcher::parse(content)?;
        let hash = content_hash(content);
        if self.confirmed.as_deref() == Some(hash.as_str()) {
            return Ok(Outcome::Unchanged);
        }
        let on_disk = self.io(file::file_hash(&self.file))?;
        if on_disk.as_deref() == Some(hash.as_str()) {
            self.written = true;
            // Restart-safe: Kamailio may have loaded this very file at start-up.
            if let Ok(loaded) = self.rpc.list_dispatcher().await
                && expected.difference(&loaded).is_none()
            {
                self.confirmed = Some(hash);
                return Ok(Outcome::AlreadyLoaded);
            }
        }
        // What Kamailio took out of service on its own (failure route, its probing),
        // and the lines those destinations had: a reload resets every state, which
        // would put a dead destination back into service.
        let previous_text = self.io(match std::fs::read_to_string(&self.file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            other => other,
        })?;
        let started = std::time::Instant::now();
        let marks = self.rpc.down_marks().await.unwrap_or_default();
        let marked = started.elapsed();
        let replaced = on_disk.as_deref() != Some(hash.as_str());
        if replaced {
            self.io(file::replace(&self.file, content))?;
            self.written = true;
        }
        let written = started.elapsed();
        self.rpc.reload_dispatcher().await?;
        let reloaded = started.elapsed();
        self.confirm(&expected).await?;
        tracing::debug!(
            marks = ?marked,
            written = ?written,
            reloaded = ?reloaded,
            confirmed = ?started.elapsed(),
            "routing applied (times since the first call to Kamailio)"
        );
        self.confirmed = Some(hash);
        if replaced {
            // Durable once Kamailio runs it: the flush waits for the disk, the calls
            // do not (see `file::persist`).
            let path = self.file.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = file::persist(&path) {
                    tracing::warn!(file = %path.display(), error = %e,
                        "could not flush the routing file to disk (Kamailio runs it)");
                }
            });
        }
        self.restore_marks(&previous_text, content, marks).await;
        Ok(Outcome::Reloaded)
    }

    /// Put back the down-marks of destinations whose line did not change: their state
    /// did not really change, only other destinations did. A destination whose line
    /// changed (new weight, priority, flags) starts from the state the list gives it.
    async fn restore_marks(
        &self,
        previous: &str,
        next: &str,
        marks: Vec<(dispatcher::Destination, String)>,
    ) {
        if marks.is_empty() {
            return;
        }
        let before = dispatcher::lines_by_destination(previous);
        let after = dispatcher::lines_by_destination(next);
        for (dest, flags) in marks {
            let unchanged =
                matches!((before.get(&dest), after.get(&dest)), (Some(a), Some(b)) if a == b);
            if !unchanged {
                continue;
            }
            match self.rpc.set_state(&dest, &flags).await {
                Ok(()) => tracing::info!(set = dest.set_id, uri = %dest.uri, %flags,
                    "kept Kamailio's down-mark across the reload"),
                Err(e) => tracing::warn!(set = dest.set_id, uri = %dest.uri, error = %e,
                    "could not restore a down-mark after the reload"),
            }
        }
    }

    async fn confirm(&self, expected: &DispatcherList) -> Result<(), Error> {
        let loaded = self.rpc.list_dispatcher().await?;
        match expected.difference(&loaded) {
            None => Ok(()),
            Some(diff) => Err(Error::Mismatch(diff)),
        }
    }

    fn io<T>(&self, r: std::io::Result<T>) -> Result<T, Error> {
        r.map_err(|source| Error::Io {
            path: self.file.clone(),
            source,
        })
    }
}

/// What the probes of the sidecar report.
#[derive(Debug, Default)]
struct Health {
    /// The dispatcher file holds a valid routing: Kamailio can start.
    written: AtomicBool,
    /// Kamailio runs a routing sip-sync confirmed.
    confirmed: AtomicBool,
}

/// Where the apply loop reports outcomes: metrics, the pod's probes, the edge report.
struct Outputs {
    metrics: Arc<SyncMetrics>,
    health: Arc<Health>,
    reporter: Option<report::Reporter>,
}

/// Reload retries back off with the project's one backoff (from 100 ms).
pub use crate::backoff::Backoff;

/// The annotations sip-sync owns on the ConfigMap, as one server-side apply body.
/// Fields this manager owned before and leaves out are removed by the API server,
/// which is how `sync-error` disappears once a version is applied.
pub fn annotation_patch(
    name: &str,
    applied: Option<(&str, &str)>,
    error: Option<&str>,
) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    if let Some((hash, at)) = applied {
        annotations.insert(APPLIED_HASH_ANNOTATION.into(), json!(hash));
        annotations.insert(APPLIED_AT_ANNOTATION.into(), json!(at));
    }
    if let Some(e) = error {
        annotations.insert(SYNC_ERROR_ANNOTATION.into(), json!(truncate(e, 512)));
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "annotations": annotations },
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Run the sidecar until `shutdown` is cancelled.
pub async fn run(args: SyncArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let client = Client::try_default().await?;
    run_with_client(client, args, Arc::new(SyncMetrics::new()), shutdown).await
}

/// [`run`] with a given client and metrics (tests and benchmarks use this).
pub async fn run_with_client(
    client: Client,
    args: SyncArgs,
    metrics: Arc<SyncMetrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let rpc = KamailioRpc::new(
        args.rpc_url.clone(),
        Duration::from_millis(args.rpc_timeout_ms),
    )?;
    let api: Api<ConfigMap> = Api::namespaced(client, &args.namespace);
    let health = Arc::new(Health::default());
    if let Some(addr) = args.metrics_addr {
        let (written, confirmed) = (health.clone(), health.clone());
        let server = Admin::new(metrics.clone())
            .probe(
                "/startupz",
                move || written.written.load(Ordering::Relaxed),
                "no routing written yet",
            )
            .probe(
                "/readyz",
                move || confirmed.confirmed.load(Ordering::Relaxed),
                "no routing confirmed in Kamailio yet",
            )
            .bind(addr)
            .await?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = server.serve(stop).await {
                tracing::warn!(error = %e, "admin HTTP server stopped");
            }
        });
    }
    tracing::info!(
        namespace = %args.namespace,
        configmap = %args.configmap,
        key = %args.key,
        file = %args.file.display(),
        rpc = %args.rpc_url,
        "sip-sync started"
    );
    // A valid routing already on disk (a restarted edge) lets Kamailio start at once,
    // even when the API server cannot be reached: /startupz must not wait for a watch.
    let mut applier = Applier::new(rpc.clone(), args.file.clone());
    match std::fs::read_to_string(&args.file) {
        Ok(text) => match dispatcher::parse(&text) {
            Ok(list) => {
                applier.written = true;
                health.written.store(true, Ordering::Relaxed);
                tracing::info!(
                    file = %args.file.display(),
                    destinations = list.destinations().len(),
                    "valid routing found on disk: Kamailio can start with it"
                );
            }
            Err(e) => tracing::warn!(file = %args.file.display(), error = %e,
                "the routing file on disk is not valid; waiting for the ConfigMap"),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %args.file.display(), error = %e, "cannot read the routing file")
        }
    }
    let (reporter, report_writer) = match (&args.report.edge, &args.report.member) {
        (Some(edge), member) => {
            let member = member.clone().unwrap_or_else(default_member_name);
            let (reporter, report_rx) = report::Reporter::new(&member, args.report.pod_uid.clone());
            let edges: Api<crate::crd::SipEdge> =
                Api::namespaced(api.clone().into_client(), &args.namespace);
            tracing::info!(edge = %edge, member = %member, "reporting to the SipEdge");
            // Live calls and failure marks from Kamailio, for the operator.
            tokio::spawn(calls::run(rpc.clone(), reporter.clone(), shutdown.clone()));
            let writer = tokio::spawn(report::run_writer(
                edges,
                edge.clone(),
                report_rx,
                shutdown.clone(),
            ));
            (Some(reporter), Some(writer))
        }
        (None, _) => (None, None),
    };
    let (tx, rx) = watch::channel::<Option<Desired>>(None);
    let prober = match (&reporter, args.probe.disabled) {
        // The prober counts into the operator's metric set; sip-sync does not export it
        // (its own registry holds only sip-sync series), so it gets a private one.
        (Some(reporter), false) => {
            match probe::hub(&args.probe, Arc::new(crate::telemetry::Metrics::new())) {
                Ok(hub) => {
                    let owner = format!("edge/{}/{}", args.namespace, args.configmap);
                    Some(tokio::spawn(probe::run(
                        hub,
                        owner,
                        reporter.clone(),
                        rx.clone(),
                        shutdown.clone(),
                    )))
                }
                Err(e) => {
                    tracing::error!(error = %e, "edge probes disabled: fix the flag");
                    None
                }
            }
        }
        _ => None,
    };
    let watch_task = tokio::spawn(watch_configmap(
        api.clone(),
        args.configmap.clone(),
        args.key.clone(),
        args.watch_list,
        tx,
        shutdown.clone(),
    ));
    let out = Outputs {
        metrics,
        health,
        reporter,
    };
    apply_loop(applier, api, args, out, rx, shutdown).await;
    let _ = watch_task.await;
    if let Some(p) = prober {
        let _ = p.await;
    }
    // The writer removes this member's entry on the way out (bounded by its own timeout).
    if let Some(writer) = report_writer {
        let _ = writer.await;
    }
    Ok(())
}

/// Feed every version of the ConfigMap into `tx`; the watcher re-lists and resumes
/// with backoff after API errors.
async fn watch_configmap(
    api: Api<ConfigMap>,
    name: String,
    key: String,
    watch_list: bool,
    tx: watch::Sender<Option<Desired>>,
    shutdown: CancellationToken,
) {
    let mut config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    if watch_list {
        config = config.streaming_lists();
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = stream.next() => n,
        };
        match next {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watch of the routing ConfigMap failed; retrying")
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                // Kamailio keeps running the last routing: no list is better than
                // an empty one. A re-created ConfigMap is applied as usual.
                tracing::warn!(configmap = %name, "routing ConfigMap deleted; keeping the current routing");
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                let annotations = cm.annotations();
                let desired = Desired {
                    content: cm.data.as_ref().and_then(|d| d.get(&key)).cloned(),
                    probes: cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get(crate::routing::probes::PROBES_KEY))
                        .cloned(),
                    applied_hash: annotations.get(APPLIED_HASH_ANNOTATION).cloned(),
                    applied_at: annotations.get(APPLIED_AT_ANNOTATION).cloned(),
                    seen: Instant::now(),
                };
                // Our own annotation patches come back as events too: only a new
                // content or probe list (or a first one) wakes the apply loop.
                tx.send_if_modified(|current| {
                    let changed = current.as_ref().map(|c| (&c.content, &c.probes))
                        != Some((&desired.content, &desired.probes));
                    if changed {
                        *current = Some(desired);
                    }
                    changed
                });
            }
        }
    }
}

/// Apply the latest wanted content, retrying transient failures with backoff; a newer
/// version interrupts the wait at once.
async fn apply_loop(
    mut applier: Applier,
    api: Api<ConfigMap>,
    args: SyncArgs,
    out: Outputs,
    mut rx: watch::Receiver<Option<Desired>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(args.max_backoff_ms.max(100)),
    );
    // What the annotations say now, so that every apply body carries them along.
    let mut applied: Option<(String, String)> = None;
    let mut reported_error: Option<(String, &'static str)> = None;
    // Reloads that Kamailio answered with other destinations than the file, for the
    // current content. Kamailio drops lines it cannot use (an unresolvable host, say)
    // without an error; reloading again cannot help, so after MAX_UNCONFIRMED attempts
    // sip-sync stops and reports it until the content changes.
    let mut unconfirmed: (String, u32) = (String::new(), 0);
    loop {
        let desired = rx.borrow_and_update().clone();
        let mut retry_in = None;
        if let Some(desired) = desired {
            if applied.is_none()
                && let (Some(h), Some(at)) = (&desired.applied_hash, &desired.applied_at)
            {
                applied = Some((h.clone(), at.clone()));
            }
            let content = desired.content.as_deref();
            let hash = content.map(content_hash).unwrap_or_default();
            let result = match content {
                Some(c) => applier.apply(c).await,
                None => Err(Error::MissingKey(args.key.clone())),
            };
            out.health
                .written
                .store(applier.file_written(), Ordering::Relaxed);
            match result {
                Ok(Outcome::Unchanged) => {}
                Ok(outcome) => {
                    backoff.reset();
                    out.metrics.sync_unconfirmed.set(0);
                    let elapsed = desired.seen.elapsed();
                    out.metrics.sync_applied.inc();
                    out.metrics.sync_duration.observe(elapsed.as_secs_f64());
                    out.health.confirmed.store(true, Ordering::Relaxed);
                    tracing::info!(
                        hash = %hash,
                        outcome = ?outcome,
                        millis = elapsed.as_millis() as u64,
                        "routing applied and confirmed in Kamailio"
                    );
                    if let Some(r) = &out.reporter {
                        r.routing_confirmed(&hash);
                    }
                    let at = jiff::Timestamp::now().to_string();
                    applied = Some((hash.clone(), at));
                    reported_error = None;
                    if args.annotate {
                        annotate(&api, &args.configmap, &applied, None, &out.metrics).await;
                    }
                }
                Err(e) => {
                    let category = e.category();
                    out.metrics
                        .sync_failures
                        .get_or_create(&ReasonLabels { reason: category })
                        .inc();
                    let mut permanent = e.is_permanent();
                    if matches!(e, Error::Mismatch(_)) {
                        if unconfirmed.0 != hash {
                            unconfirmed = (hash.clone(), 0);
                        }
                        unconfirmed.1 += 1;
                        if unconfirmed.1 >= MAX_UNCONFIRMED {
                            permanent = true;
                            out.metrics.sync_unconfirmed.set(1);
                            tracing::error!(hash = %hash, reloads = unconfirmed.1, error = %e,
                                "Kamailio keeps dropping destinations of this routing; stopped reloading until the ConfigMap changes");
                        }
                    }
                    if permanent {
                        tracing::warn!(hash = %hash, reason = category, error = %e, "routing rejected; keeping the current routing");
                    } else {
                        tracing::warn!(hash = %hash, reason = category, error = %e, "applying routing failed; will retry");
                        retry_in = Some(backoff.next_delay());
                    }
                    // Annotate once per (version, reason), not on every retry.
                    let key = (hash.clone(), category);
                    if args.annotate && reported_error.as_ref() != Some(&key) {
                        let msg = format!("{}: {e}", &hash.get(..12).unwrap_or("-"));
                        annotate(&api, &args.configmap, &applied, Some(&msg), &out.metrics).await;
                        reported_error = Some(key);
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => {
                if changed.is_err() { return; }
                backoff.reset();
            }
            _ = sleep_opt(retry_in) => {}
        }
    }
}

/// Member name when neither `--edge-member` nor `POD_NAME` is set: the host name.
fn default_member_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sip-sync".into())
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn annotate(
    api: &Api<ConfigMap>,
    name: &str,
    applied: &Option<(String, String)>,
    error: Option<&str>,
    metrics: &SyncMetrics,
) {
    let body = annotation_patch(
        name,
        applied.as_ref().map(|(h, a)| (h.as_str(), a.as_str())),
        error,
    );
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if let Err(e) = api.patch(name, &params, &Patch::Apply(&body)).await {
        metrics
            .sync_failures
            .get_or_create(&ReasonLabels { reason: "annotate" })
            .inc();
        tracing::warn!(error = %e, "cannot annotate the routing ConfigMap");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_patch_carries_applied_hash_and_optional_error() {
        let body = annotation_patch("routing", Some(("abc", "2026-01-01T00:00:00Z")), None);
        let ann = &body["metadata"]["annotations"];
        assert_eq!(ann[APPLIED_HASH_ANNOTATION], "abc");
        assert_eq!(ann[APPLIED_AT_ANNOTATION], "2026-01-01T00:00:00Z");
        assert!(ann.get(SYNC_ERROR_ANNOTATION).is_none());
        let body = annotation_patch("routing", None, Some(&"x".repeat(2000)));
        let ann = &body["metadata"]["annotations"];
        assert!(ann.get(APPLIED_HASH_ANNOTATION).is_none());
        assert_eq!(ann[SYNC_ERROR_ANNOTATION].as_str().unwrap().len(), 512);
    }

    #[test]
    fn only_bad_content_is_permanent() {
        assert!(Error::Invalid(dispatcher::ParseError::Empty).is_permanent());
        assert!(Error::MissingKey("k".into()).is_permanent());
        assert!(!Error::Mismatch("m".into()).is_permanent());
        assert_eq!(
            Error::Invalid(dispatcher::ParseError::Empty).category(),
            "empty"
        );
        assert_eq!(Error::Mismatch("m".into()).category(), "confirm");
    }
}
