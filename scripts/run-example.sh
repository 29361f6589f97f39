#!/bin/sh
# Build ringway, start two echo backends, and run the proxy on examples/ringway.toml.
# Then try:  curl http://127.0.0.1:8080/headers   or any WebSocket client on ws://127.0.0.1:8080/ws/
set -eu
cd "$(dirname "$0")/.."
cargo build --release
./target/release/ringway echo --listen 127.0.0.1:9001 --listen 127.0.0.1:9002 &
ECHO_PID=$!
trap 'kill $ECHO_PID 2>/dev/null || true' EXIT INT TERM
exec_status=0
./target/release/ringway run --config examples/ringway.toml || exec_status=$?
exit $exec_status
