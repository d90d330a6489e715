#!/usr/bin/env bash
# Dev quickstart: installs packages, builds, creates the SoftHSM2 token, the
# dev PKI and config under var/dev/ (reused when present), and runs cardvaultd
# in the foreground on 127.0.0.1:9443.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
state=var/dev
mkdir -p "$state"
deploy/init-softhsm.sh "$state/softhsm" cardvault-dev
deploy/make-pki.sh "$state/pki" "$state/ca"
deploy/write-config.sh "$state" cardvault-dev 127.0.0.1:9443 "$state/cardvaultd.textproto"
export SOFTHSM2_CONF=$PWD/$state/softhsm/softhsm2.conf
echo "quickstart: try   echo 4111111111111111 | build/client/cardvault tokenize"
exec build/server/cardvaultd --config "$state/cardvaultd.textproto"
