//! What this edge member reports to its `SipEdge`: the routing it confirmed, its own
//! probes of the destinations (vantage), its live calls and Kamailio's failure marks.
//!
//! Every part of sip-sync that learns something updates one shared [`EdgeMember`]
//! through a [`Reporter`]; one task writes the member's entry of `SipEdge.status.members`
//! by server-side apply with a field manager of its own ([`member_field_manager`]), so
//! members never overwrite each other. Writes happen only when the entry changed, at
//! most once per [`MIN_INTERVAL`]; a quiet edge writes nothing. On a clean stop the
//! member removes its entry (an apply without it), so the operator stops counting it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::crd::{EdgeMember, SipEdge, member_field_manager};

/// Shortest time between two writes of one member's entry.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Wait before retrying a failed write (the API server may be away).
const RETRY: Duration = Duration::from_secs(5);

/// Where and as whom this member reports (flags of `lifeline sip-sync`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReportArgs {
    /// The `SipEdge` (in the ConfigMap's namespace) this member reports to. Without
    /// it sip-sync reports nothing and only applies the routing.
    #[arg(long = "edge", env = "LIFELINE_EDGE")]
    pub edge: Option<String>,
    /// This member's name in `SipEdge.status.members` (in a pod: the pod name, from
    /// the downward API).
    #[arg(long = "edge-member", env = "POD_NAME")]
    pub member: Option<String>,
    /// This member's pod UID (downward API), so the operator can tell a member whose
    /// pod is gone.
    #[arg(long = "pod-uid", env = "POD_UID")]
    pub pod_uid: Option<String>,
}

/// A handle to update this member's report; cheap to clone. Updates that change
/// nothing are not written.
#[derive(Clone)]
pub struct Reporter {
    tx: watch::Sender<EdgeMember>,
}

impl Reporter {
    /// A reporter for member `name`, and the receiver its writer task reads.
    pub fn new(name: &str, pod_uid: Option<String>) -> (Self, watch::Receiver<EdgeMember>) {
        let member = EdgeMember {
            name: name.to_string(),
            pod_uid,
            started_at: Some(Time(jiff::Timestamp::now())),
            ..Default::default()
        };
        let (tx, rx) = watch::channel(member);
        (Self { tx }, rx)
    }

    /// Change the report; it is written only if `f` changed something.
    pub fn update(&self, f: impl FnOnce(&mut EdgeMember)) {
        self.tx.send_if_modified(|m| {
            let before = m.clone();
            f(m);
            *m != before
        });
    }

    /// Record that Kamailio runs the routing with this content hash.
    pub fn routing_confirmed(&self, hash: &str) {
        self.update(|m| {
            if m.routing_hash.as_deref() != Some(hash) {
                m.routing_hash = Some(hash.to_string());
                m.routing_confirmed_at = Some(Time(jiff::Timestamp::now()));
            }
        });
    }

    /// The current report (tests and the writer).
    pub fn current(&self) -> EdgeMember {
        self.tx.borrow().clone()
    }
}

/// The server-side apply body that makes `member` this manager's only entry.
pub fn apply_body(edge: &str, member: Option<&EdgeMember>) -> serde_json::Value {
    let members: Vec<&EdgeMember> = member.into_iter().collect();
    json!({
        "apiVersion": "lifeline.dev/v1alpha1",
        "kind": "SipEdge",
        "metadata": { "name": edge },
        "status": { "members": members },
    })
}

/// Write the member's entry whenever it changes (at most once per [`MIN_INTERVAL`])
/// until `shutdown`; then remove the entry.
pub async fn run_writer(
    api: Api<SipEdge>,
    edge: String,
    mut rx: watch::Receiver<EdgeMember>,
    shutdown: CancellationToken,
) {
    let name = rx.borrow().name.clone();
    let params = PatchParams::apply(&member_field_manager(&name)).force();
    let mut missing_logged = false;
    // The first report goes out at once (routing hash may still be empty).
    rx.mark_changed();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
        let member = rx.borrow_and_update().clone();
        let body = apply_body(&edge, Some(&member));
        match api.patch_status(&edge, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                missing_logged = false;
                tracing::debug!(edge = %edge, member = %name, "edge report written");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if !missing_logged {
                    tracing::warn!(edge = %edge, "SipEdge not found: this member's probes and calls are not reported until it exists (create it, or drop --edge)");
                    missing_logged = true;
                }
                rx.mark_changed();
                sleep_or_stop(RETRY, &shutdown).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(edge = %edge, error = %e, "cannot write the edge report; will retry");
                rx.mark_changed();
                sleep_or_stop(RETRY, &shutdown).await;
                continue;
            }
        }
        sleep_or_stop(MIN_INTERVAL, &shutdown).await;
    }
    // A clean stop: remove this member's entry so that nobody counts a vantage that
    // is gone. Bounded, so a dead API server cannot hold up the pod's termination.
    let body = apply_body(&edge, None);
    match tokio::time::timeout(
        Duration::from_secs(2),
        api.patch_status(&edge, &params, &Patch::Apply(&body)),
    )
    .await
    {
        Ok(Ok(_)) => tracing::info!(edge = %edge, member = %name, "edge member entry removed"),
        Ok(Err(e)) => {
            tracing::warn!(edge = %edge, error = %e, "could not remove this member's entry")
        }
        Err(_) => tracing::warn!(edge = %edge, "timed out removing this member's entry"),
    }
}

async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_that_change_nothing_are_not_signalled() {
        let (r, mut rx) = Reporter::new("edge-a", None);
        rx.borrow_and_update();
        r.routing_confirmed("abc");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        r.routing_confirmed("abc");
        assert!(
            !rx.has_changed().unwrap(),
            "same hash again is not a change"
        );
        assert_eq!(r.current().routing_hash.as_deref(), Some("abc"));
    }

    #[test]
    fn apply_body_holds_only_this_member() {
        let (r, _rx) = Reporter::new("edge-a", Some("uid-1".into()));
        let body = apply_body("edge", Some(&r.current()));
        assert_eq!(body["kind"], "SipEdge");
        assert_eq!(body["status"]["members"][0]["name"], "edge-a");
        assert_eq!(body["status"]["members"][0]["podUid"], "uid-1");
        let gone = apply_body("edge", None);
        assert_eq!(gone["status"]["members"].as_array().unwrap().len(), 0);
    }
}
