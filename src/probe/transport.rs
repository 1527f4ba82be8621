//! Sending one OPTIONS round for an endpoint and waiting for the final answers, over
//! UDP, TCP or TLS.
//!
//! A round resolves the URI (RFC 3263, [`resolve`](super::resolve)), drops every target
//! the operator's destination list forbids ([`policy`](super::policy)) before a single
//! packet leaves, and probes the remaining targets concurrently.
//!
//! UDP uses one shared socket per address family, bound to an ephemeral port, with
//! one receive task that hands each answer to the probe waiting for its branch. Ten
//! thousand endpoints then cost two file descriptors and two tasks instead of ten
//! thousand sockets. The price: an unconnected socket does not see ICMP "port
//! unreachable", so a closed UDP port shows up as a timeout (the same as a silent host).
//! Each datagram costs O(1) whatever arrives: answers are found by branch, garbage by
//! source address, so a peer that floods the socket cannot slow other tenants' probes.
//! TCP and TLS open one connection per probe; a refused or reset connection fails the
//! probe at once.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OnceCell, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, ProbeIds, SipUri, Transport};
use super::health::{FailureKind, Outcome};
use super::policy::DestinationPolicy;
use super::resolve::{DnsConfig, Resolution, Resolver, Target};
use super::tls::{self, TlsConfigs, TlsSettings};
use crate::lock;

/// Most destinations whose source address is remembered for the Via header.
const MAX_LOCAL_IPS: usize = 4096;

/// What one probe round found.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// Per target, in RFC 3263 order (forbidden targets included, never contacted).
    pub targets: Vec<TargetReport>,
    /// Set when no target could be probed at all (bad URI, no DNS answer, every
    /// target forbidden).
    pub failure: Option<Outcome>,
    /// Set when DNS failed and the last good answer was used.
    pub stale_dns: Option<String>,
}

/// The result of probing one resolved target.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetReport {
    /// The target.
    pub target: Target,
    /// What happened.
    pub outcome: Outcome,
}

impl ProbeReport {
    fn failed(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            targets: Vec::new(),
            failure: Some(failed(kind, detail)),
            stale_dns: None,
        }
    }

    /// The endpoint's outcome: the first target (in failover order) that answered
    /// with a code `alive` accepts, else the first target's outcome.
    pub fn outcome(&self, alive: impl Fn(u16) -> bool) -> Outcome {
        if let Some(f) = &self.failure {
            return f.clone();
        }
        let probed = || {
            self.targets.iter().filter(|t| {
                !matches!(
                    t.outcome,
                    Outcome::Failed {
                        kind: FailureKind::Forbidden,
                        ..
                    }
                )
            })
        };
        probed()
            .find(|t| matches!(t.outcome, Outcome::Answered { code, .. } if alive(code)))
            .or_else(|| probed().next())
            .map(|t| t.outcome.clone())
            .unwrap_or_else(|| failed(FailureKind::Resolve, "no target to probe"))
    }
}

/// Sends probes; shared by every endpoint schedule of a hub.
pub struct Prober {
    v4: OnceCell<Arc<UdpShared>>,
    v6: OnceCell<Arc<UdpShared>>,
    /// Source IP the kernel picks per destination IP, for the Via header (bounded).
    local_ips: Mutex<HashMap<IpAddr, IpAddr>>,
    /// Source address of every probe (an edge probes from Kamailio's address); `None`:
    /// the kernel picks one per destination.
    source: Option<IpAddr>,
    /// Source port of the shared UDP socket when `source` is set (0: any).
    source_port: u16,
    policy: DestinationPolicy,
    resolver: Resolver,
    tls: TlsConfigs,
    shutdown: CancellationToken,
}

/// One shared UDP socket and the probes waiting on it.
struct UdpShared {
    socket: UdpSocket,
    port: u16,
    pending: Mutex<PendingMap>,
}

#[derive(Default)]
struct PendingMap {
    by_branch: HashMap<String, Pending>,
    /// Probes waiting per destination, and whether it sent something unreadable.
    by_dest: HashMap<SocketAddr, DestPending>,
}

struct DestPending {
    waiting: u32,
    garbage: bool,
}

struct Pending {
    call_id: String,
    answer: Option<oneshot::Sender<u16>>,
}

fn failed(kind: FailureKind, detail: impl Into<String>) -> Outcome {
    Outcome::Failed {
        kind,
        detail: detail.into(),
    }
}

fn io_failure(what: &str, e: &io::Error) -> Outcome {
    use io::ErrorKind::*;
    let kind = match e.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | HostUnreachable
        | NetworkUnreachable | BrokenPipe | UnexpectedEof | NotConnected | AddrNotAvailable => {
            FailureKind::Connect
        }
        _ => FailureKind::Io,
    };
    failed(kind, format!("{what}: {e}"))
}

impl Prober {
    /// A prober whose receive tasks stop when `shutdown` is cancelled, sending only
    /// where `policy` allows and resolving names with `dns`.
    pub fn new(shutdown: CancellationToken, policy: DestinationPolicy, dns: DnsConfig) -> Self {
        Self {
            v4: OnceCell::new(),
            v6: OnceCell::new(),
            local_ips: Mutex::new(HashMap::new()),
            source: None,
            source_port: 0,
            policy,
            resolver: Resolver::new(dns),
            tls: TlsConfigs::default(),
            shutdown,
        }
    }

    /// Send every probe from `source` (UDP and TCP sockets are bound to it), so that a
    /// peer that filters by source address sees that address, and put it in `Via` and
    /// `From`; UDP probes leave from `port` (0: any). Destinations of the other
    /// address family keep the kernel's choice.
    pub fn with_source(mut self, source: Option<IpAddr>, port: u16) -> Self {
        self.source = source;
        self.source_port = port;
        self
    }

    /// The source address for destinations of `dest`'s family, if one is set.
    fn source_for(&self, dest: IpAddr) -> Option<IpAddr> {
        self.source.filter(|s| s.is_ipv4() == dest.is_ipv4())
    }

    /// Names the resolver cache holds (bounded).
    pub fn cached_names(&self) -> usize {
        self.resolver.cached_names()
    }

    /// Probe every resolved target of `uri` once, giving up after `timeout`
    /// (resolution included).
    pub async fn probe(
        &self,
        uri: &str,
        tls: Option<&TlsSettings>,
        timeout: Duration,
    ) -> ProbeReport {
        let deadline = Instant::now() + timeout;
        let parsed = match codec::parse_uri(uri) {
            Ok(t) => t,
            Err(e) => return ProbeReport::failed(FailureKind::Unsupported, e.to_string()),
        };
        // Boxed: the DNS walk's future is large, and it would otherwise sit inside
        // every endpoint's task, 10,000 times, even for IP literals that never use it.
        let resolution = match super::resolve::literal(&parsed) {
            Some(r) => r,
            None => Box::pin(self.resolver.resolve(&parsed, timeout)).await,
        };
        let (targets, stale_dns) = match resolution {
            Resolution::Fresh(t) => (t, None),
            Resolution::Stale { targets, error } => (targets, Some(error)),
            Resolution::Failed(e) => return ProbeReport::failed(FailureKind::Resolve, e),
        };
        let mut reports = Vec::with_capacity(targets.len());
        let mut allowed = Vec::with_capacity(targets.len());
        let mut denied = None;
        for (i, t) in targets.iter().enumerate() {
            match self.policy.check(t.addr) {
                Ok(()) => allowed.push(i),
                Err(d) => {
                    denied.get_or_insert_with(|| d.to_string());
                    reports.push(TargetReport {
                        target: t.clone(),
                        outcome: failed(FailureKind::Forbidden, d.to_string()),
                    });
                }
            }
        }
        if allowed.is_empty() {
            let detail = denied.unwrap_or_else(|| "no target".into());
            return ProbeReport {
                targets: reports,
                failure: Some(failed(FailureKind::Forbidden, detail)),
                stale_dns,
            };
        }
        let parsed = &parsed;
        if let [only] = allowed[..] {
            // The common case (an IP literal, or one SRV target): no join, no sort.
            let outcome = self
                .probe_target(uri, parsed, &targets[only], tls, deadline, timeout)
                .await;
            reports.push(TargetReport {
                target: targets[only].clone(),
                outcome,
            });
            reports.sort_by_key(|r| targets.iter().position(|t| *t == r.target));
            return ProbeReport {
                targets: reports,
                failure: None,
                stale_dns,
            };
        }
        let rounds = allowed.iter().map(|&i| {
            let t = &targets[i];
            async move {
                let outcome = self
                    .probe_target(uri, parsed, t, tls, deadline, timeout)
                    .await;
                (i, outcome)
            }
        });
        for (i, outcome) in Box::pin(futures::future::join_all(rounds)).await {
            reports.push(TargetReport {
                target: targets[i].clone(),
                outcome,
            });
        }
        // Back into resolution order.
        reports.sort_by_key(|r| targets.iter().position(|t| *t == r.target));
        ProbeReport {
            targets: reports,
            failure: None,
            stale_dns,
        }
    }

    async fn probe_target(
        &self,
        uri: &str,
        parsed: &SipUri,
        target: &Target,
        tls: Option<&TlsSettings>,
        deadline: Instant,
        timeout: Duration,
    ) -> Outcome {
        match target.transport {
            Transport::Udp => self.probe_udp(uri, target.addr, deadline, timeout).await,
            // Boxed for the same reason as the DNS walk: TCP/TLS futures are large.
            Transport::Tcp => {
                let source = self.source_for(target.addr.ip());
                Box::pin(probe_tcp(uri, target.addr, source, None, deadline, timeout)).await
            }
            Transport::Tls => {
                let setup = self.tls.config(tls).and_then(|config| {
                    tls::server_name(&parsed.host, tls).map(|name| (config, name))
                });
                match setup {
                    Ok(s) => {
                        let source = self.source_for(target.addr.ip());
                        Box::pin(probe_tcp(
                            uri,
                            target.addr,
                            source,
                            Some(s),
                            deadline,
                            timeout,
                        ))
                        .await
                    }
                    Err(e) => failed(FailureKind::Tls, e),
                }
            }
        }
    }

    async fn probe_udp(
        &self,
        uri: &str,
        dest: SocketAddr,
        deadline: Instant,
        timeout: Duration,
    ) -> Outcome {
        let shared = match self.udp_socket(dest).await {
            Ok(s) => s,
            Err(e) => return io_failure("binding a UDP socket", &e),
        };
        let local_ip = match self.local_ip(dest.ip()) {
            Ok(ip) => ip,
            Err(e) => return io_failure("no route", &e),
        };
        let ids = ProbeIds::random();
        let msg = codec::build_options(
            uri,
            Transport::Udp,
            SocketAddr::new(local_ip, shared.port),
            &ids,
        );
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&shared.pending);
            pending.by_branch.insert(
                ids.branch.clone(),
                Pending {
                    call_id: ids.call_id,
                    answer: Some(tx),
                },
            );
            pending
                .by_dest
                .entry(dest)
                .or_insert(DestPending {
                    waiting: 0,
                    garbage: false,
                })
                .waiting += 1;
        }
        // Removes the entry however this future ends (answer, timeout, cancellation).
        let guard = PendingGuard {
            shared: &shared,
            branch: &ids.branch,
            dest,
        };
        let started = Instant::now();
        if let Err(e) = shared.socket.send_to(msg.as_bytes(), dest).await {
            return io_failure("sending", &e);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(code)) => Outcome::Answered {
                code,
                rtt_millis: millis(started.elapsed()),
            },
            Ok(Err(_)) => failed(FailureKind::Io, "the UDP receive task stopped"),
            Err(_) if guard.saw_garbage() => failed(
                FailureKind::Parse,
                format!("unreadable answer from {dest}, no valid response within {timeout:?}"),
            ),
            Err(_) => timed_out(timeout, "waiting for a final response"),
        }
    }

    async fn udp_socket(&self, dest: SocketAddr) -> io::Result<Arc<UdpShared>> {
        let (cell, any) = match dest {
            SocketAddr::V4(_) => (&self.v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (&self.v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        cell.get_or_try_init(|| async {
            let bind = match self.source_for(dest.ip()) {
                Some(ip) => SocketAddr::new(ip, self.source_port),
                None => SocketAddr::new(any, 0),
            };
            let socket = UdpSocket::bind(bind).await?;
            let port = socket.local_addr()?.port();
            let shared = Arc::new(UdpShared {
                socket,
                port,
                pending: Mutex::new(PendingMap::default()),
            });
            tokio::spawn(receive_loop(shared.clone(), self.shutdown.clone()));
            Ok(shared)
        })
        .await
        .cloned()
    }

    /// The source address the kernel uses towards `dest` (a connected UDP socket
    /// reveals it without sending anything), cached per destination. The cache is
    /// bounded: when full it starts over (a miss costs one syscall, no packet).
    fn local_ip(&self, dest: IpAddr) -> io::Result<IpAddr> {
        if let Some(source) = self.source_for(dest) {
            return Ok(source);
        }
        if let Some(ip) = lock(&self.local_ips).get(&dest) {
            return Ok(*ip);
        }
        let any = match dest {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let probe = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
        probe.connect(SocketAddr::new(dest, 9))?;
        let ip = probe.local_addr()?.ip();
        let mut cache = lock(&self.local_ips);
        if cache.len() >= MAX_LOCAL_IPS {
            cache.clear();
        }
        cache.insert(dest, ip);
        Ok(ip)
    }

    /// Destinations whose source address is cached (bounded by 4096).
    pub fn cached_local_ips(&self) -> usize {
        lock(&self.local_ips).len()
    }
}

struct PendingGuard<'a> {
    shared: &'a UdpShared,
    branch: &'a str,
    dest: SocketAddr,
}

impl PendingGuard<'_> {
    fn saw_garbage(&self) -> bool {
        lock(&self.shared.pending)
            .by_dest
            .get(&self.dest)
            .is_some_and(|d| d.garbage)
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        pending.by_branch.remove(self.branch);
        if let Some(d) = pending.by_dest.get_mut(&self.dest) {
            d.waiting = d.waiting.saturating_sub(1);
            if d.waiting == 0 {
                pending.by_dest.remove(&self.dest);
            }
        }
    }
}

async fn receive_loop(shared: Arc<UdpShared>, shutdown: CancellationToken) {
    // Larger than any UDP payload, so a datagram is never silently cut.
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = shared.socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, from)) => dispatch(&shared, &buf[..n], from),
            Err(e) => {
                // Linux reports an earlier ICMP error on the next receive; nothing to
                // do for an unconnected socket except keep reading.
                tracing::debug!(error = %e, "UDP receive error");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Hand one datagram to the probe it answers. Answers to unknown branches (late, or
/// someone else's) are dropped; provisional answers are ignored. A datagram that
/// breaks RFC 3261 §18.3 (cut body, bad Content-Length) is discarded as unreadable.
fn dispatch(shared: &UdpShared, datagram: &[u8], from: SocketAddr) {
    match codec::parse_response(datagram) {
        Ok(resp) => {
            let Some(branch) = resp.branch.as_deref() else {
                return;
            };
            let mut pending = lock(&shared.pending);
            let Some(p) = pending.by_branch.get_mut(branch) else {
                return;
            };
            if resp.call_id.as_deref() != Some(p.call_id.as_str()) || !resp.is_final() {
                return;
            }
            if let Some(tx) = p.answer.take() {
                let _ = tx.send(resp.code);
            }
        }
        Err(e) => {
            tracing::debug!(%from, error = %e, "unreadable SIP datagram");
            if let Some(d) = lock(&shared.pending).by_dest.get_mut(&from) {
                d.garbage = true;
            }
        }
    }
}

async fn probe_tcp(
    uri: &str,
    dest: SocketAddr,
    source: Option<IpAddr>,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        (rustls::pki_types::ServerName<'static>, String),
    )>,
    deadline: Instant,
    timeout: Duration,
) -> Outcome {
    let over = if tls.is_some() { "TLS" } else { "TCP" };
    let started = Instant::now();
    let exchange = async {
        let tcp = match source {
            None => TcpStream::connect(dest).await,
            Some(ip) => connect_from(ip, dest).await,
        }
        .map_err(|e| io_failure("connecting", &e))?;
        let local = tcp.local_addr().map_err(|e| io_failure("connecting", &e))?;
        match tls {
            None => exchange(tcp, uri, Transport::Tcp, local).await,
            Some((config, (name, shown))) => {
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        failed(
                            FailureKind::Tls,
                            format!(
                                "TLS handshake with {dest} (verifying {shown:?}): {}",
                                tls::describe_handshake_error(&e)
                            ),
                        )
                    })?;
                exchange(stream, uri, Transport::Tls, local).await
            }
        }
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(code)) => Outcome::Answered {
            code,
            rtt_millis: millis(started.elapsed()),
        },
        Ok(Err(outcome)) => outcome,
        Err(_) => timed_out(
            timeout,
            &format!("waiting for a final response over {over}"),
        ),
    }
}

/// A TCP connection to `dest` from `source` (any port).
async fn connect_from(source: IpAddr, dest: SocketAddr) -> io::Result<TcpStream> {
    let socket = match dest {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(dest).await
}

/// Send the OPTIONS on a connected stream and read framed messages until the final
/// response to it.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    uri: &str,
    transport: Transport,
    local: SocketAddr,
) -> Result<u16, Outcome> {
    let ids = ProbeIds::random();
    let msg = codec::build_options(uri, transport, local, &ids);
    stream
        .write_all(msg.as_bytes())
        .await
        .map_err(|e| io_failure("sending", &e))?;
    stream
        .flush()
        .await
        .map_err(|e| io_failure("sending", &e))?;
    let mut buf = Vec::with_capacity(2048);
    loop {
        match codec::stream_message_len(&buf) {
            Ok(Some(len)) => {
                let resp = codec::parse_response(&buf[..len])
                    .map_err(|e| failed(FailureKind::Parse, e.to_string()))?;
                buf.drain(..len);
                if resp.answers(&ids) && resp.is_final() {
                    return Ok(resp.code);
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(failed(FailureKind::Parse, e.to_string())),
        }
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_failure("reading", &e))?;
        if n == 0 {
            return Err(failed(
                FailureKind::Connect,
                "connection closed before a final response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn timed_out(timeout: Duration, during: &str) -> Outcome {
    failed(
        FailureKind::Timeout,
        format!("no answer within {} ms ({during})", timeout.as_millis()),
    )
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that answers every request with `reply(request)`, once per datagram.
    async fn udp_peer(reply: impl Fn(&str) -> Vec<Vec<u8>> + Send + 'static) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.10.250:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                for d in reply(&req) {
                    let _ = sock.send_to(&d, from).await;
                }
            }
        });
        addr
    }

    fn answer(req: &str, status: &str) -> Vec<u8> {
        let head: String = req
            .lines()
            .filter(|l| {
                l.starts_with("Via:")
                    || l.starts_with("Call-ID:")
                    || l.starts_with("CSeq:")
                    || l.starts_with("From:")
            })
            .map(|l| format!("{l}\r\n"))
            .collect();
        format!("SIP/2.0 {status}\r\n{head}Content-Length: 0\r\n\r\n").into_bytes()
    }

    fn prober() -> Prober {
        Prober::new(
            CancellationToken::new(),
            DestinationPolicy::allow_all(),
            DnsConfig::system(),
        )
    }

    /// Whether `out` is a failure of `kind`.
    fn failed_with(out: &Outcome, kind: FailureKind) -> bool {
        matches!(out, Outcome::Failed { kind: k, .. } if *k == kind)
    }

    async fn probe(prober: &Prober, uri: &str, timeout: Duration) -> Outcome {
        prober
            .probe(uri, None, timeout)
            .await
            .outcome(|c| (200..300).contains(&c))
    }

    async fn run(reply: impl Fn(&str) -> Vec<Vec<u8>> + Send + 'static) -> Outcome {
        let addr = udp_peer(reply).await;
        probe(
            &prober(),
            &format!("sip:{addr}"),
            Duration::from_millis(300),
        )
        .await
    }

    #[tokio::test]
    async fn udp_answer_after_provisional_and_noise_is_matched() {
        let out = run(|req| {
            vec![
                b"\xff\xfe garbage".to_vec(),
                answer(&req.replace("branch=z9hG4bK", "branch=z9hG4bKx"), "200 OK"),
                answer(req, "100 Trying"),
                answer(req, "200 OK"),
            ]
        })
        .await;
        assert!(
            matches!(out, Outcome::Answered { code: 200, .. }),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn udp_failures_are_classified() {
        let out = run(|req| vec![answer(req, "503 Service Unavailable")]).await;
        assert!(
            matches!(out, Outcome::Answered { code: 503, .. }),
            "{out:?}"
        );
        let out = run(|_| vec![b"SIP/2.0 2".to_vec(), vec![b'x'; 65_000]]).await;
        assert!(failed_with(&out, FailureKind::Parse), "{out:?}");
        let out = run(|req| vec![answer(&req.replace("Call-ID: ", "Call-ID: x"), "200 OK")]).await;
        assert!(failed_with(&out, FailureKind::Timeout), "{out:?}");
    }

    #[tokio::test]
    async fn tcp_refused_reset_and_unsupported() {
        let prober = prober();
        let listener = tokio::net::TcpListener::bind("127.0.10.250:0")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept, then reset (linger 0) without answering.
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_zero_linger();
                drop(s);
            }
        });
        let out = probe(
            &prober,
            &format!("sip:{addr};transport=tcp"),
            Duration::from_millis(500),
        )
        .await;
        assert!(failed_with(&out, FailureKind::Connect), "{out:?}");
        let closed = std::net::TcpListener::bind("127.0.10.250:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let out = probe(
            &prober,
            &format!("sip:127.0.10.250:{port};transport=tcp"),
            Duration::from_millis(500),
        )
        .await;
        assert!(failed_with(&out, FailureKind::Connect), "{out:?}");
        let out = probe(&prober, "tel:+4922112345", Duration::from_millis(50)).await;
        assert!(failed_with(&out, FailureKind::Unsupported), "{out:?}");
    }

    /// RFC 3261 §18.3: a 200 whose body is shorter than its Content-Length, or whose
    /// Content-Length is not a number, is not an answer.
    #[tokio::test]
    async fn udp_answers_that_break_content_length_rules_are_discarded() {
        for bad in [
            "Content-Length: 40",
            "Content-Length: forty",
            "Content-Length: 0\r\nl: 9",
        ] {
            let out = run(move |req| {
                vec![
                    String::from_utf8(answer(req, "200 OK"))
                        .unwrap()
                        .replace("Content-Length: 0", bad)
                        .into_bytes(),
                ]
            })
            .await;
            assert!(failed_with(&out, FailureKind::Parse), "{bad}: {out:?}");
        }
    }

    /// RFC 3261 §7.5: a TCP peer that ends its lines with a bare LF is understood.
    #[tokio::test]
    async fn tcp_peer_with_bare_lf_line_ends_is_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.10.250:0")
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let reply = String::from_utf8(answer(&req, "200 OK"))
                    .unwrap()
                    .replace("\r\n", "\n");
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let out = probe(
            &prober(),
            &format!("sip:{addr};transport=tcp"),
            Duration::from_millis(1000),
        )
        .await;
        assert!(
            matches!(out, Outcome::Answered { code: 200, .. }),
            "{out:?}"
        );
    }

    /// A deny rule is enforced before the first packet: the listener sees nothing.
    #[tokio::test]
    async fn denied_destinations_get_no_packet() {
        let sock = UdpSocket::bind("127.0.10.251:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let tcp = std::net::TcpListener::bind("127.0.10.251:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let mut policy = DestinationPolicy::allow_all();
        policy.deny([super::super::policy::Rule::parse("127.0.10.251/32").unwrap()]);
        let prober = Prober::new(CancellationToken::new(), policy, DnsConfig::system());
        for uri in [
            format!("sip:{addr}"),
            format!("sip:{tcp_addr};transport=tcp"),
        ] {
            let report = prober.probe(&uri, None, Duration::from_millis(200)).await;
            let out = report.outcome(|_| true);
            let Outcome::Failed {
                kind: FailureKind::Forbidden,
                detail,
            } = out
            else {
                panic!("{uri}: {out:?}");
            };
            assert!(detail.contains("127.0.10.251/32"), "{detail}");
        }
        let mut buf = [0u8; 1];
        let nothing =
            tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await;
        assert!(nothing.is_err(), "a datagram reached the denied listener");
        assert!(
            tcp.accept().is_err(),
            "a connection reached the denied listener"
        );
    }

    /// The Via source-address cache stays bounded however many destinations there are:
    /// 100,000 distinct addresses (loopback only; finding a source address sends
    /// nothing).
    #[test]
    fn local_address_cache_is_bounded() {
        let prober = prober();
        for i in 0..100_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            prober
                .local_ip(IpAddr::V4(Ipv4Addr::new(127, a, b, c.max(1))))
                .unwrap();
            assert!(prober.cached_local_ips() <= MAX_LOCAL_IPS);
        }
    }
}
