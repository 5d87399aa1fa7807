#!/bin/sh
# The docker compose demo fleet (docker-compose.yml): `provision` (as the operator) issues an
# activation code per simulated till into /codes; `run` (as the store) activates each till
# that has no identity yet, then runs the simulation. docs/security.md explains activation.
set -eu
T="${FLEET_TENANT:-demo}"; S="${FLEET_STORES:-3}"; D="${FLEET_DEVICES:-4}"
case "${1:-}" in
provision)
  tillsync migrate
  tillsync tenants add "$T" --name Demo
  for s in $(seq 1 "$S"); do for d in $(seq 1 "$D"); do
    f="/codes/$T-store-$s-till-$d.code"
    [ -f "$f" ] && continue
    tillsync --json devices add --tenant "$T" --store "store-$s" --device "till-$d" \
      | sed -n 's/.*"code": "\([A-Z0-9-]*\)".*/\1/p' > "$f"
  done; done ;;
run)
  for s in $(seq 1 "$S"); do for d in $(seq 1 "$D"); do
    db="/data/$T-store-$s-till-$d.db"
    [ -f "/data/$T-store-$s-till-$d.identity.json" ] && continue
    tillsync-edge activate --db "$db" --code "$(cat "/codes/$T-store-$s-till-$d.code")"
  done; done
  exec tillsync-edge simulate --tenant="$T" --stores="$S" --devices-per-store="$D" \
    --rate="${FLEET_RATE:-2}" --data-dir=/data ;;
*) echo "usage: fleet.sh provision|run" >&2; exit 2 ;;
esac
