#!/usr/bin/env bash
# Creates (or reuses) a development PKI for mutual TLS, EC P-256.
#   make-pki.sh OUT_DIR CA_DIR [TRUST_DOMAIN]
#     OUT_DIR gets exactly: ca.crt server.crt server.key pos.crt pos.key
#     processor.crt processor.key auditor.crt auditor.key admin.crt admin.key
#     CA_DIR keeps ca.key (never copied into OUT_DIR).
#   make-pki.sh --client NAME URI_SAN OUT_DIR CA_DIR
#     issues one more client pair NAME.crt/NAME.key (URI_SAN may be "-" for a
#     certificate with only a CN).
# Client identities are URI SANs spiffe://TRUST_DOMAIN/NAME (default
# cardvault.dev); the server certificate is valid for localhost and 127.0.0.1.
set -euo pipefail

issue() {  # issue NAME SUBJECT_CN EXTFILE_CONTENT OUT_DIR CA_DIR
  local name=$1 cn=$2 ext=$3 out=$4 ca=$5
  [[ -s "$out/$name.crt" && -s "$out/$name.key" ]] && return 0
  local tmp
  tmp=$(mktemp -d)
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/key.pem" 2>/dev/null)
  openssl pkcs8 -topk8 -nocrypt -in "$tmp/key.pem" -out "$tmp/$name.key"
  openssl req -new -key "$tmp/key.pem" -subj "/O=cardvault dev/CN=$cn" -out "$tmp/req.csr"
  printf '%s\n' "$ext" >"$tmp/ext.cnf"
  openssl x509 -req -in "$tmp/req.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
    -extfile "$tmp/ext.cnf" -out "$out/$name.crt" 2>/dev/null
  install -m 600 "$tmp/$name.key" "$out/$name.key"
  rm -rf "$tmp"
}

client_ext() {  # client_ext URI_SAN
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  [[ "$1" != "-" ]] && ext+=$'\n'"subjectAltName=URI:$1"
  printf '%s' "$ext"
}

ensure_ca() {  # ensure_ca OUT_DIR CA_DIR
  local out=$1 ca=$2
  mkdir -p "$out" "$ca"
  chmod 700 "$ca"
  if [[ ! -s "$ca/ca.key" ]]; then
    (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$ca/ca.key" 2>/dev/null)
    openssl req -new -x509 -key "$ca/ca.key" -sha256 -days 3650 \
      -subj "/O=cardvault dev/CN=cardvault dev CA $(openssl rand -hex 4)" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$ca/ca.crt"
  fi
  cp "$ca/ca.crt" "$out/ca.crt"
}

if [[ "${1:-}" == "--client" ]]; then
  name=${2:?}; uri=${3:?}; out=${4:?}; ca=${5:?}
  ensure_ca "$out" "$ca"
  issue "$name" "$name" "$(client_ext "$uri")" "$out" "$ca"
  exit 0
fi

out=${1:?usage: make-pki.sh OUT_DIR CA_DIR [TRUST_DOMAIN]}
ca=${2:?usage: make-pki.sh OUT_DIR CA_DIR [TRUST_DOMAIN]}
domain=${3:-cardvault.dev}
ensure_ca "$out" "$ca"
issue server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1" "$out" "$ca"
for name in pos processor auditor admin; do
  issue "$name" "$name" "$(client_ext "spiffe://$domain/$name")" "$out" "$ca"
done
echo "make-pki: PKI ready in $out"
