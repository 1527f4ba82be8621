#!/usr/bin/env python3
"""Draw the carrier-outage replay's timeline from target/demo/timeline.json.

  timeline.py TIMELINE_JSON OUT_PNG

Three panels over the replay's time: new calls per second per destination (from
Kamailio's routing trace), each region's state, and each bot pool's ready and desired
replicas with the calls measured at the edge. Run with Debian's Python
(python3-matplotlib); scripts/demo.py calls it.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STATE_LEVEL = {"Active": 3, "Recovering": 2, "Draining": 1, "Failed": 0}


def main() -> int:
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        data = json.load(f)
    samples = data["samples"]
    fig, (calls, regions, bots) = plt.subplots(3, 1, figsize=(12, 10), sharex=True,
                                               gridspec_kw={"height_ratios": [3, 1.4, 2]})

    for label, per_sec in sorted(data["calls_per_second"].items()):
        secs = sorted(int(s) for s in per_sec)
        if not secs:
            continue
        xs = list(range(secs[0], secs[-1] + 1))
        ys = [per_sec.get(str(x), 0) for x in xs]
        style = "--" if "bots" in label else "-"
        calls.plot(xs, ys, style, label=label, linewidth=1.4)
    calls.set_ylabel("new calls / s")
    calls.set_title("carrier-outage replay: calls per destination, region states, bot replicas")
    calls.legend(loc="upper left", fontsize=8, ncol=3)

    names = sorted({r for s in samples for r in s["regions"]})
    for name in names:
        xs = [s["t"] for s in samples if name in s["regions"]]
        ys = [STATE_LEVEL.get(s["regions"][name], 0) for s in samples if name in s["regions"]]
        regions.step(xs, ys, where="post", label=name, linewidth=2)
    regions.set_yticks(list(STATE_LEVEL.values()), list(STATE_LEVEL.keys()))
    regions.set_ylim(-0.5, 3.5)
    regions.set_ylabel("region")
    regions.legend(loc="lower left", fontsize=8)

    pools = sorted({p for s in samples for p in s["bots"]})
    for pool in pools:
        xs = [s["t"] for s in samples if pool in s["bots"]]
        bots.step(xs, [s["bots"][pool]["desired"] for s in samples if pool in s["bots"]],
                  where="post", label=f"{pool} desired", linewidth=2)
        bots.step(xs, [s["bots"][pool]["ready"] for s in samples if pool in s["bots"]],
                  where="post", label=f"{pool} ready", linestyle=":", linewidth=2)
    bots.set_ylabel("bot replicas")
    measured = [(s["t"], s["measured"]) for s in samples if s.get("measured") is not None]
    if measured:
        twin = bots.twinx()
        twin.plot([m[0] for m in measured], [m[1] for m in measured], color="grey", alpha=0.6,
                  label="calls in progress (measured at the edge)")
        twin.set_ylabel("calls in progress")
        twin.legend(loc="upper right", fontsize=8)
    bots.legend(loc="upper left", fontsize=8)
    bots.set_xlabel("seconds since the replay started")

    for ax in (calls, regions, bots):
        for name, t in data["events"].items():
            ax.axvline(t, color="red" if "dies" in name else "green", alpha=0.5)
    for name, t in data["events"].items():
        calls.annotate(name, (t, calls.get_ylim()[1]), fontsize=8, ha="left", va="top")

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
