//! The `lifeline operator` process: one small HTTP server (`/metrics`, `/healthz`,
//! `/readyz`), leader election on a `coordination.k8s.io` Lease, and the controllers.
//!
//! Only the Lease holder probes and writes. A standby replica keeps serving `/healthz`
//! and `/readyz` (it is healthy, just not leading) and takes over when the holder's
//! lease expires or is released. On SIGTERM the holder stops its controllers first
//! and then releases the Lease, so the standby takes over at once instead of waiting
//! for the lease to expire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::controller::{self, Context};
use crate::crd::{BotPool, FallbackPolicy, Trunk};
use crate::telemetry::Metrics;

/// Arguments of `lifeline operator`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespace to watch, or several comma-separated (`a,b`); all namespaces when
    /// omitted.
    #[arg(long, env = "LIFELINE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the `/metrics`, `/healthz` and `/readyz` server.
    #[arg(long, env = "LIFELINE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Run without leader election (a single replica, local runs and tests).
    #[arg(long, env = "LIFELINE_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,
    /// Namespace of the leader Lease (defaults to the pod's namespace, then the watched
    /// namespace, then `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "LIFELINE_LEASE_NAME", default_value = "lifeline-operator")]
    pub lease_name: String,
    /// How long a Lease is valid without renewal; a standby takes over after this.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Identity in the Lease (defaults to the pod name, then host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Probing: destination list, DNS and per-namespace quotas.
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// Where the prober may send, how it resolves names, and how much each namespace may
/// ask for. Kept apart from the process settings above so that it reads as one unit.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProbeArgs {
    /// Destinations never probed, as CIDR[:PORT[-PORT]] (comma-separated or repeated),
    /// on top of the built-in list (loopback, link-local incl. 169.254.169.254,
    /// multicast) and the API server, node and Service addresses found at start.
    #[arg(
        long = "probe-deny",
        env = "LIFELINE_PROBE_DENY",
        value_delimiter = ','
    )]
    pub deny: Vec<String>,
    /// Exceptions to every deny rule, as CIDR[:PORT[-PORT]].
    #[arg(
        long = "probe-allow",
        env = "LIFELINE_PROBE_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
    /// Name servers for resolving endpoint hosts (ip:port); default /etc/resolv.conf.
    #[arg(
        long = "probe-dns-server",
        env = "LIFELINE_PROBE_DNS_SERVERS",
        value_delimiter = ','
    )]
    pub dns_servers: Vec<SocketAddr>,
    /// Seconds the last good DNS answer keeps being used after its TTL while DNS fails;
    /// after that the endpoint becomes Unknown (never Down).
    #[arg(
        long = "probe-dns-grace-seconds",
        env = "LIFELINE_PROBE_DNS_GRACE_SECONDS",
        default_value_t = 300
    )]
    pub dns_grace_seconds: u64,
    /// Endpoints probed per namespace at most (Trunks beyond it get `QuotaExceeded`).
    #[arg(
        long = "probe-max-endpoints-per-namespace",
        env = "LIFELINE_PROBE_MAX_ENDPOINTS_PER_NAMESPACE"
    )]
    pub max_endpoints_per_namespace: Option<usize>,
    /// Probes per second per namespace at most (an endpoint costs 1/periodSeconds).
    #[arg(
        long = "probe-max-rate-per-namespace",
        env = "LIFELINE_PROBE_MAX_RATE_PER_NAMESPACE"
    )]
    pub max_rate_per_namespace: Option<f64>,
    /// Do not deny the API server, node and Service addresses found at start
    /// (they are denied by default).
    #[arg(long = "probe-no-cluster-deny", env = "LIFELINE_PROBE_NO_CLUSTER_DENY")]
    pub no_cluster_deny: bool,
}

impl OperatorArgs {
    /// The watched namespaces: `[None]` for all, else one entry per listed namespace.
    pub fn namespaces(&self) -> Vec<Option<String>> {
        let listed: Vec<Option<String>> = self
            .namespace
            .iter()
            .flat_map(|n| n.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| Some(n.to_string()))
            .collect();
        if listed.is_empty() {
            vec![None]
        } else {
            listed
        }
    }

    /// One controller context per watched namespace, all sharing one prober (so the
    /// quotas and the probe thread are shared too).
    fn contexts(
        &self,
        client: &Client,
        metrics: &Arc<Metrics>,
        probes: &crate::probe::ProbeConfig,
    ) -> Vec<Arc<Context>> {
        let hub = crate::probe::ProbeHub::new(metrics.clone(), probes.clone());
        self.namespaces()
            .into_iter()
            .map(|ns| Context::with_probe_hub(client.clone(), metrics.clone(), ns, hub.clone()))
            .collect()
    }
}

/// Run every controller for every context until `token` is cancelled.
async fn run_contexts(contexts: &[Arc<Context>], token: &CancellationToken) {
    futures::future::join_all(
        contexts
            .iter()
            .map(|ctx| controller::run_all(ctx.clone(), token.clone())),
    )
    .await;
}

impl ProbeArgs {
    /// The prober configuration, without the addresses found in the cluster.
    pub fn config(&self) -> Result<crate::probe::ProbeConfig, crate::probe::policy::RuleError> {
        use crate::probe::{DestinationPolicy, DnsConfig, ProbeConfig, Quotas};
        Ok(ProbeConfig {
            policy: DestinationPolicy::with_rules(&self.allow, &self.deny)?,
            dns: DnsConfig {
                servers: self.dns_servers.clone(),
                stale_grace: Duration::from_secs(self.dns_grace_seconds),
                ..DnsConfig::system()
            },
            quotas: Quotas {
                max_endpoints_per_namespace: self.max_endpoints_per_namespace,
                max_probes_per_second_per_namespace: self.max_rate_per_namespace,
            },
        })
    }
}

/// Errors of the operator process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes API error.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// No usable Kubernetes configuration.
    #[error("kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// Leader election failed in a way that cannot be retried.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// A `--probe-allow`/`--probe-deny` rule is invalid.
    #[error("{0}")]
    ProbeRule(#[from] crate::probe::policy::RuleError),
    /// The HTTP server could not bind or serve.
    #[error("http server on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Health of the process, as `/healthz` and `/readyz` report it.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Whether the CRDs are established and the first lists succeeded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

struct HttpState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`.
pub async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(Arc::new(HttpState { metrics, health }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Http { addr, source })?;
    info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| Error::Http { addr, source })
}

async fn metrics_handler(State(state): State<Arc<HttpState>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn ready_handler(State(state): State<Arc<HttpState>>) -> (StatusCode, &'static str) {
    if state.health.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for CRDs and the first watch",
        )
    }
}

/// Wait until every lifeline CRD is established and one list of each kind succeeds.
/// Missing CRDs are waited for (with a log line every attempt), not treated as fatal:
/// Helm or Argo CD may install them a moment after the operator starts.
pub async fn wait_for_api(
    client: &Client,
    namespace: Option<&str>,
    shutdown: &CancellationToken,
) -> bool {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<String> = crate::crd::all_crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let mut delay = Duration::from_millis(500);
    loop {
        match missing_crds(&crds, &names).await {
            Ok(missing) if missing.is_empty() => match list_each_kind(client, namespace).await {
                Ok(()) => return true,
                Err(e) => {
                    warn!(error = %e, "CRDs established but listing lifeline objects failed; retrying")
                }
            },
            Ok(missing) => warn!(
                ?missing,
                "waiting for lifeline CRDs to be installed and established"
            ),
            Err(e) => warn!(error = %e, "cannot read CustomResourceDefinitions; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn missing_crds(
    api: &Api<CustomResourceDefinition>,
    names: &[String],
) -> Result<Vec<String>, kube::Error> {
    let mut missing = Vec::new();
    for name in names {
        let established = api.get_opt(name).await?.is_some_and(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if !established {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

async fn list_each_kind(client: &Client, namespace: Option<&str>) -> Result<(), kube::Error> {
    let lp = ListParams::default().limit(1);
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    api::<Trunk>(client, namespace).list_metadata(&lp).await?;
    api::<BotPool>(client, namespace).list_metadata(&lp).await?;
    api::<FallbackPolicy>(client, namespace)
        .list_metadata(&lp)
        .await?;
    Ok(())
}

/// Run the operator until SIGTERM/SIGINT.
pub async fn run(args: OperatorArgs) -> Result<(), Error> {
    let client = Client::try_default().await?;
    run_with_client(client, args, shutdown_signal()).await
}

/// Run the operator with a given client until `shutdown` is cancelled (tests use this).
pub async fn run_with_client(
    client: Client,
    args: OperatorArgs,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Bad rules are a configuration error: fail before serving anything.
    let mut probes = args.probe.config()?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let http = tokio::spawn(serve_http(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));

    for ns in args.namespaces() {
        if !wait_for_api(&client, ns.as_deref(), &shutdown).await {
            return finish_http(http).await;
        }
    }
    if !args.probe.no_cluster_deny {
        probes
            .policy
            .deny(crate::probe::cluster::deny_rules(&client).await);
    }
    log_probe_policy(&probes);
    health.ready.store(true, Ordering::Relaxed);
    info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        "lifeline CRDs established; starting"
    );

    if args.no_leader_election {
        metrics.leader.set(1);
        let contexts = args.contexts(&client, &metrics, &probes);
        run_contexts(&contexts, &shutdown).await;
        contexts[0].probes.shutdown();
        return finish_http(http).await;
    }

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease_ns = args
        .leader_election_namespace
        .clone()
        .or_else(|| args.namespaces().into_iter().next().flatten())
        .unwrap_or_else(|| "default".into());
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&lease_ns)
            .with_identity(&identity)
            .with_duration(args.lease_duration_seconds)
            .with_grace(grace_seconds(args.lease_duration_seconds))
            // One field manager per identity: the Lease lock relies on server-side apply
            // conflicts between managers, and a shared manager would let two replicas
            // overwrite each other's hold and both lead.
            .with_field_manager(lease_field_manager(&identity))
            .build()
            .await;
        match built {
            Ok(m) => break m,
            Err(e) => {
                warn!(error = %e, lease = %args.lease_name, namespace = %lease_ns, "cannot set up the leader Lease; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return finish_http(http).await,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    info!(%identity, lease = %args.lease_name, namespace = %lease_ns, "waiting to become leader");
    lead_while_holding(&manager, client, &args, &probes, metrics.clone(), &shutdown).await;
    if let Err(e) = manager.release().await {
        warn!(error = %e, "could not release the leader Lease; the standby takes over when it expires");
    } else {
        info!("released the leader Lease");
    }
    metrics.leader.set(0);
    finish_http(http).await
}

/// Alternate between standby and leading until `shutdown`. While leading, the
/// controllers run under a child token that is cancelled when the Lease is lost.
async fn lead_while_holding(
    manager: &LeaseManager,
    client: Client,
    args: &OperatorArgs,
    probes: &crate::probe::ProbeConfig,
    metrics: Arc<Metrics>,
    shutdown: &CancellationToken,
) {
    let mut leading = false;
    loop {
        // Standby: wait until we hold the Lease.
        while !leading {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = manager.changed() => match changed {
                    Ok(is_leader) => leading = is_leader,
                    Err(e) => {
                        warn!(error = %e, "leader election error; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
        info!("acquired the leader Lease; starting controllers and probes");
        metrics.leader.set(1);
        let term = shutdown.child_token();
        let contexts = args.contexts(&client, &metrics, probes);
        let controllers = run_contexts(&contexts, &term);
        tokio::pin!(controllers);
        // Leading: keep renewing while the controllers run.
        loop {
            tokio::select! {
                _ = &mut controllers => break,
                changed = manager.changed() => match changed {
                    Ok(true) => {}
                    Ok(false) => {
                        error!("lost the leader Lease; stopping controllers and probes");
                        leading = false;
                        term.cancel();
                    }
                    Err(e) => warn!(error = %e, "cannot renew the leader Lease; retrying"),
                },
            }
        }
        contexts[0].probes.shutdown();
        metrics.leader.set(0);
        if shutdown.is_cancelled() {
            return;
        }
    }
}

fn log_probe_policy(probes: &crate::probe::ProbeConfig) {
    let deny: Vec<String> = probes.policy.deny_rules().map(|r| r.to_string()).collect();
    let allow: Vec<String> = probes.policy.allow_rules().map(|r| r.to_string()).collect();
    info!(?deny, ?allow, "probe destination list");
}

/// The field manager of one replica's Lease writes (at most 128 characters).
fn lease_field_manager(identity: &str) -> String {
    let mut manager = format!("{}-{identity}", crate::crd::FIELD_MANAGER);
    if manager.len() > 128 {
        let mut end = 128;
        while !manager.is_char_boundary(end) {
            end -= 1;
        }
        manager.truncate(end);
    }
    manager
}

/// Renew well before expiry: a third of the duration, at least one second.
fn grace_seconds(duration: u64) -> u64 {
    (duration / 3).max(1)
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(
        "{}-{}",
        if host.is_empty() { "lifeline" } else { &host },
        std::process::id()
    )
}

async fn finish_http(http: tokio::task::JoinHandle<Result<(), Error>>) -> Result<(), Error> {
    match http.await {
        Ok(result) => result,
        Err(e) => {
            error!(error = %e, "http server task failed");
            Ok(())
        }
    }
}

/// A token cancelled on the first SIGTERM or SIGINT; every task shares it.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM; relying on SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received, shutting down"),
        }
        t.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_writes_the_lease_as_its_own_field_manager() {
        assert_ne!(lease_field_manager("pod-a"), lease_field_manager("pod-b"));
        assert!(lease_field_manager(&"x".repeat(300)).len() <= 128);
    }

    #[test]
    fn namespace_lists_split_on_commas() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: OperatorArgs,
        }
        let parse = |a: &[&str]| Cli::parse_from([&["x"], a].concat()).args;
        assert_eq!(parse(&[]).namespaces(), vec![None]);
        assert_eq!(
            parse(&["--namespace", "a, b,,c"]).namespaces(),
            vec![Some("a".into()), Some("b".into()), Some("c".into())]
        );
        let p = parse(&[
            "--probe-deny",
            "10.96.0.0/12,192.0.2.0/24:5060",
            "--probe-allow",
            "10.96.5.0/24",
        ]);
        let c = p.probe.config().unwrap();
        assert!(c.policy.check("10.96.0.1:5060".parse().unwrap()).is_err());
        assert!(c.policy.check("10.96.5.1:5060".parse().unwrap()).is_ok());
        assert!(c.policy.check("127.0.0.1:5060".parse().unwrap()).is_err());
        let bad = parse(&["--probe-deny", "10.0.0.1"])
            .probe
            .config()
            .unwrap_err();
        assert!(bad.to_string().contains("10.0.0.1"), "{bad}");
    }

    #[test]
    fn renewal_happens_well_before_expiry() {
        assert_eq!(grace_seconds(15), 5);
        assert_eq!(grace_seconds(2), 1);
        assert!(grace_seconds(60) < 60);
    }
}
