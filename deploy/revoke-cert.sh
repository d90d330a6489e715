#!/usr/bin/env bash
# Revokes a certificate of the dev CA and (re)writes the CA's CRL into a
# directory laid out as cardvaultd's tls.crl_directory expects (file named
# by the issuer hash, as `openssl rehash` would name it).
#   revoke-cert.sh CERT CA_DIR CRL_DIR
#   revoke-cert.sh --empty CA_DIR CRL_DIR     (a CRL revoking nothing)
# The CRL is valid for CRL_VALID_SECONDS (default 30 days) and replaces the
# previous one by rename, so a running cardvaultd never reads half a file.
set -euo pipefail
if [[ "${1:-}" == "--empty" ]]; then cert=""; shift; else cert=${1:?}; shift; fi
ca=${1:?usage: revoke-cert.sh CERT CA_DIR CRL_DIR}
crl_dir=${2:?usage: revoke-cert.sh CERT CA_DIR CRL_DIR}
mkdir -p "$crl_dir"
touch "$ca/index.txt"
[[ -s "$ca/crlnumber" ]] || echo 1000 >"$ca/crlnumber"
cat >"$ca/ca.cnf" <<CNF
[ ca ]
default_ca = dev_ca
[ dev_ca ]
database = $ca/index.txt
crlnumber = $ca/crlnumber
certificate = $ca/ca.crt
private_key = $ca/ca.key
default_md = sha256
default_crl_days = 30
CNF
if [[ -n "$cert" ]]; then
  openssl ca -config "$ca/ca.cnf" -revoke "$cert" -crl_reason keyCompromise 2>/dev/null
fi
hash=$(openssl x509 -in "$ca/ca.crt" -noout -hash)
openssl ca -config "$ca/ca.cnf" -gencrl -crlsec "${CRL_VALID_SECONDS:-2592000}" \
  -out "$crl_dir/.$hash.r0.tmp" 2>/dev/null
mv -f "$crl_dir/.$hash.r0.tmp" "$crl_dir/$hash.r0"
echo "revoke-cert: CRL in $crl_dir/$hash.r0"
