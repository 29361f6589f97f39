//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte header, the types, flags, settings and error
//! codes, and the writers of every frame a server sends. Pure functions over bytes.

/// What a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header's length.
pub const HEAD_LEN: usize = 9;
/// The smallest `SETTINGS_MAX_FRAME_SIZE` and every peer's until it says otherwise.
pub const MIN_MAX_FRAME: u32 = 16_384;
/// The largest `SETTINGS_MAX_FRAME_SIZE` a peer may announce.
pub const MAX_MAX_FRAME: u32 = (1 << 24) - 1;
/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Every window's start before SETTINGS change it.
pub const DEFAULT_WINDOW: u32 = 65_535;

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers (RFC 9113 §6.5.2; RFC 8441 §3).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
}

/// Error codes (RFC 9113 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    Compression = 0x9,
    Connect = 0xa,
    EnhanceYourCalm = 0xb,
    InadequateSecurity = 0xc,
    Http11Required = 0xd,
}

impl Code {
    /// The code a peer sent; unknown codes are kept as `Internal` (RFC 9113 §7: "MUST NOT
    /// trigger any special behavior").
    pub fn from_u32(v: u32) -> Code {
        const ALL: [Code; 14] = [
            Code::NoError,
            Code::Protocol,
            Code::Internal,
            Code::FlowControl,
            Code::SettingsTimeout,
            Code::StreamClosed,
            Code::FrameSize,
            Code::RefusedStream,
            Code::Cancel,
            Code::Compression,
            Code::Connect,
            Code::EnhanceYourCalm,
            Code::InadequateSecurity,
            Code::Http11Required,
        ];
        ALL.get(v as usize).copied().unwrap_or(Code::Internal)
    }

    /// The name RFC 9113 gives it, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Code::NoError => "NO_ERROR",
            Code::Protocol => "PROTOCOL_ERROR",
            Code::Internal => "INTERNAL_ERROR",
            Code::FlowControl => "FLOW_CONTROL_ERROR",
            Code::SettingsTimeout => "SETTINGS_TIMEOUT",
            Code::StreamClosed => "STREAM_CLOSED",
            Code::FrameSize => "FRAME_SIZE_ERROR",
            Code::RefusedStream => "REFUSED_STREAM",
            Code::Cancel => "CANCEL",
            Code::Compression => "COMPRESSION_ERROR",
            Code::Connect => "CONNECT_ERROR",
            Code::EnhanceYourCalm => "ENHANCE_YOUR_CALM",
            Code::InadequateSecurity => "INADEQUATE_SECURITY",
            Code::Http11Required => "HTTP_1_1_REQUIRED",
        }
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Payload length (24 bits).
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared, as RFC 9113 §4.1 asks of a receiver).
    pub stream: u32,
}

impl Head {
    /// Reads a header from its 9 bytes.
    pub fn parse(b: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// Appends the header's 9 bytes.
    pub fn write(self, out: &mut Vec<u8>) {
        debug_assert!(self.len <= MAX_MAX_FRAME);
        let l = self.len.to_be_bytes();
        out.extend_from_slice(&[l[1], l[2], l[3], self.kind, self.flags]);
        out.extend_from_slice(&(self.stream & MAX_WINDOW).to_be_bytes());
    }

    pub fn has(self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// Appends a SETTINGS frame with these values.
pub fn settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    let len = (values.len() * 6) as u32;
    Head {
        len,
        kind: kind::SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(out);
    for &(id, v) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Appends a SETTINGS acknowledgement.
pub fn settings_ack(out: &mut Vec<u8>) {
    Head {
        len: 0,
        kind: kind::SETTINGS,
        flags: flag::ACK,
        stream: 0,
    }
    .write(out);
}

/// Appends a PING acknowledgement carrying the peer's 8 bytes.
pub fn ping_ack(out: &mut Vec<u8>, data: [u8; 8]) {
    Head {
        len: 8,
        kind: kind::PING,
        flags: flag::ACK,
        stream: 0,
    }
    .write(out);
    out.extend_from_slice(&data);
}

/// Appends a GOAWAY.
pub fn goaway(out: &mut Vec<u8>, last: u32, code: Code) {
    Head {
        len: 8,
        kind: kind::GOAWAY,
        flags: 0,
        stream: 0,
    }
    .write(out);
    out.extend_from_slice(&(last & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

/// Appends a RST_STREAM.
pub fn rst(out: &mut Vec<u8>, stream: u32, code: Code) {
    Head {
        len: 4,
        kind: kind::RST_STREAM,
        flags: 0,
        stream,
    }
    .write(out);
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

/// Appends a WINDOW_UPDATE (`stream` 0: the connection's window).
pub fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    debug_assert!(increment > 0 && increment <= MAX_WINDOW);
    Head {
        len: 4,
        kind: kind::WINDOW_UPDATE,
        flags: 0,
        stream,
    }
    .write(out);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// Appends one DATA frame (`bytes` no longer than the peer's frame size).
pub fn data(out: &mut Vec<u8>, stream: u32, bytes: &[u8], end: bool) {
    let flags = if end { flag::END_STREAM } else { 0 };
    Head {
        len: bytes.len() as u32,
        kind: kind::DATA,
        flags,
        stream,
    }
    .write(out);
    out.extend_from_slice(bytes);
}

/// Appends a header block as HEADERS and as many CONTINUATION frames as `max_frame` asks.
pub fn headers(out: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, max_frame: u32) {
    let max = max_frame as usize;
    let mut parts = block.chunks(max).peekable();
    let first = parts.next().unwrap_or(&[]);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if parts.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    Head {
        len: first.len() as u32,
        kind: kind::HEADERS,
        flags,
        stream,
    }
    .write(out);
    out.extend_from_slice(first);
    while let Some(p) = parts.next() {
        let flags = if parts.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        Head {
            len: p.len() as u32,
            kind: kind::CONTINUATION,
            flags,
            stream,
        }
        .write(out);
        out.extend_from_slice(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trips_and_drops_the_reserved_bit() {
        let h = Head {
            len: 0x12_3456,
            kind: kind::HEADERS,
            flags: 0x25,
            stream: 7,
        };
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(out.len(), HEAD_LEN);
        assert_eq!(Head::parse(out[..].try_into().unwrap()), h);
        out[5] |= 0x80;
        assert_eq!(Head::parse(out[..].try_into().unwrap()).stream, 7);
    }

    #[test]
    fn a_large_header_block_is_split_into_continuations() {
        let block = vec![7u8; 40_000];
        let mut out = Vec::new();
        headers(&mut out, 3, &block, true, MIN_MAX_FRAME);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < out.len() {
            let h = Head::parse(out[at..at + HEAD_LEN].try_into().unwrap());
            seen.push((h.kind, h.flags, h.len));
            at += HEAD_LEN + h.len as usize;
        }
        assert_eq!(
            seen,
            vec![
                (kind::HEADERS, flag::END_STREAM, 16_384),
                (kind::CONTINUATION, 0, 16_384),
                (kind::CONTINUATION, flag::END_HEADERS, 40_000 - 32_768),
            ]
        );
        let mut small = Vec::new();
        headers(&mut small, 1, b"ab", false, MIN_MAX_FRAME);
        assert_eq!(
            Head::parse(small[..9].try_into().unwrap()).flags,
            flag::END_HEADERS
        );
    }

    #[test]
    fn unknown_error_codes_read_as_internal() {
        assert_eq!(Code::from_u32(0xb), Code::EnhanceYourCalm);
        assert_eq!(Code::from_u32(0xff), Code::Internal);
        assert_eq!(Code::from_u32(0xd).name(), "HTTP_1_1_REQUIRED");
    }
}
