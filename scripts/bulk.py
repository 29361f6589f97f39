#!/usr/bin/env python3
"""CPU per byte for large WebSocket messages in ringway (splicing bulk frames, and through
buffers only), nginx and HAProxy (as an HTTP proxy, and as a layer-4 proxy that splices):

    python3 scripts/bulk.py [--rounds 3] [--secs 4] [--connections 10]
                            [--sizes 4k,16k,64k,256k,1m] [--splice-min 64k]

Closed-loop echo of binary messages of each size over `--connections` connections, through
each proxy in turn (one worker / one process on CPU 0; the load generator and the echo
backend on CPU 1). Reported per proxy and size, the median over the rounds: proxy CPU-µs per
MiB echoed (both directions, user-space on its own beside it) and MiB/s.

`ringway` splices a frame's payload (socket → pipe → socket, no copy through user space)
when at least `--splice-min` of it is still to come after the read that brought its header
(`runtime.splice_min`; without the option, ringway's default); `ringway-buffers` is the same
build with `splice_min = 0`: every byte through the buffer pool (a copy in by the kernel's
recv, a copy out by its send). `haproxy-splice` is HAProxy as a layer-4 proxy with `option
splice-request` and `splice-response` (in HTTP mode HAProxy does not splice a WebSocket
tunnel). Uses scripts/bench.py's machinery (processes stopped by PID, loads bounded in time).
"""
import argparse
import importlib.util
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench", os.path.join(HERE, "bench.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

KINDS = ["ringway", "ringway-buffers", "nginx", "haproxy", "haproxy-splice"]


def size_of(text):
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    return int(t.rstrip("km")) * mult


def name_of(size):
    return f"{size // 1024} KiB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=4)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--sizes", default="64k,1m", help="message sizes, comma-separated (k, m suffixes)")
    ap.add_argument("--splice-min", default=None, help="`runtime.splice_min` for `ringway` (default: ringway's)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="which of " + ", ".join(KINDS))
    args = ap.parse_args()
    sizes = [size_of(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k}")
    cpu = {(k, s): [] for k in kinds for s in sizes}
    user = {(k, s): [] for k in kinds for s in sizes}
    rate = {(k, s): [] for k in kinds for s in sizes}

    def measure(load, kind, p, rnd):
        for size in sizes:
            bench.settle()
            r = bench.throughput(load, p, size, args.secs, conns=args.connections)
            if r["errors"]:
                raise RuntimeError(f"{kind} {size} B: {r['errors']}")
            mib = size / (1024 * 1024)
            # Per message the proxy moves `size` bytes each way.
            cpu[(kind, size)].append(r["cpu_us_per_msg"] / mib)
            user[(kind, size)].append(r["user_us_per_msg"] / mib)
            rate[(kind, size)].append(r["msgs_per_sec"] * mib)
            bench.log(f"round {rnd + 1}/{args.rounds} {kind} {size} B: "
                      f"{cpu[(kind, size)][-1]:.0f} CPU-µs/MiB ({user[(kind, size)][-1]:.0f} user), "
                      f"{rate[(kind, size)][-1]:.0f} MiB/s")

    def proxy(kind, work, cpu):
        runtime = ""
        if kind == "ringway-buffers":
            runtime = "splice_min = 0"
        elif kind == "ringway" and args.splice_min is not None:
            runtime = f'splice_min = "{args.splice_min}"'
        return bench.Proxy(kind.split("-")[0], work, cpu=cpu, splice=kind == "haproxy-splice",
                           runtime_extra=runtime)

    bench.interleaved(args, kinds, "ringway-bulk-", measure, proxy=proxy)
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}
    c, u, m = med(cpu), med(user), med(rate)
    ratios = [(a, b) for a, b in [("ringway", "ringway-buffers"), ("ringway", "nginx"),
                                  ("ringway", "haproxy"), ("ringway", "haproxy-splice")]
              if a in kinds and b in kinds]
    print(f"Command: `python3 scripts/bulk.py {' '.join(sys.argv[1:])}`\n")
    print(f"| per MiB echoed, {args.connections} connections (median of {args.rounds}) | "
          + " | ".join(kinds) + "".join(f" | {a} ÷ {b}" for a, b in ratios) + " |")
    print("|---" * (len(kinds) + len(ratios) + 1) + "|")
    blank = " |" * len(ratios)
    for size in sizes:
        vals = {k: c[(k, size)] for k in kinds}
        print(f"| proxy CPU-µs, {name_of(size)} messages | " + " | ".join(f"{vals[k]:.0f}" for k in kinds)
              + "".join(f" | {vals[a] / vals[b]:.2f}" for a, b in ratios) + " |")
        print("|   of which user-space | " + " | ".join(f"{u[(k, size)]:.0f}" for k in kinds) + blank)
        print("|   MiB/s | " + " | ".join(f"{m[(k, size)]:.0f}" for k in kinds) + blank)


if __name__ == "__main__":
    sys.exit(main())
