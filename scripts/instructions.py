#!/usr/bin/env python3
"""User-space instructions per echoed message and per handshake, counted by callgrind: exact
and repeatable where CPU time is not (these machines are shared, and user-space time is read in
10 ms ticks). Compares builds side by side:

    python3 scripts/instructions.py --build now=target/release/ringway --build before=OTHER

For each build the proxy (one worker) runs under `valgrind --tool=callgrind`; after a warm-up
load, the counters are zeroed (`callgrind_control -z`), a measured load runs — one connection,
closed loop, so every message is one round trip through the proxy with no batching, whatever
the speed under valgrind — and the counters are dumped (`callgrind_control -d`). Reported:
instructions per 64 B and per 4 KiB echoed message, per 64 B message at 100 connections (the
load `scripts/bench.sh` puts on the proxy, where a loop turn carries many completions and its
fixed cost is shared; under valgrind the batching is not the native run's, so this figure
compares builds, not loads; the proxy runs on CPU 0 and everything else on CPU 1, without
which the batching, and this figure, changed from one build to the next), per plain WebSocket
handshake (accept,
parse, upstream connect, 101, close), and with --tls per wss message and per full TLS 1.3
handshake. The load generator and the echo backend are the current build's, outside valgrind.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ringway")
BACKEND = "127.0.1.1:9000"
HEARTBEAT = False


def wait_port(port, timeout=60):
    import socket
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {port} never listened")


def bench(*args):
    r = subprocess.run(["taskset", "-c", "1", BIN, "bench", *args, "--json", "--quiet"], capture_output=True, text=True, timeout=300)
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"ringway bench {' '.join(args)} failed: {r.stderr.strip()}") from None


def measure(binary, work, port, tls, loads, keep=None, label=""):
    """{load name: instructions per unit} for one build (each load's callgrind dump copied to
    `keep`, when given, as cg-LABEL-LOAD.out: `callgrind_annotate` shows it per function)."""
    cfg = os.path.join(work, f"ringway-{port}.toml")
    tls_line = ""
    # Heartbeats that never fire during the loads (a tunnel then carries their state).
    heartbeat_line = 'heartbeat = { interval = "300s", timeout = "10s" }' if HEARTBEAT else ""
    if tls:
        tls_line = f'tls = {{ cert = "{tls[0]}", key = "{tls[1]}", protocols = ["TLSv1.3"] }}'
    with open(cfg, "w") as f:
        f.write(f"""[runtime]
workers = 1
max_connections = 2000
access_log = false
shutdown_grace = "1s"

[[upstream]]
name = "echo"
servers = [{{ addr = "{BACKEND}" }}]

[[server]]
listen = ["127.0.0.1:{port}"]
{tls_line}

[[server.location]]
path = "/"
upstream = "echo"
{heartbeat_line}
""")
    out = os.path.join(work, f"cg-{port}.%p.out")
    p = subprocess.Popen(["taskset", "-c", "0", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, "run", "--config", cfg],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = {}
    try:
        wait_port(port)
        scheme = "wss" if tls else "ws"
        target = f"{scheme}://127.0.0.1:{port}/ws/"
        extra = ["--insecure"] if tls else []
        for name, warm, args, unit in loads:
            bench(*warm, "--target", target, *extra)
            subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=60)
            r = bench(*args, "--target", target, *extra)
            before = set(glob.glob(out.replace("%p", str(p.pid)) + "*"))
            subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=60)
            new = set(glob.glob(out.replace("%p", str(p.pid)) + "*")) - before
            total = None
            for path in new:
                with open(path) as f:
                    for line in f:
                        if line.startswith("summary:"):
                            total = int(line.split()[1])
            n = r[unit]
            if keep:
                for path in new:
                    shutil.copy(path, os.path.join(keep, f"cg-{label}-{name}.out"))
            res[name] = total / n if total and n else float("nan")
            print(f"  {os.path.basename(binary)} {name}: {total} instructions / {n} = {res[name]:.0f}", file=sys.stderr)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        for f in glob.glob(out.replace("%p", "*") + "*"):
            os.remove(f)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True, metavar="NAME=BINARY")
    ap.add_argument("--messages-secs", type=int, default=4)
    ap.add_argument("--handshakes", type=int, default=600)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--heartbeat", action="store_true",
                    help="the location has a heartbeat (one that does not fire during the loads)")
    ap.add_argument("--keep", metavar="DIR", help="keep each load's callgrind dump in DIR")
    ap.add_argument("--only", help="run only these loads (comma-separated names, e.g. msg_64)")
    args = ap.parse_args()
    builds = [(b.partition("=")[0], os.path.abspath(b.partition("=")[2])) for b in args.build]
    global HEARTBEAT
    HEARTBEAT = args.heartbeat
    work = tempfile.mkdtemp(prefix="ringway-instr-")
    # The load generator and the echo backend run from a copy: a build during the run cannot
    # change them under it.
    global BIN
    tool = os.path.join(work, "ringway-tool")
    shutil.copy2(BIN, tool)
    BIN = tool
    echo = subprocess.Popen(["taskset", "-c", "1", BIN, "echo", "--workers", "1", "--listen", BACKEND], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    secs = f"{args.messages_secs}s"
    plain = [
        ("msg_64", ["throughput", "-c", "1", "-s", "64", "-d", "1s", "--warmup", "0s"],
         ["throughput", "-c", "1", "-s", "64", "-d", secs, "--warmup", "0s"], "messages"),
        ("msg_64_c100", ["throughput", "-c", "100", "-s", "64", "-d", "3s", "--warmup", "0s"],
         ["throughput", "-c", "100", "-s", "64", "-d", secs, "--warmup", "0s"], "messages"),
        ("msg_4096", ["throughput", "-c", "1", "-s", "4096", "-d", "1s", "--warmup", "0s"],
         ["throughput", "-c", "1", "-s", "4096", "-d", secs, "--warmup", "0s"], "messages"),
        ("handshake", ["connect", "-c", "1", "-n", "50"],
         ["connect", "-c", "1", "-n", str(args.handshakes)], "established"),
    ]
    tls_loads = [
        ("wss_msg_64", ["throughput", "-c", "1", "-s", "64", "-d", "1s", "--warmup", "0s"],
         ["throughput", "-c", "1", "-s", "64", "-d", secs, "--warmup", "0s"], "messages"),
        ("tls_handshake", ["connect", "-c", "1", "-n", "20", "--no-resume"],
         ["connect", "-c", "1", "-n", str(args.handshakes // 4), "--no-resume"], "established"),
    ]
    cert = None
    if args.tls:
        key, crt = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", crt, "-days", "7", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        cert = (crt, key)
    if args.only:
        wanted = args.only.split(",")
        plain = [l for l in plain if l[0] in wanted]
        tls_loads = [l for l in tls_loads if l[0] in wanted]
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    results = {}
    try:
        time.sleep(0.5)
        # Warm the echo backend first (its buffers come into circulation as it needs them):
        # else the first build measured meets a slower backend, smaller batches per loop
        # turn at 100 connections, and more instructions per message than the builds after.
        bench("throughput", "-c", "100", "-s", "64", "-d", "3s", "--warmup", "0s",
              "--target", f"ws://{BACKEND}/ws/")
        for i, (name, binary) in enumerate(builds):
            results[name] = measure(binary, work, 7300 + i, None, plain, args.keep, name)
            if cert:
                try:
                    results[name].update(measure(binary, work, 7400 + i, cert, tls_loads, args.keep, name))
                except RuntimeError as e:
                    # A build from before TLS existed.
                    print(f"  {name}: no TLS figures ({e})", file=sys.stderr)
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait()
    first = builds[0][0]
    names = [n for n, _ in builds]
    print("| user-space instructions (callgrind) | " + " | ".join(names) + " | "
          + " | ".join(f"{n} ÷ {first}" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    labels = {"msg_64": "per echoed msg, 64 B",
              "msg_64_c100": "per echoed msg, 64 B, 100 connections (as `bench.sh` loads it)",
              "msg_4096": "per echoed msg, 4 KiB",
              "handshake": "per plain WebSocket handshake", "wss_msg_64": "per echoed wss msg, 64 B",
              "tls_handshake": "per full TLS 1.3 handshake"}
    for key, label in labels.items():
        if key not in results[first]:
            continue
        vals = [results[n].get(key, float("nan")) for n in names]
        print(f"| {label} | " + " | ".join("—" if v != v else f"{v:,.0f}" for v in vals) + " | "
              + " | ".join("—" if v != v else f"{v / vals[0]:.3f}" for v in vals[1:]) + " |")


if __name__ == "__main__":
    sys.exit(main())
