//! What a Trunk reconcile reads besides the Trunk: the CA bundle its TLS endpoints
//! are verified with — from [`CaBundles`], an in-memory cache, never the API.
//!
//! A CA bundle is a user's ConfigMap or Secret named by `spec.tls.caBundle`. Watching
//! every ConfigMap's data and every Secret in the cluster to serve a handful of Trunks
//! would cost far more (and the chart grants only `get` on Secrets), so a small task
//! beside the controller reads each bundle that some Trunk names, by name, when it is
//! first needed and then every [`CA_BUNDLE_REFRESH`]; when what it read differs, the
//! Trunks that use it are reconciled. Reads happen only for Trunks that have a bundle
//! (none in a cluster without TLS trunks), never per reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::controller::runtime::Guarded;
use crate::crd::{CaBundleKind, Trunk};
use crate::lock;
use crate::probe::TlsSettings;

/// How often a CA bundle in use is read again.
pub const CA_BUNDLE_REFRESH: Duration = Duration::from_secs(300);

/// A bundle: kind (`ConfigMap` or `Secret`), namespace, name, key.
type BundleKey = (&'static str, String, String, String);
/// A Trunk: namespace, name.
type TrunkKey = (String, String);

/// What reading a bundle gave: the PEM text, or what the user must fix.
type Read = Result<Arc<str>, String>;

#[derive(Default)]
struct Entry {
    read: Option<Read>,
    read_at: Option<Instant>,
    users: BTreeSet<TrunkKey>,
}

/// The CA bundles Trunks name, read off the reconcile path (see the module docs).
pub struct CaBundles {
    entries: Mutex<HashMap<BundleKey, Entry>>,
    wake: Notify,
    changed: mpsc::UnboundedSender<ObjectRef<Guarded<Trunk>>>,
}

impl CaBundles {
    /// An empty cache, and the stream of Trunks to reconcile when a bundle changed.
    pub fn new() -> (
        Arc<Self>,
        mpsc::UnboundedReceiver<ObjectRef<Guarded<Trunk>>>,
    ) {
        let (changed, rx) = mpsc::unbounded();
        let bundles = Self {
            entries: Mutex::default(),
            wake: Notify::new(),
            changed,
        };
        (Arc::new(bundles), rx)
    }

    /// The TLS settings of `trunk`'s endpoints. `None` while its CA bundle has not been
    /// read yet (the reader reconciles the Trunk once it has). A missing object or key
    /// is not an API failure: every TLS probe then fails with a message that says what
    /// to create.
    pub fn tls_settings(&self, trunk: &Trunk, ns: &str, name: &str) -> Option<Option<TlsSettings>> {
        let user = (ns.to_string(), name.to_string());
        let Some(tls) = &trunk.spec.tls else {
            self.release(&user);
            return Some(None);
        };
        let mut settings = TlsSettings {
            server_name: tls.server_name.clone(),
            ..TlsSettings::default()
        };
        let Some(r) = &tls.ca_bundle else {
            self.release(&user);
            return Some(Some(settings));
        };
        let kind = match r.kind {
            CaBundleKind::ConfigMap => "ConfigMap",
            CaBundleKind::Secret => "Secret",
        };
        let key: BundleKey = (kind, ns.to_string(), r.name.clone(), r.key.clone());
        let read = {
            let mut entries = lock(&self.entries);
            for (k, e) in entries.iter_mut() {
                if *k != key {
                    e.users.remove(&user);
                }
            }
            let entry = entries.entry(key).or_default();
            entry.users.insert(user);
            entry.read.clone()
        };
        match read {
            None => {
                self.wake.notify_one();
                None
            }
            Some(Ok(pem)) => {
                settings.ca_pem = Some(pem);
                Some(Some(settings))
            }
            Some(Err(message)) => {
                settings.ca_error = Some(message);
                Some(Some(settings))
            }
        }
    }

    /// `user` no longer names a bundle (deleted, or its spec changed).
    pub fn release(&self, user: &TrunkKey) {
        for e in lock(&self.entries).values_mut() {
            e.users.remove(user);
        }
    }

    /// Read the bundles in use that are new or due, until `shutdown`.
    pub async fn run(self: Arc<Self>, client: Client, shutdown: CancellationToken) {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let mut retry = None;
            let due: Vec<BundleKey> = {
                let mut entries = lock(&self.entries);
                entries.retain(|_, e| !e.users.is_empty());
                entries
                    .iter()
                    .filter(|(_, e)| e.read_at.is_none_or(|at| at.elapsed() >= CA_BUNDLE_REFRESH))
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for key in due {
                match read(&client, &key).await {
                    Ok(read) => self.store(&key, read),
                    Err(e) => {
                        tracing::warn!(bundle = %key.2, namespace = %key.1, error = %e, "cannot read a CA bundle; retrying");
                        retry = Some(backoff.next_delay());
                    }
                }
            }
            if retry.is_none() {
                backoff.reset();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(30))) => {}
            }
        }
    }

    fn store(&self, key: &BundleKey, read: Read) {
        let users: Vec<TrunkKey> = {
            let mut entries = lock(&self.entries);
            let Some(entry) = entries.get_mut(key) else {
                return;
            };
            entry.read_at = Some(Instant::now());
            if entry.read.as_ref() == Some(&read) {
                return;
            }
            entry.read = Some(read);
            entry.users.iter().cloned().collect()
        };
        for (ns, name) in users {
            let _ = self
                .changed
                .unbounded_send(ObjectRef::new(&name).within(&ns));
        }
    }
}

/// Read one bundle. `Err` only for a failure worth retrying (the API is unreachable).
async fn read(client: &Client, key: &BundleKey) -> Result<Read, kube::Error> {
    let (kind, ns, name, data_key) = key;
    let pem = match *kind {
        "ConfigMap" => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|cm| cm.data.and_then(|mut d| d.remove(data_key))),
        _ => {
            match Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
            {
                Ok(found) => found.map(|s| {
                    s.data
                        .and_then(|mut d| d.remove(data_key))
                        .and_then(|b| String::from_utf8(b.0).ok())
                }),
                // Not an outage: a permission the chart grants only on request.
                Err(kube::Error::Api(status)) if status.is_forbidden() => {
                    return Ok(Err(format!(
                        "spec.tls.caBundle: the operator may not read Secret {ns}/{name}; put the CA certificates in a ConfigMap (they are public), or install the chart with probe.tls.readSecrets=true"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok(match pem {
        None => Err(format!(
            "spec.tls.caBundle: {kind} {ns}/{name} not found; create it with the carrier's CA certificates under key {data_key:?}"
        )),
        Some(None) => Err(format!(
            "spec.tls.caBundle: {kind} {ns}/{name} has no key {data_key:?} (or it is not text); put the PEM CA certificates there"
        )),
        Some(Some(pem)) => Ok(Arc::from(pem)),
    })
}
