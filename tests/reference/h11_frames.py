#!/usr/bin/env python3
"""Reference HTTP/1.1 framing for tests/differential.rs, read by h11 (python3 -m pip install h11).

Input, one JSON object per line: {"client": HEX, "forwarded": [HEX, ...]}.
 - client: the bytes a client sent on one connection. Read by an h11 server that answers every
   request with an empty 200, as long as h11 keeps the connection: the requests it reads, and
   why it stopped ("end", "incomplete", "close", "paused", "error: ...", "unsupported: ...").
 - forwarded: each message as the proxy sent it upstream, each on its own connection. Each is
   read by a fresh h11 server: the one request it reads, or why not, and whether bytes are left.
Output, one JSON object per line: {"client": [[method, target, body_hex], ...], "stop": reason,
"forwarded": [{"msg": [method, target, body_hex] | null, "stop": reason, "left": n}, ...]}.
"""
import faulthandler
import json
import os
import sys

import h11


def read(data):
    conn = h11.Connection(h11.SERVER)
    if data:  # b"" would mean end of stream to h11
        conn.receive_data(data)
    msgs, cur = [], None
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as e:
            if "Only Transfer-Encoding: chunked is supported" in str(e):
                # A coding h11 does not implement (gzip, chunked): no verdict either way.
                return msgs, f"unsupported: {e}", conn
            return msgs, f"error: {e}", conn
        except h11.LocalProtocolError as e:
            return msgs, f"unsupported: {e}", conn
        if ev is h11.NEED_DATA:
            return msgs, ("incomplete" if cur is not None or conn.their_state is not h11.IDLE else "end"), conn
        if ev is h11.PAUSED:
            return msgs, "paused", conn
        if isinstance(ev, h11.ConnectionClosed):
            return msgs, "end", conn
        if isinstance(ev, h11.Request):
            cur = [ev.method.decode("latin-1"), ev.target.decode("latin-1"), b""]
        elif isinstance(ev, h11.Data):
            cur[2] += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            msgs.append([cur[0], cur[1], cur[2].hex()])
            cur = None
            try:
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError as e:
                return msgs, f"unsupported: {e}", conn
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return msgs, "close", conn
            conn.start_next_cycle()


if os.environ.get("H11_FRAMES_DEBUG"):
    faulthandler.dump_traceback_later(8, exit=True)

for line in sys.stdin:
    case = json.loads(line)
    msgs, stop, _ = read(bytes.fromhex(case["client"]))
    fwd = []
    for f in case["forwarded"]:
        m, s, conn = read(bytes.fromhex(f))
        left = len(conn.trailing_data[0]) if s in ("close", "paused") else 0
        fwd.append({"msg": m[0] if len(m) == 1 else None, "count": len(m), "stop": s, "left": left})
    print(json.dumps({"client": msgs, "stop": stop, "forwarded": fwd}), flush=True)
