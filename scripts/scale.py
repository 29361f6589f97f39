#!/usr/bin/env python3
"""The scale run on its own (issue 23): hold N idle proxied WebSockets through ringway with
heartbeats, and say where the machine's time goes while they are held.

    python3 scripts/scale.py [--connections 500000] [--rate 2000] [--interval 30s] [--hold 60s]
                             [--window 20] [--perf] [--out FILE.json]

The set-up is `scripts/bench.sh`'s largest idle run (its machinery: benchmark sysctls, several
proxy processes on one port, 8,000 sessions each, upstream sockets bound over 127.3.0.0/16,
several echo backends, load generators of 18,000 connections each, every process stopped by
PID). Proxies run on CPU 0, the load generators and the echo backends on CPU 1.

While everything is held, for `--window` seconds: the machine's CPU from /proc/stat (user,
system, softirq, idle) and each group's (proxy, load generators, echo backends) from their
/proc/PID/stat; with `--perf`, `perf record -a` over the same window, summed by process group
and by kernel/user space, with the kernel's top symbols. At the end: established, alive, lost
heartbeats and the heartbeat round trips while held (each load generator's percentiles; the
worst one's p99 bounds the p99 of all).
"""
import argparse
import collections
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench", os.path.join(HERE, "bench.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def proc_stat():
    """The machine's CPU ticks: (user+nice, system, irq+softirq, idle+iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return v[0] + v[1], v[2], v[5] + v[6], v[3] + v[4]


def groups_now(groups):
    return {name: bench.cpu_ticks(pids) for name, pids in groups.items()}


def owners(groups):
    """Thread id -> group name (perf's pid is the thread's)."""
    owner = {}
    for name, pids in groups.items():
        for p in pids:
            owner[p] = name
            try:
                for t in os.listdir(f"/proc/{p}/task"):
                    owner[int(t)] = name
            except OSError:
                pass
    return owner


def perf_summary(data, owner):
    """perf samples by group (proxy / load / echo / other / idle) and space (kernel / user), and
    the kernel's top symbols outside the idle loop."""
    out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "pid,dso,sym",
                          "--percent-limit", "0", "-q"], capture_output=True, text=True, timeout=600).stdout
    by = collections.Counter()
    syms = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+):\S*\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        pct, pid, dso, space, sym = float(m.group(1)), int(m.group(2)), m.group(3), m.group(4), m.group(5).strip()
        kernel = space == "k"
        group = "idle" if pid == 0 else owner.get(pid, "other")
        by[(group, "kernel" if kernel else "user")] += pct
        if kernel and pid != 0:
            syms[sym] += pct
    return {"by_group": {f"{g}/{s}": round(v, 2) for (g, s), v in sorted(by.items(), key=lambda kv: -kv[1])},
            "kernel_top": [(s, round(v, 2)) for s, v in syms.most_common(25)]}


def queues(proxy_port, backend_port=9000):
    """Where bytes wait, from `ss -tn`: sockets with unread (Recv-Q) or unacknowledged (Send-Q)
    bytes, by role — the proxy's client side (local port = the proxy's), the load generators'
    (peer port = the proxy's), the proxy's upstream side (peer port = the backend's), the echo
    backends' (local port = the backend's)."""
    roles = collections.defaultdict(lambda: [0, 0, 0, 0, 0])  # sockets, with recv-q, recv bytes, with send-q, send bytes
    p = subprocess.Popen(["ss", "-tnH", "state", "established"], stdout=subprocess.PIPE, text=True)
    for line in p.stdout:
        f = line.split()
        if len(f) < 4:
            continue
        rq, sq, local, peer = int(f[0]), int(f[1]), f[2], f[3]
        lp, pp = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
        role = ("proxy-client-side" if lp == proxy_port else "load" if pp == proxy_port else
                "proxy-upstream-side" if pp == backend_port else "echo" if lp == backend_port else "other")
        r = roles[role]
        r[0] += 1
        if rq:
            r[1] += 1
            r[2] += rq
        if sq:
            r[3] += 1
            r[4] += sq
    p.wait()
    return {k: dict(zip(["sockets", "with_recv_q", "recv_q_bytes", "with_send_q", "send_q_bytes"], v)) for k, v in roles.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=500000)
    ap.add_argument("--rate", type=int, default=2000, help="connections opened per second, all load generators together")
    ap.add_argument("--interval", default="30s", help="heartbeat period per connection")
    ap.add_argument("--hold", default="60s", help="how long every load generator holds once its connections are open")
    ap.add_argument("--window", type=int, default=20, help="seconds of CPU sampling while held")
    ap.add_argument("--perf", action="store_true", help="perf record -a over the window")
    ap.add_argument("--queues", action="store_true", help="after the window, count the sockets with bytes waiting (ss -tn)")
    ap.add_argument("--netns", action="store_true",
                    help="run everything in a network namespace of its own (unshare --net, loopback up), "
                         "out of sight of host agents that read the socket table")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    if args.netns and os.environ.get("RINGWAY_SCALE_NETNS") != "1":
        # Re-run this script in a new network namespace; its sysctls (port range, backlog) are
        # the namespace's own, so bench.tune() runs again inside.
        env = dict(os.environ, RINGWAY_SCALE_NETNS="1")
        sys.exit(subprocess.run(["unshare", "--net", "--", sys.executable] + sys.argv, env=env).returncode)
    if args.netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = tempfile.mkdtemp(prefix="ringway-scale-")
    changed = bench.tune()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = bench.Load(args, work)
    tick = os.sysconf("SC_CLK_TCK")

    def during(proxy, procs):
        groups = {"proxy": proxy.pids(), "load": [p.pid for p in procs],
                  "echo": [p.pid for p in load.echos],
                  # the host's init (on this VM an agent that reads the socket table)
                  "pid1": [1]}
        owner = owners(groups)
        perf = None
        data = os.path.join(work, "perf.data")
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-o", data, "--", "sleep", str(args.window)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m0, g0, t0 = proc_stat(), groups_now(groups), time.time()
        time.sleep(args.window)
        m1, g1, t1 = proc_stat(), groups_now(groups), time.time()
        secs = t1 - t0
        machine = dict(zip(["user", "system", "irq_softirq", "idle"], [(b - a) / tick / secs for a, b in zip(m0, m1)]))
        per_group = {name: {"user": (g1[name][0] - g0[name][0]) / tick / secs,
                            "system": (g1[name][1] - g0[name][1]) / tick / secs} for name in groups}
        res = {"seconds": round(secs, 1), "machine_cores": machine, "group_cores": per_group,
               "processes": {k: len(v) for k, v in groups.items()}}
        if perf:
            perf.wait(timeout=args.window + 120)
        if args.queues:
            res["queues"] = queues(proxy.port)
        if perf:
            res["perf"] = perf_summary(data, owner)
        return res

    t = time.time()
    init0 = bench.cpu_ticks([1])
    try:
        load.start_backends(1)
        r = bench.idle_run(load, "ringway", work, args, args.connections, hold=args.hold, interval=args.interval,
                           rate=args.rate, upstream_source=True, during=during)
    finally:
        bench.stop_all()
    init1 = bench.cpu_ticks([1])
    r["pid1_cpu_seconds_whole_run"] = {"user": (init1[0] - init0[0]) / tick, "system": (init1[1] - init0[1]) / tick}
    r["sysctl_changes"] = changed
    r["command"] = "python3 scripts/scale.py " + " ".join(sys.argv[1:])
    r["seconds"] = round(time.time() - t)
    text = json.dumps(r, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
