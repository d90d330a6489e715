#!/usr/bin/env bash
# Creates (or reuses) a development PKI for mutual TLS, EC P-256.
#   make-pki.sh OUT_DIR CA_DIR [TRUST_DOMAIN]
#     OUT_DIR gets exactly: ca.crt server.crt server.key pos.crt pos.key
#     processor.crt processor.key auditor.crt auditor.key admin.crt admin.key
#     watchdog.crt watchdog.key (the listener watchdog's own client, no role)
#     CA_DIR keeps ca.key (never copied into OUT_DIR).
#   make-pki.sh --client NAME URI_SAN OUT_DIR CA_DIR [--not-before TIME]
#       [--not-after TIME] [--eku PURPOSE]
#     issues one more client pair NAME.crt/NAME.key (URI_SAN may be "-" for a
#     certificate with only a CN). For tests of refused certificates: TIME is
#     UTC YYYYMMDDHHMMSSZ (defaults: now, and 825 days on), PURPOSE replaces
#     the extendedKeyUsage clientAuth (e.g. serverAuth).
# Client identities are URI SANs spiffe://TRUST_DOMAIN/NAME (default
# cardvault.dev); the server certificate is valid for localhost and 127.0.0.1.
set -euo pipefail

issue() {  # issue NAME SUBJECT_CN EXTFILE_CONTENT OUT_DIR CA_DIR [START END]
  local name=$1 cn=$2 ext=$3 out=$4 ca=$5 start=${6:-} end=${7:-}
  [[ -s "$out/$name.crt" && -s "$out/$name.key" ]] && return 0
  local tmp
  tmp=$(mktemp -d)
  (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/key.pem" 2>/dev/null)
  openssl pkcs8 -topk8 -nocrypt -in "$tmp/key.pem" -out "$tmp/$name.key"
  openssl req -new -key "$tmp/key.pem" -subj "/O=cardvault dev/CN=$cn" -out "$tmp/req.csr"
  printf '%s\n' "$ext" >"$tmp/ext.cnf"
  if [[ -n "$start$end" ]]; then
    sign_with_dates "$tmp" "$ca" "$start" "$end" "$out/$name.crt"
  else
    openssl x509 -req -in "$tmp/req.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
      -extfile "$tmp/ext.cnf" -out "$out/$name.crt" 2>/dev/null
  fi
  install -m 600 "$tmp/$name.key" "$out/$name.key"
  rm -rf "$tmp"
}

# OpenSSL 3.0's `x509 -req` cannot set notBefore, `ca` can: it signs
# TMP/req.csr with TMP/ext.cnf from a throwaway database in TMP, so the CA's
# own index (used by revoke-cert.sh) is left as it was.
sign_with_dates() {  # sign_with_dates TMP CA_DIR START END OUT_CRT
  local tmp=$1 ca=$2 start=$3 end=$4 crt=$5
  local dates=()
  [[ -n "$start" ]] && dates+=(-startdate "$start")
  if [[ -n "$end" ]]; then dates+=(-enddate "$end"); else dates+=(-days 825); fi
  mkdir "$tmp/db"
  touch "$tmp/db/index.txt"
  openssl rand -hex 16 >"$tmp/db/serial"
  cat >"$tmp/ca.cnf" <<CNF
[ ca ]
default_ca = throwaway
[ throwaway ]
database = $tmp/db/index.txt
new_certs_dir = $tmp/db
serial = $tmp/db/serial
certificate = $ca/ca.crt
private_key = $ca/ca.key
default_md = sha256
policy = any
unique_subject = no
[ any ]
organizationName = optional
commonName = supplied
CNF
  openssl ca -batch -notext -preserveDN -config "$tmp/ca.cnf" \
    -in "$tmp/req.csr" -extfile "$tmp/ext.cnf" "${dates[@]}" -out "$crt" \
    2>"$tmp/ca.log" || { cat "$tmp/ca.log" >&2; return 1; }
}

client_ext() {  # client_ext URI_SAN [PURPOSE]
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=${2:-clientAuth}"
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
  shift 5
  start="" end="" eku=clientAuth
  while (($#)); do
    case "$1" in
      --not-before) start=${2:?}; shift 2 ;;
      --not-after) end=${2:?}; shift 2 ;;
      --eku) eku=${2:?}; shift 2 ;;
      *) echo "make-pki: unknown option $1" >&2; exit 2 ;;
    esac
  done
  ensure_ca "$out" "$ca"
  issue "$name" "$name" "$(client_ext "$uri" "$eku")" "$out" "$ca" "$start" "$end"
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
for name in pos processor auditor admin watchdog node; do
  issue "$name" "$name" "$(client_ext "spiffe://$domain/$name")" "$out" "$ca"
done
echo "make-pki: PKI ready in $out"
