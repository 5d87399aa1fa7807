#!/usr/bin/env bash
# Command 2: the whole test suite (format, lints, unit and integration tests against real
# nats-server and Postgres that the harness starts per test). Installs what it needs.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_rust
export TILLSYNC_NATS_SERVER="$(ensure_nats_server)"
export TILLSYNC_TEST_DATABASE_URL="$(ensure_postgres)"
ensure_venv
export TILLSYNC_PYTHON="$TOOLS/venv/bin/python"
ensure_promtool
export TILLSYNC_PROMTOOL="$(command -v promtool)"
ensure_exporters
export TILLSYNC_CARGO_DEB="$(ensure_cargo_deb)"
log "nats-server: $("$TILLSYNC_NATS_SERVER" --version)"
log "postgres:    $TILLSYNC_TEST_DATABASE_URL"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Integration tests run the binaries (kill -9 tests, the CLI, the edge bridge): build them first,
# since `cargo test` builds a package's binaries only for that package's own tests.
log "cargo build --bins"
cargo build --workspace --bins --quiet
log "cargo test"
cargo test --workspace --no-fail-fast "$@"
