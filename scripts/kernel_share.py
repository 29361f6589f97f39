#!/usr/bin/env python3
"""Where a proxy's CPU per echoed message goes, ringway beside nginx and HAProxy: the proxy
pinned alone on CPU 0 with one worker, the load generator (`ringway bench`, 100 connections,
closed loop) and the echo backends on CPU 1, as `scripts/bench.sh` loads them; `perf record`
samples CPU 0 while the load runs, and each sample of the proxy's processes is put in one of:

    network stack   TCP/IP over loopback: tcp_*, ip_*, skbs, the device, softirq, copies to
                    and from user memory, the slab allocations of skbs, the TCP clock
    wake-ups        waking the peer process on the other CPU, scheduling, interrupts, idle
    io_uring        the ring's own work (io_* symbols)
    syscalls        syscall entry and exit, descriptor lookups, epoll
    other kernel    the rest of the kernel
    user space      the proxy's own code and its libraries

The categories come from symbol names (the list is below), so they are an approximation at
their edges; the network stack's share is what any proxy on kernel TCP pays per message.
Without hardware counters (this VM has none) perf samples on a timer, which cannot fire where
interrupts are off: that time lands where they are turned back on, mostly
`_raw_spin_unlock_irqrestore`, counted under wake-ups (waking the peer takes that lock).
Rounds are interleaved (every proxy in turn, order reversed every other round); reported per
category: CPU-µs per message (sampled share × CPU time ÷ messages, from each proxy's round with the median total).

    python3 scripts/kernel_share.py [--rounds 3] [--secs 6] [--size 64] [--only ringway,nginx]

Needs `perf` (Debian's linux-perf) and root; nginx and HAProxy as `scripts/bench.sh` installs
them.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import BIN, cpu_ticks, interleaved, us_per  # noqa: E402

CATEGORIES = [
    ("io_uring", r"^(__)?io_|io_uring"),
    ("syscalls", r"^(do_syscall_64|entry_SYSCALL|syscall_exit|syscall_return|__x64_sys_|x64_sys_call|__sys_|"
                 r"ksys_|fget|fdget|__fget|fput|__fdget|ep_|__ep_|do_epoll|sockfd_lookup|import_ubuf|sock_sendmsg|"
                 r"sock_recvmsg|__sock_|sock_read_iter|sock_write_iter|vfs_|rw_verify_area|security_|apparmor|aa_|"
                 r"fsnotify|__fsnotify|exit_to_user_mode|move_addr_to_user|__get_user|__put_user|_copy_from_user|__audit|"
                 r"sock_poll|sock_from_file)"),
    ("network stack", r"^(_?_?tcp|_?_?skb|kfree_skb|_?_?ip_|ip_|_?_?inet|_?_?sk_|sock_def_|sock_rfree|sock_wfree|"
                      r"release_sock|lock_sock|loopback|_?_?net_|_?_?netif|_?_?dev_|eth_|bbr_|process_backlog|_?_?napi|"
                      r"raw_local_deliver|raw_v4|ipv4_|_?_?dst_|validate_xmit|_copy_to_iter|_copy_from_iter|"
                      r"simple_copy_to_iter|__alloc_skb|_?_?kmem_cache|_?_?kmalloc|kfree|_?_?_?slab|"
                      r"__check_object_size|__virt_addr_valid|check_heap_object|csum|nf_|sch_|_?_?qdisc|pfifo|neigh|"
                      r"__local_bh_enable_ip|do_softirq|__do_softirq|handle_softirqs|_?_?mod_timer|read_tsc|ktime_get|"
                      r"page_frag|__page_frag|_?_?rcu_read|bpf_|__cgroup_bpf|mem_cgroup_charge_skmem|__sk_mem|"
                      r"sk_mem|security_sock_rcv_skb|__xfrm|xfrm|rb_|timerqueue)|skb"),
    ("wake-ups", r"(wake|sched|_raw_spin|^ttwu|^select_task_rq|^enqueue|^dequeue|^update_|^native_|^pv_|idle|^irq|"
                 r"^__irq|^sysvec|^asm_|hrtimer|smp_call|^llist|^finish_task|^psi|^set_next|^put_prev|^pick_|"
                 r"^check_preempt|resched|^account|^cpuacct|^reweight|^avg_|balance|^tick|^clockevents|^lapic|^kvm|"
                 r"^x2apic|apic|^__flush_smp|^task_|^raw_spin|^queued_spin|^__pv_queued|^__raw_callee_save)"),
]


def category(dso, sym):
    if "kernel" not in dso:
        return "user space"
    for name, pat in CATEGORIES:
        if re.search(pat, sym):
            return name
    return "other kernel"


ORDER = ["network stack", "wake-ups", "io_uring", "syscalls", "other kernel", "user space"]


def profile(data, pids):
    """{category: share of the proxy's samples} from a perf.data of CPU 0."""
    out = subprocess.run(["perf", "report", "-q", "-i", data, "--pid", ",".join(map(str, pids)),
                          "--sort", "dso,sym", "--percentage", "relative"],
                         capture_output=True, text=True).stdout
    shares = {c: 0.0 for c in ORDER}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
        if m:
            shares[category(m.group(2), m.group(4))] += float(m.group(1)) / 100
    total = sum(shares.values()) or 1.0
    return {c: v / total for c, v in shares.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", default="ringway,nginx,haproxy")
    args = ap.parse_args()
    if subprocess.run(["perf", "--version"], capture_output=True).returncode != 0:
        sys.exit("kernel_share.py: perf is not installed (Debian: linux-perf)")
    kinds = args.only.split(",")
    work = tempfile.mkdtemp(prefix="ringway-kshare-")
    per = {k: [] for k in kinds}

    def measure(load, kind, proxy, rnd):
        target = proxy.target()
        # Warm up, then sample CPU 0 through the middle of the measured load.
        load.bench("throughput", target, ["-c", "100", "-s", str(args.size), "-d", "2s", "--warmup", "0s"])
        data = os.path.join(work, f"{kind}-{rnd}.data")
        rec = {}

        def record():
            rec["p"] = subprocess.run(["perf", "record", "-q", "-C", "0", "-o", data, "--", "sleep",
                                       str(args.secs - 2)], capture_output=True, timeout=args.secs + 60)

        pids = proxy.pids()
        u0, s0 = cpu_ticks(pids)
        t = threading.Timer(1.0, record)
        t.start()
        r = load.bench("throughput", target, ["-c", "100", "-s", str(args.size), "-d", f"{args.secs}s", "--warmup", "0s"])
        t.join()
        u1, s1 = cpu_ticks(proxy.pids())
        cpu = us_per(u1 + s1 - u0 - s0, r["messages"])
        shares = profile(data, pids)
        per[kind].append({"cpu": cpu, "rate": r["messages_per_sec"], **{c: shares[c] * cpu for c in ORDER}})
        print(f"round {rnd} {kind}: {r['messages_per_sec']:.0f} msg/s, {cpu:.2f} CPU-µs/msg, "
              + ", ".join(f"{c} {shares[c] * cpu:.2f}" for c in ORDER), flush=True)

    interleaved(args, kinds, "ringway-kshare-", measure)
    # Each proxy's round with the median total, whole (its parts add up to it).
    med = {k: sorted(per[k], key=lambda r: r["cpu"])[len(per[k]) // 2] for k in kinds if per[k]}
    print()
    print(f"CPU-µs per echoed {args.size} B message, by where it goes (each proxy's round with the median total of {args.rounds}; "
          f"`python3 scripts/kernel_share.py --rounds {args.rounds} --secs {args.secs} --size {args.size}`)")
    print()
    print("| where | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for c in ORDER + ["cpu"]:
        name = "total" if c == "cpu" else c
        print(f"| {name} | " + " | ".join(f"{med[k][c]:.2f}" for k in kinds) + " |")
    print(f"| msg/s | " + " | ".join(f"{med[k]['rate']:,.0f}" for k in kinds) + " |")
    if "nginx" in med and "ringway" in med:
        half = med["nginx"]["cpu"] / 2
        net = med["ringway"]["network stack"]
        print()
        print(f"half of nginx's total: {half:.2f}; ringway's network stack alone: {net:.2f} "
              f"({'more' if net > half else 'less'} than half of nginx's total)")


if __name__ == "__main__":
    main()
