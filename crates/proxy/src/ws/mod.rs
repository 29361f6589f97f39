//! RFC 6455 pieces: the accept key, frame headers, masking, and the frame tracker that knows
//! where frame boundaries fall in a byte stream without buffering payloads.

use base64::Engine;
use sha1::{Digest, Sha1};

/// Opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..3 as the top three bits of the low nibble (RSV1 = 0x4).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Bytes the header itself took.
    pub header_len: usize,
}

/// A frame header that breaks RFC 6455.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

/// Longest possible header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER: usize = 14;

/// Decode a header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 0x7;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let len7 = buf[1] & 0x7f;
    let mut n = 2;
    let len = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            n = 4;
            u64::from(u16::from_be_bytes([buf[2], buf[3]]))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            n = 10;
            let l = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if l >> 63 != 0 {
                return Err(FrameError("frame length has the top bit set"));
            }
            l
        }
        l => u64::from(l),
    };
    if opcode >= 0x8 {
        if !fin {
            return Err(FrameError("fragmented control frame"));
        }
        if len > 125 {
            return Err(FrameError("control frame longer than 125 bytes"));
        }
    }
    if matches!(opcode, 0x3..=0x7 | 0xB..=0xF) {
        return Err(FrameError("reserved opcode"));
    }
    let mask = if masked {
        if buf.len() < n + 4 {
            return Ok(None);
        }
        let m = [buf[n], buf[n + 1], buf[n + 2], buf[n + 3]];
        n += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        len,
        header_len: n,
    }))
}

/// Append a frame header to `out`.
pub fn write_header(
    out: &mut Vec<u8>,
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
) {
    out.push(if fin { 0x80 } else { 0 } | (rsv & 7) << 4 | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// XOR `data` with `mask`, where `data[0]` is byte `offset` of the payload.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let rot = (offset % 4) as usize;
    let m = [
        mask[rot],
        mask[(rot + 1) % 4],
        mask[(rot + 2) % 4],
        mask[(rot + 3) % 4],
    ];
    let word = u32::from_ne_bytes(m);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i];
    }
}

/// A complete frame (header + payload), masked with `mask` if given.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER);
    write_header(&mut out, true, 0, opcode, mask, payload.len() as u64);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m, 0);
    }
    out
}

/// A Close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    p
}

/// Tracks frames in one byte stream: header bytes are gathered and decoded, payload bytes are
/// only counted. It never copies payload and never rewrites anything, and it is small (15
/// bytes), so the proxy runs one per direction of every tunnel to know where frames end (so a
/// Ping or Close can be put between two frames). The echo backend and the load generator step
/// through the same pieces to unmask, echo and check payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameTracker {
    /// While a header is being gathered (`have` > 0): its bytes so far. Otherwise: in its
    /// first 8 bytes, the payload bytes of the current frame still to come (native order). A
    /// stream is never doing both, so the two share the bytes (a tunnel keeps two trackers).
    buf: [u8; MAX_HEADER],
    /// Header bytes gathered; `LOST` once the stream broke RFC 6455 (tracking stops).
    have: u8,
}

/// `FrameTracker::have` of a stream that is not (or no longer) a valid frame stream.
const LOST: u8 = u8::MAX;

/// What one step over a byte stream found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Header bytes were taken; the header is not complete yet.
    Partial,
    /// A frame header is complete (the bytes taken end it).
    Header(FrameHeader),
    /// The bytes taken are payload of the current frame.
    Payload,
}

/// One step: what was found, how many bytes of the input it took, and whether a frame ended
/// with them (a header of an empty frame, or the last payload byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub piece: Piece,
    pub used: usize,
    pub end: bool,
}

impl FrameTracker {
    /// Payload bytes of the current frame still to come (0 while a header is gathered).
    #[inline(always)]
    fn left(&self) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.buf[..8]);
        u64::from_ne_bytes(b)
    }

    #[inline(always)]
    fn set_left(&mut self, n: u64) {
        self.buf[..8].copy_from_slice(&n.to_ne_bytes());
    }

    /// Bytes of [`FrameTracker::to_bytes`].
    pub const BYTES: usize = MAX_HEADER + 1;

    /// The tracker's state as bytes (a tunnel handed to another process carries it).
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0; Self::BYTES];
        out[..MAX_HEADER].copy_from_slice(&self.buf);
        out[MAX_HEADER] = self.have;
        out
    }

    /// A tracker from [`FrameTracker::to_bytes`]; None if they cannot be one.
    pub fn from_bytes(b: [u8; Self::BYTES]) -> Option<FrameTracker> {
        let have = b[MAX_HEADER];
        if have as usize >= MAX_HEADER && have != LOST {
            return None;
        }
        let mut buf = [0; MAX_HEADER];
        buf.copy_from_slice(&b[..MAX_HEADER]);
        Some(FrameTracker { buf, have })
    }

    /// Payload bytes of the current frame still to come: 0 at a boundary, while a header is
    /// gathered, and in a stream that is lost.
    #[inline(always)]
    pub fn payload_left(&self) -> u64 {
        if self.have == 0 { self.left() } else { 0 }
    }

    /// `n` bytes of the current frame's payload went by without being looked at (spliced):
    /// at most [`FrameTracker::payload_left`].
    pub fn skip(&mut self, n: u64) {
        let left = self.payload_left();
        debug_assert!(n <= left, "skipped past the frame's payload");
        if self.have == 0 {
            self.set_left(left - n.min(left));
        }
    }

    /// At a frame boundary: nothing of a frame is pending, so a new frame may be inserted here.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left() == 0
    }

    /// The stream broke RFC 6455 somewhere: frame boundaries are unknown from there on.
    pub fn lost(&self) -> bool {
        self.have == LOST
    }

    /// Take the next piece from the front of `data` (not empty).
    pub fn step(&mut self, data: &[u8]) -> Result<Step, FrameError> {
        if self.have == 0 {
            let left = self.left();
            if left > 0 {
                let used = (data.len() as u64).min(left);
                self.set_left(left - used);
                return Ok(Step {
                    piece: Piece::Payload,
                    used: used as usize,
                    end: left == used,
                });
            }
            // The usual case: a whole header at the front of `data`, parsed where it lies.
            if let Some(h) = parse_header(data)? {
                self.set_left(h.len);
                return Ok(Step {
                    piece: Piece::Header(h),
                    used: h.header_len,
                    end: h.len == 0,
                });
            }
        }
        if self.lost() {
            return Err(FrameError("frame stream already broken"));
        }
        let have = usize::from(self.have);
        let take = (MAX_HEADER - have).min(data.len());
        self.buf[have..have + take].copy_from_slice(&data[..take]);
        match parse_header(&self.buf[..have + take])? {
            None => {
                self.have += take as u8;
                Ok(Step {
                    piece: Piece::Partial,
                    used: take,
                    end: false,
                })
            }
            Some(h) => {
                self.have = 0;
                self.set_left(h.len);
                Ok(Step {
                    piece: Piece::Header(h),
                    used: h.header_len - have,
                    end: h.len == 0,
                })
            }
        }
    }

    /// Account for `data` passing by; returns how many frames ended in it.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<u64, FrameError> {
        let mut frames = 0;
        while !data.is_empty() {
            let s = self.step(data)?;
            frames += u64::from(s.end);
            data = &data[s.used..];
        }
        Ok(frames)
    }

    /// Follow `data` passing by in a tunnel, never failing: bytes that break RFC 6455 (or a
    /// tunnel that is not WebSocket at all) mark the stream lost, and it is not tracked on.
    /// Returns [`FrameTracker::payload_left`] after it (what a splice could take).
    pub fn track(&mut self, data: &[u8]) -> u64 {
        self.track_with(data, |_, _| {})
    }

    /// [`FrameTracker::track`], showing `on` each frame header that completes in `data`, with
    /// the bytes that follow it in `data` (its payload, or the start of it, and maybe more).
    #[inline(always)]
    pub fn track_with(&mut self, mut data: &[u8], mut on: impl FnMut(&FrameHeader, &[u8])) -> u64 {
        // The usual case: headers whole where they lie, each payload skipped in one step
        // (what `feed` does, without a `Step` per piece: this runs on every chunk a tunnel
        // forwards).
        while self.have == 0 {
            let left = self.left();
            if left >= data.len() as u64 {
                let left = left - data.len() as u64;
                self.set_left(left);
                return left;
            }
            data = &data[left as usize..];
            match parse_header(data) {
                Ok(Some(h)) => {
                    self.set_left(h.len);
                    data = &data[h.header_len..];
                    on(&h, data);
                }
                Ok(None) => {
                    // A header cut short: gathered by `step`, from a boundary.
                    self.set_left(0);
                    break;
                }
                Err(_) => {
                    self.have = LOST;
                    return 0;
                }
            }
        }
        while !self.lost() && !data.is_empty() {
            match self.step(data) {
                Ok(s) => {
                    data = &data[s.used..];
                    if let Piece::Header(h) = s.piece {
                        on(&h, data);
                    }
                }
                Err(_) => self.have = LOST,
            }
        }
        self.payload_left()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_broken_stream_is_lost_not_fatal() {
        let mut t = FrameTracker::default();
        t.track(&frame(opcode::TEXT, b"hi", Some([1, 2, 3, 4])));
        assert!(t.at_boundary() && !t.lost());
        t.track(b"\x83\x00"); // reserved opcode 3
        assert!(t.lost());
        t.track(&frame(opcode::TEXT, b"hi", None));
        assert!(t.lost(), "once lost, stays lost");
    }

    use super::*;

    #[test]
    fn rfc6455_sample_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_round_trip_all_lengths() {
        for len in [0u64, 1, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                write_header(&mut out, true, 4, opcode::BINARY, mask, len);
                let h = parse_header(&out).unwrap().unwrap();
                assert_eq!(
                    (h.len, h.mask, h.header_len, h.rsv, h.fin),
                    (len, mask, out.len(), 4, true)
                );
                for cut in 0..out.len() {
                    assert_eq!(parse_header(&out[..cut]), Ok(None));
                }
            }
        }
    }

    #[test]
    fn bad_headers() {
        assert!(parse_header(&[0x09, 0x00]).is_err()); // fragmented ping
        assert!(parse_header(&[0x89, 126, 0, 200]).is_err()); // long ping
        assert!(parse_header(&[0x83, 0]).is_err()); // reserved opcode
        assert!(parse_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn mask_is_an_involution_at_any_offset() {
        let orig: Vec<u8> = (0..=255).collect();
        let mut d = orig.clone();
        apply_mask(&mut d, [9, 8, 7, 6], 0);
        assert_ne!(d, orig);
        // unmask in two pieces with an odd split
        let (a, b) = d.split_at_mut(7);
        apply_mask(a, [9, 8, 7, 6], 0);
        apply_mask(b, [9, 8, 7, 6], 7);
        assert_eq!(d, orig);
    }

    #[test]
    fn track_agrees_with_feed_in_any_split() {
        // Whole frames, a frame of every length form, and a stream that breaks (reserved
        // opcode) after them: `track`'s fast path and `feed` step for step must agree on
        // where the stream stands after every piece.
        let mut stream = Vec::new();
        for (i, len) in [0usize, 3, 125, 126, 300, 65536, 70000].iter().enumerate() {
            let mask = (i % 2 == 0).then_some([9, 8, 7, 6]);
            stream.extend(frame(opcode::BINARY, &vec![i as u8; *len], mask));
        }
        let whole = stream.len();
        stream.extend_from_slice(b"\x83\x00tail");
        for step in [1, 2, 5, 13, 14, 15, 127, 1000, 4096, whole, stream.len()] {
            let (mut a, mut b) = (FrameTracker::default(), FrameTracker::default());
            let (mut at, mut failed) = (0, false);
            for piece in stream.chunks(step) {
                a.track(piece);
                failed = failed || b.feed(piece).is_err();
                at += piece.len();
                assert_eq!(a.lost(), failed, "step {step} at {at}");
                if !failed {
                    // (A header's opcode is judged with its second byte.)
                    assert!(
                        at <= whole + 1,
                        "step {step} at {at}: the break went unseen"
                    );
                    assert_eq!(a.at_boundary(), b.at_boundary(), "step {step} at {at}");
                    assert_eq!(a.left(), b.left(), "step {step} at {at}");
                }
            }
            assert!(a.lost(), "step {step}");
        }
    }

    #[test]
    fn tracker_finds_boundaries_in_any_split() {
        let mut stream = Vec::new();
        for (i, len) in [0usize, 5, 125, 126, 70000].iter().enumerate() {
            stream.extend(frame(
                opcode::BINARY,
                &vec![i as u8; *len],
                Some([1, 2, 3, 4]),
            ));
        }
        for step in [1, 2, 3, 13, 14, 1000, stream.len()] {
            let mut t = FrameTracker::default();
            let mut frames = 0;
            for piece in stream.chunks(step) {
                frames += t.feed(piece).unwrap();
            }
            assert_eq!(frames, 5, "step {step}");
            assert!(t.at_boundary());
        }
        let mut t = FrameTracker::default();
        t.feed(&stream[..20]).unwrap();
        assert!(
            std::mem::size_of::<FrameTracker>() <= 15,
            "small enough for every tunnel"
        );
        assert!(!t.at_boundary());
    }
    #[test]
    fn skipped_payload_is_tracked_as_if_it_had_gone_by() {
        let mut stream = frame(opcode::BINARY, &vec![7; 70000], None);
        stream.extend(frame(opcode::TEXT, b"after", None));
        for cut in [10, 20, 100] {
            let mut t = FrameTracker::default();
            t.track(&stream[..cut]);
            let left = t.payload_left();
            assert_eq!(left as usize, stream.len() - cut - 7, "cut {cut}");
            // Part of it skipped, the rest tracked, then the next frame.
            t.skip(left / 2);
            assert_eq!(t.payload_left(), left - left / 2);
            t.track(&stream[cut + (left / 2) as usize..stream.len() - 7]);
            assert!(t.at_boundary(), "cut {cut}");
            assert_eq!(t.feed(&stream[stream.len() - 7..]).unwrap(), 1);
        }
        // A header half gathered, or a lost stream, has no payload to skip.
        let mut t = FrameTracker::default();
        t.track(&stream[..1]);
        assert_eq!(t.payload_left(), 0);
        let mut t = FrameTracker::default();
        t.track(&[0x0f, 0x00]);
        assert!(t.lost());
        assert_eq!(t.payload_left(), 0);
    }
}
