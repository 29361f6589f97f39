#!/usr/bin/env python3
"""CPU per plain WebSocket handshake in ringway, nginx and HAProxy, for each way a client can end
the connection after its 101 (issue 23: `ringway bench connect` and another load generator
disagreed on ringway's handshake cost against nginx's):

    python3 scripts/handshake_close.py [--rounds 3] [--count 4000]

- `websocket`: a Close frame, its echo through the proxy and the backend, then the socket
  closed (what `ringway bench connect` does by default);
- `tcp`: the socket closed right after the 101, with no Close frame (`--close tcp`).

One worker / one process per proxy on CPU 0, the load generator and the echo backend on CPU 1,
50 handshakes in flight; per proxy and behaviour the median over the rounds, interleaved. Uses
scripts/bench.py's machinery (processes stopped by PID, loads bounded in time).
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

KINDS = ["ringway", "nginx", "haproxy"]
CLOSES = ["websocket", "tcp"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=4000, help="handshakes per measurement")
    args = ap.parse_args()
    cpu = {(k, c): [] for k in KINDS for c in CLOSES}
    user = {(k, c): [] for k in KINDS for c in CLOSES}

    def measure(load, kind, p, rnd):
        for close in CLOSES:
            bench.settle()
            h = bench.handshakes(load, p, args.count, ["--close", close])
            if h["established"] < args.count:
                raise RuntimeError(f"{kind} --close {close}: {h['established']} of {args.count}")
            cpu[(kind, close)].append(h["cpu_us_per_handshake"])
            user[(kind, close)].append(h["user_us_per_handshake"])
            bench.log(f"round {rnd + 1}/{args.rounds} {kind} --close {close}: "
                      f"{h['cpu_us_per_handshake']:.1f} CPU-µs ({h['user_us_per_handshake']:.1f} user)")

    bench.interleaved(args, KINDS, "ringway-hs-close-", measure)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    med_user = {k: statistics.median(v) for k, v in user.items()}
    print(f"| proxy CPU-µs per plain handshake (median of {args.rounds}) | "
          + " | ".join(KINDS) + " | ringway ÷ nginx | ringway ÷ HAProxy |")
    print("|---" * (len(KINDS) + 3) + "|")
    for close in CLOSES:
        vals = [med[(k, close)] for k in KINDS]
        print(f"| `--close {close}` | " + " | ".join(f"{v:.1f}" for v in vals)
              + f" | {vals[0] / vals[1]:.2f} | {vals[0] / vals[2]:.2f} |")
        uvals = [med_user[(k, close)] for k in KINDS]
        print(f"|   of which user-space | " + " | ".join(f"{v:.1f}" for v in uvals) + " | | |")


if __name__ == "__main__":
    sys.exit(main())
