#!/usr/bin/env bash
# Install the Debian packages that tests and the demo need, when missing.
set -euo pipefail
need=()
command -v kamailio >/dev/null || need+=(kamailio kamailio-extra-modules)
command -v sipp >/dev/null || need+=(sip-tester)
command -v lua5.4 >/dev/null || need+=(lua5.4)
command -v openssl >/dev/null || need+=(openssl)
# promtool checks and unit-tests the chart's alerts; Debian ships it with the server.
command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  # The packages would start their daemons (Kamailio on :5060, Prometheus on :9090);
  # tests start their own on loopback, so keep the system ones from starting.
  guard=/usr/sbin/policy-rc.d
  if [[ ! -e $guard ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee $guard >/dev/null
    $SUDO chmod +x $guard
    trap '$SUDO rm -f $guard' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
