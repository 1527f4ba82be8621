//! The public API of lifeline: namespaced kinds in `lifeline.dev/v1alpha1`.
//!
//! Doc comments on these types become `kubectl explain` text, so they are written for
//! the people who apply the resources, not for the people who read the Rust.

// clippy's duplicated_attributes lint misreads the repeated `printcolumn(type_ = ..)`
// arguments of `#[kube(..)]` as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
pub mod botpool;
pub mod condition;
#[allow(clippy::duplicated_attributes)]
pub mod drill;
#[allow(clippy::duplicated_attributes)]
pub mod edge;
#[allow(clippy::duplicated_attributes)]
pub mod notifier;
#[allow(clippy::duplicated_attributes)]
pub mod policy;
#[allow(clippy::duplicated_attributes)]
pub mod trunk;

#[cfg(test)]
mod tests;

pub use botpool::*;
pub use condition::*;
pub use drill::*;
pub use edge::*;
pub use notifier::*;
pub use policy::*;
pub use trunk::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every lifeline kind.
pub const GROUP: &str = "lifeline.dev";
/// API version of every lifeline kind.
pub const VERSION: &str = "v1alpha1";
/// The field manager used for every server-side apply lifeline makes.
pub const FIELD_MANAGER: &str = "lifeline.dev/operator";

/// CEL expression (RE2) for a SIP or SIPS URI: scheme, optional user part, a host name,
/// IPv4 address or bracketed IPv6 address, optional port (1–65535) and `;param` list.
/// The port is spelled out digit by digit because CEL cannot cheaply extract and compare
/// a number from inside a string.
pub(crate) const SIP_URI_RULE: &str = r"self.matches('^sips?:([^@;?\\s]+@)?(\\[[0-9a-fA-F:.]+\\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(;[A-Za-z0-9_.!~*-]+(=[A-Za-z0-9_.!~*-]+)?)*$')";
/// CEL expression: a `;transport=` parameter, when present, is udp, tcp or tls.
pub(crate) const SIP_TRANSPORT_RULE: &str =
    r"!self.contains(';transport=') || self.matches(';transport=(udp|tcp|tls)(;|$)')";

/// All CRDs in the order they should be applied.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Trunk::crd(),
        BotPool::crd(),
        FallbackPolicy::crd(),
        Notifier::crd(),
        FailoverDrill::crd(),
        SipEdge::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, exactly as `lifeline crds` prints them
/// and as they are committed under `crds/`.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}
