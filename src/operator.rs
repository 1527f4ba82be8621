//! The `lifeline operator` process: HTTP endpoints, leader election and the controllers.

use std::net::SocketAddr;

/// Arguments of `lifeline operator`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespace to watch; all namespaces when omitted.
    #[arg(long, env = "LIFELINE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the `/metrics`, `/healthz` and `/readyz` server.
    #[arg(long, env = "LIFELINE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
}

/// Errors of the operator process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kubernetes API error.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// I/O error (binding the HTTP server).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Run the operator until SIGTERM/SIGINT.
pub async fn run(args: OperatorArgs) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;
    let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
    let ctx = crate::controller::Context::new(client, metrics, args.namespace.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    crate::controller::run_all(ctx, shutdown).await;
    Ok(())
}

/// A token cancelled on the first SIGTERM or SIGINT; every task shares it.
pub fn shutdown_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM; relying on SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        }
        t.cancel();
    });
    token
}
