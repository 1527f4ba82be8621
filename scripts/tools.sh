#!/usr/bin/env bash
# Build the chart tooling (helm, kube-score) from Go modules into
# target/tools/bin. Each tool is skipped when the pinned version is already
# built there, so repeated runs cost nothing. Go builds are slow on small
# machines: run this early (CI does it before the tests that need the tools).
#
#   scripts/tools.sh           build whatever is missing
#   scripts/tools.sh --print   print the bin directory (for PATH=)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/tools/bin"

HELM_VERSION="${HELM_VERSION:-v3.19.5}"
KUBE_SCORE_VERSION="${KUBE_SCORE_VERSION:-v1.20.0}"

if [[ "${1:-}" == "--print" ]]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "tools.sh: go is required" >&2; exit 1; }
mkdir -p "$BIN"

# Keep the caller's Go settings; only fill in what the machine does not set.
export GOFLAGS="${GOFLAGS:-$(go env GOFLAGS)}"
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
export GOBIN="$BIN"

# build NAME VERSION PACKAGE [LDFLAGS]: `go install PACKAGE@VERSION` unless the
# stamp file says this exact version (and link flags) is already in $BIN.
build() {
  local name=$1 version=$2 pkg=$3 ldflags=${4:-} stamp="$BIN/.$1.version"
  local want="$version $ldflags"
  if [[ -x "$BIN/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "tools.sh: $name $version already built"
    return 0
  fi
  echo "tools.sh: building $name $version (takes a few minutes)"
  local t0=$SECONDS
  go install -ldflags="$ldflags" "$pkg@$version"
  echo "$want" > "$stamp"
  echo "tools.sh: $name $version built in $((SECONDS - t0))s"
}

# Helm's Makefile stamps its version and the Kubernetes version its client
# libraries speak (k8s.io/* v0.34 for Helm 3.19); a plain `go install` leaves
# "v3.19" and Kubernetes 1.20, which makes `helm template` reject charts with a
# kubeVersion constraint. Set the same variables here.
HELM_K8S_MINOR="${HELM_K8S_MINOR:-34}"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/chartutil pkg/lint/rules; do
  helm_ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
build helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$helm_ldflags"
build kube-score "$KUBE_SCORE_VERSION" github.com/zegl/kube-score/cmd/kube-score \
  "-s -w -X main.version=$KUBE_SCORE_VERSION"
