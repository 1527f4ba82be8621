#!/usr/bin/env python3
"""The carrier-outage replay on pods: lifeline the way users run it, on the real node.

`scripts/demo.py` replays the outage with host processes on loopback (fast, no
images). This one runs every part as a pod on the testenv's real node (kubelet,
containerd, runc, CNI bridge lifeline0, 10.244.0.0/24):

  - the operator, installed with Helm from the packaged chart (target/release/artifacts),
  - the SIP edge from charts/lifeline-edge (Kamailio + the sip-sync native sidecar),
  - carriers and the agents' PBXs as pods of the sipp test image,
  - the phone bots as the pods of two BotPools (the same image),
  - examples/carrier-outage/ applied with the pods' IPs in place of 127.0.50.x.

Callers are sipp processes in this host on the bridge's address 10.244.0.1; they call
the edge pod's IP (the node has no kube-proxy, so a Service ClusterIP would lead
nowhere). Cologne's fixed-line carrier and the agents' PBX reached over it "die": the
host side of their pod's veth is set down, so their traffic is dropped while the pods
(and their IPs) stay; setting it up again brings the carrier back.

Needs the real-node plane (`make testenv-up NODE=real`), `make release images-test`
and `make tools`; root (the veth switch). `make demo-cluster` does all of that.

  scripts/demo_cluster.py                  the full replay (about 3 minutes)
  scripts/demo_cluster.py --quick --json F shorter phases, summary as JSON in F, exit 1
                                           when a mission criterion is missed (tests/e2e_cluster.rs)

Everything it creates (Helm releases, namespaces, caller processes) is removed at the
end, also on failure; the plane itself stays up (`make testenv-down` stops it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from replay_common import (
    CallRun, argument_parser, bot_status, bots_column, calls_per_phase, calls_so_far, conclude, healthy_trunks,
    is_dead, is_dest, log, outage_calls, outage_problems, parse_route_log, policy_columns, print_outage_times,
    print_phases, regions_active, report,
)

ROOT = Path(__file__).resolve().parent.parent
KUBECONFIG = ROOT / "target/testenv-real/kubeconfig"
HELM = ROOT / "target/tools/bin/helm"
WORK = ROOT / "target/demo-cluster"
VERSION = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
ARTIFACTS = ROOT / "target/release/artifacts"
IMAGES = [
    ARTIFACTS / f"lifeline-{VERSION}.oci.tar",
    ROOT / f"target/image/sipp-{VERSION}.oci.tar",
    ROOT / f"target/image/kamailio-{VERSION}.oci.tar",
]
SIPP_IMAGE = f"localhost/lifeline-test/sipp:{VERSION}"

OPERATOR_NS, OPERATOR_RELEASE = "lifeline-system", "lifeline"
NAMESPACE, EDGE_RELEASE = "lifeline-demo", "edge"
BRIDGE, HOST_IP = "lifeline0", "10.244.0.1"
EDGE_PORT, SYNC_METRICS_PORT = 5060, 9464
# The example's loopback addresses, and the pod that takes each one's place.
PEERS = {
    "cologne-fixed": "127.0.50.11",
    "cologne-mobile": "127.0.50.12",
    "frankfurt-fixed": "127.0.50.21",
    "frankfurt-mobile": "127.0.50.22",
    "agents-cologne": "127.0.50.31",
    "agents-frankfurt": "127.0.50.32",
}
CARRIERS = [p for p in PEERS if not p.startswith("agents-")]
# The fixed-line carrier of Cologne, and the agents' PBX reached over it.
DEAD = ["cologne-fixed", "agents-cologne"]
# From examples/carrier-outage: probe period 1 s × failureThreshold 2 + timeout 0.5 s, + 0.5 s.
DETECTION_BOUND_S = 1 * 2 + 0.5 + 0.5
ENV = dict(os.environ, KUBECONFIG=str(KUBECONFIG))


def run(argv: list[str], check: bool = True, input: str | None = None, timeout: float = 180,
        env: dict | None = None) -> str:
    res = subprocess.run(argv, input=input, capture_output=True, text=True, env=env or ENV, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... failed: {res.stderr.strip()[-2000:]}")
    return res.stdout


def kubectl(*args: str, check: bool = True, input: str | None = None, timeout: float = 180) -> str:
    return run(["kubectl", *args], check=check, input=input, timeout=timeout)


def helm(*args: str, check: bool = True) -> str:
    return run([str(HELM), *args], check=check, timeout=300)


def get_json(kind: str, ns: str = NAMESPACE, *extra: str) -> list[dict]:
    out = kubectl("get", kind, "-n", ns, "-o", "json", *extra, check=False)
    try:
        return json.loads(out).get("items", [])
    except json.JSONDecodeError:
        return []


def ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions", [])
    )


def rfc3339(ts: str) -> float:
    """Seconds since the epoch of an RFC 3339 UTC time (any number of fraction digits)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", ts)
    if not m:
        raise ValueError(f"not an RFC 3339 UTC time: {ts}")
    whole = dt.datetime.fromisoformat(m.group(1)).replace(tzinfo=dt.timezone.utc).timestamp()
    return whole + (float("0." + m.group(2)) if m.group(2) else 0.0)


def wait_for(what: str, timeout: float, check, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:.0f} s: {what}")


def http_get(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()
    except OSError:
        return None


def metric(text: str | None, name: str) -> float | None:
    for line in (text or "").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def routing_uris(content: str) -> list[str]:
    return [line.split()[1] for line in content.splitlines() if line.strip() and not line.startswith("#")]


# ------------------------------------------------------------------ pod network
def veth_of(ip: str) -> str:
    """The host-side veth of the pod with address `ip`: its MAC from the host's
    neighbour table (one UDP datagram resolves it), then the bridge port that learned it."""
    def lookup() -> str | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST_IP, 0))
            s.sendto(b"\r\n\r\n", (ip, 5060))  # a SIP keep-alive: ignored by the peer
        time.sleep(0.2)
        neigh = json.loads(run(["ip", "-j", "neigh", "show", "to", ip, "dev", BRIDGE]) or "[]")
        mac = next((n.get("lladdr") for n in neigh if n.get("lladdr")), None)
        if not mac:
            return None
        for entry in json.loads(run(["bridge", "-j", "fdb", "show", "br", BRIDGE]) or "[]"):
            if entry.get("mac") == mac and entry.get("ifname", "").startswith("veth"):
                return entry["ifname"]
        return None

    return wait_for(f"the bridge port of {ip}", 15, lookup)


def set_link(ifname: str, up: bool) -> None:
    run(["ip", "link", "set", "dev", ifname, "up" if up else "down"])


# ------------------------------------------------------------------ callers (host sipp)
@dataclass
class Callers:
    runs: list[CallRun] = field(default_factory=list)

    def start(self, name: str, service: str, edge_ip: str, rate: int, seconds: float, port: int) -> CallRun:
        stat = WORK / f"{name}.csv"
        stat.unlink(missing_ok=True)
        calls = max(1, int(rate * seconds))
        logf = open(WORK / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [
                "sipp", "-sf", str(ROOT / "scripts/sipp/caller.xml"), "-s", service,
                "-i", HOST_IP, "-p", str(port), "-mp", str(port + 10000),
                "-r", str(rate), "-m", str(calls), "-d", "1000", "-l", str(rate * 4),
                "-recv_timeout", "15000", "-timeout", str(int(seconds + 60)), "-nostdin",
                "-trace_stat", "-stf", str(stat), "-fd", "1",
                "-trace_err", "-error_file", str(WORK / "logs" / f"{name}.errors"),
                f"{edge_ip}:{EDGE_PORT}",
            ],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=WORK, start_new_session=True,
        )
        run_ = CallRun(name, stat, proc)
        self.runs.append(run_)
        return run_

    def wait(self, run_: CallRun, timeout: float) -> tuple[int, int]:
        try:
            run_.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(run_)
        time.sleep(0.2)
        return run_.counts()

    @staticmethod
    def stop(run_: CallRun) -> None:
        if run_.proc.poll() is None:
            try:
                os.killpg(run_.proc.pid, signal.SIGTERM)
                run_.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(run_.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                run_.proc.wait()

    def stop_all(self) -> None:
        for r in self.runs:
            self.stop(r)


# ------------------------------------------------------------------ routing watch
class RoutingWatch:
    """Every version of the routing ConfigMap, as (time seen, content) by sip-sync's
    content hash (SHA-256 of the dispatcher list), from one `kubectl get --watch`
    (started before the ConfigMap exists: a field selector, not a name)."""

    def __init__(self) -> None:
        self.versions: dict[str, tuple[float, str]] = {}
        self.lock = threading.Lock()
        template = '{{with .data}}{{printf "%q" (index . "dispatcher.list")}}{{end}}{{"\\n"}}'
        self.proc = subprocess.Popen(
            ["kubectl", "get", "configmaps", "-n", NAMESPACE, "--field-selector", "metadata.name=sip-routing",
             "--watch", "-o", f"go-template={template}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV,
            start_new_session=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            try:
                content = json.loads(line.strip())  # Go's %q of ASCII text is a JSON string
            except json.JSONDecodeError:
                continue
            if isinstance(content, str) and content:
                h = hashlib.sha256(content.encode()).hexdigest()
                with self.lock:
                    self.versions.setdefault(h, (time.time(), content))

    def content(self, h: str) -> str | None:
        with self.lock:
            v = self.versions.get(h)
        return v[1] if v else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()


# ------------------------------------------------------------------ the replay
class Demo:
    def __init__(self, quick: bool):
        self.quick = quick
        self.t0 = time.time()
        self.phase = "setup"
        self.callers = Callers()
        self.phase_runs: dict[str, list[CallRun]] = {}
        self.ips: dict[str, str] = {}
        self.edge_ip = ""
        self.edge: dict = {}
        self.watch: RoutingWatch | None = None
        self.downed: list[str] = []

    # -------------------------------------------------------------- setup
    def preflight(self) -> None:
        missing = [str(p) for p in [*IMAGES, ARTIFACTS / f"lifeline-{VERSION}.tgz", HELM] if not p.exists()]
        if missing:
            raise SystemExit(f"missing: {', '.join(missing)}: run `make release images-test tools`")
        if subprocess.run([str(ROOT / "tests/testenv/status.sh")], env=dict(ENV, NODE="real"),
                          capture_output=True).returncode != 0:
            raise SystemExit("the real-node plane is not running: `make testenv-up NODE=real`")
        if os.geteuid() != 0:
            raise SystemExit("root is needed (switching the dead carrier's veth)")

    def cleanup_release_state(self) -> None:
        """Leftovers of an earlier run (or of tests/real_node.rs on a reused plane)."""
        helm("uninstall", EDGE_RELEASE, "-n", NAMESPACE, "--wait", check=False)
        helm("uninstall", OPERATOR_RELEASE, "-n", OPERATOR_NS, "--wait", check=False)
        for ns in (NAMESPACE, OPERATOR_NS):
            kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=120s", check=False)

    def setup(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        for f in WORK.glob("*.csv"):
            f.unlink()
        (WORK / "logs").mkdir(exist_ok=True)
        for f in (WORK / "logs").iterdir():
            f.unlink()
        log("==> images into the node (ctr import): lifeline, sipp, kamailio")
        run([str(ROOT / "tests/testenv/node.sh"), "import", *map(str, IMAGES)], timeout=300,
            env=dict(ENV, NODE="real"))
        self.cleanup_release_state()

        log(f"==> helm install {OPERATOR_RELEASE} (the packaged chart, one replica) in {OPERATOR_NS}")
        helm("install", OPERATOR_RELEASE, str(ARTIFACTS / f"lifeline-{VERSION}.tgz"), "-n", OPERATOR_NS,
             "--create-namespace", "--set", "replicas=1", "--wait", "--timeout", "180s")
        kubectl("create", "namespace", NAMESPACE)

        log("==> carriers and the agents' PBXs: one sipp pod each")
        docs = []
        for name in PEERS:
            docs.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "lifeline-demo",
                                                      "lifeline-demo/peer": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "sip-peer", "image": SIPP_IMAGE, "imagePullPolicy": "Never",
                        "env": [{"name": "LIFELINE_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "readinessProbe": {"tcpSocket": {"port": 5060}, "periodSeconds": 2},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"memory": "64Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            })
        kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", "pod", "-l", "lifeline-demo/peer",
                "--timeout=120s")
        for p in get_json("pods", NAMESPACE, "-l", "lifeline-demo/peer"):
            self.ips[p["metadata"]["name"]] = p["status"]["podIP"]
        log("    " + ", ".join(f"{n} {ip}" for n, ip in self.ips.items()))

        log(f"==> helm install {EDGE_RELEASE} charts/lifeline-edge (before any routing exists)")
        t_install = time.time()
        helm("install", EDGE_RELEASE, str(ROOT / "charts/lifeline-edge"), "-n", NAMESPACE,
             "--set", "kamailio.image.repository=localhost/lifeline-test/kamailio",
             "--set-string", f"kamailio.image.tag={VERSION}", "--set", "kamailio.image.pullPolicy=Never",
             "--set", "sipSync.image.pullPolicy=Never", "--set", "replicas=1",
             "--set", "routing.configMap=sip-routing", "--set", "terminationGracePeriodSeconds=2",
             # The callers stand for the contact center's PBX: trusted to choose the set.
             "--set", f"sip.trustHintsFrom={{{HOST_IP}/32}}",
             "--set", "kamailio.extraDefines={LIFELINE_ROUTE_LOG}")
        edge_pod = lambda: next(iter(get_json("pods", NAMESPACE, "-l", "app.kubernetes.io/instance=edge")), None)
        wait_for("the edge pod has an IP", 60, lambda: (edge_pod() or {}).get("status", {}).get("podIP"))
        time.sleep(max(0.0, 8 - (time.time() - t_install)))
        p = edge_pod()
        kam_started = any(c["name"] == "kamailio" and "running" in (c.get("state") or {})
                          for c in (p.get("status") or {}).get("containerStatuses", []))
        self.edge["ready_without_routing"] = ready(p)
        self.edge["kamailio_started_without_routing"] = kam_started
        log(f"    8 s after install, no routing ConfigMap: pod Ready {ready(p)}, Kamailio running {kam_started}")

        log("==> kubectl apply examples/carrier-outage/ (pod IPs, the sipp bot image)")
        text = "\n---\n".join((ROOT / "examples/carrier-outage" / f).read_text()
                              for f in ("trunks.yaml", "botpools.yaml", "policy.yaml"))
        for name, loop_ip in PEERS.items():
            text = text.replace(loop_ip, self.ips[name])
        text = text.replace("  image: registry.example.net/contact-center/phone-bot:1.0",
                            f"  image: {SIPP_IMAGE}\n  imagePullPolicy: Never")
        # Scaled-down bots drain 5 s instead of 30 s: the replay's phases are short.
        text = text.replace("drainSeconds: 30", "drainSeconds: 5")
        (WORK / "carrier-outage.yaml").write_text(text)
        self.watch = RoutingWatch()
        kubectl("apply", "--server-side", "--field-manager=lifeline-demo", "-n", NAMESPACE, "-f",
                str(WORK / "carrier-outage.yaml"))

        log("==> waiting for healthy trunks, ready bots, the routing, and the edge Ready")
        def converged():
            healthy = healthy_trunks(get_json("trunks.lifeline.dev"))
            active = regions_active(get_json("fallbackpolicies.lifeline.dev"))
            bots = get_json("botpools.lifeline.dev")
            bots_ready = len(bots) == 2 and all((b.get("status") or {}).get("readyReplicas", 0) >= 1 for b in bots)
            pod = edge_pod()
            self.live_line()
            return healthy == len(CARRIERS) and active and bots_ready and pod and ready(pod) and pod
        pod = wait_for("trunks healthy, regions Active, bots ready, edge Ready", 180, converged, every=1.0)
        self.edge_ip = pod["status"]["podIP"]
        self.check_edge_ready(pod)

    def check_edge_ready(self, pod: dict) -> None:
        """The edge became Ready only after sip-sync confirmed the routing in Kamailio."""
        cond = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        ready_at = rfc3339(cond["lastTransitionTime"])
        cm = json.loads(kubectl("get", "configmap", "sip-routing", "-n", NAMESPACE, "-o", "json"))
        created = rfc3339(cm["metadata"]["creationTimestamp"])
        confirmed = self.confirmations()
        first = min((ts for ts, _h in confirmed), default=None)
        applied = metric(http_get(f"http://{self.edge_ip}:{SYNC_METRICS_PORT}/metrics"), "lifeline_sync_applied_total")
        # The API's times (creation, Ready transition) have whole seconds; sip-sync's log
        # has microseconds. Ready must fall in the second of the confirmation or later.
        self.edge.update({
            "ip": self.edge_ip,
            "routing_created_to_confirmed_s": None if first is None else round(first - created, 3),
            "routing_created_to_ready_s": round(ready_at - created, 3),
            "ready_after_confirmation": first is not None and ready_at >= int(first),
            "sync_applied_total": applied,
        })
        log(f"    edge {self.edge_ip}: routing created -> sip-sync confirmed it in Kamailio "
            f"{self.edge['routing_created_to_confirmed_s']} s -> pod Ready {ready_at - created:.0f} s "
            f"(API times in whole seconds); lifeline_sync_applied_total {applied}")

    def confirmations(self) -> list[tuple[float, str]]:
        """(time, hash) of every routing sip-sync confirmed in Kamailio, from its log."""
        out = []
        text = kubectl("logs", "-n", NAMESPACE, f"deploy/{EDGE_RELEASE}-lifeline-edge", "-c", "sip-sync",
                       "--tail=-1", check=False)
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("message") == "routing applied and confirmed in Kamailio" and rec.get("hash"):
                out.append((rfc3339(rec["timestamp"]), rec["hash"]))
        return out

    def route_log(self, since: float) -> list[tuple[float, int, str, bool]]:
        """(time, set, destination, is_retry) of every INVITE Kamailio relayed after `since`."""
        text = kubectl("logs", "-n", NAMESPACE, f"deploy/{EDGE_RELEASE}-lifeline-edge", "-c", "kamailio",
                       "--tail=-1", check=False)
        (WORK / "logs" / "kamailio.log").write_text(text)
        return parse_route_log(text, since)

    # -------------------------------------------------------------- phases
    def drive(self, phase: str, seconds: float, port_base: int) -> None:
        self.phase = phase
        self.phase_runs[phase] = [
            self.callers.start(f"calls-{phase}-outbound", "outbound", self.edge_ip, 10, seconds, port_base),
            self.callers.start(f"calls-{phase}-inbound", "inbound", self.edge_ip, 5, seconds, port_base + 100),
        ]

    def live_line(self) -> None:
        pols = get_json("fallbackpolicies.lifeline.dev")
        bps = get_json("botpools.lifeline.dev")
        regions = tiers = ""
        if pols:
            regions, tiers = policy_columns(pols[0].get("status") or {})
        bots = bots_column(bps)
        ok, failed = calls_so_far(self.phase_runs)
        log(f"[{time.time() - self.t0:6.1f}s] {self.phase:<9} | {regions} | {tiers} | bots {bots} | calls ok {ok} failed {failed}")

    def watch_for(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self.live_line()
            time.sleep(min(2.0, max(0.0, end - time.time())))

    def run(self) -> dict:
        steady, outage, recovery = (10, 30, 40) if self.quick else (20, 40, 45)
        self.setup()
        dead_uris = [f"sip:{self.ips[d]}:5060" for d in DEAD]
        veths = {d: veth_of(self.ips[d]) for d in DEAD}

        log("\n==> phase 1: normal operation")
        self.drive("normal", steady, 6001)
        self.watch_for(steady)

        log(f"\n==> phase 2: Cologne's fixed-line carrier dies ({', '.join(self.ips[d] for d in DEAD)}: "
            f"veths {', '.join(veths.values())} down)")
        t_kill = time.time()
        for d in DEAD:
            set_link(veths[d], False)
            self.downed.append(veths[d])
        self.drive("outage", outage, 6011)
        self.watch_for(outage)

        log("\n==> phase 3: the carrier is back")
        t_back = time.time()
        for d in DEAD:
            set_link(veths[d], True)
            self.downed.remove(veths[d])
        self.drive("recovery", recovery, 6021)
        self.watch_for(recovery)

        per_phase = calls_per_phase(self.phase_runs, self.callers.wait)
        routed = self.route_log(t_kill)

        # When Kamailio ran a routing without (after the outage) and with (after the
        # return) the dead line: sip-sync's confirmations, matched to the content by hash.
        confirmed = self.confirmations()
        def first_confirmed(after: float, until: float, test) -> float | None:
            for ts, h in confirmed:
                content = self.watch.content(h) if self.watch else None
                if after <= ts < until and content is not None and test(routing_uris(content)):
                    return ts
            return None
        t_switched = first_confirmed(t_kill, t_back, lambda uris: not any(is_dead(u, dead_uris) for u in uris))
        t_returned = first_confirmed(t_back, float("inf"),
                                     lambda uris: all(any(is_dest(u, d) for u in uris) for d in dead_uris))
        calls = outage_calls(routed, dead_uris, t_kill, t_back, t_switched)

        pol = (get_json("fallbackpolicies.lifeline.dev") or [{}])[0]
        history = (pol.get("status") or {}).get("history", [])
        bots = {
            b["metadata"]["name"]: {
                **bot_status(b),
                "pods": len([p for p in get_json("pods", NAMESPACE, "-l", f"lifeline.dev/botpool={b['metadata']['name']}")
                             if ready(p)]),
            }
            for b in get_json("botpools.lifeline.dev")
        }
        recover_after = ((pol.get("spec") or {}).get("failover") or {}).get("recoverAfterSeconds", 0)
        return {
            "phases": per_phase,
            "outage_to_routing_switch_s": None if t_switched is None else round(t_switched - t_kill, 3),
            "outage_to_first_fallback_call_s": None if calls.first_fallback is None else round(calls.first_fallback, 3),
            "last_new_call_to_dead_carrier_s": round(calls.last_new_to_dead, 3),
            "calls_to_dead_carrier_after_outage": len(calls.to_dead_first),
            "detection_bound_s": DETECTION_BOUND_S,
            "carrier_back_to_routing_s": None if t_returned is None else round(t_returned - t_back, 3),
            "recover_after_seconds": recover_after,
            # Region transitions from the outage on (setup's Recovering -> Active not counted).
            "failovers": sum(1 for h in history if h.get("from") == "Active" and rfc3339(h["time"]) >= int(t_kill)),
            "failbacks": sum(1 for h in history if h.get("to") == "Active" and h.get("from") != "Active"
                             and rfc3339(h["time"]) >= int(t_kill)),
            "history": history,
            "bot_pools": bots,
            "edge": self.edge,
            "pods": self.ips,
        }

    def teardown(self, keep: bool) -> None:
        self.callers.stop_all()
        if self.watch:
            self.watch.stop()
        for ifname in self.downed:
            subprocess.run(["ip", "link", "set", "dev", ifname, "up"], capture_output=True)
        if keep:
            return
        helm("uninstall", EDGE_RELEASE, "-n", NAMESPACE, "--wait", check=False)
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=90s", check=False)
        helm("uninstall", OPERATOR_RELEASE, "-n", OPERATOR_NS, "--wait", check=False)
        kubectl("delete", "namespace", OPERATOR_NS, "--ignore-not-found", "--wait=false", check=False)


def print_summary(s: dict) -> list[str]:
    log("\n================ summary (pods on the real node) ================")
    print_phases(s)
    e = s["edge"]
    log(f"edge pod before any routing: Ready {e['ready_without_routing']}, "
        f"Kamailio started {e['kamailio_started_without_routing']}")
    log(f"routing ConfigMap created -> sip-sync confirmed:  {e['routing_created_to_confirmed_s']} s, "
        f"-> edge pod Ready: {e['routing_created_to_ready_s']:.0f} s (whole seconds); "
        f"Ready after the confirmation: {e['ready_after_confirmation']}")
    log(f"outage -> sip-sync confirmed routing without it:  {s['outage_to_routing_switch_s']} s")
    print_outage_times(s)
    for name, b in s["bot_pools"].items():
        log(f"bot pool {name}: {b['ready']} ready / {b['desired']} desired for {b['demand']} calls "
            f"({b['pods']} bot pods Ready)")

    problems = outage_problems(s)
    ret = s["carrier_back_to_routing_s"]
    if ret is None:
        problems.append("the carrier was never routed again after it came back")
    elif ret < s["recover_after_seconds"]:
        problems.append(f"the carrier was routed again after {ret} s, before recoverAfterSeconds")
    if e["ready_without_routing"] or e["kamailio_started_without_routing"]:
        problems.append("the edge pod started or became Ready without a routing")
    if not e["ready_after_confirmation"]:
        problems.append("the edge pod became Ready before sip-sync confirmed the routing")
    return report(problems)


def main() -> int:
    ap = argument_parser(__doc__)
    ap.add_argument("--keep", action="store_true", help="leave the releases and namespaces for inspection")
    args = ap.parse_args()
    demo = Demo(args.quick)
    demo.preflight()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return conclude(demo.run(), print_summary, args.json)
    finally:
        demo.teardown(args.keep)
        log(f"removed everything the replay created (logs in {WORK.relative_to(ROOT)}/logs/)")


if __name__ == "__main__":
    sys.exit(main())
