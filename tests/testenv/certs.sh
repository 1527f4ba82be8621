#!/usr/bin/env bash
# Generate the testenv PKI with openssl into target/testenv/certs (kept across
# up/down; regenerated only when missing or when FORCE=1):
#   ca.{crt,key}          cluster CA (signs everything, = --client-ca-file)
#   apiserver.{crt,key}   serving cert: 127.0.0.1, localhost, 10.96.0.1, kubernetes.default...
#   admin.{crt,key}       CN=testenv-admin, O=system:masters
#   kcm.{crt,key}         CN=system:kube-controller-manager (bootstrap RBAC user)
#   sa.{key,pub}          service-account token signing keypair
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$CERTS"
cd "$CERTS"
if [[ "${FORCE:-0}" != 1 && -s ca.crt && -s apiserver.crt && -s admin.crt && -s kcm.crt && -s sa.key && -s sa.pub ]] &&
   openssl x509 -checkend 86400 -noout -in apiserver.crt >/dev/null; then
  exit 0
fi
log "certs: generating PKI in $CERTS"
rm -f ./*.crt ./*.key ./*.pub ./*.csr ./*.srl ./*.ext

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=testenv-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null

issue() { # name subject ext...
  local name="$1" subj="$2"; shift 2
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  printf '%s\n' "$@" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue apiserver "/CN=kube-apiserver" \
  "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
  "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
issue admin "/O=system:masters/CN=testenv-admin" \
  "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
issue kcm "/CN=system:kube-controller-manager" \
  "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
rm -f ca.srl

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
openssl pkey -in sa.key -pubout -out sa.pub
chmod 600 ./*.key
log "certs: done"
