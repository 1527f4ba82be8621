//! `lifeline sip-sync` running inside the test (or benchmark) process, against a real
//! Kamailio ([`super::kamailio::Kamailio::edge`]); cancelled on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lifeline::sip_sync::SyncArgs;
use lifeline::telemetry::SyncMetrics;
use tokio_util::sync::CancellationToken;

/// The routing ConfigMap the tests and benchmarks have sip-sync watch.
pub const ROUTING_CONFIGMAP: &str = "sip-routing";

/// sip-sync in this process; cancelled on drop.
pub struct SipSync {
    token: CancellationToken,
    /// Its own registry.
    pub metrics: Arc<SyncMetrics>,
}

impl SipSync {
    /// Watch [`ROUTING_CONFIGMAP`] in `namespace`, write `file`, drive Kamailio at
    /// `rpc_url` (1 s RPC timeout, backoff capped at 1 s).
    pub fn spawn(client: kube::Client, namespace: &str, file: PathBuf, rpc_url: &str) -> Self {
        Self::spawn_with_probes(client, namespace, file, rpc_url, None)
    }

    /// [`Self::spawn`] with its admin server (`/metrics`, `/startupz`, `/readyz`) on
    /// `metrics_addr`.
    pub fn spawn_with_probes(
        client: kube::Client,
        namespace: &str,
        file: PathBuf,
        rpc_url: &str,
        metrics_addr: Option<SocketAddr>,
    ) -> Self {
        let token = CancellationToken::new();
        let metrics = Arc::new(SyncMetrics::new());
        let args = SyncArgs {
            namespace: namespace.to_string(),
            configmap: ROUTING_CONFIGMAP.to_string(),
            key: lifeline::routing::DISPATCHER_KEY.to_string(),
            file,
            rpc_url: rpc_url.to_string(),
            rpc_timeout_ms: 1000,
            max_backoff_ms: 1000,
            metrics_addr,
            watch_list: false,
            annotate: true,
            probe: Default::default(),
            report: Default::default(),
        };
        tokio::spawn(lifeline::sip_sync::run_with_client(
            client,
            args,
            metrics.clone(),
            token.clone(),
        ));
        Self { token, metrics }
    }

    /// The value of the first sample whose line starts with `line_prefix`, or 0.
    pub fn metric(&self, line_prefix: &str) -> f64 {
        self.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for SipSync {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
