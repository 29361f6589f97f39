#!/bin/sh
# ringway vs nginx vs HAProxy vs direct, side by side, written to BENCHMARKS.md.
#   scripts/bench.sh --quick     # about 4 minutes
#   scripts/bench.sh             # the full run (idle 100k for all; largest idle run, in a
#                                # network namespace of its own (scripts/scale.py): ringway
#                                # 500k, nginx and HAProxy 200k; wss rows), about 30 minutes
#   scripts/bench.sh --against OLD [--rounds N]
#                                # this build beside the ringway binary OLD, about 15 minutes:
#                                # user-space instructions per message and per handshake
#                                # (callgrind, exact), then CPU per message (user-space and
#                                # total), per handshake and KiB per idle WebSocket, interleaved
#                                # rounds, as new ÷ old with an A/A noise floor from the same run
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
# perf sorts a round of each proxy's CPU by kernel symbol (scripts/kernel_share.py); without
# it those rows say "not run".
if ! command -v perf >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 \
        || echo "bench.sh: linux-perf could not be installed: the rows of where the CPU goes are left out" >&2
fi
if [ "${1:-}" = "--against" ]; then
    old=${2:?"--against needs the baseline ringway binary"}
    shift 2
    # Copies: a build while this runs cannot change what is measured.
    work=$(mktemp -d "${TMPDIR:-/tmp}/ringway-against.XXXXXX")
    cp target/release/ringway "$work/new"
    cp "$old" "$work/old"
    if command -v valgrind >/dev/null 2>&1; then
        timeout 1200 python3 scripts/instructions.py --build "new=$work/new" --build "old=$work/old"
    else
        echo "bench.sh: valgrind not installed: no instruction counts (apt-get install valgrind)" >&2
    fi
    exec timeout 2100 python3 scripts/ab.py --build "new=$work/new" --build "old=$work/old" --aa --rounds 3 "$@"
fi
exec timeout 2100 python3 scripts/bench.py "$@"
