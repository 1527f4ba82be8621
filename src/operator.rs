//! The `lifeline operator` process: one small HTTP server (`/metrics`, `/healthz`,
//! `/readyz`), leader election on a `coordination.k8s.io` Lease, and the controllers.
//!
//! Every replica probes (warm standby); only the Lease holder writes. A standby keeps
//! its probe state current and its caches filled, so when it takes over it publishes
//! what it measured, not an empty state. The leader stops writing when it could not
//! renew within the renew deadline, before its lease can expire (see [`lease`]). On
//! SIGTERM the holder closes its write gate first and then releases the Lease, so the
//! standby takes over at its next poll instead of waiting for the lease to expire.

pub mod api_requests;
pub mod lease;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::Admin;
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
    /// The leader stops writing when it could not renew for this long; must be shorter
    /// than the lease so it stops before a standby may take over (default: 2/3 of it).
    #[arg(long)]
    pub renew_deadline_seconds: Option<u64>,
    /// Identity in the Lease (defaults to the pod name, then host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Do not export the per-object gauges (labels `namespace` and `name`, one series
    /// set per Trunk and FallbackPolicy); see docs/metrics.md.
    #[arg(long, env = "LIFELINE_NO_OBJECT_METRICS")]
    pub no_object_metrics: bool,
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
    /// quotas and the probe thread are shared too). With `leading`, their writes follow
    /// the leader election; without, they always write.
    fn contexts(
        &self,
        client: &Client,
        metrics: &Arc<Metrics>,
        probes: &crate::probe::ProbeConfig,
        leading: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> Vec<Arc<Context>> {
        let hub = crate::probe::ProbeHub::new(metrics.clone(), probes.clone());
        self.namespaces()
            .into_iter()
            .map(|ns| match leading {
                Some(l) => Context::with_leadership(
                    client.clone(),
                    metrics.clone(),
                    ns,
                    hub.clone(),
                    l.clone(),
                ),
                None => Context::with_probe_hub(client.clone(), metrics.clone(), ns, hub.clone()),
            })
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
            source: None,
            source_port: 0,
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
    /// A `--probe-allow`/`--probe-deny` rule is invalid.
    #[error("{0}")]
    ProbeRule(#[from] crate::probe::policy::RuleError),
    /// The admin HTTP server could not bind or serve.
    #[error(transparent)]
    Http(#[from] crate::admin::Error),
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

/// Wait until every lifeline CRD is established and one list of each kind succeeds.
/// Missing CRDs are waited for (a watch per CRD, [`await_condition`]; a log line every
/// 10 s names those still missing), not treated as fatal: Helm or Argo CD may install
/// them a moment after the operator starts.
///
/// [`await_condition`]: kube::runtime::wait::await_condition
pub async fn wait_for_api(
    client: &Client,
    namespace: Option<&str>,
    shutdown: &CancellationToken,
) -> bool {
    use kube::runtime::wait::{await_condition, conditions};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<String> = crate::crd::all_crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    let pending = Arc::new(std::sync::Mutex::new(
        names
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
    ));
    let established = futures::future::join_all(names.into_iter().map(|name| {
        let (crds, pending) = (crds.clone(), pending.clone());
        async move {
            let mut backoff =
                crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
            while let Err(e) =
                await_condition(crds.clone(), &name, conditions::is_crd_established()).await
            {
                warn!(crd = %name, error = %e, "cannot watch CustomResourceDefinitions; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            if let Ok(mut p) = pending.lock() {
                p.remove(&name);
            }
        }
    }));
    tokio::pin!(established);
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(2),
        Duration::from_secs(10),
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = &mut established => break,
            _ = report.tick() => {
                let missing: Vec<String> = pending.lock().map(|p| p.iter().cloned().collect()).unwrap_or_default();
                warn!(?missing, "waiting for lifeline CRDs to be installed and established");
            }
        }
    }
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match list_each_kind(client, namespace).await {
            Ok(()) => return true,
            Err(e) => {
                warn!(error = %e, "CRDs established but listing lifeline objects failed; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
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
    let client = api_requests::counting_client(kube::Config::infer().await?)?;
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
    let mut metrics = Metrics::new();
    api_requests::register(&mut metrics.registry);
    // Per-object gauges, read from the controllers' caches at scrape time (every
    // replica). Only with one watched namespace (or all): see docs/metrics.md.
    let namespaces = args.namespaces();
    let object_sources = (!args.no_object_metrics && namespaces.len() == 1)
        .then(|| crate::telemetry::objects::register(&mut metrics.registry));
    // The per-object gauges read the one context's caches.
    let share_caches = |contexts: &[Arc<Context>]| {
        if let (Some(sources), [ctx]) = (&object_sources, contexts) {
            sources.share(ctx);
        }
    };
    let metrics = Arc::new(metrics);
    let health = Arc::new(Health::default());
    let ready = health.clone();
    let http = Admin::new(metrics.clone())
        .probe(
            "/readyz",
            move || ready.is_ready(),
            "waiting for CRDs and the first watch",
        )
        .bind(args.metrics_addr)
        .await?;
    let http = tokio::spawn(http.serve(shutdown.clone()));

    for ns in &namespaces {
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
        let contexts = args.contexts(&client, &metrics, &probes, None);
        share_caches(&contexts);
        run_contexts(&contexts, &shutdown).await;
        contexts[0].probes.shutdown();
        return finish_http(http).await;
    }

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease_ns = args
        .leader_election_namespace
        .clone()
        .or_else(|| namespaces.first().cloned().flatten())
        .unwrap_or_else(|| "default".into());
    let mut config = lease::LeaseConfig::from_duration(
        args.lease_name.clone(),
        identity.clone(),
        args.lease_duration_seconds,
    );
    if let Some(deadline) = args.renew_deadline_seconds {
        config.renew_deadline = Duration::from_secs(deadline)
            .min(config.duration.saturating_sub(Duration::from_secs(1)))
            .max(Duration::from_secs(1));
    }
    info!(%identity, lease = %args.lease_name, namespace = %lease_ns,
        lease_seconds = config.duration.as_secs(), renew_deadline_seconds = config.renew_deadline.as_secs_f64(),
        "warm standby: probing without writing until this replica holds the Lease");
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    let elector = lease::Elector::new(Api::namespaced(client.clone(), &lease_ns), config);
    let election = tokio::spawn(elector.run(leading_tx, shutdown.clone()));
    let contexts = args.contexts(&client, &metrics, &probes, Some(&leading));
    share_caches(&contexts);
    let warm = contexts.iter().map(|ctx| {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        async move {
            tokio::join!(
                controller::trunk::run(ctx.clone(), shutdown.clone()),
                controller::policy::run(ctx.clone(), shutdown.clone()),
                controller::edge::run(ctx.clone(), shutdown.clone()),
                controller::api_watchdog(ctx.clone(), shutdown.clone()),
            );
        }
    });
    tokio::join!(
        futures::future::join_all(warm),
        writers_while_leading(contexts.clone(), leading, metrics.clone(), shutdown.clone()),
    );
    contexts[0].probes.shutdown();
    if let Err(e) = election.await {
        error!(error = %e, "leader election task failed");
    }
    metrics.leader.set(0);
    finish_http(http).await
}

/// Warm standby: the Trunk and policy controllers run on every replica (they probe and
/// plan, and write only while leading, see [`Context::while_leading`]). The BotPool,
/// Notifier and FailoverDrill controllers only write (or send), so they run only while
/// leading. Also keeps the `leader` gauge.
async fn writers_while_leading(
    contexts: Vec<Arc<Context>>,
    mut leading: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
        }
        info!("leading: writing status, routing, bot pools, drills and notifications");
        metrics.leader.set(1);
        let term = shutdown.child_token();
        let writers = contexts.iter().map(|ctx| {
            let (ctx, term) = (ctx.clone(), term.clone());
            async move {
                tokio::join!(
                    controller::botpool::run(ctx.clone(), term.clone()),
                    controller::notifier::run(ctx.clone(), term.clone()),
                    controller::drill::run(ctx.clone(), term.clone()),
                );
            }
        });
        let pools = tokio::spawn(futures::future::join_all(writers));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = leading.wait_for(|l| !*l) => {
                error!("not leading any more: stopped writing; standing by");
            }
        }
        metrics.leader.set(0);
        term.cancel();
        let _ = pools.await;
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

async fn finish_http(
    http: tokio::task::JoinHandle<Result<(), crate::admin::Error>>,
) -> Result<(), Error> {
    match http.await {
        Ok(result) => Ok(result?),
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
}
