//! Sizing math for bot pools: how many replicas a demand needs, when a pool may
//! shrink, and what to do with a user's HPA floor. Plain functions over plain data.

use std::time::Duration;

use jiff::Timestamp;

/// What the pool's spec says about sizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// Concurrent calls one replica carries (at least 1).
    pub calls_per_replica: u32,
    /// Extra capacity in percent on top of the demand.
    pub headroom_percent: u32,
    /// Lower bound of replicas.
    pub min: u32,
    /// Upper bound of replicas.
    pub max: u32,
}

/// The replicas a demand calls for, before stabilization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// `clamp(ceil(demand × (1 + headroom/100) / callsPerReplica), min, max)`.
    pub replicas: u32,
    /// Demand plus headroom, in calls (rounded up).
    pub calls_with_headroom: u64,
    /// Calls beyond what `max` replicas carry; 0 when `max` covers the demand.
    pub shortfall_calls: u64,
}

/// Replicas needed for `demand` concurrent calls.
///
/// Integer arithmetic throughout (u64), so there is no float rounding at the edges
/// (e.g. 100 calls, 20 % headroom, 12 per replica is exactly 10 replicas, not 11).
pub fn recommend(demand: u32, sizing: Sizing) -> Recommendation {
    let per_replica = u64::from(sizing.calls_per_replica.max(1));
    let scaled = u64::from(demand) * (100 + u64::from(sizing.headroom_percent));
    let calls_with_headroom = scaled.div_ceil(100);
    let needed = scaled.div_ceil(100 * per_replica);
    // min > max cannot pass the CRD's CEL rule; if it ever does, max wins.
    let min = u64::from(sizing.min.min(sizing.max));
    let replicas = needed.clamp(min, u64::from(sizing.max));
    let capacity_at_max = u64::from(sizing.max) * per_replica;
    Recommendation {
        // `replicas` is at most `max`, a u32.
        replicas: u32::try_from(replicas).unwrap_or(sizing.max),
        calls_with_headroom,
        shortfall_calls: calls_with_headroom.saturating_sub(capacity_at_max),
    }
}

/// The replica target after the scale-down stabilization window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stabilized {
    /// Replicas to run now.
    pub target: u32,
    /// When the recommendation first fell below the running target, while the
    /// window has not yet passed; `None` when no scale-down is pending.
    pub lower_since: Option<Timestamp>,
    /// Time left until the pending scale-down, to requeue for it.
    pub wait: Option<Duration>,
}

/// Grow at once; shrink only once the recommendation has stayed below the current
/// target for `window`.
///
/// `current` is the target lifeline set last (`None` before the first one);
/// `lower_since` is the start of the pending scale-down, if any. Any recommendation
/// at or above `current` cancels a pending scale-down, so demand must stay lower for
/// the whole window. After the window the pool shrinks to the recommendation of that
/// moment (not the highest one seen in the window: the window only started because
/// every recommendation since was below `current`).
pub fn stabilize(
    current: Option<u32>,
    recommended: u32,
    lower_since: Option<Timestamp>,
    window: Duration,
    now: Timestamp,
) -> Stabilized {
    let now_target = Stabilized {
        target: recommended,
        lower_since: None,
        wait: None,
    };
    let Some(current) = current else {
        return now_target;
    };
    if recommended >= current {
        return now_target;
    }
    // A start in the future (clock skew, a hand-edited annotation) counts as now.
    let since = lower_since.filter(|s| *s <= now).unwrap_or(now);
    let elapsed = now.duration_since(since).unsigned_abs();
    if elapsed >= window {
        return now_target;
    }
    Stabilized {
        target: current,
        lower_since: Some(since),
        wait: Some(window - elapsed),
    }
}

/// What lifeline should do with a user's HPA in `HpaFloor` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorAction {
    /// Nothing to write.
    Keep,
    /// Set `minReplicas` to `min_replicas` and remember the user's own value.
    Raise {
        /// The new floor.
        min_replicas: i32,
        /// The user's `minReplicas`, to restore later.
        user_min: i32,
    },
    /// Put the user's `minReplicas` back and forget it.
    Restore {
        /// The user's value.
        min_replicas: i32,
    },
}

/// The HPA as lifeline sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpaView {
    /// `spec.minReplicas` now (the API server defaults it to 1).
    pub min_replicas: i32,
    /// `spec.maxReplicas`.
    pub max_replicas: i32,
    /// The user's value remembered in the `lifeline.dev/user-min-replicas` annotation.
    pub remembered_user_min: Option<i32>,
    /// Whether lifeline's field manager owns `spec.minReplicas`. When it does not, the
    /// current value is the user's (e.g. they changed it after lifeline raised it).
    pub floor_owned: bool,
}

/// Decide the HPA write for a `floor` (the stabilized target).
///
/// Returns the action and the floor the HPA can actually take (`maxReplicas` caps it).
pub fn hpa_floor(hpa: HpaView, floor: u32) -> (FloorAction, i32) {
    let user_min = match (hpa.floor_owned, hpa.remembered_user_min) {
        (true, Some(remembered)) => remembered,
        _ => hpa.min_replicas,
    };
    let max = hpa.max_replicas.max(1);
    let floor = i32::try_from(floor).unwrap_or(i32::MAX).min(max);
    if floor > user_min {
        let up_to_date = hpa.min_replicas == floor
            && hpa.floor_owned
            && hpa.remembered_user_min == Some(user_min);
        let action = if up_to_date {
            FloorAction::Keep
        } else {
            FloorAction::Raise {
                min_replicas: floor,
                user_min,
            }
        };
        return (action, floor);
    }
    let raised = hpa.remembered_user_min.is_some() || hpa.min_replicas != user_min;
    let action = if raised {
        FloorAction::Restore {
            min_replicas: user_min,
        }
    } else {
        FloorAction::Keep
    };
    (action, floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sizing(calls_per_replica: u32, headroom_percent: u32, min: u32, max: u32) -> Sizing {
        Sizing {
            calls_per_replica,
            headroom_percent,
            min,
            max,
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    #[test]
    fn demand_with_headroom_is_rounded_up_to_whole_replicas() {
        // 100 calls + 20 % = 120 calls; 12 per replica = exactly 10.
        assert_eq!(recommend(100, sizing(12, 20, 1, 50)).replicas, 10);
        // 101 calls + 20 % = 121.2 calls → 11 replicas.
        assert_eq!(recommend(101, sizing(12, 20, 1, 50)).replicas, 11);
        // No headroom: 10 calls at 10 per replica is one replica, 11 is two.
        assert_eq!(recommend(10, sizing(10, 0, 0, 50)).replicas, 1);
        assert_eq!(recommend(11, sizing(10, 0, 0, 50)).replicas, 2);
    }

    #[test]
    fn no_demand_keeps_the_minimum() {
        assert_eq!(recommend(0, sizing(10, 20, 2, 5)).replicas, 2);
        assert_eq!(recommend(0, sizing(10, 20, 0, 5)).replicas, 0);
    }

    #[test]
    fn max_caps_and_reports_the_shortfall() {
        // 500 calls + 20 % = 600; 10 replicas × 50 = 500 → 100 calls short.
        let r = recommend(500, sizing(50, 20, 1, 10));
        assert_eq!(r.replicas, 10);
        assert_eq!(r.calls_with_headroom, 600);
        assert_eq!(r.shortfall_calls, 100);
        assert_eq!(recommend(400, sizing(50, 20, 1, 10)).shortfall_calls, 0);
    }

    #[test]
    fn extreme_inputs_do_not_overflow() {
        let r = recommend(u32::MAX, sizing(1, 500, 0, 1000));
        assert_eq!(r.replicas, 1000);
        assert!(r.shortfall_calls > 0);
    }

    #[test]
    fn scale_up_is_immediate_and_cancels_a_pending_scale_down() {
        let s = stabilize(Some(3), 5, Some(at(0)), Duration::from_secs(60), at(10));
        assert_eq!((s.target, s.lower_since, s.wait), (5, None, None));
        let s = stabilize(Some(3), 3, Some(at(0)), Duration::from_secs(60), at(10));
        assert_eq!((s.target, s.lower_since), (3, None));
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let window = Duration::from_secs(60);
        let first = stabilize(Some(5), 2, None, window, at(0));
        assert_eq!(first.target, 5);
        assert_eq!(first.lower_since, Some(at(0)));
        assert_eq!(first.wait, Some(window));
        let later = stabilize(Some(5), 3, first.lower_since, window, at(59));
        assert_eq!(later.target, 5);
        assert_eq!(later.lower_since, Some(at(0)));
        assert_eq!(later.wait, Some(Duration::from_secs(1)));
        let done = stabilize(Some(5), 3, later.lower_since, window, at(60));
        assert_eq!((done.target, done.lower_since, done.wait), (3, None, None));
    }

    #[test]
    fn first_target_and_zero_window_apply_at_once() {
        assert_eq!(
            stabilize(None, 4, None, Duration::from_secs(60), at(0)).target,
            4
        );
        assert_eq!(stabilize(Some(9), 4, None, Duration::ZERO, at(0)).target, 4);
    }

    #[test]
    fn a_start_in_the_future_restarts_the_window() {
        let s = stabilize(Some(5), 2, Some(at(500)), Duration::from_secs(60), at(0));
        assert_eq!((s.target, s.lower_since), (5, Some(at(0))));
    }

    fn hpa(min: i32, max: i32, remembered: Option<i32>, owned: bool) -> HpaView {
        HpaView {
            min_replicas: min,
            max_replicas: max,
            remembered_user_min: remembered,
            floor_owned: owned,
        }
    }

    #[test]
    fn floor_above_the_users_minimum_raises_it_and_remembers_it() {
        assert_eq!(
            hpa_floor(hpa(1, 10, None, false), 4),
            (
                FloorAction::Raise {
                    min_replicas: 4,
                    user_min: 1
                },
                4
            )
        );
        // Already raised: nothing to write.
        assert_eq!(hpa_floor(hpa(4, 10, Some(1), true), 4).0, FloorAction::Keep);
        // Raised further.
        assert_eq!(
            hpa_floor(hpa(4, 10, Some(1), true), 6).0,
            FloorAction::Raise {
                min_replicas: 6,
                user_min: 1
            }
        );
    }

    #[test]
    fn floor_is_capped_by_the_hpa_maximum() {
        assert_eq!(
            hpa_floor(hpa(2, 5, None, false), 9),
            (
                FloorAction::Raise {
                    min_replicas: 5,
                    user_min: 2
                },
                5
            )
        );
    }

    #[test]
    fn floor_at_or_below_the_users_minimum_restores_it() {
        assert_eq!(
            hpa_floor(hpa(4, 10, Some(2), true), 2).0,
            FloorAction::Restore { min_replicas: 2 }
        );
        assert_eq!(hpa_floor(hpa(2, 10, None, true), 1).0, FloorAction::Keep);
        assert_eq!(hpa_floor(hpa(3, 10, None, false), 0).0, FloorAction::Keep);
    }

    #[test]
    fn a_user_who_took_the_floor_back_is_respected() {
        // The user force-applied minReplicas 6 after lifeline had raised it to 4.
        assert_eq!(
            hpa_floor(hpa(6, 10, Some(1), false), 4).0,
            FloorAction::Restore { min_replicas: 6 }
        );
    }

    proptest! {
        #[test]
        fn recommendation_stays_within_bounds(
            demand in 0u32..2_000_000,
            per in 1u32..10_000,
            headroom in 0u32..=500,
            min in 0u32..=1000,
            extra in 0u32..=1000,
        ) {
            let max = (min + extra).clamp(1, 1000);
            let min = min.min(max);
            let r = recommend(demand, sizing(per, headroom, min, max));
            prop_assert!(r.replicas >= min && r.replicas <= max);
            // Without a shortfall the replicas carry the demand with headroom.
            if r.shortfall_calls == 0 {
                prop_assert!(u64::from(r.replicas) * u64::from(per) >= r.calls_with_headroom);
            } else {
                prop_assert_eq!(r.replicas, max);
            }
        }

        #[test]
        fn recommendation_is_monotonic_in_demand(
            a in 0u32..2_000_000,
            b in 0u32..2_000_000,
            per in 1u32..10_000,
            headroom in 0u32..=500,
            min in 0u32..=100,
            max in 100u32..=1000,
        ) {
            let (lo, hi) = (a.min(b), a.max(b));
            let s = sizing(per, headroom, min, max);
            prop_assert!(recommend(lo, s).replicas <= recommend(hi, s).replicas);
        }

        #[test]
        fn stabilized_target_never_undershoots_before_the_window(
            current in 0u32..100,
            recommended in 0u32..100,
            since in 0i64..1000,
            now in 0i64..1000,
            window in 0u64..1000,
        ) {
            let s = stabilize(Some(current), recommended, Some(at(since)), Duration::from_secs(window), at(now));
            prop_assert!(s.target >= recommended);
            prop_assert!(s.target == current || s.target == recommended);
            if s.target < current {
                let began = if since <= now { since } else { now };
                prop_assert!((now - began) as u64 >= window);
            }
        }
    }
}
