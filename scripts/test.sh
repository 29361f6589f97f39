#!/bin/sh
# The test command: installs what the tests need beside Rust (h11, the reference HTTP/1.1
# parser of tests/differential.rs; prometheus-client, the Prometheus text and OpenMetrics
# parsers tests/metrics.rs reads /metrics with) and runs every test.
set -eu
cd "$(dirname "$0")/.."
for m in h11:h11 prometheus_client:prometheus-client; do
    if ! python3 -c "import ${m%%:*}" 2>/dev/null; then
        python3 -m pip install --quiet "${m#*:}" || python3 -m pip install --quiet --break-system-packages "${m#*:}"
    fi
done
exec cargo test --locked "$@"
