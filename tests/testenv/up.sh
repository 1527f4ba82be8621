#!/usr/bin/env bash
# Start (or reuse) the testenv control plane: etcd, kube-apiserver,
# kube-controller-manager and the fake kubelet, as background processes with
# pid files in target/testenv/run and logs in target/testenv/logs.
# Writes target/testenv/kubeconfig (admin, CA-verified TLS).
#
# NODE=real: the same control plane plus kube-scheduler and a real node
# (node.sh: kubelet, containerd, runc, CNI) instead of the fake kubelet, in
# target/testenv-real. Needs root; one real plane per machine.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/lib.sh"
t0=$SECONDS
READY_TIMEOUT="${READY_TIMEOUT:-60}"

if "$here/status.sh" >/dev/null 2>&1; then
  source "$RUN/env"
  log "reusing running control plane at $APISERVER_URL (KUBECONFIG=$KUBECONFIG_OUT)"
  exit 0
fi

# clean up any partial / stale plane first
"$here/down.sh" >/dev/null 2>&1 || true
"$here/build.sh"
"$here/certs.sh"
if [[ "$NODE" == real ]]; then
  [[ $(id -u) -eq 0 ]] || die "NODE=real needs root (network namespaces, mounts, cgroups)"
  "$here/build-node.sh"
  PAUSE_ARCHIVE="$REPO_ROOT/target/image/pause-3.10.oci.tar"
  [[ -s "$PAUSE_ARCHIVE" ]] || "$REPO_ROOT/scripts/image.sh" build pause >/dev/null
  "$here/node.sh" net-up
fi
mkdir -p "$RUN" "$LOGS"
for c in "${COMPONENTS[@]}"; do : > "$LOGS/$c.log"; done
t1=$SECONDS

mapfile -t ports < <("$BIN" freeport 3)
ETCD_PORT=${ports[0]} ETCD_PEER_PORT=${ports[1]} APISERVER_PORT=${ports[2]}
API_BIND=127.0.0.1
if [[ "$NODE" == real ]]; then
  # Pods reach the API server as in-cluster clients do: the `kubernetes`
  # Service, 10.96.0.1:443. That address sits on the pod bridge (node.sh), so
  # the API server listens on it directly; no kube-proxy, no NAT.
  API_BIND=10.96.0.1 APISERVER_PORT=443
fi
APISERVER_URL="https://$API_BIND:$APISERVER_PORT"
cat > "$RUN/env" <<EOV
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
APISERVER_URL=$APISERVER_URL
KUBECONFIG=$KUBECONFIG_OUT
EOV

b64() { base64 -w0 < "$1"; }
write_kubeconfig() { # file user cert key
  cat > "$1.tmp" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(b64 "$CERTS/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: testenv
  context:
    cluster: testenv
    user: $2
current-context: testenv
EOK
  chmod 600 "$1.tmp" && mv "$1.tmp" "$1"
}
write_kubeconfig "$KUBECONFIG_OUT" testenv-admin "$CERTS/admin.crt" "$CERTS/admin.key"
write_kubeconfig "$RUN/kcm.kubeconfig" system:kube-controller-manager "$CERTS/kcm.crt" "$CERTS/kcm.key"

tail_logs() { for c in "$@"; do [[ -s "$LOGS/$c.log" ]] || continue; echo "----- last lines of $LOGS/$c.log -----" >&2; tail -n 25 "$LOGS/$c.log" >&2 || true; done; }
fail() { log "ERROR: $*"; tail_logs "${COMPONENTS[@]}"; "$here/down.sh" >/dev/null 2>&1 || true; exit 1; }

start() { # name args...
  local name="$1" bin="$BIN"; shift
  [[ "$name" == kube-scheduler ]] && bin="$(dirname "$BIN")/testenv-node"
  # setsid: own session, so the plane outlives the shell that started it
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$RUN/$name.pid" "$bin" "$name" "$@" \
    >> "$LOGS/$name.log" 2>&1 < /dev/null &
  for _ in $(seq 50); do [[ -s "$RUN/$name.pid" ]] && break; sleep 0.1; done
  log "started $name (pid $(cat "$RUN/$name.pid"), log $LOGS/$name.log)"
}
wait_for() { # description timeout-seconds component-to-watch command...
  local what="$1" timeout="$2" comp="$3"; shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    live_pid "$comp" >/dev/null || fail "$comp exited while waiting for $what"
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
    sleep 0.25
  done
}

start etcd --name testenv --data-dir "$TESTENV_DIR/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "testenv=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
  --unsafe-no-fsync --log-level warn --quota-backend-bytes $((2 * 1024 * 1024 * 1024))
wait_for "etcd /health" 20 etcd curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

real_api_flags=()
if [[ "$NODE" == real ]]; then
  # `kubectl logs/exec` go to the kubelet by its InternalIP with the admin cert
  real_api_flags=(--kubelet-preferred-address-types InternalIP
    --kubelet-client-certificate "$CERTS/admin.crt" --kubelet-client-key "$CERTS/admin.key")
fi
start kube-apiserver \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address "$API_BIND" --advertise-address "$API_BIND" --secure-port "$APISERVER_PORT" \
  --cert-dir "$CERTS" --tls-cert-file "$CERTS/apiserver.crt" --tls-private-key-file "$CERTS/apiserver.key" \
  --client-ca-file "$CERTS/ca.crt" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$CERTS/sa.pub" --service-account-signing-key-file "$CERTS/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --endpoint-reconciler-type none \
  --allow-privileged=true --profiling=false "${real_api_flags[@]}"
wait_for "kube-apiserver /readyz" "$READY_TIMEOUT" kube-apiserver \
  bash -c '[[ "$(curl -sS --max-time 2 --cacert "$0/ca.crt" --cert "$0/admin.crt" --key "$0/admin.key" "$1/readyz")" == ok ]]' "$CERTS" "$APISERVER_URL"
log "kube-apiserver ready at $APISERVER_URL after $((SECONDS - t1))s"

controllers=deployment-controller,replicaset-controller,endpointslice-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,disruption-controller,horizontal-pod-autoscaler-controller
# a real node starts with the not-ready taint; the node lifecycle controller
# lifts it once the kubelet reports Ready (and taints the node again if it stops)
[[ "$NODE" == real ]] && controllers+=,node-lifecycle-controller,pod-garbage-collector-controller
start kube-controller-manager \
  --kubeconfig "$RUN/kcm.kubeconfig" \
  --authentication-kubeconfig "$RUN/kcm.kubeconfig" --authorization-kubeconfig "$RUN/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 \
  --controllers "${KCM_CONTROLLERS:-$controllers}" \
  --use-service-account-credentials=true \
  --root-ca-file "$CERTS/ca.crt" --service-account-private-key-file "$CERTS/sa.key" \
  --leader-elect=false --profiling=false
if [[ "$NODE" == real ]]; then
  "$here/node.sh" write-config
  start kube-scheduler --kubeconfig "$TESTENV_DIR/node/scheduler.kubeconfig" \
    --authentication-kubeconfig "$TESTENV_DIR/node/scheduler.kubeconfig" \
    --authorization-kubeconfig "$TESTENV_DIR/node/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false
  "$here/node.sh" start "$PAUSE_ARCHIVE"
  NODE_NAME=lifeline-node
else
  start kubelet --kubeconfig "$KUBECONFIG_OUT" --node-name testenv-node
  NODE_NAME=testenv-node
fi

wait_for "ServiceAccount default/default" "$READY_TIMEOUT" kube-controller-manager \
  bash -c 'curl -sf --max-time 2 --cacert "$0/ca.crt" --cert "$0/admin.crt" --key "$0/admin.key" "$1/api/v1/namespaces/default/serviceaccounts/default"' "$CERTS" "$APISERVER_URL"
if [[ "$NODE" == real ]]; then
  wait_for "Node $NODE_NAME Ready" 90 node \
    bash -c 'curl -sf --max-time 2 --cacert "$0/ca.crt" --cert "$0/admin.crt" --key "$0/admin.key" "$1/api/v1/nodes/$2" |
      python3 -c "import json,sys; n=json.load(sys.stdin); sys.exit(0 if any(c[\"type\"]==\"Ready\" and c[\"status\"]==\"True\" for c in n[\"status\"].get(\"conditions\",[])) else 1)"' \
      "$CERTS" "$APISERVER_URL" "$NODE_NAME"
else
  wait_for "Node testenv-node" 30 kubelet \
    bash -c 'curl -sf --max-time 2 --cacert "$0/ca.crt" --cert "$0/admin.crt" --key "$0/admin.key" "$1/api/v1/nodes/testenv-node"' "$CERTS" "$APISERVER_URL"
fi

log "control plane up in $((SECONDS - t0))s (warm start $((SECONDS - t1))s)  apiserver=$APISERVER_URL"
log "export KUBECONFIG=$KUBECONFIG_OUT"
