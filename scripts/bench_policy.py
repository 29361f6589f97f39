#!/usr/bin/env python3
"""What upstream policy costs: ringway's CPU per WebSocket handshake under each balancer (the
same 8 echo backends, interleaved rounds, medians), and the health checker's CPU at 1,000
servers. Run after `cargo build --release`; prints a Markdown table for BENCHMARKS.md.

    python3 scripts/bench_policy.py [--rounds 5] [--handshakes 4000] [--servers 1000] [--secs 20]
"""
import argparse, importlib.util, os, statistics, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench", os.path.join(HERE, "bench.py"))
b = importlib.util.module_from_spec(spec)
spec.loader.exec_module(b)

BALANCERS = {
    "round_robin": "",
    "least_conn": 'balance = "least_conn"',
    "ip_hash": 'balance = "ip_hash"',
    "hash $remote_addr consistent": 'hash = { key = "$remote_addr", consistent = true }',
    "hash $request_uri": 'hash = { key = "$request_uri" }',
}


def thread_ticks(pid, name):
    """utime + stime of the threads of `pid` named `name`."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if open(f"/proc/{pid}/task/{tid}/comm").read().strip() != name:
                continue
            f = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total


def balancers(load, work, rounds, count):
    procs = {}
    for i, (name, extra) in enumerate(BALANCERS.items()):
        p = b.Proxy("ringway", os.path.join(work, f"b{i}"), cpu=0, upstream_extra=extra, port=7200 + i)
        p.start()
        procs[name] = p
    per = {n: [] for n in procs}
    for r in range(rounds):
        for name, p in procs.items():
            b.settle()
            h = b.handshakes(load, p, count)
            if h["errors"]:
                raise RuntimeError(f"{name}: {h['errors']} errors")
            per[name].append(h["cpu_us_per_handshake"])
        b.log(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in per.items()))
    for p in procs.values():
        p.stop()
    return {n: statistics.median(v) for n, v in per.items()}


def health(load, work, servers, secs):
    """1,000 servers on 127.1.x.y (one echo listening on all), checked every second."""
    addrs = [f"127.1.{i // 250}.{1 + i % 250}:9100" for i in range(servers)]
    cmd = [b.BIN, "echo", "--workers", "1"]
    for a in addrs:
        cmd += ["--listen", a]
    echo = b.start(cmd, cpu=1)
    for a in addrs[:: max(1, servers // 10)]:
        h, port = a.split(":")
        b.wait_port(h, int(port))
    d = os.path.join(work, "health")
    os.makedirs(d, exist_ok=True)
    listed = ", ".join(f'{{ addr = "{a}" }}' for a in addrs)
    path = os.path.join(d, "ringway.toml")
    with open(path, "w") as f:
        f.write(f"""[runtime]
workers = 1
access_log = false
[[upstream]]
name = "many"
servers = [{listed}]
health_check = {{ interval = "1s", timeout = "500ms", request = "GET /health HTTP/1.0\\r\\n\\r\\n" }}
[[server]]
listen = ["127.0.0.1:7300"]
[[server.location]]
path = "/"
upstream = "many"
""")
    p = b.start([b.BIN, "run", "--config", path], cpu=0, out=open(os.path.join(d, "stderr.log"), "ab"))
    b.wait_port("127.0.0.1", 7300)
    time.sleep(2)
    hz = os.sysconf("SC_CLK_TCK")
    t0, h0, w0 = time.time(), thread_ticks(p.pid, "ringway-health"), thread_ticks(p.pid, "ringway-w0")
    time.sleep(secs)
    t1, h1, w1 = time.time(), thread_ticks(p.pid, "ringway-health"), thread_ticks(p.pid, "ringway-w0")
    b.stop(p)
    b.stop(echo)
    wall = t1 - t0
    checks = servers * wall  # one per server per second
    return {"servers": servers, "secs": round(wall, 1), "health_cpu_pct": 100.0 * (h1 - h0) / hz / wall,
            "us_per_check": 1e6 * (h1 - h0) / hz / checks, "worker_cpu_pct": 100.0 * (w1 - w0) / hz / wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--handshakes", type=int, default=4000)
    ap.add_argument("--servers", type=int, default=1000)
    ap.add_argument("--secs", type=int, default=20)
    ap.add_argument("--health-only", action="store_true", help="only the health-checker figure")
    args = ap.parse_args()
    b.tune()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="ringway-policy-")
    load = b.Load(argparse.Namespace(load_cpu=1, proxy_cpu=0, quick=True), work)
    try:
        cost = {"round_robin": 1.0}
        if not args.health_only:
            load.start_backends(1)
            cost = balancers(load, work, args.rounds, args.handshakes)
            load.stop_backends()
        hc = health(load, work, args.servers, args.secs)
    finally:
        b.stop_all()
    rr = cost["round_robin"]
    if args.health_only:
        cost = {}
    print(f"\n`python3 scripts/bench_policy.py --rounds {args.rounds} --handshakes {args.handshakes} "
          f"--servers {args.servers} --secs {args.secs}`: ringway (1 worker on CPU 0) in front of 8 echo "
          f"backends, {args.handshakes} WebSocket handshakes per round (50 at once), each balancer once per "
          f"round, median of {args.rounds} rounds.\n")
    print("| balancer | CPU µs per handshake | ÷ round_robin |")
    print("|---|---|---|")
    for n, v in cost.items():
        print(f"| {n} | {v:.1f} | {v / rr:.3f} |")
    print(f"\nHealth checker: {hc['servers']} servers checked every second (`GET /health`, one echo "
          f"listening on all of them) for {hc['secs']} s: the checker thread used {hc['health_cpu_pct']:.1f}% "
          f"of a core ({hc['us_per_check']:.1f} µs per check); the idle worker {hc['worker_cpu_pct']:.2f}%.")


if __name__ == "__main__":
    sys.exit(main())
