//! A real Kamailio 5.6 on a loopback address, as a [`Process`] guard (its workers are
//! in its process group, so they stop with it).
//!
//! - [`Kamailio::edge`]: the SIP edge from `examples/kamailio/kamailio.cfg`, with the
//!   dispatcher loading a list file and JSON-RPC on `ip:5071` (what sip-sync drives);
//! - [`Kamailio::options_responder`]: a carrier answering OPTIONS with 200;
//! - [`Kamailio::launch`]: any other configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::process::Process;
use super::sip::fixtures;

/// Path of the example edge configuration.
pub fn example_cfg() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/kamailio/kamailio.cfg")
}

/// A running Kamailio; stopped (SIGTERM, then SIGKILL for the group) on drop.
pub struct Kamailio {
    process: Process,
    /// Its JSON-RPC URL (`http://<ip>:5071/RPC` for the configurations here).
    pub rpc_url: String,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Kamailio {
    /// Run `/usr/sbin/kamailio -DD -E` with `args`, logging to `work_dir/kamailio.log`
    /// and keeping its runtime files in `work_dir/kamailio-run`. Does not wait for it
    /// to be ready (see [`Self::wait_ready`]).
    pub fn launch(args: &[String], rpc_url: String, work_dir: &Path) -> Self {
        let run_dir = work_dir.join("kamailio-run");
        std::fs::create_dir_all(&run_dir).expect("kamailio run dir");
        let log = work_dir.join("kamailio.log");
        let process = Process::spawn_logged(
            "kamailio",
            Command::new("/usr/sbin/kamailio")
                .args(["-DD", "-E"])
                .args(args)
                .args(["-Y", &run_dir.to_string_lossy()])
                .args(["-P", &run_dir.join("kamailio.pid").to_string_lossy()])
                .args(["-w", &work_dir.to_string_lossy()]),
            &log,
        );
        Self {
            process,
            rpc_url,
            log,
        }
    }

    /// The example edge listening for SIP on `ip:5060` and JSON-RPC on `ip:5071`,
    /// loading `list_file`.
    pub fn edge(ip: &str, list_file: &Path, work_dir: &Path) -> Self {
        Self::edge_with(ip, list_file, work_dir, &[])
    }

    /// [`Self::edge`] with extra `-A` defines, e.g. `ALLOW_FROM="127.0.30.42/32"`
    /// (the config refuses new calls from sources outside the routing list).
    pub fn edge_with(ip: &str, list_file: &Path, work_dir: &Path, defines: &[&str]) -> Self {
        let mut args: Vec<String> = vec![
            "-f".into(),
            example_cfg().to_string_lossy().into_owned(),
            "-m".into(),
            "32".into(),
            "-M".into(),
            "4".into(),
        ];
        for define in [
            format!("SIP_IP={ip}"),
            format!("RPC_IP={ip}"),
            format!("DS_LIST_FILE=\"{}\"", list_file.display()),
        ]
        .iter()
        .map(String::as_str)
        .chain(defines.iter().copied())
        {
            args.extend(["-A".to_string(), define.to_string()]);
        }
        Self::launch(&args, format!("http://{ip}:5071/RPC"), work_dir)
    }

    /// A carrier: answers OPTIONS with 200 on `ip:5060`, UDP and TCP
    /// (`tests/fixtures/kamailio/options_200.cfg`). Returns once it runs.
    pub fn options_responder(ip: &str, work_dir: &Path) -> Self {
        let cfg = fixtures().join("kamailio/options_200.cfg");
        let args: Vec<String> = vec![
            "-f".into(),
            cfg.to_string_lossy().into_owned(),
            "-n".into(),
            "1".into(),
            "-l".into(),
            format!("udp:{ip}:5060"),
            "-l".into(),
            format!("tcp:{ip}:5060"),
        ];
        let mut kamailio = Self::launch(&args, String::new(), work_dir);
        super::process::wait_bound(ip, 5060, false, &mut kamailio.process);
        kamailio
    }

    /// The process guard (to wait for its sockets, or to kill it).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Wait until the JSON-RPC endpoint answers, or panic with the log after `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                panic!("kamailio exited with {status}:\n{}", self.log_tail());
            }
            let ok = http
                .post(&self.rpc_url)
                .body(r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#)
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!("kamailio not ready after {timeout:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of Kamailio's log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }
}
