//! Controllers running inside the test process against the testenv control plane, in
//! a namespace of their own: what `botpool_controller`, `policy_controller` and
//! `trunk_probe` test. The controllers stop and the namespace goes when the harness
//! drops, also when the test panics.

use std::sync::Arc;

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};
use lifeline::controller::Context;
use lifeline::crd::Trunk;
use lifeline::telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use super::TestNamespace;

/// A controller the harness can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    /// The Trunk prober and status writer.
    Trunk,
    /// The FallbackPolicy planner and routing writer.
    Policy,
    /// The BotPool scaler.
    BotPool,
    /// The SipEdge reader (edge vantages, live calls, isolation).
    Edge,
}

/// A namespace with `controllers` running in it.
pub struct Harness {
    /// The namespace (deleted on drop).
    pub ns: TestNamespace,
    /// The controllers' context: client, metrics, probes.
    pub ctx: Arc<Context>,
    stop: CancellationToken,
}

impl Harness {
    /// Install the CRDs, create a namespace `<prefix>-<random>` with `labels` and run
    /// `controllers` in it; `None` when cluster tests are skipped.
    pub async fn start(
        prefix: &str,
        labels: &[(&str, &str)],
        controllers: &[Controller],
    ) -> Option<Self> {
        lifeline::telemetry::init_logging(lifeline::telemetry::LogFormat::Plain);
        let client = super::client().await?;
        super::install_crds(&client).await;
        let ns = TestNamespace::create(client.clone(), prefix, labels).await;
        let metrics = Arc::new(Metrics::new());
        let ctx = Context::new(client, metrics, Some(ns.name.clone()));
        let stop = CancellationToken::new();
        for controller in controllers {
            let (ctx, stop) = (ctx.clone(), stop.clone());
            match controller {
                Controller::Trunk => tokio::spawn(lifeline::controller::trunk::run(ctx, stop)),
                Controller::Policy => tokio::spawn(lifeline::controller::policy::run(ctx, stop)),
                Controller::BotPool => tokio::spawn(lifeline::controller::botpool::run(ctx, stop)),
                Controller::Edge => tokio::spawn(lifeline::controller::edge::run(ctx, stop)),
            };
        }
        Some(Self { ns, ctx, stop })
    }

    /// The client.
    pub fn client(&self) -> Client {
        self.ns.client.clone()
    }

    /// The controllers' metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    /// Create the Trunk `name` with `spec` (JSON, as in a manifest) in the namespace.
    pub async fn create_trunk_spec(&self, name: &str, spec: serde_json::Value) -> Trunk {
        self.ns
            .create_from(serde_json::json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
                "metadata": { "name": name }, "spec": spec,
            }))
            .await
    }

    /// `(reason, note)` of every Event about the object `name` in the namespace.
    pub async fn events(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = self.ns.api();
        let list = api.list(&ListParams::default()).await.expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
        self.ctx.probes.shutdown();
    }
}
