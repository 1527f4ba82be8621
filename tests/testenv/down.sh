#!/usr/bin/env bash
# Stop the testenv control plane: kills only the processes named by the pid
# files in target/testenv/run (TERM, then KILL after 5 s), removes pid files and
# etcd data. Certs, logs and the binary stay. Idempotent.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
  c="${COMPONENTS[$i]}"
  if pid="$(live_pid "$c")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "down: $c (pid $pid) did not stop after TERM, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    log "down: stopped $c (pid $pid)"
  fi
  rm -f "$RUN/$c.pid"
done
rm -rf "$TESTENV_DIR/etcd-data" "$RUN/env" "$RUN/kcm.kubeconfig"
log "down: done"
