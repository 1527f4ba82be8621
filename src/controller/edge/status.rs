//! The pure part of the SipEdge status: the `Isolated` condition and the member
//! summary, unit-tested without a cluster.

use kube::ResourceExt;

use super::reasons;
#[cfg(test)]
use crate::crd::find_condition;
use crate::crd::{EDGE_ISOLATED, EndpointState, SipEdge, condition, merge_condition};
use crate::probe::quorum::MemberView;

/// The conditions to write and the `Isolated` message, or `None` when nothing changed.
pub(super) fn next_conditions(
    edge: &SipEdge,
    members: &[MemberView],
    isolated: &[String],
) -> Option<(
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    String,
)> {
    let old = edge.status.clone().unwrap_or_default();
    let name = edge.name_any();
    let message = if isolated.is_empty() {
        "no member sees every destination fail while other vantages see them answer".to_string()
    } else {
        let detail: Vec<String> = isolated
            .iter()
            .map(|m| {
                let down = members
                    .iter()
                    .find(|v| v.edge == name && &v.member == m)
                    .map(|v| {
                        v.probes
                            .values()
                            .filter(|p| p.0 == EndpointState::Down)
                            .count()
                    })
                    .unwrap_or(0);
                format!("{m} sees all {down} destinations fail")
            })
            .collect();
        format!(
            "edge {name} lost its uplink: {} while other vantages see them answer; its probes are not believed and no carrier fails over because of it. Steer calls away from this edge's region (see the runbook 'one edge isolated')",
            detail.join(", ")
        )
    };
    let reason = if isolated.is_empty() {
        reasons::CONNECTED
    } else {
        reasons::UPLINK_LOST
    };
    let mut conditions = old.conditions.clone();
    merge_condition(
        &mut conditions,
        condition(
            EDGE_ISOLATED,
            !isolated.is_empty(),
            reason,
            message.clone(),
            edge.metadata.generation,
        ),
        jiff::Timestamp::now(),
    );
    let same = conditions == old.conditions
        && old.isolated_members == isolated
        && old.member_summary.as_deref() == Some(member_summary(edge, members).as_str())
        && old.observed_generation == edge.metadata.generation;
    (!same).then_some((conditions, message))
}

/// `live/reported` for `kubectl get`: members whose pod still exists (or that run
/// outside a pod) over every entry in `status.members`.
pub(super) fn member_summary(edge: &SipEdge, members: &[MemberView]) -> String {
    let name = edge.name_any();
    let mine: Vec<&MemberView> = members.iter().filter(|m| m.edge == name).collect();
    let live = mine.iter().filter(|m| m.fresh).count();
    format!("{live}/{}", mine.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SipEdgeSpec, SipEdgeStatus};

    fn member(name: &str, down: usize) -> MemberView {
        MemberView {
            edge: "edge".into(),
            member: name.into(),
            fresh: true,
            probes: (0..down)
                .map(|i| (format!("sip:{i}"), (EndpointState::Down, None)))
                .collect(),
        }
    }

    #[test]
    fn isolated_condition_is_written_once_and_cleared() {
        let mut edge = SipEdge::new(
            "edge",
            SipEdgeSpec {
                routing_config_map: "routing".into(),
            },
        );
        edge.metadata.generation = Some(1);
        let members = [member("p1", 2), member("p2", 0)];
        let (conditions, message) = next_conditions(&edge, &members, &["p1".to_string()]).unwrap();
        let c = find_condition(&conditions, EDGE_ISOLATED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::UPLINK_LOST)
        );
        assert!(
            message.contains("p1 sees all 2 destinations fail"),
            "{message}"
        );
        edge.status = Some(SipEdgeStatus {
            observed_generation: Some(1),
            conditions: conditions.clone(),
            isolated_members: vec!["p1".into()],
            member_summary: Some(member_summary(&edge, &members)),
            ..Default::default()
        });
        assert!(next_conditions(&edge, &members, &["p1".to_string()]).is_none());
        let (cleared, _) = next_conditions(&edge, &members, &[]).unwrap();
        let c = find_condition(&cleared, EDGE_ISOLATED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::CONNECTED)
        );
    }
}
