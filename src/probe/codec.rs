//! The SIP messages a prober needs: target URIs, the OPTIONS request it sends and the
//! responses it reads back.
//!
//! Hand-written on purpose. A prober needs four facts from a response (status code, top
//! Via branch, Call-ID, CSeq method) and must survive anything a network hands it, so a
//! small byte-level reader that never allocates more than the values it returns, never
//! indexes out of bounds and is fuzzed (`fuzz/`, plus a proptest below) is easier to
//! trust than a general SIP stack. It reads only what RFC 3261 §7 and §20 say a UAC
//! must understand: case-insensitive header names, compact forms (`v`, `i`, `l`),
//! line folding, several Via values in one header, and whitespace around `:`.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Largest message the parser looks at: the largest UDP payload. Longer input is
/// rejected as oversized rather than read.
pub const MAX_MESSAGE: usize = 65_535;

/// The magic cookie RFC 3261 §8.1.1.7 requires at the start of every branch.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// Why a URI or a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The target URI is not a usable `sip:`/`sips:` URI.
    #[error("invalid SIP URI {uri:?}: {why}")]
    Uri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The bytes are not a SIP response.
    #[error("malformed SIP response: {0}")]
    Malformed(&'static str),
    /// The message is larger than [`MAX_MESSAGE`].
    #[error("SIP message larger than {MAX_MESSAGE} bytes")]
    Oversized,
}

impl CodecError {
    /// Short static category for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            CodecError::Uri { .. } => "uri",
            CodecError::Malformed(_) | CodecError::Oversized => "parse",
        }
    }
}

/// How to reach a SIP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// SIP over UDP (the default for `sip:`).
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS (the default for `sips:`).
    Tls,
}

impl Transport {
    /// The token used in a Via header (`SIP/2.0/UDP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// The parts of a target URI the prober needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// Host name or IP address (without IPv6 brackets).
    pub host: String,
    /// Port; 5060 (or 5061 for TLS) when the URI has none.
    pub port: u16,
    /// Transport from the scheme and `;transport=`.
    pub transport: Transport,
    /// Whether the URI names a port (RFC 3263 then skips NAPTR and SRV).
    pub port_given: bool,
    /// Whether the URI has `;transport=` (RFC 3263 then skips NAPTR).
    pub transport_given: bool,
    /// `sips:` (TLS required on every hop).
    pub secure: bool,
}

/// Read a `sip:`/`sips:` URI: scheme, optional user part, host (name, IPv4 or
/// `[IPv6]`), optional port, `;params` (only `transport` matters; a `?headers` part is
/// ignored).
pub fn parse_uri(uri: &str) -> Result<SipUri, CodecError> {
    let bad = |why| CodecError::Uri {
        uri: uri.to_string(),
        why,
    };
    let trimmed = uri.trim();
    let (secure, rest) = if let Some(r) = strip_prefix_ci(trimmed, "sips:") {
        (true, r)
    } else if let Some(r) = strip_prefix_ci(trimmed, "sip:") {
        (false, r)
    } else {
        return Err(bad("scheme must be sip: or sips:"));
    };
    let rest = rest.split('?').next().unwrap_or_default();
    // The user part may itself contain ';' (user parameters), so drop it first.
    let rest = match rest.rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let mut parts = rest.split(';');
    let hostport = parts.next().unwrap_or_default();
    let mut transport = if secure {
        Transport::Tls
    } else {
        Transport::Udp
    };
    let mut transport_given = false;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.eq_ignore_ascii_case("transport") {
            transport_given = true;
            transport = match value.to_ascii_lowercase().as_str() {
                "udp" if !secure => Transport::Udp,
                "tcp" if !secure => Transport::Tcp,
                "tls" | "tcp" => Transport::Tls,
                "udp" => return Err(bad("sips: cannot use transport=udp")),
                _ => return Err(bad("transport must be udp, tcp or tls")),
            };
        }
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    if !valid_host {
        return Err(bad("missing or invalid host"));
    }
    let port_given = port.is_some();
    let port = match port {
        None if transport == Transport::Tls => 5061,
        None => 5060,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("port must be 1-65535")),
        },
    };
    Ok(SipUri {
        host: host.to_string(),
        port,
        transport,
        port_given,
        transport_given,
        secure,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The identifiers of one probe: a response belongs to it when its top Via branch and
/// its Call-ID are these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeIds {
    /// Via branch, starting with [`BRANCH_COOKIE`].
    pub branch: String,
    /// Call-ID.
    pub call_id: String,
    /// From tag.
    pub from_tag: String,
}

impl ProbeIds {
    /// Fresh random identifiers (128 bits for branch and Call-ID).
    pub fn random() -> Self {
        Self {
            branch: format!("{BRANCH_COOKIE}{:032x}", rand::random::<u128>()),
            call_id: format!("{:032x}@lifeline", rand::random::<u128>()),
            from_tag: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

/// Build an OPTIONS request for `request_uri`, sent from `local` over `transport`.
///
/// RFC 3261 §8.1.1 and §11: Via with the branch and `rport` (RFC 3581, so that the
/// answer comes back to the port we sent from even behind NAT), Max-Forwards 70, From
/// with a tag, To without one, Call-ID, CSeq, `Accept: application/sdp` and
/// Content-Length 0.
pub fn build_options(
    request_uri: &str,
    transport: Transport,
    local: SocketAddr,
    ids: &ProbeIds,
) -> String {
    // Strip URI headers (`?...`): they do not belong in a Request-URI.
    let request_uri = request_uri.trim();
    let request_uri = request_uri.split('?').next().unwrap_or(request_uri);
    let mut m = String::with_capacity(420 + 2 * request_uri.len());
    // Writing into a String cannot fail.
    let _ = write!(
        m,
        "OPTIONS {request_uri} SIP/2.0\r\n\
         Via: SIP/2.0/{} {local};branch={};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:lifeline@{}>;tag={}\r\n\
         To: <{request_uri}>\r\n\
         Call-ID: {}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         User-Agent: lifeline\r\n\
         Content-Length: 0\r\n\r\n",
        transport.via_token(),
        ids.branch,
        HostOnly(local),
        ids.from_tag,
        ids.call_id,
    );
    m
}

/// Formats the IP of a socket address as a URI host (IPv6 in brackets).
struct HostOnly(SocketAddr);

impl std::fmt::Display for HostOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            SocketAddr::V4(a) => write!(f, "{}", a.ip()),
            SocketAddr::V6(a) => write!(f, "[{}]", a.ip()),
        }
    }
}

/// What a prober needs from a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (100–699).
    pub code: u16,
    /// `branch` of the top Via, if any.
    pub branch: Option<String>,
    /// Call-ID, if any.
    pub call_id: Option<String>,
    /// Method of the CSeq header, if any.
    pub cseq_method: Option<String>,
}

impl Response {
    /// True for a final response (≥ 200); 1xx are provisional.
    pub fn is_final(&self) -> bool {
        self.code >= 200
    }

    /// True when this response answers the probe with these identifiers.
    pub fn answers(&self, ids: &ProbeIds) -> bool {
        self.branch.as_deref() == Some(ids.branch.as_str())
            && self.call_id.as_deref() == Some(ids.call_id.as_str())
    }
}

/// Read a SIP response from `msg` (one datagram, or one framed stream message). The
/// body is not read, but its length is checked as RFC 3261 §18.3 requires: an
/// unparseable (or repeated, disagreeing) `Content-Length` makes the message malformed,
/// and a body shorter than `Content-Length` means the message was cut and must be
/// discarded. Extra bytes after the declared body are ignored (§18.3: on UDP the
/// `Content-Length` wins). Lines may end in CRLF or a bare LF (§7.5 robustness).
pub fn parse_response(msg: &[u8]) -> Result<Response, CodecError> {
    if msg.len() > MAX_MESSAGE {
        return Err(CodecError::Oversized);
    }
    // RFC 3261 §7.5: ignore CRLFs before the start line (keep-alives on streams).
    let start = msg
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(CodecError::Malformed("empty message"))?;
    let msg = &msg[start..];
    let head_end =
        header_end(msg).ok_or(CodecError::Malformed("no blank line after the headers"))?;
    let head = &msg[..head_end];
    let mut lines = unfold_lines(head);
    let status_line = lines
        .next()
        .ok_or(CodecError::Malformed("no status line"))?;
    let code = parse_status_line(&status_line)?;
    let mut resp = Response {
        code,
        branch: None,
        call_id: None,
        cseq_method: None,
    };
    let mut content_length = None;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(CodecError::Malformed("header line without ':'"));
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        if is_header(name, b"via", b"v") {
            // Only the first Via value of the first Via header is ours.
            if resp.branch.is_none() {
                resp.branch = Some(top_via_branch(value).unwrap_or_default());
            }
        } else if is_header(name, b"call-id", b"i") {
            if resp.call_id.is_some() {
                return Err(CodecError::Malformed("more than one Call-ID"));
            }
            resp.call_id = Some(utf8(value)?.to_string());
        } else if is_header(name, b"cseq", b"") {
            let text = utf8(value)?;
            let mut it = text.split_ascii_whitespace();
            let seq = it.next().and_then(|s| s.parse::<u32>().ok());
            let method = it.next();
            match (seq, method) {
                (Some(_), Some(m)) => resp.cseq_method = Some(m.to_string()),
                _ => return Err(CodecError::Malformed("invalid CSeq")),
            }
        } else if is_header(name, b"content-length", b"l") {
            content_length = Some(merge_length(content_length, value)?);
        }
    }
    if let Some(declared) = content_length
        && msg.len() - head_end < declared
    {
        return Err(CodecError::Malformed(
            "body shorter than Content-Length (message cut in transit)",
        ));
    }
    // An empty branch means the top Via had none: report it as missing.
    if resp.branch.as_deref() == Some("") {
        resp.branch = None;
    }
    Ok(resp)
}

/// How many bytes the first message in a stream buffer takes, once it is complete:
/// `Ok(None)` means "read more". Used to frame TCP and TLS. Header lines may end in
/// CRLF or a bare LF (RFC 3261 §7.5 asks for that robustness); `Content-Length` is
/// mandatory on streams (§18.3) and must be a number.
pub fn stream_message_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    let lead = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let Some(head_end) = header_end(&buf[lead..]).map(|i| lead + i) else {
        return if buf.len() > MAX_MESSAGE {
            Err(CodecError::Oversized)
        } else {
            Ok(None)
        };
    };
    let mut length = None;
    for line in unfold_lines(&buf[lead..head_end]).skip(1) {
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && is_header(trim(&line[..colon]), b"content-length", b"l")
        {
            length = Some(merge_length(length, trim(&line[colon + 1..]))?);
        }
    }
    // RFC 3261 §18.3: on streams Content-Length is mandatory.
    let body = length.ok_or(CodecError::Malformed("no Content-Length on a stream"))?;
    let total = head_end.saturating_add(body);
    if total > MAX_MESSAGE {
        return Err(CodecError::Oversized);
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Index just past the empty line that ends the header block (CRLF or bare LF line
/// ends, mixed freely), if the block is complete.
fn header_end(msg: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in msg.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line = &msg[line_start..i];
        if line.is_empty() || line == b"\r" {
            // The start line itself is never empty (leading CRLFs are skipped first).
            return (line_start > 0).then_some(i + 1);
        }
        line_start = i + 1;
    }
    None
}

/// A `Content-Length` value: decimal digits only. A second header must agree.
fn merge_length(seen: Option<usize>, value: &[u8]) -> Result<usize, CodecError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(CodecError::Malformed("Content-Length is not a number"));
    }
    let n = utf8(value)?
        .parse::<usize>()
        .map_err(|_| CodecError::Malformed("Content-Length out of range"))?;
    match seen {
        Some(m) if m != n => Err(CodecError::Malformed("conflicting Content-Length headers")),
        _ => Ok(n),
    }
}

fn parse_status_line(line: &[u8]) -> Result<u16, CodecError> {
    let rest = strip_prefix_bytes_ci(line, b"SIP/2.0 ").ok_or(CodecError::Malformed(
        "status line does not start with SIP/2.0",
    ))?;
    let digits = rest.get(..3).ok_or(CodecError::Malformed("short status"))?;
    if !digits.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return Err(CodecError::Malformed("status code is not three digits"));
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&code) {
        return Err(CodecError::Malformed("status code out of range"));
    }
    Ok(code)
}

/// The `branch` parameter of the first value in a Via header value. Values are
/// separated by commas outside quotes; parameters by `;`.
fn top_via_branch(value: &[u8]) -> Option<String> {
    let mut in_quotes = false;
    let end = value
        .iter()
        .position(|&b| {
            if b == b'"' {
                in_quotes = !in_quotes;
            }
            b == b',' && !in_quotes
        })
        .unwrap_or(value.len());
    let first = &value[..end];
    first.split(|&b| b == b';').skip(1).find_map(|param| {
        let (name, val) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (trim(&param[..eq]), trim(&param[eq + 1..])),
            None => (trim(param), &[][..]),
        };
        name.eq_ignore_ascii_case(b"branch")
            .then(|| String::from_utf8_lossy(val).into_owned())
    })
}

/// Split a header block into logical lines (CRLF or bare LF), joining continuation
/// lines (starting with SP or HTAB) to the previous one, as RFC 3261 §7.3.1 requires.
fn unfold_lines(head: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut physical = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .peekable();
    std::iter::from_fn(move || {
        loop {
            let first = physical.next()?;
            if first.is_empty() {
                continue;
            }
            let mut line = first.to_vec();
            while let Some(next) = physical.peek() {
                if next.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                    line.push(b' ');
                    line.extend_from_slice(trim(next));
                    physical.next();
                } else {
                    break;
                }
            }
            return Some(line);
        }
    })
}

fn is_header(name: &[u8], long: &[u8], compact: &[u8]) -> bool {
    name.eq_ignore_ascii_case(long) || (!compact.is_empty() && name.eq_ignore_ascii_case(compact))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

fn utf8(s: &[u8]) -> Result<&str, CodecError> {
    std::str::from_utf8(s).map_err(|_| CodecError::Malformed("header value is not UTF-8"))
}

fn strip_prefix_bytes_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids() -> ProbeIds {
        ProbeIds {
            branch: "z9hG4bKabc".into(),
            call_id: "cid@lifeline".into(),
            from_tag: "t1".into(),
        }
    }

    #[test]
    fn uris_give_host_port_and_transport() {
        let u = parse_uri("sip:203.0.113.10:5070;transport=tcp").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("203.0.113.10", 5070, Transport::Tcp)
        );
        let u = parse_uri("sips:carrier.example.net").unwrap();
        assert_eq!((u.port, u.transport), (5061, Transport::Tls));
        let u = parse_uri("sip:alice;day=tue@[2001:db8::1]:5062").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 5062));
        assert_eq!(parse_uri("SIP:h").unwrap().transport, Transport::Udp);
        for bad in [
            "http://x",
            "sip:",
            "sip:h:0",
            "sip:h:99999",
            "sip:[::1",
            "sip:h;transport=sctp",
            "sips:h;transport=udp",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_request_has_the_rfc3261_headers() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let m = build_options("sip:127.0.10.1:5060", Transport::Udp, local, &ids());
        assert!(m.starts_with("OPTIONS sip:127.0.10.1:5060 SIP/2.0\r\n"));
        assert!(m.contains("Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc;rport\r\n"));
        assert!(m.contains("Max-Forwards: 70\r\n"));
        assert!(m.contains("From: <sip:lifeline@127.0.0.1>;tag=t1\r\n"));
        assert!(m.contains("To: <sip:127.0.10.1:5060>\r\n"));
        assert!(m.contains("Call-ID: cid@lifeline\r\n"));
        assert!(m.contains("CSeq: 1 OPTIONS\r\n"));
        assert!(m.ends_with("Content-Length: 0\r\n\r\n"));
        let ids = ProbeIds::random();
        assert!(ids.branch.starts_with(BRANCH_COOKIE));
        assert_ne!(ids, ProbeIds::random());
    }

    #[test]
    fn reads_a_typical_answer() {
        let msg = b"SIP/2.0 200 OK\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc;rport=40000;received=127.0.0.1\r\n\
            From: <sip:lifeline@127.0.0.1>;tag=t1\r\nTo: <sip:x>;tag=99\r\n\
            Call-ID: cid@lifeline\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let r = parse_response(msg).unwrap();
        assert_eq!(r.code, 200);
        assert!(r.answers(&ids()) && r.is_final());
        assert_eq!(r.cseq_method.as_deref(), Some("OPTIONS"));
    }

    #[test]
    fn compact_folded_and_multi_value_headers() {
        let msg = b"SIP/2.0 503 Service Unavailable\n\
            v  : SIP/2.0/UDP a;BRANCH = z9hG4bKabc ;rport,\n SIP/2.0/UDP b;branch=other\n\
            i:cid@lifeline\nCSeq:\n\t1 OPTIONS\n\n";
        let r = parse_response(msg).unwrap();
        assert_eq!(r.code, 503);
        assert!(r.answers(&ids()));
    }

    #[test]
    fn someone_elses_branch_does_not_match() {
        let msg = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKother\r\nCall-ID: cid@lifeline\r\n\r\n";
        assert!(!parse_response(msg).unwrap().answers(&ids()));
    }

    #[test]
    fn rejects_garbage_truncated_and_oversized() {
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"hello world\r\n\r\n").is_err());
        assert!(parse_response(b"SIP/2.0 200 OK\r\nVia: x").is_err());
        assert!(parse_response(b"SIP/2.0 20 OK\r\n\r\n").is_err());
        assert!(parse_response(b"SIP/2.0 999 OK\r\n\r\n").is_err());
        assert!(parse_response(b"OPTIONS sip:x SIP/2.0\r\n\r\n").is_err());
        let big = vec![b'a'; MAX_MESSAGE + 1];
        assert_eq!(parse_response(&big), Err(CodecError::Oversized));
    }

    #[test]
    fn frames_stream_messages_by_content_length() {
        let m = b"\r\nSIP/2.0 200 OK\r\nl: 3\r\n\r\nabcSIP/2.0";
        assert_eq!(stream_message_len(&m[..20]), Ok(None));
        assert_eq!(stream_message_len(m), Ok(Some(m.len() - 7)));
        assert!(stream_message_len(b"SIP/2.0 200 OK\r\n\r\n").is_err());
    }

    /// RFC 3261 §7.5: a peer that ends lines with a bare LF is framed like one that
    /// uses CRLF, also when the two are mixed.
    #[test]
    fn frames_bare_lf_streams() {
        let m = b"SIP/2.0 200 OK\nVia: SIP/2.0/TCP a;branch=z9hG4bKabc\ni: cid@lifeline\nContent-Length: 2\n\nokSIP";
        assert_eq!(stream_message_len(&m[..40]), Ok(None));
        assert_eq!(stream_message_len(m), Ok(Some(m.len() - 3)));
        let r = parse_response(&m[..m.len() - 3]).unwrap();
        assert!(r.answers(&ids()));
        let mixed = b"SIP/2.0 200 OK\r\nl: 0\n\r\n";
        assert_eq!(stream_message_len(mixed), Ok(Some(mixed.len())));
    }

    /// RFC 3261 §18.3: a datagram whose body is shorter than its Content-Length was
    /// cut and is discarded; a Content-Length that is not a number is malformed; a
    /// longer body is cut to the declared length (accepted).
    #[test]
    fn content_length_rules_on_datagrams() {
        let head =
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKabc\r\nCall-ID: cid@lifeline\r\n";
        let with = |cl: &str, body: &str| format!("{head}Content-Length: {cl}\r\n\r\n{body}");
        assert!(parse_response(with("4", "abcd").as_bytes()).is_ok());
        assert!(parse_response(with("2", "abcd").as_bytes()).is_ok());
        for (cl, body) in [
            ("5", "abcd"),
            ("x", ""),
            ("-1", ""),
            ("1e3", ""),
            ("", ""),
            ("99999999999999999999999", ""),
        ] {
            assert!(
                parse_response(with(cl, body).as_bytes()).is_err(),
                "Content-Length {cl:?} with {} body bytes must be discarded",
                body.len()
            );
            let framed = stream_message_len(with(cl, body).as_bytes());
            if cl == "5" {
                assert_eq!(framed, Ok(None), "a stream waits for the rest of the body");
            } else {
                assert!(
                    framed.is_err(),
                    "Content-Length {cl:?} on a stream: {framed:?}"
                );
            }
        }
        let twice = format!("{head}Content-Length: 0\r\nl: 3\r\n\r\nabc");
        assert!(parse_response(twice.as_bytes()).is_err());
        assert!(stream_message_len(twice.as_bytes()).is_err());
    }

    /// `tests/fixtures/sip/torture/`: `ok-<code>-*` parse with that code, `err-*` are
    /// rejected, none panics.
    #[test]
    fn torture_fixtures() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sip/torture");
        let ours = ProbeIds {
            branch: "z9hG4bKtorture".into(),
            call_id: "torture@lifeline".into(),
            from_tag: "t1".into(),
        };
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".sip") {
                continue;
            }
            seen += 1;
            let bytes = std::fs::read(&path).unwrap();
            let parsed = parse_response(&bytes);
            if let Some(rest) = name.strip_prefix("ok-") {
                let code: u16 = rest[..3].parse().unwrap();
                let r = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(r.code, code, "{name}");
                assert_eq!(r.answers(&ours), !name.contains("other-branch"), "{name}");
            } else {
                assert!(parsed.is_err(), "{name} should be rejected: {parsed:?}");
            }
        }
        assert!(seen >= 10, "fixtures missing in {}", dir.display());
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_response(&bytes);
            let _ = stream_message_len(&bytes);
        }

        #[test]
        fn parser_never_panics_on_sip_like_text(
            code in 0u16..1000,
            headers in proptest::collection::vec("[A-Za-z-]{0,12}[ \t]*:[ -~\t]{0,40}(\r?\n[ \t])?", 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut msg = format!("SIP/2.0 {code} Reason\r\n");
            for h in &headers { msg.push_str(h); msg.push_str("\r\n"); }
            msg.push_str("\r\n");
            let bytes = msg.as_bytes();
            let _ = parse_response(bytes);
            let _ = parse_response(&bytes[..cut.index(bytes.len() + 1)]);
            let _ = stream_message_len(&bytes[..cut.index(bytes.len() + 1)]);
        }

        /// §18.3 and §7.5 together: a message cut anywhere inside its body is never
        /// accepted (a stream waits for more), and bare-LF line ends frame and parse
        /// exactly like CRLF.
        #[test]
        fn cut_bodies_are_discarded_and_bare_lf_frames_like_crlf(
            body in "[ -~]{1,60}", cut in 1usize..60, lf in any::<bool>(),
        ) {
            let cut = cut.min(body.len());
            let crlf = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKabc\r\nCall-ID: cid@lifeline\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let msg = if lf { crlf.replace("\r\n", "\n") } else { crlf };
            prop_assert!(parse_response(msg.as_bytes()).unwrap().answers(&ids()));
            prop_assert_eq!(stream_message_len(msg.as_bytes()), Ok(Some(msg.len())));
            let short = &msg.as_bytes()[..msg.len() - cut];
            prop_assert!(parse_response(short).is_err());
            prop_assert_eq!(stream_message_len(short), Ok(None));
        }

        #[test]
        fn built_requests_round_trip_their_ids(port in 1u16.., a in any::<[u8; 4]>()) {
            let local = SocketAddr::from((a, port));
            let ids = ProbeIds::random();
            let req = build_options("sip:h", Transport::Udp, local, &ids);
            // Turn our own request into the response a peer would send.
            let resp = req.replacen("OPTIONS sip:h SIP/2.0", "SIP/2.0 200 OK", 1);
            let r = parse_response(resp.as_bytes()).unwrap();
            prop_assert!(r.answers(&ids));
        }
    }
}
