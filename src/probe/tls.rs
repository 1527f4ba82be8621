//! TLS for `sips:` and `;transport=tls` endpoints, over rustls (ring).
//!
//! The peer's certificate is verified against the system roots, or — when the Trunk
//! names a CA bundle (`spec.tls.caBundle`) — against that bundle only, so a carrier on
//! a private CA is checked against exactly that CA. The name checked (and sent as SNI,
//! unless it is an IP address) is the URI's host, as RFC 5922 §7.2 asks: the domain the
//! user configured, not the SRV target DNS handed back. `spec.tls.serverName` overrides
//! it for carriers whose certificate names a different host.
//!
//! Client configurations are cached per CA bundle (bounded), so that session tickets
//! are reused and a probe costs an abbreviated handshake where the peer allows it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::lock;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// Most distinct CA bundles whose client configurations are kept.
const MAX_CONFIGS: usize = 256;

/// TLS settings of one endpoint, from its Trunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM CA certificates to trust instead of the system roots.
    pub ca_pem: Option<Arc<str>>,
    /// Name to verify and send as SNI instead of the URI host.
    pub server_name: Option<String>,
    /// The CA bundle could not be read (missing object or key): every TLS probe
    /// fails with this message instead of silently trusting the system roots.
    pub ca_error: Option<String>,
}

/// Builds and caches rustls client configurations.
#[derive(Default)]
pub struct TlsConfigs {
    system: OnceLock<Result<Arc<ClientConfig>, String>>,
    by_bundle: Mutex<HashMap<[u8; 32], Arc<ClientConfig>>>,
}

impl TlsConfigs {
    /// The configuration for an endpoint with these settings.
    pub fn config(&self, settings: Option<&TlsSettings>) -> Result<Arc<ClientConfig>, String> {
        if let Some(e) = settings.and_then(|s| s.ca_error.as_ref()) {
            return Err(e.clone());
        }
        match settings.and_then(|s| s.ca_pem.as_deref()) {
            None => {
                self.system
                    .get_or_init(|| {
                        let found = rustls_native_certs::load_native_certs();
                        let mut roots = rustls::RootCertStore::empty();
                        let (added, _) = roots.add_parsable_certificates(found.certs);
                        if added == 0 {
                            return Err("no system CA certificates found; set spec.tls.caBundle"
                                .to_string());
                        }
                        build(roots)
                    })
                    .clone()
            }
            Some(pem) => {
                let digest: [u8; 32] = Sha256::digest(pem.as_bytes()).into();
                if let Some(c) = lock(&self.by_bundle).get(&digest) {
                    return Ok(c.clone());
                }
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert =
                        cert.map_err(|e| format!("spec.tls.caBundle: unreadable PEM: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("spec.tls.caBundle: unusable certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(
                        "spec.tls.caBundle holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                            .to_string(),
                    );
                }
                let config = build(roots)?;
                let mut cache = lock(&self.by_bundle);
                if cache.len() >= MAX_CONFIGS {
                    cache.clear();
                }
                cache.insert(digest, config.clone());
                Ok(config)
            }
        }
    }
}

fn build(roots: rustls::RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name to verify for `host` (an IP address is verified against IP SANs and sent
/// without SNI), and the same name as text for messages.
pub fn server_name(
    host: &str,
    settings: Option<&TlsSettings>,
) -> Result<(ServerName<'static>, String), String> {
    let name = settings
        .and_then(|s| s.server_name.clone())
        .unwrap_or_else(|| host.to_string());
    ServerName::try_from(name.clone())
        .map(|n| (n, name.clone()))
        .map_err(|_| format!("{name:?} is not a valid TLS server name; fix spec.tls.serverName"))
}

/// A readable cause for a failed handshake, naming the certificate problem.
pub fn describe_handshake_error(e: &std::io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => {
            use rustls::CertificateError as C;
            let why = match c {
                C::Expired | C::ExpiredContext { .. } => format!("the certificate has expired ({c})"),
                C::NotValidYet | C::NotValidYetContext { .. } => {
                    format!("the certificate is not valid yet ({c})")
                }
                C::UnknownIssuer => "the certificate is signed by an unknown CA (not in spec.tls.caBundle, or not in the system roots without one)".to_string(),
                _ => c.to_string(),
            };
            format!("certificate rejected: {why}")
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bundles_and_names_are_explained() {
        let c = TlsConfigs::default();
        let s = TlsSettings {
            ca_pem: Some(Arc::from("not a certificate")),
            ..Default::default()
        };
        let e = c.config(Some(&s)).unwrap_err();
        assert!(e.contains("spec.tls.caBundle"), "{e}");
        let s = TlsSettings {
            ca_error: Some("ConfigMap carrier-ca not found".into()),
            ..Default::default()
        };
        assert_eq!(
            c.config(Some(&s)).unwrap_err(),
            "ConfigMap carrier-ca not found"
        );
        assert!(server_name("sip.example.net", None).is_ok());
        assert!(matches!(
            server_name("127.0.0.1", None).unwrap().0,
            ServerName::IpAddress(_)
        ));
        let s = TlsSettings {
            server_name: Some("bad name!".into()),
            ..Default::default()
        };
        assert!(
            server_name("x", Some(&s))
                .unwrap_err()
                .contains("serverName")
        );
    }
}
