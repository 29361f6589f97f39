#!/usr/bin/env python3
"""A WebSocket over HTTP/2 (RFC 8441) through ringway, with Python's h2 as the client.

Usage: ws.py HOST PORT [--tls] [--messages N] [--size BYTES] [--streams K] [--path P]
             [--hold SECS] [--settings-only] [--after-goaway]

Opens one HTTP/2 connection, K extended CONNECT streams (:protocol websocket) on it, sends N
masked binary messages of BYTES on each (interleaved), and checks every echo; then closes each
WebSocket (Close 1000), or with --hold keeps them open for SECS, answering the server's pings
and noting its Close frames and GOAWAY (with --after-goaway, a graceful GOAWAY is answered by
N more messages on each open stream, each echo checked, then Close 1000: streams a GOAWAY left
open must go on). Prints one JSON line: what the server's SETTINGS said,
each stream's status, the echoes that came back, the pings and Close codes seen.
"""
import json
import os
import socket
import ssl
import struct
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings

from wsframes import parse_frames, ws_frame


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    tls = "--tls" in sys.argv
    def arg(name, default):
        return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default
    messages, size, streams = arg("--messages", 3), arg("--size", 100), arg("--streams", 1)
    hold = arg("--hold", 0)
    path = sys.argv[sys.argv.index("--path") + 1] if "--path" in sys.argv else "/ws/h2"
    sock = socket.create_connection((host, port), timeout=10)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    settings = {}
    result = {"streams": {}}
    # Wait for the server's SETTINGS.
    while not settings:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("closed before SETTINGS")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                settings = {int(k): v.new_value for k, v in ev.changed_settings.items()}
        sock.sendall(conn.data_to_send())
    result["connect_protocol"] = settings.get(8, 0)
    if "--settings-only" in sys.argv:
        print(json.dumps(result))
        return
    ids = []
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                                (":scheme", "https" if tls else "http"), (":path", path),
                                (":authority", "localhost"), ("sec-websocket-version", "13")])
        ids.append(sid)
        result["streams"][sid] = {"status": None, "echoes": 0, "bytes": 0, "pings": 0}
    sock.sendall(conn.data_to_send())
    bufs = {sid: b"" for sid in ids}
    sent = {sid: [] for sid in ids}
    opened = set()
    done = set()
    out = {sid: b"" for sid in ids}
    ending = set()

    def push():
        # What the windows allow, in frames the server takes.
        for sid in ids:
            while out[sid] and sid not in done:
                n = min(len(out[sid]), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                conn.send_data(sid, out[sid][:n])
                out[sid] = out[sid][n:]
            if not out[sid] and sid in ending and sid not in done:
                conn.end_stream(sid)
                ending.discard(sid)
    import time
    deadline = time.time() + (hold if hold else 30)
    after_goaway = "--after-goaway" in sys.argv
    late = False
    sock.settimeout(1)
    while len(done) < len(ids) and time.time() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                st = int(dict(ev.headers)[":status"])
                result["streams"][ev.stream_id]["status"] = st
                if st == 200:
                    opened.add(ev.stream_id)
                    for i in range(messages):
                        payload = os.urandom(size)
                        sent[ev.stream_id].append(payload)
                        out[ev.stream_id] += ws_frame(payload)
                else:
                    done.add(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                sid = ev.stream_id
                bufs[sid] += ev.data
                frames, bufs[sid] = parse_frames(bufs[sid])
                r = result["streams"][sid]
                for op, payload in frames:
                    if op == 0x2:
                        want = sent[sid][r["echoes"]]
                        assert payload == want, "echo differs"
                        r["echoes"] += 1
                        r["bytes"] += len(payload)
                        if r["echoes"] == messages * (2 if late else 1) and (not hold or late):
                            out[sid] += ws_frame(struct.pack("!H", 1000), 0x8)
                    elif op == 0x9:
                        r["pings"] += 1
                        out[sid] += ws_frame(payload, 0xA)
                    elif op == 0x8:
                        r["closed"] = True
                        r["close_code"] = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                        if hold:
                            out[sid] += ws_frame(payload[:2], 0x8)
                        ending.add(sid)
            elif isinstance(ev, h2.events.StreamEnded):
                done.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                result["streams"][ev.stream_id]["reset"] = int(ev.error_code)
                done.add(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                result["goaway"] = int(ev.error_code)
                result["goaway_last"] = ev.last_stream_id
                if ev.error_code != 0 or not hold:
                    done.update(ids)
                elif after_goaway and not late:
                    late = True
                    deadline = time.time() + 30
                    for sid in opened - done:
                        for i in range(messages):
                            payload = os.urandom(size)
                            sent[sid].append(payload)
                            out[sid] += ws_frame(payload)
        push()
        sock.sendall(conn.data_to_send())
    print(json.dumps(result))


main()
