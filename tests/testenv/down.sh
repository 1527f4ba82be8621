#!/usr/bin/env bash
# Stop the testenv control plane: kills only the processes named by the pid
# files in target/testenv/run (TERM, then KILL whatever is still alive after
# 5 s; etcd last so the apiserver can shut down cleanly), removes pid files and
# etcd data. Certs, logs and the binary stay. Idempotent.
# NODE=real: first the real node (node.sh down: its processes, mounts,
# network namespaces, bridge and cgroups), then the plane in target/testenv-real.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop() { # components...
  local -A pids=()
  local c pid
  for c in "$@"; do
    if pid="$(live_pid "$c")"; then pids[$c]=$pid; kill -TERM "$pid" 2>/dev/null || true; fi
  done
  alive() { local c; for c in "${!pids[@]}"; do kill -0 "${pids[$c]}" 2>/dev/null && return 0; done; return 1; }
  for _ in $(seq 50); do alive || break; sleep 0.1; done
  for c in "${!pids[@]}"; do
    if kill -0 "${pids[$c]}" 2>/dev/null; then
      log "down: $c (pid ${pids[$c]}) still alive 5s after TERM, sending KILL"
      kill -KILL "${pids[$c]}" 2>/dev/null || true
    fi
  done
  for _ in $(seq 30); do alive || break; sleep 0.1; done
  for c in "$@"; do
    [[ -n "${pids[$c]:-}" ]] && log "down: stopped $c (pid ${pids[$c]})"
    rm -f "$RUN/$c.pid"
  done
}
if [[ "$NODE" == real ]]; then
  "$(dirname "${BASH_SOURCE[0]}")/node.sh" down
  stop kube-scheduler kube-controller-manager kube-apiserver
else
  stop kubelet kube-controller-manager kube-apiserver
fi
stop etcd
rm -rf "$TESTENV_DIR/etcd-data" "$RUN/env" "$RUN/kcm.kubeconfig"
log "down: done"
