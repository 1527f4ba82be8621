#!/usr/bin/env bash
# Install the Debian packages that tests, the demo and the image builds need, when missing.
#   kamailio, sipp, lua, openssl       SIP end-to-end tests and the demo
#   iptables                           tests/vantage.rs cuts one edge's uplink (rules scoped to its 127.x address)
#   python3-matplotlib                 the demo's timeline picture
#   buildah, umoci                     `make image` (daemonless build) and the image test (unpack for runc)
#   containerd, runc, CNI plugins      the real node of the testenv (NODE=real)
#   iproute2, gcc + libc6-dev          the pod bridge; the static pause binary
set -euo pipefail
need=()
command -v kamailio >/dev/null || need+=(kamailio kamailio-extra-modules)
[[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ]] || need+=(kamailio-tls-modules)
command -v sipp >/dev/null || need+=(sip-tester)
# DNS with NAPTR/SRV records on loopback for the prober's RFC 3263 tests.
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v lua5.4 >/dev/null || need+=(lua5.4)
command -v openssl >/dev/null || need+=(openssl)
command -v iptables >/dev/null || need+=(iptables)
# promtool checks and unit-tests the chart's alerts; Debian ships it with the server.
command -v promtool >/dev/null || need+=(prometheus)
command -v buildah >/dev/null || need+=(buildah)
command -v umoci >/dev/null || need+=(umoci)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v gcc >/dev/null || need+=(gcc)
[[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/aarch64-linux-gnu/libc.a ]] || need+=(libc6-dev)
command -v python3 >/dev/null || need+=(python3)
# The demo's timeline picture (target/demo/timeline.png), drawn by Debian's Python.
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  # The packages would start their daemons (Kamailio on :5060, Prometheus on :9090,
  # containerd); tests start their own, so keep the system ones from starting.
  guard=/usr/sbin/policy-rc.d
  if [[ ! -e $guard ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee $guard >/dev/null
    $SUDO chmod +x $guard
    trap '$SUDO rm -f $guard' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# `make image` unpacks Debian packages (`apt-get download`): it needs the package lists.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  $SUDO apt-get update -qq
fi
