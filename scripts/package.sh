#!/usr/bin/env bash
# Builds the tillsync-edge .deb (release build) into target/debian/:
#   ./scripts/package.sh                                        # this machine's architecture
#   ./scripts/package.sh --target aarch64-unknown-linux-gnu     # a Raspberry Pi (see docs/edge-bridge.md)
# Extra arguments go to `cargo deb`.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_rust
deb="$(ensure_cargo_deb)"
"$deb" deb -p tillsync-edge "$@"
