//! A real-node run that was killed (a CI job or a session ended mid-test) leaves
//! the machine-wide bridge `lifeline0` and the owner file naming its checkout.
//! The next run must clean that up and start, not fail with "belongs to another
//! testenv" until someone runs the dead checkout's `down.sh` by hand.
//!
//! Needs root and the pause image (`make images-test`); `LIFELINE_SKIP_CLUSTER_TESTS=1`
//! skips it like the other cluster tests. It stops a real-node plane of this
//! checkout that is already running, and stops the one it starts.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::real_plane::{MachineLock, RealPlane};

const OWNER_FILE: &str = "/run/lifeline-testenv.owner";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sh(script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("run sh")
        .success()
}

#[test]
fn a_real_node_left_by_a_killed_run_in_another_checkout_does_not_block_the_next() {
    if std::env::var("LIFELINE_SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        eprintln!("LIFELINE_SKIP_CLUSTER_TESTS=1: skipping the real-node test");
        return;
    }
    // a checkout that no longer runs anything (removed again at the end)
    let gone = root().join(format!("target/takeover-test-{}", std::process::id()));
    let gone_testenv = gone.join("target/testenv-real");
    {
        let _lock = MachineLock::acquire();
        // Start from no real node at all (down.sh is idempotent).
        assert!(
            Command::new(root().join("tests/testenv/down.sh"))
                .env("NODE", "real")
                .status()
                .expect("run down.sh")
                .success(),
            "down.sh failed"
        );
        // What the killed run left: its node's pid file names a process that is gone,
        // the bridge exists and the owner file names that checkout's testenv.
        std::fs::create_dir_all(gone_testenv.join("run")).unwrap();
        let mut child = Command::new("true").spawn().expect("spawn true");
        let dead_pid = child.id();
        child.wait().unwrap();
        std::fs::write(gone_testenv.join("run/node.pid"), format!("{dead_pid}\n")).unwrap();
        assert!(
            sh("ip link show lifeline0 >/dev/null 2>&1 || ip link add lifeline0 type bridge"),
            "cannot add the bridge"
        );
        std::fs::write(OWNER_FILE, format!("{}\n", gone_testenv.display())).unwrap();
    }

    // The next run starts its plane on the same machine.
    let plane = RealPlane::up();
    let owner = std::fs::read_to_string(OWNER_FILE).expect("owner file after up");
    assert_eq!(
        owner.trim(),
        root().join("target/testenv-real").display().to_string(),
        "the bridge should now belong to this checkout's real node"
    );
    assert!(
        sh("ip -4 addr show dev lifeline0 | grep -q 'inet 10.244.0.1/24'"),
        "the bridge should carry the node address again"
    );
    let nodes = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(root().join("target/testenv-real/kubeconfig"))
        .args(["get", "nodes", "-o", "name"])
        .output()
        .expect("run kubectl");
    assert!(
        String::from_utf8_lossy(&nodes.stdout).contains("node/"),
        "the real node should have registered: {}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    drop(plane);
    assert!(
        !sh("ip link show lifeline0 >/dev/null 2>&1"),
        "down.sh should remove the bridge it took over"
    );
    std::fs::remove_dir_all(&gone).expect("remove the stand-in checkout");
}
