"""What the two carrier-outage replays share: scripts/demo.py (host processes on
loopback) and scripts/demo_cluster.py (pods on the real node).

Caller statistics, Kamailio's route log, the outage arithmetic over it, the live line's
columns and the summary's common lines and mission criteria. Everything here is plain
functions over what the replays measured; starting and stopping things stays with them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The line Kamailio logs for every INVITE it relays (examples/kamailio, LIFELINE_ROUTE_LOG).
ROUTE_LINE = re.compile(r"lifeline-route ts=([0-9.]+) set=(\d+) dst=(\S+) retry=(\d)")

# (time, set, destination, is_retry) of one relayed INVITE.
Routed = tuple[float, int, str, bool]


def log(msg: str) -> None:
    print(msg, flush=True)


def is_dest(uri: str, base: str) -> bool:
    """True when `uri` is `base` with or without URI parameters."""
    return uri == base or uri.startswith(base + ";")


def is_dead(uri: str, dead: list[str]) -> bool:
    return any(is_dest(uri, d) for d in dead)


def parse_route_log(text: str, since: float) -> list[Routed]:
    """Every INVITE in Kamailio's log `text` relayed at `since` or later."""
    return [(float(m.group(1)), int(m.group(2)), m.group(3), m.group(4) == "1")
            for m in ROUTE_LINE.finditer(text) if float(m.group(1)) >= since]


# ------------------------------------------------------------------ callers
@dataclass
class CallRun:
    name: str
    stat_file: Path
    proc: subprocess.Popen

    def counts(self) -> tuple[int, int]:
        """(successful, failed) calls so far, from sipp's statistics file."""
        try:
            lines = [l for l in self.stat_file.read_text().splitlines() if l.strip()]
        except OSError:
            return (0, 0)
        if len(lines) < 2:
            return (0, 0)
        head, last = lines[0].split(";"), lines[-1].split(";")
        try:
            return (int(last[head.index("SuccessfulCall(C)")]), int(last[head.index("FailedCall(C)")]))
        except (ValueError, IndexError):
            return (0, 0)


def calls_so_far(phase_runs: dict[str, list[CallRun]]) -> tuple[int, int]:
    """(successful, failed) calls of every phase's callers so far."""
    ok = failed = 0
    for runs in phase_runs.values():
        for r in runs:
            s, f = r.counts()
            ok, failed = ok + s, failed + f
    return ok, failed


def calls_per_phase(phase_runs: dict[str, list[CallRun]],
                    wait: Callable[[CallRun, float], tuple[int, int]]) -> dict[str, dict]:
    """Per phase: calls placed, answered and failed, once each caller has finished
    (`wait` gives it 30 s)."""
    per_phase = {}
    for phase, runs in phase_runs.items():
        ok = failed = 0
        for r in runs:
            s, f = wait(r, 30)
            ok, failed = ok + s, failed + f
        per_phase[phase] = {"placed": ok + failed, "answered": ok, "failed": failed}
    return per_phase


# ------------------------------------------------------------------ the outage
@dataclass
class OutageCalls:
    """What the route log says about the calls around the outage."""

    # When each new (not retried) call went to the dead carrier before it came back.
    to_dead_first: list[float]
    # Seconds from the outage to the last of those (0 when there was none).
    last_new_to_dead: float
    # Seconds from the outage to the first call that left the dead line, or None.
    first_fallback: float | None


def outage_calls(routed: list[Routed], dead_uris: list[str], t_kill: float, t_back: float,
                 t_switched: float | None) -> OutageCalls:
    to_dead_first = [ts for ts, _s, dst, retry in routed if is_dead(dst, dead_uris) and not retry and ts < t_back]
    last_new_to_dead = (max(to_dead_first) - t_kill) if to_dead_first else 0.0
    # A call leaves the dead line either per call (Kamailio's failure route retries it
    # on the next destination) or for good (lifeline's routing no longer lists it).
    retries = [ts for ts, _s, dst, retry in routed if retry and not is_dead(dst, dead_uris)]
    firsts = retries[:1] + ([t_switched] if t_switched else [])
    first_fallback = (min(firsts) - t_kill) if firsts else None
    return OutageCalls(to_dead_first, last_new_to_dead, first_fallback)


# ------------------------------------------------------------------ cluster state
def healthy_trunks(trunks: list[dict]) -> int:
    return sum(1 for t in trunks if (t.get("status") or {}).get("healthyEndpoints", 0) > 0)


def regions_active(pols: list[dict]) -> bool:
    """The first FallbackPolicy has regions and every one is Active."""
    regions = ((pols[0].get("status") or {}).get("regions", [])) if pols else []
    return bool(regions) and all(r.get("state") == "Active" for r in regions)


def bot_status(b: dict) -> dict:
    st = b.get("status") or {}
    return {"ready": st.get("readyReplicas", 0), "desired": st.get("desiredReplicas", 0), "demand": st.get("demand", 0)}


def policy_columns(policy_status: dict) -> tuple[str, str]:
    """The live line's regions (name=state/weight) and routes (name:tier)."""
    regions = " ".join(f"{r['name']}={r['state']}/{r.get('effectiveWeight', 0)}"
                       for r in policy_status.get("regions", []))
    tiers = " ".join(f"{r['name']}:{r.get('activeTier', '-')}" for r in policy_status.get("routes", []))
    return regions, tiers


def bots_column(bps: list[dict]) -> str:
    """The live line's bot pools (name=ready/desired)."""
    return " ".join(f"{b['metadata']['name']}={(b.get('status') or {}).get('readyReplicas', 0)}/"
                    f"{(b.get('status') or {}).get('desiredReplicas', 0)}" for b in bps)


# ------------------------------------------------------------------ summary
def print_phases(s: dict) -> None:
    log(f"{'phase':<10} {'placed':>7} {'answered':>9} {'failed':>7}")
    for phase, c in s["phases"].items():
        log(f"{phase:<10} {c['placed']:>7} {c['answered']:>9} {c['failed']:>7}")


def print_outage_times(s: dict) -> None:
    """The lines after the routing switch: fallback, dead carrier, return, transitions."""
    log(f"outage -> first outbound call on a fallback line:  {s['outage_to_first_fallback_call_s']} s")
    log(f"last new call sent to the dead carrier:           {s['last_new_call_to_dead_carrier_s']} s after the outage"
        f" (bound {s['detection_bound_s']} s)")
    log(f"carrier back -> routed again:                     {s['carrier_back_to_routing_s']} s"
        f" (recoverAfterSeconds {s['recover_after_seconds']})")
    log(f"failovers {s['failovers']}, failbacks {s['failbacks']}")


def outage_problems(s: dict) -> list[str]:
    """The mission criteria of the outage both replays check: calls kept, the dead
    carrier dropped in time."""
    problems = []
    out = s["phases"].get("outage", {})
    if out.get("placed", 0) == 0:
        problems.append("no calls were placed during the outage")
    elif out["failed"] > 0.01 * out["placed"]:
        problems.append(f"{out['failed']} of {out['placed']} calls failed during the outage (> 1 %)")
    if s["last_new_call_to_dead_carrier_s"] > s["detection_bound_s"]:
        problems.append("new calls reached the dead carrier after the detection window")
    if s["outage_to_routing_switch_s"] is None:
        problems.append("Kamailio's routing never dropped the dead carrier")
    return problems


def report(problems: list[str]) -> list[str]:
    for p in problems:
        log(f"MISSED: {p}")
    if not problems:
        log("all mission criteria met")
    return problems


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """--quick and --json; each replay adds its own flag for keeping what it made."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter phases (end-to-end test)")
    ap.add_argument("--json", type=Path, help="write the summary as JSON here")
    return ap


def conclude(summary: dict, print_summary: Callable[[dict], list[str]], json_path: Path | None) -> int:
    """Print the summary, write it (with the missed criteria) as JSON when asked; the
    exit code: 1 when a criterion was missed."""
    problems = print_summary(summary)
    summary["problems"] = problems
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
    return 1 if problems else 0
