#!/usr/bin/env bash
# Command 1: run tillsync locally. Ensures nats-server >= 2.10 and Postgres, builds, migrates,
# starts the broker and a small simulated store fleet, and shows what flows until Ctrl-C.
# After Ctrl-C nothing it started is left running.
#
#   ./scripts/run-local.sh               # until Ctrl-C
#   ./scripts/run-local.sh --smoke 90    # exit 0 once events are applied, devices are online and
#                                        # a command is acked (exit 1 if not within 90 s); the
#                                        # test suite runs this (tests/integration/readme.rs)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

SMOKE_S=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE_S="${2:?--smoke takes a number of seconds}"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
done

NATS_PORT="${TILLSYNC_DEMO_NATS_PORT:-14222}"
HTTP_ADDR="${TILLSYNC_HTTP_ADDR:-127.0.0.1:9464}"
TENANT="${TILLSYNC_DEMO_TENANT:-demo}"
STORES="${TILLSYNC_DEMO_STORES:-3}"
DEVICES="${TILLSYNC_DEMO_DEVICES_PER_STORE:-2}"
RATE="${TILLSYNC_DEMO_RATE:-5}"
DB_NAME="${TILLSYNC_DEMO_DATABASE:-tillsync}"

pids=()
names=()   # names[i] is what pids[i] runs, for the message when one exits
started_pg=""
cleanup() {
  trap - INT TERM EXIT
  log "stopping"
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  [ -n "$started_pg" ] && stop_private_postgres
  log "stopped; logs are in $RUN_DIR"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

ensure_rust
command -v curl >/dev/null || apt_install curl
mkdir -p "$RUN_DIR"
NATS_BIN="$(ensure_nats_server)"
ADMIN_URL="$(ensure_postgres)"
case "$ADMIN_URL" in *:15432/*) started_pg=1 ;; esac
DB_URL="${ADMIN_URL%/*}/$DB_NAME"
if ! psql "$ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
  log "creating database $DB_NAME"
  psql "$ADMIN_URL" -qc "CREATE DATABASE \"$DB_NAME\"" >/dev/null
fi

if [ -n "${TILLSYNC_BIN_DIR:-}" ]; then
  BIN="$TILLSYNC_BIN_DIR"   # binaries built already (the test suite's smoke run)
else
  log "building (cargo build --bins)"
  cargo build --quiet --bins
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
fi

# NATS with authorization on (docs/security.md): service keys once, devices activated below.
# Clients connect only over TLS with the one client certificate `auth tls` made (each made once;
# a run dir from before TLS gets the TLS files added).
AUTH="$RUN_DIR/auth"
[ -f "$AUTH/nats-auth.conf" ] || "$BIN/tillsync" auth init --dir "$AUTH" >/dev/null
[ -f "$AUTH/tls.conf" ] || "$BIN/tillsync" auth tls --dir "$AUTH" --host 127.0.0.1 --host localhost >/dev/null
# nats-server resolves an include relative to the including file, here $RUN_DIR.
printf 'include "auth/nats-auth.conf"\ninclude "auth/tls.conf"\n' >"$RUN_DIR/nats.conf"
log "starting nats-server $("$NATS_BIN" --version | sed 's/.*v/v/') on 127.0.0.1:$NATS_PORT with TLS and authorization (JetStream in $RUN_DIR/nats)"
"$NATS_BIN" -c "$RUN_DIR/nats.conf" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$RUN_DIR/nats" >"$RUN_DIR/nats.log" 2>&1 &
pids+=($!); names+=("nats-server (nats.log)")
export NATS_URL="tls://127.0.0.1:$NATS_PORT" DATABASE_URL="$DB_URL" TILLSYNC_HTTP_ADDR="$HTTP_ADDR"
# Read by the broker, `tillsync` and `tillsync-edge` alike.
export NATS_CA_FILE="$AUTH/ca.pem" NATS_CERT_FILE="$AUTH/client.pem" NATS_KEY_FILE="$AUTH/client-key.pem"
# The CLI acts as the operator (the variable goes only to `tillsync`); the broker gets its own
# keys below and every till connects with the key it was activated with.
OPERATOR_CREDS="$AUTH/operator.nk"
cli() { NATS_CREDS="$OPERATOR_CREDS" "$BIN/tillsync" "$@"; }

log "migrating $DB_URL"
cli migrate >/dev/null
cli tenants add "$TENANT" >/dev/null 2>&1 || true

# Two approvers of the tenant, each with their own key (approvals are signatures, see
# docs/operations.md): seeds made once under the run dir, registered again on a rerun only if
# the database lost them or holds another key for them. The portal loop signs as bob; a refund
# or a void needs both: --approve-as bob=... --approve-as carol=...
APPROVERS="$RUN_DIR/approvers"
mkdir -p "$APPROVERS"
register_approver() {
  local who="$1" key="$APPROVERS/$1.nk" out
  [ -f "$key" ] || cli keys generate "$key" >/dev/null
  out=$(cli approvers add --tenant "$TENANT" "$who" --key-file "$key" 2>&1) && return 0
  case "$out" in
    *"already registered with this very key"*) ;;
    *"already registered with another key"*)
      cli approvers revoke --tenant "$TENANT" "$who" >/dev/null
      cli approvers add --tenant "$TENANT" "$who" --key-file "$key" >/dev/null ;;
    *) die "tillsync approvers add $who failed: $out" ;;
  esac
}
register_approver bob
register_approver carol

log "starting tillsync-broker (metrics on http://$HTTP_ADDR/metrics)"
# Every demo till activates from 127.0.0.1 within a minute, and an activation connect spends its
# address's budget (docs/security.md, "Limits"): the budget covers the whole fleet twice.
NATS_CREDS="$AUTH/broker.nk" TILLSYNC_AUTH_CALLOUT_CREDS="$AUTH/auth-callout.nk" \
  TILLSYNC_AUTH_ISSUER_SEED="$AUTH/issuer.nk" TILLSYNC_NATS_SYSTEM_CREDS="$AUTH/system.nk" \
  TILLSYNC_SIGNING_KEY_FILE="$AUTH/signing.nk" \
  TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN="${TILLSYNC_AUTH_MAX_REFUSALS_PER_ADDRESS_PER_MIN:-$(( STORES * DEVICES * 2 > 60 ? STORES * DEVICES * 2 : 60 ))}" \
  RUST_LOG="${RUST_LOG:-info}" "$BIN/tillsync-broker" >"$RUN_DIR/broker.log" 2>&1 &
pids+=($!); names+=("tillsync-broker (broker.log)")
for _ in $(seq 1 100); do
  curl -fs "http://$HTTP_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 "${pids[-1]}" 2>/dev/null || die "broker exited; see $RUN_DIR/broker.log"
  sleep 0.2
done
curl -fs "http://$HTTP_ADDR/readyz" >/dev/null || die "broker not ready; see $RUN_DIR/broker.log"

log "activating the fleet's tills (tillsync devices add, then tillsync-edge activate; $RUN_DIR/activate.log)"
mkdir -p "$RUN_DIR/edge"
for s in $(seq 1 "$STORES"); do
  for d in $(seq 1 "$DEVICES"); do
    db="$RUN_DIR/edge/$TENANT-store-$s-till-$d.db"
    [ -f "${db%.db}.identity.json" ] && continue
    code=$(cli --json devices add --tenant "$TENANT" --store "store-$s" --device "till-$d" \
      | sed -n 's/.*"code": "\([A-Z0-9-]*\)".*/\1/p')
    [ -n "$code" ] || die "tillsync devices add gave no code for till-$d of store-$s"
    "$BIN/tillsync-edge" activate --code "$code" --db "$db" >>"$RUN_DIR/activate.log" 2>&1 \
      || die "activating till-$d of store-$s failed; see $RUN_DIR/activate.log"
  done
done

log "starting a simulated fleet: $STORES stores x $DEVICES devices, $RATE events/s each ($RUN_DIR/fleet.log)"
"$BIN/tillsync-edge" simulate --nats-url "$NATS_URL" --tenant "$TENANT" --stores "$STORES" \
  --devices-per-store "$DEVICES" --rate "$RATE" --data-dir "$RUN_DIR/edge" >>"$RUN_DIR/fleet.log" 2>&1 &
pids+=($!); names+=("tillsync-edge simulate (fleet.log)")

# Now and then, act as the portal: a settings patch to a whole store. Its children go with it.
(
  trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM
  while true; do
    cli commands send --tenant "$TENANT" --store store-1 --kind settings_patch \
      --payload-json '{"revision": 1, "settings": {"tip_mode": "off"}}' \
      --requested-by alice --approve-as "bob=$APPROVERS/bob.nk" --ttl-s 300 >>"$RUN_DIR/portal.log" 2>&1 &
    wait $! || true
    sleep 10 &
    wait $!
  done
) &
pids+=($!); names+=("the portal loop (portal.log)")

log "flowing; Ctrl-C to stop"
q() { psql "$DB_URL" -Atqc "$1" 2>/dev/null || echo "?"; }
started=$SECONDS
while true; do
  sleep 2
  applied=$(q "SELECT count(*) FROM processed_events WHERE outcome = 'applied'")
  orders=$(q "SELECT count(*) FROM orders")
  payments=$(q "SELECT count(*) FROM payments")
  quarantined=$(q "SELECT count(*) FROM quarantine")
  online=$(q "SELECT count(*) FROM devices WHERE online")
  delivered=$(q "SELECT count(*) FROM command_log WHERE state = 'delivered'")
  acked=$(q "SELECT count(*) FROM command_log WHERE state = 'acked'")
  printf '%s  events applied %-7s orders %-6s payments %-6s quarantined %-4s devices online %-3s commands delivered %-4s acked %s\n' \
    "$(date +%T)" "$applied" "$orders" "$payments" "$quarantined" "$online" "$delivered" "$acked"
  for i in "${!pids[@]}"; do
    # Ctrl-C reaches the components too: give this script's own INT trap the chance to run
    # (and stop quietly) before calling their exit a failure.
    kill -0 "${pids[$i]}" 2>/dev/null || { sleep 0.5; die "${names[$i]} exited; see $RUN_DIR"; }
  done
  if [ -n "$SMOKE_S" ]; then
    if [ "${applied:-0}" -gt 0 ] 2>/dev/null && [ "${online:-0}" -gt 0 ] 2>/dev/null && [ "${acked:-0}" -gt 0 ] 2>/dev/null; then
      log "smoke: events applied, devices online and a command acked after $((SECONDS - started)) s"
      exit 0
    fi
    [ $((SECONDS - started)) -lt "$SMOKE_S" ] \
      || die "smoke: not all of events applied ($applied), devices online ($online), commands acked ($acked) within $SMOKE_S s; see $RUN_DIR/*.log"
  fi
done
