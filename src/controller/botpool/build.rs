//! Pure builders of the objects a BotPool owns: a Deployment of bot pods, a headless
//! Service for their SIP port and a PodDisruptionBudget. No I/O here; the reconciler
//! applies what these return.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
    TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{BotPool, Transport};

/// Label every bot pod carries (`app.kubernetes.io/name`).
pub const APP_NAME: &str = "lifeline-bot";
/// Label naming the pool of a bot pod (also `app.kubernetes.io/instance`).
pub const POOL_LABEL: &str = "lifeline.dev/botpool";
/// Label with the pool's region.
pub const REGION_LABEL: &str = "lifeline.dev/region";
/// Annotation on the Deployment: when the pending scale-down began (RFC 3339).
pub const SCALE_DOWN_SINCE: &str = "lifeline.dev/scale-down-since";
/// UID and GID the bot runs as when the image does not say (the "nonroot" user of
/// distroless images); the restricted profile only needs it to be non-zero.
pub const BOT_UID: i64 = 65532;
/// Seconds the bot gets after SIGTERM once the drain sleep is over.
pub const SHUTDOWN_SECONDS: i64 = 5;

/// Everything the builders need that is not in the BotPool itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// `spec.replicas` to write; `None` leaves the field out of the apply (HpaFloor
    /// mode, where the HPA owns it).
    pub replicas: Option<i32>,
    /// Start of a pending scale-down, recorded on the Deployment so that the
    /// stabilization window survives an operator restart.
    pub scale_down_since: Option<jiff::Timestamp>,
}

/// Labels of the pool's pods (and of its owned objects).
pub fn pod_labels(pool: &BotPool) -> BTreeMap<String, String> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), name.clone()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "lifeline".to_string(),
        ),
        (POOL_LABEL.to_string(), name),
        (REGION_LABEL.to_string(), pool.spec.region.clone()),
    ])
}

/// The labels that select the pool's pods. A subset of [`pod_labels`] that never
/// changes for a pool (a Deployment's selector is immutable; the region may change).
pub fn selector_labels(pool: &BotPool) -> BTreeMap<String, String> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        ("app.kubernetes.io/instance".to_string(), name),
    ])
}

/// The label selector string of the pool's pods, for list/watch calls.
pub fn selector_string(pool: &BotPool) -> String {
    selector_labels(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn meta(pool: &BotPool, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: pool.metadata.name.clone(),
        namespace: pool.metadata.namespace.clone(),
        labels: Some(pod_labels(pool)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Tls => "TLS",
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The bot container's environment: what a bot needs to know about its pool.
pub fn bot_env(pool: &BotPool) -> Vec<EnvVar> {
    let spec = &pool.spec;
    let mut vars = vec![
        env("LIFELINE_REGION", spec.region.clone()),
        env("LIFELINE_SIP_PORT", spec.sip_port.to_string()),
        env("LIFELINE_TRANSPORT", transport_name(spec.transport)),
        env(
            "LIFELINE_CALLS_PER_REPLICA",
            spec.calls_per_replica.to_string(),
        ),
    ];
    if let Some(uri) = &spec.escalation_uri {
        vars.push(env("LIFELINE_ESCALATION_URI", uri.clone()));
    }
    // The address to put into Via/Contact headers: SIP bots must advertise their own IP.
    vars.push(EnvVar {
        name: "LIFELINE_POD_IP".to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "status.podIP".to_string(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    });
    vars
}

/// The bot container: restricted security context, SIP ports, readiness on the SIP
/// port, and a preStop drain.
pub fn bot_container(pool: &BotPool) -> Container {
    let spec = &pool.spec;
    let port = spec.sip_port;
    // Ports below 1024 need NET_BIND_SERVICE as a non-root user; it is the one
    // capability the restricted profile lets a pod add back.
    let add = (port < 1024).then(|| vec!["NET_BIND_SERVICE".to_string()]);
    let drain = i64::from(spec.drain_seconds);
    Container {
        name: "bot".to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(bot_env(pool)),
        ports: Some(vec![
            ContainerPort {
                name: Some("sip-udp".to_string()),
                container_port: port,
                protocol: Some("UDP".to_string()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("sip-tcp".to_string()),
                container_port: port,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            },
        ]),
        // RFC 3261 §18 has every SIP element listen on TCP as well as UDP, so a TCP
        // connect to the SIP port is a readiness check that works for every transport
        // without a helper binary in the image.
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port),
                host: None,
            }),
            period_seconds: Some(5),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        // Keep the pod alive for drainSeconds after it leaves the endpoints, so calls
        // in flight end normally even if the bot ignores SIGTERM; SIGTERM follows.
        lifecycle: (drain > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: drain }),
                ..LifecycleHandler::default()
            }),
            post_start: None,
            stop_signal: None,
        }),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add,
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(BOT_UID),
            run_as_group: Some(BOT_UID),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".to_string(),
            mount_path: "/tmp".to_string(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        localhost_profile: None,
    }
}

/// The pod template of the bots.
pub fn pod_template(pool: &BotPool) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels(pool)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![bot_container(pool)],
            termination_grace_period_seconds: Some(
                i64::from(pool.spec.drain_seconds) + SHUTDOWN_SECONDS,
            ),
            // Bots talk SIP, not the Kubernetes API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(BOT_UID),
                run_as_group: Some(BOT_UID),
                fs_group: Some(BOT_UID),
                seccomp_profile: Some(runtime_default()),
                ..PodSecurityContext::default()
            }),
            volumes: Some(vec![Volume {
                name: "tmp".to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
    }
}

/// The Deployment of the bots.
pub fn deployment(pool: &BotPool, owner: &OwnerReference, inputs: &Inputs) -> Deployment {
    let mut metadata = meta(pool, owner);
    // Always send the annotation map (possibly empty) so that dropping the key from
    // an apply removes it: lifeline's field manager owns it from the first apply on.
    metadata.annotations = Some(
        inputs
            .scale_down_since
            .map(|t| BTreeMap::from([(SCALE_DOWN_SINCE.to_string(), t.to_string())]))
            .unwrap_or_default(),
    );
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: inputs.replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(pool)),
                match_expressions: None,
            },
            // New bots come up before old ones stop, so capacity never dips in a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".to_string())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: pod_template(pool),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The headless Service: DNS names for the bots, SIP over UDP and TCP.
pub fn service(pool: &BotPool, owner: &OwnerReference) -> Service {
    let port = pool.spec.sip_port;
    let sip_port = |name: &str, protocol: &str| ServicePort {
        name: Some(name.to_string()),
        port,
        protocol: Some(protocol.to_string()),
        target_port: Some(IntOrString::Int(port)),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(pool, owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(pool)),
            ports: Some(vec![sip_port("sip-udp", "UDP"), sip_port("sip-tcp", "TCP")]),
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The PodDisruptionBudget: one bot at a time may be evicted. `maxUnavailable: 1`
/// rather than `minAvailable: min`, because a pool running exactly `min` bots would
/// otherwise block every node drain.
pub fn pod_disruption_budget(pool: &BotPool, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(pool, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(pool)),
                match_expressions: None,
            }),
            // A bot that is not Ready carries no calls; evicting it costs nothing.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests;
