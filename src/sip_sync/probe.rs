//! The edge as a vantage point: sip-sync probes the destinations of the routing it
//! serves, from the edge's own address, and reports their state on transitions only.
//!
//! Carriers accept SIP from the addresses they were told — the edge's, not the
//! operator pod's — and an edge whose uplink is gone sees what its calls would see.
//! sip-sync shares the Kamailio pod's network namespace, so its probes leave from
//! Kamailio's address; `--probe-bind` pins the source address (and UDP port) when the
//! pod has several. What to probe and how comes from `probes.json` in the routing
//! ConfigMap ([`crate::routing::probes`]); probing reuses the operator's prober
//! ([`ProbeHub`]: same codec, transports, thresholds and timers).
//!
//! Only transitions reach the API: the report holds each destination's state, the
//! status code of the answer that caused the transition, and when it happened — no
//! RTT, no counters — so a quiet minute writes nothing.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Desired;
use super::report::Reporter;
use crate::crd::EdgeProbe;
use crate::probe::{DestinationPolicy, ProbeConfig, ProbeHub, ProbeTarget, TlsSettings};
use crate::routing::probes::{ProbeList, VERSION};
use crate::telemetry::Metrics;

/// Flags of `lifeline sip-sync` for its own probes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProbeArgs {
    /// Source address of the edge's SIP OPTIONS probes (also in their `Via` and
    /// `From`). Default: the kernel's choice, which in the Kamailio pod is the pod's
    /// address — the one Kamailio sends calls from. Set it to Kamailio's listen
    /// address when the pod has several.
    #[arg(long = "probe-bind", env = "LIFELINE_PROBE_BIND")]
    pub bind: Option<IpAddr>,
    /// Source UDP port of the probes (0: any free port). It cannot be Kamailio's own
    /// SIP port, which Kamailio holds.
    #[arg(long = "probe-port", env = "LIFELINE_PROBE_PORT", default_value_t = 0)]
    pub port: u16,
    /// Destinations the edge may probe beyond the built-in deny list (CIDR with an
    /// optional port range, e.g. `10.0.0.0/8:5060-5061`; comma-separated).
    #[arg(
        long = "probe-allow",
        env = "LIFELINE_PROBE_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
    /// Destinations the edge must never probe (same syntax; comma-separated).
    #[arg(
        long = "probe-deny",
        env = "LIFELINE_PROBE_DENY",
        value_delimiter = ','
    )]
    pub deny: Vec<String>,
    /// Do not probe from this edge (it then reports only its routing).
    #[arg(long = "no-probe", env = "LIFELINE_NO_PROBE")]
    pub disabled: bool,
}

/// Errors of a `probes.json` document.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON of the expected shape.
    #[error("probes.json is not a valid probe list: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by a newer operator.
    #[error(
        "probes.json has version {0}; this sip-sync reads version {VERSION} (upgrade sip-sync)"
    )]
    Version(u32),
}

/// The probe targets in a `probes.json` text.
pub fn parse(text: &str) -> Result<Vec<ProbeTarget>, ParseError> {
    let list: ProbeList = serde_json::from_str(text)?;
    if list.version != VERSION {
        return Err(ParseError::Version(list.version));
    }
    Ok(list
        .targets
        .into_iter()
        .map(|t| ProbeTarget {
            uri: t.uri,
            spec: t.probe,
            tls: t.server_name.map(|name| TlsSettings {
                server_name: Some(name),
                ..TlsSettings::default()
            }),
        })
        .collect())
}

/// A prober for this edge, as `args` say.
pub fn hub(args: &ProbeArgs, metrics: Arc<Metrics>) -> Result<ProbeHub, String> {
    let policy = DestinationPolicy::with_rules(&args.allow, &args.deny)
        .map_err(|e| format!("--probe-allow/--probe-deny: {e}"))?;
    let config = ProbeConfig {
        policy,
        source: args.bind,
        source_port: args.port,
        ..ProbeConfig::default()
    };
    Ok(ProbeHub::new(metrics, config))
}

/// The report entries for the hub's current health. A destination whose state did not
/// change keeps its previous entry (status code and time of the transition), so only
/// transitions change the report.
pub fn report_entries(
    health: &[crate::probe::EndpointHealth],
    previous: &[EdgeProbe],
) -> Vec<EdgeProbe> {
    health
        .iter()
        .map(|h| match previous.iter().find(|p| p.uri == h.uri) {
            Some(p) if p.state == h.state => p.clone(),
            _ => EdgeProbe {
                uri: h.uri.clone(),
                state: h.state,
                last_status_code: h.last_status_code,
                since: h.last_transition.map(Time),
            },
        })
        .collect()
}

/// Probe what the routing ConfigMap's `probes.json` lists until `shutdown`, and keep
/// the member's `probes` in its report current.
pub async fn run(
    hub: ProbeHub,
    owner: String,
    reporter: Reporter,
    mut desired: watch::Receiver<Option<Desired>>,
    shutdown: CancellationToken,
) {
    let mut changes = hub.subscribe();
    let mut current: Option<String> = None;
    loop {
        let text = desired
            .borrow_and_update()
            .as_ref()
            .and_then(|d| d.probes.clone());
        if text != current {
            match text.as_deref().map(parse) {
                None => {
                    tracing::info!("the routing ConfigMap lists no probes for the edge");
                    hub.remove(&owner);
                }
                Some(Ok(targets)) => {
                    tracing::info!(destinations = targets.len(), "probing from the edge");
                    hub.set_targets(&owner, targets);
                }
                // Keep probing the previous list: a bad document is a bug to report,
                // not a reason to go blind.
                Some(Err(e)) => tracing::warn!(error = %e, "ignoring the new probe list"),
            }
            current = text;
            publish(&hub, &owner, &reporter);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = desired.changed() => if changed.is_err() { break },
            change = changes.recv() => {
                use tokio::sync::broadcast::error::RecvError;
                match change {
                    Ok(key) if key != owner => {}
                    Ok(_) | Err(RecvError::Lagged(_)) => publish(&hub, &owner, &reporter),
                    Err(RecvError::Closed) => break,
                }
            }
        }
    }
    hub.shutdown();
}

fn publish(hub: &ProbeHub, owner: &str, reporter: &Reporter) {
    let health = hub.health(owner);
    reporter.update(|m| {
        let next = report_entries(&health, &m.probes);
        if next != m.probes {
            m.probes = next;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::EndpointState;
    use crate::probe::EndpointHealth;

    fn health(uri: &str, state: EndpointState, code: Option<u16>, at: i64) -> EndpointHealth {
        EndpointHealth {
            uri: uri.into(),
            state,
            rtt_millis: Some(3),
            last_status_code: code,
            consecutive_failures: 0,
            last_transition: Some(jiff::Timestamp::from_second(at).unwrap()),
            last_error: None,
            last_failure: None,
            targets: Vec::new(),
            stale_dns: None,
        }
    }

    #[test]
    fn only_transitions_change_the_report() {
        let first = report_entries(&[health("sip:a", EndpointState::Up, Some(200), 1)], &[]);
        assert_eq!(first[0].last_status_code, Some(200));
        // A different answer code while still Up (or a new RTT) is not a transition.
        let same = report_entries(&[health("sip:a", EndpointState::Up, Some(202), 1)], &first);
        assert_eq!(same, first);
        let down = report_entries(&[health("sip:a", EndpointState::Down, None, 9)], &first);
        assert_eq!(down[0].state, EndpointState::Down);
        assert_eq!(down[0].last_status_code, None);
    }

    #[test]
    fn parses_what_the_operator_renders_and_refuses_other_versions() {
        use crate::routing::probes::{EdgeTarget, render};
        let text = render(vec![EdgeTarget {
            uri: "sips:sbc.example".into(),
            probe: crate::crd::ProbeSpec::default(),
            server_name: Some("sbc.carrier.example".into()),
        }]);
        let targets = parse(&text).unwrap();
        assert_eq!(targets[0].uri, "sips:sbc.example");
        assert_eq!(
            targets[0].tls.as_ref().unwrap().server_name.as_deref(),
            Some("sbc.carrier.example")
        );
        let newer = text.replace("\"version\": 1", "\"version\": 2");
        let err = parse(&newer).unwrap_err().to_string();
        assert!(err.contains("upgrade sip-sync"), "{err}");
        assert!(parse("{").is_err());
    }
}
