#!/usr/bin/env python3
"""Memory per idle proxied WebSocket with and without a location heartbeat: one ringway (release
build, 1 worker) in front of `ringway echo`, 8,000 idle connections held by `ringway bench idle`,
VmRSS while they are held minus at rest, divided by 8,000; three rounds, alternating.

    cargo build --release && python3 scripts/bench_heartbeat.py
"""
import subprocess, time, os, sys
BIN=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "ringway")
os.chdir(__import__("tempfile").mkdtemp(prefix="ringway-hbmem-"))
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
def one(hb, port):
    cfg=f"""[runtime]
workers = 1
max_connections = 9000
access_log = false
[[upstream]]
name = "u"
servers = [{{ addr = "127.0.0.1:7301" }}]
[[server]]
listen = ["127.0.0.1:{port}"]
[[server.location]]
path = "/"
upstream = "u"
{'heartbeat = { interval = "25s", timeout = "10s" }' if hb else ''}
"""
    open(f"c{port}.toml","w").write(cfg)
    p=subprocess.Popen([BIN,"run","--config",f"c{port}.toml"],stderr=open(f"p{port}.log","w"))
    time.sleep(1); base=rss(p.pid)
    b=subprocess.Popen([BIN,"bench","idle","--target",f"ws://127.0.0.1:{port}/ws/","-c","8000","--hold","12s","--interval","60s"],stdout=subprocess.DEVNULL,stderr=open(f"b{port}.log","w"))
    time.sleep(9); held=rss(p.pid)
    b.wait(); p.terminate(); p.wait()
    return (held-base)/8000
e=subprocess.Popen([BIN,"echo","--listen","127.0.0.1:7301"],stderr=subprocess.DEVNULL)
time.sleep(0.5)
try:
    for r in range(3):
        a=one(False,7310+r); h=one(True,7320+r)
        print(f"KiB per idle tunnel: without heartbeat {a:.3f}, with {h:.3f}", flush=True)
finally:
    e.terminate()
