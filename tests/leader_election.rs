//! Two operator processes against one control plane: exactly one holds the Lease and
//! runs the controllers; when it dies (SIGKILL) the other takes over within the lease
//! duration, and when it stops cleanly (SIGTERM) it hands over at once.

mod common;

use std::time::{Duration, Instant};

use common::operator::Operator;
use k8s_openapi::api::coordination::v1::Lease;

const LEASE_SECONDS: u64 = 6;

/// An operator replica `identity` with its own log and metrics on `127.0.60.1:port`.
fn start_operator(ns: &str, identity: &str, port: u16) -> Operator {
    let addr = format!("127.0.60.1:{port}");
    let mut cmd = common::operator::command(ns, &addr);
    cmd.args(["--leader-election-namespace", ns, "--identity", identity])
        .args(["--lease-duration-seconds", &LEASE_SECONDS.to_string()]);
    let log = format!(
        "{}/target/leader-{identity}.log",
        env!("CARGO_MANIFEST_DIR")
    );
    Operator::spawn(identity, &mut cmd, &addr, Some(std::path::Path::new(&log)))
}

async fn holder(ns: &common::TestNamespace) -> Option<String> {
    let lease = ns
        .api::<Lease>()
        .get_opt("lifeline-operator")
        .await
        .ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Wait until exactly one of the operators reports leadership; returns its index.
async fn single_leader(ops: &[&Operator], within: Duration) -> usize {
    common::eventually(within, "exactly one operator leads", || async {
        let mut leaders = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if op.is_leader().await? {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

#[tokio::test]
async fn one_leader_and_fast_takeover() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client, "leader", &[]).await;

    let a = start_operator(&ns.name, "op-a", 19081);
    let b = start_operator(&ns.name, "op-b", 19082);
    // Both start at the same moment: at no sample may both lead.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let (la, lb) = (a.is_leader().await, b.is_leader().await);
        assert!(la != Some(true) || lb != Some(true), "two leaders at once");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = single_leader(&[&a, &b], Duration::from_secs(30)).await;
    let (leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    assert_eq!(
        holder(&ns).await.as_deref(),
        Some(leader.name.as_str()),
        "the Lease names the leader"
    );
    // The standby stays a standby while the leader renews (over more than one lease period).
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(LEASE_SECONDS + 2) {
        assert_eq!(
            standby.is_leader().await,
            Some(false),
            "the standby leads while the Lease is held"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        standby.is_leader().await,
        Some(false),
        "the standby must not lead while the Lease is held"
    );
    assert_eq!(leader.is_leader().await, Some(true));

    // SIGKILL: no release, the standby takes over once the lease expires.
    leader.process.signal("KILL");
    let killed = Instant::now();
    common::eventually(
        Duration::from_secs(LEASE_SECONDS * 3),
        "the standby takes over after SIGKILL",
        || async { (standby.is_leader().await == Some(true)).then_some(()) },
    )
    .await;
    let takeover = killed.elapsed();
    assert_eq!(holder(&ns).await.as_deref(), Some(standby.name.as_str()));
    eprintln!(
        "takeover after SIGKILL: {:.2} s (lease duration {LEASE_SECONDS} s)",
        takeover.as_secs_f64()
    );
    assert!(
        takeover <= Duration::from_secs(LEASE_SECONDS + 3),
        "takeover within the lease duration (+ one renewal period): took {takeover:?}"
    );

    // SIGTERM: a clean shutdown releases the Lease and a new replica takes over at once.
    let c = start_operator(&ns.name, "op-c", 19083);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.is_leader().await,
        Some(false),
        "a new replica waits while the Lease is held"
    );
    standby.process.signal("TERM");
    let stopped = Instant::now();
    common::eventually(
        Duration::from_secs(LEASE_SECONDS * 3),
        "handoff after SIGTERM",
        || async { (c.is_leader().await == Some(true)).then_some(()) },
    )
    .await;
    let handoff = stopped.elapsed();
    eprintln!("handoff after SIGTERM: {:.2} s", handoff.as_secs_f64());
    drop(leader);
    drop(standby);
    drop(c);
}
