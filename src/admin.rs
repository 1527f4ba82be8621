//! The small HTTP server every lifeline process runs for Prometheus and the kubelet:
//! `/metrics` (the process's own registry), `/healthz` (the process answers) and the
//! readiness-style probes each process adds (`/readyz`, and `/startupz` in sip-sync).
//!
//! The operator and sip-sync build it the same way and differ only in their registry
//! and their probes, so neither exports the other's metrics:
//!
//! ```no_run
//! # async fn f(metrics: std::sync::Arc<lifeline::telemetry::Metrics>) {
//! use std::sync::atomic::{AtomicBool, Ordering};
//! let ready = std::sync::Arc::new(AtomicBool::new(false));
//! let flag = ready.clone();
//! let server = lifeline::admin::Admin::new(metrics)
//!     .probe("/readyz", move || flag.load(Ordering::Relaxed), "not ready yet")
//!     .bind("127.0.0.1:8080".parse().unwrap())
//!     .await
//!     .unwrap();
//! tokio::spawn(server.serve(tokio_util::sync::CancellationToken::new()));
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Exposition;

/// The media type of `/metrics` (prometheus-client writes OpenMetrics text).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin server could not bind or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[error("admin HTTP server on {addr}: {source}")]
pub struct Error {
    /// The address it was to listen on.
    pub addr: SocketAddr,
    /// The cause.
    pub source: std::io::Error,
}

/// The routes of one process's admin server, before it listens.
pub struct Admin {
    router: Router,
    paths: Vec<&'static str>,
}

impl Admin {
    /// `/metrics` from `metrics` and `/healthz`, which answers `ok` while the process
    /// serves HTTP at all (a wedged runtime fails it by timing out).
    pub fn new<M: Exposition>(metrics: Arc<M>) -> Self {
        let router = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
                            metrics.encode(),
                        )
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        Self {
            router,
            paths: vec!["/metrics", "/healthz"],
        }
    }

    /// A probe at `path`: 200 `ok` while `check` holds, else 503 with `waiting` as the
    /// body (it tells whoever runs `curl` what the process still waits for).
    pub fn probe(
        mut self,
        path: &'static str,
        check: impl Fn() -> bool + Clone + Send + Sync + 'static,
        waiting: &'static str,
    ) -> Self {
        self.router = self.router.route(
            path,
            get(move || {
                let ok = check();
                async move {
                    if ok {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, waiting)
                    }
                }
            }),
        );
        self.paths.push(path);
        self
    }

    /// Listen on `addr`. Binding apart from serving lets a process fail at start-up
    /// on a taken port instead of running without its probes.
    pub async fn bind(self, addr: SocketAddr) -> Result<Listening, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Listening {
            listener,
            router: self.router,
            paths: self.paths,
            addr,
        })
    }
}

/// A bound admin server.
pub struct Listening {
    listener: tokio::net::TcpListener,
    router: Router,
    paths: Vec<&'static str>,
    addr: SocketAddr,
}

impl Listening {
    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), Error> {
        let addr = self.addr;
        tracing::info!(%addr, paths = ?self.paths, "admin HTTP server listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|source| Error { addr, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Metrics, SyncMetrics};
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, ctype, resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_probes() {
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let server = Admin::new(Arc::new(Metrics::new()))
            .probe(
                "/readyz",
                move || flag.load(Ordering::Relaxed),
                "waiting for the first watch",
            )
            .bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(stop.clone()));

        let (status, ctype, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(ctype, METRICS_CONTENT_TYPE);
        assert!(body.contains("lifeline_build_info"), "{body}");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "waiting for the first watch")
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/startupz").await.0, 404);

        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn each_process_exports_only_its_own_metrics() {
        let operator = Metrics::new().encode();
        let sidecar = SyncMetrics::new().encode();
        assert!(
            operator.contains("lifeline_probes_sent_total"),
            "{operator}"
        );
        assert!(!operator.contains("lifeline_sync_"), "{operator}");
        assert!(sidecar.contains("lifeline_sync_applied_total"), "{sidecar}");
        assert!(!sidecar.contains("lifeline_probes_sent"), "{sidecar}");
        assert!(!sidecar.contains("lifeline_reconcile"), "{sidecar}");
        assert!(!sidecar.contains("lifeline_leader"), "{sidecar}");
        for text in [&operator, &sidecar] {
            assert!(text.contains("lifeline_build_info"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_naming_the_address() {
        let first = Admin::new(Arc::new(SyncMetrics::new()))
            .bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = first.local_addr();
        let err = Admin::new(Arc::new(SyncMetrics::new()))
            .bind(addr)
            .await
            .err()
            .expect("second bind fails");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
