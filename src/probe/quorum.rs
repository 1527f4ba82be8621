//! Combining vantages: the operator's own probes and each SIP edge member's probes
//! (reported in `SipEdge.status.members[].probes`) into one state per endpoint.
//!
//! Plain data in, plain data out; the Trunk and FallbackPolicy controllers call
//! [`combine`], the SipEdge controller calls [`isolated`].
//!
//! The rule (`spec.probe.vantage`):
//! - **Counted vantages**: `Operator` counts only the operator; `Edges` only fresh,
//!   non-isolated edge members (the operator stands in for an endpoint no edge has
//!   judged yet, so a missing edge does not blind lifeline); `Both` counts all of them.
//! - **Verdict**: Down when more counted vantages see the endpoint Down than Up, Up
//!   when more see it Up. On a tie the edges' own majority decides (calls leave from
//!   the edges; a carrier that filters by source address answers them, not the
//!   operator), and a tie among the edges as well keeps it Up: a split is not a reason
//!   to fail over. No judged vote at all: Unknown.
//! - **Stale**: a member whose pod is gone (its report stays until someone removes
//!   it) is not counted; a member without a pod counts until it removes its entry.
//! - **Isolated**: a member that sees every destination it judged Down, while another
//!   vantage sees at least one of them Up, lost its own uplink; it is not counted.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::crd::{EndpointState, Vantage, VantageEndpoint, VantageStatus, VantageVote};

/// Name of the operator's own vantage in `Trunk.status.vantages`.
pub const OPERATOR: &str = "operator";

/// One edge member's report, as the operator sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberView {
    /// The `SipEdge` name.
    pub edge: String,
    /// The member name (pod name).
    pub member: String,
    /// False when the member's pod no longer exists.
    pub fresh: bool,
    /// Its probes: URI → (state, since).
    pub probes: HashMap<String, (EndpointState, Option<jiff::Timestamp>)>,
}

impl MemberView {
    /// `<edge>/<member>`: the vantage's name in Trunk status.
    pub fn name(&self) -> String {
        format!("{}/{}", self.edge, self.member)
    }
}

/// The operator's own view of one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorView {
    /// The endpoint URI.
    pub uri: String,
    /// Its state as the operator's probes see it.
    pub state: EndpointState,
    /// When that state began.
    pub since: Option<jiff::Timestamp>,
}

/// The combined verdict for one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The endpoint URI.
    pub uri: String,
    /// The combined state.
    pub state: EndpointState,
    /// When it began: the operator's transition time when it agrees, else the latest
    /// transition among the edge views that agree.
    pub since: Option<jiff::Timestamp>,
    /// Set when the combined state differs from the operator's own view: why.
    pub overruled: Option<String>,
}

/// Everything a Trunk (or a policy's static targets) needs from the vantages.
#[derive(Clone, Debug, PartialEq)]
pub struct Combined {
    /// One verdict per operator endpoint, in the same order.
    pub verdicts: Vec<Verdict>,
    /// Each vantage's view (the operator first, then members by name). Members that
    /// report none of the endpoints are left out.
    pub vantages: Vec<VantageStatus>,
    /// `agree`, or which vantages disagree with the verdicts.
    pub summary: String,
}

/// Edge members that are cut off: they judged at least one destination, every one of
/// them Down, while another fresh vantage (a member or the operator) sees at least one
/// of those destinations Up. Returns their [`MemberView::name`]s.
pub fn isolated(
    members: &[MemberView],
    operator: &HashMap<String, EndpointState>,
) -> HashSet<String> {
    let seen_up = |uri: &str, except: &str| {
        operator.get(uri) == Some(&EndpointState::Up)
            || members.iter().any(|o| {
                o.fresh
                    && o.name() != except
                    && o.probes.get(uri).map(|p| p.0) == Some(EndpointState::Up)
            })
    };
    members
        .iter()
        .filter(|m| m.fresh)
        .filter(|m| {
            let judged: Vec<(&String, EndpointState)> = m
                .probes
                .iter()
                .map(|(uri, (state, _))| (uri, *state))
                .filter(|(_, s)| *s != EndpointState::Unknown)
                .collect();
            let name = m.name();
            !judged.is_empty()
                && judged.iter().all(|(_, s)| *s == EndpointState::Down)
                && judged.iter().any(|(uri, _)| seen_up(uri, &name))
        })
        .map(MemberView::name)
        .collect()
}

/// Combine the operator's view of some endpoints with the edge members' views under
/// `mode`. `isolated` comes from [`isolated`] over every member of the namespace.
pub fn combine(
    mode: Vantage,
    operator: &[OperatorView],
    members: &[MemberView],
    isolated: &HashSet<String>,
) -> Combined {
    // Members that report at least one of these endpoints, in a stable order.
    let mut relevant: Vec<&MemberView> = members
        .iter()
        .filter(|m| operator.iter().any(|o| m.probes.contains_key(&o.uri)))
        .collect();
    relevant.sort_by_key(|m| m.name());
    let vote_of = |m: &MemberView| {
        if !m.fresh {
            VantageVote::Stale
        } else if isolated.contains(&m.name()) {
            VantageVote::Isolated
        } else if mode == Vantage::Operator {
            VantageVote::NotSelected
        } else {
            VantageVote::Counted
        }
    };
    let mut operator_used = mode != Vantage::Edges;
    let verdicts: Vec<Verdict> = operator
        .iter()
        .map(|o| {
            let mut edge_up = 0usize;
            let mut edge_down = 0usize;
            for m in relevant.iter().filter(|m| vote_of(m) == VantageVote::Counted) {
                match m.probes.get(&o.uri).map(|p| p.0) {
                    Some(EndpointState::Up) => edge_up += 1,
                    Some(EndpointState::Down) => edge_down += 1,
                    _ => {}
                }
            }
            let count_operator =
                mode != Vantage::Edges || (edge_up == 0 && edge_down == 0);
            operator_used |= count_operator;
            let (mut up, mut down) = (edge_up, edge_down);
            if count_operator {
                match o.state {
                    EndpointState::Up => up += 1,
                    EndpointState::Down => down += 1,
                    EndpointState::Unknown => {}
                }
            }
            let state = if up == 0 && down == 0 {
                EndpointState::Unknown
            } else if down > up || (down == up && edge_down > edge_up) {
                EndpointState::Down
            } else {
                EndpointState::Up
            };
            let (since, overruled) = if state == o.state {
                (o.since, None)
            } else {
                let since = relevant
                    .iter()
                    .filter(|m| vote_of(m) == VantageVote::Counted)
                    .filter_map(|m| m.probes.get(&o.uri))
                    .filter(|p| p.0 == state)
                    .filter_map(|p| p.1)
                    .max();
                let agree = if state == EndpointState::Up { up } else { down };
                let why = format!(
                    "{agree} of {} counted vantages see it {state}; the operator's own probe sees it {} (spec.probe.vantage: {mode})",
                    up + down,
                    o.state
                );
                (since, Some(why))
            };
            Verdict {
                uri: o.uri.clone(),
                state,
                since,
                overruled,
            }
        })
        .collect();

    let view = |states: Vec<VantageEndpoint>| {
        let known = states
            .iter()
            .filter(|e| e.state != EndpointState::Unknown)
            .count();
        let up = states
            .iter()
            .filter(|e| e.state == EndpointState::Up)
            .count();
        (format!("{up}/{known}"), states)
    };
    let mut vantages = Vec::with_capacity(relevant.len() + 1);
    let (summary, endpoints) = view(
        operator
            .iter()
            .map(|o| VantageEndpoint {
                uri: o.uri.clone(),
                state: o.state,
            })
            .collect(),
    );
    vantages.push(VantageStatus {
        name: OPERATOR.to_string(),
        vote: if operator_used {
            VantageVote::Counted
        } else {
            VantageVote::NotSelected
        },
        healthy_summary: summary,
        endpoints,
    });
    for m in &relevant {
        let (summary, endpoints) = view(
            operator
                .iter()
                .filter_map(|o| {
                    m.probes.get(&o.uri).map(|p| VantageEndpoint {
                        uri: o.uri.clone(),
                        state: p.0,
                    })
                })
                .collect(),
        );
        vantages.push(VantageStatus {
            name: m.name(),
            vote: vote_of(m),
            healthy_summary: summary,
            endpoints,
        });
    }
    let summary = summarize(&vantages, &verdicts);
    Combined {
        verdicts,
        vantages,
        summary,
    }
}

/// `agree`, or `disagree: a (Down), b (Isolated, Down)` for the vantages whose judged
/// view of some endpoint differs from the verdict (at most three named).
fn summarize(vantages: &[VantageStatus], verdicts: &[Verdict]) -> String {
    let verdict: BTreeMap<&str, EndpointState> =
        verdicts.iter().map(|v| (v.uri.as_str(), v.state)).collect();
    let dissent: Vec<String> = vantages
        .iter()
        .filter(|v| {
            v.endpoints.iter().any(|e| {
                e.state != EndpointState::Unknown
                    && verdict
                        .get(e.uri.as_str())
                        .is_some_and(|s| *s != EndpointState::Unknown && *s != e.state)
            })
        })
        .map(|v| {
            if v.vote == VantageVote::Counted {
                format!("{} sees {}", v.name, v.healthy_summary)
            } else {
                format!("{} ({}) sees {}", v.name, v.vote, v.healthy_summary)
            }
        })
        .collect();
    match dissent.len() {
        0 => "agree".to_string(),
        n if n <= 3 => format!("disagree: {}", dissent.join(", ")),
        n => format!("disagree: {} and {} more", dissent[..3].join(", "), n - 3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndpointState::{Down, Unknown, Up};

    const A: &str = "sip:carrier-a";
    const B: &str = "sip:carrier-b";

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    fn op(states: &[(&str, EndpointState)]) -> Vec<OperatorView> {
        states
            .iter()
            .map(|(uri, state)| OperatorView {
                uri: uri.to_string(),
                state: *state,
                since: Some(t(10)),
            })
            .collect()
    }

    fn member(name: &str, states: &[(&str, EndpointState)]) -> MemberView {
        MemberView {
            edge: "edge".into(),
            member: name.into(),
            fresh: true,
            probes: states
                .iter()
                .map(|(uri, s)| (uri.to_string(), (*s, Some(t(20)))))
                .collect(),
        }
    }

    fn states(c: &Combined) -> Vec<EndpointState> {
        c.verdicts.iter().map(|v| v.state).collect()
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    #[test]
    fn one_vantage_is_todays_behaviour() {
        for mode in [Vantage::Operator, Vantage::Edges, Vantage::Both] {
            let c = combine(mode, &op(&[(A, Down), (B, Up)]), &[], &none());
            assert_eq!(states(&c), [Down, Up], "{mode}");
            assert!(c.verdicts.iter().all(|v| v.overruled.is_none()));
            assert_eq!(c.summary, "agree");
            assert_eq!(c.vantages.len(), 1);
            assert_eq!(c.vantages[0].vote, VantageVote::Counted);
        }
    }

    /// A carrier that answers only the edge's address: the operator sees it Down.
    #[test]
    fn source_filtering_carrier_is_up_with_edges_and_down_with_operator() {
        let operator = op(&[(A, Down)]);
        let edges = [member("p1", &[(A, Up)])];
        let c = combine(Vantage::Operator, &operator, &edges, &none());
        assert_eq!(states(&c), [Down]);
        assert_eq!(c.vantages[1].vote, VantageVote::NotSelected);
        assert_eq!(c.summary, "disagree: edge/p1 (NotSelected) sees 1/1");

        let c = combine(Vantage::Edges, &operator, &edges, &none());
        assert_eq!(states(&c), [Up]);
        assert_eq!(c.verdicts[0].since, Some(t(20)));
        assert!(c.verdicts[0].overruled.as_ref().unwrap().contains("1 of 1"));
        assert_eq!(c.vantages[0].vote, VantageVote::NotSelected);
        assert_eq!(c.summary, "disagree: operator (NotSelected) sees 0/1");

        // Both: one edge against the operator is a tie, and the edge breaks it.
        let c = combine(Vantage::Both, &operator, &edges, &none());
        assert_eq!(states(&c), [Up]);
        assert_eq!(c.summary, "disagree: operator sees 0/1");
    }

    #[test]
    fn majority_decides_and_an_edge_split_keeps_it_up() {
        let operator = op(&[(A, Up)]);
        let two_down = [member("p1", &[(A, Down)]), member("p2", &[(A, Down)])];
        assert_eq!(
            states(&combine(Vantage::Both, &operator, &two_down, &none())),
            [Down]
        );
        let split = [member("p1", &[(A, Down)]), member("p2", &[(A, Up)])];
        assert_eq!(
            states(&combine(Vantage::Edges, &op(&[(A, Down)]), &split, &none())),
            [Up]
        );
        // Everyone agrees a dead carrier is dead.
        let dead = [member("p1", &[(A, Down)]), member("p2", &[(A, Down)])];
        let c = combine(Vantage::Both, &op(&[(A, Down)]), &dead, &none());
        assert_eq!(states(&c), [Down]);
        assert_eq!(c.summary, "agree");
    }

    #[test]
    fn edges_fall_back_to_the_operator_until_an_edge_has_judged() {
        let unjudged = [member("p1", &[(A, Unknown)])];
        let c = combine(Vantage::Edges, &op(&[(A, Up)]), &unjudged, &none());
        assert_eq!(states(&c), [Up]);
        assert_eq!(c.vantages[0].vote, VantageVote::Counted);
        let c = combine(Vantage::Both, &op(&[(A, Unknown)]), &unjudged, &none());
        assert_eq!(states(&c), [Unknown]);
    }

    #[test]
    fn stale_and_isolated_members_are_not_counted() {
        let mut gone = member("p1", &[(A, Down), (B, Down)]);
        gone.fresh = false;
        let c = combine(Vantage::Edges, &op(&[(A, Up), (B, Up)]), &[gone], &none());
        assert_eq!(states(&c), [Up, Up]);
        assert_eq!(c.vantages[1].vote, VantageVote::Stale);

        let members = [
            member("p1", &[(A, Down), (B, Down)]),
            member("p2", &[(A, Up), (B, Up)]),
        ];
        let operator = op(&[(A, Up), (B, Up)]);
        let cut = isolated(&members, &HashMap::new());
        assert_eq!(cut, HashSet::from(["edge/p1".to_string()]));
        let c = combine(Vantage::Edges, &operator, &members, &cut);
        assert_eq!(states(&c), [Up, Up]);
        assert_eq!(c.vantages[1].vote, VantageVote::Isolated);
        assert_eq!(c.summary, "disagree: edge/p1 (Isolated) sees 0/2");
    }

    #[test]
    fn isolation_needs_someone_else_to_see_the_destinations_answer() {
        let all_down = [
            member("p1", &[(A, Down), (B, Down)]),
            member("p2", &[(A, Down), (B, Down)]),
        ];
        let operator: HashMap<String, EndpointState> =
            [(A.to_string(), Down), (B.to_string(), Down)].into();
        assert!(isolated(&all_down, &operator).is_empty(), "a real outage");
        // The operator alone seeing one destination answer is enough.
        let operator: HashMap<String, EndpointState> = [(A.to_string(), Up)].into();
        assert_eq!(isolated(&all_down, &operator).len(), 2);
        // A member that sees anything Up is not cut off; one that judged nothing is not.
        let partial = [
            member("p1", &[(A, Down), (B, Up)]),
            member("p2", &[(A, Unknown)]),
            member("p3", &[(A, Up)]),
        ];
        assert!(isolated(&partial, &HashMap::new()).is_empty());
        // A stale member neither is isolated nor vouches for others.
        let mut gone = member("p2", &[(A, Up)]);
        gone.fresh = false;
        let members = [member("p1", &[(A, Down)]), gone];
        assert!(isolated(&members, &HashMap::new()).is_empty());
    }

    #[test]
    fn summary_names_at_most_three_dissenters() {
        let members: Vec<MemberView> = (0..5)
            .map(|i| member(&format!("p{i}"), &[(A, Down)]))
            .collect();
        let c = combine(Vantage::Operator, &op(&[(A, Up)]), &members, &none());
        assert!(c.summary.ends_with("and 2 more"), "{}", c.summary);
    }
}
