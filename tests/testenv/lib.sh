# Shared settings for the testenv scripts. Sourced, not executed.
# shellcheck shell=bash
TESTENV_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(git -C "$TESTENV_SRC" rev-parse --show-toplevel 2>/dev/null || (cd "$TESTENV_SRC/../.." && pwd))"
TESTENV_DIR="${TESTENV_DIR:-$REPO_ROOT/target/testenv}"
BIN="$TESTENV_DIR/bin/testenv"
CERTS="$TESTENV_DIR/certs"
LOGS="$TESTENV_DIR/logs"
RUN="$TESTENV_DIR/run"            # pid files + env
KUBECONFIG_OUT="$TESTENV_DIR/kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kubelet)

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:--mod=mod}"

log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# k8s.io/kubernetes version pinned in go.mod (e.g. v1.35.4)
kube_version() { awk '$1=="k8s.io/kubernetes" && $2 ~ /^v1\./ {print $2; exit}' "$TESTENV_SRC/go.mod"; }

# pid of a component if its pid file points at a live testenv process
live_pid() {
  local f="$RUN/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # guard against pid reuse: must be our binary
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "bin/testenv $1" || return 1
  echo "$pid"
}

# GET a path on the apiserver with the admin client cert; prints the body
api_get() {
  # shellcheck disable=SC1091
  source "$RUN/env"
  curl -sS --max-time 5 --cacert "$CERTS/ca.crt" --cert "$CERTS/admin.crt" --key "$CERTS/admin.key" \
    "$APISERVER_URL$1"
}
