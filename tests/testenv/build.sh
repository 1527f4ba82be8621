#!/usr/bin/env bash
# Build target/testenv/bin/testenv (etcd + kube-apiserver +
# kube-controller-manager + fake kubelet in one binary). Skips the build when
# the binary is newer than go.mod, go.sum, *.go and this script.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$(dirname "$BIN")"
if [[ -x "$BIN" && "${FORCE:-0}" != 1 ]] && \
   [[ -z "$(find "$TESTENV_SRC" -maxdepth 1 \( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) -newer "$BIN" -print -quit)" ]]; then
  log "build: $BIN is up to date"
  exit 0
fi

ver="$(kube_version)"
[[ -n "$ver" ]] || die "no k8s.io/kubernetes version in $TESTENV_SRC/go.mod"
minor="${ver#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

log "build: go build testenv (kubernetes $ver, $(go version | awk '{print $3}')) ..."
start=$SECONDS
(cd "$TESTENV_SRC" && go build -trimpath -ldflags="$ldflags" -o "$BIN.tmp" .)
mv "$BIN.tmp" "$BIN"
log "build: done in $((SECONDS - start))s -> $BIN ($(du -h "$BIN" | cut -f1))"
