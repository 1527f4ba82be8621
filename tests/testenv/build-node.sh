#!/usr/bin/env bash
# Build target/testenv/bin/testenv-node (upstream kubelet + kube-scheduler)
# from the same k8s.io/kubernetes version and replace block as the control
# plane (../go.mod). Only the real-node mode (node.sh) needs it. Skipped when
# the binary is newer than go.mod, go.sum, realnode/*.go and this script.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
NODE_BIN="$(dirname "$BIN")/testenv-node"

mkdir -p "$(dirname "$NODE_BIN")"
if [[ -x "$NODE_BIN" && "${FORCE:-0}" != 1 ]] && \
   [[ -z "$(find "$TESTENV_SRC/go.mod" "$TESTENV_SRC/go.sum" "$TESTENV_SRC/realnode" "$TESTENV_SRC/build-node.sh" -newer "$NODE_BIN" -print -quit)" ]]; then
  log "build-node: $NODE_BIN is up to date"
  exit 0
fi

ver="$(kube_version)"
[[ -n "$ver" ]] || die "no k8s.io/kubernetes version in $TESTENV_SRC/go.mod"
minor="${ver#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

log "build-node: go build kubelet + kube-scheduler (kubernetes $ver, $(go version | awk '{print $3}')) ..."
start=$SECONDS
(cd "$TESTENV_SRC" && go build -trimpath -ldflags="$ldflags" -o "$NODE_BIN.tmp" ./realnode)
mv "$NODE_BIN.tmp" "$NODE_BIN"
log "build-node: done in $((SECONDS - start))s -> $NODE_BIN ($(du -h "$NODE_BIN" | cut -f1))"
