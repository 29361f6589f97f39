//! What a tunnel saw of its WebSocket messages. Each message is counted as its last frame's
//! header goes by (the frame trackers find every header anyway): on the worker's row of its
//! location's counters (`metrics::MessageRow`, for `/metrics`), and here, for the access-log
//! line at the tunnel's end (messages each way, the Close each side sent, who closed first).
//!
//! The record is made at the tunnel's first data or Close frame, or at its end if none came
//! (in the session's `Notes`, which an idle session keeps only a pointer for).

use std::sync::Arc;

use super::super::End;
use crate::metrics::MessageRow;
use crate::ws::{self, FrameHeader, opcode};

/// Who sent a tunnel's first Close frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Closer {
    #[default]
    Nobody,
    Client,
    Upstream,
    /// The proxy, on its own (its drain, a heartbeat's or a policy's Close).
    Proxy,
}

impl Closer {
    pub fn name(self) -> &'static str {
        match self {
            Closer::Nobody => "-",
            Closer::Client => "client",
            Closer::Upstream => "upstream",
            Closer::Proxy => "proxy",
        }
    }
}

/// A tunnel's record of its messages. Arrays of two are indexed by the side a frame came
/// from (0: the client, 1: the upstream).
#[derive(Debug)]
pub struct Seen {
    row: Arc<MessageRow>,
    messages: [u64; 2],
    /// Payload bytes of the message in progress from each side, its fragments so far
    /// (saturating: a message past 4 GiB is past the histogram's last bound anyway).
    part: [u32; 2],
    /// The Close codes the proxy sent on its own to each side (0: none).
    sent: [u16; 2],
    first: Closer,
    /// Bit `i`: side `i`'s Close frame is cut, its payload's rest comes in its next bytes.
    cut: u8,
    closes: Option<Box<Closes>>,
}

/// The Close frame each side sent (its first): its payload as it came (masked from the
/// client), gathered to its length.
#[derive(Debug, Default)]
struct Closes {
    payload: [Option<Vec<u8>>; 2],
    len: [u8; 2],
    mask: [Option<[u8; 4]>; 2],
}

/// A Close frame's code and reason, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseSeen {
    /// 1005 when the frame had no code (RFC 6455 7.1.5).
    pub code: u16,
    pub reason: String,
}

impl Seen {
    pub fn new(row: Arc<MessageRow>) -> Seen {
        Seen {
            row,
            messages: [0; 2],
            part: [0; 2],
            sent: [0; 2],
            first: Closer::Nobody,
            cut: 0,
            closes: None,
        }
    }

    /// A frame header from side `i` went by, followed in the same bytes by `rest` (its
    /// payload, or the start of it, and maybe more); `proxy_closed`: a Close of the proxy's own
    /// went to either side before it.
    #[inline(always)]
    pub fn frame(&mut self, i: usize, h: &FrameHeader, rest: &[u8], proxy_closed: bool) {
        match h.opcode {
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                self.row.frame(i, h.len);
                let size = if h.opcode == opcode::CONTINUATION {
                    u64::from(self.part[i]) + h.len
                } else {
                    h.len
                };
                if h.fin {
                    self.messages[i] += 1;
                    self.row.message(i, size);
                    self.part[i] = 0;
                } else {
                    self.part[i] = size.min(u64::from(u32::MAX)) as u32;
                }
            }
            opcode::CLOSE => self.close_frame(i, h, rest, proxy_closed),
            _ => {}
        }
    }

    /// Side `i`'s first Close frame: its payload is kept (what of it `rest` holds; the rest
    /// from the side's next bytes, `more`).
    #[cold]
    fn close_frame(&mut self, i: usize, h: &FrameHeader, rest: &[u8], proxy_closed: bool) {
        let c = self.closes.get_or_insert_with(Default::default);
        if c.payload[i].is_some() {
            return;
        }
        if self.first == Closer::Nobody {
            self.first = match (proxy_closed, i) {
                (true, _) => Closer::Proxy,
                (false, 0) => Closer::Client,
                (false, _) => Closer::Upstream,
            };
        }
        // A control frame's payload is at most 125 bytes (the tracker holds it to that).
        let len = h.len.min(125) as usize;
        let have = rest.len().min(len);
        c.payload[i] = Some(rest[..have].to_vec());
        c.len[i] = len as u8;
        c.mask[i] = h.mask;
        if have < len {
            self.cut |= 1 << i;
        }
    }

    /// Side `i`'s Close frame is cut: the rest of its payload starts its next bytes.
    #[inline(always)]
    pub fn wants_more(&self, i: usize) -> bool {
        self.cut & (1 << i) != 0
    }

    /// `data`, the next bytes from side `i`, continue its cut Close frame.
    #[cold]
    pub fn more(&mut self, i: usize, data: &[u8]) {
        let Some(c) = self.closes.as_deref_mut() else {
            return;
        };
        if let Some(p) = c.payload[i].as_mut() {
            let take = (usize::from(c.len[i]) - p.len()).min(data.len());
            p.extend_from_slice(&data[..take]);
            if p.len() == usize::from(c.len[i]) {
                self.cut &= !(1 << i);
            }
        }
    }

    /// The Close frame side `i` sent, if one came.
    pub fn close_of(&self, i: usize) -> Option<CloseSeen> {
        let c = self.closes.as_deref()?;
        let mut p = c.payload[i].clone()?;
        if let Some(m) = c.mask[i] {
            ws::apply_mask(&mut p, m, 0);
        }
        Some(match p.len() {
            // No code; or the frame ended before its code's two bytes (cut, or a peer that
            // sent one byte): as RFC 6455 says of a Close without one.
            0 | 1 => CloseSeen {
                code: 1005,
                reason: String::new(),
            },
            _ => CloseSeen {
                code: u16::from_be_bytes([p[0], p[1]]),
                reason: String::from_utf8_lossy(&p[2..]).into_owned(),
            },
        })
    }

    /// Messages from each side.
    pub fn messages(&self) -> [u64; 2] {
        self.messages
    }

    /// Who sent the first Close.
    pub fn closer(&self) -> Closer {
        self.first
    }

    /// The tunnel is ending: the Closes the proxy sent on its own, by code toward each side
    /// (`Control`'s record); if no side closed before, the proxy was first.
    pub fn proxy_sent(&mut self, sent: [u16; 2]) {
        self.sent = sent;
        if self.first == Closer::Nobody && sent.iter().any(|c| *c != 0) {
            self.first = Closer::Proxy;
        }
    }

    /// The tunnel ended with `end`: its Closes and its end are counted for its location.
    pub fn publish(&self, end: End) {
        for i in 0..2 {
            if let Some(c) = self.close_of(i) {
                self.row.close(i, c.code);
            }
            if self.sent[i] != 0 {
                self.row.close(2 + i, self.sent[i]);
            }
        }
        self.row.ended(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{frame, parse_header};

    fn header(bytes: &[u8]) -> FrameHeader {
        parse_header(bytes).unwrap().unwrap()
    }

    #[test]
    fn messages_are_counted_at_their_last_fragment() {
        let row = Arc::new(MessageRow::default());
        let mut s = Seen::new(row.clone());
        let mut first = crate::ws::frame(opcode::TEXT, &[0; 100], None);
        first[0] &= 0x7f; // not FIN
        let mut next = crate::ws::frame(opcode::CONTINUATION, &[0; 200], None);
        next[0] &= 0x7f;
        let last = crate::ws::frame(opcode::CONTINUATION, &[0; 50], None);
        for f in [&first, &next, &last] {
            s.frame(1, &header(f), &[], false);
        }
        s.frame(0, &header(&frame(opcode::PING, b"x", None)), &[], false);
        s.frame(
            0,
            &header(&frame(opcode::BINARY, &[1; 10], None)),
            &[],
            false,
        );
        assert_eq!(s.messages(), [1, 1]);
        let t = MessageRow::sum(std::iter::once(&*row));
        assert_eq!(t.messages, [1, 1]);
        assert_eq!(t.bytes, [10, 350]);
        assert_eq!(t.sizes[1][crate::metrics::message_bucket(350)], 1);
        assert_eq!(t.sizes[0][0], 1);
    }

    #[test]
    fn a_close_cut_across_reads_is_gathered_and_unmasked() {
        let row = Arc::new(MessageRow::default());
        let mut s = Seen::new(row.clone());
        let f = frame(
            opcode::CLOSE,
            &ws::close_payload(4001, "bye now"),
            Some([9, 8, 7, 6]),
        );
        let h = header(&f);
        let payload = &f[h.header_len..];
        s.frame(0, &h, &payload[..1], false);
        assert!(s.wants_more(0));
        s.more(0, &payload[1..]);
        assert!(!s.wants_more(0));
        assert_eq!(
            s.close_of(0),
            Some(CloseSeen {
                code: 4001,
                reason: "bye now".into()
            })
        );
        assert_eq!(s.closer(), Closer::Client);
        // The upstream's reply: not first; an empty Close is 1005.
        s.frame(1, &header(&frame(opcode::CLOSE, b"", None)), &[], false);
        assert_eq!(s.close_of(1).unwrap().code, 1005);
        s.proxy_sent([0, 1001]);
        assert_eq!(s.closer(), Closer::Client);
        s.publish(End::Done);
        let t = MessageRow::sum(std::iter::once(&*row));
        assert_eq!(t.closes[0][crate::metrics::close_slot(4001)], 1);
        assert_eq!(t.closes[1][5], 1, "1005");
        assert_eq!(t.closes[3][1], 1, "1001 sent to the upstream");
        assert_eq!(t.ended[End::Done.index()], 1);
    }

    #[test]
    fn the_proxy_is_first_when_its_close_went_before() {
        let mut s = Seen::new(Arc::default());
        s.frame(
            0,
            &header(&frame(opcode::CLOSE, b"\x03\xe8", None)),
            b"\x03\xe8",
            true,
        );
        assert_eq!(s.closer(), Closer::Proxy);
        let mut s = Seen::new(Arc::default());
        s.proxy_sent([1012, 0]);
        assert_eq!(s.closer(), Closer::Proxy);
        assert_eq!(s.close_of(0), None);
    }
}
