#!/usr/bin/env python3
"""HTTP/2 beside HTTP/1.1, ringway beside HAProxy (RFC 8441) and nginx (requests), in one run.

    python3 scripts/h2bench.py [--secs 5] [--rounds 3] [--idle 700]

Each proxy runs one worker pinned to CPU 0 (nginx worker_processes 1, HAProxy nbthread 1,
ringway workers = 1), plain listeners (HTTP/2 by prior knowledge: what is measured is HTTP/2,
not TLS); the echo backend (`ringway echo`) and the load run on CPU 1. Figures:

- CPU per echoed WebSocket message, 64 B and 4 KiB, over HTTP/2 (10 extended CONNECT streams
  on one connection) and over HTTP/1.1 (10 connections): closed loop, one message in flight
  per stream, from Python's h2 (HTTP/2) and raw sockets (HTTP/1.1). The load is slow beside
  the proxies (Python): CPU per message is what counts, not the rate.
- CPU per small request (GET /headers) over HTTP/2 from h2load (10 connections, 10 streams
  each, 9,000 requests: under the 1,000 per connection all three keep by default), and
  requests per second, beside nginx's HTTP/2 (nginx and ringway keep 32 idle
  upstream connections, HAProxy reuses its own).
- User-space KiB (RSS) per idle WebSocket over HTTP/2: many streams on few connections
  (14 per connection, ringway's most) and one stream per connection.

Rounds are interleaved (every proxy takes each load in turn); medians are printed as a
markdown table. Every process started here is stopped by its PID.
"""
import argparse
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BIN, TICK, cpu_ticks, descendants, rss_kib, start, stop, stop_all, wait_port  # noqa: E402

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402

BACKEND = ("127.0.1.1", 9000)
PORTS = {"ringway": 7191, "haproxy": 7192, "nginx": 7193}


def ws_frame(payload, opcode=0x2):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def frames_in(buf):
    """Whole server frames at the front of buf: (count, rest)."""
    n = 0
    while len(buf) >= 2:
        ln = buf[1] & 0x7F
        at = 2
        if ln == 126:
            if len(buf) < 4:
                break
            ln, at = struct.unpack("!H", buf[2:4])[0], 4
        if len(buf) < at + ln:
            break
        buf = buf[at + ln:]
        n += 1
    return n, buf


def h2_session(port, streams):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    c.increment_flow_control_window(1 << 24)
    s.sendall(c.data_to_send())
    ready = False
    while not ready:
        for ev in c.receive_data(s.recv(65536)):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                ready = True
        s.sendall(c.data_to_send())
    ids = []
    for _ in range(streams):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                             (":path", "/ws/"), (":authority", "localhost"),
                             ("sec-websocket-version", "13")])
        ids.append(sid)
    s.sendall(c.data_to_send())
    opened = set()
    while len(opened) < streams:
        for ev in c.receive_data(s.recv(65536)):
            if isinstance(ev, h2.events.ResponseReceived):
                st = dict(ev.headers)[":status"]
                if st != "200":
                    raise SystemExit(f"stream {ev.stream_id}: {st}")
                opened.add(ev.stream_id)
        s.sendall(c.data_to_send())
    return s, c, ids


def h2_load(port, streams, size, secs):
    """Closed loop over one HTTP/2 connection: messages echoed in `secs`."""
    s, c, ids = h2_session(port, streams)
    frame = ws_frame(b"x" * size)
    bufs = {i: b"" for i in ids}
    for i in ids:
        c.send_data(i, frame)
    s.sendall(c.data_to_send())
    done = 0
    end = time.time() + secs
    while time.time() < end:
        data = s.recv(1 << 20)
        if not data:
            raise SystemExit("HTTP/2 connection closed")
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                n, bufs[ev.stream_id] = frames_in(bufs[ev.stream_id] + ev.data)
                for _ in range(n):
                    done += 1
                    c.send_data(ev.stream_id, frame)
        s.sendall(c.data_to_send())
    s.close()
    return done


def h1_load(port, conns, size, secs):
    """Closed loop over `conns` HTTP/1.1 WebSockets."""
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"GET /ws/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"no 101: {head[:80]!r}")
        socks.append([s, head.split(b"\r\n\r\n", 1)[1]])
    frame = ws_frame(b"x" * size)
    for s, _ in socks:
        s.sendall(frame)
    by_fd = {s.fileno(): e for e in socks for s in [e[0]]}
    done = 0
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([e[0] for e in socks], [], [], 0.5)
        for s in r:
            e = by_fd[s.fileno()]
            data = s.recv(1 << 20)
            if not data:
                raise SystemExit("closed")
            n, e[1] = frames_in(e[1] + data)
            for _ in range(n):
                done += 1
                s.sendall(frame)
    for s, _ in socks:
        s.close()
    return done


def idle_h2(port, conns, streams):
    """Hold conns × streams idle WebSockets over HTTP/2; returns the sockets (close to end)."""
    held = []
    for _ in range(conns):
        s, c, ids = h2_session(port, streams)
        held.append((s, c))
    return held


def h2load(port, n=9000):
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-n", str(n), "-c", "10", "-m", "10",
                          f"http://127.0.0.1:{port}/headers"], capture_output=True, text=True, timeout=120)
    ok = [l for l in out.stdout.splitlines() if l.startswith("requests:")]
    rate = [l for l in out.stdout.splitlines() if l.startswith("finished in")]
    succeeded = int(ok[0].split(",")[3].split()[0]) if ok else 0
    rps = float(rate[0].split(",")[1].split()[0]) if rate else 0.0
    return succeeded, rps


class Proxy:
    def __init__(self, kind, work):
        self.kind, self.work, self.port = kind, work, PORTS[kind]
        self.p = None

    def start(self):
        w = self.work
        if self.kind == "ringway":
            cfg = os.path.join(w, "ringway.toml")
            with open(cfg, "w") as f:
                f.write(f"""[runtime]
workers = 1
access_log = false
max_connections = 9000
[[upstream]]
name = "echo"
servers = [{{ addr = "{BACKEND[0]}:{BACKEND[1]}" }}]
keepalive = 32
[[server]]
listen = ["127.0.0.1:{self.port}"]
http2 = true
[[server.location]]
path = "/"
upstream = "echo"
upgrade = ["websocket"]
read_timeout = "1h"
""")
            self.p = start(["taskset", "-c", "0", BIN, "run", "--config", cfg])
        elif self.kind == "haproxy":
            cfg = os.path.join(w, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(f"""global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend h2
  bind 127.0.0.1:{self.port} proto h2
  default_backend echo
frontend h1
  bind 127.0.0.1:{self.port + 100}
  default_backend echo
backend echo
  server s1 {BACKEND[0]}:{BACKEND[1]}
""")
            self.p = start(["taskset", "-c", "0", "haproxy", "-f", cfg, "-db"])
        else:
            conf = os.path.join(w, "nginx.conf")
            with open(conf, "w") as f:
                f.write(f"""worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/nginx.err;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  upstream echo {{ server {BACKEND[0]}:{BACKEND[1]}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{self.port} http2;
    location / {{ proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen 127.0.0.1:{self.port + 100};
    location / {{
      proxy_pass http://echo; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h;
    }}
  }}
}}""")
            self.p = start(["taskset", "-c", "0", "nginx", "-c", conf])
        wait_port("127.0.0.1", self.port)

    def pids(self):
        return descendants(self.p.pid)

    def h1_port(self):
        return self.port + 100 if self.kind != "ringway" else self.port


def measure(proxy, fn):
    pids = proxy.pids()
    u0, s0 = cpu_ticks(pids)
    n = fn()
    u1, s1 = cpu_ticks(pids)
    return n, (u1 - u0 + s1 - s0) / TICK, (u1 - u0) / TICK


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=700)
    a = ap.parse_args()
    os.sched_setaffinity(0, {1})
    work = tempfile.mkdtemp(prefix="ringway-h2bench-")
    rows = {}

    def add(key, kind, value):
        rows.setdefault(key, {}).setdefault(kind, []).append(value)

    try:
        start(["taskset", "-c", "1", BIN, "echo", "--workers", "1", "--listen", f"{BACKEND[0]}:{BACKEND[1]}"])
        wait_port(*BACKEND)
        proxies = {k: Proxy(k, work) for k in ["ringway", "haproxy", "nginx"]}
        for p in proxies.values():
            p.start()
        for r in range(a.rounds):
            for size in (64, 4096):
                for kind in ("ringway", "haproxy"):
                    n, cpu, user = measure(proxies[kind], lambda: h2_load(proxies[kind].port, 10, size, a.secs))
                    add(f"ws h2 {size}", kind, (n, cpu, user))
                for kind in ("ringway", "haproxy", "nginx"):
                    n, cpu, user = measure(proxies[kind], lambda: h1_load(proxies[kind].h1_port(), 10, size, a.secs))
                    add(f"ws h1 {size}", kind, (n, cpu, user))
            for kind in ("ringway", "haproxy", "nginx"):
                (n, rps), cpu, user = _req(proxies[kind])
                add("req h2", kind, (n, cpu, user, rps))
            print(f"round {r + 1} done", file=sys.stderr, flush=True)
        # Idle WebSockets over HTTP/2, ringway and HAProxy.
        idle = {}
        for kind in ("ringway", "haproxy"):
            p = proxies[kind]
            for conns, streams in ((a.idle // 14, 14), (a.idle, 1)):
                time.sleep(1)
                before = rss_kib(p.pids())
                held = idle_h2(p.port, conns, streams)
                time.sleep(2)
                after = rss_kib(p.pids())
                idle[(kind, streams)] = (after - before) / (conns * streams)
                for s, _ in held:
                    s.close()
        report(rows, idle, a)
    finally:
        stop_all()


def _req(proxy):
    pids = proxy.pids()
    u0, s0 = cpu_ticks(pids)
    n, rps = h2load(proxy.port)
    u1, s1 = cpu_ticks(pids)
    return (n, rps), (u1 - u0 + s1 - s0) / TICK, (u1 - u0) / TICK


def report(rows, idle, a):
    def per(vals, i=1):
        # CPU-µs per message, median over rounds.
        return statistics.median(v[i] / v[0] * 1e6 for v in vals if v[0])

    def rate(vals):
        return statistics.median(v[0] for v in vals) / a.secs

    print(f"Command: `python3 scripts/h2bench.py --secs {a.secs:g} --rounds {a.rounds} --idle {a.idle}`\n")
    print("| figure | ringway | HAProxy | nginx | ringway ÷ HAProxy | ringway ÷ nginx |")
    print("|---|---|---|---|---|---|")
    for size in (64, 4096):
        for proto in ("h2", "h1"):
            key = f"ws {proto} {size}"
            r = rows[key]
            label = f"WebSocket over HTTP/{'2' if proto == 'h2' else '1.1'}, {size} B: proxy CPU-µs per echoed msg"
            vals = {k: per(v) for k, v in r.items()}
            users = {k: per(v, 2) for k, v in r.items()}
            ng = vals.get("nginx")
            print(f"| {label} | {vals['ringway']:.2f} | {vals['haproxy']:.2f} | {('%.2f' % ng) if ng else '—'} | "
                  f"{vals['ringway'] / vals['haproxy']:.2f} | {('%.2f' % (vals['ringway'] / ng)) if ng else '—'} |")
            ngu = users.get("nginx")
            print(f"|   of which user-space | {users['ringway']:.2f} | {users['haproxy']:.2f} | "
                  f"{('%.2f' % ngu) if ngu is not None else '—'} | | |")
            rates = {k: rate(v) for k, v in r.items()}
            ngr = rates.get("nginx")
            print(f"|   messages/s (the Python load's pace) | {rates['ringway']:,.0f} | {rates['haproxy']:,.0f} | "
                  f"{('{:,.0f}'.format(ngr)) if ngr else '—'} | | |")
    r = rows["req h2"]
    cpu = {k: statistics.median(v[1] / v[0] * 1e6 for v in vals if v[0]) for k, vals in r.items()}
    rps = {k: statistics.median(v[3] for v in vals) for k, vals in r.items()}
    print(f"| small requests over HTTP/2 (h2load, 10 conns × 10 streams): proxy CPU-µs per request | "
          f"{cpu['ringway']:.1f} | {cpu['haproxy']:.1f} | {cpu['nginx']:.1f} | {cpu['ringway'] / cpu['haproxy']:.2f} | "
          f"{cpu['ringway'] / cpu['nginx']:.2f} |")
    print(f"|   requests/s | {rps['ringway']:,.0f} | {rps['haproxy']:,.0f} | {rps['nginx']:,.0f} | "
          f"{rps['ringway'] / rps['haproxy']:.2f} | {rps['ringway'] / rps['nginx']:.2f} |")
    for streams in (14, 1):
        ri, hi = idle[("ringway", streams)], idle[("haproxy", streams)]
        print(f"| user-space KiB (RSS) per idle WebSocket over HTTP/2, {streams} stream(s) per connection, "
              f"{a.idle} | {ri:.2f} | {hi:.2f} | — | {ri / hi:.2f} | — |")


if __name__ == "__main__":
    main()
