//! Where the prober may send packets: an operator-wide allow/deny list of destination
//! CIDRs and ports, checked after name resolution and before the first packet.
//!
//! Anyone who may create a Trunk chooses the operator's destinations, and the operator
//! sits inside the cluster: without a list, a tenant could make it knock on the API
//! server, kubelets, the cloud metadata service (169.254.169.254) or its own loopback
//! and read from `lastError` whether a port is open. So the default denies every
//! address a SIP carrier cannot have (loopback, link-local, unspecified, multicast,
//! broadcast, documentation-only ranges are left alone since they never route), and
//! the operator adds the API server, node and Service addresses it learns at start.
//! An `allow` rule is an exception: it wins over any `deny` rule.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use ipnet::IpNet;

/// Ranges denied whatever the configuration says, unless an `allow` rule covers them.
pub const DEFAULT_DENY: &[&str] = &[
    // "This network" and the unspecified addresses.
    "0.0.0.0/8",
    "::/128",
    // Loopback: the operator's own pod (metrics port, sidecars).
    "127.0.0.0/8",
    "::1/128",
    // Link-local, including the cloud metadata services at 169.254.169.254 and
    // fd00:ec2::254 (AWS IPv6 metadata is in a ULA range; deny that address too).
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    // Multicast and limited broadcast.
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
];

/// One `CIDR[:PORT[-PORT]]` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    net: IpNet,
    ports: Option<RangeInclusive<u16>>,
    text: String,
}

/// A rule that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid destination rule {rule:?}: {why}; write CIDR[:PORT[-PORT]], e.g. 10.0.0.0/8, 192.0.2.7/32:5060 or fd00::/8:5060-5061"
)]
pub struct RuleError {
    /// The rule as given.
    pub rule: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Rule {
    /// Read `CIDR[:PORT[-PORT]]`. The prefix length is required, so that `10.0.0.1`
    /// cannot be mistaken for a network; the port part comes after the prefix length
    /// (`fd00::/8:5060`), which keeps IPv6 unambiguous.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let bad = |why| RuleError {
            rule: text.to_string(),
            why,
        };
        let t = text.trim();
        let slash = t.find('/').ok_or_else(|| bad("missing /prefix-length"))?;
        let after = &t[slash + 1..];
        let (prefix, ports) = match after.split_once(':') {
            Some((p, ports)) => (p, Some(ports)),
            None => (after, None),
        };
        let net: IpNet = format!("{}/{prefix}", &t[..slash])
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 CIDR"))?;
        let ports = match ports {
            None => None,
            Some(p) => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo.parse().map_err(|_| bad("port must be 1-65535"))?;
                let hi: u16 = hi.parse().map_err(|_| bad("port must be 1-65535"))?;
                if lo == 0 || hi < lo {
                    return Err(bad("port range must be 1-65535, low-high"));
                }
                Some(lo..=hi)
            }
        };
        Ok(Self {
            net: net.trunc(),
            ports,
            text: t.to_string(),
        })
    }

    /// A rule covering exactly one address, all ports.
    pub fn host(ip: IpAddr) -> Self {
        let net = IpNet::from(canonical(ip));
        Self {
            text: net.to_string(),
            net,
            ports: None,
        }
    }

    fn matches(&self, dest: SocketAddr) -> bool {
        self.net.contains(&canonical(dest.ip()))
            && self.ports.as_ref().is_none_or(|p| p.contains(&dest.port()))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it carries: a rule on
/// `127.0.0.0/8` must not be dodged by writing the address the other way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The refused destination.
    pub dest: SocketAddr,
    /// The deny rule that matched.
    pub rule: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "destination {} is forbidden by the operator's deny rule {} (ask the operator's administrator to add an allow rule if this carrier really lives there)",
            self.dest, self.rule
        )
    }
}

/// The operator-wide destination list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationPolicy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Default for DestinationPolicy {
    /// [`DEFAULT_DENY`], nothing allowed beyond it.
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: DEFAULT_DENY
                .iter()
                .map(|r| Rule::parse(r).expect("built-in rules are valid"))
                .collect(),
        }
    }
}

impl DestinationPolicy {
    /// No rule at all: every destination is allowed. For tests and embedding only.
    pub fn allow_all() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    /// [`DEFAULT_DENY`] plus `deny`, with `allow` as exceptions.
    pub fn with_rules(allow: &[String], deny: &[String]) -> Result<Self, RuleError> {
        let mut policy = Self::default();
        for r in deny {
            policy.deny.push(Rule::parse(r)?);
        }
        for r in allow {
            policy.allow.push(Rule::parse(r)?);
        }
        Ok(policy)
    }

    /// Add deny rules (e.g. the API server and node addresses found at start-up).
    pub fn deny(&mut self, rules: impl IntoIterator<Item = Rule>) {
        self.deny.extend(rules);
    }

    /// Add allow rules (exceptions).
    pub fn allow(&mut self, rules: impl IntoIterator<Item = Rule>) {
        self.allow.extend(rules);
    }

    /// Whether the prober may send to `dest`.
    pub fn check(&self, dest: SocketAddr) -> Result<(), Denied> {
        if self.allow.iter().any(|r| r.matches(dest)) {
            return Ok(());
        }
        // The most specific matching rule names the reason best (an operator's
        // 10.96.0.0/12 rather than a built-in catch-all).
        match self
            .deny
            .iter()
            .filter(|r| r.matches(dest))
            .max_by_key(|r| r.net.prefix_len())
        {
            Some(rule) => Err(Denied {
                dest,
                rule: rule.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The deny rules, for the start-up log.
    pub fn deny_rules(&self) -> impl Iterator<Item = &Rule> {
        self.deny.iter()
    }

    /// The allow rules, for the start-up log.
    pub fn allow_rules(&self) -> impl Iterator<Item = &Rule> {
        self.allow.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The default list classifies addresses without sending anything anywhere.
    #[test]
    fn default_list_denies_what_no_carrier_can_be() {
        let p = DestinationPolicy::default();
        for denied in [
            "127.0.0.1:5060",
            "127.255.0.9:8080",
            "0.0.0.0:5060",
            "169.254.169.254:80",
            "169.254.0.1:5060",
            "224.0.0.1:5060",
            "255.255.255.255:5060",
            "[::1]:5060",
            "[::]:5060",
            "[fe80::1]:5060",
            "[ff02::1]:5060",
            "[fd00:ec2::254]:80",
            // IPv4-mapped IPv6 must not dodge the IPv4 rules.
            "[::ffff:127.0.0.1]:5060",
            "[::ffff:169.254.169.254]:80",
        ] {
            let e = p.check(dest(denied)).expect_err(denied);
            assert!(e.to_string().contains("forbidden"), "{e}");
        }
        for allowed in [
            "203.0.113.10:5060",
            "198.51.100.7:5061",
            "192.0.2.1:5060",
            "8.8.8.8:5060",
            "10.1.2.3:5060",
            "[2001:db8::1]:5060",
            "[::ffff:203.0.113.10]:5060",
        ] {
            assert_eq!(p.check(dest(allowed)), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn operator_rules_ports_and_allow_exceptions() {
        let p = DestinationPolicy::with_rules(
            &["127.0.30.0/24:5060-5061".into()],
            &[
                "10.96.0.0/12".into(),
                "192.0.2.0/24:22".into(),
                "fd00::/8:5060".into(),
            ],
        )
        .unwrap();
        assert!(p.check(dest("10.96.0.1:443")).is_err());
        assert!(p.check(dest("10.111.255.255:5060")).is_err());
        assert!(p.check(dest("10.112.0.1:5060")).is_ok());
        assert!(p.check(dest("192.0.2.5:22")).is_err());
        assert!(p.check(dest("192.0.2.5:5060")).is_ok());
        assert!(p.check(dest("[fd12::1]:5060")).is_err());
        assert!(p.check(dest("[fd12::1]:5061")).is_ok());
        // The exception opens only its ports.
        assert!(p.check(dest("127.0.30.9:5060")).is_ok());
        assert!(p.check(dest("127.0.30.9:5061")).is_ok());
        assert!(p.check(dest("127.0.30.9:8080")).is_err());
        assert!(p.check(dest("127.0.31.1:5060")).is_err());
        let mut q = DestinationPolicy::default();
        q.deny([Rule::host("203.0.113.99".parse().unwrap())]);
        let e = q.check(dest("203.0.113.99:5060")).unwrap_err();
        assert_eq!(e.rule, "203.0.113.99/32");
        q.deny([Rule::parse("127.0.75.0/25").unwrap()]);
        let e = q.check(dest("127.0.75.1:5060")).unwrap_err();
        assert_eq!(e.rule, "127.0.75.0/25", "the most specific rule is named");
        assert!(
            DestinationPolicy::allow_all()
                .check(dest("127.0.0.1:1"))
                .is_ok()
        );
    }

    #[test]
    fn bad_rules_name_the_rule_and_the_fix() {
        for bad in [
            "10.0.0.1",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/8:0",
            "10.0.0.0/8:70000",
            "10.0.0.0/8:6000-5000",
            "10.0.0.0/8:a",
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains(bad) && e.to_string().contains("CIDR"),
                "{e}"
            );
        }
        // Host bits are cleared, so 10.1.2.3/8 means 10.0.0.0/8.
        assert_eq!(
            Rule::parse("10.1.2.3/8").unwrap().net,
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
    }
}
