#!/usr/bin/env python3
"""CPU per byte for large WebSocket messages in ringway, nginx and HAProxy (issue 23: the
baseline a splice path for bulk flows would have to beat):

    python3 scripts/bulk.py [--rounds 3] [--secs 4] [--connections 10]

Closed-loop echo of 64 KiB and 1 MiB binary messages over `--connections` connections,
through each proxy in turn (one worker / one process on CPU 0; the load generator and the
echo backend on CPU 1). Reported per proxy and size, the median over the rounds: proxy
CPU-µs per MiB echoed (both directions, user-space on its own beside it) and MiB/s. ringway
forwards each received buffer as it is (a copy into the pool buffer by the kernel's recv, a
copy out by its send); splice would move pages instead. Uses scripts/bench.py's machinery
(processes stopped by PID, loads bounded in time). HAProxy runs twice, the second time
as a layer-4 proxy with `option splice-request` and `splice-response` (HTTP mode does not splice a WebSocket tunnel):
what splicing is worth on this kernel.
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

# HAProxy twice: as in scripts/bench.py, and as a layer-4 proxy with `option splice-request` and `splice-response`,
# which splices bulk flows through a pipe in the kernel (in HTTP mode HAProxy does not splice
# a WebSocket tunnel): what splicing is worth on this kernel.
KINDS = ["ringway", "nginx", "haproxy", "haproxy-splice"]
SIZES = [64 * 1024, 1024 * 1024]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=4)
    ap.add_argument("--connections", type=int, default=10)
    args = ap.parse_args()
    cpu = {(k, s): [] for k in KINDS for s in SIZES}
    user = {(k, s): [] for k in KINDS for s in SIZES}
    rate = {(k, s): [] for k in KINDS for s in SIZES}

    def measure(load, kind, p, rnd):
        for size in SIZES:
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

    # "haproxy-splice": HAProxy again, as a layer-4 proxy that splices.
    bench.interleaved(args, KINDS, "ringway-bulk-", measure,
                      proxy=lambda kind, work, cpu: bench.Proxy(kind.split("-")[0], work, cpu=cpu,
                                                                splice=kind.endswith("splice")))
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}
    c, u, m = med(cpu), med(user), med(rate)
    print(f"| per MiB echoed, {args.connections} connections (median of {args.rounds}) | "
          + " | ".join(KINDS) + " | ringway ÷ nginx | ringway ÷ HAProxy | ringway ÷ HAProxy splicing |")
    print("|---" * (len(KINDS) + 4) + "|")
    for size in SIZES:
        name = f"{size // 1024} KiB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MiB"
        vals = [c[(k, size)] for k in KINDS]
        print(f"| proxy CPU-µs, {name} messages | " + " | ".join(f"{v:.0f}" for v in vals)
              + f" | {vals[0] / vals[1]:.2f} | {vals[0] / vals[2]:.2f} | {vals[0] / vals[3]:.2f} |")
        print(f"|   of which user-space | " + " | ".join(f"{u[(k, size)]:.0f}" for k in KINDS) + " | | | |")
        print(f"|   MiB/s | " + " | ".join(f"{m[(k, size)]:.0f}" for k in KINDS) + " | | | |")


if __name__ == "__main__":
    sys.exit(main())
