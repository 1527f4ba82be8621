//! Live calls from the SIP edges, for the FallbackPolicy controller: which `SipEdge`s
//! serve a policy, which of their members still count, and the measured load
//! ([`crate::plan::demand::aggregate`], pure) that goes into the plan and the status.
//!
//! A member counts unless it names a pod (`podUid`) that no longer exists (or exists
//! with another UID: a replacement with the same name). A member without `podUid`
//! counts until it removes its own entry. The pod check is a GET of the pod's metadata,
//! remembered for [`POD_CHECK_TTL`], and only for members that report calls: a quiet
//! member adds nothing to the figures, so the check would buy nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use crate::crd::{EdgeMember, FallbackPolicy, MeasuredLoad, SipEdge};
use crate::plan::{LiveCalls, Observed};

/// How long a pod check is believed. A policy whose edges report calls is requeued
/// within this time, so the calls of a member whose pod died without removing its
/// entry stop counting within about twice this.
pub const POD_CHECK_TTL: Duration = Duration::from_secs(10);

/// `(namespace, pod name)`.
type PodKey = (String, String);

/// Remembered pod checks: the pod's UID (`None`: no such pod) and when it was looked
/// up.
#[derive(Default)]
pub struct PodChecks {
    seen: Mutex<HashMap<PodKey, (Option<String>, Instant)>>,
}

impl PodChecks {
    /// Whether `member` (of an edge in `ns`) still counts.
    async fn counts(&self, client: &Client, ns: &str, member: &EdgeMember) -> bool {
        let Some(uid) = &member.pod_uid else {
            return true;
        };
        let key = (ns.to_string(), member.name.clone());
        let cached = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(_, at)| at.elapsed() < POD_CHECK_TTL)
            .map(|(u, _)| u.clone());
        let found = match cached {
            Some(found) => found,
            None => {
                let api: Api<Pod> = Api::namespaced(client.clone(), ns);
                match api.get_metadata_opt(&member.name).await {
                    Ok(pod) => {
                        let found = pod.and_then(|p| p.uid());
                        self.seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, (found.clone(), Instant::now()));
                        found
                    }
                    // Cannot tell (API away, no permission): keep counting, rather
                    // than drop live calls from the sizing on an API hiccup.
                    Err(e) => {
                        tracing::debug!(member = %member.name, error = %e, "could not check an edge member's pod");
                        return true;
                    }
                }
            }
        };
        found.as_deref() == Some(uid.as_str())
    }

    /// Forget checks older than the TTL (bounded memory over pod churn).
    fn prune(&self) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, at)| at.elapsed() < POD_CHECK_TTL);
    }
}

/// Whether `edge` serves `policy`'s routing (same namespace, same ConfigMap).
pub fn serves(edge: &SipEdge, policy: &FallbackPolicy) -> bool {
    edge.namespace() == policy.namespace()
        && edge.spec.routing_config_map == policy.spec.routing_config_map.name
}

/// The measured load of `policy` from the edges in `edges` that serve it: the status
/// figures and the planner's [`LiveCalls`]. `None` when no edge member serves it.
pub async fn measure(
    policy: &FallbackPolicy,
    ns: &str,
    observed: &Observed,
    edges: &Store<SipEdge>,
    pods: &PodChecks,
    client: &Client,
) -> Option<(MeasuredLoad, LiveCalls)> {
    pods.prune();
    let mut members = Vec::new();
    for edge in edges.state().iter().filter(|e| serves(e, policy)) {
        for m in edge.status.iter().flat_map(|s| &s.members) {
            if m.calls.is_empty() || pods.counts(client, ns, m).await {
                members.push(m.clone());
            } else {
                tracing::debug!(edge = %edge.name_any(), member = %m.name, "edge member's pod is gone: its calls do not count");
            }
        }
    }
    crate::plan::demand::aggregate(&policy.spec, observed, &members)
}
