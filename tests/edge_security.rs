//! The shipped SIP edge (`examples/kamailio/kamailio.cfg`) is safe by default: a real
//! Kamailio 5.6 and real sipp peers on 127.0.70.x.
//!
//! - new calls only from declared peers: the addresses in the routing list (a carrier
//!   calling in) and the `ALLOW_FROM` allow-list;
//! - set-selection hints (R-URI user `outbound`, `X-Lifeline-Set`) only from
//!   `TRUST_HINTS_FROM`;
//! - requests with a To-tag only for dialogs Kamailio tracks, or from the routing list.
//!
//! Everything else is answered 403 with a `lifeline-refused` log line, and no peer
//! behind the edge sees it (each peer logs every message it receives).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TempDir;
use common::kamailio::Kamailio;
use common::sip::sipp_uas;

const EDGE: &str = "127.0.70.1";
const BOTS: &str = "127.0.70.21";
const CARRIER: &str = "127.0.70.31";
/// The contact center's PBX: trusted to choose the outbound set.
const PBX: &str = "127.0.70.40";
/// A customer SBC on the allow-list: may call in, may not choose a set.
const SBC: &str = "127.0.70.50";
/// Nobody the edge knows.
const STRANGER: &str = "127.0.70.99";

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// One sipp call from `ip` through the edge; true when sipp's scenario completed
/// (answered and hung up for `uac_rr.xml`, refused with 403 for `uac_refused.xml`).
fn call(scenario: &str, ip: &str, call_id: &str, keys: &[(&str, &str)]) -> bool {
    let mut cmd = Command::new("/usr/bin/sipp");
    cmd.args([
        "-sf",
        &fixture(scenario).to_string_lossy(),
        &format!("{EDGE}:5060"),
    ])
    .args([
        "-i", ip, "-p", "5070", "-m", "1", "-timeout", "10", "-nostdin",
    ])
    .args(["-cid_str", &format!("{call_id}-%u-%p@%s")]);
    for (k, v) in keys {
        if *k == "service" {
            cmd.args(["-s", v]);
        } else {
            cmd.args(["-key", k, v]);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run /usr/bin/sipp (apt-get install sip-tester)")
        .success()
}

/// An INVITE the edge must refuse: `ruri`, optional To-tag, optional extra header.
fn refused(ip: &str, call_id: &str, ruri: &str, to_tag: bool, hint: Option<&str>) -> bool {
    let to_params = if to_tag { ";tag=forged42" } else { ";x=1" };
    call(
        "edge/uac_refused.xml",
        ip,
        call_id,
        &[
            ("ruri", ruri),
            ("to_params", to_params),
            ("hint", hint.unwrap_or("X-Probe: none")),
        ],
    )
}

/// A request the edge must refuse, and the reason its log line must give.
struct Refusal {
    /// Call-ID prefix, to find the request in the peers' and Kamailio's logs.
    id: &'static str,
    from: &'static str,
    ruri: String,
    to_tag: bool,
    hint: Option<&'static str>,
    reason: &'static str,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn only_declared_peers_call_and_only_trusted_sources_choose_the_set() {
    let dir = TempDir::new("lifeline-edge-security");
    let list = dir.0.join("dispatcher.list");
    std::fs::write(
        &list,
        format!("1 sip:{BOTS}:5080 0 0 duid=bots\n2 sip:{CARRIER}:5080 0 0 duid=carrier\n"),
    )
    .unwrap();
    let bots_log = dir.0.join("bots.msg");
    let carrier_log = dir.0.join("carrier.msg");
    let _bots = sipp_uas(BOTS, 5080, Some(&bots_log));
    let _carrier = sipp_uas(CARRIER, 5080, Some(&carrier_log));
    let allow = format!("ALLOW_FROM=\"{SBC}/32\"");
    let trust = format!("TRUST_HINTS_FROM=\"{PBX}/32\"");
    let mut kam = Kamailio::edge_with(EDGE, &list, &dir.0, &[&allow, &trust]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(kam.wait_ready(Duration::from_secs(20)));

    // Declared peers still work.
    let inbound = [("service", "inbound")];
    assert!(
        call("sync/uac_rr.xml", CARRIER, "legit-carrier", &inbound),
        "a call from the carrier in the routing list reaches the bots\n{}",
        kam.log_tail()
    );
    assert!(
        call("sync/uac_rr.xml", SBC, "legit-sbc", &inbound),
        "a call from ALLOW_FROM reaches the bots\n{}",
        kam.log_tail()
    );
    assert!(
        call(
            "sync/uac_rr.xml",
            PBX,
            "legit-pbx",
            &[("service", "outbound")]
        ),
        "the trusted PBX chooses the outbound set and reaches the carrier\n{}",
        kam.log_tail()
    );

    // Everything else: 403.
    let edge_uri = format!("sip:inbound@{EDGE}:5060");
    let outbound_uri = format!("sip:outbound@{EDGE}:5060");
    let victim = format!("sip:+4922199999@{CARRIER}:5080");
    let case = |id, from, ruri: &str, to_tag, hint, reason| Refusal {
        id,
        from,
        ruri: ruri.to_string(),
        to_tag,
        hint,
        reason,
    };
    let set2 = Some("X-Lifeline-Set: 2");
    let cases = [
        case(
            "forged-new",
            STRANGER,
            &edge_uri,
            false,
            None,
            "undeclared-peer",
        ),
        case(
            "forged-totag",
            STRANGER,
            &victim,
            true,
            None,
            "unknown-dialog",
        ),
        case(
            "forged-totag-sbc",
            SBC,
            &victim,
            true,
            None,
            "unknown-dialog",
        ),
        case(
            "forged-hint-stranger",
            STRANGER,
            &edge_uri,
            false,
            set2,
            "undeclared-peer",
        ),
        case(
            "forged-hint-sbc",
            SBC,
            &edge_uri,
            false,
            set2,
            "untrusted-set-hint",
        ),
        case(
            "forged-outbound-carrier",
            CARRIER,
            &outbound_uri,
            false,
            None,
            "untrusted-set-hint",
        ),
    ];
    for Refusal {
        id,
        from: ip,
        ruri,
        to_tag,
        hint,
        ..
    } in &cases
    {
        assert!(
            refused(ip, id, ruri, *to_tag, *hint),
            "{id}: an INVITE from {ip} to {ruri} (To-tag: {to_tag}, header: {hint:?}) is refused with 403\n{}",
            kam.log_tail()
        );
    }

    // No refused request reached a peer; the legitimate calls did (so the peers'
    // message logs are complete enough to tell).
    std::thread::sleep(Duration::from_millis(300));
    let bots = read(&bots_log);
    let carrier = read(&carrier_log);
    assert!(
        bots.contains("legit-carrier") && bots.contains("legit-sbc"),
        "bots saw the inbound calls:\n{bots}"
    );
    assert!(
        carrier.contains("legit-pbx"),
        "carrier saw the PBX's outbound call:\n{carrier}"
    );
    for Refusal { id, .. } in &cases {
        assert!(!bots.contains(id), "{id} reached the bots:\n{bots}");
        assert!(
            !carrier.contains(id),
            "{id} reached the carrier:\n{carrier}"
        );
    }

    // Each refusal is logged with its reason and source.
    let log = read(&kam.log);
    for Refusal {
        id,
        from: ip,
        reason,
        ..
    } in &cases
    {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{id}-1-")) && l.contains("lifeline-refused"));
        let line = line.unwrap_or_else(|| panic!("no lifeline-refused line for {id}:\n{log}"));
        assert!(
            line.contains(&format!("reason={reason}")) && line.contains(&format!("src={ip}:")),
            "{id}: expected reason={reason} src={ip}: {line}"
        );
    }
}
