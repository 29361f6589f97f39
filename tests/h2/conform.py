#!/usr/bin/env python3
"""RFC 9113's answers to invalid frames, asked of any HTTP/2 server: one connection per case
(h2c with prior knowledge), frames written with hyperframe and hpack.

Usage: conform.py HOST PORT [CASE ...]

Prints one JSON object: per case, what the server answered, reduced to one word:
  "goaway:CODE"  a connection error (GOAWAY with that error code)
  "rst:CODE"     a stream error on the case's stream (RST_STREAM with that code)
  "status:NNN"   the case's stream was answered (a response HEADERS with that status)
  "closed"       the connection closed with neither
  "nothing"      none of these within the wait (the frames were ignored)
tests/http2.rs runs it against ringway and against nghttpd (nghttp2's server) and compares.
"""
import json
import socket
import sys
import time

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, HeadersFrame, PingFrame,
                              PriorityFrame, PushPromiseFrame, RstStreamFrame, SettingsFrame,
                              WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CODES = ["NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
         "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
         "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"]


def code(c):
    return CODES[c] if c < len(CODES) else "0x%x" % c


def raw(kind, flags, sid, payload):
    """A frame as bytes, whatever its fields say (for frames hyperframe will not write)."""
    n = len(payload)
    return bytes([n >> 16, (n >> 8) & 0xff, n & 0xff, kind, flags]) + sid.to_bytes(4, "big") + payload


def request(enc, method="GET", path="/headers", extra=()):
    return enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                       (":authority", "localhost")] + list(extra))


def case_frames(case, enc):
    """(the frames after the preface and SETTINGS, the stream the case is about)."""
    H = HeadersFrame
    get = lambda sid, **kw: H(sid, request(enc, **kw), flags=["END_HEADERS", "END_STREAM"]).serialize()
    post = lambda sid, extra=(): H(sid, request(enc, "POST", extra=extra), flags=["END_HEADERS"]).serialize()
    cases = {
        # Idle streams (RFC 9113 §5.1: only HEADERS and PRIORITY).
        "data_on_idle_stream": lambda: ([DataFrame(1, b"x", flags=["END_STREAM"]).serialize()], 1),
        "rst_on_idle_stream": lambda: ([RstStreamFrame(1, error_code=8).serialize()], 1),
        "window_update_on_idle_stream": lambda: ([WindowUpdateFrame(1, window_increment=1).serialize()], 1),
        "continuation_without_headers": lambda: ([ContinuationFrame(1, request(enc), flags=["END_HEADERS"]).serialize()], 1),
        "headers_on_even_stream": lambda: ([get(2)], 2),
        "headers_on_a_lower_stream": lambda: ([get(5), get(3)], 3),
        "the_highest_stream_id": lambda: ([get(2**31 - 1)], 2**31 - 1),
        "a_stream_after_the_highest_id": lambda: ([get(2**31 - 1), get(1)], 1),
        "priority_on_idle_stream_then_request": lambda: ([PriorityFrame(1, depends_on=0, stream_weight=16).serialize(), get(1)], 1),
        # Open and half-closed streams.
        "second_headers_without_end_stream": lambda: ([post(1), H(1, enc.encode([("x-t", "1")]), flags=["END_HEADERS"]).serialize()], 1),
        "data_after_end_stream": lambda: ([get(1), DataFrame(1, b"x").serialize()], 1),
        "content_length_larger_than_data": lambda: ([post(1, [("content-length", "10")]), DataFrame(1, b"12345", flags=["END_STREAM"]).serialize()], 1),
        "content_length_smaller_than_data": lambda: ([post(1, [("content-length", "2")]), DataFrame(1, b"12345", flags=["END_STREAM"]).serialize()], 1),
        "window_update_zero_on_stream": lambda: ([post(1), WindowUpdateFrame(1, window_increment=0).serialize()], 1),
        "window_overflow_on_stream": lambda: ([post(1), WindowUpdateFrame(1, window_increment=2**31 - 1).serialize()], 1),
        "priority_depending_on_itself": lambda: ([post(1), PriorityFrame(1, depends_on=1, stream_weight=16).serialize()], 1),
        "headers_depending_on_itself": lambda: ([H(1, request(enc), flags=["END_HEADERS", "END_STREAM", "PRIORITY"], depends_on=1).serialize()], 1),
        # Malformed requests (§8.1.1, §8.2, §8.3).
        "uppercase_field_name": lambda: ([get(1, extra=[("X-Upper", "1")])], 1),
        "connection_specific_field": lambda: ([get(1, extra=[("connection", "keep-alive")])], 1),
        "te_other_than_trailers": lambda: ([get(1, extra=[("te", "gzip")])], 1),
        "te_trailers": lambda: ([get(1, extra=[("te", "trailers")])], 1),
        "missing_path": lambda: ([H(1, enc.encode([(":method", "GET"), (":scheme", "http"), (":authority", "x")]), flags=["END_HEADERS", "END_STREAM"]).serialize()], 1),
        "empty_path": lambda: ([H(1, enc.encode([(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "x")]), flags=["END_HEADERS", "END_STREAM"]).serialize()], 1),
        "pseudo_after_regular": lambda: ([H(1, enc.encode([(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/headers"), (":authority", "x")]), flags=["END_HEADERS", "END_STREAM"]).serialize()], 1),
        "duplicate_method": lambda: ([H(1, enc.encode([(":method", "GET"), (":method", "GET"), (":scheme", "http"), (":path", "/headers"), (":authority", "x")]), flags=["END_HEADERS", "END_STREAM"]).serialize()], 1),
        "unknown_pseudo_field": lambda: ([get(1, extra=[(":foo", "1")])], 1),
        "response_pseudo_in_request": lambda: ([get(1, extra=[(":status", "200")])], 1),
        # Header blocks and HPACK.
        "headers_interrupted_before_continuation": lambda: ([H(1, request(enc), flags=["END_STREAM"]).serialize(), PingFrame(0, opaque_data=b"12345678").serialize()], 1),
        "hpack_index_out_of_range": lambda: ([raw(0x1, 0x5, 1, bytes([0xff, 0x7f]))], 1),
        "hpack_table_size_update_after_a_field": lambda: ([raw(0x1, 0x5, 1, bytes([0x82, 0x3f, 0xe1, 0x1f]))], 1),
        # The connection (§6).
        "settings_ack_with_payload": lambda: ([raw(0x4, 0x1, 0, b"\x00\x03\x00\x00\x00\x64")], 0),
        "settings_length_not_a_multiple_of_6": lambda: ([raw(0x4, 0x0, 0, b"\x00\x03\x00\x00\x00")], 0),
        "settings_on_a_stream": lambda: ([raw(0x4, 0x0, 1, b"")], 0),
        "settings_enable_push_2": lambda: ([raw(0x4, 0x0, 0, b"\x00\x02\x00\x00\x00\x02")], 0),
        "settings_initial_window_too_large": lambda: ([raw(0x4, 0x0, 0, b"\x00\x04\x80\x00\x00\x00")], 0),
        "settings_max_frame_size_too_small": lambda: ([raw(0x4, 0x0, 0, b"\x00\x05\x00\x00\x3f\xff")], 0),
        "settings_unknown_identifier": lambda: ([raw(0x4, 0x0, 0, b"\x00\xff\x00\x00\x00\x01"), get(1)], 1),
        "ping_of_7_bytes": lambda: ([raw(0x6, 0x0, 0, b"1234567")], 0),
        "ping_on_a_stream": lambda: ([raw(0x6, 0x0, 1, b"12345678")], 0),
        "goaway_on_a_stream": lambda: ([raw(0x7, 0x0, 1, b"\x00\x00\x00\x00\x00\x00\x00\x00")], 0),
        "push_promise_from_a_client": lambda: ([post(1), PushPromiseFrame(1, promised_stream_id=2, data=request(enc), flags=["END_HEADERS"]).serialize()], 1),
        "rst_stream_of_3_bytes": lambda: ([post(1), raw(0x3, 0x0, 1, b"\x00\x00\x08")], 1),
        "window_update_of_3_bytes": lambda: ([raw(0x8, 0x0, 0, b"\x00\x00\x01")], 0),
        "window_update_zero_on_connection": lambda: ([WindowUpdateFrame(0, window_increment=0).serialize()], 0),
        "window_overflow_on_connection": lambda: ([WindowUpdateFrame(0, window_increment=2**31 - 1).serialize()], 0),
        "data_on_stream_0": lambda: ([raw(0x0, 0x0, 0, b"x")], 0),
        "headers_on_stream_0": lambda: ([raw(0x1, 0x5, 0, bytes([0x82, 0x86, 0x84]))], 0),
        "frame_larger_than_max_frame_size": lambda: ([post(1), raw(0x0, 0x1, 1, b"x" * 16385)], 1),
        "padding_longer_than_the_payload": lambda: ([post(1), raw(0x0, 0x9, 1, bytes([10]) + b"abc")], 1),
        "unknown_frame_type_then_request": lambda: ([raw(0xfa, 0x0, 0, b"whatever"), get(1)], 1),
        "unknown_frame_in_the_middle_of_a_header_block": lambda: ([H(1, request(enc), flags=["END_STREAM"]).serialize(), raw(0xfa, 0x0, 0, b"x")], 1),
    }
    if case == "bad_preface":
        return None
    return cases[case]()


def run(host, port, case):
    enc = hpack.Encoder()
    s = socket.create_connection((host, port), timeout=5)
    got = case_frames(case, enc)
    if got is None:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize())
        frames, sid = [], 0
    else:
        frames, sid = got
        s.sendall(PREFACE + SettingsFrame(0).serialize())
        # The server's SETTINGS first (acknowledged), so the case's frames meet a connection
        # that has started on both sides.
        s.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
        s.sendall(b"".join(frames) + PingFrame(0, opaque_data=b"barrier!").serialize())
    buf = b""
    outcome = None
    ping_acked = False
    deadline = time.time() + 3
    s.settimeout(0.2)
    while outcome is None and time.time() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            if ping_acked and sid == 0:
                break
            continue
        except OSError:
            outcome = "closed"
            break
        if not data:
            outcome = "closed"
            break
        buf += data
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags, fsid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff
            payload = buf[9:9 + n]
            buf = buf[9 + n:]
            if kind == 0x7:
                c = int.from_bytes(payload[4:8], "big")
                if c != 0:
                    outcome = "goaway:" + code(c)
                    break
            elif kind == 0x3 and fsid == sid:
                outcome = "rst:" + code(int.from_bytes(payload[:4], "big"))
                break
            elif kind == 0x1 and fsid == sid and sid != 0:
                # A response: its status (the first field, in the static table or literal).
                try:
                    fields = hpack.Decoder().decode(payload if not flags & 0x8 else payload[1:])
                    status = dict(fields).get(":status", "?")
                except Exception:
                    status = "?"
                outcome = "status:" + str(status)
                break
            elif kind == 0x6 and flags & 0x1 and payload == b"barrier!":
                ping_acked = True
    s.close()
    return outcome or "nothing"


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    names = sys.argv[3:] or ALL
    print(json.dumps({c: run(host, port, c) for c in names}))


ALL = ["data_on_idle_stream", "rst_on_idle_stream", "window_update_on_idle_stream",
       "continuation_without_headers", "headers_on_even_stream", "headers_on_a_lower_stream",
       "the_highest_stream_id", "a_stream_after_the_highest_id",
       "priority_on_idle_stream_then_request", "second_headers_without_end_stream",
       "data_after_end_stream", "content_length_larger_than_data",
       "content_length_smaller_than_data",
       "window_update_zero_on_stream", "window_overflow_on_stream", "priority_depending_on_itself",
       "headers_depending_on_itself", "uppercase_field_name", "connection_specific_field",
       "te_other_than_trailers", "te_trailers", "missing_path", "empty_path",
       "pseudo_after_regular", "duplicate_method", "unknown_pseudo_field",
       "response_pseudo_in_request", "headers_interrupted_before_continuation",
       "hpack_index_out_of_range", "hpack_table_size_update_after_a_field",
       "settings_ack_with_payload", "settings_length_not_a_multiple_of_6", "settings_on_a_stream",
       "settings_enable_push_2", "settings_initial_window_too_large",
       "settings_max_frame_size_too_small", "settings_unknown_identifier", "ping_of_7_bytes",
       "ping_on_a_stream", "goaway_on_a_stream", "push_promise_from_a_client",
       "rst_stream_of_3_bytes", "window_update_of_3_bytes", "window_update_zero_on_connection",
       "window_overflow_on_connection", "data_on_stream_0", "headers_on_stream_0",
       "frame_larger_than_max_frame_size", "padding_longer_than_the_payload",
       "unknown_frame_type_then_request", "unknown_frame_in_the_middle_of_a_header_block",
       "bad_preface"]

main()
