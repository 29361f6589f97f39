"""What the WebSocket-over-HTTP/2 clients of tests/h2 share: masked frames written and server
frames read (RFC 6455), and Python's h2 made to let streams go on after a graceful GOAWAY."""
import os
import struct

import h2.connection
import h2.events


def graceful_goaway(self, frame):
    """Python's h2 ends the connection at any GOAWAY; RFC 9113 §6.8 lets the streams up to
    its last stream id go on (browsers do): what a drain is seen with."""
    if frame.error_code != 0:
        return ORIGINAL_GOAWAY(self, frame)
    ev = h2.events.ConnectionTerminated()
    ev.error_code = frame.error_code
    ev.last_stream_id = frame.last_stream_id
    ev.additional_data = frame.additional_data or None
    return [], [ev]


ORIGINAL_GOAWAY = h2.connection.H2Connection._receive_goaway_frame
h2.connection.H2Connection._receive_goaway_frame = graceful_goaway


def ws_frame(payload, opcode=0x2):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    m = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") if n else b""
    return head + mask + masked


def parse_frames(buf):
    out = []
    while len(buf) >= 2:
        op = buf[0] & 0x0F
        n = buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", buf[2:4])[0]
            at = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack("!Q", buf[2:10])[0]
            at = 10
        if len(buf) < at + n:
            break
        out.append((op, bytes(buf[at:at + n])))
        buf = buf[at + n:]
    return out, buf
