#!/usr/bin/env python3
"""Interleaved A/B of ringway builds: is a data-path change free?

    python3 scripts/ab.py --build NAME=BINARY [--build NAME=BINARY ...] [--rounds 6] [--tls]

The first build is the one under test (usually target/release/ringway); every other is
compared to it. Each round measures every build in turn — same loads, same core (the proxy on
CPU 0 with one worker; the load generator and the echo backends, always the current build's, on
CPU 1) — so machine drift falls on all builds alike. Per build and figure the median over the
rounds is reported, with the ratio to the first build:

- proxy CPU-µs per echoed message, 64 B and 4 KiB (closed loop, 100 connections), in total and
  user-space on its own (small beside the kernel's share: a doubling there hides in the total);
- proxy CPU-µs per plain WebSocket handshake (accept, parse, upstream connect, 101, close);
- with --tls: the same per 64 B wss message and per full TLS 1.3 handshake;
- user-space KiB per idle proxied WebSocket (--idle N connections, 0 to skip).

With --aa the first build is measured a second time as a build of its own: its ratio to the
first is the run's noise floor (an A/A comparison), printed beside the others.

Uses scripts/bench.py's machinery (processes stopped by PID, loads bounded in time).
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bench", os.path.join(HERE, "bench.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def one_round(load, work, binary, args, cert):
    """Every figure for one build, once."""
    bench.BASELINE = binary
    out = {}
    p = bench.Proxy("baseline", work, cpu=args.proxy_cpu)
    p.start()
    try:
        for size in (64, 4096):
            bench.settle()
            r = bench.throughput(load, p, size, args.secs)
            out[f"cpu_{size}"] = r["cpu_us_per_msg"]
            out[f"user_{size}"] = r["user_us_per_msg"]
        bench.settle()
        h = bench.handshakes(load, p, args.handshakes)
        out["cpu_hs"] = h["cpu_us_per_handshake"]
        out["user_hs"] = h["user_us_per_handshake"]
        if args.idle:
            bench.settle()
            i = bench.idle(load, p, args.idle, hold="3s", interval="5s", rate=5000)
            out["kib_idle"] = i["kib_per_conn"]
    finally:
        p.stop()
    if cert:
        p = bench.Proxy("baseline", work, cpu=args.proxy_cpu, tls=cert)
        p.start()
        try:
            bench.settle()
            r = bench.throughput(load, p, 64, args.secs)
            out["cpu_wss_64"] = r["cpu_us_per_msg"]
            out["user_wss_64"] = r["user_us_per_msg"]
            bench.settle()
            h = bench.handshakes(load, p, args.handshakes // 4, ["--no-resume"])
            out["cpu_tls_hs"] = h["cpu_us_per_handshake"]
        finally:
            p.stop()
    return out


LABELS = [
    ("cpu_64", "proxy CPU-µs per echoed msg, 64 B"),
    ("user_64", "  of which user-space"),
    ("cpu_4096", "proxy CPU-µs per echoed msg, 4 KiB"),
    ("user_4096", "  of which user-space"),
    ("cpu_hs", "proxy CPU-µs per plain handshake"),
    ("user_hs", "  of which user-space"),
    ("kib_idle", "user-space KiB per idle proxied WebSocket"),
    ("cpu_wss_64", "proxy CPU-µs per echoed wss msg, 64 B"),
    ("user_wss_64", "  of which user-space"),
    ("cpu_tls_hs", "proxy CPU-µs per full TLS 1.3 handshake"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", required=True, metavar="NAME=BINARY")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--secs", type=int, default=3, help="seconds per throughput load")
    ap.add_argument("--handshakes", type=int, default=4000)
    ap.add_argument("--idle", type=int, default=5000, help="idle WebSockets held per round (0: skip)")
    ap.add_argument("--tls", action="store_true", help="also the wss rows")
    ap.add_argument("--aa", action="store_true",
                    help="measure the first build twice, as two builds: its ratio is the run's noise floor")
    args = ap.parse_args()
    args.proxy_cpu, args.load_cpu = 0, 1
    builds = []
    for b in args.build:
        name, _, binary = b.partition("=")
        builds.append((name, os.path.abspath(binary)))
    if args.aa:
        builds.append((builds[0][0] + "-again", builds[0][1]))
    bench.tune()
    work = tempfile.mkdtemp(prefix="ringway-ab-")
    load = bench.Load(args, work)
    load.start_backends()
    cert = bench.TlsCert(work) if args.tls else None
    results = {name: [] for name, _ in builds}
    try:
        for rnd in range(args.rounds):
            # Alternate the order so neither build always goes first.
            order = builds if rnd % 2 == 0 else list(reversed(builds))
            for name, binary in order:
                r = one_round(load, work, binary, args, cert)
                results[name].append(r)
                bench.log(f"round {rnd + 1}/{args.rounds} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    finally:
        load.stop_backends()
        bench.stop_all()
    first = builds[0][0]
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    names = [n for n, _ in builds]
    header = "| figure (median of %d interleaved rounds) | %s | %s |" % (
        args.rounds, " | ".join(names), " | ".join(f"{n} ÷ {first}" for n in names[1:]))
    print(header)
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    for key, label in LABELS:
        if key not in med[first]:
            continue
        vals = [med[n][key] for n in names]
        ratios = [v / vals[0] if vals[0] else float("nan") for v in vals[1:]]
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + " | "
              + " | ".join(f"{x:.3f}" for x in ratios) + " |")
    print()
    print("Builds: " + "; ".join(f"{n} = {b}" for n, b in builds))
    if args.aa:
        print(f"Noise floor: `{first}-again ÷ {first}` is one binary measured as two builds in the same "
              "run; a ratio of another build no further from 1 than it is not a change.")


if __name__ == "__main__":
    sys.exit(main())
