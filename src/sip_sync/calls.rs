//! Live calls and failure marks: what this member's Kamailio sees of real calls, read
//! over JSON-RPC and put into the edge report.
//!
//! The edge configuration (`examples/kamailio/kamailio.cfg`) keeps, per destination
//! (key `<set>|<uri>`): the calls in progress in the dialog profile `lifeline_dst`,
//! the calls routed since start in the htable `lifeline_calls`, and the code of the
//! last failure that marked it down in the htable `lifeline_fail`. The marks
//! themselves are the destination's state in `dispatcher.list`.
//!
//! Every [`POLL`] the poller reads them; the report changes only when a figure moved
//! beyond [`significant`] (at least one call, or 5 % of calls in progress; half a
//! call per second, or 10 % of the rate), and the [`Reporter`] writes at most once per
//! second, so a busy edge does not turn every call into an API write.
//!
//! A destination Kamailio marked down comes back on its own after one OPTIONS 200
//! (a carrier whose border answers OPTIONS while its core fails every INVITE is back
//! every few seconds, and marked again by the next call). A mark is therefore reported
//! from the first time it is seen until [`MARK_HOLD`] after the last time, with its
//! first `since`: the operator sees one failure episode, not a flicker.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::dispatcher::Destination;
use super::kamailio::{KamailioRpc, RpcError};
use super::report::Reporter;
use crate::crd::{EdgeCalls, EdgeFailureMark};

/// How often Kamailio is read.
pub const POLL: Duration = Duration::from_millis(500);
/// The window calls per second are averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);
/// How long a failure mark stays reported after Kamailio last showed it.
pub const MARK_HOLD: Duration = Duration::from_secs(15);

/// The profile and tables the edge configuration keeps.
const PROFILE: &str = "lifeline_dst";
const ROUTED: &str = "lifeline_calls";
const FAILED: &str = "lifeline_fail";

/// One reading of Kamailio.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Calls in progress per destination.
    pub active: BTreeMap<Destination, u32>,
    /// Calls routed per destination since Kamailio started.
    pub routed: BTreeMap<Destination, u64>,
    /// Destinations out of service now, with the code that marked them (when known).
    pub down: BTreeMap<Destination, Option<u16>>,
}

/// Read calls, counters and marks from Kamailio.
pub async fn read(rpc: &KamailioRpc) -> Result<Reading, RpcError> {
    let list = rpc.list_dispatcher().await?;
    let routed = table(rpc, ROUTED).await?;
    let failed = table(rpc, FAILED).await?;
    let mut reading = Reading::default();
    for d in list.destinations() {
        let key = key(d);
        let size = rpc
            .call_with("dlg.profile_get_size", json!([PROFILE, key]))
            .await?;
        reading
            .active
            .insert(d.clone(), size.as_u64().unwrap_or(0) as u32);
        if let Some(n) = routed.get(&key) {
            reading.routed.insert(d.clone(), *n);
        }
    }
    for (d, _flags) in rpc.down_marks().await? {
        let code = failed.get(&key(&d)).and_then(|c| u16::try_from(*c).ok());
        reading.down.insert(d, code);
    }
    Ok(reading)
}

fn key(d: &Destination) -> String {
    format!("{}|{}", d.set_id, d.uri)
}

/// `htable.dump` as name → integer value.
async fn table(rpc: &KamailioRpc, name: &str) -> Result<BTreeMap<String, u64>, RpcError> {
    let dump = rpc.call_with("htable.dump", json!([name])).await?;
    Ok(parse_table(&dump))
}

/// Parse an `htable.dump` result (`[{entry, size, slot: [{name, value, type}]}]`).
pub fn parse_table(dump: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for entry in dump.as_array().into_iter().flatten() {
        for item in entry["slot"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (item["name"].as_str(), item["value"].as_u64()) {
                out.insert(name.to_string(), value);
            }
        }
    }
    out
}

/// True when `now` differs from `reported` enough to be worth an API write: by at
/// least one call and 5 % of the calls in progress, or by half a call per second and
/// 10 % of the rate. Reaching zero, or leaving it, always counts.
pub fn significant(reported: &EdgeCalls, now: &EdgeCalls) -> bool {
    let (a, b) = (reported.active_calls, now.active_calls);
    if (a == 0) != (b == 0) {
        return true;
    }
    let calls_delta = a.abs_diff(b);
    if calls_delta >= 1 && f64::from(calls_delta) >= 0.05 * f64::from(a.max(b)) {
        return true;
    }
    let (r, s) = (reported.calls_per_second, now.calls_per_second);
    if (r == 0.0) != (s == 0.0) {
        return true;
    }
    let rate_delta = (r - s).abs();
    rate_delta >= 0.5 && rate_delta >= 0.1 * r.max(s)
}

/// Turns readings into report entries: rates over [`RATE_WINDOW`], marks held for
/// [`MARK_HOLD`]. Pure apart from the times it is given.
#[derive(Debug, Default)]
pub struct Tracker {
    history: VecDeque<(Instant, BTreeMap<Destination, u64>)>,
    marks: BTreeMap<Destination, Mark>,
}

#[derive(Clone, Debug)]
struct Mark {
    since: jiff::Timestamp,
    last_seen: Instant,
    code: Option<u16>,
}

impl Tracker {
    /// Calls per destination and the marks to report, from a reading taken at `at`
    /// (wall clock `now`, for `since`).
    pub fn observe(
        &mut self,
        reading: &Reading,
        at: Instant,
        now: jiff::Timestamp,
    ) -> (Vec<EdgeCalls>, Vec<EdgeFailureMark>) {
        self.history.push_back((at, reading.routed.clone()));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
        {
            self.history.pop_front();
        }
        let (oldest_at, oldest) = self
            .history
            .front()
            .cloned()
            .unwrap_or((at, BTreeMap::new()));
        let span = at.duration_since(oldest_at).as_secs_f64();
        let calls = reading
            .active
            .iter()
            .map(|(d, active)| {
                let now_routed = reading.routed.get(d).copied().unwrap_or(0);
                // Not in the older reading: no call had been routed there yet.
                let then = oldest.get(d).copied().unwrap_or(0);
                let rate = if span >= 0.9 {
                    now_routed.saturating_sub(then) as f64 / span
                } else {
                    0.0
                };
                EdgeCalls {
                    uri: d.uri.clone(),
                    set_id: Some(d.set_id),
                    active_calls: *active,
                    // Two decimals: enough for a rate, and stable text in the report.
                    calls_per_second: (rate * 100.0).round() / 100.0,
                }
            })
            .collect();

        for (d, code) in &reading.down {
            let mark = self.marks.entry(d.clone()).or_insert(Mark {
                since: now,
                last_seen: at,
                code: *code,
            });
            mark.last_seen = at;
            if code.is_some() {
                mark.code = *code;
            }
        }
        self.marks
            .retain(|_, m| at.duration_since(m.last_seen) <= MARK_HOLD);
        let marks = self
            .marks
            .iter()
            .map(|(d, m)| EdgeFailureMark {
                uri: d.uri.clone(),
                since: Some(Time(m.since)),
                status_code: m.code,
            })
            .collect();
        (calls, marks)
    }
}

/// Merge new call figures into the report only where they moved significantly (a new
/// or vanished destination always counts). Returns the list to report.
pub fn merge_calls(reported: &[EdgeCalls], now: Vec<EdgeCalls>) -> Vec<EdgeCalls> {
    let same_keys = reported.len() == now.len()
        && reported
            .iter()
            .zip(&now)
            .all(|(a, b)| a.uri == b.uri && a.set_id == b.set_id);
    if !same_keys {
        return now;
    }
    if reported.iter().zip(&now).any(|(a, b)| significant(a, b)) {
        now
    } else {
        reported.to_vec()
    }
}

/// Poll Kamailio every [`POLL`] and keep the member's `calls` and `failureMarks`
/// current until `shutdown`.
pub async fn run(rpc: KamailioRpc, reporter: Reporter, shutdown: CancellationToken) {
    let mut tracker = Tracker::default();
    let mut failing = false;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reading = match read(&rpc).await {
            Ok(r) => {
                if failing {
                    tracing::info!("reading live calls from Kamailio again");
                    failing = false;
                }
                r
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read live calls from Kamailio; keeping the last report");
                    failing = true;
                }
                continue;
            }
        };
        let (calls, marks) = tracker.observe(&reading, Instant::now(), jiff::Timestamp::now());
        reporter.update(|m| {
            m.calls = merge_calls(&m.calls, calls);
            for mark in &marks {
                if !m.failure_marks.iter().any(|x| x.uri == mark.uri) {
                    tracing::warn!(uri = %mark.uri, code = ?mark.status_code,
                        "Kamailio marked a destination down after a failed call");
                }
            }
            m.failure_marks = marks;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(uri: &str) -> Destination {
        Destination {
            set_id: 1,
            uri: uri.to_string(),
        }
    }

    fn calls(active: u32, cps: f64) -> EdgeCalls {
        EdgeCalls {
            uri: "sip:a".into(),
            set_id: Some(1),
            active_calls: active,
            calls_per_second: cps,
        }
    }

    #[test]
    fn small_moves_are_not_reported_large_ones_are() {
        assert!(significant(&calls(0, 0.0), &calls(1, 0.0)), "0 -> 1");
        assert!(significant(&calls(3, 0.0), &calls(4, 0.0)), "one call of 4");
        assert!(!significant(&calls(100, 0.0), &calls(103, 0.0)), "3 %");
        assert!(significant(&calls(100, 0.0), &calls(106, 0.0)), "6 %");
        assert!(!significant(&calls(5, 10.0), &calls(5, 10.4)), "0.4 cps");
        assert!(significant(&calls(5, 10.0), &calls(5, 11.2)), "12 %");
        assert!(significant(&calls(5, 0.3), &calls(5, 0.0)), "rate to zero");
    }

    #[test]
    fn rates_come_from_counters_over_the_window() {
        let mut t = Tracker::default();
        let start = Instant::now();
        let now = jiff::Timestamp::now();
        let mut reading = Reading::default();
        reading.active.insert(dest("sip:a"), 2);
        reading.routed.insert(dest("sip:a"), 10);
        let (c, _) = t.observe(&reading, start, now);
        assert_eq!(c[0].calls_per_second, 0.0, "no rate from one reading");
        reading.routed.insert(dest("sip:a"), 30);
        let (c, _) = t.observe(&reading, start + Duration::from_secs(2), now);
        assert_eq!(c[0].calls_per_second, 10.0);
        assert_eq!(c[0].active_calls, 2);
    }

    #[test]
    fn a_mark_is_held_across_kamailios_own_recovery_then_dropped() {
        let mut t = Tracker::default();
        let start = Instant::now();
        let t0 = jiff::Timestamp::now();
        let mut marked = Reading::default();
        marked.down.insert(dest("sip:carrier"), Some(503));
        let (_, m) = t.observe(&marked, start, t0);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].status_code, Some(503));
        // Kamailio's OPTIONS probe put it back; the mark stays reported.
        let clear = Reading::default();
        let (_, m) = t.observe(&clear, start + Duration::from_secs(3), t0);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].since, Some(Time(t0)), "the first since is kept");
        let (_, m) = t.observe(&clear, start + MARK_HOLD + Duration::from_secs(1), t0);
        assert!(m.is_empty(), "dropped after the hold");
    }

    #[test]
    fn unchanged_figures_keep_the_report_as_it_was() {
        let reported = vec![calls(100, 10.0)];
        assert_eq!(merge_calls(&reported, vec![calls(102, 10.2)]), reported);
        assert_eq!(
            merge_calls(&reported, vec![calls(110, 10.2)]),
            vec![calls(110, 10.2)]
        );
    }

    #[test]
    fn parses_htable_dumps() {
        let dump =
            json!([{"entry":105,"size":1,"slot":[{"name":"1|sip:a","value":3,"type":"int"}]}]);
        assert_eq!(parse_table(&dump).get("1|sip:a"), Some(&3));
    }
}
