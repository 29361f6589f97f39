#!/bin/sh
# Coverage-guided fuzzing with AFL++ on stable Rust (cargo-afl), over the targets of
# tests/fuzz.rs: request head, response head, chunked body, frame tracker, TLS records, config.
#   scripts/fuzz-afl.sh [SECONDS]      (default 600)
# Installs cargo-afl when missing (it builds AFL++ for this toolchain). Crashes land in
# fuzz-afl/out/default/crashes/: the first byte picks the target (0 request head, 1 response
# head, 2 chunked, 3 frames, 4 TLS records, 5 config); save the rest as tests/fuzz-corpus/<target>/crash-NAME
# so that `cargo test` replays it for ever.
set -eu
cd "$(dirname "$0")/../fuzz-afl"
secs=${1:-600}
command -v cargo-afl >/dev/null 2>&1 || cargo install --locked cargo-afl
cargo afl build --release --locked
mkdir -p in
python3 - <<'PY'
import pathlib
root = pathlib.Path("..")
seeds = {
    0: [b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close, X-A\r\n\r\n"],
    1: [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"],
    2: [b"5\r\nhello\r\n1a;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n"],
    3: [bytes([0x81, 0x85, 1, 2, 3, 4]) + b"hello" + bytes([0x82, 126, 0, 200]) + b"x" * 200],
    4: [bytes([4, 3, 0, 5]) + b"hello" + bytes([3, 1, 1, 0, 3]) + b"abc" + bytes([1, 2, 1, 0]),
        bytes([0, 9, 23, 3, 3, 0, 17]) + bytes(range(17))],
    5: [(root / "examples/ringway.toml").read_bytes()],
}
names = {0: "request-head", 1: "response-head", 2: "chunked", 3: "frame-tracker",
         4: "tls-records", 5: "config"}
n = 0
for k, vs in seeds.items():
    corpus = root / "tests/fuzz-corpus" / names[k]
    vs = vs + ([p.read_bytes() for p in sorted(corpus.iterdir())] if corpus.is_dir() else [])
    for v in vs:
        (pathlib.Path("in") / f"seed{n}").write_bytes(bytes([k]) + v)
        n += 1
PY
AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
    cargo afl fuzz -i in -o out -V "$secs" target/release/fuzz-afl
