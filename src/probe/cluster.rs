//! The cluster's own addresses, denied to the prober by default: the API server (as
//! this process reaches it, and as `KUBERNETES_SERVICE_HOST`), every node address,
//! and the Service ranges (`networking.k8s.io/v1` ServiceCIDRs). Each lookup is
//! best-effort: without permission (or on an older cluster) it logs what to add to
//! `--probe-deny` by hand and carries on.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::ListParams;
use kube::{Api, Client};

use super::policy::Rule;

/// Deny rules for the API server, the nodes and the Service ranges.
pub async fn deny_rules(client: &Client) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut hosts: Vec<String> = std::env::var("KUBERNETES_SERVICE_HOST")
        .into_iter()
        .collect();
    if let Ok(config) = kube::Config::infer().await
        && let Some(host) = config.cluster_url.host()
    {
        hosts.push(host.trim_matches(['[', ']']).to_string());
    }
    rules.extend(
        hosts
            .iter()
            .filter_map(|h| h.parse::<IpAddr>().ok())
            .map(Rule::host),
    );
    match Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(nodes) => rules.extend(
            nodes
                .items
                .iter()
                .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
                .flatten()
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .map(Rule::host),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list Nodes: node addresses are not denied to probes; add them to --probe-deny")
        }
    }
    match Api::<ServiceCIDR>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => rules.extend(
            list.items
                .iter()
                .filter_map(|c| c.spec.as_ref()?.cidrs.as_ref())
                .flatten()
                .filter_map(|c| Rule::parse(c).ok()),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list ServiceCIDRs: the Service range is not denied to probes; add it to --probe-deny")
        }
    }
    rules.sort_by_key(|r| r.to_string());
    rules.dedup();
    rules
}
