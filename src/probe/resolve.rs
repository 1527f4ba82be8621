//! RFC 3263 §4 server location: NAPTR → SRV → A/AAAA, as Kamailio does it with
//! `dns_try_naptr=yes`, with a bounded TTL cache that keeps serving the last good answer
//! through a DNS outage.
//!
//! - An IP literal is its own target.
//! - A URI with a port: A/AAAA of the host, on that port.
//! - A URI with `;transport=` but no port: SRV `_sip._udp`, `_sip._tcp` or `_sips._tcp`
//!   of the host, else A/AAAA on the default port.
//! - Neither: NAPTR of the host (services `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`, flag `s`;
//!   the lowest order and preference wins), then SRV of its replacement; without NAPTR
//!   the SRV names of each transport in turn (UDP, TCP, TLS; TLS only for `sips:`);
//!   without SRV, A/AAAA on 5060 (5061 for `sips:`).
//!
//! SRV targets are ordered by priority (lowest first), then by weight (highest first):
//! the order in which Kamailio's DNS failover would try them. Every address of every
//! target is probed (up to [`MAX_TARGETS`]).
//!
//! **A DNS outage is not a carrier outage.** An answer is fresh for its TTL (the
//! smallest TTL on the path). When a refresh fails, the last good answer stays in use
//! for `grace` more, so a CoreDNS blip never marks a host-named trunk Down. Only when
//! the TTL plus the grace has run out does the endpoint become `Unknown` (never
//! `Down`: nothing was learnt about the carrier). A failed refresh is retried at most
//! every [`RETRY_AFTER_FAILURE`] per name, so an outage does not multiply DNS load.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::codec::{SipUri, Transport};
use crate::lock;

/// Most targets probed for one endpoint.
pub const MAX_TARGETS: usize = 8;

/// How long to wait before asking DNS again after a failed refresh.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// Default number of names the cache holds.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// One place to send probes to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Address and port.
    pub addr: SocketAddr,
    /// Transport to use.
    pub transport: Transport,
    /// SRV priority (0 without SRV).
    pub priority: u16,
    /// SRV weight (0 without SRV).
    pub weight: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}",
            self.transport.via_token().to_ascii_lowercase(),
            self.addr
        )
    }
}

/// Where the name servers come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask (`ip:port`); empty: `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// How long the last good answer stays in use after its TTL when DNS fails.
    pub stale_grace: Duration,
    /// Names the cache holds at most.
    pub cache_entries: usize,
}

impl DnsConfig {
    /// The system resolver, a 5 minute grace and [`DEFAULT_CACHE_ENTRIES`].
    pub fn system() -> Self {
        Self {
            servers: Vec::new(),
            stale_grace: Duration::from_secs(300),
            cache_entries: DEFAULT_CACHE_ENTRIES,
        }
    }
}

/// The result of resolving one URI.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// A current answer.
    Fresh(Arc<[Target]>),
    /// DNS failed; the last good answer is still inside its TTL + grace.
    Stale {
        /// The last good answer.
        targets: Arc<[Target]>,
        /// Why the refresh failed.
        error: String,
    },
    /// No usable answer: the endpoint cannot be judged.
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    port: Option<u16>,
    transport: Option<Transport>,
    secure: bool,
}

struct Entry {
    targets: Arc<[Target]>,
    fresh_until: Instant,
    stale_until: Instant,
    /// After a failed refresh: do not ask again before this.
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// A bounded map from name to its last good answer.
struct Cache {
    entries: HashMap<Key, Entry>,
    cap: usize,
}

impl Cache {
    /// Insert, evicting first what can no longer be used, then (if still full) the
    /// tenth of the entries closest to expiry, so that eviction is amortised O(log n).
    fn insert(&mut self, key: Key, entry: Entry, now: Instant) {
        if self.entries.len() >= self.cap && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.stale_until > now);
            if self.entries.len() >= self.cap {
                let mut by_expiry: Vec<(Instant, Key)> = self
                    .entries
                    .iter()
                    .map(|(k, e)| (e.stale_until, k.clone()))
                    .collect();
                by_expiry.sort_by_key(|(at, _)| *at);
                let drop = (self.cap / 10).max(1);
                for (_, k) in by_expiry.into_iter().take(drop) {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, entry);
    }
}

/// The target of a URI whose host is an IP literal (no DNS involved).
pub fn literal(uri: &SipUri) -> Option<Resolution> {
    let ip = uri.host.parse::<IpAddr>().ok()?;
    Some(Resolution::Fresh(Arc::from(vec![Target {
        addr: SocketAddr::new(ip, uri.port),
        transport: uri.transport,
        priority: 0,
        weight: 0,
    }])))
}

/// Resolves SIP URIs to targets. Shared by every probe of a hub.
pub struct Resolver {
    config: DnsConfig,
    dns: OnceCell<Result<TokioResolver, String>>,
    cache: Mutex<Cache>,
}

impl Resolver {
    /// A resolver; the DNS client is built on first use, on the caller's runtime.
    pub fn new(config: DnsConfig) -> Self {
        let cap = config.cache_entries.max(1);
        Self {
            config,
            dns: OnceCell::new(),
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                cap,
            }),
        }
    }

    /// Names currently cached.
    pub fn cached_names(&self) -> usize {
        lock(&self.cache).entries.len()
    }

    /// Resolve `uri` within `budget` (a refresh that needs longer counts as failed).
    pub async fn resolve(&self, uri: &SipUri, budget: Duration) -> Resolution {
        if let Some(r) = literal(uri) {
            return r;
        }
        let key = Key {
            host: uri.host.to_ascii_lowercase(),
            port: uri.port_given.then_some(uri.port),
            transport: uri.transport_given.then_some(uri.transport),
            secure: uri.secure,
        };
        let now = Instant::now();
        let mut stale = None;
        if let Some(e) = lock(&self.cache).entries.get(&key) {
            if now < e.fresh_until {
                return Resolution::Fresh(e.targets.clone());
            }
            if now < e.stale_until {
                stale = Some(e.targets.clone());
                if e.retry_at.is_some_and(|at| now < at) {
                    return Resolution::Stale {
                        targets: e.targets.clone(),
                        error: e.last_error.clone().unwrap_or_default(),
                    };
                }
            }
        }
        // With a stale answer in hand, keep half the budget for the probe itself.
        let budget = if stale.is_some() { budget / 2 } else { budget };
        let answer = match tokio::time::timeout(budget, self.lookup(&key, uri)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "resolving {}: no DNS answer within {} ms",
                uri.host,
                budget.as_millis()
            )),
        };
        let now = Instant::now();
        match answer {
            Ok((targets, ttl)) => {
                let targets: Arc<[Target]> = Arc::from(targets);
                lock(&self.cache).insert(
                    key,
                    Entry {
                        targets: targets.clone(),
                        fresh_until: now + ttl,
                        stale_until: now + ttl + self.config.stale_grace,
                        retry_at: None,
                        last_error: None,
                    },
                    now,
                );
                Resolution::Fresh(targets)
            }
            Err(error) => {
                let mut cache = lock(&self.cache);
                match cache.entries.get_mut(&key) {
                    Some(e) if now < e.stale_until => {
                        e.retry_at = Some(now + RETRY_AFTER_FAILURE);
                        e.last_error = Some(error.clone());
                        Resolution::Stale {
                            targets: e.targets.clone(),
                            error,
                        }
                    }
                    _ => Resolution::Failed(error),
                }
            }
        }
    }

    async fn client(&self) -> Result<&TokioResolver, String> {
        self.dns
            .get_or_init(|| async { build_client(&self.config) })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The RFC 3263 walk. Returns the targets and the smallest TTL on the path.
    async fn lookup(&self, key: &Key, uri: &SipUri) -> Result<(Vec<Target>, Duration), String> {
        let dns = self.client().await?;
        let host = uri.host.as_str();
        let mut ttl = Ttl::default();
        let default_transport = if uri.secure {
            Transport::Tls
        } else {
            Transport::Udp
        };
        if let Some(port) = key.port {
            let t = key.transport.unwrap_or(default_transport);
            let targets = addresses(dns, host, port, t, 0, 0, &mut ttl).await?;
            return Ok((targets, ttl.get()));
        }
        // Which SRV names to try, with their transports.
        let srv_names: Vec<(String, Transport)> = match key.transport {
            Some(t) => vec![(srv_name(t, host), t)],
            None => match naptr(dns, host, uri.secure, &mut ttl).await? {
                Some((replacement, t)) => vec![(replacement, t)],
                None if uri.secure => vec![(srv_name(Transport::Tls, host), Transport::Tls)],
                None => [Transport::Udp, Transport::Tcp, Transport::Tls]
                    .into_iter()
                    .map(|t| (srv_name(t, host), t))
                    .collect(),
            },
        };
        for (name, transport) in &srv_names {
            let Some(records) = srv(dns, name, &mut ttl).await? else {
                continue;
            };
            let mut targets = Vec::new();
            for (priority, weight, port, target) in records {
                if targets.len() >= MAX_TARGETS {
                    break;
                }
                // A target that does not resolve is skipped; the others still count.
                match addresses(dns, &target, port, *transport, priority, weight, &mut ttl).await {
                    Ok(found) => targets.extend(found),
                    Err(e) => {
                        tracing::debug!(srv = %name, error = %e, "SRV target without address")
                    }
                }
            }
            targets.truncate(MAX_TARGETS);
            if targets.is_empty() {
                return Err(format!(
                    "resolving {host}: no SRV target of {name} has an A/AAAA record"
                ));
            }
            return Ok((targets, ttl.get()));
        }
        let port = if default_transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let t = key.transport.unwrap_or(default_transport);
        let targets = addresses(dns, host, port, t, 0, 0, &mut ttl).await?;
        Ok((targets, ttl.get()))
    }
}

fn build_client(config: &DnsConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if config.servers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
    } else {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let opts = builder.options_mut();
    // The probe deadline bounds every lookup; one quick attempt per server is enough.
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    opts.cache_size = 1024;
    builder
        .build()
        .map_err(|e| format!("building the DNS client: {e}"))
}

/// The smallest TTL seen along a resolution path.
#[derive(Default)]
struct Ttl(Option<Duration>);

impl Ttl {
    fn see(&mut self, valid_until: std::time::Instant) {
        let left = valid_until.saturating_duration_since(std::time::Instant::now());
        self.0 = Some(self.0.map_or(left, |d| d.min(left)));
    }
    /// At least one second, so a TTL of 0 does not turn every probe into a lookup.
    fn get(&self) -> Duration {
        self.0.unwrap_or_default().max(Duration::from_secs(1))
    }
}

fn srv_name(t: Transport, host: &str) -> String {
    match t {
        Transport::Udp => format!("_sip._udp.{host}"),
        Transport::Tcp => format!("_sip._tcp.{host}"),
        Transport::Tls => format!("_sips._tcp.{host}"),
    }
}

fn describe(e: &hickory_resolver::net::NetError) -> String {
    e.to_string()
}

/// The NAPTR step: the replacement and transport of the preferred supported record,
/// `None` when the host has no (usable) NAPTR records.
async fn naptr(
    dns: &TokioResolver,
    host: &str,
    secure: bool,
    ttl: &mut Ttl,
) -> Result<Option<(String, Transport)>, String> {
    let lookup = match dns.lookup(host, RecordType::NAPTR).await {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() => return Ok(None),
        Err(e) => return Err(format!("resolving NAPTR {host}: {}", describe(&e))),
    };
    ttl.see(lookup.valid_until());
    let mut best: Option<(u16, u16, String, Transport)> = None;
    for record in lookup.answers() {
        let RData::NAPTR(n) = &record.data else {
            continue;
        };
        if !n.flags.eq_ignore_ascii_case(b"s") {
            continue;
        }
        let transport = match n.services.to_ascii_uppercase().as_slice() {
            b"SIP+D2U" if !secure => Transport::Udp,
            b"SIP+D2T" if !secure => Transport::Tcp,
            b"SIPS+D2T" => Transport::Tls,
            _ => continue,
        };
        let replacement = n.replacement.to_ascii();
        let replacement = replacement.trim_end_matches('.').to_string();
        if best
            .as_ref()
            .is_none_or(|(o, p, _, _)| (n.order, n.preference) < (*o, *p))
        {
            best = Some((n.order, n.preference, replacement, transport));
        }
    }
    Ok(best.map(|(_, _, r, t)| (r, t)))
}

/// SRV records of `name` as (priority, weight, port, target), in failover order;
/// `None` when there are none.
async fn srv(
    dns: &TokioResolver,
    name: &str,
    ttl: &mut Ttl,
) -> Result<Option<Vec<(u16, u16, u16, String)>>, String> {
    let lookup = match dns.srv_lookup(name).await {
        Ok(l) => l,
        Err(e) if e.is_no_records_found() => return Ok(None),
        Err(e) => return Err(format!("resolving SRV {name}: {}", describe(&e))),
    };
    ttl.see(lookup.valid_until());
    let mut records: Vec<(u16, u16, u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((
                s.priority,
                s.weight,
                s.port,
                s.target.to_ascii().trim_end_matches('.').to_string(),
            )),
            _ => None,
        })
        .collect();
    // RFC 2782: a single record with target "." means "no such service here".
    records.retain(|r| !r.3.is_empty());
    if records.is_empty() {
        return Err(format!(
            "resolving SRV {name}: the service is not offered (target \".\")"
        ));
    }
    records.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.3.cmp(&b.3))
    });
    Ok(Some(records))
}

async fn addresses(
    dns: &TokioResolver,
    host: &str,
    port: u16,
    transport: Transport,
    priority: u16,
    weight: u16,
    ttl: &mut Ttl,
) -> Result<Vec<Target>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![Target {
            addr: SocketAddr::new(ip, port),
            transport,
            priority,
            weight,
        }]);
    }
    let lookup = dns.lookup_ip(host).await.map_err(|e| {
        if e.is_no_records_found() {
            format!("resolving {host}: no A/AAAA record")
        } else {
            format!("resolving {host}: {}", describe(&e))
        }
    })?;
    ttl.see(lookup.valid_until());
    let targets: Vec<Target> = lookup
        .iter()
        .take(MAX_TARGETS)
        .map(|ip| Target {
            addr: SocketAddr::new(ip, port),
            transport,
            priority,
            weight,
        })
        .collect();
    if targets.is_empty() {
        return Err(format!("resolving {host}: no A/AAAA record"));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(targets: usize, stale_in: Duration, now: Instant) -> Entry {
        let t: Vec<Target> = (0..targets)
            .map(|i| Target {
                addr: SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16)),
                transport: Transport::Udp,
                priority: 0,
                weight: 0,
            })
            .collect();
        Entry {
            targets: Arc::from(t),
            fresh_until: now,
            stale_until: now + stale_in,
            retry_at: None,
            last_error: None,
        }
    }

    fn key(i: usize) -> Key {
        Key {
            host: format!("h{i}.example.net"),
            port: None,
            transport: None,
            secure: false,
        }
    }

    /// 100,000 distinct names (each with several addresses) never hold more than the
    /// cache's bound, and eviction keeps the entries that stay usable longest.
    #[test]
    fn cache_stays_bounded_under_100k_names() {
        let now = Instant::now();
        let mut cache = Cache {
            entries: HashMap::new(),
            cap: 1000,
        };
        for i in 0..100_000 {
            cache.insert(
                key(i),
                entry(4, Duration::from_secs(10 + i as u64), now),
                now,
            );
            assert!(cache.entries.len() <= 1000);
        }
        assert!(cache.entries.contains_key(&key(99_999)));
        assert!(!cache.entries.contains_key(&key(0)));
        // Expired entries go first.
        let later = now + Duration::from_secs(200_000);
        cache.insert(key(100_000), entry(1, Duration::from_secs(1), later), later);
        assert_eq!(cache.entries.len(), 1);
    }

    #[tokio::test]
    async fn ip_literals_need_no_dns() {
        let r = Resolver::new(DnsConfig {
            servers: vec!["127.0.0.1:9".parse().unwrap()],
            ..DnsConfig::system()
        });
        let uri = crate::probe::codec::parse_uri("sips:[::1];transport=tls").unwrap();
        let Resolution::Fresh(t) = r.resolve(&uri, Duration::from_millis(10)).await else {
            panic!("literal must resolve at once");
        };
        assert_eq!(t[0].addr, "[::1]:5061".parse().unwrap());
        assert_eq!(t[0].transport, Transport::Tls);
        assert_eq!(r.cached_names(), 0);
    }
}
