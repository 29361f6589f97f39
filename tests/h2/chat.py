#!/usr/bin/env python3
"""WebSockets over one HTTP/2 connection (RFC 8441) that chat until told to stop, with Python's
h2 as the client: what a binary upgrade that keeps tunnels is tested with.

Usage: chat.py HOST PORT DIR [--tls] [--streams K] [--inflight W] [--seconds LIMIT]
               [--pending-post] [--shut-window]

Opens one HTTP/2 connection (TLS with ALPN h2, or h2c with prior knowledge) and K extended
CONNECT streams (:protocol websocket) on it. Each stream keeps W numbered, checksummed binary
messages in flight (of varying length, some past a DATA frame) and checks every echo: its
number (none lost, duplicated or reordered) and its checksum. It answers the server's pings.
Once every stream has its 200 it writes DIR/ready; every 100 ms it writes DIR/progress (the
echoes so far, as JSON). When DIR/stop appears (or after LIMIT seconds) each stream sends
Close 1000 and waits for the server's; then it prints one JSON line: per stream what was sent
and echoed, its Close code, and anything unexpected (a GOAWAY, a reset, a Close it did not
ask for, an error). After a graceful GOAWAY the streams go on (RFC 9113 §6.8).

--shut-window: the client's stream windows are 0 (a reader that takes nothing).

--pending-post: once the WebSockets are open, a POST whose body never ends is sent on the same
connection (an HTTP request in flight); a GOAWAY ends its body, and its answer ends it.
"""
import json
import os
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from wsframes import parse_frames, ws_frame


def fnv(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def message(stream, seq):
    n = 16 + (seq * 7919 + stream * 104729) % 20000
    body = struct.pack("!QI", seq, stream) + bytes(((k ^ seq ^ stream) & 0xFF) for k in range(n))
    return body + struct.pack("!Q", fnv(body))


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def main():
    host, port, dirpath = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tls = "--tls" in sys.argv

    def arg(name, default):
        return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default

    k, inflight, limit = arg("--streams", 4), arg("--inflight", 4), arg("--seconds", 60)
    sock = socket.create_connection((host, port), timeout=10)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    # A large connection window, so streams do not wait on each other.
    conn.increment_flow_control_window(1 << 24)
    if "--shut-window" in sys.argv:
        # A reader that takes nothing: every stream's window is 0, so the server holds what
        # it would send.
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sock.sendall(conn.data_to_send())
    ids = []
    st = {}
    for i in range(k):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                (":scheme", "https" if tls else "http"), (":path", "/ws/"),
                                (":authority", "localhost"), ("sec-websocket-version", "13")])
        ids.append(sid)
        st[sid] = {"index": i, "status": None, "sent": 0, "echoed": 0, "pings": 0,
                   "buf": b"", "out": b"", "open": False, "closing": False, "done": False}
    sock.sendall(conn.data_to_send())
    result = {"unexpected": []}
    started = time.time()
    ready = False
    post, post_ended = None, False
    stopping = False
    last_progress = 0.0

    broken = [False]

    def unexpected(what):
        if len(result["unexpected"]) < 50:
            result["unexpected"].append(what)

    def top_up(sid):
        s = st[sid]
        while s["open"] and not s["closing"] and s["sent"] - s["echoed"] < inflight:
            s["out"] += ws_frame(message(s["index"], s["sent"]))
            s["sent"] += 1

    def push():
        for sid in ids:
            s = st[sid]
            while s["out"] and not s["done"]:
                n = min(len(s["out"]), conn.local_flow_control_window(sid),
                        conn.max_outbound_frame_size)
                if n <= 0:
                    break
                conn.send_data(sid, s["out"][:n])
                s["out"] = s["out"][n:]
        data = conn.data_to_send()
        if data and not broken[0]:
            try:
                sock.sendall(data)
            except (OSError, ssl.SSLError) as e:
                # What the server sent before it went is still read.
                broken[0] = True
                unexpected("send: %s" % e)

    sock.settimeout(0.05)
    while not all(st[s]["done"] for s in ids):
        now = time.time()
        if now - started > limit + 30:
            unexpected("timed out")
            break
        if not stopping and (os.path.exists(os.path.join(dirpath, "stop")) or now - started > limit):
            stopping = True
            for sid in ids:
                s = st[sid]
                if s["open"] and not s["closing"]:
                    s["closing"] = True
                    s["out"] += ws_frame(struct.pack("!H", 1000), 0x8)
        if now - last_progress > 0.1:
            last_progress = now
            write(os.path.join(dirpath, "progress"),
                  json.dumps({str(s): st[s]["echoed"] for s in ids if not st[s].get("post")}))
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            push()
            continue
        except (OSError, ssl.SSLError) as e:
            unexpected("recv: %s" % e)
            break
        if not data:
            unexpected("the connection closed")
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                s = st[ev.stream_id]
                s["status"] = int(dict(ev.headers)[":status"])
                if s.get("post"):
                    pass
                elif s["status"] == 200:
                    s["open"] = True
                    top_up(ev.stream_id)
                else:
                    unexpected("stream %d answered %d" % (ev.stream_id, s["status"]))
                    s["done"] = True
                if not ready and all(st[x]["open"] or st[x]["done"] for x in ids):
                    ready = True
                    if "--pending-post" in sys.argv:
                        post = conn.get_next_available_stream_id()
                        conn.send_headers(post, [(":method", "POST"), (":path", "/echo"),
                                                 (":scheme", "https" if tls else "http"),
                                                 (":authority", "localhost")])
                        conn.send_data(post, b"a body that goes on")
                        ids.append(post)
                        st[post] = {"index": 99, "status": None, "sent": 0, "echoed": 0,
                                    "pings": 0, "buf": b"", "out": b"", "open": False,
                                    "closing": False, "done": False, "post": True}
                    write(os.path.join(dirpath, "ready"), "1")
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                s = st[ev.stream_id]
                if s.get("post"):
                    s["bytes"] = s.get("bytes", 0) + len(ev.data)
                    continue
                s["buf"] += ev.data
                frames, s["buf"] = parse_frames(s["buf"])
                for op, payload in frames:
                    if op == 0x2:
                        want = message(s["index"], s["echoed"])
                        if payload != want:
                            seq = struct.unpack("!Q", payload[:8])[0] if len(payload) >= 8 else -1
                            ok = len(payload) >= 8 and fnv(payload[:-8]) == struct.unpack("!Q", payload[-8:])[0]
                            unexpected("stream %d: echo %d came as %d (checksum %s)"
                                       % (ev.stream_id, s["echoed"], seq, "good" if ok else "bad"))
                        s["echoed"] += 1
                        top_up(ev.stream_id)
                    elif op == 0x9:
                        s["pings"] += 1
                        s["out"] += ws_frame(payload, 0xA)
                    elif op == 0x8:
                        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                        s["close_code"] = code
                        if not s["closing"]:
                            unexpected("stream %d: a Close %s it did not ask for" % (ev.stream_id, code))
                            s["closing"] = True
                            s["out"] += ws_frame(payload[:2], 0x8)
            elif isinstance(ev, h2.events.StreamEnded):
                st[ev.stream_id]["done"] = True
            elif isinstance(ev, h2.events.StreamReset):
                s = st[ev.stream_id]
                # RST_STREAM(NO_ERROR) once the server's side ended after the Close handshake
                # is RFC 9113 §8.1's "stop sending": the stream is over.
                if not (int(ev.error_code) == 0 and s["closing"] and "close_code" in s):
                    unexpected("stream %d reset (%d)" % (ev.stream_id, int(ev.error_code)))
                s["done"] = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                unexpected("GOAWAY %d" % int(ev.error_code))
                if int(ev.error_code) != 0:
                    for s in ids:
                        st[s]["done"] = True
                elif post is not None and not post_ended:
                    post_ended = True
                    conn.send_data(post, b"the end", end_stream=True)
        # A stream whose Close went both ways ends its half too.
        for sid in ids:
            s = st[sid]
            if s["closing"] and "close_code" in s and not s["out"] and not s.get("ended"):
                s["ended"] = True
                try:
                    conn.end_stream(sid)
                except h2.exceptions.StreamClosedError:
                    # The server ended the stream first, and h2 closed it both ways.
                    pass
        push()
    result["streams"] = {str(s): {"status": st[s]["status"], "sent": st[s]["sent"],
                                  "echoed": st[s]["echoed"], "pings": st[s]["pings"],
                                  "close_code": st[s].get("close_code")}
                         for s in ids if not st[s].get("post")}
    if post is not None:
        result["post"] = {"status": st[post]["status"], "bytes": st[post].get("bytes", 0),
                          "done": st[post]["done"]}
    print(json.dumps(result))


main()
