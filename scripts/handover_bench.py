#!/usr/bin/env python3
"""How long a binary upgrade that keeps the tunnels takes, and the pause one tunnel sees.

    python3 scripts/handover_bench.py [--tunnels 9000] [--rounds 3] [--probes 20] [--tls]

Starts `ringway echo` and `ringway run` (release build, one config with runtime.upgrade_socket),
opens --tunnels idle WebSocket tunnels through the proxy plus --probes tunnels that echo a
message in a closed loop, then runs `ringway run --upgrade` --rounds times. Reported per round,
from the processes' own logs: the handover (from the old process learning the new one is ready
to its "handed N tunnel(s)"), and the whole upgrade as a user sees it (from starting the new
process to its "took over N tunnel(s)"); per probe round trip: the median before the upgrade
and the longest across it (the pause a tunnel sees). At the end every tunnel is checked: still
open, and echoing.

One process holds about 9,900 proxied sessions under this machine's RLIMIT_NOFILE of 20,000,
so one upgrade moves at most that many; the figures are also given per 10,000 tunnels, scaled.

With --tls the proxy's listener has TLS (a self-signed ECDSA P-256 certificate made with
`openssl`) and every tunnel is `wss://` (Python's ssl: TLS 1.3), so each one moves with its
record state.

With --h2 S every tunnel is a WebSocket over HTTP/2 (RFC 8441, Python's h2 as the client; h2c,
or ALPN h2 with --tls): the idle ones S streams to a connection, each probe a connection of its
own. Each connection moves with the inner sessions of its streams; a stream holds three
descriptors in the proxy (its socket pair and its upstream), so keep --tunnels under ~6,000.
"""
import argparse
import base64
import os
import re
import select
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ringway")
STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:(\d\d\.\d+))Z")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=20):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never listened")


TLS = None  # an ssl.SSLContext with --tls


def upgrade(port, src="127.0.0.1"):
    s = socket.socket()
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    if TLS is not None:
        s = TLS.wrap_socket(s, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise RuntimeError("closed during the handshake")
        buf += d
    if b" 101 " not in buf.split(b"\r\n")[0]:
        raise RuntimeError(buf[:80])
    return s


def frame(payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + mask + body


def read_frame(s):
    h = b""
    while len(h) < 2:
        d = s.recv(2 - len(h))
        if not d:
            raise RuntimeError("EOF")
        h += d
    n = h[1] & 0x7F
    p = b""
    while len(p) < n:
        d = s.recv(n - len(p))
        if not d:
            raise RuntimeError("EOF")
        p += d
    return h[0] & 0x0F, p


def echo_once(s, msg):
    s.sendall(frame(msg))
    op, p = read_frame(s)
    if op != 2 or p != msg:
        raise RuntimeError(f"bad echo: op {op}, {p[:20]!r}")


class H2Ws:
    """One HTTP/2 connection carrying WebSockets (extended CONNECT), driven synchronously."""

    def __init__(self, port, streams):
        import h2.config
        import h2.connection
        import h2.events
        self.ev = h2.events
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if TLS is not None:
            s = TLS.wrap_socket(s, server_hostname="localhost")
        self.s = s
        self.c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.c.initiate_connection()
        self.c.increment_flow_control_window(1 << 24)
        self.ids = []
        for _ in range(streams):
            sid = self.c.get_next_available_stream_id()
            self.c.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                      (":scheme", "https" if TLS else "http"), (":path", "/ws/"),
                                      (":authority", "localhost"), ("sec-websocket-version", "13")])
            self.ids.append(sid)
        self.flush()
        self.bufs = {sid: b"" for sid in self.ids}
        opened = set()
        while len(opened) < streams:
            for e in self.read():
                if isinstance(e, self.ev.ResponseReceived):
                    if dict(e.headers)[":status"] != "200":
                        raise RuntimeError(f"stream {e.stream_id}: {dict(e.headers)[':status']}")
                    opened.add(e.stream_id)

    def flush(self):
        d = self.c.data_to_send()
        if d:
            self.s.sendall(d)

    def read(self):
        d = self.s.recv(65536)
        if not d:
            raise RuntimeError("EOF")
        evs = self.c.receive_data(d)
        for e in evs:
            if isinstance(e, self.ev.DataReceived):
                self.c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                self.bufs[e.stream_id] += e.data
            elif isinstance(e, (self.ev.StreamReset, self.ev.ConnectionTerminated, self.ev.StreamEnded)):
                raise RuntimeError(f"{type(e).__name__} on {getattr(e, 'stream_id', 0)}")
        self.flush()
        return evs

    def echo(self, sid, msg):
        self.c.send_data(sid, frame(msg))
        self.flush()
        want = 2 + len(msg)
        while len(self.bufs[sid]) < want:
            self.read()
        got, self.bufs[sid] = self.bufs[sid][:want], self.bufs[sid][want:]
        if got[0] & 0x0F != 2 or got[2:] != msg:
            raise RuntimeError(f"bad echo on stream {sid}")


class Probe(threading.Thread):
    """A tunnel that echoes in a closed loop, recording each round trip's end time and length."""

    def __init__(self, port, i, h2=False):
        super().__init__(daemon=True)
        self.h2 = H2Ws(port, 1) if h2 else None
        self.s = None if h2 else upgrade(port)
        if self.s is not None:
            self.s.settimeout(30)
        self.i = i
        self.trips = []
        self.stop = False
        self.error = None

    def run(self):
        n = 0
        try:
            while not self.stop:
                msg = struct.pack(">IQ", self.i, n)
                t = time.monotonic()
                if self.h2 is not None:
                    self.h2.echo(self.h2.ids[0], msg)
                else:
                    echo_once(self.s, msg)
                self.trips.append((time.monotonic(), time.monotonic() - t))
                n += 1
                time.sleep(0.002)
        except Exception as e:  # noqa: BLE001 (reported)
            self.error = f"{repr(e)} at {time.monotonic():.3f}"


def log_time(path, needle):
    """Seconds (within the minute, with the minute's carry) of the first line with `needle`."""
    for line in open(path, errors="replace"):
        if needle in line:
            m = STAMP.search(line)
            if m:
                hh, mm = m.group(1)[11:13], m.group(1)[14:16]
                return int(hh) * 3600 + int(mm) * 60 + float(m.group(2))
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tunnels", type=int, default=9000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--probes-first", action="store_true",
                    help="open the probes before the idle tunnels (they go in the first waves)")
    ap.add_argument("--h2", type=int, default=0, metavar="S",
                    help="WebSockets over HTTP/2, S idle ones to a connection")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ringway-handover-")
    tls_line = ""
    if a.tls:
        global TLS
        cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost"],
            check=True, capture_output=True,
        )
        TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        TLS.check_hostname = False
        TLS.verify_mode = ssl.CERT_NONE
        tls_line = f'tls = {{ cert = "{cert}", key = "{key}" }}\n'

    port, backend = free_port(), free_port()
    sock = os.path.join(work, "upgrade.sock")
    cfg = os.path.join(work, "ringway.toml")
    with open(cfg, "w") as f:
        f.write(
            f"""[runtime]
workers = 2
max_connections = {(2 if a.h2 else 1) * (a.tunnels + a.probes) + 200}
access_log = false
upgrade_socket = "{sock}"
shutdown_grace = "30s"
[[upstream]]
name = "b"
servers = [{{ addr = "127.0.0.1:{backend}" }}]
[[server]]
listen = ["127.0.0.1:{port}"]
{tls_line}{"http2 = true" if a.h2 else ""}
[[server.location]]
path = "/"
upstream = "b"
read_timeout = "600s"
"""
        )
    procs = []

    def start(args, name):
        log = open(os.path.join(work, name + ".log"), "w")
        p = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=log)
        procs.append(p)
        return p

    try:
        echo = start(["echo", "--workers", "1", "--listen", f"127.0.0.1:{backend}"], "echo")
        wait_port(backend, echo)
        old = start(["run", "--config", cfg], "proxy-0")
        wait_port(port, old)
        t = time.time()
        if a.h2 and TLS is not None:
            TLS.set_alpn_protocols(["h2"])
        early = [Probe(port, i, a.h2 > 0) for i in range(a.probes)] if a.probes_first else []
        if a.h2:
            conns = [H2Ws(port, min(a.h2, a.tunnels - k)) for k in range(0, a.tunnels, a.h2)]
            idle = [(c, sid) for c in conns for sid in c.ids]
        else:
            idle = [upgrade(port) for _ in range(a.tunnels)]
        opened = time.time() - t
        probes = early or [Probe(port, i, a.h2 > 0) for i in range(a.probes)]
        for p in probes:
            p.start()
        time.sleep(1.0)
        print(f"{a.tunnels} idle tunnels opened in {opened:.1f}s, {a.probes} probes echoing", flush=True)
        rows = []
        for r in range(1, a.rounds + 1):
            mark = time.monotonic()
            print(f"round {r} starts at {mark:.3f}", flush=True)
            t0 = time.time()
            new = start(["run", "--config", cfg, "--upgrade"], f"proxy-{r}")
            old_log = os.path.join(work, f"proxy-{r - 1}.log")
            new_log = os.path.join(work, f"proxy-{r}.log")
            deadline = time.time() + 60
            while time.time() < deadline and old.poll() is None:
                time.sleep(0.02)
            if old.poll() is None:
                raise RuntimeError(f"round {r}: the old process did not exit")
            ready = log_time(old_log, "the new process is ready")
            handed = log_time(old_log, "tunnel(s) to pid")
            took = log_time(new_log, "took over")
            started = t0 % 86400
            line = open(old_log).read()
            m = re.search(r"handed (\d+) tunnel\(s\).*?; (\d+) stay", line)
            moved, stayed = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
            time.sleep(0.5)
            after = time.monotonic()
            before = [d for p in probes for (e, d) in p.trips if e < mark]
            across = [d for p in probes for (e, d) in p.trips if mark <= e <= after]
            rows.append(
                {
                    "round": r,
                    "moved": moved,
                    "stayed": stayed,
                    "handover_ms": (handed - ready) * 1000 if handed and ready else None,
                    "upgrade_ms": (took - started) * 1000 if took else None,
                    "rtt_p50_ms": statistics.median(before[-2000:]) * 1000 if before else None,
                    "pause_ms": max(across) * 1000 if across else None,
                }
            )
            print(rows[-1], flush=True)
            old = new
        for p in probes:
            p.stop = True
        for p in probes:
            p.join(5)
        errors = [p.error for p in probes if p.error]
        # Every idle tunnel is still open and echoes.
        bad = 0
        for i, s in enumerate(idle):
            try:
                if a.h2:
                    s[0].echo(s[1], struct.pack(">I", i))
                    continue
                s.settimeout(10)
                echo_once(s, struct.pack(">I", i))
            except Exception:  # noqa: BLE001 (counted)
                bad += 1
        print(f"after {a.rounds} upgrades: {len(idle) - bad} of {len(idle)} idle tunnels echo; probe errors: {errors[:3]}")
        print()
        print("| round | tunnels moved | stayed | handover (old process), ms | upgrade as run, ms | "
              "per 10,000 tunnels, ms | probe round trip p50, ms | longest round trip across it, ms |")
        print("|---|---|---|---|---|---|---|---|")
        for x in rows:
            per = x["handover_ms"] * 10000 / max(x["moved"], 1) if x["handover_ms"] else None
            fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            print(f"| {x['round']} | {x['moved']} | {x['stayed']} | {fmt(x['handover_ms'])} | "
                  f"{fmt(x['upgrade_ms'])} | {fmt(per)} | {fmt(x['rtt_p50_ms'])} | {fmt(x['pause_ms'])} |")
        if bad or errors:
            sys.exit(1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
