//! TLS probing against a real TLS SIP peer: Kamailio with its tls module (Debian
//! `kamailio-tls-modules`) on 127.0.74.x and 127.0.77.x, certificates made by openssl in the test —
//! a good one, an expired one and one for the wrong name, all signed by a test CA.
//!
//! - Hub level: `sips:` and `;transport=tls` endpoints are Up with the CA bundle;
//!   the expired and the wrong-name certificates, and the system roots (which do not
//!   know the test CA), fail with a `lastError` that names the certificate problem;
//!   `serverName` is verified (and sent as SNI) instead of the URI host.
//! - Operator level: a Trunk whose `spec.tls.caBundle` names a ConfigMap goes Up
//!   through the Trunk controller; a missing ConfigMap is explained in `lastError`.
//!
//! Run: `cargo test --test probe_tls` (needs kamailio, kamailio-tls-modules, openssl).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::kamailio::Kamailio;
use common::sip::fixtures;
use common::{TempDir, wait_bound};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use lifeline::crd::{EndpointState, Trunk};
use lifeline::probe::policy::Rule;
use lifeline::probe::{EndpointHealth, ProbeConfig, ProbeHub, ProbeTarget, TlsSettings};
use lifeline::telemetry::Metrics;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const NAME: &str = "sip.tls.test";

/// The three TLS sockets of one test (each test has its own /24, so tests can run
/// side by side): `.1` good certificate, `.2` expired, `.3` wrong name.
#[derive(Clone)]
struct Ips {
    good: String,
    expired: String,
    wrong: String,
}

impl Ips {
    fn new(net: &str) -> Self {
        Self {
            good: format!("{net}.1"),
            expired: format!("{net}.2"),
            wrong: format!("{net}.3"),
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CA, then three server certificates: `good` (DNS sip.tls.test + IP 127.0.74.1),
/// `expired` (same names, notAfter a day before notBefore), `wrong` (other.test and
/// 127.0.74.99 only).
fn make_certs(dir: &Path, ips: &Ips) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=lifeline test CA",
            "-days",
            "2",
        ],
    );
    for (name, sans, days) in [
        ("good", format!("DNS:{NAME},IP:{}", ips.good), "2"),
        ("expired", format!("DNS:{NAME},IP:{}", ips.expired), "-1"),
        ("wrong", "DNS:other.test,IP:127.0.74.99".to_string(), "2"),
    ] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&ext), format!("subjectAltName={sans}\n")).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                days,
                "-extfile",
                &ext,
            ],
        );
    }
}

/// Kamailio serving each certificate on its own TLS socket.
fn kamailio_tls(dir: &Path, ips: &Ips) -> Kamailio {
    let d = dir.display();
    let mut tls_cfg = String::new();
    for (ip, name) in [
        (&ips.good, "good"),
        (&ips.expired, "expired"),
        (&ips.wrong, "wrong"),
    ] {
        tls_cfg.push_str(&format!(
            "[server:{ip}:5061]\nmethod = TLSv1.2+\ncertificate = {d}/{name}.crt\nprivate_key = {d}/{name}.key\nverify_certificate = no\nrequire_certificate = no\n\n"
        ));
    }
    tls_cfg.push_str(&format!(
        "[server:default]\nmethod = TLSv1.2+\ncertificate = {d}/good.crt\nprivate_key = {d}/good.key\n\n[client:default]\nverify_certificate = no\nrequire_certificate = no\n"
    ));
    std::fs::write(dir.join("tls.cfg"), tls_cfg).unwrap();
    let cfg = fixtures().join("kamailio/tls_options_200.cfg");
    let mut args: Vec<String> = vec![
        "-f".into(),
        cfg.display().to_string(),
        "-n".into(),
        "1".into(),
        "-A".into(),
        format!("TLS_CFG=\"{d}/tls.cfg\""),
    ];
    for ip in [&ips.good, &ips.expired, &ips.wrong] {
        args.push("-l".into());
        args.push(format!("tls:{ip}:5061"));
    }
    let mut kamailio = Kamailio::launch(&args, String::new(), dir);
    for ip in [&ips.good, &ips.expired, &ips.wrong] {
        wait_bound(ip, 5061, false, kamailio.process());
    }
    kamailio
}

fn setup(tag: &str, ips: &Ips) -> (TempDir, Kamailio, Arc<str>) {
    let dir = std::env::temp_dir().join(format!("lifeline-probe-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    make_certs(&dir.0, ips);
    let kam = kamailio_tls(&dir.0, ips);
    let ca: Arc<str> = Arc::from(std::fs::read_to_string(dir.0.join("ca.crt")).unwrap());
    (dir, kam, ca)
}

fn target(uri: &str, tls: Option<TlsSettings>) -> ProbeTarget {
    ProbeTarget {
        uri: uri.into(),
        spec: lifeline::crd::ProbeSpec {
            period_seconds: 1,
            timeout_millis: 800,
            failure_threshold: 1,
            success_threshold: 1,
            ..Default::default()
        },
        tls,
    }
}

async fn settled(hub: &ProbeHub, owner: &str) -> EndpointHealth {
    common::eventually(Duration::from_secs(15), owner, || async {
        hub.health(owner)
            .into_iter()
            .next()
            .filter(|h| h.state != EndpointState::Unknown)
    })
    .await
}

#[tokio::test]
async fn tls_endpoints_are_verified_against_the_ca_bundle_and_their_names() {
    let ips = Ips::new("127.0.74");
    let (good, expired, wrong) = (&ips.good, &ips.expired, &ips.wrong);
    let (_dir, _kamailio, ca) = setup("hub", &ips);
    let mut config = ProbeConfig::default();
    config.policy.allow([Rule::parse("127.0.74.0/24").unwrap()]);
    let hub = ProbeHub::new(Arc::new(Metrics::new()), config);
    let bundle = Some(TlsSettings {
        ca_pem: Some(ca.clone()),
        ..Default::default()
    });
    let named = |n: &str| {
        Some(TlsSettings {
            ca_pem: Some(ca.clone()),
            server_name: Some(n.into()),
            ..Default::default()
        })
    };
    let cases: Vec<(&str, ProbeTarget)> = vec![
        ("sips-ip", target(&format!("sips:{good}"), bundle.clone())),
        (
            "transport-tls",
            target(&format!("sip:{good}:5061;transport=tls"), bundle.clone()),
        ),
        (
            "server-name",
            target(&format!("sips:{good}:5061"), named(NAME)),
        ),
        (
            "expired",
            target(&format!("sips:{expired}:5061"), named(NAME)),
        ),
        (
            "wrong-name",
            target(&format!("sips:{wrong}:5061"), bundle.clone()),
        ),
        (
            "wrong-server-name",
            target(&format!("sips:{good}:5061"), named("other.test")),
        ),
        ("system-roots", target(&format!("sips:{good}:5061"), None)),
    ];
    for (owner, t) in &cases {
        hub.set_targets(owner, vec![t.clone()]);
    }
    let mut report = Vec::new();
    for (owner, _) in &cases {
        let h = settled(&hub, owner).await;
        report.push(format!("{owner}: {} {:?}", h.state, h.last_error));
        let err = h.last_error.clone().unwrap_or_default();
        match *owner {
            "sips-ip" | "transport-tls" | "server-name" => {
                assert_eq!(h.state, EndpointState::Up, "{owner}: {h:?}");
                assert_eq!(h.last_status_code, Some(200), "{owner}");
            }
            "expired" => {
                assert_eq!(h.state, EndpointState::Down, "{owner}: {h:?}");
                assert!(
                    err.contains("TLS handshake") && err.to_lowercase().contains("expired"),
                    "{owner}: {err}"
                );
            }
            "wrong-name" | "wrong-server-name" => {
                assert_eq!(h.state, EndpointState::Down, "{owner}: {h:?}");
                assert!(
                    err.contains("TLS handshake") && err.contains("not valid for"),
                    "{owner}: {err}"
                );
            }
            "system-roots" => {
                assert_eq!(h.state, EndpointState::Down, "{owner}: {h:?}");
                assert!(
                    err.contains("TLS handshake") && err.to_lowercase().contains("unknown"),
                    "{owner}: {err}"
                );
            }
            _ => unreachable!(),
        }
    }
    eprintln!("{}", report.join("\n"));
    hub.shutdown();
}

#[tokio::test]
async fn trunk_ca_bundle_from_a_configmap() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "probe-tls", &[]).await;
    let ips = Ips::new("127.0.77");
    let (_dir, _kamailio, ca) = setup("trunk", &ips);
    let mut config = ProbeConfig::default();
    config.policy.allow([Rule::parse("127.0.77.0/24").unwrap()]);
    let ctx = lifeline::controller::Context::with_probe_config(
        client.clone(),
        Arc::new(Metrics::new()),
        Some(ns.name.clone()),
        config,
    );
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    tokio::spawn(lifeline::controller::trunk::run(ctx, stop.clone()));

    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "carrier-ca" },
        "data": { "ca.crt": &*ca },
    }))
    .unwrap();
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    for (name, cm_name) in [("carrier-tls", "carrier-ca"), ("no-bundle", "missing-ca")] {
        let trunk: Trunk = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
            "metadata": { "name": name },
            "spec": {
                "region": "cologne",
                "endpoints": [{ "uri": format!("sips:{}:5061", ips.good) }],
                "probe": { "periodSeconds": 1, "timeoutMillis": 800,
                           "failureThreshold": 1, "successThreshold": 1 },
                "tls": { "caBundle": { "kind": "ConfigMap", "name": cm_name },
                         "serverName": NAME },
            },
        }))
        .unwrap();
        ns.api::<Trunk>()
            .create(&PostParams::default(), &trunk)
            .await
            .unwrap();
    }
    common::eventually(Duration::from_secs(20), "TLS trunk Up", || async {
        let t = ns.api::<Trunk>().get("carrier-tls").await.ok()?;
        (t.status?.endpoints.first()?.state == EndpointState::Up).then_some(())
    })
    .await;
    let e = common::eventually(
        Duration::from_secs(20),
        "missing CA bundle explained",
        || async {
            let t = ns.api::<Trunk>().get("no-bundle").await.ok()?;
            let e = t.status?.endpoints.first()?.clone();
            (e.state == EndpointState::Down).then_some(e)
        },
    )
    .await;
    let err = e.last_error.unwrap_or_default();
    assert!(
        err.contains("ConfigMap") && err.contains("missing-ca") && err.contains("not found"),
        "{err}"
    );
    stop.cancel();
}
