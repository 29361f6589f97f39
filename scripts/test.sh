#!/bin/sh
# The test command (the README's; `.ci/run` calls it on a clean clone).
#
# 1. Installs the real peers the tests talk to, where it can (as root, with apt): openssl
#    (s_client), Chromium (tests/browser.rs opens wss:// in it), nginx (tests/upstreams.rs checks
#    that ringway's hash and ip_hash pick the server nginx picks), prometheus (promtool checks
#    /metrics), haproxy (tests/proxy_protocol.rs puts it in front as an L4 balancer), systemd
#    (systemd-socket-activate, tests/upgrade.rs), nghttp2-client (nghttp and h2load), nghttp2-server
#    (nghttpd: tests/http2_conformance.rs compares its answers to invalid frames with ringway's) and curl
#    (tests/http2.rs); and from PyPI h11 (tests/differential.rs's reference parser),
#    prometheus-client (tests/metrics.rs's exposition parsers) and h2 (tests/http2.rs's
#    WebSocket and hostile HTTP/2 clients, tests/h2/).
# 2. Runs every test (`cargo test --locked`, with any arguments given here).
# 3. Ends with a summary naming every test that skipped because a peer was missing, and why:
#    a green run says what it did not check.
set -u
cd "$(dirname "$0")/.."

missing=""
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/sbin/nginx ] || missing="$missing nginx"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
[ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v systemd-socket-activate >/dev/null 2>&1 || missing="$missing systemd"
command -v h2load >/dev/null 2>&1 || missing="$missing nghttp2-client"
[ -x /usr/sbin/nghttpd ] || missing="$missing nghttp2-server"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing$missing" >&2
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $missing; }; then
            echo "test.sh: could not install$missing: the tests that need them say so below" >&2
        fi
    else
        echo "test.sh: not root with apt-get: not installing$missing; the tests that need them are named at the end" >&2
    fi
fi
for m in h11:h11 prometheus_client:prometheus-client h2:h2; do
    if ! python3 -c "import ${m%%:*}" 2>/dev/null; then
        python3 -m pip install --quiet "${m#*:}" 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages "${m#*:}" \
            || echo "test.sh: could not install ${m#*:} from PyPI" >&2
    fi
done

skips=$(mktemp "${TMPDIR:-/tmp}/ringway-skips.XXXXXX")
trap 'rm -f "$skips"' EXIT
export RINGWAY_SKIP_LOG="$skips"
status=0
cargo test --locked "$@" || status=$?

echo
if [ -s "$skips" ]; then
    n=$(sort -u "$skips" | wc -l)
    echo "==== test.sh: $n test(s) SKIPPED: this run did not check what they are for:"
    sort -u "$skips" | sed 's/^/  /'
else
    echo "==== test.sh: no test skipped: every test ran against its real peers"
fi
if [ "$status" -eq 0 ]; then
    echo "==== test.sh: all tests passed"
else
    echo "==== test.sh: tests FAILED (cargo test exit status $status)"
fi
exit "$status"
