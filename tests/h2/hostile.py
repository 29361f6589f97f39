#!/usr/bin/env python3
"""Hostile HTTP/2 clients, frames written with hyperframe and hpack (Python's h2 stack).

Usage: hostile.py HOST PORT CASE

Prints one JSON line: what the server answered (its GOAWAY's code, the RST_STREAMs and
statuses it sent, whether it closed), within 10 s.
"""
import json
import socket
import sys
import time

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, PriorityFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def get_block(enc, path="/headers", extra=()):
    return enc.encode([(":method", "GET"), (":scheme", "http"), (":path", path),
                       (":authority", "localhost")] + list(extra))


def whole_frames(buf):
    """The whole frames at the front of buf, parsed, and what is left of it."""
    frames = []
    while len(buf) >= 9:
        f, length = Frame.parse_frame_header(memoryview(buf[:9]))
        if len(buf) < 9 + length:
            break
        f.parse_body(memoryview(buf[9:9 + length]))
        buf = buf[9 + length:]
        frames.append(f)
    return frames, buf


def sequential(s, enc, hello, n):
    """Up to N requests one after the other on one connection, each answered before the next
    goes, until the server's GOAWAY: how many were answered, and the GOAWAY."""
    s.sendall(hello)
    dec = hpack.Decoder()
    result = {"answered": 0, "goaway": None, "goaway_last": None}
    buf = b""
    s.settimeout(5)
    for i in range(n):
        if result["goaway"] is not None:
            break
        sid = 2 * i + 1
        s.sendall(HeadersFrame(sid, get_block(enc), flags=["END_HEADERS", "END_STREAM"]).serialize())
        done = False
        while not done and (result["goaway"] is None or sid <= result["goaway_last"]):
            chunk = s.recv(65536)
            if not chunk:
                result["closed"] = True
                return result
            buf += chunk
            frames, buf = whole_frames(buf)
            for f in frames:
                if isinstance(f, GoAwayFrame):
                    result["goaway"] = f.error_code
                    result["goaway_last"] = f.last_stream_id
                elif isinstance(f, HeadersFrame):
                    dec.decode(f.data)
                if f.stream_id == sid and "END_STREAM" in getattr(f, "flags", ()):
                    result["answered"] += 1
                    done = True
    return result


def main():
    host, port, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.create_connection((host, port), timeout=10)
    enc = hpack.Encoder()
    out = bytearray(PREFACE + SettingsFrame(0).serialize())
    sent_frames = 0

    def send(frame):
        nonlocal sent_frames
        out.extend(frame.serialize())
        sent_frames += 1

    if case == "rapid_reset":
        for i in range(5000):
            sid = 2 * i + 1
            send(HeadersFrame(sid, get_block(enc), flags=["END_HEADERS", "END_STREAM"]))
            send(RstStreamFrame(sid, error_code=8))
    elif case == "continuation_flood":
        send(HeadersFrame(1, get_block(enc), flags=["END_STREAM"]))
        for _ in range(10000):
            send(ContinuationFrame(1, b""))
    elif case == "continuation_bytes":
        send(HeadersFrame(1, get_block(enc), flags=["END_STREAM"]))
        for _ in range(64):
            send(ContinuationFrame(1, b"\x40\x01a\x01b" * 2000))
    elif case == "ping_flood":
        for i in range(5000):
            send(PingFrame(0, opaque_data=i.to_bytes(8, "big")))
    elif case == "settings_flood":
        for _ in range(5000):
            send(SettingsFrame(0))
    elif case == "priority_flood":
        for i in range(5000):
            send(PriorityFrame(2 * i + 1, depends_on=0, stream_weight=16))
    elif case == "empty_data_flood":
        send(HeadersFrame(1, enc.encode([(":method", "POST"), (":scheme", "http"), (":path", "/echo"),
                                         (":authority", "localhost")]), flags=["END_HEADERS"]))
        for _ in range(5000):
            send(DataFrame(1, b""))
    elif case == "window_update_on_idle_stream":
        send(WindowUpdateFrame(999, window_increment=1))
    elif case == "reset_closed_stream_flood":
        send(HeadersFrame(1, get_block(enc), flags=["END_HEADERS", "END_STREAM"]))
        for _ in range(5000):
            send(RstStreamFrame(1, error_code=8))
    elif case == "hpack_bomb":
        # One 4 KiB value indexed into the table, then referred to 100 times: 400 KiB decoded
        # from a few hundred bytes.
        big = "x" * 4000
        block = get_block(enc, extra=[("x-bomb", big)])
        refs = bytes([0x80 | 62]) * 100
        send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
        # GET / by static indices, :authority as a literal not indexed: entry 62 stays x-bomb.
        plain = bytes([0x82, 0x86, 0x84, 0x01, 9]) + b"localhost"
        send(HeadersFrame(3, plain + refs, flags=["END_HEADERS", "END_STREAM"]))
    elif case == "too_many_streams":
        for i in range(40):
            send(HeadersFrame(2 * i + 1, enc.encode([(":method", "POST"), (":scheme", "http"),
                                                     (":path", "/echo"), (":authority", "localhost")]),
                              flags=["END_HEADERS"]))
    elif case == "data_on_stream_0":
        out.extend(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    elif case == "headers_on_even_stream":
        send(HeadersFrame(2, get_block(enc), flags=["END_HEADERS", "END_STREAM"]))
    elif case == "window_overflow":
        send(WindowUpdateFrame(0, window_increment=2**31 - 1))
    elif case == "oversized_frame":
        send(DataFrame(1, b"x" * 20000))
    elif case == "malformed_request":
        send(HeadersFrame(1, enc.encode([(":method", "GET"), (":path", "/")]), flags=["END_HEADERS", "END_STREAM"]))
        send(HeadersFrame(3, get_block(enc), flags=["END_HEADERS", "END_STREAM"]))
    elif case == "extended_connect":
        # RFC 8441's CONNECT, whether or not the server announced it.
        send(HeadersFrame(1, enc.encode([(":method", "CONNECT"), (":protocol", "websocket"),
                                         (":scheme", "http"), (":path", "/ws/"),
                                         (":authority", "localhost")]), flags=["END_HEADERS"]))
    elif case == "slow_stream":
        # Two streams, windows of 0: only stream 3 is given room; its answer comes whole while
        # stream 1's waits (one slow stream does not stall the others).
        out[:] = PREFACE + SettingsFrame(0, settings={4: 0}).serialize()
        send(HeadersFrame(1, get_block(enc), flags=["END_HEADERS", "END_STREAM"]))
        send(HeadersFrame(3, get_block(enc), flags=["END_HEADERS", "END_STREAM"]))
    elif case == "sequential_streams":
        print(json.dumps(sequential(s, enc, bytes(out), 80)))
        return
    elif case == "zero_window":
        # Stream windows of 0: the answer waits; a WINDOW_UPDATE later lets it through.
        out[:] = PREFACE + SettingsFrame(0, settings={4: 0}).serialize()
        send(HeadersFrame(1, get_block(enc), flags=["END_HEADERS", "END_STREAM"]))
    else:
        raise SystemExit(f"unknown case {case}")
    result = {"case": case, "rst": {}, "status": {}, "goaway": None, "closed": False, "data": 0}
    try:
        s.sendall(bytes(out))
    except OSError as e:
        result["send_error"] = str(e)
    dec = hpack.Decoder()
    dec.max_header_list_size = 1 << 20
    buf = b""
    deadline = time.time() + 10
    s.settimeout(1)
    opened = False
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if case == "zero_window" and not opened:
                opened = True
                result["data_before_window"] = result["data"]
                s.sendall(WindowUpdateFrame(1, window_increment=1 << 20).serialize())
            if case == "slow_stream" and not opened:
                opened = True
                s.sendall(WindowUpdateFrame(3, window_increment=1 << 20).serialize())
            elif case == "slow_stream" and opened:
                deadline = 0
            continue
        except OSError as e:
            result["closed"] = True
            result["recv_error"] = str(e)
            break
        if not chunk:
            result["closed"] = True
            break
        buf += chunk
        frames, buf = whole_frames(buf)
        for f in frames:
            if isinstance(f, GoAwayFrame):
                result["goaway"] = f.error_code
                result["goaway_last"] = f.last_stream_id
            elif isinstance(f, RstStreamFrame):
                result["rst"][f.stream_id] = f.error_code
            elif isinstance(f, HeadersFrame):
                try:
                    h = dict(dec.decode(f.data))
                    st = h.get(b":status") or h.get(":status")
                    if st:
                        result["status"][f.stream_id] = int(st)
                except Exception as e:
                    result["hpack_error"] = str(e)
            elif isinstance(f, DataFrame):
                result["data"] += len(f.data)
                per = result.setdefault("data_by_stream", {})
                per[f.stream_id] = per.get(f.stream_id, 0) + len(f.data)
                if "END_STREAM" in f.flags:
                    result.setdefault("ended", []).append(f.stream_id)
                if case == "zero_window" and "END_STREAM" in f.flags:
                    deadline = 0
    print(json.dumps(result))


main()
