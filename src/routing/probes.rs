//! `probes.json`: the destinations the SIP edges probe, with each one's probe settings.
//!
//! It sits beside the dispatcher list in the routing ConfigMap, so the sidecar that
//! already watches that one object (`lifeline sip-sync`) learns what to probe without
//! any more RBAC. It lists every destination the policy *can* route to — every tier's
//! trunk endpoints and static `uri` targets, not only the active ones — because an edge
//! must keep probing a carrier that was taken out of the routing to see it come back.
//! It does not depend on health, so it changes only when the spec does.
//!
//! Endpoints of trunks with a `spec.tls.caBundle` are left out: the edge may not read
//! the bundle, so its TLS probe would fail for a reason that says nothing about the
//! carrier. The operator alone judges them.

use serde::{Deserialize, Serialize};

use crate::crd::ProbeSpec;

/// Data key of the probe list in the routing ConfigMap.
pub const PROBES_KEY: &str = "probes.json";
/// Format version; sip-sync refuses other versions with a clear error.
pub const VERSION: u32 = 1;

/// The document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeList {
    /// [`VERSION`].
    pub version: u32,
    /// One entry per destination URI, sorted by URI.
    pub targets: Vec<EdgeTarget>,
}

/// One destination to probe from the edge.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeTarget {
    /// The destination URI, exactly as in the Trunk or the policy (and in the routing).
    pub uri: String,
    /// Period, timeout, thresholds and alive codes of its Trunk (or of the policy's
    /// `spec.probe` for a static target).
    pub probe: ProbeSpec,
    /// TLS name to verify, when the Trunk sets `spec.tls.serverName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Render the probe list: sorted by URI, the first entry of a URI wins, stable text.
pub fn render(mut targets: Vec<EdgeTarget>) -> String {
    targets.sort_by(|a, b| a.uri.cmp(&b.uri));
    targets.dedup_by(|b, a| a.uri == b.uri);
    let list = ProbeList {
        version: VERSION,
        targets,
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_deduplicated_and_stable() {
        let t = |uri: &str, period| EdgeTarget {
            uri: uri.into(),
            probe: ProbeSpec {
                period_seconds: period,
                ..ProbeSpec::default()
            },
            server_name: None,
        };
        let a = render(vec![t("sip:b", 2), t("sip:a", 1), t("sip:b", 9)]);
        let b = render(vec![t("sip:a", 1), t("sip:b", 2)]);
        assert_eq!(a, b);
        let list: ProbeList = serde_json::from_str(&a).unwrap();
        assert_eq!(list.version, VERSION);
        assert_eq!(list.targets.len(), 2);
        assert_eq!(list.targets[1].probe.period_seconds, 2);
        assert!(a.contains("\"periodSeconds\": 2"), "{a}");
    }
}
