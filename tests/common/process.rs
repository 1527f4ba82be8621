//! The one guard for every process a test or benchmark starts (sipp, Kamailio,
//! dnsmasq, `lifeline operator`, ...): it runs in its own process group, so that
//! stopping it also stops whatever it forked (Kamailio's workers), and it is stopped
//! when the guard drops, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process in its own process group; the group is stopped on drop.
pub struct Process {
    child: Child,
    name: String,
    log: Option<PathBuf>,
}

impl Process {
    /// Start `cmd` with null stdio.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        Self::start(name, cmd, None)
    }

    /// Start `cmd` with stdout and stderr appended to `log` (created anew). The log's
    /// tail is printed when the guard drops during a panic.
    pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Self {
        Self::start(name, cmd, Some(log.to_path_buf()))
    }

    fn start(name: &str, cmd: &mut Command, log: Option<PathBuf>) -> Self {
        use std::os::unix::process::CommandExt as _;
        let (out, err) = match &log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
                let copy = file.try_clone().expect("log handle");
                (Stdio::from(copy), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// Its process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its log file, when it has one.
    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// How it ended, or `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// True while it runs.
    pub fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Fail fast (instead of timing out later) when it already exited, e.g. because
    /// its address was taken.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited at start-up: {status}\n{}",
                self.name,
                self.log_tail(30)
            );
        }
    }

    /// The last `lines` lines of its log (empty without one).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Send `signal` (e.g. `TERM`, `STOP`, `CONT`) to the process itself.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{}", self.id())])
            .stderr(Stdio::null())
            .status();
    }

    /// Kill the whole group at once (a crash) and reap the child.
    pub fn kill(&mut self) {
        if self.running() {
            self.signal_group("KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ask the group to stop (SIGTERM), wait up to `grace`, then kill what is left.
    pub fn stop(&mut self, grace: Duration) {
        if self.running() {
            self.signal_group("TERM");
            let deadline = Instant::now() + grace;
            while self.running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Workers of a stopped parent may still be there: the group goes in any case.
        self.signal_group("KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() && self.log.is_some() {
            eprintln!("--- {} log (tail) ---\n{}", self.name, self.log_tail(60));
        }
        self.stop(Duration::from_secs(5));
    }
}

/// Wait until something listens on `ip:port` (UDP when `udp`, else TCP), failing fast
/// when `process` exits first.
pub fn wait_bound(ip: &str, port: u16, udp: bool, process: &mut Process) {
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
        process.assert_running();
        assert!(Instant::now() < deadline, "{ip}:{port} never bound");
        std::thread::sleep(Duration::from_millis(20));
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

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create `<tmp>/<prefix>-<random>`.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
