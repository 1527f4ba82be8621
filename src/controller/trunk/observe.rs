//! What a Trunk reconcile reads besides the Trunk: the CA bundle its TLS endpoints
//! are verified with.
//!
//! The one read outside the caches: a CA bundle is a user's ConfigMap or Secret named
//! by `spec.tls.caBundle`. Watching every ConfigMap's data and every Secret in the
//! cluster to serve a handful of Trunks would cost far more (and the chart grants only
//! `get` on Secrets), so the bundle is read by name, only for Trunks that have one, and
//! re-read every [`CA_BUNDLE_REFRESH`](super::CA_BUNDLE_REFRESH).

use std::sync::Arc;

use kube::Api;

use super::Error;
use crate::controller::Context;
use crate::crd::{CaBundleKind, Trunk};
use crate::probe::TlsSettings;

/// The TLS settings of a Trunk's endpoints, with its CA bundle read from the API. A
/// missing object or key is not an API failure: every TLS probe then fails with a
/// message that says what to create.
pub async fn tls_settings(
    trunk: &Trunk,
    ctx: &Context,
    ns: &str,
) -> Result<Option<TlsSettings>, Error> {
    let Some(tls) = &trunk.spec.tls else {
        return Ok(None);
    };
    let mut settings = TlsSettings {
        server_name: tls.server_name.clone(),
        ..TlsSettings::default()
    };
    if let Some(r) = &tls.ca_bundle {
        use k8s_openapi::api::core::v1::{ConfigMap, Secret};
        let pem = match r.kind {
            CaBundleKind::ConfigMap => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_opt(&r.name)
                .await?
                .map(|cm| cm.data.and_then(|mut d| d.remove(&r.key))),
            CaBundleKind::Secret => {
                match Api::<Secret>::namespaced(ctx.client.clone(), ns)
                    .get_opt(&r.name)
                    .await
                {
                    Ok(found) => found.map(|s| {
                        s.data
                            .and_then(|mut d| d.remove(&r.key))
                            .and_then(|b| String::from_utf8(b.0).ok())
                    }),
                    // Not an outage: a permission the chart grants only on request.
                    Err(kube::Error::Api(status)) if status.is_forbidden() => {
                        settings.ca_error = Some(format!(
                            "spec.tls.caBundle: the operator may not read Secret {ns}/{}; put the CA certificates in a ConfigMap (they are public), or install the chart with probe.tls.readSecrets=true",
                            r.name
                        ));
                        return Ok(Some(settings));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let kind = match r.kind {
            CaBundleKind::ConfigMap => "ConfigMap",
            CaBundleKind::Secret => "Secret",
        };
        match pem {
            None => {
                settings.ca_error = Some(format!(
                    "spec.tls.caBundle: {kind} {ns}/{} not found; create it with the carrier's CA certificates under key {:?}",
                    r.name, r.key
                ))
            }
            Some(None) => {
                settings.ca_error = Some(format!(
                    "spec.tls.caBundle: {kind} {ns}/{} has no key {:?} (or it is not text); put the PEM CA certificates there",
                    r.name, r.key
                ))
            }
            Some(Some(pem)) => settings.ca_pem = Some(Arc::from(pem)),
        }
    }
    Ok(Some(settings))
}
