#!/usr/bin/env python3
"""The scale run on its own (issue 23): hold N idle proxied WebSockets through one proxy with
heartbeats, and say where the machine's time goes while they are held. `scripts/bench.sh`'s
largest idle runs are this script.

    python3 scripts/scale.py [--proxy ringway] [--connections 500000] [--rate 2000]
                             [--interval 30s] [--hold 60s] [--window 20] [--perf] [--queues]
                             [--netns] [--proxy-cpu 0 --load-cpu 1] [--out FILE.json]

The set-up is `scripts/bench.sh`'s largest idle run (its machinery: benchmark sysctls, several
proxy processes on one port, 8,000 sessions each, upstream sockets bound over 127.3.0.0/16,
several echo backends, load generators of 18,000 connections each, every process stopped by
PID). Proxies run on CPU 0, the load generators and the echo backends on CPU 1, unless
`--proxy-cpu -1 --load-cpu -1` leaves the placing to the scheduler. `--netns` runs everything
in a network namespace of its own with an established-socket hash sized for the run (see
tuning/99-ringway.conf: the host's is sized at boot).

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
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench", os.path.join(HERE, "bench.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def our_groups():
    """This script's processes by role, from their command lines: proxy, load generators, echo
    backends; and the host's init (on this VM an agent that walks every process's descriptors)."""
    groups = {"proxy": [], "load": [], "echo": [], "pid1": [1]}
    for pid in bench.descendants(os.getpid()):
        try:
            cmd = open(f"/proc/{pid}/cmdline").read().split("\0")
        except OSError:
            continue
        if len(cmd) > 2 and cmd[1] == "run":
            groups["proxy"].append(pid)
        elif len(cmd) > 2 and cmd[1] == "bench":
            groups["load"].append(pid)
        elif len(cmd) > 1 and cmd[1] == "echo":
            groups["echo"].append(pid)
    return groups


def established_now():
    """TCP sockets in use in this network namespace (/proc/net/sockstat)."""
    with open("/proc/net/sockstat") as f:
        tcp = next(l for l in f if l.startswith("TCP:")).split()
    return int(tcp[tcp.index("inuse") + 1])


def proc_stat():
    """Each CPU's ticks and the machine's ("cpu"): (user+nice, system, irq+softirq, idle+iowait)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                name, *v = line.split()
                v = [int(x) for x in v[:7]]
                out[name] = (v[0] + v[1], v[2], v[5] + v[6], v[3] + v[4])
    return out


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
    ap.add_argument("--proxy", default="ringway", choices=["ringway", "nginx", "haproxy"])
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
    ap.add_argument("--ehash", type=int, default=None,
                    help="with --netns: the namespace's own TCP established-hash buckets "
                         "(net.ipv4.tcp_child_ehash_entries; default: a power of two >= 4 sockets per connection)")
    ap.add_argument("--proxy-cpu", type=int, default=0, help="CPU for the proxies (-1: not pinned)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU for the load generators and backends (-1: not pinned)")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    args.proxy_cpu = None if args.proxy_cpu < 0 else args.proxy_cpu
    args.load_cpu = None if args.load_cpu < 0 else args.load_cpu
    if args.netns and os.environ.get("RINGWAY_SCALE_NETNS") != "1":
        # Re-run this script in a new network namespace; its sysctls (port range, backlog) are
        # the namespace's own, so bench.tune() runs again inside.
        # A namespace can have an established-socket hash of its own, sized for the run (the
        # host's is sized at boot); the setting applies to namespaces created after it is set.
        env = dict(os.environ, RINGWAY_SCALE_NETNS="1")
        knob = "/proc/sys/net/ipv4/tcp_child_ehash_entries"
        want = args.ehash or 1 << (4 * args.connections - 1).bit_length()
        old = open(knob).read().strip() if os.path.exists(knob) else None
        if old is not None:
            with open(knob, "w") as f:
                f.write(str(min(want, 1 << 24)))
        try:
            inner = subprocess.Popen(["unshare", "--net", "--", sys.executable] + sys.argv, env=env)
            try:
                rc = inner.wait()
            except KeyboardInterrupt:
                # Stopped (Ctrl-C, SIGTERM): the run inside stops what it started.
                inner.terminate()
                inner.wait(timeout=120)
                raise
        finally:
            if old is not None:
                with open(knob, "w") as f:
                    f.write(old)
        sys.exit(rc)
    if args.netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = tempfile.mkdtemp(prefix="ringway-scale-")
    changed = bench.tune()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = bench.Load(args, work)
    tick = os.sysconf("SC_CLK_TCK")

    def sample(label):
        """CPU of the machine and of each group for --window seconds (perf alongside)."""
        groups = our_groups()
        owner = owners(groups)
        perf = None
        data = os.path.join(work, f"perf-{label}.data")
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-a", "-F", "499", "-o", data, "--", "sleep", str(args.window)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m0, g0, t0 = proc_stat(), groups_now(groups), time.time()
        time.sleep(args.window)
        m1, g1, t1 = proc_stat(), groups_now(groups), time.time()
        secs = t1 - t0
        machine = {("machine" if cpu == "cpu" else cpu): dict(zip(["user", "system", "irq_softirq", "idle"],
                                                                [(b - a) / tick / secs for a, b in zip(m0[cpu], m1[cpu])]))
                   for cpu in m0}
        per_group = {name: {"user": (g1[name][0] - g0[name][0]) / tick / secs,
                            "system": (g1[name][1] - g0[name][1]) / tick / secs} for name in groups}
        res = {"seconds": round(secs, 1), "machine_cores": machine, "group_cores": per_group,
               "processes": {k: len(v) for k, v in groups.items()}, "tcp_established": established_now()}
        if perf:
            perf.wait(timeout=args.window + 120)
        if args.queues and label == "held":
            res["queues"] = queues(bench.PORTS[args.proxy])
        if perf:
            res["perf"] = perf_summary(data, owner)
        return res

    ramp = {}

    def sample_ramp():
        # Half-way through opening (at --rate), while connections are still being opened.
        time.sleep(args.connections / args.rate / 2)
        ramp.update(sample("ramp"))

    threading.Thread(target=sample_ramp, daemon=True).start()

    t = time.time()
    init0 = bench.cpu_ticks([1])
    try:
        load.start_backends(1)
        r = bench.idle_run(load, args.proxy, work, args, args.connections, hold=args.hold, interval=args.interval,
                           rate=args.rate, upstream_source=args.proxy == "ringway",
                           during=lambda proxy, procs: sample("held"))
        r["ramp"] = ramp
    finally:
        bench.stop_all()
    init1 = bench.cpu_ticks([1])
    r["pid1_cpu_seconds_whole_run"] = {"user": (init1[0] - init0[0]) / tick, "system": (init1[1] - init0[1]) / tick}
    r["sysctl_changes"] = changed
    r["tcp_ehash_entries"] = open("/proc/sys/net/ipv4/tcp_ehash_entries").read().strip() if os.path.exists("/proc/sys/net/ipv4/tcp_ehash_entries") else None
    r["command"] = "python3 scripts/scale.py " + " ".join(sys.argv[1:])
    r["seconds"] = round(time.time() - t)
    text = json.dumps(r, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    # SIGTERM (a timeout, bench.py stopping it) cleans up like Ctrl-C: every process started is
    # stopped by PID (bench.stop_all in main's finally).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
