//! Real SIP peers on loopback addresses: sipp answering OPTIONS or INVITEs, sipp
//! placing calls, and dnsmasq serving the NAPTR/SRV/A records a carrier publishes.
//! Every one is a [`Process`] guard: stopped (group and all) when it drops.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{Process, wait_bound};

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// sipp answering every SIP OPTIONS with `code` (200 or 503) on `ip:port`
/// (`transport`: `u1` UDP, `t1` TCP), for at most 15 minutes and 100,000 requests.
/// Returns once the socket is bound.
pub fn sipp_options(code: u16, ip: &str, port: u16, transport: &str) -> Process {
    let scenario = fixtures().join(format!("sip/uas_options_{code}.xml"));
    let port_s = port.to_string();
    let mut p = Process::spawn(
        &format!("sipp {ip}:{port}"),
        Command::new("sipp").args([
            "-sf",
            scenario.to_str().unwrap(),
            "-i",
            ip,
            "-p",
            &port_s,
            "-t",
            transport,
            "-nostdin",
            "-m",
            "100000",
            "-timeout",
            "900s",
        ]),
    );
    wait_bound(ip, port, transport == "u1", &mut p);
    p
}

/// sipp's built-in `uas` answering every INVITE with 200 on `ip:port` (UDP); with
/// `message_file` it also writes every message it receives and sends there (sipp's
/// `-trace_msg`), so a test can tell what reached it.
pub fn sipp_uas(ip: &str, port: u16, message_file: Option<&Path>) -> Process {
    let mut cmd = Command::new("/usr/bin/sipp");
    cmd.args(["-sn", "uas", "-i", ip, "-p", &port.to_string(), "-nostdin"]);
    if let Some(file) = message_file {
        cmd.args(["-trace_msg", "-message_file"]).arg(file);
    }
    let mut p = Process::spawn(&format!("sipp uas {ip}:{port}"), &mut cmd);
    wait_bound(ip, port, true, &mut p);
    p
}

/// Place `calls` calls from `ip:port` to `proxy` with the R-URI user `service`
/// (`tests/fixtures/sync/uac_rr.xml`); true when every call was answered and hung up
/// cleanly (sipp exits 0 only then). Bounded by sipp's 20 s timeout.
pub fn sipp_calls_succeed(ip: &str, port: u16, proxy: &str, service: &str, calls: u32) -> bool {
    let scenario = fixtures().join("sync/uac_rr.xml");
    let mut p = Process::spawn(
        &format!("sipp uac {ip}:{port}"),
        Command::new("/usr/bin/sipp")
            .args(["-sf", &scenario.to_string_lossy(), proxy])
            .args(["-s", service, "-i", ip, "-p", &port.to_string()])
            .args(["-m", &calls.to_string(), "-r", "5", "-timeout", "20"])
            .arg("-nostdin"),
    );
    loop {
        if let Some(status) = p.exited() {
            return status.success();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// dnsmasq answering only from `records` (dnsmasq options such as
/// `--srv-host=...`), with every TTL set to `ttl` seconds, on `ip:port`.
pub fn dnsmasq(ip: &str, port: u16, ttl: u32, records: &[String]) -> Process {
    let mut args = vec![
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--no-negcache".into(),
        format!("--listen-address={ip}"),
        "--bind-interfaces".into(),
        format!("--port={port}"),
        format!("--local-ttl={ttl}"),
        "--pid-file=".into(),
        "--cache-size=0".into(),
    ];
    args.extend(records.iter().cloned());
    let mut p = Process::spawn("dnsmasq", Command::new("dnsmasq").args(&args));
    wait_bound(ip, port, true, &mut p);
    p
}

/// Users (the user part of the request URI) a responder leaves unanswered: a carrier
/// that stopped answering, without closing its socket.
pub type Silenced = std::sync::Arc<std::sync::RwLock<std::collections::HashSet<String>>>;

/// Answer every SIP OPTIONS arriving on `sock` with `200 OK` from a thread of its own,
/// except those for a user in `silenced`. Cheap enough for 10,000 endpoints on a few
/// sockets (benchmarks); the thread ends with the process.
pub fn spawn_options_responder(
    sock: std::net::UdpSocket,
    silenced: Silenced,
) -> std::thread::JoinHandle<()> {
    spawn_logged_options_responder(sock, silenced, None)
}

/// One OPTIONS request the responder received: when, and whether it was answered.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub at: std::time::Instant,
    pub answered: bool,
}

/// The OPTIONS requests for one user, in order. Benchmarks read the moment of a probe
/// verdict off it.
pub struct ArrivalLog {
    user: String,
    entries: std::sync::Mutex<Vec<Arrival>>,
}

impl ArrivalLog {
    /// An empty log of the requests for `user`.
    pub fn of(user: &str) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            user: user.to_string(),
            entries: Default::default(),
        })
    }

    /// The first request that arrived at or after `since`.
    pub fn first_since(&self, since: std::time::Instant) -> Option<Arrival> {
        let entries = self.entries.lock().unwrap();
        entries.iter().find(|a| a.at >= since).cloned()
    }

    /// Forget what was logged.
    pub fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }
}

/// [`spawn_options_responder`] that also records the requests for the user of `log`.
pub fn spawn_logged_options_responder(
    sock: std::net::UdpSocket,
    silenced: Silenced,
    log: Option<std::sync::Arc<ArrivalLog>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut reply = String::with_capacity(1024);
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let at = std::time::Instant::now();
            let req = String::from_utf8_lossy(&buf[..n]);
            let user = req
                .split_whitespace()
                .nth(1)
                .and_then(|uri| uri.split_once(':'))
                .and_then(|(_, rest)| rest.split_once('@'))
                .map(|(u, _)| u);
            let silent = user.is_some_and(|u| silenced.read().is_ok_and(|s| s.contains(u)));
            if let Some(log) = &log
                && user == Some(log.user.as_str())
                && let Ok(mut entries) = log.entries.lock()
            {
                entries.push(Arrival {
                    at,
                    answered: !silent,
                });
            }
            if silent {
                continue;
            }
            reply.clear();
            reply.push_str("SIP/2.0 200 OK\r\n");
            for line in req.lines() {
                if ["Via:", "From:", "Call-ID:", "CSeq:"]
                    .iter()
                    .any(|h| line.starts_with(h))
                {
                    reply.push_str(line);
                    reply.push_str("\r\n");
                } else if line.starts_with("To:") {
                    reply.push_str(line);
                    reply.push_str(";tag=responder\r\n");
                }
            }
            reply.push_str("Content-Length: 0\r\n\r\n");
            let _ = sock.send_to(reply.as_bytes(), from);
        }
    })
}
