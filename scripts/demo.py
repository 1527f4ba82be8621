#!/usr/bin/env python3
"""The carrier-outage replay: lifeline on real components, on loopback addresses.

Starts (and always stops) the lifeline operator, the sip-sync sidecar, Kamailio and
sipp peers for two regions — fixed-line and mobile carriers, human agents, phone bots —
on 127.0.50.x, applies examples/carrier-outage/, drives calls through Kamailio with
sipp, kills Cologne's fixed-line carrier, brings it back, and prints a live view and
a summary with the bot replicas and the calls each bot pool carried per phase, and
draws target/demo/timeline.png (calls per second per destination, region states, bot
replicas over time). The control plane must be up (`make demo` starts it first).

  scripts/demo.py                  the full replay (about 2 minutes)
  scripts/demo.py --quick --json F shorter phases, summary as JSON in F, exit 1 when a
                                   mission criterion is missed (the end-to-end test)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
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
KUBECONFIG = ROOT / "target/testenv/kubeconfig"
WORK = ROOT / "target/demo"
LIFELINE = ROOT / "target/debug/lifeline"
NAMESPACE = "lifeline-demo"

EDGE_IP, EDGE_PORT, RPC_PORT = "127.0.50.1", 5060, 5071
CALLER_IP = "127.0.50.2"
METRICS_ADDR = "127.0.50.1:9464"
CARRIERS = {
    "cologne-fixed": "127.0.50.11",
    "cologne-mobile": "127.0.50.12",
    "frankfurt-fixed": "127.0.50.21",
    "frankfurt-mobile": "127.0.50.22",
}
AGENTS = {"agents-cologne": "127.0.50.31", "agents-frankfurt": "127.0.50.32"}
# The fixed-line carrier of Cologne, and the agents' PBX reached over it.
DEAD = ["cologne-fixed", "agents-cologne"]
PEERS = {**CARRIERS, **AGENTS}
# From examples/carrier-outage: probe period 1 s × failureThreshold 2 + timeout 0.5 s.
DETECTION_BOUND_S = 1 * 2 + 0.5 + 0.5
# The SIP edge the demo's sip-sync reports live calls to (examples/carrier-outage/edge.yaml).
EDGE_NAME = "contact-center-edge"
# The region that takes Cologne's calls, and its bots.
RECEIVING_POOL = "frankfurt-bots"
# Inbound callers: new calls per second and how long each call lasts. 10/s × 3 s =
# 30 calls in progress: what the policy plans for (expectedConcurrentCalls), more
# than Frankfurt's 16 agents take once Cologne is gone.
INBOUND_RATE, INBOUND_HOLD_MS = 10, 3000
TIMELINE_PNG = WORK / "timeline.png"


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    env = dict(os.environ, KUBECONFIG=str(KUBECONFIG))
    res = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def get_json(kind: str) -> list[dict]:
    out = kubectl("get", kind, "-n", NAMESPACE, "-o", "json", check=False)
    try:
        return json.loads(out).get("items", [])
    except json.JSONDecodeError:
        return []


def rpc(method: str, params: list | None = None, timeout: float = 1.0) -> dict | None:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or [], "id": 1}).encode()
    req = urllib.request.Request(
        f"http://{EDGE_IP}:{RPC_PORT}/RPC", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def dispatcher_destinations() -> dict[int, list[str]] | None:
    """Set id -> destination URIs that Kamailio has loaded and considers usable."""
    answer = rpc("dispatcher.list")
    if not answer or "result" not in answer:
        return None
    sets: dict[int, list[str]] = {}
    for rec in answer["result"].get("RECORDS", []) or []:
        s = rec.get("SET", {})
        uris = []
        for t in s.get("TARGETS", []) or []:
            dest = t.get("DEST", {})
            flags = dest.get("FLAGS", "")
            # AP = active+probing is still usable; IX/DX = inactive/disabled.
            if "I" not in flags and "D" not in flags:
                uris.append(dest.get("URI", ""))
        sets[int(s.get("ID", 0))] = uris
    return sets


@dataclass
class Procs:
    """Every process the demo starts, stopped on exit whatever happens."""

    running: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        logf = open(WORK / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **(env or {})),
            start_new_session=True,
        )
        self.running[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.running.pop(name, None)
        if proc and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.running):
            self.kill(name, signal.SIGTERM)


def sipp_uas(procs: Procs, name: str, ip: str, port: int = 5060) -> None:
    # -aa answers the OPTIONS probes with 200 while the scenario answers INVITEs.
    procs.start(name, ["sipp", "-sn", "uas", "-aa", "-i", ip, "-p", str(port), "-nostdin"])


def start_calls(procs: Procs, name: str, service: str, rate: int, seconds: float, port: int,
                hold_ms: int = 1000) -> CallRun:
    stat = WORK / f"{name}.csv"
    stat.unlink(missing_ok=True)
    calls = max(1, int(rate * seconds))
    proc = procs.start(
        name,
        [
            "sipp", "-sf", str(ROOT / "scripts/sipp/caller.xml"), "-s", service, "-i", CALLER_IP, "-p", str(port),
            "-r", str(rate), "-m", str(calls), "-d", str(hold_ms),
            "-l", str(max(rate * 4, rate * (hold_ms // 1000 + 2) * 2)),
            "-recv_timeout", "15000", "-nostdin",
            "-trace_stat", "-stf", str(stat), "-fd", "1",
            "-trace_err", "-error_file", str(WORK / "logs" / f"{name}.errors"),
            # sipp binds a media port too; keep every caller's ports apart.
            "-mp", str(port + 10000),
            f"{EDGE_IP}:{EDGE_PORT}",
        ],
    )
    return CallRun(name, stat, proc)


def wait_calls(run: CallRun, timeout: float) -> tuple[int, int]:
    try:
        run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.proc.pid, signal.SIGTERM)
        run.proc.wait()
    time.sleep(0.2)
    return run.counts()


def route_log(since: float) -> list[tuple[float, int, str, bool]]:
    """(time, set, destination, is_retry) of every INVITE Kamailio relayed after `since`."""
    try:
        text = (WORK / "logs" / "kamailio.log").read_text(errors="replace")
    except OSError:
        return []
    return parse_route_log(text, since)


class Demo:
    # Inbound load (see INBOUND_RATE); subclasses replaying other stories may lower it.
    inbound_rate = INBOUND_RATE
    inbound_hold_ms = INBOUND_HOLD_MS

    def __init__(self, quick: bool):
        self.quick = quick
        self.procs = Procs()
        self.t0 = time.time()
        self.phase = "setup"
        self.runs: dict[str, list[CallRun]] = {}
        self.bots: dict[str, str] = {}
        self.bot_gone: dict[str, float] = {}
        # Every bot address ever seen, with its pool (a bot may be gone by the summary).
        self.bot_pool: dict[str, str] = {}
        self.phase_start: dict[str, float] = {}
        # One sample per live line: region states, bot replicas, measured calls.
        self.timeline_samples: list[dict] = []

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        shutil.rmtree(WORK, ignore_errors=True)
        (WORK / "logs").mkdir(parents=True)
        (WORK / "kamailio-run").mkdir()
        log("==> building lifeline")
        subprocess.run(["cargo", "build", "-q", "--bin", "lifeline"], cwd=ROOT, check=True)
        log(f"==> fresh namespace {NAMESPACE}, CRDs")
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=60s")
        crds = subprocess.run([str(LIFELINE), "crds"], capture_output=True, text=True, check=True).stdout
        kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=lifeline-demo", "-f", "-", input=crds)
        kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/trunks.lifeline.dev",
                "crd/botpools.lifeline.dev", "crd/fallbackpolicies.lifeline.dev", "crd/sipedges.lifeline.dev")
        kubectl("create", "namespace", NAMESPACE)

        log("==> carriers and human agents (sipp) on 127.0.50.x")
        for name, ip in {**CARRIERS, **AGENTS}.items():
            sipp_uas(self.procs, name, ip)

        log("==> Kamailio (SIP edge) with JSON-RPC, and lifeline sip-sync next to it")
        ds_file = WORK / "dispatcher.list"
        ds_file.write_text("# written by lifeline sip-sync\n")
        self.procs.start("kamailio", [
            "kamailio", "-DD", "-E", "-f", str(ROOT / "examples/kamailio/kamailio.cfg"),
            "-Y", str(WORK / "kamailio-run"), "-w", str(WORK),
            "-A", f"SIP_IP={EDGE_IP}", "-A", f"SIP_PORT={EDGE_PORT}",
            "-A", f"RPC_IP={EDGE_IP}", "-A", f"RPC_PORT={RPC_PORT}",
            "-A", f'DS_LIST_FILE="{ds_file}"', "-A", "LIFELINE_ROUTE_LOG",
            # The callers stand for the contact center's PBX: they place inbound and
            # outbound calls, so they are trusted to choose the set (which also
            # admits them as a peer). Anyone else not in the routing list gets 403.
            "-A", f'TRUST_HINTS_FROM="{CALLER_IP}/32"',
        ])
        env = {"KUBECONFIG": str(KUBECONFIG), "RUST_LOG": "info"}
        self.procs.start("sip-sync", [
            str(LIFELINE), "sip-sync", "--namespace", NAMESPACE, "--configmap", "sip-routing",
            "--key", "dispatcher.list", "--file", str(ds_file),
            "--rpc-url", f"http://{EDGE_IP}:{RPC_PORT}/RPC",
            # Report live calls to the SipEdge: the operator sizes the bots from them.
            "--edge", EDGE_NAME, "--edge-member", "demo-edge-0",
        ], env=env)

        log("==> lifeline operator")
        self.procs.start("operator", [
            str(LIFELINE), "operator", "--namespace", NAMESPACE, "--metrics-addr", METRICS_ADDR,
            "--no-leader-election",
            # The demo's carriers live on loopback, which the prober refuses by default.
            "--probe-allow", "127.0.50.0/24",
        ], env=env)

        log("==> kubectl apply -f examples/carrier-outage/")
        kubectl("apply", "--server-side", "--field-manager=lifeline-demo", "-n", NAMESPACE,
                "-f", str(ROOT / "examples/carrier-outage/"))

        log("==> waiting for healthy trunks, ready bots and routing in Kamailio")
        deadline = time.time() + 90
        while time.time() < deadline:
            self.sync_bots()
            sets = dispatcher_destinations() or {}
            healthy = healthy_trunks(get_json("trunks.lifeline.dev"))
            active = regions_active(get_json("fallbackpolicies.lifeline.dev"))
            if healthy == len(CARRIERS) and active and len(sets.get(1, [])) > 0 and len(sets.get(2, [])) > 0:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("setup did not converge in 90 s; see target/demo/logs/")

    def sync_bots(self) -> None:
        """Start a sipp bot for every bot pod IP (the pods run on the simulated node)."""
        pods = get_json("pods")
        want = {}
        for p in pods:
            labels = p["metadata"].get("labels", {})
            ip = (p.get("status") or {}).get("podIP")
            if "lifeline.dev/botpool" in labels and ip and not p["metadata"].get("deletionTimestamp"):
                want[f"bot-{ip}"] = ip
                self.bot_pool[ip] = labels["lifeline.dev/botpool"]
        for name, ip in want.items():
            if name not in self.bots:
                sipp_uas(self.procs, name, ip)
                self.bots[name] = ip
        # A bot whose pod is gone still finishes its calls (a real pod drains for
        # drainSeconds): stop its sipp only a little longer than a call lasts.
        now = time.time()
        for name in list(self.bots):
            if name in want:
                self.bot_gone.pop(name, None)
            elif now - self.bot_gone.setdefault(name, now) > INBOUND_HOLD_MS / 1000 + 3:
                self.procs.kill(name, signal.SIGTERM)
                del self.bots[name]
                del self.bot_gone[name]

    # ---------------------------------------------------------------- phases
    def drive(self, phase: str, seconds: float, port_base: int) -> None:
        self.phase = phase
        self.phase_start[phase] = time.time()
        runs = [
            start_calls(self.procs, f"calls-{phase}-outbound", "outbound", 10, seconds, port_base),
            start_calls(self.procs, f"calls-{phase}-inbound", "inbound", self.inbound_rate, seconds,
                        port_base + 100, hold_ms=self.inbound_hold_ms),
        ]
        self.runs[phase] = runs

    def watch(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self.sync_bots()
            self.live_line()
            time.sleep(min(2.0, max(0.0, end - time.time())))

    def live_line(self) -> None:
        pols = get_json("fallbackpolicies.lifeline.dev")
        bps = get_json("botpools.lifeline.dev")
        regions, tiers, measured = "", "", ""
        sample: dict = {"t": time.time(), "phase": self.phase, "regions": {}, "bots": {}, "measured": None}
        if pols:
            st = pols[0].get("status") or {}
            sample["regions"] = {r["name"]: r["state"] for r in st.get("regions", [])}
            if st.get("measured"):
                sample["measured"] = st["measured"].get("concurrentCalls", 0)
                measured = f" | measured {sample['measured']} calls"
            regions, tiers = policy_columns(st)
        bots = bots_column(bps)
        for b in bps:
            st = b.get("status") or {}
            sample["bots"][b["metadata"]["name"]] = {
                "ready": st.get("readyReplicas", 0), "desired": st.get("desiredReplicas", 0),
                "demand": st.get("demand", 0), "min": ((b.get("spec") or {}).get("replicas") or {}).get("min", 0),
            }
        self.timeline_samples.append(sample)
        ok, failed = calls_so_far(self.runs)
        log(f"[{time.time() - self.t0:6.1f}s] {self.phase:<9} | {regions} | {tiers} | bots {bots}{measured} | calls ok {ok} failed {failed}")

    def run(self) -> dict:
        steady, outage, recovery = (10, 30, 40) if self.quick else (20, 40, 45)
        self.setup()
        log("\n==> phase 1: normal operation")
        self.drive("normal", steady, 6001)
        self.watch(steady)

        log(f"\n==> phase 2: Cologne's fixed-line carrier dies ({', '.join(PEERS[d] for d in DEAD)} go silent)")
        # Destinations carry URI parameters (";transport=udp"): match on host and port.
        dead_uris = [f"sip:{PEERS[d]}:5060" for d in DEAD]
        t_kill = time.time()
        for d in DEAD:
            self.procs.kill(d)
        self.drive("outage", outage, 6011)
        t_switched = None
        end = time.time() + outage
        while time.time() < end:
            sets = dispatcher_destinations()
            if t_switched is None and sets is not None and all(not is_dead(u, dead_uris) for v in sets.values() for u in v):
                t_switched = time.time()
            self.sync_bots()
            self.live_line()
            # New bots must answer as soon as their pods are ready: look often.
            time.sleep(0.2 if t_switched is None else 0.5)

        log("\n==> phase 3: the carrier is back")
        t_back = time.time()
        for d in DEAD:
            sipp_uas(self.procs, d, PEERS[d])
        self.drive("recovery", recovery, 6021)
        t_returned = None
        end = time.time() + recovery
        while time.time() < end:
            sets = dispatcher_destinations()
            if t_returned is None and sets is not None and all(any(is_dest(u, d) for v in sets.values() for u in v) for d in dead_uris):
                t_returned = time.time()
            self.sync_bots()
            self.live_line()
            time.sleep(0.5)

        t_end_phases = time.time()
        # After failback the receiving pool returns to its floor once its demand has
        # stayed low for the pool's scaleDownStabilizationSeconds: wait for it (bounded).
        self.phase = "settle"
        settle_end = time.time() + 40
        while time.time() < settle_end:
            self.sync_bots()
            self.live_line()
            last = self.timeline_samples[-1]["bots"].get(RECEIVING_POOL) if self.timeline_samples else None
            if last and last["desired"] <= last["min"] and last["ready"] <= last["min"]:
                break
            time.sleep(1.0)

        per_phase = calls_per_phase(self.runs, wait_calls)
        calls = outage_calls(route_log(t_kill), dead_uris, t_kill, t_back, t_switched)

        pol = (get_json("fallbackpolicies.lifeline.dev") or [{}])[0]
        history = (pol.get("status") or {}).get("history", [])
        failovers = sum(1 for h in history if h.get("from") == "Active")
        failbacks = sum(1 for h in history if h.get("to") == "Active" and h.get("from") != "Active")
        bots = {b["metadata"]["name"]: bot_status(b) for b in get_json("botpools.lifeline.dev")}
        recover_after = ((pol.get("spec") or {}).get("failover") or {}).get("recoverAfterSeconds", 0)
        bot_phases = self.bot_phases(route_log(self.phase_start.get("normal", self.t0)), t_end_phases)
        final = self.timeline_samples[-1]["bots"] if self.timeline_samples else {}
        timeline = self.write_timeline(t_kill, t_back)
        summary = {
            "phases": per_phase,
            "outage_to_routing_switch_s": None if t_switched is None else round(t_switched - t_kill, 3),
            "outage_to_first_fallback_call_s": None if calls.first_fallback is None else round(calls.first_fallback, 3),
            "last_new_call_to_dead_carrier_s": round(calls.last_new_to_dead, 3),
            "detection_bound_s": DETECTION_BOUND_S,
            "carrier_back_to_routing_s": None if t_returned is None else round(t_returned - t_back, 3),
            "recover_after_seconds": recover_after,
            "failovers": failovers,
            "failbacks": failbacks,
            "history": history,
            "bot_pools": bots,
            "bot_phases": bot_phases,
            "bots_after": final,
            "receiving_pool": RECEIVING_POOL,
            "timeline_png": timeline,
        }
        return summary

    def bot_phases(self, routed: list[tuple[float, int, str, bool]], t_end: float) -> dict:
        """Per phase and bot pool: most replicas ready / desired, and calls carried (INVITEs
        Kamailio relayed to the pool's bots)."""
        phases = list(self.phase_start.items())
        out: dict[str, dict] = {}
        for i, (phase, start) in enumerate(phases):
            end = phases[i + 1][1] if i + 1 < len(phases) else t_end
            pools: dict[str, dict] = {}
            for smp in self.timeline_samples:
                if start <= smp["t"] < end:
                    for name, b in smp["bots"].items():
                        p = pools.setdefault(name, {"max_ready": 0, "max_desired": 0, "calls": 0})
                        p["max_ready"] = max(p["max_ready"], b["ready"])
                        p["max_desired"] = max(p["max_desired"], b["desired"])
            for ts, _set, dst, _retry in routed:
                if start <= ts < end:
                    host = dst.removeprefix("sip:").split(";")[0].rsplit(":", 1)[0]
                    pool = self.bot_pool.get(host)
                    if pool:
                        pools.setdefault(pool, {"max_ready": 0, "max_desired": 0, "calls": 0})["calls"] += 1
            out[phase] = pools
        return out

    def write_timeline(self, t_kill: float, t_back: float) -> str | None:
        """Write the samples and the per-second calls per destination as JSON, and draw
        target/demo/timeline.png with Debian's matplotlib (scripts/timeline.py)."""
        routed = route_log(self.phase_start.get("normal", self.t0))
        names = {f"sip:{ip}:5060": name for name, ip in PEERS.items()}
        per_dest: dict[str, dict[int, int]] = {}
        for ts, _set, dst, _retry in routed:
            host = dst.removeprefix("sip:").split(";")[0].rsplit(":", 1)[0]
            base = dst.split(";")[0]
            label = names.get(base) or self.bot_pool.get(host) or base
            sec = int(ts - self.t0)
            per_dest.setdefault(label, {})
            per_dest[label][sec] = per_dest[label].get(sec, 0) + 1
        data = {
            "t0": self.t0,
            "events": {"carrier dies": t_kill - self.t0, "carrier back": t_back - self.t0},
            "phases": {k: v - self.t0 for k, v in self.phase_start.items()},
            "calls_per_second": per_dest,
            "samples": [dict(s, t=s["t"] - self.t0) for s in self.timeline_samples],
        }
        path = WORK / "timeline.json"
        path.write_text(json.dumps(data, indent=1))
        py = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        res = subprocess.run([py, str(ROOT / "scripts/timeline.py"), str(path), str(TIMELINE_PNG)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            log(f"timeline picture not drawn: {res.stderr.strip()[-300:]} (install python3-matplotlib)")
            return None
        return str(TIMELINE_PNG)


def print_summary(s: dict) -> list[str]:
    log("\n================ summary ================")
    print_phases(s)
    log(f"outage -> Kamailio routing without the dead line: {s['outage_to_routing_switch_s']} s")
    print_outage_times(s)
    for name, b in s["bot_pools"].items():
        log(f"bot pool {name}: {b['ready']} ready / {b['desired']} desired for {b['demand']} calls")
    log(f"\n{'phase':<10} {'bot pool':<16} {'replicas ready/desired (max)':>29} {'calls carried':>14}")
    for phase, pools in s["bot_phases"].items():
        for name, p in sorted(pools.items()):
            log(f"{phase:<10} {name:<16} {p['max_ready']:>15}/{p['max_desired']:<13} {p['calls']:>14}")
    for name, b in sorted(s["bots_after"].items()):
        log(f"after failback: {name} {b['ready']} ready / {b['desired']} desired (floor {b['min']})")
    if s.get("timeline_png"):
        log(f"timeline picture: {s['timeline_png']}")

    problems = outage_problems(s)
    ret = s["carrier_back_to_routing_s"]
    if ret is not None and ret < s["recover_after_seconds"]:
        problems.append(f"the carrier was routed again after {ret} s, before recoverAfterSeconds")
    pool = s["receiving_pool"]
    during = (s["bot_phases"].get("outage") or {}).get(pool, {})
    after = s["bots_after"].get(pool, {})
    floor = after.get("min", 1)
    if during.get("max_desired", 0) <= floor:
        problems.append(f"{pool} did not scale above its floor ({floor}) during the outage")
    if during.get("calls", 0) == 0:
        problems.append(f"{pool} carried no calls during the outage")
    if after.get("desired", 0) > floor:
        problems.append(f"{pool} did not return to its floor ({floor}) after failback")
    if not s.get("timeline_png"):
        problems.append("the timeline picture was not written")
    return report(problems)


def main() -> int:
    ap = argument_parser(__doc__)
    ap.add_argument("--keep-namespace", action="store_true", help="leave the demo namespace for inspection")
    args = ap.parse_args()
    if not KUBECONFIG.exists():
        log("control plane not running: run `make testenv-up` (or use `make demo`)")
        return 2
    demo = Demo(args.quick)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return conclude(demo.run(), print_summary, args.json)
    finally:
        demo.procs.stop_all()
        if not args.keep_namespace:
            kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        log("stopped everything the demo started (logs in target/demo/logs/)")


if __name__ == "__main__":
    sys.exit(main())
