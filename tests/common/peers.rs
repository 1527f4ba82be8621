//! Real SIP peers for tests: sipp processes on loopback addresses, killed (with their
//! whole process group) when the guard drops, also when a test panics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process in its own process group, killed on drop.
pub struct Peer {
    child: Child,
    name: String,
}

impl Peer {
    /// Start `cmd` with null stdio in a new process group.
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

    /// Kill the process group and reap the child.
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

    /// Panic when the peer already exited (e.g. its address was taken).
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

/// sipp answering every SIP OPTIONS with `code` (200 or 503) on `ip:5060` over UDP,
/// for at most `seconds` and 100,000 requests.
pub fn sipp_options(code: u16, ip: &str, seconds: u32) -> Peer {
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/sip/uas_options_{code}.xml"));
    let mut p = Peer::spawn(
        &format!("sipp {ip}"),
        Command::new("sipp").args([
            "-sf",
            scenario.to_str().unwrap(),
            "-i",
            ip,
            "-p",
            "5060",
            "-t",
            "u1",
            "-nostdin",
            "-m",
            "100000",
            "-timeout",
            &format!("{seconds}s"),
        ]),
    );
    std::thread::sleep(Duration::from_millis(300));
    p.assert_running();
    p
}
