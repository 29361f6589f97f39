#!/bin/sh
# ringway vs nginx vs HAProxy vs direct, side by side, written to BENCHMARKS.md.
#   scripts/bench.sh --quick     # about 4 minutes
#   scripts/bench.sh             # the full run (idle 100k for all; largest idle run: ringway
#                                # 300k, nginx and HAProxy 200k; wss rows), under 30 minutes
# Builds ringway in release, installs nginx and haproxy from Debian if missing. Raises a few
# network sysctls (port range, backlogs) when run as root; see BENCHMARKS.md for what it changed.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --locked
if ! command -v nginx >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy >/dev/null
    else
        echo "bench.sh: nginx and haproxy are needed (apt-get install nginx-light haproxy)" >&2
        exit 2
    fi
fi
exec timeout 2100 python3 scripts/bench.py "$@"
