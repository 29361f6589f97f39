#!/bin/sh
# The test command: installs what the tests need beside Rust (h11, the reference HTTP/1.1
# parser of tests/differential.rs) and runs every test.
set -eu
cd "$(dirname "$0")/.."
if ! python3 -c 'import h11' 2>/dev/null; then
    python3 -m pip install --quiet h11 || python3 -m pip install --quiet --break-system-packages h11
fi
exec cargo test --locked "$@"
