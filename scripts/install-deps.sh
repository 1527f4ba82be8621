#!/usr/bin/env bash
# Install the Debian packages that tests and the demo need, when missing.
set -euo pipefail
need=()
command -v kamailio >/dev/null || need+=(kamailio kamailio-extra-modules)
[[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ]] || need+=(kamailio-tls-modules)
command -v sipp >/dev/null || need+=(sip-tester)
# DNS with NAPTR/SRV records on loopback for the prober's RFC 3263 tests.
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v lua5.4 >/dev/null || need+=(lua5.4)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
