#!/usr/bin/env python3
"""Side-by-side benchmark: the same loads against direct (no proxy), nginx, HAProxy and ringway.

Run through scripts/bench.sh (which builds ringway and installs nginx and haproxy). Every step is
bounded in time; every process started here is stopped by its PID at the end.

Fairness on a 2-core machine: the proxy under test is pinned to CPU 0 with one worker
(nginx worker_processes 1, HAProxy nbthread 1, ringway workers = 1); the load generator and the
echo backends are pinned to CPU 1. One extra run puts every proxy on all cores. Access logs are
off for all three proxies.

Figures come from /proc: proxy CPU (utime+stime of all its processes) during a load, divided by
the messages or handshakes the load completed; proxy RSS (summed over its processes) at rest and
while holding N idle WebSockets, giving KiB per connection.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import fmt, write_markdown  # noqa: E402  (the table, its own file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ringway")
TICK = os.sysconf("SC_CLK_TCK")
BACKENDS = [f"127.0.1.{i}:9000" for i in range(1, 9)]
PORTS = {"direct": None, "nginx": 7081, "haproxy": 7082, "ringway": 7083, "baseline": 7084}
# --baseline: another ringway binary (an earlier build), measured as a target of its own in the
# same run, so that "before" and "after" share the machine's state.
BASELINE = None
PER_PROCESS = 8000  # proxied sessions per process in idle runs: the kernel's SO_REUSEPORT hash spreads
                   # unevenly, and one process holds ~9,900 under a 20,000 fd limit
CAP_PROCESS = 9900  # what each proxy process is configured to hold at most

STARTED = []  # Popen objects, stopped by PID at exit


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def start(cmd, cpu=None, out=None, **kw):
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    p = subprocess.Popen(cmd, stdout=out or subprocess.DEVNULL, stderr=out or subprocess.DEVNULL, **kw)
    STARTED.append(p)
    return p


def stop(p, sig=signal.SIGTERM, wait=10):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in list(STARTED):
        stop(p, wait=5)


def wait_port(host, port, timeout=10):
    import socket
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} never listened")


def descendants(pid):
    """pid and every process below it (nginx master + workers)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    """(user, system) clock ticks summed over pids."""
    u = s = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            u += int(fields[11])
            s += int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return u, s


def proc_kib(pids, name, key):
    """The sum over `pids` of the KiB figure `key` (e.g. "VmRSS:") in /proc/PID/`name`."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/{name}") as f:
                for line in f:
                    if line.startswith(key):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def rss_kib(pids):
    return proc_kib(pids, "status", "VmRSS:")


def pss_kib(pids):
    """The proxy's share of physical memory (PSS, summed over its processes): a page that n
    processes map counts 1/n in each. Summing VmRSS instead counts a shared page once per
    process: the binary's code pages, which every proxy process (and the load generator and
    echo, the same binary) faults in from one page cache, came to ~13 × 220 KiB in RSS at
    100,000 connections over 13 processes, 27 bytes per connection that no connection holds."""
    return proc_kib(pids, "smaps_rollup", "Pss:")


class Proxy:
    """One proxy under test: `instances` processes (or nginx workers) on one port."""

    def __init__(self, kind, workdir, instances=1, workers=1, cpu=0, upstream_source=False, tls=None,
                 upstream_extra="", port=None, splice=False, runtime_extra="", prefer_aes128=False):
        self.kind, self.dir, self.instances, self.workers, self.cpu = kind, workdir, instances, workers, cpu
        # nginx and HAProxy only: choose TLS_AES_128_GCM_SHA256 among the suites a client offers
        # (server preference), as ringway does by default; the like-for-like wss handshake row.
        self.prefer_aes128 = prefer_aes128
        # HAProxy only: a layer-4 proxy with `option splice-request` and `splice-response`
        # (kernel splicing for bulk flows; scripts/bulk.py).
        self.splice = splice
        # ringway only: more lines for the [[upstream]] block (scripts/bench_policy.py: balance),
        # and for [runtime] (scripts/bulk.py: splice_min).
        self.upstream_extra = upstream_extra
        self.runtime_extra = runtime_extra
        # wss: the same ECDSA P-256 certificate for every proxy, TLS 1.3 only (see TlsCert).
        self.tls = tls
        # ringway only: bind upstream sockets over a /16 of local addresses (the `source`
        # option, nginx's proxy_bind). Past ~200k sessions toward 8 backend addresses, the
        # kernel's search for a free ephemeral port per connect grows with the table and the
        # proxy core saturates (a 300k run without it: 215k established); with it each
        # address has its own port range and connects stay cheap.
        self.upstream_source = upstream_source
        self.procs = []
        self.port = port or (PORTS[kind] + 100 if tls else PORTS[kind])

    def target(self, path="/ws/"):
        if self.kind == "direct":
            return f"ws://{BACKENDS[0]}{path}"
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}{path}"

    def pids(self):
        out = []
        for p in self.procs:
            out.extend(descendants(p.pid))
        return out

    def start(self):
        if self.kind == "direct":
            return
        d = os.path.join(self.dir, self.kind + ("-tls" if self.tls else ""))
        os.makedirs(d, exist_ok=True)
        t = self.tls
        errlog = open(os.path.join(d, "stderr.log"), "ab")
        if self.kind in ("ringway", "baseline"):
            servers = ", ".join(f'{{ addr = "{b}" }}' for b in BACKENDS)
            cfg = f"""[runtime]
workers = {self.workers}
max_connections = {CAP_PROCESS}
access_log = false
shutdown_grace = "2s"
{self.runtime_extra}

[[upstream]]
name = "echo"
servers = [{servers}]
{'source = "127.3.0.0/16"' if self.upstream_source else ''}
{self.upstream_extra}

[[server]]
listen = ["127.0.0.1:{self.port}"]
{f'tls = {{ cert = "{t.cert}", key = "{t.key}", protocols = ["TLSv1.3"] }}' if t else ''}

[[server.location]]
path = "/"
upstream = "echo"
read_timeout = "3600s"
send_timeout = "3600s"
"""
            path = os.path.join(d, "ringway.toml")
            with open(path, "w") as f:
                f.write(cfg)
            for _ in range(self.instances):
                binary = BASELINE if self.kind == "baseline" else BIN
                self.procs.append(start([binary, "run", "--config", path], cpu=self.cpu, out=errlog))
        elif self.kind == "nginx":
            servers = "\n".join(f"        server {b};" for b in BACKENDS)
            for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
                os.makedirs(os.path.join(d, sub), exist_ok=True)
            workers = max(self.workers, self.instances)
            cfg = f"""worker_processes {workers};
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections {2 * CAP_PROCESS}; use epoll; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream websocket_backend {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port} reuseport backlog=65535{' ssl' if t else ''};
        {f"ssl_certificate {t.cert}; ssl_certificate_key {t.key}; ssl_protocols TLSv1.3; ssl_session_cache shared:SSL:20m; ssl_session_tickets on;" if t else ""}
        {f"ssl_prefer_server_ciphers on; ssl_conf_command Ciphersuites {AES128_FIRST};" if t and self.prefer_aes128 else ""}
        location / {{
            proxy_pass http://websocket_backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_connect_timeout 30s;
            proxy_buffering off;
        }}
    }}
}}
"""
            path = os.path.join(d, "nginx.conf")
            with open(path, "w") as f:
                f.write(cfg)
            self.procs.append(start(["nginx", "-p", d, "-e", "stderr", "-c", path, "-g", "daemon off;"], cpu=self.cpu, out=errlog))
        elif self.kind == "haproxy":
            servers = "\n".join(f"    server s{i} {b}" for i, b in enumerate(BACKENDS))
            # Splicing: HAProxy splices a WebSocket's bytes only as a TCP proxy (in HTTP mode a
            # tunnel is not spliced, and `splice-auto` did not splice these flows: strace showed
            # recvfrom/sendto), so that variant runs at layer 4; each pipe takes two descriptors:
            # room for 256 within RLIMIT_NOFILE.
            mode = ("    mode tcp\n    option splice-request\n    option splice-response" if self.splice else
                    "    mode http\n    timeout tunnel 3600s\n    timeout http-request 10s\n    option forwardfor")
            cfg = f"""global
    maxconn {CAP_PROCESS - 512 if self.splice else CAP_PROCESS}
    nbthread {self.workers}
{"    maxpipes 256" if self.splice else ""}
    log stderr format raw local0 emerg

defaults
    timeout connect 30s
    timeout client 3600s
    timeout server 3600s
{mode}

frontend ws
    bind 127.0.0.1:{self.port}{f" ssl crt {t.pem} ssl-min-ver TLSv1.3" if t else ""}{f" ciphersuites {AES128_FIRST}" if t and self.prefer_aes128 else ""}
    default_backend echo

backend echo
    balance roundrobin
{servers}
"""
            path = os.path.join(d, "haproxy.cfg")
            with open(path, "w") as f:
                f.write(cfg)
            for _ in range(self.instances):
                self.procs.append(start(["haproxy", "-db", "-f", path], cpu=self.cpu, out=errlog))
        wait_port("127.0.0.1", self.port)
        time.sleep(0.3)

    def stop(self):
        for p in self.procs:
            stop(p)
        self.procs = []


class TlsCert:
    """One ECDSA P-256 certificate (for 127.0.0.1) that every proxy serves in the wss rows."""

    def __init__(self, workdir):
        d = os.path.join(workdir, "tls")
        os.makedirs(d, exist_ok=True)
        self.key, self.cert, self.pem = (os.path.join(d, n) for n in ("key.pem", "cert.pem", "both.pem"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "7", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        with open(self.pem, "w") as f:
            f.write(open(self.cert).read() + open(self.key).read())


class Load:
    def __init__(self, args, workdir):
        self.args, self.dir = args, workdir
        self.echos = []
        # The load generator and the echo backends run from a copy of BIN: a proxy's PSS counts
        # its binary's resident text divided among every process that maps the same file, so
        # load generators started from BIN itself lowered ringway's PSS as they started (40
        # bytes per idle connection measured at 20,000; ~54 at 10,000 and ~5 at 100,000 by the
        # same arithmetic), and not nginx's or HAProxy's (docs/design-notes.md).
        self.bin = os.path.join(workdir, "ringway-load")
        shutil.copy2(BIN, self.bin)

    def start_backends(self, n=1):
        for _ in range(n):
            cmd = [self.bin, "echo", "--workers", "1"]
            for b in BACKENDS:
                cmd += ["--listen", b]
            self.echos.append(start(cmd, cpu=self.args.load_cpu))
        for b in BACKENDS:
            h, p = b.split(":")
            wait_port(h, int(p))

    def stop_backends(self):
        for p in self.echos:
            stop(p)
        self.echos = []

    def bench(self, mode, target, extra, source="127.2.0.0/16", timeout=600, cpu="load", workers=1):
        cmd = [self.bin, "bench", mode, "--target", target, "--json", "--quiet", "--workers", str(workers), "--source", source] + extra
        if target.startswith("wss://"):
            cmd += ["--insecure"]
        cpu = self.args.load_cpu if cpu == "load" else cpu
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu)] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        try:
            return json.loads(r.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"bench failed ({r.returncode}): {r.stderr.strip()[-400:]}")


def tcp_in_use():
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    # Open sockets only: TIME_WAIT entries cost no CPU and linger 60s.
                    return int(parts[parts.index("inuse") + 1])
    except (OSError, ValueError):
        pass
    return 0


def settle(limit=2000, timeout=90):
    """Wait until the sockets of the previous load are gone, so their teardown (kernel work on
    the same cores) does not land in the next measurement."""
    t = time.time()
    while tcp_in_use() > limit and time.time() - t < timeout:
        time.sleep(0.5)


def interleaved(args, kinds, prefix, measure, proxy=lambda kind, work, cpu: Proxy(kind, work, cpu=cpu)):
    """The side scripts' rounds (handshake_close.py, bulk.py): tune, start the backends, then
    `args.rounds` rounds, each starting every proxy of `kinds` in turn (the order reversed
    every other round) and calling `measure(load, kind, proxy, round)` on it; everything
    stopped by PID at the end, whatever happened."""
    args.proxy_cpu, args.load_cpu = 0, 1
    tune()
    work = tempfile.mkdtemp(prefix=prefix)
    load = Load(args, work)
    load.start_backends()
    try:
        for rnd in range(args.rounds):
            for kind in kinds if rnd % 2 == 0 else list(reversed(kinds)):
                p = proxy(kind, work, args.proxy_cpu)
                p.start()
                try:
                    measure(load, kind, p, rnd)
                finally:
                    p.stop()
    finally:
        load.stop_backends()
        stop_all()


def median_run(fn, key, repeats):
    """Run fn() `repeats` times (after settling) and keep the run with the median `key`."""
    runs = []
    for _ in range(repeats):
        settle()
        runs.append(fn())
    return median_of(runs, key)


def median_of(runs, key):
    """The run with the median `key`."""
    runs = sorted(runs, key=lambda r: r[key])
    best = dict(runs[len(runs) // 2])
    best["runs"] = len(runs)
    return best


def measured(proxy, fn):
    """Run fn() and return (its result, user ticks, system ticks) of the proxy meanwhile."""
    pids = proxy.pids()
    u0, s0 = cpu_ticks(pids)
    res = fn()
    u1, s1 = cpu_ticks(proxy.pids())
    return res, u1 - u0, s1 - s0


def us_per(ticks, n):
    return ticks / TICK * 1e6 / n if n else float("nan")


def no_proxy_cpu(res):
    """`direct` has no proxy: its CPU figures are not zero, they do not exist."""
    for k in list(res):
        if "cpu_us" in k or "user_us" in k:
            res[k] = None
    return res


def throughput(load, proxy, size, secs, conns=100, workers=1, cpu="load"):
    r, u, s = measured(proxy, lambda: load.bench("throughput", proxy.target(), ["-c", str(conns), "-s", str(size), "-d", f"{secs}s", "--warmup", "0s"], cpu=cpu, workers=workers))
    # CPU covers connection setup too (100 handshakes: negligible next to the messages).
    n = r["messages"]
    return {
        "msgs_per_sec": r["messages_per_sec"],
        "p50_us": r["latency_us"]["p50"],
        "p99_us": r["latency_us"]["p99"],
        "cpu_us_per_msg": us_per(u + s, n),
        "user_us_per_msg": us_per(u, n),
        "errors": r["errors"],
    }


def open_loop(load, proxy, secs):
    r = load.bench("throughput", proxy.target(), ["-c", "1000", "--rate", "5000", "-s", "64", "-d", f"{secs}s", "--warmup", "1s"])
    return {"p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"], "p999_us": r["latency_us"]["p999"], "msgs_per_sec": r["messages_per_sec"], "errors": r["errors"]}


def handshakes(load, proxy, count, extra=()):
    r, u, s = measured(proxy, lambda: load.bench("connect", proxy.target(), ["-c", "50", "-n", str(count)] + list(extra)))
    return {"per_sec": r["handshakes_per_sec"], "p99_us": r["latency_us"]["p99"], "cpu_us_per_handshake": us_per(u + s, r["established"]),
            "user_us_per_handshake": us_per(u, r["established"]), "errors": r["errors"],
            "tls_full": r.get("tls_full", 0), "tls_resumed": r.get("tls_resumed", 0), "cpu_ticks": u + s, "established": r["established"]}


# TLS 1.3 suites, AES-128-GCM first: what nginx and HAProxy are told to prefer in the
# like-for-like row (ringway chooses it by default).
AES128_FIRST = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# The load generator's (rustls's) order, for asking a proxy which suite it chooses.
RUSTLS_ORDER = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"


def chosen_suite(port):
    """The TLS 1.3 suite a proxy chooses for the load generator's offer (rustls's order, asked
    by `openssl s_client`); None if it could not be asked."""
    try:
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                            "-ciphersuites", RUSTLS_ORDER], input="", capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.splitlines():
        if "Cipher is " in line:
            return line.split("Cipher is ", 1)[1].strip()
    return None


def tls_rows(load, kind, work, args, cert, secs, repeats, hs_count):
    """The wss rows: the proxy terminates TLS 1.3 with the same ECDSA P-256 certificate."""
    res = {}
    p = Proxy(kind, work, cpu=args.proxy_cpu, tls=cert)
    p.start()
    try:
        res["suite"] = chosen_suite(p.port)
        settle()
        res["full"] = handshakes(load, p, hs_count, ["--no-resume"])
        log(f"   wss full handshakes ({res['suite']}): {res['full']['per_sec']:.0f}/s, {fmt(res['full']['cpu_us_per_handshake'])} CPU-µs each")
        if kind == "ringway":
            # ringway chooses AES-128-GCM already: the like-for-like row is the same proxy
            # measured again.
            settle()
            res["full_aes128"] = handshakes(load, p, hs_count, ["--no-resume"])
        settle()
        mixed = handshakes(load, p, hs_count)
        # Resumption on: a few handshakes are still full (a ticket is used once); the resumed
        # ones' CPU is what is left after the full ones, at the full rate measured just before.
        full_ticks = mixed["tls_full"] * res["full"]["cpu_ticks"] / max(1, res["full"]["established"])
        mixed["cpu_us_per_resumed"] = us_per(max(0.0, mixed["cpu_ticks"] - full_ticks), mixed["tls_resumed"])
        res["resumed"] = mixed
        log(f"   wss resumed handshakes: {mixed['tls_resumed']} of {mixed['established']}, {fmt(mixed['cpu_us_per_resumed'])} CPU-µs each")
        res["tp64"] = median_run(lambda: throughput(load, p, 64, secs), "msgs_per_sec", repeats)
        log(f"   wss 64 B: {res['tp64']['msgs_per_sec']:.0f} msg/s, {fmt(res['tp64']['cpu_us_per_msg'], 2)} CPU-µs/msg")
        res["tp4k"] = median_run(lambda: throughput(load, p, 4096, secs), "msgs_per_sec", repeats)
        log(f"   wss 4 KiB: {res['tp4k']['msgs_per_sec']:.0f} msg/s, {fmt(res['tp4k']['cpu_us_per_msg'], 2)} CPU-µs/msg")
        res["open_loop"] = median_run(lambda: open_loop(load, p, secs), "p99_us", repeats)
        log(f"   wss open loop 5000/s: p99 {res['open_loop']['p99_us']} µs")
    finally:
        p.stop()
    if kind in ("nginx", "haproxy"):
        a = Proxy(kind, work, cpu=args.proxy_cpu, tls=cert, prefer_aes128=True)
        a.start()
        try:
            settle()
            res["full_aes128"] = handshakes(load, a, hs_count, ["--no-resume"])
            res["full_aes128"]["suite"] = chosen_suite(a.port)
        finally:
            a.stop()
    if "full_aes128" in res:
        log(f"   wss full handshakes, AES-128-GCM chosen: {fmt(res['full_aes128']['cpu_us_per_handshake'])} CPU-µs each")
    settle()
    q = Proxy(kind, work, instances=max(1, -(-10000 // PER_PROCESS)), cpu=args.proxy_cpu, tls=cert)
    q.start()
    try:
        res["idle"] = idle(load, q, 10000, hold="3s" if args.quick else "10s", interval="2s" if args.quick else "5s", rate=2000)
        log(f"   wss idle 10000: {res['idle']['established']} established, {res['idle']['kib_per_conn']:.2f} KiB/conn")
    finally:
        q.stop()
    return res


def kernel_kib():
    """Kernel memory the host's sockets can be charged for, in KiB: every slab cache's objects
    (/proc/slabinfo, root only) and TCP's socket-buffer pages (/proc/net/sockstat). None
    where it cannot be read."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
        slab = sum(int(p[2]) * int(p[3]) for p in (l.split() for l in lines)) / 1024
        with open("/proc/net/sockstat") as f:
            tcp = next(l for l in f if l.startswith("TCP:")).split()
        return slab, int(tcp[tcp.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def idle(load, proxy, n, hold, interval="5s", rate=5000, during=None):
    """Hold n idle WebSockets with heartbeats; RSS per connection from the proxy's /proc; the
    kernel's slab and socket-buffer memory per connection from the host's (every socket of the
    run is on this host: the client's, the proxy's two and the backend's). `during(procs)`, if
    given, runs once all are open, while they are held (the load generators' processes are
    passed), and what it returns is kept as the result's "during"."""
    rest, rest_rss = pss_kib(proxy.pids()), rss_kib(proxy.pids())
    k_rest = kernel_kib()
    per = 18000  # connections per load-generator process (one descriptor each)
    procs, readies = [], []
    for i in range((n + per - 1) // per):
        k = min(per, n - i * per)
        ready = os.path.join(load.dir, f"ready-{proxy.kind}-{n}-{i}")
        if os.path.exists(ready):
            os.remove(ready)
        readies.append(ready)
        cmd = [load.bin, "bench", "idle", "--target", proxy.target()] + (["--insecure"] if proxy.tls else []) + ["--json", "--quiet", "--workers", "1",
               "-c", str(k), "--rate", str(max(1, rate // max(1, (n + per - 1) // per))), "--hold", hold,
               "--interval", interval, "--timeout", "20s", "--source", f"127.{10 + i}.0.0/16", "--ready-file", ready]
        if shutil.which("taskset") and load.args.load_cpu is not None:
            cmd = ["taskset", "-c", str(load.args.load_cpu)] + cmd
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t = time.time()
    limit = n / rate + 60
    while not all(os.path.exists(r) for r in readies) and time.time() - t < limit and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    time.sleep(1.0)
    holding, holding_rss = pss_kib(proxy.pids()), rss_kib(proxy.pids())
    k_holding = kernel_kib()
    seen = during(procs) if during else None
    results = []
    for p in procs:
        out, err = p.communicate(timeout=limit + 600)
        try:
            results.append(json.loads(out))
        except json.JSONDecodeError:
            results.append({"established": 0, "alive_at_end": 0, "heartbeats_sent": 0, "heartbeats_echoed": 0, "heartbeats_lost": 0, "errors": {"bench": err.strip()[-200:]}})
    est = sum(r["established"] for r in results)
    errors = {}
    for r in results:
        for k, v in r.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    return {
        "connections": n,
        "established": est,
        "alive_at_end": sum(r["alive_at_end"] for r in results),
        "heartbeats_sent": sum(r["heartbeats_sent"] for r in results),
        "heartbeats_echoed": sum(r["heartbeats_echoed"] for r in results),
        "heartbeats_lost": sum(r["heartbeats_lost"] for r in results),
        "pss_rest_kib": rest,
        "pss_holding_kib": holding,
        "rss_rest_kib": rest_rss,
        "rss_holding_kib": holding_rss,
        "kib_per_conn": (holding - rest) / est if est else float("nan"),
        "rss_kib_per_conn": (holding_rss - rest_rss) / est if est else float("nan"),
        "kernel_slab_kib_per_conn": (k_holding[0] - k_rest[0]) / est if est and k_rest and k_holding else None,
        "kernel_tcp_kib_per_conn": (k_holding[1] - k_rest[1]) / est if est and k_rest and k_holding else None,
        # Heartbeat round trips while held, in µs: each load generator's own percentiles (the
        # worst process's p99 bounds the p99 of all of them together).
        "heartbeat_rtt_p50_us": statistics.median(r["latency_us"]["p50"] for r in results) if results and all("latency_us" in r for r in results) else None,
        "heartbeat_rtt_p99_us_worst": max(r["latency_us"]["p99"] for r in results) if results and all("latency_us" in r for r in results) else None,
        "heartbeat_rtt_max_us": max(r["latency_us"]["max"] for r in results) if results and all("latency_us" in r for r in results) else None,
        "during": seen,
        "errors": errors,
    }


def idle_run(load, kind, work, args, n, hold, interval, rate=5000, upstream_source=False, during=None):
    """Start enough proxy processes and backends for n idle WebSockets, hold them, report."""
    settle()
    inst = max(1, -(-n // PER_PROCESS))
    q = Proxy(kind, work, instances=inst, cpu=args.proxy_cpu, upstream_source=upstream_source)
    extra_backends = max(0, -(-n // 16000) - 1)
    load.start_backends(extra_backends)
    q.start()
    try:
        r = idle(load, q, n, hold=hold, interval=interval, rate=rate, during=(lambda procs: during(q, procs)) if during else None)
        r["processes"] = inst
        log(f"   idle {n}: {r['established']} established, {r['alive_at_end']} alive, {r['kib_per_conn']:.2f} KiB/conn, {r['heartbeats_lost']} heartbeats lost ({inst} proxy processes)")
        return r
    finally:
        q.stop()
        for e in load.echos[1:]:
            stop(e)
        load.echos = load.echos[:1]


def scale_run(kind, n, rate, work):
    """The largest idle run: scripts/scale.py in a network namespace, nothing pinned, with the
    issue's 30 s heartbeats held for 60 s (two heartbeats per connection while measured; at
    25 s the machine had no idle moment left at 500,000: BENCHMARKS.md, issue 23's fifth
    steps, run 7)."""
    out = os.path.join(work, f"scale-{kind}.json")
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale.py"), "--netns",
           "--proxy", kind, "--connections", str(n), "--rate", str(rate), "--interval", "30s", "--hold", "60s",
           "--window", "20", "--proxy-cpu", "-1", "--load-cpu", "-1", "--out", out]
    p = start(cmd)  # stopped by PID with SIGTERM on the way out, like every process here
    try:
        p.wait(timeout=n / rate + 900)
    except subprocess.TimeoutExpired:
        log(f"   scale.py for {kind} ran past its time; stopped")
    stop(p, wait=120)
    try:
        with open(out) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return {"connections": n, "established": 0, "alive_at_end": 0, "heartbeats_lost": 0, "errors": {"scale.py": str(e)}}


TUNED = ["net.ipv4.ip_local_port_range", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
         "net.ipv4.tcp_tw_reuse", "net.core.netdev_max_backlog", "net.netfilter.nf_conntrack_max", "net.ipv4.tcp_mem"]


def tune():
    """Benchmark-only sysctls (root): more ports and backlog. Returns what was changed."""
    want = {
        # The proxies and backends listen on ports below 10240, outside the ephemeral range, so
        # an outgoing connection can never take a port a listener is about to bind.
        "net/ipv4/ip_local_port_range": "10240 65535",
        "net/core/somaxconn": "65535",
        "net/ipv4/tcp_max_syn_backlog": "65535",
        "net/ipv4/tcp_tw_reuse": "1",
        "net/core/netdev_max_backlog": "65535",
        # Where connection tracking is active, each proxied WebSocket is two tracked flows; a
        # full table drops new connections' SYNs silently.
        "net/netfilter/nf_conntrack_max": "4194304",
        # Two million loopback sockets: keep TCP out of memory pressure (pages of 4 KiB).
        "net/ipv4/tcp_mem": "1572864 2097152 3145728",
    }
    changed = {}
    for k, v in want.items():
        p = "/proc/sys/" + k
        try:
            with open(p) as f:
                cur = " ".join(f.read().split())
            if cur != v:
                with open(p, "w") as f:
                    f.write(v)
                changed[k.replace("/", ".")] = f"{cur} -> {v}"
        except OSError:
            pass
    return changed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (about 4 minutes)")
    ap.add_argument("--only", default="direct,nginx,haproxy,ringway", help="comma-separated targets")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--json-out", default=None, help="also write the raw results as JSON")
    ap.add_argument("--baseline", default=None, metavar="BINARY",
                    help="also measure this ringway binary (an earlier build) in the same run: a "
                         "'ringway before' column and ringway ÷ before")
    ap.add_argument("--baseline-label", default="an earlier build",
                    help="what the --baseline binary is (e.g. the commit it was built from)")
    ap.add_argument("--no-tls", action="store_true", help="skip the wss rows")
    ap.add_argument("--idle-large", type=int, default=None, help="connections for the large idle run (full: 100000)")
    ap.add_argument("--idle-max", type=int, default=None, help="ringway's largest idle run (full: 500000)")
    ap.add_argument("--idle-max-others", type=int, default=None, help="nginx's and HAProxy's largest idle run (full: 200000)")
    ap.add_argument("--idle-max-rate", type=int, default=2000, help="connections opened per second in the largest idle runs")
    args = ap.parse_args()
    ncpu = os.cpu_count() or 1
    args.load_cpu = 1 if ncpu >= 2 else None
    args.proxy_cpu = 0 if ncpu >= 2 else None
    secs = 3 if args.quick else 5
    repeats = 1 if args.quick else 3  # median of 3 in the full run
    hs_count = 5000 if args.quick else 20000
    small_idle = 10000
    large_idle = args.idle_large if args.idle_large is not None else (0 if args.quick else 100000)
    if args.idle_max is None:
        # 500,000 (issue 23's goal): held with none lost once the run has an established-socket
        # hash of its own and both cores (scale_run). See BENCHMARKS.md, the scale run.
        args.idle_max = 0 if args.quick else 500000
    if args.idle_max_others is None:
        args.idle_max_others = 0 if args.quick else 200000
    targets = [t for t in args.only.split(",") if t]
    if args.baseline:
        global BASELINE
        BASELINE = os.path.abspath(args.baseline)
        targets.insert(targets.index("ringway") + 1 if "ringway" in targets else len(targets), "baseline")
    work = tempfile.mkdtemp(prefix="ringway-bench-")
    changed = tune()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = Load(args, work)
    cert = TlsCert(work)
    results = {}
    t0 = time.time()
    try:
        load.start_backends(1)
        for kind in targets:
            results[kind] = {}
        # The CPU rows, interleaved: every proxy runs at once (each on its own port, idle while
        # another is measured), and each load goes through them in turn, the order reversed
        # every repeat, so that a change in the machine's speed over the run falls on all of
        # them alike instead of on whichever was measured then.
        procs = {kind: Proxy(kind, work, cpu=args.proxy_cpu) for kind in targets}
        try:
            for p in procs.values():
                p.start()
            runs = {kind: {"tp64": [], "tp4k": [], "open_loop": []} for kind in targets}
            for r in range(repeats):
                order = targets if r % 2 == 0 else list(reversed(targets))
                for key, fn in [("tp64", lambda p: throughput(load, p, 64, secs)),
                                ("tp4k", lambda p: throughput(load, p, 4096, secs)),
                                ("open_loop", lambda p: open_loop(load, p, secs))]:
                    for kind in order:
                        settle()
                        runs[kind][key].append(fn(procs[kind]))
            for kind in targets:
                res = results[kind]
                for key, by in [("tp64", "msgs_per_sec"), ("tp4k", "msgs_per_sec"), ("open_loop", "p99_us")]:
                    res[key] = median_of(runs[kind][key], by)
                    if kind == "direct":
                        no_proxy_cpu(res[key])
                log(f"== {kind}: 64 B {res['tp64']['msgs_per_sec']:.0f} msg/s, {fmt(res['tp64']['cpu_us_per_msg'], 2)} CPU-µs/msg; "
                    f"4 KiB {res['tp4k']['msgs_per_sec']:.0f} msg/s, {fmt(res['tp4k']['cpu_us_per_msg'], 2)} CPU-µs/msg; "
                    f"open loop p99 {res['open_loop']['p99_us']} µs")
            for kind in targets:
                settle()
                res = results[kind]
                res["connect"] = handshakes(load, procs[kind], hs_count)
                if kind == "direct":
                    no_proxy_cpu(res["connect"])
                log(f"== {kind}: handshakes {res['connect']['per_sec']:.0f}/s, {fmt(res['connect']['cpu_us_per_handshake'])} CPU-µs each")
            # Where the CPU goes (scripts/kernel_share.py): one more round of each under perf,
            # its samples sorted into the kernel's network stack and socket files (what any
            # proxy on kernel TCP spends) and the proxy's own (user space, io_uring, syscalls).
            if shutil.which("perf") and os.geteuid() == 0 and args.proxy_cpu == 0:
                import kernel_share
                for kind in [t for t in targets if t != "direct"]:
                    res = results[kind]
                    settle()
                    res["share64"] = kernel_share.sample(load, procs[kind], os.path.join(work, "perf.data"), 64, secs)
                    settle()
                    # At least 10,000: a quick run's 2,500 are over in a tenth of a second.
                    res["share_hs"] = kernel_share.sample(load, procs[kind], os.path.join(work, "perf.data"),
                                                          handshakes=max(hs_count // 2, 10000))
                    m, h = res["share64"], res["share_hs"]
                    log(f"== {kind} under perf: per 64 B msg {m['cpu']:.2f} CPU-µs, of which shared "
                        f"{fmt(m['shared'], 2)}, own {fmt(m['own'], 2)}; per handshake "
                        f"{h['cpu']:.1f}, shared {fmt(h['shared'], 1)}, own {fmt(h['own'], 1)}")
            else:
                log("== not run: where the CPU goes (needs perf and root, and the proxy pinned to CPU 0)")
        finally:
            for p in procs.values():
                p.stop()
        for kind in targets:
            res = results[kind]
            if kind != "direct" and not args.no_tls:
                log(f"== {kind} wss")
                res["tls"] = tls_rows(load, kind, work, args, cert, secs, repeats, 2000 if args.quick else 5000)
            if kind != "direct":
                for n in [small_idle] + ([large_idle] if large_idle else []):
                    res[f"idle{n}"] = idle_run(load, kind, work, args, n, hold="3s" if args.quick else "10s", interval="2s" if args.quick else "5s")
            # every proxy on all cores, load unpinned
            if ncpu >= 2:
                a = Proxy(kind, work, workers=ncpu, cpu=None)
                a.start()
                try:
                    settle()
                    res["tp64_allcores"] = throughput(load, a, 64, secs, conns=200, workers=ncpu, cpu=None)
                    log(f"   all cores 64 B: {res['tp64_allcores']['msgs_per_sec']:.0f} msg/s")
                finally:
                    a.stop()
        # The largest idle count held with heartbeats (the scale run): heartbeats every 25s as
        # the playbook recommends, held for 30s, so every connection sends at least one.
        # Each in a network namespace of its own, with a TCP established-socket hash sized for
        # it (the host's is sized at boot for far fewer sockets), and no process pinned: the
        # four sockets of each of these sessions, and the host's own agents, need both cores.
        # That is scripts/scale.py, with backends of its own inside the namespace.
        for kind, n in [("ringway", args.idle_max), ("nginx", args.idle_max_others), ("haproxy", args.idle_max_others)]:
            if n and kind in targets:
                log(f"== {kind} largest idle run")
                settle()
                results[kind]["idlemax"] = scale_run(kind, n, args.idle_max_rate, work)
                log(f"   idle {n}: {results[kind]['idlemax'].get('established')} established, "
                    f"{results[kind]['idlemax'].get('heartbeats_lost')} heartbeats lost, heartbeat p99 "
                    f"{results[kind]['idlemax'].get('heartbeat_rtt_p99_us_worst')} µs")
    finally:
        stop_all()
    elapsed = time.time() - t0
    meta = {
        "kernel": platform.release(),
        "cpus": ncpu,
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip() if "nginx" in targets else "",
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0] if "haproxy" in targets else "",
        "rlimit_nofile": hard,
        "sysctl_changes": changed,
        "sysctls": {k: open("/proc/sys/" + k.replace(".", "/")).read().split() for k in TUNED if os.path.exists("/proc/sys/" + k.replace(".", "/"))},
        "seconds": round(elapsed),
        "command": "scripts/bench.sh " + " ".join(sys.argv[1:]),
        "quick": args.quick,
    }
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    meta["baseline"] = args.baseline_label if args.baseline else None
    write_markdown(args.out, meta, results, targets, small_idle, large_idle, secs, hs_count, PER_PROCESS)
    log(f"done in {elapsed:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    # SIGTERM (timeout, a CI kill) cleans up like Ctrl-C: every started process is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
    except Exception:
        stop_all()
        raise
