//! `lifeline operator` (the binary under test) as a child process, with its admin
//! server on a known address so a test can read its metrics.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::Process;

/// The operator binary with the arguments every test passes: watch `namespace`, serve
/// metrics on `metrics_addr`, the testenv kubeconfig, probes allowed to reach loopback
/// (denied by default; the tests' carriers live there) and `RUST_LOG=info`. Add more
/// arguments and environment to taste.
pub fn command(namespace: &str, metrics_addr: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    cmd.args(["operator", "--namespace", namespace])
        .args(["--metrics-addr", metrics_addr])
        .env("KUBECONFIG", super::kubeconfig_path())
        .env("LIFELINE_PROBE_ALLOW", "127.0.0.0/8")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// A running operator; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Operator {
    /// Its name (its `--identity` where a test sets one).
    pub name: String,
    /// The process guard (to signal or kill it).
    pub process: Process,
    /// Where its admin server listens (`ip:port`).
    pub metrics_addr: String,
}

impl Operator {
    /// Start `cmd` (see [`command`]) serving metrics on `metrics_addr`, logging to
    /// `log` when given.
    pub fn spawn(name: &str, cmd: &mut Command, metrics_addr: &str, log: Option<&Path>) -> Self {
        let process = match log {
            Some(log) => Process::spawn_logged(name, cmd, log),
            None => Process::spawn(name, cmd),
        };
        Self {
            name: name.to_string(),
            process,
            metrics_addr: metrics_addr.to_string(),
        }
    }

    /// The URL of its `/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// Its `/metrics` text, or `None` when it does not answer within 500 ms.
    pub async fn scrape(&self) -> Option<String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .ok()?;
        let resp = client.get(self.metrics_url()).send().await.ok()?;
        resp.text().await.ok()
    }

    /// The value of the sample `series` (name and labels exactly as exposed).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.scrape().await?, series)
    }

    /// Whether it holds the leader Lease (`lifeline_leader`).
    pub async fn is_leader(&self) -> Option<bool> {
        self.metric("lifeline_leader").await.map(|v| v == 1.0)
    }
}

/// The value of the sample `series` in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
