"""The table `scripts/bench.sh` writes at the top of BENCHMARKS.md, from bench.py's results
(the sections after it are kept)."""
import os


def fmt(v, digits=0):
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, str):
        return v
    return f"{v:,}"


def write_markdown(path, meta, results, targets, small_idle, large_idle, secs, hs_count, per_process):
    cols = [t for t in ["ringway", "baseline", "nginx", "haproxy", "direct"] if t in targets]
    names = {"ringway": "ringway", "baseline": "ringway before", "nginx": "nginx", "haproxy": "HAProxy",
             "direct": "direct"}
    extra = ["baseline"] if "baseline" in cols else []

    def get(t, *keys):
        v = results.get(t, {})
        for k in keys:
            if not isinstance(v, dict):
                return None
            v = v.get(k)
        return v

    def ratio(t, *keys):
        r, o = get("ringway", *keys), get(t, *keys)
        if not r or not o or isinstance(r, str):
            return "—"
        return f"{r / o:.2f}"

    rows = [
        ("throughput 64 B, msg/s (100 conns, closed loop)", ("tp64", "msgs_per_sec"), 0),
        ("  p50 / p99 latency µs", None, None),
        ("proxy CPU-µs per echoed msg, 64 B (= CPU-s per million)", ("tp64", "cpu_us_per_msg"), 2),
        ("  of which user-space", ("tp64", "user_us_per_msg"), 2),
        ("  a round under perf: CPU-µs per msg", ("share64", "cpu"), 2),
        ("    of which the kernel's network stack and socket files (any proxy on kernel TCP)", ("share64", "shared"), 2),
        ("    of which the proxy's own (user space, io_uring, syscalls)", ("share64", "own"), 2),
        ("      of which user space from perf's samples (4,000 a second; the user-space row above is /proc's 10 ms ticks)", ("share64", "user space"), 2),
        ("throughput 4 KiB, msg/s", ("tp4k", "msgs_per_sec"), 0),
        ("proxy CPU-µs per echoed msg, 4 KiB (= CPU-s per million)", ("tp4k", "cpu_us_per_msg"), 2),
        ("  of which user-space", ("tp4k", "user_us_per_msg"), 2),
        ("open loop 5,000 msg/s over 1,000 conns, 64 B: p50 µs", ("open_loop", "p50_us"), 0),
        ("  p99 µs", ("open_loop", "p99_us"), 0),
        ("handshakes/s (concurrency 50, each closed cleanly)", ("connect", "per_sec"), 0),
        ("proxy CPU-µs per handshake (incl. upstream connect, close)", ("connect", "cpu_us_per_handshake"), 0),
        ("  a round under perf: CPU-µs per handshake", ("share_hs", "cpu"), 1),
        ("    of which the kernel's network stack and socket files (any proxy on kernel TCP)", ("share_hs", "shared"), 1),
        ("    of which the proxy's own (user space, io_uring, syscalls)", ("share_hs", "own"), 1),
        ("      of which user space", ("share_hs", "user space"), 1),
        (f"user-space KiB per idle proxied WebSocket at {small_idle:,}", (f"idle{small_idle}", "kib_per_conn"), 2),
        (f"  established / alive at end / heartbeats lost", None, None),
        # How busy the machine was while the memory was read: a heartbeat arriving while the
        # proxy waits for the CPU holds a receive buffer until it runs.
        ("  heartbeat round trip while held, µs: p99 (the worst load generator's)", (f"idle{small_idle}", "heartbeat_rtt_p99_us_worst"), 0),
        ("  kernel slab KiB per idle WebSocket, whole host (client, proxy and backend sockets)", (f"idle{small_idle}", "kernel_slab_kib_per_conn"), 2),
        ("  kernel socket-buffer KiB per idle WebSocket, whole host", (f"idle{small_idle}", "kernel_tcp_kib_per_conn"), 2),
    ]
    if large_idle:
        rows += [
            (f"user-space KiB per idle proxied WebSocket at {large_idle:,}", (f"idle{large_idle}", "kib_per_conn"), 2),
            (f"  established / alive at end / heartbeats lost ", None, None),
            ("  heartbeat round trip while held, µs: p99 (the worst load generator's) ", (f"idle{large_idle}", "heartbeat_rtt_p99_us_worst"), 0),
            ("  the same counted as VmRSS summed over the processes (a shared page once per process)", (f"idle{large_idle}", "rss_kib_per_conn"), 2),
        ]
    rows += [("throughput 64 B, all cores, msg/s (200 conns)", ("tp64_allcores", "msgs_per_sec"), 0)]
    if any("tls" in results.get(c, {}) for c in cols):
        rows += [
            ("**wss://** (TLS 1.3, the same ECDSA P-256 certificate): full handshakes/s", ("tls", "full", "per_sec"), 0),
            ("  suite each proxy chooses for the load generator's offer (rustls's order: AES-256-GCM first)", ("tls", "suite"), 0),
            ("  proxy CPU-µs per full TLS handshake (incl. upstream connect, close)", ("tls", "full", "cpu_us_per_handshake"), 0),
            ("  the same with every proxy choosing TLS_AES_128_GCM_SHA256 (nginx, HAProxy told to prefer it)", ("tls", "full_aes128", "cpu_us_per_handshake"), 0),
            ("  proxy CPU-µs per resumed TLS handshake", ("tls", "resumed", "cpu_us_per_resumed"), 0),
            ("  resumed of all handshakes with resumption on", ("tls", "resumed", "tls_resumed"), 0),
            ("  proxy CPU-µs per echoed wss msg, 64 B", ("tls", "tp64", "cpu_us_per_msg"), 2),
            ("  wss throughput 64 B, msg/s", ("tls", "tp64", "msgs_per_sec"), 0),
            ("  proxy CPU-µs per echoed wss msg, 4 KiB", ("tls", "tp4k", "cpu_us_per_msg"), 2),
            ("  wss throughput 4 KiB, msg/s", ("tls", "tp4k", "msgs_per_sec"), 0),
            ("  wss open loop 5,000 msg/s, 64 B: p99 µs", ("tls", "open_loop", "p99_us"), 0),
            ("  user-space KiB per idle wss connection at 10,000", ("tls", "idle", "kib_per_conn"), 2),
        ]
    if any("idlemax" in results.get(c, {}) for c in cols):
        rows += [("largest idle run: connections asked for", ("idlemax", "connections"), 0),
                 ("  established / alive at end / heartbeats lost  ", None, None),
                 ("  user-space KiB per idle proxied WebSocket", ("idlemax", "kib_per_conn"), 2),
                 ("  heartbeat round trip while held, µs: p50 (median of the load generators')", ("idlemax", "heartbeat_rtt_p50_us"), 0),
                 ("  heartbeat round trip while held, µs: p99 (the worst load generator's)", ("idlemax", "heartbeat_rtt_p99_us_worst"), 0),
                 ("  proxy processes (one port, SO_REUSEPORT)", ("idlemax", "processes"), 0)]
    out = []
    out.append("# Benchmarks\n")
    out.append("ringway beside nginx and HAProxy on the same loads, in one run of `scripts/bench.sh`. "
               "The proxy under test runs pinned to CPU 0 with one worker; the load generator (`ringway bench`) "
               "and the echo backends (`ringway echo`, 8 addresses 127.0.1.1–8) run on CPU 1. `direct` is the "
               "load generator talking to the echo backend with no proxy: the ceiling of the load side. Absolute "
               "numbers drift between runs on this shared machine; compare within a column set from one run.\n")
    sysctl_text = ", ".join(k + " = " + " ".join(v) for k, v in meta["sysctls"].items())
    out.append(f"Command: `{meta['command']}`  \nMachine: {meta['cpus']} × {meta['cpu_model']}, Linux {meta['kernel']}, "
               f"RLIMIT_NOFILE {meta['rlimit_nofile']}  \nProxies: {meta['nginx']}; {meta['haproxy']}  \n"
               f"Sysctls during the run: {sysctl_text}  \n"
               + (f"ringway before: {meta['baseline']}, measured in the same run.  \n" if meta.get("baseline") else "")
               + f"Run length: {secs}s per throughput load ({'median of 3 runs' if not meta['quick'] else 'one run'}), {hs_count:,} handshakes; whole run {meta['seconds']}s. "
               + "The throughput, open-loop and handshake rows are interleaved: every proxy runs at once and each load goes through them in turn, so a change in the machine's speed during the run falls on all of them alike.\n")
    head = "| figure | " + " | ".join(names[c] for c in cols) + " | ringway ÷ nginx | ringway ÷ HAProxy |" + \
        "".join(" ringway ÷ before |" for _ in extra)
    out.append(head)
    out.append("|" + "---|" * (len(cols) + 3 + len(extra)))
    blank = " | | |" + " |" * len(extra)
    for label, keys, digits in rows:
        if keys is None:
            if label.strip().startswith("p50 / p99"):
                cells = [f"{fmt(get(c, 'tp64', 'p50_us'))} / {fmt(get(c, 'tp64', 'p99_us'))}" for c in cols]
                out.append(f"| {label} | " + " | ".join(cells) + blank)
            else:
                key = "idlemax" if label.endswith("  ") else (f"idle{large_idle}" if label.endswith(" ") else f"idle{small_idle}")
                cells = []
                for c in cols:
                    r = get(c, key)
                    cells.append("—" if not r else f"{fmt(r['established'])} / {fmt(r['alive_at_end'])} / {fmt(r['heartbeats_lost'])}")
                out.append(f"| {label.rstrip()} | " + " | ".join(cells) + blank)
            continue
        cells = [fmt(get(c, *keys), digits) for c in cols]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {ratio('nginx', *keys)} | {ratio('haproxy', *keys)} |"
                   + "".join(f" {ratio(t, *keys)} |" for t in extra))
    errs = []
    for c in cols:
        for k, v in results.get(c, {}).items():
            if isinstance(v, dict) and v.get("errors"):
                errs.append(f"- {names[c]} {k}: {v['errors']}")
            if k == "tls":
                for k2, v2 in v.items():
                    if isinstance(v2, dict) and v2.get("errors"):
                        errs.append(f"- {names[c]} wss {k2}: {v2['errors']}")
    out.append("")
    if errs:
        out.append("Errors seen by the load generator:\n")
        out.extend(errs)
        out.append("")
    if get("ringway", "idlemax"):
        out.append("The largest idle runs are `scripts/scale.py`: each proxy in a network namespace of its own "
                   "whose TCP established-socket hash is sized for the run (the host's is sized at boot: 262,144 "
                   "buckets here, and at ~2M sockets its lookups took 12 % of the machine), with its own echo "
                   "backends and load generators (heartbeats every 30 s, held 60 s), and no process pinned. "
                   "ringway binds its upstream sockets over 127.3.0.0/16 (`source`, nginx's proxy_bind), as a "
                   "deployment of that size must; without it, past ~200k sessions toward 8 backend addresses the "
                   "kernel's free-port search per connect saturates the proxy core. The nginx and HAProxy runs do "
                   "not bind a source.\n")
    if any("tls" in results.get(c, {}) for c in cols):
        out.append("wss rows: each proxy terminates TLS 1.3 (only) with one ECDSA P-256 certificate (nginx: "
                   "`ssl_session_cache shared:SSL:20m`, tickets on; HAProxy: its defaults; ringway: tickets and "
                   "its session cache), and talks plain WebSocket to the echo backends. The load generator is "
                   "`ringway bench` with a `wss://` target (rustls, aws-lc-rs). Full handshakes: `--no-resume`. "
                   "Resumed: resumption on, where a few handshakes are still full (a TLS 1.3 ticket is used once); "
                   "the CPU of the resumed ones is what is left after the full ones at the full rate measured "
                   "just before. Each proxy chooses a suite from the load generator's offer (rustls's order, "
                   "AES-256-GCM first) by its own default: nginx follows the client's order, HAProxy its own "
                   "(OpenSSL's, AES-256-GCM first), ringway chooses AES-128-GCM. The like-for-like row has nginx "
                   "(`ssl_prefer_server_ciphers on`, `ssl_conf_command Ciphersuites`) and HAProxy (`ciphersuites` "
                   "on the bind line) told to choose AES-128-GCM first too, started afresh, and ringway measured "
                   "a second time.\n")
    out.append("How each figure is measured: CPU is utime+stime of every process of the proxy (from "
               "`/proc/PID/stat`) over the whole load, divided by the messages (or handshakes) it completed; "
               "memory is the proxy's share of physical memory (PSS from `/proc/PID/smaps_rollup`, summed over its "
               "processes: a page n processes map counts 1/n in each, so the binary's code pages, shared by every "
               "process, count once and not once per process as a sum of VmRSS would) while holding N idle "
               "WebSockets (each sending a small heartbeat every few seconds) minus the same at rest, divided by N; "
               "the kernel's "
               "share is the growth of every slab cache (`/proc/slabinfo`) and of TCP's socket-buffer pages "
               "(`/proc/net/sockstat`) over the same hold, divided by N — for the whole host, where each "
               "proxied WebSocket is four sockets (the client's, the proxy's two, the backend's). Runs past "
               f"~{per_process:,} connections use several processes of each proxy on one port (SO_REUSEPORT; nginx: "
               "that many workers), because RLIMIT_NOFILE is capped at 20,000 here. The rows \"a round under "
               "perf\" are one more round of each proxy with `perf record` sampling its CPU, each sample sorted by "
               "kernel symbol (`scripts/kernel_share.py`, which says where the categories' edges are): the kernel's "
               "network stack (TCP/IP over loopback, skbs, copies) and the sockets' files (made and freed per "
               "handshake), which any proxy on kernel TCP spends, and the proxy's own: user space, io_uring and "
               "syscalls (entry, descriptors, epoll); wake-ups and the rest of the kernel are in neither.\n")
    # The sections after the table (each change's own measurements, "## …") are kept: a run
    # rewrites the table, not the record of how the figures got there.
    kept = ""
    if os.path.exists(path):
        old = open(path).read()
        i = old.find("\n## ")
        if i != -1:
            kept = "\n" + old[i + 1:]
    with open(path, "w") as f:
        f.write("\n".join(out) + kept)
