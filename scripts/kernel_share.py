#!/usr/bin/env python3
"""Where a proxy's CPU per echoed message (or per handshake) goes, ringway beside nginx and
HAProxy: the proxy pinned alone on CPU 0 with one worker, the load generator (`ringway bench`:
100 connections in a closed loop, or with --handshakes N handshakes 50 at a time, each closed
after its 101) and the echo backends on CPU 1, as `scripts/bench.sh` loads them; `perf record`
samples CPU 0 while the load runs, and each sample of the proxy's processes is put in one of:

    network stack   TCP/IP over loopback: tcp_*, ip_*, skbs, the device, softirq, copies to
                    and from user memory, the slab allocations of skbs, the TCP clock
    wake-ups        waking the peer process on the other CPU, scheduling, interrupts, idle
    io_uring        the ring's own work (io_* symbols)
    syscalls        syscall entry and exit, descriptor lookups, epoll
    socket files    a socket's file, inode and dentry made and freed, their memory cgroup
                    charges and RCU frees (a handshake makes two sockets and frees them)
    other kernel    the rest of the kernel
    user space      the proxy's own code and its libraries

The categories come from symbol names (the list is below), so they are an approximation at
their edges; the network stack's share is what any proxy on kernel TCP pays per message.
Without hardware counters (this VM has none) perf samples on a timer, which cannot fire where
interrupts are off: that time lands where they are turned back on, mostly
`_raw_spin_unlock_irqrestore`, counted under wake-ups (waking the peer takes that lock).
Rounds are interleaved (every proxy in turn, order reversed every other round); reported per
category: CPU-µs per message or handshake (sampled share × CPU time ÷ messages or
handshakes, from each proxy's round with the median total).

    python3 scripts/kernel_share.py [--rounds 3] [--secs 6] [--size 64] [--handshakes N]
                                    [--only ringway,nginx]

Needs `perf` (Debian's linux-perf) and root; nginx and HAProxy as `scripts/bench.sh` installs
them.
"""
import argparse
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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
    ("socket files", r"^(inode_|__inode|d_alloc|d_instantiate|__d_|d_|dput|__dentry|dentry_|iput|evict|__fput|"
                     r"alloc_file|file_|init_file|__memcg|memcg|mod_memcg|__account_obj|obj_cgroup|lockref|"
                     r"locks_remove|truncate_inode|percpu_counter|rcu_cblist|__call_rcu|call_rcu|rcu_do_batch|"
                     r"kmem_cache_free_bulk|sock_alloc|sock_release|__sock_release|sock_close|security_inode|"
                     r"new_inode|destroy_inode|free_inode|list_lru|memcg_list_lru)"),
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


ORDER = ["network stack", "wake-ups", "io_uring", "syscalls", "socket files", "other kernel", "user space"]


def profile(data, pids):
    """{category: share of the proxy's samples} from a perf.data of CPU 0; None when it holds
    no sample of the proxy's."""
    out = subprocess.run(["perf", "report", "-q", "-i", data, "--pid", ",".join(map(str, pids)),
                          "--sort", "dso,sym", "--percentage", "relative"],
                         capture_output=True, text=True).stdout
    shares = {c: 0.0 for c in ORDER}
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
        if m:
            shares[category(m.group(2), m.group(4))] += float(m.group(1)) / 100
    total = sum(shares.values())
    if total <= 0:
        return None
    return {c: v / total for c, v in shares.items()}


class Recorder:
    """`perf record` of CPU 0, sampling only between entering and `pause` (or leaving): perf
    starts with its events off and turns them on through its control FIFO, and entering waits
    for its acknowledgement. Without that, perf's own start-up (a few hundred ms) fell inside
    the measured load, and a short one (a quick run's handshakes) could end before the first
    sample."""

    def __init__(self, data):
        self.data = data
        self.dir = tempfile.mkdtemp(prefix="ringway-perfctl-")
        self.ctl, self.ack = os.path.join(self.dir, "ctl"), os.path.join(self.dir, "ack")
        os.mkfifo(self.ctl)
        os.mkfifo(self.ack)
        self.proc = None

    def command(self, what, timeout=30):
        """Send `what` and wait for perf's acknowledgement, at most `timeout` seconds."""
        os.write(self.ctl_fd, (what + "\n").encode())
        deadline = time.time() + timeout
        got = b""
        # perf answers "ack\n" and a NUL (a C string's end), which the next answer starts with.
        while b"\n" not in got:
            left = deadline - time.time()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"perf record did not acknowledge {what!r} "
                                   f"({'it exited' if self.proc.poll() is not None else 'timed out'})")
            ready, _, _ = select.select([self.ack_fd], [], [], min(left, 0.5))
            if ready:
                got += os.read(self.ack_fd, 64)
        if got.strip(b"\x00 \n") != b"ack":
            raise RuntimeError(f"perf record did not acknowledge {what!r} (got {got!r})")

    def __enter__(self):
        # Both FIFOs opened read-write here: an open never waits for the other end, so a perf
        # that fails to start cannot hold this script (the acknowledgement is waited for with
        # a deadline).
        self.ctl_fd = os.open(self.ctl, os.O_RDWR)
        self.ack_fd = os.open(self.ack, os.O_RDWR)
        self.proc = subprocess.Popen(["perf", "record", "-q", "-C", "0", "-D", "-1",
                                      "--control", f"fifo:{self.ctl},{self.ack}", "-o", self.data],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.on = False
        try:
            self.command("enable")
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        self.on = True
        return self

    def pause(self):
        if self.on:
            self.command("disable")
            self.on = False

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.pause()
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for fd in (self.ctl_fd, self.ack_fd):
                os.close(fd)
            for f in (self.ctl, self.ack):
                os.unlink(f)
            os.rmdir(self.dir)
        return False


def sample(load, proxy, data, size=64, secs=6, handshakes=0):
    """One measured load on `proxy` (a `bench.Proxy`, started) with CPU 0 sampled throughout:
    its CPU-µs per message (or handshake when `handshakes`), messages (handshakes) per second,
    and the CPU-µs of each category; `shared` is the network stack and the socket files (what
    any proxy on kernel TCP spends), `own` user space, io_uring and syscalls."""
    from bench import cpu_ticks, us_per
    target = proxy.target()
    if handshakes:
        args_ = ["-c", "50", "-n", str(handshakes)]
        load.bench("connect", target, ["-c", "50", "-n", str(max(handshakes // 10, 100))])
    else:
        args_ = ["-c", "100", "-s", str(size), "-d", f"{secs}s", "--warmup", "0s"]
        load.bench("throughput", target, ["-c", "100", "-s", str(size), "-d", "2s", "--warmup", "0s"])
    pids = proxy.pids()
    with Recorder(data) as rec:
        u0, s0 = cpu_ticks(pids)
        r = load.bench("connect" if handshakes else "throughput", target, args_)
        u1, s1 = cpu_ticks(proxy.pids())
        rec.pause()
    n = r["established"] if handshakes else r["messages"]
    cpu = us_per(u1 + s1 - u0 - s0, n)
    shares = profile(data, pids)
    try:
        os.unlink(data)
    except OSError:
        pass
    rate = r["handshakes_per_sec"] if handshakes else r["messages_per_sec"]
    if shares is None:
        # No sample of the proxy's: nothing to sort, and no figure to print for it.
        return {"cpu": cpu, "rate": rate, **{c: None for c in ORDER}, "shared": None, "own": None}
    res = {"cpu": cpu, "rate": rate, **{c: shares[c] * cpu for c in ORDER}}
    res["shared"] = res["network stack"] + res["socket files"]
    res["own"] = res["user space"] + res["io_uring"] + res["syscalls"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--handshakes", type=int, default=0,
                    help="per handshake instead: N handshakes per round, 50 at a time")
    ap.add_argument("--only", default="ringway,nginx,haproxy")
    args = ap.parse_args()
    from bench import interleaved
    if subprocess.run(["perf", "--version"], capture_output=True).returncode != 0:
        sys.exit("kernel_share.py: perf is not installed (Debian: linux-perf)")
    kinds = args.only.split(",")
    work = tempfile.mkdtemp(prefix="ringway-kshare-")
    per = {k: [] for k in kinds}
    unit = "handshake" if args.handshakes else "msg"

    def measure(load, kind, proxy, rnd):
        res = sample(load, proxy, os.path.join(work, f"{kind}-{rnd}.data"), args.size, args.secs, args.handshakes)
        if res["shared"] is None:
            print(f"round {rnd} {kind}: no sample of the proxy's in perf's record; round left out", flush=True)
            return
        per[kind].append(res)
        print(f"round {rnd} {kind}: {res['rate']:.0f} {unit}/s, {res['cpu']:.2f} CPU-µs per {unit}, "
              + ", ".join(f"{c} {res[c]:.2f}" for c in ORDER), flush=True)

    interleaved(args, kinds, "ringway-kshare-", measure)
    # Each proxy's round with the median total, whole (its parts add up to it).
    med = {k: sorted(per[k], key=lambda r: r["cpu"])[len(per[k]) // 2] for k in kinds if per[k]}
    print()
    what = "handshake" if args.handshakes else f"echoed {args.size} B message"
    flags = f"--handshakes {args.handshakes}" if args.handshakes else f"--secs {args.secs} --size {args.size}"
    print(f"CPU-µs per {what}, by where it goes (each proxy's round with the median total of "
          f"{args.rounds}; `python3 scripts/kernel_share.py --rounds {args.rounds} {flags}`)")
    print()
    print("| where | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for c in ORDER + ["cpu"]:
        name = "total" if c == "cpu" else c
        print(f"| {name} | " + " | ".join(f"{med[k][c]:.2f}" for k in kinds) + " |")
    print(f"| {unit}s/s | " + " | ".join(f"{med[k]['rate']:,.0f}" for k in kinds) + " |")
    if "nginx" in med and "ringway" in med:
        # issue 23's goals: per message at most half of nginx's CPU, per handshake 0.7 of it.
        share = 0.7 if args.handshakes else 0.5
        bound = med["nginx"]["cpu"] * share
        shared = med["ringway"]["network stack"] + med["ringway"]["socket files"]
        print()
        print(f"{share} of nginx's total: {bound:.2f}; ringway's network stack and socket files "
              f"alone (the kernel's work any proxy on kernel TCP does): {shared:.2f}, "
              f"{shared / bound:.2f} of it")

if __name__ == "__main__":
    main()
