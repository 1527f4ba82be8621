//! Real peers for the prober's integration tests (`probe_dns`, `probe_tls`,
//! `probe_policy`): dnsmasq serving NAPTR/SRV/A records, sipp answering OPTIONS,
//! Kamailio with TLS. Everything binds 127.0.0.0/8 only, runs in its own process group
//! and is killed (group and all) when its guard drops, also when a test fails.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A child process in its own process group, killed (group and all) on drop.
pub struct Peer {
    child: Child,
    name: String,
}

impl Peer {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child,
            name: name.to_string(),
        }
    }

    pub fn kill(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited at start-up: {status}", self.name);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until something listens on `ip:port` (UDP when `udp`, else TCP).
pub fn wait_bound(ip: &str, port: u16, udp: bool, peer: &mut Peer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let taken = if udp {
            std::net::UdpSocket::bind((ip, port)).is_err()
        } else {
            std::net::TcpStream::connect((ip, port)).is_ok()
        };
        if taken {
            return;
        }
        peer.assert_running();
        assert!(Instant::now() < deadline, "{ip}:{port} never bound");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free port on `ip` (UDP and TCP both free at the time of asking).
pub fn free_port(ip: &str) -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind((ip, 0)).expect("bind");
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// dnsmasq answering only from `records` (dnsmasq options such as
/// `--srv-host=...`), with every TTL set to `ttl` seconds, on `ip:port`.
pub fn dnsmasq(ip: &str, port: u16, ttl: u32, records: &[String]) -> Peer {
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
    let mut p = Peer::spawn("dnsmasq", Command::new("dnsmasq").args(&args));
    wait_bound(ip, port, true, &mut p);
    p
}

/// sipp answering every OPTIONS with `code` (200 or 503) on `ip:port`
/// (`transport`: `u1` UDP, `t1` TCP).
pub fn sipp(code: u16, ip: &str, port: u16, transport: &str) -> Peer {
    let scenario = fixtures().join(format!("sip/uas_options_{code}.xml"));
    let port_s = port.to_string();
    let mut p = Peer::spawn(
        "sipp",
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
            "300s",
        ]),
    );
    wait_bound(ip, port, transport == "u1", &mut p);
    p
}
