//! The Kamailio `dispatcher.list` format, reduced to what sip-sync must confirm: which
//! destination URIs each set holds.
//!
//! A line is `setid destination [flags [priority [attrs]]]`, fields separated by
//! blanks; blank lines and lines starting with `#` are ignored. Kamailio itself
//! accepts (and silently drops) lines it cannot use, so sip-sync validates strictly
//! before writing and compares what Kamailio reports back after a reload.

use std::collections::BTreeMap;
use std::fmt;

/// One destination as sip-sync compares it: set id and URI. Flags, priority and
/// attributes are Kamailio's business (it rewrites flags with its own state letters).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// Dispatcher set id.
    pub set_id: u32,
    /// Destination SIP URI, exactly as written.
    pub uri: String,
}

/// A parsed list: destinations sorted by set id and URI (duplicates kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatcherList {
    destinations: Vec<Destination>,
}

/// Why a dispatcher list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No destination at all: applying it would leave Kamailio without routing.
    #[error("the dispatcher list has no destinations")]
    Empty,
    /// A line that Kamailio would drop or misread.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl DispatcherList {
    /// Build a list from destinations in any order.
    pub fn new(mut destinations: Vec<Destination>) -> Self {
        destinations.sort();
        Self { destinations }
    }

    /// The destinations, sorted by set id then URI.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// True when there is no destination.
    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }

    /// Number of destinations per set id.
    pub fn set_sizes(&self) -> BTreeMap<u32, usize> {
        let mut sizes = BTreeMap::new();
        for d in &self.destinations {
            *sizes.entry(d.set_id).or_insert(0) += 1;
        }
        sizes
    }

    /// Describe how `loaded` differs from `self` (the expected list), or `None` when
    /// both hold the same destinations in the same sets.
    pub fn difference(&self, loaded: &DispatcherList) -> Option<String> {
        if self == loaded {
            return None;
        }
        let missing: Vec<String> = self
            .destinations
            .iter()
            .filter(|d| !loaded.destinations.contains(d))
            .map(ToString::to_string)
            .collect();
        let unexpected: Vec<String> = loaded
            .destinations
            .iter()
            .filter(|d| !self.destinations.contains(d))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() && unexpected.is_empty() {
            return Some(format!(
                "same destinations, different counts (expected {}, loaded {})",
                self.destinations.len(),
                loaded.destinations.len()
            ));
        }
        Some(format!(
            "missing [{}], unexpected [{}]",
            missing.join(", "),
            unexpected.join(", ")
        ))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.set_id, self.uri)
    }
}

/// Parse and validate a dispatcher list. Rejects an empty list and any line Kamailio
/// would skip, so that what is written is exactly what gets loaded.
pub fn parse(text: &str) -> Result<DispatcherList, ParseError> {
    let mut destinations = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| ParseError::Line {
            line: index + 1,
            reason,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            return Err(err(
                "expected `setid destination [flags [priority [attrs]]]`".into(),
            ));
        }
        if fields.len() > 5 {
            return Err(err(format!(
                "{} fields; attributes must not contain blanks",
                fields.len()
            )));
        }
        let set_id: u32 = fields[0].parse().map_err(|_| {
            err(format!(
                "set id {:?} is not a non-negative integer",
                fields[0]
            ))
        })?;
        let uri = fields[1];
        if !valid_sip_uri(uri) {
            return Err(err(format!(
                "destination {uri:?} is not a sip:/sips: URI with a host"
            )));
        }
        for (name, value) in [("flags", fields.get(2)), ("priority", fields.get(3))] {
            if let Some(v) = value
                && v.parse::<i32>().is_err()
            {
                return Err(err(format!("{name} {v:?} is not an integer")));
            }
        }
        destinations.push(Destination {
            set_id,
            uri: uri.to_string(),
        });
    }
    if destinations.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(DispatcherList::new(destinations))
}

/// Each destination's line (fields joined by one blank), for telling whether a
/// destination's entry changed between two lists. Assumes a list [`parse`] accepted.
pub fn lines_by_destination(text: &str) -> std::collections::HashMap<Destination, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let set_id = fields.first()?.parse().ok()?;
            let uri = fields.get(1)?.to_string();
            Some((Destination { set_id, uri }, fields.join(" ")))
        })
        .collect()
}

/// `sip:` or `sips:`, then an optional `user@`, then a non-empty host.
fn valid_sip_uri(uri: &str) -> bool {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"));
    let Some(rest) = rest else { return false };
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host_part.split([';', '?']).next().unwrap_or_default();
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    !host.is_empty() && host != "["
}

/// Why Kamailio's `dispatcher.list` answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected dispatcher.list result: {0}")]
pub struct RpcShapeError(pub String);

/// Read the `result` of Kamailio's `dispatcher.list` RPC
/// (`{"NRSETS":n,"RECORDS":[{"SET":{"ID":1,"TARGETS":[{"DEST":{"URI":..}}]}}]}`).
pub fn from_rpc_result(result: &serde_json::Value) -> Result<DispatcherList, RpcShapeError> {
    let shape = |what: &str| RpcShapeError(what.to_string());
    let records = result
        .get("RECORDS")
        .and_then(|r| r.as_array())
        .ok_or_else(|| shape("no RECORDS array"))?;
    let mut destinations = Vec::new();
    for record in records {
        let set = record
            .get("SET")
            .ok_or_else(|| shape("record without SET"))?;
        let id = set
            .get("ID")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| shape("SET without a numeric ID"))?;
        // A set whose destinations all failed to load has no TARGETS.
        let targets = match set.get("TARGETS") {
            Some(t) => t
                .as_array()
                .ok_or_else(|| shape("TARGETS is not an array"))?,
            None => continue,
        };
        for target in targets {
            let uri = target
                .get("DEST")
                .and_then(|d| d.get("URI"))
                .and_then(|u| u.as_str())
                .ok_or_else(|| shape("TARGET without DEST.URI"))?;
            destinations.push(Destination {
                set_id: id,
                uri: uri.to_string(),
            });
        }
    }
    Ok(DispatcherList::new(destinations))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn dest(set_id: u32, uri: &str) -> Destination {
        Destination {
            set_id,
            uri: uri.into(),
        }
    }

    #[test]
    fn parses_sets_and_ignores_comments_and_optional_fields() {
        let text = "# lifeline routing\n\n1 sip:10.0.0.1:5060 0 10 weight=50;duid=a\n  # tier mobile\n1 sip:gw@10.0.0.2:5060;transport=tcp 8\n2 sips:[2001:db8::1]:5061\n";
        let list = parse(text).unwrap();
        assert_eq!(
            list.destinations(),
            &[
                dest(1, "sip:10.0.0.1:5060"),
                dest(1, "sip:gw@10.0.0.2:5060;transport=tcp"),
                dest(2, "sips:[2001:db8::1]:5061"),
            ]
        );
        assert_eq!(list.set_sizes(), BTreeMap::from([(1, 2), (2, 1)]));
    }

    #[test]
    fn rejects_empty_and_comment_only_lists() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert_eq!(parse("# nothing here\n\n"), Err(ParseError::Empty));
    }

    #[test]
    fn rejects_lines_kamailio_would_drop() {
        for (text, needle) in [
            ("garbage line\n", "set id"),
            ("1\n", "expected"),
            ("x sip:a:5060\n", "set id"),
            ("-1 sip:a:5060\n", "set id"),
            ("1 10.0.0.1:5060\n", "sip:/sips:"),
            ("1 sip:\n", "sip:/sips:"),
            ("1 sip:user@\n", "sip:/sips:"),
            ("1 sip:a:5060 x\n", "flags"),
            ("1 sip:a:5060 0 high\n", "priority"),
            ("1 sip:a:5060 0 0 a=b c=d\n", "blanks"),
        ] {
            let err = parse(&format!("1 sip:ok:5060\n{text}")).unwrap_err();
            match err {
                ParseError::Line { line, reason } => {
                    assert_eq!(line, 2, "{text:?}");
                    assert!(reason.contains(needle), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_kamailio_rpc_answer() {
        let result = json!({"NRSETS":2,"RECORDS":[
            {"SET":{"ID":3,"TARGETS":[{"DEST":{"URI":"sip:x@127.0.30.8","FLAGS":"AP","PRIORITY":0}}]}},
            {"SET":{"ID":1,"TARGETS":[{"DEST":{"URI":"sip:127.0.30.9:5070;transport=tcp","FLAGS":"AX","PRIORITY":5,
                "ATTRS":{"BODY":"weight=50","WEIGHT":50}}}]}}]});
        let list = from_rpc_result(&result).unwrap();
        assert_eq!(
            list,
            parse("1 sip:127.0.30.9:5070;transport=tcp 0 5 weight=50\n3 sip:x@127.0.30.8\n")
                .unwrap()
        );
        assert!(from_rpc_result(&json!({"RECORDS": [{"SET": {}}]})).is_err());
        assert!(from_rpc_result(&json!("Ok")).is_err());
    }

    #[test]
    fn difference_names_missing_and_unexpected_destinations() {
        let expected = parse("1 sip:a:5060\n1 sip:b:5060\n").unwrap();
        let loaded = DispatcherList::new(vec![dest(1, "sip:a:5060"), dest(2, "sip:c:5060")]);
        let diff = expected.difference(&loaded).unwrap();
        assert!(diff.contains("missing [1 sip:b:5060]"), "{diff}");
        assert!(diff.contains("unexpected [2 sip:c:5060]"), "{diff}");
        assert_eq!(expected.difference(&expected.clone()), None);
        let doubled = parse("1 sip:a:5060\n1 sip:a:5060\n1 sip:b:5060\n").unwrap();
        assert!(expected.difference(&doubled).unwrap().contains("counts"));
    }

    proptest! {
        /// Whatever order and comments surround them, the same destinations parse to
        /// the same list, and a rendered list round-trips.
        #[test]
        fn order_and_comments_do_not_matter(
            entries in proptest::collection::vec((0u32..70000, "[a-z]{1,8}", 1u16..65535), 1..20),
            comment in "[ -~]{0,30}",
        ) {
            let lines: Vec<String> = entries
                .iter()
                .map(|(set, host, port)| format!("{set} sip:{host}:{port} 0 0"))
                .collect();
            let forward = format!("# {comment}\n{}\n", lines.join("\n"));
            let mut reversed_lines = lines.clone();
            reversed_lines.reverse();
            let reversed = format!("{}\n\n#{comment}\n", reversed_lines.join("\n"));
            let a = parse(&forward).unwrap();
            let b = parse(&reversed).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.destinations().len(), entries.len());
        }
    }
}
