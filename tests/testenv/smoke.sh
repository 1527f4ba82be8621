#!/usr/bin/env bash
# Smoke test for a running testenv plane (run tests/testenv/up.sh first).
# Needs kubectl on PATH. Exits non-zero with a clear message on any failure.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/lib.sh"
export KUBECONFIG="$KUBECONFIG_OUT"
command -v kubectl >/dev/null || die "smoke: kubectl not found on PATH"
[[ -f "$KUBECONFIG" ]] || die "smoke: $KUBECONFIG missing; run tests/testenv/up.sh first"

ns="smoke-$(date +%s)-$$"
t0=$SECONDS
cleanup_ns=0
fail() {
  log "SMOKE FAILED: $*"
  if ((cleanup_ns)); then
    kubectl get deploy,rs,pods -n "$ns" -o wide >&2 || true
    echo "----- kubelet log tail -----" >&2; tail -n 20 "$LOGS/kubelet.log" >&2 || true
    echo "----- kube-controller-manager log tail -----" >&2; tail -n 20 "$LOGS/kube-controller-manager.log" >&2 || true
    kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  fi
  exit 1
}
# poll CMD until it prints EXPECTED, at most TIMEOUT seconds
poll() { # description timeout expected cmd...
  local what="$1" timeout="$2" want="$3"; shift 3
  local deadline=$((SECONDS + timeout)) got=""
  while :; do
    got="$("$@" 2>/dev/null || true)"
    [[ "$got" == "$want" ]] && return 0
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s: $what (last: '${got}', want '${want}')"
    sleep 0.5
  done
}
passed=0
ok() { passed=$((passed + 1)); log "ok: $*"; }

# 1. health + version
readyz="$(kubectl get --raw /readyz)" || fail "kubectl get --raw /readyz failed"
[[ "$readyz" == ok ]] || fail "/readyz said '$readyz'"
ok "/readyz = ok"
want_ver="$(kube_version)"
server_ver="$(kubectl version -o json 2>/dev/null | sed -n '/"serverVersion"/,/}/s/.*"gitVersion": *"\([^"]*\)".*/\1/p')"
[[ "$server_ver" == "$want_ver" ]] || fail "server version '$server_ver', want '$want_ver'"
ok "server version $server_ver"
poll "node testenv-node Ready" 20 True \
  kubectl get node testenv-node -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
ok "node testenv-node Ready"

# 2. a Deployment gets 3 Ready pods with loopback IPs
kubectl create namespace "$ns" >/dev/null || fail "create namespace $ns"
cleanup_ns=1
poll "ServiceAccount $ns/default" 20 default kubectl get serviceaccount default -n "$ns" -o 'jsonpath={.metadata.name}'
kubectl create deployment web --image=example.invalid/web --replicas=3 -n "$ns" >/dev/null || fail "create deployment"
t1=$SECONDS
ready_count() {
  kubectl get pods -n "$ns" -l app=web -o 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$'
}
poll "3 Ready pods of deployment web" 30 3 ready_count
poll "deployment web availableReplicas=3" 15 3 kubectl get deploy web -n "$ns" -o 'jsonpath={.status.availableReplicas}'
ips="$(kubectl get pods -n "$ns" -l app=web -o 'jsonpath={range .items[*]}{.status.podIP}{"\n"}{end}')"
[[ "$(grep -cE '^127\.[0-9]+\.[0-9]+\.[0-9]+$' <<<"$ips")" == 3 ]] || fail "pod IPs are not 3 loopback addresses: $(echo $ips)"
[[ "$(sort -u <<<"$ips" | wc -l)" == 3 ]] || fail "pod IPs are not unique: $(echo $ips)"
ok "3 pods Ready in $((SECONDS - t1))s with IPs $(echo $ips)"

# 3. annotations: readiness flip and a chosen pod IP
pod="$(kubectl get pods -n "$ns" -l app=web -o 'jsonpath={.items[0].metadata.name}')"
kubectl annotate pod "$pod" -n "$ns" testenv.lifeline.dev/ready=false --overwrite >/dev/null
poll "pod $pod Ready=False after annotation" 15 False \
  kubectl get pod "$pod" -n "$ns" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
kubectl annotate pod "$pod" -n "$ns" testenv.lifeline.dev/ready=true --overwrite >/dev/null
poll "pod $pod Ready=True again" 15 True \
  kubectl get pod "$pod" -n "$ns" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
ok "readiness flips with testenv.lifeline.dev/ready"
kubectl run pinned -n "$ns" --image=example.invalid/pinned --restart=Never \
  --annotations=testenv.lifeline.dev/pod-ip=127.0.42.7 >/dev/null || fail "create pod pinned"
poll "pod pinned gets podIP 127.0.42.7" 15 "127.0.42.7 True" \
  kubectl get pod pinned -n "$ns" -o 'jsonpath={.status.podIP} {.status.conditions[?(@.type=="Ready")].status}'
ok "testenv.lifeline.dev/pod-ip honoured"

# 4. deleting the Deployment garbage-collects its ReplicaSet and pods
kubectl delete deployment web -n "$ns" --wait=false >/dev/null || fail "delete deployment"
poll "ReplicaSets of web garbage-collected" 30 0 bash -c 'kubectl get rs -n "$0" -l app=web -o name | grep -c .' "$ns"
poll "pods of web garbage-collected" 30 0 bash -c 'kubectl get pods -n "$0" -l app=web -o name | grep -c .' "$ns"
ok "deployment deletion garbage-collected its ReplicaSet and pods"

# 5. namespace deletion finishes
kubectl delete namespace "$ns" --wait=false >/dev/null || fail "delete namespace"
poll "namespace $ns disappears" 60 gone bash -c 'kubectl get namespace "$0" >/dev/null 2>&1 && echo present || echo gone' "$ns"
cleanup_ns=0
ok "namespace $ns deleted"
log "smoke: all checks passed in $((SECONDS - t0))s"
echo "smoke: $passed passed, 0 failed"
