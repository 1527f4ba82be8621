#!/usr/bin/env python3
"""The SIP edge from charts/lifeline-edge on the real node: readiness gate and reload latency.

Needs the real-node plane (`make testenv-up NODE=real`), the images imported
(`tests/testenv/node.sh import target/image/{kamailio,lifeline}-*.oci.tar`) and helm
(`make tools`). In a fresh namespace it

1. installs the chart *before* the routing ConfigMap exists and checks the edge pod
   stays NotReady (sip-sync's /startupz keeps Kamailio from starting), then creates
   the ConfigMap and measures the time until the pod is Ready;
2. applies N routing changes (default 50) one after the other and measures, per change,
   - end to end: ConfigMap PATCH sent -> sip-sync's `lifeline.dev/applied-hash`
     annotation (written only after Kamailio's `dispatcher.list` matched) seen on a watch
     (the chart's opt-in `sipSync.annotate=true`, set here so the figure is observable
     from outside the pod; a default edge skips that write);
   - in the pod: sip-sync's own figure (watch event -> reload confirmed), from its log;
3. prints medians and p99, removes everything it made (release, namespace, kubectl proxy).

  scripts/edge-pod-bench.py [--changes 50] [--watch-list]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KUBECONFIG = ROOT / "target/testenv-real/kubeconfig"
HELM = ROOT / "target/tools/bin/helm"
ENV = dict(os.environ, KUBECONFIG=str(KUBECONFIG))


def kubectl(*args: str, check: bool = True, input: str | None = None) -> str:
    res = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=ENV, input=input)
    if check and res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def routing(i: int) -> str:
    # Destinations on the pod network that nobody answers: Kamailio loads them anyway.
    return "".join(
        f"1 sip:10.244.0.{200 + d}:5060 0 {((i + d) % 9) + 1} duid=carrier-{d}\n" for d in range(4)
    ) + f"2 sip:10.244.0.{210 + i % 20}:5060 0 0 duid=bot\n"


def pod_ready(ns: str) -> bool:
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json"))["items"]
    return bool(pods) and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions", []))
        for p in pods
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--watch-list", action="store_true", help="sip-sync --watch-list (image must have the flag)")
    args = ap.parse_args()
    ns = f"edge-bench-{random.randrange(16**6):06x}"
    proxy = None
    try:
        kubectl("create", "namespace", ns)
        helm = [str(HELM), "install", "edge", str(ROOT / "charts/lifeline-edge"), "-n", ns,
                "--set", "kamailio.image.repository=localhost/lifeline-test/kamailio",
                "--set-string", "kamailio.image.tag=0.1.0", "--set", "kamailio.image.pullPolicy=Never",
                "--set", "sipSync.image.pullPolicy=Never", "--set", "replicas=1",
                "--set", "sipSync.annotate=true",
                "--set", f"sipSync.watchList={'true' if args.watch_list else 'false'}"]
        subprocess.run(helm, check=True, env=ENV, capture_output=True)

        # 1. No routing ConfigMap yet: the pod must not become Ready.
        time.sleep(8)
        assert not pod_ready(ns), "edge pod Ready without a routing ConfigMap"
        kamailio_started = kubectl("get", "pods", "-n", ns, "-o",
                                   "jsonpath={.items[0].status.containerStatuses[0].state}")
        print(f"without routing, 8 s after install: pod NotReady, kamailio state {kamailio_started}")
        content = routing(0)
        t0 = time.monotonic()
        kubectl("create", "configmap", "sip-routing", "-n", ns, f"--from-literal=dispatcher.list={content}")
        while not pod_ready(ns):
            if time.monotonic() - t0 > 120:
                raise RuntimeError("edge pod not Ready 120 s after the routing appeared")
            time.sleep(0.1)
        print(f"routing ConfigMap created -> edge pod Ready: {time.monotonic() - t0:.2f} s")
        ann = json.loads(kubectl("get", "cm", "sip-routing", "-n", ns, "-o", "json"))["metadata"].get("annotations", {})
        assert ann.get("lifeline.dev/applied-hash") == hashlib.sha256(content.encode()).hexdigest(), ann

        # The edge in the pod answers OPTIONS and refuses a stranger's INVITE (this host,
        # 10.244.0.1, is not in the routing list): 403, logged.
        pod_ip = kubectl("get", "pods", "-n", ns, "-o", "jsonpath={.items[0].status.podIP}")
        refused = subprocess.run(
            ["sipp", "-sf", str(ROOT / "tests/fixtures/edge/uac_refused.xml"), f"{pod_ip}:5060",
             "-i", "10.244.0.1", "-p", "5091", "-m", "1", "-timeout", "10", "-nostdin",
             "-key", "ruri", f"sip:inbound@{pod_ip}:5060", "-key", "to_params", ";x=1",
             "-key", "hint", "X-Probe: none"],
            capture_output=True, cwd="/tmp", timeout=30).returncode == 0
        logged = "lifeline-refused reason=undeclared-peer src=10.244.0.1" in kubectl(
            "logs", "-n", ns, "deploy/edge-lifeline-edge", "-c", "kamailio")
        print(f"stranger's INVITE to the edge pod: refused with 403 {refused}, logged {logged}")
        assert refused and logged

        # 2. N changes through kubectl proxy (one HTTP connection per request, loopback).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proxy = subprocess.Popen(["kubectl", "proxy", f"--port={port}", "--address=127.0.0.1"],
                                 env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/api/v1/namespaces/{ns}/configmaps"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/sip-routing", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        e2e = []
        for i in range(1, args.changes + 1):
            content = routing(i)
            want = hashlib.sha256(content.encode()).hexdigest()
            cm = json.loads(urllib.request.urlopen(f"{base}/sip-routing", timeout=5).read())
            rv = cm["metadata"]["resourceVersion"]
            body = json.dumps({"data": {"dispatcher.list": content}}).encode()
            req = urllib.request.Request(f"{base}/sip-routing", data=body, method="PATCH",
                                         headers={"Content-Type": "application/merge-patch+json"})
            watch = urllib.request.urlopen(
                f"{base}?watch=1&fieldSelector=metadata.name%3Dsip-routing&resourceVersion={rv}", timeout=30)
            t0 = time.monotonic()
            urllib.request.urlopen(req, timeout=5).read()
            for line in watch:
                obj = json.loads(line)["object"]
                if (obj["metadata"].get("annotations") or {}).get("lifeline.dev/applied-hash") == want:
                    e2e.append((time.monotonic() - t0) * 1000)
                    break
            watch.close()
        logs = kubectl("logs", "-n", ns, "deploy/edge-lifeline-edge", "-c", "sip-sync")
        in_pod = [json.loads(l)["millis"] for l in logs.splitlines()
                  if '"routing applied and confirmed in Kamailio"' in l and '"Reloaded"' in l]
        in_pod = in_pod[-args.changes:]
        print(f"{len(e2e)} routing changes, edge pod on the real node (pod network, Kamailio 5.6):")
        print(f"  PATCH -> applied-hash seen (end to end): p50 {statistics.median(e2e):.1f} ms, "
              f"p99 {pct(e2e, 0.99):.1f} ms, max {max(e2e):.1f} ms")
        if in_pod:
            print(f"  sip-sync in the pod (watch event -> reload confirmed): p50 {statistics.median(in_pod):.1f} ms, "
                  f"p99 {pct(in_pod, 0.99):.1f} ms ({len(in_pod)} samples; log has 1 ms resolution)")
        return 0
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait()
        subprocess.run([str(HELM), "uninstall", "edge", "-n", ns], env=ENV, capture_output=True)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


if __name__ == "__main__":
    sys.exit(main())
