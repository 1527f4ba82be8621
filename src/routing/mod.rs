//! The routing contract between the operator and the SIP edge (`lifeline sip-sync`).
//!
//! Both sides use this module and nothing else to agree on:
//! - where the routing lives in the ConfigMap: the data key per format ([`data_key`]);
//! - how a version is named: the lowercase hex SHA-256 of the rendered text
//!   ([`content_hash`]), which the operator writes to [`CONTENT_HASH_ANNOTATION`] and
//!   sip-sync reports back in [`APPLIED_HASH_ANNOTATION`] once Kamailio runs it;
//! - what the text means: [`dispatcher`] renders a [`Plan`] into a Kamailio
//!   `dispatcher.list` and parses one back (sip-sync validates with the same parser),
//!   [`json`] renders the same content as JSON for other proxies.
//!
//! Rendering is deterministic (same plan, byte-identical text) and carries no
//! timestamps, so that the content hash changes only when the routing does and the
//! operator writes the ConfigMap only then.

pub mod dispatcher;
pub mod json;
pub mod probes;

use sha2::{Digest, Sha256};

use crate::crd::RoutingFormat;
use crate::plan::Plan;

/// ConfigMap data key of the Kamailio dispatcher list (sip-sync's default `--key`).
pub const DISPATCHER_KEY: &str = "dispatcher.list";
/// ConfigMap data key of the JSON routing document.
pub const JSON_KEY: &str = "routing.json";

/// Annotation the operator writes: hash of the data it rendered.
pub const CONTENT_HASH_ANNOTATION: &str = "lifeline.dev/content-hash";
/// Annotation sip-sync writes: hash of the content Kamailio loaded and confirmed (last
/// writer wins when several edges share a ConfigMap).
pub const APPLIED_HASH_ANNOTATION: &str = "lifeline.dev/applied-hash";
/// Annotation sip-sync writes: RFC 3339 time of that confirmation.
pub const APPLIED_AT_ANNOTATION: &str = "lifeline.dev/applied-at";
/// Annotation sip-sync writes: why the latest content is not applied (absent when it is).
pub const SYNC_ERROR_ANNOTATION: &str = "lifeline.dev/sync-error";

/// The ConfigMap data key for a format.
pub fn data_key(format: RoutingFormat) -> &'static str {
    match format {
        RoutingFormat::KamailioDispatcher => DISPATCHER_KEY,
        RoutingFormat::Json => JSON_KEY,
    }
}

/// Render a plan in `format` for the policy `namespace/name`.
pub fn render(format: RoutingFormat, policy: &str, plan: &Plan) -> String {
    match format {
        RoutingFormat::KamailioDispatcher => dispatcher::render(policy, plan),
        RoutingFormat::Json => json::render(policy, plan),
    }
}

/// Lowercase hex SHA-256 of the routing text (or of a file's bytes): the value of
/// [`CONTENT_HASH_ANNOTATION`] and [`APPLIED_HASH_ANNOTATION`].
pub fn content_hash(content: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(content.as_ref()))
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
        assert_eq!(
            content_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(content_hash(b"abc"), content_hash("abc"));
    }

    #[test]
    fn each_format_has_its_key() {
        assert_eq!(
            data_key(RoutingFormat::KamailioDispatcher),
            "dispatcher.list"
        );
        assert_eq!(data_key(RoutingFormat::Json), "routing.json");
    }
}
