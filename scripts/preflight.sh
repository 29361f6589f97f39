#!/bin/sh
# Run on a fresh bare-metal host before deploying ringway: uses an installed `ringway` (or builds
# one from this checkout) and prints the kernel/limits table for your config.
#   scripts/preflight.sh --config /etc/ringway/ringway.toml
#   scripts/preflight.sh --connections 500000 --apply        # as root: write the sysctls
# Arguments pass through to `ringway preflight`. Exit 1 when a check fails.
set -eu
if command -v ringway >/dev/null 2>&1; then
    BIN=ringway
else
    cd "$(dirname "$0")/.."
    cargo build --release --locked >&2
    BIN=./target/release/ringway
fi
exec "$BIN" preflight "$@"
