//! The real-node plane (`NODE=real tests/testenv/up.sh`, in `target/testenv-real`),
//! shared by the tests that run pods on it (tests/real_node.rs, tests/e2e_cluster.rs).
//!
//! One real node per machine: its bridge `lifeline0` and 10.96.0.1:443 are
//! machine-wide, so a lock directory under /run serializes those tests across
//! checkouts. A test reuses a plane that is already running (e.g. `make testenv-up
//! NODE=real`) and stops it on drop only when it started it itself — also when an
//! assertion fails (`down.sh` removes every process, mount, namespace, interface and
//! cgroup).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::tools::run_command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One real node per machine (its bridge and 10.96.0.1:443 are machine-wide): a
/// directory created atomically under /run serializes the real-node tests of
/// several checkouts. A lock whose process is gone is taken over.
pub struct MachineLock(PathBuf);

impl MachineLock {
    /// Take the machine's real-node lock, waiting up to 20 minutes for its holder.
    pub fn acquire() -> Self {
        let dir = PathBuf::from("/run/lifeline-real-node.lock");
        let me = format!("{} {}", std::process::id(), root().display());
        let started = Instant::now();
        let mut told = Instant::now() - Duration::from_secs(60);
        loop {
            if std::fs::create_dir(&dir).is_ok() {
                std::fs::write(dir.join("owner"), &me).expect("write the lock owner");
                return Self(dir);
            }
            let owner = std::fs::read_to_string(dir.join("owner")).unwrap_or_default();
            let pid = owner.split_whitespace().next().unwrap_or("");
            let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
            if !alive && started.elapsed() > Duration::from_secs(2) {
                // the owner died without unlocking (or never wrote its name)
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1200),
                "the real node is still in use by {owner} after 20 minutes"
            );
            if told.elapsed() > Duration::from_secs(30) {
                eprintln!("waiting for the real node: in use by {owner}");
                told = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real-node plane; stopped on drop when this test started it.
pub struct RealPlane {
    started_here: bool,
    // dropped after the plane is down (fields drop after Drop::drop)
    _lock: MachineLock,
}

impl RealPlane {
    /// Take the lock and start the plane unless it runs already.
    pub fn up() -> Self {
        let lock = MachineLock::acquire();
        let status = Command::new(root().join("tests/testenv/status.sh"))
            .env("NODE", "real")
            .output()
            .expect("run status.sh");
        let started_here = !status.status.success();
        // Constructed before up.sh runs: a failed start is torn down as well.
        let plane = Self {
            started_here,
            _lock: lock,
        };
        let t = Instant::now();
        run_command(Command::new(root().join("tests/testenv/up.sh")).env("NODE", "real"));
        eprintln!(
            "real-node plane {} in {:.1} s",
            if started_here { "started" } else { "reused" },
            t.elapsed().as_secs_f64()
        );
        plane
    }

    /// Import an OCI archive into the node's image store.
    pub fn import(&self, archive: &Path) {
        assert!(
            archive.exists(),
            "{} is missing: run `make release images-test`",
            archive.display()
        );
        run_command(
            Command::new(root().join("tests/testenv/node.sh"))
                .env("NODE", "real")
                .arg("import")
                .arg(archive),
        );
    }
}

impl Drop for RealPlane {
    fn drop(&mut self) {
        if self.started_here {
            let t = Instant::now();
            let _ = Command::new(root().join("tests/testenv/down.sh"))
                .env("NODE", "real")
                .status();
            eprintln!(
                "real-node plane stopped in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
}
