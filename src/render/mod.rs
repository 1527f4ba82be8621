//! Renderers from a [`Plan`](crate::plan::Plan) to the text the SIP edge reads: a
//! Kamailio `dispatcher.list` or a JSON document with the same content.
//!
//! Both are deterministic (same plan, byte-identical text) and carry no timestamps, so
//! that the content hash changes only when the routing does and lifeline writes the
//! ConfigMap only then.

pub mod dispatcher;
pub mod json;
pub mod probes;

use sha2::{Digest, Sha256};

use crate::crd::RoutingFormat;
use crate::plan::Plan;

/// The ConfigMap data key for a format.
pub fn data_key(format: RoutingFormat) -> &'static str {
    match format {
        RoutingFormat::KamailioDispatcher => "dispatcher.list",
        RoutingFormat::Json => "routing.json",
    }
}

/// Render a plan in `format` for the policy `namespace/name`.
pub fn render(format: RoutingFormat, policy: &str, plan: &Plan) -> String {
    match format {
        RoutingFormat::KamailioDispatcher => dispatcher::render(policy, plan),
        RoutingFormat::Json => json::render(policy, plan),
    }
}

/// Lowercase hex SHA-256 of the rendered text (the `lifeline.dev/content-hash`
/// annotation).
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_lowercase_hex_sha256() {
        assert_eq!(
            content_hash(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
