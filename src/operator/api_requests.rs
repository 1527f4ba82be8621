//! `lifeline_api_requests_total{verb,resource}`: every request the operator's
//! Kubernetes client sends, counted by a layer on the client. It is how "zero writes and
//! zero reads beyond watches in steady state" is checked: in a quiet minute only
//! `verb="watch"` may grow (a watch is re-opened every few minutes), plus the Lease
//! `get`/`update` of leader election.
//!
//! Verbs follow the API server's audit verbs: `get`, `list`, `watch`, `create`,
//! `update`, `patch`, `delete`; resources are the plural names, with a subresource
//! after a slash (`trunks/status`); anything else (`/version`) is `other`.

use std::sync::LazyLock;

use http::Request;
use kube::client::{Body, ClientBuilder};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of [`REQUESTS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Audit verb.
    pub verb: &'static str,
    /// Plural resource name, `/subresource` appended.
    pub resource: String,
}

/// The counters, shared by every client built with [`counting_client`] in the process.
pub static REQUESTS: LazyLock<Family<RequestLabels, Counter>> = LazyLock::new(Family::default);

/// Register [`REQUESTS`] in `registry` (as `api_requests`, so `lifeline_api_requests_total`
/// with the registry's prefix).
pub fn register(registry: &mut Registry) {
    registry.register(
        "api_requests",
        "Requests sent to the Kubernetes API server, by verb and resource",
        REQUESTS.clone(),
    );
}

/// A client for `config` whose requests are counted in [`REQUESTS`].
pub fn counting_client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let layer = tower::util::MapRequestLayer::new(|req: Request<Body>| {
        REQUESTS.get_or_create(&classify(&req)).inc();
        req
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// The verb and resource of a request to the API server.
pub fn classify<B>(req: &Request<B>) -> RequestLabels {
    let path = req.uri().path();
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let rest: Vec<&str> = if let Some(r) = path.strip_prefix("/api/v1/") {
        r.split('/').collect()
    } else if let Some(r) = path.strip_prefix("/apis/") {
        // group/version/…
        r.split('/').skip(2).collect()
    } else {
        Vec::new()
    };
    // namespaces/<ns>/<resource>/… ; a bare `namespaces[/<name>]` is the Namespace kind.
    let rest = match rest.as_slice() {
        ["namespaces", _, resource, more @ ..] => [&[*resource][..], more].concat(),
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] | [""] => ("other".to_string(), true),
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let verb = match *req.method() {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    };
    RequestLabels { verb, resource }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: &str, uri: &str) -> (&'static str, String) {
        let req = Request::builder().method(method).uri(uri).body(()).unwrap();
        let l = classify(&req);
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_named_like_audit_verbs() {
        let p = "/apis/lifeline.dev/v1alpha1/namespaces/t/trunks";
        assert_eq!(of("GET", p), ("list", "trunks".into()));
        assert_eq!(
            of("GET", &format!("{p}?watch=true&resourceVersion=5")),
            ("watch", "trunks".into())
        );
        assert_eq!(of("GET", &format!("{p}/a")), ("get", "trunks".into()));
        assert_eq!(
            of("PATCH", &format!("{p}/a/status?fieldManager=x")),
            ("patch", "trunks/status".into())
        );
        assert_eq!(
            of("GET", "/api/v1/configmaps?watch=1"),
            ("watch", "configmaps".into())
        );
        assert_eq!(
            of("POST", "/apis/events.k8s.io/v1/namespaces/t/events"),
            ("create", "events".into())
        );
        assert_eq!(
            of("PUT", "/apis/coordination.k8s.io/v1/namespaces/t/leases/op"),
            ("update", "leases".into())
        );
        assert_eq!(
            of("GET", "/api/v1/namespaces/t"),
            ("get", "namespaces".into())
        );
        assert_eq!(of("GET", "/version"), ("get", "other".into()));
    }
}
