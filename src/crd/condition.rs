//! Conditions in the `metav1.Condition` shape, and the one place that decides
//! whether a condition really changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Trunk: at least one endpoint answers probes.
pub const TRUNK_HEALTHY: &str = "Healthy";
/// Trunk condition: some endpoint is only reachable at destinations the operator's
/// allow/deny list forbids (it is not probed).
pub const TRUNK_FORBIDDEN: &str = "Forbidden";
/// Trunk condition: the namespace's probe quota leaves no room for this trunk.
pub const TRUNK_QUOTA_EXCEEDED: &str = "QuotaExceeded";
/// SipEdge: a member sees every destination fail while other vantages see them
/// answer (its own uplink is gone); its probes are not believed.
pub const EDGE_ISOLATED: &str = "Isolated";
/// BotPool: enough ready replicas to be useful.
pub const BOTPOOL_AVAILABLE: &str = "Available";
/// BotPool: `replicas.max` cannot cover the demand.
pub const BOTPOOL_SCALING_LIMITED: &str = "ScalingLimited";
/// FallbackPolicy: routing rendered and published.
pub const POLICY_READY: &str = "Ready";
/// FallbackPolicy: at least one region is not Active, or a reference is missing.
pub const POLICY_DEGRADED: &str = "Degraded";
/// FallbackPolicy: healthy capacity covers `expectedConcurrentCalls`.
pub const POLICY_CAPACITY_SUFFICIENT: &str = "CapacitySufficient";

/// Build a condition. `lastTransitionTime` is filled by [`merge_condition`].
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Put `new` into `conditions` (keyed by type). The transition time is kept when the
/// status did not change, so that an unchanged condition never causes a status write.
pub fn merge_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: jiff::Timestamp) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                Time(now)
            };
            *old = new;
        }
        None => {
            new.last_transition_time = Time(now);
            conditions.push(new);
        }
    }
}

/// Find a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of this type exists with status "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let t0 = jiff::Timestamp::from_second(1_000).unwrap();
        let t1 = jiff::Timestamp::from_second(2_000).unwrap();
        let mut conds = Vec::new();
        merge_condition(
            &mut conds,
            condition("Healthy", true, "Up", "all up", Some(1)),
            t0,
        );
        merge_condition(
            &mut conds,
            condition("Healthy", true, "Up", "still up", Some(2)),
            t1,
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, Time(t0));
        assert_eq!(conds[0].message, "still up");
        merge_condition(
            &mut conds,
            condition("Healthy", false, "Down", "gone", Some(2)),
            t1,
        );
        assert_eq!(conds[0].last_transition_time, Time(t1));
    }
}
