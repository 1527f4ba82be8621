//! Health learned from real calls (passive), combined with the OPTIONS probes
//! (active) into one endpoint state.
//!
//! The SIP edge marks a destination down when a call to it fails with one of the
//! route's failover codes (`failover.onStatusCodes`) and tries the next destination at
//! once; each edge member's sip-sync reports the marks it sees as
//! `SipEdge.status.members[].failureMarks`. This module decides what the operator
//! makes of them. Pure: no I/O, no clock; the caller keeps [`PassiveState`] per
//! endpoint and passes the time.
//!
//! # Rule
//!
//! - **Down at once** when any believed edge member (one not `Isolated`) reports a
//!   failure mark for the endpoint, whatever the probes say: a carrier whose border
//!   answers OPTIONS 200 while its core rejects every INVITE is down for calls.
//! - **Back** only after no believed member has reported a mark for
//!   `recover_after` (hysteresis). sip-sync itself holds a mark for 15 s after
//!   Kamailio last showed it, so a destination that keeps failing the few calls that
//!   reach it stays down without flapping.
//! - Otherwise the probes decide (`Up`, `Down`, `Unknown` as debounced by the probe
//!   thresholds).
//!
//! Once the planner takes a passively failed endpoint out of the routing it gets no
//! calls and so no new marks; after `recover_after` it returns and the next call tells
//! again (one call, retried on the next destination by the edge, per cycle). A carrier
//! that recovered stays back.

use jiff::{SignedDuration, Timestamp};

use crate::crd::{EdgeFailureMark, EndpointState};

/// Default time without any failure mark before a passively failed endpoint counts
/// as healthy again.
pub const DEFAULT_RECOVER_AFTER: SignedDuration = SignedDuration::from_secs(30);

/// What the operator remembers about one endpoint's passive health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveState {
    /// Since when real calls have failed it (the earliest `since` reported).
    pub failed_since: Option<Timestamp>,
    /// Since when no believed member has reported a mark (while still failed).
    pub clear_since: Option<Timestamp>,
    /// The SIP status code of the latest reported failure.
    pub status_code: Option<u16>,
}

impl PassiveState {
    /// True while real calls count the endpoint as failed.
    pub fn failed(&self) -> bool {
        self.failed_since.is_some()
    }
}

/// The next passive state of endpoint `uri`, from the marks reported by believed edge
/// members now (marks of isolated members must be left out by the caller).
pub fn next_state<'a>(
    uri: &str,
    marks: impl IntoIterator<Item = &'a EdgeFailureMark>,
    previous: PassiveState,
    now: Timestamp,
    recover_after: SignedDuration,
) -> PassiveState {
    let mine: Vec<&EdgeFailureMark> = marks.into_iter().filter(|m| m.uri == uri).collect();
    if !mine.is_empty() {
        let earliest = mine
            .iter()
            .filter_map(|m| m.since.as_ref().map(|t| t.0))
            .min();
        return PassiveState {
            failed_since: previous.failed_since.or(earliest).or(Some(now)),
            clear_since: None,
            status_code: mine
                .iter()
                .filter_map(|m| m.status_code)
                .next()
                .or(previous.status_code),
        };
    }
    if !previous.failed() {
        return PassiveState::default();
    }
    let clear_since = previous.clear_since.unwrap_or(now);
    if now.duration_since(clear_since) >= recover_after {
        return PassiveState::default();
    }
    PassiveState {
        clear_since: Some(clear_since),
        ..previous
    }
}

/// The endpoint state routing uses: passive failure wins over the probes.
pub fn combine(probed: EndpointState, passive: &PassiveState) -> EndpointState {
    if passive.failed() {
        EndpointState::Down
    } else {
        probed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn mark(uri: &str, since: i64, code: u16) -> EdgeFailureMark {
        EdgeFailureMark {
            uri: uri.into(),
            since: Some(Time(t(since))),
            status_code: Some(code),
        }
    }

    const R: SignedDuration = SignedDuration::from_secs(30);

    #[test]
    fn a_mark_fails_an_endpoint_that_answers_options() {
        let marks = [mark("sip:carrier", 3, 503)];
        let s = next_state("sip:carrier", &marks, PassiveState::default(), t(4), R);
        assert_eq!(s.failed_since, Some(t(3)));
        assert_eq!(s.status_code, Some(503));
        assert_eq!(combine(EndpointState::Up, &s), EndpointState::Down);
        // Another endpoint's mark does not count.
        let other = next_state("sip:mobile", &marks, PassiveState::default(), t(4), R);
        assert_eq!(combine(EndpointState::Up, &other), EndpointState::Up);
    }

    #[test]
    fn recovery_waits_for_recover_after_without_marks() {
        let marks = [mark("sip:carrier", 0, 503)];
        let mut s = next_state("sip:carrier", &marks, PassiveState::default(), t(1), R);
        // Marks gone at t=10: still failed until t=40.
        s = next_state("sip:carrier", [], s, t(10), R);
        assert!(s.failed());
        s = next_state("sip:carrier", [], s, t(39), R);
        assert!(s.failed(), "29 s clear is not enough");
        assert_eq!(combine(EndpointState::Up, &s), EndpointState::Down);
        s = next_state("sip:carrier", [], s, t(40), R);
        assert!(!s.failed());
        assert_eq!(combine(EndpointState::Up, &s), EndpointState::Up);
    }

    #[test]
    fn a_new_mark_during_recovery_restarts_the_wait_and_keeps_the_first_since() {
        let mut s = next_state(
            "sip:c",
            &[mark("sip:c", 0, 503)],
            PassiveState::default(),
            t(1),
            R,
        );
        s = next_state("sip:c", [], s, t(10), R);
        s = next_state("sip:c", &[mark("sip:c", 35, 500)], s, t(35), R);
        assert_eq!(s.failed_since, Some(t(0)));
        assert_eq!(s.clear_since, None);
        assert_eq!(s.status_code, Some(500));
        s = next_state("sip:c", [], s, t(50), R);
        s = next_state("sip:c", [], s, t(79), R);
        assert!(s.failed(), "the wait restarted at t=50");
    }

    #[test]
    fn probes_decide_when_calls_are_fine() {
        let s = PassiveState::default();
        assert_eq!(combine(EndpointState::Down, &s), EndpointState::Down);
        assert_eq!(combine(EndpointState::Unknown, &s), EndpointState::Unknown);
    }
}
