//! Sending one OPTIONS and waiting for its final answer, over UDP or TCP.
//!
//! UDP uses one shared socket per address family, bound to an ephemeral port, with
//! one receive task that hands each answer to the probe waiting for its branch. Ten
//! thousand endpoints then cost two file descriptors and two tasks instead of ten
//! thousand sockets. The price: an unconnected socket does not see ICMP "port
//! unreachable", so a closed UDP port shows up as a timeout (the same as a silent host).
//! TCP opens one connection per probe; a refused or reset connection fails the probe
//! at once.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OnceCell, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{self, ProbeIds, Transport};
use super::health::{FailureKind, Outcome};

/// Sends probes; shared by every endpoint schedule of a hub.
pub struct Prober {
    v4: OnceCell<Arc<UdpShared>>,
    v6: OnceCell<Arc<UdpShared>>,
    /// Source IP the kernel picks per destination IP, for the Via header.
    local_ips: Mutex<HashMap<IpAddr, IpAddr>>,
    shutdown: CancellationToken,
}

/// One shared UDP socket and the probes waiting on it.
struct UdpShared {
    socket: UdpSocket,
    port: u16,
    pending: Mutex<HashMap<String, Pending>>,
}

struct Pending {
    call_id: String,
    dest: SocketAddr,
    answer: Option<oneshot::Sender<u16>>,
    /// Set when the destination sent something unreadable while we waited.
    garbage: bool,
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
    /// A prober whose receive tasks stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            v4: OnceCell::new(),
            v6: OnceCell::new(),
            local_ips: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    /// Probe `uri` once, giving up after `timeout` (resolution included).
    pub async fn probe(&self, uri: &str, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let target = match codec::parse_uri(uri) {
            Ok(t) => t,
            Err(e) => return failed(FailureKind::Unsupported, e.to_string()),
        };
        if target.transport == Transport::Tls {
            return failed(
                FailureKind::Unsupported,
                "sips:/TLS probing is not supported yet; probe the carrier over \
                 transport=tcp or udp",
            );
        }
        let addr = match tokio::time::timeout_at(deadline, resolve(&target.host, target.port)).await
        {
            Ok(Ok(addr)) => addr,
            Ok(Err(detail)) => return failed(FailureKind::Resolve, detail),
            Err(_) => return timed_out(timeout, "resolving the host"),
        };
        match target.transport {
            Transport::Udp => self.probe_udp(uri, addr, deadline, timeout).await,
            Transport::Tcp | Transport::Tls => probe_tcp(uri, addr, deadline, timeout).await,
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
        lock(&shared.pending).insert(
            ids.branch.clone(),
            Pending {
                call_id: ids.call_id,
                dest,
                answer: Some(tx),
                garbage: false,
            },
        );
        // Removes the entry however this future ends (answer, timeout, cancellation).
        let guard = PendingGuard {
            shared: &shared,
            branch: &ids.branch,
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
            let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
            let port = socket.local_addr()?.port();
            let shared = Arc::new(UdpShared {
                socket,
                port,
                pending: Mutex::new(HashMap::new()),
            });
            tokio::spawn(receive_loop(shared.clone(), self.shutdown.clone()));
            Ok(shared)
        })
        .await
        .cloned()
    }

    /// The source address the kernel uses towards `dest` (a connected UDP socket
    /// reveals it without sending anything), cached per destination.
    fn local_ip(&self, dest: IpAddr) -> io::Result<IpAddr> {
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
        lock(&self.local_ips).insert(dest, ip);
        Ok(ip)
    }
}

struct PendingGuard<'a> {
    shared: &'a UdpShared,
    branch: &'a str,
}

impl PendingGuard<'_> {
    fn saw_garbage(&self) -> bool {
        lock(&self.shared.pending)
            .get(self.branch)
            .is_some_and(|p| p.garbage)
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(self.branch);
    }
}

/// A poisoned lock only means another probe panicked mid-update of a map of plain
/// entries; the map itself is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
/// someone else's) are dropped; provisional answers are ignored.
fn dispatch(shared: &UdpShared, datagram: &[u8], from: SocketAddr) {
    match codec::parse_response(datagram) {
        Ok(resp) => {
            let Some(branch) = resp.branch.as_deref() else {
                return;
            };
            let mut pending = lock(&shared.pending);
            let Some(p) = pending.get_mut(branch) else {
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
            for p in lock(&shared.pending).values_mut() {
                if p.dest == from {
                    p.garbage = true;
                }
            }
        }
    }
}

async fn probe_tcp(uri: &str, dest: SocketAddr, deadline: Instant, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(dest)
            .await
            .map_err(|e| io_failure("connecting", &e))?;
        let local = stream
            .local_addr()
            .map_err(|e| io_failure("connecting", &e))?;
        let ids = ProbeIds::random();
        let msg = codec::build_options(uri, Transport::Tcp, local, &ids);
        stream
            .write_all(msg.as_bytes())
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
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(code)) => Outcome::Answered {
            code,
            rtt_millis: millis(started.elapsed()),
        },
        Ok(Err(outcome)) => outcome,
        Err(_) => timed_out(timeout, "waiting for a final response over TCP"),
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

/// A literal IP, or the first A/AAAA record of a host name.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("resolving {host}: no A/AAAA record"))
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

    async fn run(reply: impl Fn(&str) -> Vec<Vec<u8>> + Send + 'static) -> Outcome {
        let addr = udp_peer(reply).await;
        let prober = Prober::new(CancellationToken::new());
        prober
            .probe(&format!("sip:{addr}"), Duration::from_millis(300))
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
        assert!(
            matches!(
                out,
                Outcome::Failed {
                    kind: FailureKind::Parse,
                    ..
                }
            ),
            "{out:?}"
        );
        let out = run(|req| vec![answer(&req.replace("Call-ID: ", "Call-ID: x"), "200 OK")]).await;
        assert!(
            matches!(
                out,
                Outcome::Failed {
                    kind: FailureKind::Timeout,
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn tcp_refused_reset_and_unsupported() {
        let prober = Prober::new(CancellationToken::new());
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
        let out = prober
            .probe(
                &format!("sip:{addr};transport=tcp"),
                Duration::from_millis(500),
            )
            .await;
        assert!(
            matches!(
                out,
                Outcome::Failed {
                    kind: FailureKind::Connect,
                    ..
                }
            ),
            "{out:?}"
        );
        let closed = std::net::TcpListener::bind("127.0.10.250:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let out = prober
            .probe(
                &format!("sip:127.0.10.250:{port};transport=tcp"),
                Duration::from_millis(500),
            )
            .await;
        assert!(
            matches!(
                out,
                Outcome::Failed {
                    kind: FailureKind::Connect,
                    ..
                }
            ),
            "{out:?}"
        );
        let out = prober
            .probe("sips:127.0.10.250", Duration::from_millis(50))
            .await;
        assert!(
            matches!(
                out,
                Outcome::Failed {
                    kind: FailureKind::Unsupported,
                    ..
                }
            ),
            "{out:?}"
        );
    }
}
