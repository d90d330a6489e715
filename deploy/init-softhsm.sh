#!/usr/bin/env bash
# Creates (or reuses) a SoftHSM2 token with its own configuration.
#   init-softhsm.sh STATE_DIR TOKEN_LABEL
# Writes STATE_DIR/softhsm2.conf (tokens under STATE_DIR/tokens) and
# STATE_DIR/user.pin (mode 0600, random). Point SOFTHSM2_CONF at the conf.
# The SO PIN is random and not kept: nothing in cardvault needs it.
set -euo pipefail
state=${1:?usage: init-softhsm.sh STATE_DIR TOKEN_LABEL}
label=${2:?usage: init-softhsm.sh STATE_DIR TOKEN_LABEL}
mkdir -p "$state/tokens"
chmod 700 "$state" "$state/tokens"
state=$(cd "$state" && pwd)
conf="$state/softhsm2.conf"
cat >"$conf" <<CONF
directories.tokendir = $state/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF=$conf
if softhsm2-util --show-slots 2>/dev/null | grep -Eq "Label:[[:space:]]+$label[[:space:]]*\$"; then
  [[ -s "$state/user.pin" ]] || { echo "init-softhsm: token $label exists but $state/user.pin is missing" >&2; exit 1; }
  echo "init-softhsm: reusing token $label in $state"
  exit 0
fi
umask 077
openssl rand -hex 16 >"$state/user.pin"
so_pin=$(openssl rand -hex 16)
softhsm2-util --init-token --free --label "$label" \
  --so-pin "$so_pin" --pin "$(cat "$state/user.pin")" >/dev/null
echo "init-softhsm: created token $label in $state"
