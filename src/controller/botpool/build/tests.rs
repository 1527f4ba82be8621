use super::*;
use crate::crd::BotPoolSpec;

fn pool(yaml: &str) -> BotPool {
    let spec: BotPoolSpec = serde_norway::from_str(yaml).unwrap();
    let mut bp = BotPool::new("cologne-bots", spec);
    bp.metadata.namespace = Some("cc".into());
    bp.metadata.uid = Some("uid-1".into());
    bp
}

fn owner(bp: &BotPool) -> OwnerReference {
    use kube::Resource;
    bp.controller_owner_ref(&()).unwrap()
}

fn basic() -> BotPool {
    pool(
        "region: cologne\nimage: bots/voice:1\ncallsPerReplica: 10\n\
         escalationUri: sip:agents@pbx.example.net\ndrainSeconds: 45\n",
    )
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

#[test]
fn container_gets_the_pool_settings_as_environment() {
    let c = bot_container(&basic());
    assert_eq!(env_value(&c, "LIFELINE_REGION").as_deref(), Some("cologne"));
    assert_eq!(env_value(&c, "LIFELINE_SIP_PORT").as_deref(), Some("5060"));
    assert_eq!(env_value(&c, "LIFELINE_TRANSPORT").as_deref(), Some("UDP"));
    assert_eq!(
        env_value(&c, "LIFELINE_CALLS_PER_REPLICA").as_deref(),
        Some("10")
    );
    assert_eq!(
        env_value(&c, "LIFELINE_ESCALATION_URI").as_deref(),
        Some("sip:agents@pbx.example.net")
    );
    let c = bot_container(&pool("region: bonn\nimage: x\ncallsPerReplica: 1\n"));
    assert_eq!(env_value(&c, "LIFELINE_ESCALATION_URI"), None);
}

#[test]
fn pod_meets_the_restricted_profile() {
    let tpl = pod_template(&basic());
    let spec = tpl.spec.unwrap();
    let pod_sc = spec.security_context.unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(pod_sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let sc = spec.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert!(sc.run_as_user.unwrap() > 0);
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(caps.add, None);
    let tmp = &spec.volumes.unwrap()[0];
    assert!(tmp.empty_dir.is_some());
    assert_eq!(
        spec.containers[0].volume_mounts.as_ref().unwrap()[0].mount_path,
        "/tmp"
    );
}

#[test]
fn low_sip_port_adds_only_net_bind_service() {
    let c = bot_container(&pool(
        "region: bonn\nimage: x\ncallsPerReplica: 1\nsipPort: 506\n",
    ));
    let caps = c.security_context.unwrap().capabilities.unwrap();
    assert_eq!(caps.add, Some(vec!["NET_BIND_SERVICE".to_string()]));
}

#[test]
fn drain_sets_grace_period_and_pre_stop_sleep() {
    let spec = pod_template(&basic()).spec.unwrap();
    assert_eq!(
        spec.termination_grace_period_seconds,
        Some(45 + SHUTDOWN_SECONDS)
    );
    let pre_stop = spec.containers[0]
        .lifecycle
        .clone()
        .unwrap()
        .pre_stop
        .unwrap();
    assert_eq!(pre_stop.sleep.unwrap().seconds, 45);
    let none = pod_template(&pool(
        "region: b\nimage: x\ncallsPerReplica: 1\ndrainSeconds: 0\n",
    ));
    assert!(none.spec.unwrap().containers[0].lifecycle.is_none());
}

#[test]
fn readiness_probe_is_on_the_sip_port() {
    let c = bot_container(&pool(
        "region: b\nimage: x\ncallsPerReplica: 1\nsipPort: 5080\n",
    ));
    let probe = c.readiness_probe.unwrap().tcp_socket.unwrap();
    assert_eq!(probe.port, IntOrString::Int(5080));
}

#[test]
fn replicas_are_left_out_in_hpa_floor_mode() {
    let bp = basic();
    let inputs = Inputs {
        replicas: None,
        scale_down_since: None,
    };
    let json = serde_json::to_value(deployment(&bp, &owner(&bp), &inputs)).unwrap();
    assert!(json["spec"].get("replicas").is_none(), "{json}");
    let inputs = Inputs {
        replicas: Some(3),
        scale_down_since: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
    };
    let json = serde_json::to_value(deployment(&bp, &owner(&bp), &inputs)).unwrap();
    assert_eq!(json["spec"]["replicas"], 3);
    assert_eq!(
        json["metadata"]["annotations"][SCALE_DOWN_SINCE],
        "2023-11-14T22:13:20Z"
    );
}

#[test]
fn owned_objects_carry_the_controller_reference_and_pool_labels() {
    let bp = basic();
    let o = owner(&bp);
    let d = deployment(
        &bp,
        &o,
        &Inputs {
            replicas: Some(1),
            scale_down_since: None,
        },
    );
    let s = service(&bp, &o);
    let p = pod_disruption_budget(&bp, &o);
    for m in [&d.metadata, &s.metadata, &p.metadata] {
        assert_eq!(m.name.as_deref(), Some("cologne-bots"));
        let refs = m.owner_references.as_ref().unwrap();
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(refs[0].kind, "BotPool");
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "lifeline-bot");
        assert_eq!(labels["app.kubernetes.io/instance"], "cologne-bots");
        assert_eq!(labels[POOL_LABEL], "cologne-bots");
        assert_eq!(labels[REGION_LABEL], "cologne");
    }
    let pod_labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    for (k, v) in selector_labels(&bp) {
        assert_eq!(pod_labels.get(&k), Some(&v), "selector label {k}");
    }
}

#[test]
fn service_is_headless_with_sip_over_udp_and_tcp() {
    let bp = basic();
    let spec = service(&bp, &owner(&bp)).spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let ports = spec.ports.unwrap();
    let protos: Vec<_> = ports
        .iter()
        .map(|p| (p.protocol.clone().unwrap(), p.port))
        .collect();
    assert_eq!(protos, vec![("UDP".into(), 5060), ("TCP".into(), 5060)]);
}

#[test]
fn pdb_allows_one_bot_at_a_time() {
    let bp = basic();
    let spec = pod_disruption_budget(&bp, &owner(&bp)).spec.unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        spec.selector.unwrap().match_labels.unwrap(),
        selector_labels(&bp)
    );
}
