#!/usr/bin/env bash
# Collect a release of lifeline into target/release/artifacts/ (cargo owns the
# rest of target/release/, so the artifacts live in their own folder):
#
#   lifeline-VERSION.oci.tar        the image (OCI archive, ref ghcr.io/lifeline-dev/lifeline:VERSION)
#   lifeline-VERSION.tgz            the packaged Helm chart (its default image is the one above)
#   lifeline-crds-VERSION.yaml      the CRD bundle, for clusters that manage CRDs apart from Helm
#   SHA256SUMS                      sha256 of the three files (`sha256sum -c SHA256SUMS`)
#
# Needs `make image` (the OCI archive) and `make tools` (helm) first; `make release` runs both.
# Fails when the chart's version or appVersion differs from Cargo.toml's version:
# the chart's default image tag is its appVersion, so they must name the same build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/release/artifacts"
VERSION="$(awk -F'"' '/^version *=/ {print $2; exit}' "$ROOT/Cargo.toml")"
HELM="$("$ROOT/scripts/tools.sh" --print)/helm"

die() { echo "release.sh: $*" >&2; exit 1; }

chart_version="$(awk '$1 == "version:" {print $2; exit}' "$ROOT/charts/lifeline/Chart.yaml")"
app_version="$(awk '$1 == "appVersion:" {gsub(/"/, "", $2); print $2; exit}' "$ROOT/charts/lifeline/Chart.yaml")"
[[ "$chart_version" == "$VERSION" && "$app_version" == "$VERSION" ]] ||
  die "charts/lifeline/Chart.yaml has version $chart_version, appVersion $app_version; Cargo.toml has $VERSION: make them equal"
image="$ROOT/target/image/lifeline-$VERSION.oci.tar"
[[ -s "$image" ]] || die "$image is missing: run 'make image' first"
[[ -x "$HELM" ]] || die "$HELM is missing: run 'make tools' first"
"$ROOT/scripts/sync-chart-crds.sh" --check >/dev/null ||
  die "the chart's CRDs differ from crds/: run scripts/sync-chart-crds.sh"

rm -rf "$OUT"
mkdir -p "$OUT"
cp "$image" "$OUT/lifeline-$VERSION.oci.tar"
"$HELM" lint --strict "$ROOT/charts/lifeline" >/dev/null || die "helm lint --strict charts/lifeline failed"
"$HELM" package "$ROOT/charts/lifeline" --destination "$OUT" >/dev/null
[[ -s "$OUT/lifeline-$VERSION.tgz" ]] || die "helm package did not write lifeline-$VERSION.tgz"
cp "$ROOT/crds/lifeline.dev.yaml" "$OUT/lifeline-crds-$VERSION.yaml"
(cd "$OUT" && sha256sum "lifeline-$VERSION.oci.tar" "lifeline-$VERSION.tgz" "lifeline-crds-$VERSION.yaml" > SHA256SUMS)

echo "release $VERSION in ${OUT#"$ROOT"/}/:"
(cd "$OUT" && for f in *; do printf '  %-32s %s\n' "$f" "$(du -h "$f" | cut -f1)"; done)
