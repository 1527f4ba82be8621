#!/usr/bin/env bash
# Build lifeline's container images without a daemon or a registry.
#
#   scripts/image.sh context NAME        prepare target/image/NAME/context
#   scripts/image.sh build NAME [TAG]    context + buildah → target/image/NAME-TAG.oci.tar
#   scripts/image.sh list                the image names
#
# NAME is one of:
#   lifeline  the operator image (Containerfile at the repository root)
#   sipp      test SIP peer (tests/images/sipp): carrier, agent PBX or phone bot
#   kamailio  test SIP edge (tests/images/kamailio): Kamailio 5.6 with our example config
#   pause     the pod sandbox image of the real-node testenv (tests/images/pause)
#
# Every image is `FROM scratch` plus a prepared context: nothing is pulled, so
# the build works with no registry and no network. The context holds a
# `rootfs/` tree made from
#   - our own static binary (lifeline: glibc static-pie, built by cargo),
#   - files unpacked from Debian packages (`apt-get download` + `dpkg -x`; the
#     CA bundle, and the closure of sipp's or Kamailio's shared libraries),
#   - /etc/passwd and /etc/group naming the non-root user 65532.
# The Containerfile only COPYs that tree and sets the metadata, so the same
# file builds unchanged with `docker build -f Containerfile target/image/NAME/context`.
#
# Here the build runs with buildah (Debian package) in its daemonless mode:
# vfs storage under target/image/storage, chroot isolation (the Containerfiles
# have no RUN step, so nothing executes at build time). The result is written
# as an OCI archive whose ref name is the image reference the chart and the
# tests use, so `ctr images import`, `kind load image-archive`, `podman load`
# and `skopeo copy oci-archive:…` all keep it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/target/image"
DEBS="$OUT/debs"
REPO_URL="https://github.com/lifeline-dev/lifeline"
VERSION="$(awk -F'"' '/^version *=/ {print $2; exit}' "$ROOT/Cargo.toml")"
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
# The static binary goes to its own target triple directory, so it never
# replaces the debug/release binaries the tests use.
TRIPLE="${TRIPLE:-x86_64-unknown-linux-gnu}"

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Image reference each NAME is tagged with. lifeline's is the chart default
# (values.yaml image.repository, tag = appVersion).
repository() {
  case "$1" in
    lifeline) echo "ghcr.io/lifeline-dev/lifeline" ;;
    sipp | kamailio | pause) echo "localhost/lifeline-test/$1" ;;
    *) die "unknown image '$1' (one of: lifeline sipp kamailio pause)" ;;
  esac
}
containerfile() {
  case "$1" in
    lifeline) echo "$ROOT/Containerfile" ;;
    *) echo "$ROOT/tests/images/$1/Containerfile" ;;
  esac
}
default_tag() {
  case "$1" in
    lifeline) echo "$VERSION" ;;
    pause) echo "3.10" ;;
    *) echo "$VERSION" ;;
  esac
}

# users NAME: /etc/passwd and /etc/group with root and the 65532 user.
users() {
  local rootfs=$1
  mkdir -p "$rootfs/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
  mkdir -p "$rootfs/home/nonroot" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  chmod 0755 "$rootfs/home/nonroot"
}

# debs PKG...: download the packages (cached in target/image/debs) and print their paths.
debs() {
  mkdir -p "$DEBS"
  local p f missing=()
  for p in "$@"; do
    f=$(compgen -G "$DEBS/${p}_*.deb" | head -n1 || true)
    [[ -n "$f" ]] || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get download ${missing[*]}"
    (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "${missing[@]}" >/dev/null) ||
      die "apt-get download failed (run 'apt-get update' first): ${missing[*]}"
  fi
  for p in "$@"; do compgen -G "$DEBS/${p}_*.deb" | head -n1; done
}

# closure PKG...: the packages PKG... depend on (Depends and Pre-Depends,
# recursively), minus those that only serve package maintenance or a full
# system (dpkg, debconf, perl, python, adduser, init systems...): an image
# runs one program, it never installs or configures packages.
closure() {
  local skip='^(adduser|debconf|cdebconf|dpkg|install-info|init-system-helpers|lsb-base|sysvinit-utils|tar|usrmerge|usr-is-merged|passwd|perl|perl-base|perl-modules-.*|libperl.*|python3.*|libpython3.*|mailcap|media-types|mime-support|readline-common|libfile-find-rule-perl|libnumber-compare-perl|libtext-glob-perl|libdebian-installer4|libnewt0.52|libslang2|libtextwrap1|libpam.*|libsemanage.*|libaudit.*|libselinux1|libsepol2|debianutils|base-files|libelogind0)$'
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "$@" 2>/dev/null |
    awk '/^[a-z0-9]/ {print $1}' | sort -u | grep -Ev "$skip"
}

# unpack ROOTFS PKG...: dpkg -x the packages and their library closure into ROOTFS,
# then drop documentation, manuals and maintainer leftovers.
unpack() {
  local rootfs=$1; shift
  local pkgs f
  mapfile -t pkgs < <(closure "$@")
  ((${#pkgs[@]})) || die "no packages resolved for: $* (is apt's package list there? apt-get update)"
  log "packages: ${pkgs[*]}"
  while read -r f; do dpkg -x "$f" "$rootfs"; done < <(debs "${pkgs[@]}")
  rm -rf "$rootfs"/usr/share/{doc,man,info,lintian,bug,locale} "$rootfs"/etc/init.d "$rootfs"/etc/logrotate.d
}

# ca_bundle ROOTFS: /etc/ssl/certs/ca-certificates.crt from Debian's ca-certificates
# package (the Mozilla roots), the file update-ca-certificates would write.
ca_bundle() {
  local rootfs=$1 tmp f
  tmp=$(mktemp -d)
  dpkg -x "$(debs ca-certificates)" "$tmp"
  mkdir -p "$rootfs/etc/ssl/certs"
  : > "$rootfs/etc/ssl/certs/ca-certificates.crt"
  while read -r f; do
    cat "$f" >> "$rootfs/etc/ssl/certs/ca-certificates.crt"
  done < <(find "$tmp/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort)
  rm -rf "$tmp"
  local n
  n=$(grep -c 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt")
  ((n > 50)) || die "CA bundle has only $n certificates"
}

# The static lifeline binary: glibc static-pie (no libc in the image), stripped.
lifeline_binary() {
  log "cargo build --release --target $TRIPLE (static, stripped)"
  (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin lifeline --target "$TRIPLE" >&2)
  local bin="$ROOT/target/$TRIPLE/release/lifeline"
  if ldd "$bin" >/dev/null 2>&1 && ! ldd "$bin" 2>&1 | grep -q 'statically linked\|not a dynamic'; then
    die "$bin is dynamically linked: $(ldd "$bin" | tr '\n' ' ')"
  fi
  echo "$bin"
}

# runs_in ROOTFS CMD...: the unpacked tree runs CMD (every shared library is
# there). Needs root for chroot; skipped otherwise.
runs_in() {
  local rootfs=$1; shift
  if [[ $(id -u) -ne 0 ]]; then log "not root: skipping the check that $1 runs"; return 0; fi
  local out rc=0
  out=$(chroot "$rootfs" "$@" 2>&1) || rc=$?
  if ((rc == 126 || rc == 127)) || grep -q 'error while loading shared libraries' <<<"$out"; then
    die "$* does not run in the image (exit $rc): $out"
  fi
}

context() {
  local name=$1 ctx="$OUT/$1/context"
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs"
  local rootfs="$ctx/rootfs"
  case "$name" in
    lifeline)
      local bin
      bin=$(lifeline_binary)
      install -D -m 0755 "$bin" "$rootfs/usr/local/bin/lifeline"
      ca_bundle "$rootfs"
      users "$rootfs"
      ;;
    sipp)
      unpack "$rootfs" sip-tester dash
      install -D -m 0755 "$ROOT/tests/images/sipp/sip-peer" "$rootfs/usr/local/bin/sip-peer"
      install -D -m 0644 "$ROOT/tests/fixtures/sip/uas_options_200.xml" "$rootfs/usr/share/sip-peer/uas_options_200.xml"
      install -D -m 0644 "$ROOT/tests/fixtures/sip/uas_options_503.xml" "$rootfs/usr/share/sip-peer/uas_options_503.xml"
      ln -sf dash "$rootfs/bin/sh"
      users "$rootfs"
      runs_in "$rootfs" /usr/bin/sipp -v
      ;;
    kamailio)
      unpack "$rootfs" kamailio kamailio-extra-modules
      install -D -m 0644 "$ROOT/examples/kamailio/kamailio.cfg" "$rootfs/etc/kamailio/kamailio.cfg"
      : > "$rootfs/etc/kamailio/dispatcher.list"
      mkdir -p "$rootfs/var/run/kamailio"
      users "$rootfs"
      runs_in "$rootfs" /usr/sbin/kamailio -v
      ;;
    pause)
      local src
      src="$(cd "$ROOT/tests/testenv" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
      [[ -f "$src" ]] || die "pause.c not found at $src (run tests/testenv/build.sh first)"
      mkdir -p "$rootfs"
      gcc -Os -static -Wall -Werror -DVERSION="lifeline-testenv" -o "$rootfs/pause" "$src"
      strip "$rootfs/pause"
      ;;
    *) repository "$name" >/dev/null ;;
  esac
  log "context ready: $ctx ($(du -sh "$rootfs" | cut -f1))"
}

buildah_() {
  buildah --root "$OUT/storage" --runroot "$OUT/runroot" --storage-driver vfs "$@"
}

build() {
  local name=$1 tag=${2:-} repo ref archive
  repo=$(repository "$name")
  tag=${tag:-$(default_tag "$name")}
  ref="$repo:$tag"
  archive="$OUT/$name-$tag.oci.tar"
  command -v buildah >/dev/null || die "buildah is missing: scripts/install-deps.sh installs it"
  context "$name"
  log "buildah bud $ref"
  # A fresh store per build: nothing left from an earlier build can leak in.
  rm -rf "$OUT/storage" "$OUT/runroot"
  buildah_ bud --quiet --isolation chroot --timestamp 0 \
    --build-arg "VERSION=$tag" --build-arg "REVISION=$REVISION" \
    -f "$(containerfile "$name")" -t "$ref" "$OUT/$name/context" >/dev/null
  rm -f "$archive"
  buildah_ push --quiet "$ref" "oci-archive:$archive:$ref" >/dev/null
  local inspect
  inspect=$(buildah_ inspect --type image "$ref")
  rm -rf "$OUT/storage" "$OUT/runroot"
  python3 - "$inspect" "$ref" "$archive" "$OUT/$name/context/rootfs" <<'EOF'
import json, os, sys
info, ref, archive, rootfs = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
cfg = info["OCIv1"]["config"]
size = 0
for d, _, files in os.walk(rootfs):
    for f in files:
        p = os.path.join(d, f)
        if not os.path.islink(p):
            size += os.path.getsize(p)
print(f"image     {ref}")
print(f"archive   {archive} ({os.path.getsize(archive) / 2**20:.1f} MiB compressed)")
print(f"size      {size / 2**20:.1f} MiB uncompressed")
print(f"user      {cfg.get('User', '')}")
print(f"entry     {json.dumps(cfg.get('Entrypoint'))} cmd {json.dumps(cfg.get('Cmd'))}")
labels = cfg.get("Labels") or {}
for k in sorted(labels):
    if k.startswith("org.opencontainers."):
        print(f"label     {k}={labels[k]}")
EOF
}

case "${1:-}" in
  context) context "${2:?image name}" ;;
  build) build "${2:?image name}" "${3:-}" ;;
  list) echo "lifeline sipp kamailio pause" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
