//! The per-endpoint threshold state machine: plain data in, plain data out.

use crate::crd::{EndpointState, ProbeSpec};

/// The kinds of probe failure; each maps to a `probes_failed{reason}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No final response within `timeoutMillis`.
    Timeout,
    /// A final response whose code is not alive.
    Status,
    /// Connection refused/reset, or an ICMP error.
    Connect,
    /// Another socket error.
    Io,
    /// An unreadable answer (garbage, truncated, oversized).
    Parse,
    /// The host name did not resolve, and no earlier answer is usable any more.
    Resolve,
    /// The URI cannot be probed (invalid, or an unsupported transport).
    Unsupported,
    /// The TLS handshake failed (certificate expired, wrong name, unknown CA, ...).
    Tls,
    /// The operator's destination list forbids every target.
    Forbidden,
    /// The namespace's probe quota is used up: this endpoint is not probed.
    Quota,
}

impl FailureKind {
    /// Short static category for metric labels.
    pub fn category(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Status => "status",
            FailureKind::Connect => "connect",
            FailureKind::Io => "io",
            FailureKind::Parse => "parse",
            FailureKind::Resolve => "resolve",
            FailureKind::Unsupported => "unsupported",
            FailureKind::Tls => "tls",
            FailureKind::Forbidden => "forbidden",
            FailureKind::Quota => "quota",
        }
    }

    /// True for failures that say nothing about the carrier: the prober could not
    /// (or may not) ask it. They make an endpoint `Unknown`, never `Down`.
    pub fn is_no_verdict(self) -> bool {
        matches!(
            self,
            FailureKind::Resolve | FailureKind::Forbidden | FailureKind::Quota
        )
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A final response arrived.
    Answered {
        /// Its status code.
        code: u16,
        /// Round trip in milliseconds.
        rtt_millis: u32,
    },
    /// No usable final response.
    Failed {
        /// Why.
        kind: FailureKind,
        /// Human-readable cause, for `lastError` and Events.
        detail: String,
    },
}

/// True when `code` counts as alive under `spec`: listed in `aliveStatusCodes`, or
/// any 2xx (an endpoint that accepts OPTIONS is up, whatever 2xx it picks).
pub fn is_alive(code: u16, spec: &ProbeSpec) -> bool {
    (200..300).contains(&code) || spec.alive_status_codes.contains(&code)
}

/// True when an RTT moved enough to be worth a status write: appeared, vanished, or
/// changed by at least 5 ms and 20 %. Millisecond jitter on a healthy line must not
/// turn into API writes every refresh period.
pub fn rtt_moved(old: Option<u32>, new: Option<u32>) -> bool {
    match (old, new) {
        (Some(a), Some(b)) => {
            let diff = a.abs_diff(b);
            diff >= 5 && diff.saturating_mul(5) >= a.max(b)
        }
        (None, None) => false,
        _ => true,
    }
}

/// A change of [`EndpointState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: EndpointState,
    /// The state after.
    pub to: EndpointState,
    /// Why, for the Event note (the last probe's result).
    pub cause: String,
}

/// What the prober remembers about one endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthState {
    /// Current state.
    pub state: EndpointState,
    /// Alive answers in a row.
    pub consecutive_successes: u32,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Round trip of the recent alive answers: the median of the last
    /// [`RTT_SAMPLES`], so that one slow answer (a busy host, a scheduling hiccup) is
    /// not reported as the line's round trip and does not cost a status write.
    pub rtt_millis: Option<u32>,
    /// The last alive answers' round trips, oldest first.
    pub rtt_samples: Vec<u32>,
    /// Last final status code.
    pub last_status_code: Option<u16>,
    /// Last failure cause, cleared by an alive answer.
    pub last_error: Option<String>,
    /// When `state` last changed.
    pub last_transition: Option<jiff::Timestamp>,
    /// Kind of the last failure, cleared by an alive answer.
    pub last_failure: Option<FailureKind>,
}

/// How many alive answers the reported round trip is the median of.
pub const RTT_SAMPLES: usize = 5;

impl HealthState {
    /// Keep `rtt` among the last [`RTT_SAMPLES`] and return their median (the lower
    /// one of an even count: a slow second answer is not yet the line's RTT).
    fn record_rtt(&mut self, rtt: u32) -> u32 {
        if self.rtt_samples.len() == RTT_SAMPLES {
            self.rtt_samples.remove(0);
        }
        self.rtt_samples.push(rtt);
        let mut sorted = self.rtt_samples.clone();
        sorted.sort_unstable();
        sorted[(sorted.len() - 1) / 2]
    }

    /// Fold one probe result in.
    ///
    /// `failureThreshold` failures in a row make an endpoint Down; `successThreshold`
    /// alive answers in a row bring a Down endpoint Up. An endpoint that has never been
    /// judged (Unknown) is Up after its first alive answer: the threshold is there to
    /// debounce recoveries, not to delay the first verdict.
    ///
    /// A failure that says nothing about the carrier ([`FailureKind::is_no_verdict`]:
    /// no usable DNS answer, a forbidden destination, no quota) makes the endpoint
    /// Unknown at once and resets both counters: the next verdict starts afresh.
    pub fn apply(
        &mut self,
        outcome: &Outcome,
        spec: &ProbeSpec,
        now: jiff::Timestamp,
    ) -> Option<Transition> {
        if let Outcome::Failed { kind, detail } = outcome
            && kind.is_no_verdict()
        {
            self.consecutive_failures = 0;
            self.consecutive_successes = 0;
            self.last_error = Some(detail.clone());
            self.last_failure = Some(*kind);
            if self.state == EndpointState::Unknown {
                return None;
            }
            let from = std::mem::replace(&mut self.state, EndpointState::Unknown);
            self.last_transition = Some(now);
            return Some(Transition {
                from,
                to: EndpointState::Unknown,
                cause: detail.clone(),
            });
        }
        let (alive, cause) = match outcome {
            Outcome::Answered { code, rtt_millis } => {
                self.last_status_code = Some(*code);
                if is_alive(*code, spec) {
                    self.rtt_millis = Some(self.record_rtt(*rtt_millis));
                    (true, format!("answered {code} in {rtt_millis} ms"))
                } else {
                    (false, format!("answered {code}"))
                }
            }
            Outcome::Failed { detail, kind } => {
                self.last_failure = Some(*kind);
                (false, detail.clone())
            }
        };
        if let Outcome::Answered { code, .. } = outcome {
            self.last_failure = (!is_alive(*code, spec)).then_some(FailureKind::Status);
        }
        let next = if alive {
            self.consecutive_failures = 0;
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.last_error = None;
            let needed = match self.state {
                EndpointState::Unknown => 1,
                _ => spec.success_threshold.max(1),
            };
            (self.consecutive_successes >= needed).then_some(EndpointState::Up)
        } else {
            self.consecutive_successes = 0;
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.last_error = Some(cause.clone());
            (self.consecutive_failures >= spec.failure_threshold.max(1))
                .then_some(EndpointState::Down)
        };
        match next {
            Some(to) if to != self.state => {
                let from = std::mem::replace(&mut self.state, to);
                self.last_transition = Some(now);
                Some(Transition { from, to, cause })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(fail: u32, succ: u32) -> ProbeSpec {
        ProbeSpec {
            failure_threshold: fail,
            success_threshold: succ,
            ..ProbeSpec::default()
        }
    }
    fn ok() -> Outcome {
        Outcome::Answered {
            code: 200,
            rtt_millis: 3,
        }
    }
    fn timeout() -> Outcome {
        Outcome::Failed {
            kind: FailureKind::Timeout,
            detail: "no answer within 500 ms".into(),
        }
    }
    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000).unwrap()
    }

    #[test]
    fn first_alive_answer_is_up_and_failures_debounce_down() {
        let s = spec(3, 2);
        let mut h = HealthState::default();
        let t = h.apply(&ok(), &s, now()).unwrap();
        assert_eq!((t.from, t.to), (EndpointState::Unknown, EndpointState::Up));
        assert_eq!(h.rtt_millis, Some(3));
        assert_eq!(h.apply(&timeout(), &s, now()), None);
        assert_eq!(h.apply(&timeout(), &s, now()), None);
        let t = h.apply(&timeout(), &s, now()).unwrap();
        assert_eq!(t.to, EndpointState::Down);
        assert_eq!(t.cause, "no answer within 500 ms");
        assert_eq!(h.consecutive_failures, 3);
        assert_eq!(h.apply(&ok(), &s, now()), None, "one success is not enough");
        assert_eq!(h.apply(&ok(), &s, now()).unwrap().to, EndpointState::Up);
        assert_eq!((h.consecutive_failures, h.last_error.as_deref()), (0, None));
    }

    #[test]
    fn one_slow_answer_does_not_move_the_reported_rtt() {
        let mut h = HealthState::default();
        let answer = |h: &mut HealthState, rtt| {
            h.apply(
                &Outcome::Answered {
                    code: 200,
                    rtt_millis: rtt,
                },
                &spec(3, 1),
                now(),
            );
            h.rtt_millis
        };
        assert_eq!(answer(&mut h, 2), Some(2), "the first answer is the RTT");
        assert_eq!(
            answer(&mut h, 40),
            Some(2),
            "one slow answer is not the line's RTT"
        );
        assert_eq!(answer(&mut h, 3), Some(3));
        assert_eq!(answer(&mut h, 2), Some(2));
        // The line really got slower: the median follows within three answers.
        assert_eq!(answer(&mut h, 50), Some(3));
        assert_eq!(answer(&mut h, 50), Some(40));
        assert_eq!(answer(&mut h, 50), Some(50));
        assert_eq!(h.rtt_samples.len(), RTT_SAMPLES);
    }

    #[test]
    fn status_codes_are_classified_by_the_alive_list() {
        let mut s = spec(1, 1);
        assert!(is_alive(200, &s) && is_alive(202, &s));
        assert!(!is_alive(503, &s) && !is_alive(404, &s));
        s.alive_status_codes = vec![200, 404];
        assert!(is_alive(404, &s));
        let mut h = HealthState::default();
        let t = h
            .apply(
                &Outcome::Answered {
                    code: 503,
                    rtt_millis: 1,
                },
                &spec(1, 1),
                now(),
            )
            .unwrap();
        assert_eq!(
            (t.to, t.cause.as_str()),
            (EndpointState::Down, "answered 503")
        );
        assert_eq!(h.last_status_code, Some(503));
        assert_eq!(h.rtt_millis, None, "a failure has no RTT");
    }

    #[test]
    fn rtt_jitter_is_not_a_change() {
        assert!(!rtt_moved(Some(3), Some(4)));
        assert!(!rtt_moved(Some(100), Some(110)), "10 % is jitter");
        assert!(rtt_moved(Some(100), Some(130)));
        assert!(rtt_moved(Some(2), Some(40)));
        assert!(rtt_moved(None, Some(1)) && rtt_moved(Some(1), None));
        assert!(!rtt_moved(None, None));
    }

    /// A DNS outage, a forbidden destination or a used-up quota is not a carrier
    /// outage: the endpoint becomes Unknown (never Down), and judging restarts after.
    #[test]
    fn no_verdict_failures_make_unknown_never_down() {
        let s = spec(1, 1);
        let mut h = HealthState::default();
        h.apply(&ok(), &s, now());
        for kind in [
            FailureKind::Resolve,
            FailureKind::Forbidden,
            FailureKind::Quota,
        ] {
            let f = Outcome::Failed {
                kind,
                detail: format!("{kind:?}"),
            };
            for _ in 0..5 {
                h.apply(&f, &s, now());
                assert_eq!(h.state, EndpointState::Unknown, "{kind:?}");
            }
            assert_eq!(h.last_failure, Some(kind));
            assert_eq!(h.consecutive_failures, 0);
            assert_eq!(h.apply(&ok(), &s, now()).unwrap().to, EndpointState::Up);
            assert_eq!(h.last_failure, None);
        }
    }

    proptest! {
        /// Whatever the history, the state is Down exactly when the last
        /// `failureThreshold` probes failed and no later success intervened, and the
        /// counters agree with the tail of the history.
        #[test]
        fn state_follows_the_thresholds(
            history in proptest::collection::vec(any::<bool>(), 0..60),
            fail in 1u32..5, succ in 1u32..5,
        ) {
            let s = spec(fail, succ);
            let mut h = HealthState::default();
            for &alive in &history {
                let before = h.state;
                let o = if alive { ok() } else { timeout() };
                let t = h.apply(&o, &s, now());
                prop_assert_eq!(t.is_some(), before != h.state);
            }
            let tail_fail = history.iter().rev().take_while(|a| !**a).count() as u32;
            let tail_ok = history.iter().rev().take_while(|a| **a).count() as u32;
            prop_assert_eq!(h.consecutive_failures, tail_fail);
            prop_assert_eq!(h.consecutive_successes, tail_ok);
            if tail_fail >= fail { prop_assert_eq!(h.state, EndpointState::Down); }
            if tail_ok >= succ { prop_assert_eq!(h.state, EndpointState::Up); }
            if history.is_empty() { prop_assert_eq!(h.state, EndpointState::Unknown); }
        }
    }
}
