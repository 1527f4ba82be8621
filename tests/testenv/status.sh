#!/usr/bin/env bash
# Print the state of the testenv control plane; exit non-zero unless every
# component is alive and the apiserver's /readyz says ok.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

healthy=0
for c in "${COMPONENTS[@]}"; do
  if pid="$(live_pid "$c")"; then
    printf '%-24s pid %-8s alive\n' "$c" "$pid"
  else
    printf '%-24s %s\n' "$c" "NOT RUNNING"
    healthy=1
  fi
done
if [[ -f "$RUN/env" ]]; then
  source "$RUN/env"
  printf '%-24s %s\n' apiserver "$APISERVER_URL"
  printf '%-24s %s\n' kubeconfig "$KUBECONFIG_OUT"
  readyz="$(api_get /readyz 2>&1 || true)"
  printf '%-24s %s\n' readyz "${readyz:-<no answer>}"
  [[ "$readyz" == ok ]] || healthy=1
else
  printf '%-24s %s\n' apiserver "<not started>"
  healthy=1
fi
exit "$healthy"
