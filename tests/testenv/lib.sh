# Shared settings for the testenv scripts. Sourced, not executed.
# shellcheck shell=bash
TESTENV_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(git -C "$TESTENV_SRC" rev-parse --show-toplevel 2>/dev/null || (cd "$TESTENV_SRC/../.." && pwd))"
# NODE=sim (default): the fake kubelet, fast, any number of planes per machine.
# NODE=real: a real kubelet + containerd + runc + CNI (node.sh); its own plane
# in target/testenv-real, so both can run side by side.
NODE="${NODE:-sim}"
case "$NODE" in
  sim) TESTENV_DIR="${TESTENV_DIR:-$REPO_ROOT/target/testenv}" ;;
  real) TESTENV_DIR="${TESTENV_DIR:-$REPO_ROOT/target/testenv-real}" ;;
  *) printf 'NODE must be sim or real, not %q\n' "$NODE" >&2; exit 2 ;;
esac
# the binaries are shared by both modes
BIN="$REPO_ROOT/target/testenv/bin/testenv"
CERTS="$TESTENV_DIR/certs"
LOGS="$TESTENV_DIR/logs"
RUN="$TESTENV_DIR/run"            # pid files + env
KUBECONFIG_OUT="$TESTENV_DIR/kubeconfig"
if [[ "$NODE" == real ]]; then
  COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler node)
else
  COMPONENTS=(etcd kube-apiserver kube-controller-manager kubelet)
fi

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
  local want="bin/testenv $1"
  case "$1" in
    kube-scheduler) want="bin/testenv-node kube-scheduler" ;;
    node) want="node.sh init" ;;
  esac
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "$want" || return 1
  echo "$pid"
}

# GET a path on the apiserver with the admin client cert; prints the body
api_get() {
  # shellcheck disable=SC1091
  source "$RUN/env"
  curl -sS --max-time 5 --cacert "$CERTS/ca.crt" --cert "$CERTS/admin.crt" --key "$CERTS/admin.key" \
    "$APISERVER_URL$1"
}
