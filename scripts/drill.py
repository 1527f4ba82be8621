#!/usr/bin/env python3
"""Failover drills on the carrier-outage setup, on real components on loopback.

Uses the replay's setup (scripts/demo.py: operator, sip-sync, Kamailio, sipp carriers,
agents and bots on 127.0.50.x, examples/carrier-outage/), keeps calls flowing through
Kamailio the whole time, and runs two FailoverDrills draining Cologne:

  1. "rehearsal", scheduled by cron for the next minute, 30 s long: calls move to
     Frankfurt, the drill rolls back on time and reports Passed;
  2. "injected", one-shot, 60 s long: mid-drill Frankfurt's fixed-line carrier dies,
     the drill aborts at once and normal failover sends every call to Cologne, with no
     moment where Kamailio's routing had no destination.

  scripts/drill.py --json F   summary as JSON in F; exit 1 when a criterion is missed
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo  # noqa: E402  (the replay's setup and helpers)
from demo import NAMESPACE, PEERS, dispatcher_destinations, get_json, is_dest, kubectl, log  # noqa: E402

COLOGNE = ["sip:127.0.50.11:5060", "sip:127.0.50.31:5060"]  # fixed line, agents
FRANKFURT_FIXED = "frankfurt-fixed"


def drill_yaml(name: str, duration: int, schedule: str | None) -> str:
    sched = f"  schedule: \"{schedule}\"\n" if schedule else ""
    return (
        "apiVersion: lifeline.dev/v1alpha1\nkind: FailoverDrill\n"
        f"metadata:\n  name: {name}\n  namespace: {NAMESPACE}\n"
        f"spec:\n  policy: contact-center\n  drainRegion: cologne\n  durationSeconds: {duration}\n"
        f"  shiftDeadlineSeconds: 10\n{sched}"
    )


def drill_status(name: str) -> dict:
    for d in get_json("failoverdrills.lifeline.dev"):
        if d["metadata"]["name"] == name:
            return d.get("status") or {}
    return {}


def cologne_routed(sets: dict[int, list[str]]) -> bool:
    return any(is_dest(u, c) for v in sets.values() for u in v for c in COLOGNE)


class Drills(demo.Demo):
    # The drill's criteria were set for a light inbound load (5 calls/s of 1 s); the
    # outage replay's heavier load is for showing the bots take the agents' overflow.
    inbound_rate = 5
    inbound_hold_ms = 1000

    def __init__(self) -> None:
        super().__init__(quick=True)
        self.samples: list[tuple[float, dict[int, list[str]] | None]] = []
        self.empty_sets: list[float] = []

    def sample(self) -> dict[int, list[str]] | None:
        sets = dispatcher_destinations()
        now = time.time()
        self.samples.append((now, sets))
        if sets is not None and (not sets.get(1) or not sets.get(2)):
            self.empty_sets.append(now - self.t0)
        return sets

    def watch_until(self, seconds: float, stop=None) -> float | None:
        """Sample Kamailio every 100 ms for `seconds`; return when `stop(sets)` first held."""
        end = time.time() + seconds
        last_line = 0.0
        while time.time() < end:
            sets = self.sample()
            if stop is not None and sets is not None and stop(sets):
                return time.time()
            if time.time() - last_line > 2:
                self.sync_bots()
                self.live_line()
                last_line = time.time()
            time.sleep(0.1)
        return None

    def run(self) -> dict:
        self.setup()
        out: dict = {}

        # ---- drill 1: scheduled, passes
        now = datetime.now(timezone.utc)
        start = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
        if (start - now).total_seconds() < 15:
            start += timedelta(minutes=1)
        schedule = f"{start.minute} {start.hour} * * *"
        wait = (start - now).total_seconds()
        log(f"\n==> drill 1 'rehearsal': cron '{schedule}' (UTC), starts in {wait:.0f} s, 30 s long")
        kubectl("apply", "-f", "-", input=drill_yaml("rehearsal", 30, schedule))
        self.drive("before", wait + 3, 6101)
        t_start = start.timestamp()
        self.watch_until(wait + 0.5)
        self.drive("drill", 35, 6111)
        t_shift = self.watch_until(15, lambda s: not cologne_routed(s))
        st = drill_status("rehearsal")
        active = st.get("active") or {}
        until = datetime.fromisoformat(active["until"].replace("Z", "+00:00")).timestamp() if active else None
        log(f"    drill status: {st.get('phase')} until {active.get('until')}")
        t_back = self.watch_until(45, lambda s: cologne_routed(s)) if until else None
        end_wait = time.time() + 10
        while time.time() < end_wait and drill_status("rehearsal").get("lastOutcome") is None:
            time.sleep(0.3)
        st = drill_status("rehearsal")
        out["rehearsal"] = {
            "scheduled_start": start.isoformat(),
            "started": (st.get("runs") or [{}])[-1].get("started"),
            "outcome": st.get("lastOutcome"),
            "reason": (st.get("runs") or [{}])[-1].get("reason"),
            "shift_s": None if t_shift is None else round(t_shift - t_start, 2),
            "rollback_late_s": None if (t_back is None or until is None) else round(t_back - until, 2),
            "next_run": st.get("nextRun"),
            "phase": st.get("phase"),
        }

        # ---- drill 2: one-shot, a real failure mid-drill
        log("\n==> drill 2 'injected': one-shot, 60 s; Frankfurt's fixed line dies mid-drill")
        # Calls in flight on the carrier when it dies are lost with it (their BYE has
        # nowhere to go), whatever the routing does; like the replay, the criterion is
        # on calls placed from the moment of the failure on.
        self.drive("injected", 12, 6121)
        self.watch_until(3)
        kubectl("apply", "-f", "-", input=drill_yaml("injected", 60, None))
        t2 = time.time()
        t_shift2 = self.watch_until(15, lambda s: not cologne_routed(s))
        self.watch_until(3)
        log(f"    killing {FRANKFURT_FIXED} ({PEERS[FRANKFURT_FIXED]})")
        t_kill = time.time()
        self.procs.kill(FRANKFURT_FIXED)
        self.drive("after-failure", 25, 6131)
        t_handover = self.watch_until(15, lambda s: cologne_routed(s))
        deadline = time.time() + 10
        while time.time() < deadline and drill_status("injected").get("lastOutcome") is None:
            time.sleep(0.3)
        st2 = drill_status("injected")
        self.watch_until(22)
        out["injected"] = {
            "shift_s": None if t_shift2 is None else round(t_shift2 - t2, 2),
            "outcome": st2.get("lastOutcome"),
            "reason": (st2.get("runs") or [{}])[-1].get("reason"),
            "handover_s": None if t_handover is None else round(t_handover - t_kill, 2),
            "phase": st2.get("phase"),
        }

        per_phase = {}
        for phase, runs in self.runs.items():
            ok = failed = 0
            for r in runs:
                s, f = demo.wait_calls(r, 60)
                ok, failed = ok + s, failed + f
            per_phase[phase] = {"placed": ok + failed, "answered": ok, "failed": failed}
        out["phases"] = per_phase
        out["samples"] = len(self.samples)
        out["empty_route_samples"] = self.empty_sets
        events = kubectl("get", "events.events.k8s.io", "-n", NAMESPACE, "-o", "json", check=False)
        try:
            items = json.loads(events).get("items", [])
        except json.JSONDecodeError:
            items = []
        out["events"] = sorted(
            f"{e.get('reason')}: {e.get('note', '')[:140]}" for e in items if str(e.get("reason", "")).startswith("Drill")
        )
        return out


def check(s: dict) -> list[str]:
    problems = []
    r = s["rehearsal"]
    if r["outcome"] != "Passed":
        problems.append(f"drill 1 ended {r['outcome']}: {r['reason']}")
    if r["shift_s"] is None or r["shift_s"] > 5:
        problems.append(f"drill 1: Cologne left Kamailio's routing {r['shift_s']} s after the scheduled start (> 5 s)")
    if r["rollback_late_s"] is None or not (-1.5 <= r["rollback_late_s"] <= 3):
        problems.append(f"drill 1: rolled back {r['rollback_late_s']} s after its end time (want within 3 s)")
    i = s["injected"]
    if i["outcome"] != "Aborted":
        problems.append(f"drill 2 ended {i['outcome']} (want Aborted): {i['reason']}")
    if i["handover_s"] is None or i["handover_s"] > 6:
        problems.append(f"drill 2: Cologne routed again {i['handover_s']} s after Frankfurt's carrier died (> 6 s)")
    if s["empty_route_samples"]:
        problems.append(f"a route had no destination at {s['empty_route_samples']} s")
    for phase in ("drill", "after-failure"):
        p = s["phases"].get(phase, {})
        if p.get("placed", 0) < 50:
            problems.append(f"phase {phase}: only {p.get('placed', 0)} calls placed")
        elif p["failed"] > 0.01 * p["placed"]:
            problems.append(f"phase {phase}: {p['failed']} of {p['placed']} calls failed (> 1 %)")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the summary as JSON here")
    args = ap.parse_args()
    if not demo.KUBECONFIG.exists():
        log("control plane not running: run `make testenv-up`")
        return 2
    d = Drills()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        summary = d.run()
        problems = check(summary)
        summary["problems"] = problems
        log("\n================ drills ================")
        log(json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=2))
        for e in summary["events"]:
            log(f"event {e}")
        for p in problems:
            log(f"MISSED: {p}")
        if not problems:
            log("all drill criteria met")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2))
        return 1 if problems else 0
    finally:
        d.procs.stop_all()
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        log("stopped everything the drills started (logs in target/demo/logs/)")


if __name__ == "__main__":
    sys.exit(main())
