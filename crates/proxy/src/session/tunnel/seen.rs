//! What a tunnel saw of its WebSocket messages. Each message is counted as its last frame's
//! header goes by (the frame trackers find every header anyway): on the worker's row of its
//! location's counters (`metrics::MessageRow`, for `/metrics`), and in the tunnel, for the
//! access-log line at its end (messages each way, the Close each side sent, who closed first).
//!
//! The common case costs no memory: a whole message (one frame) is counted in the tunnel's two
//! 32-bit counters. What is rare — a fragmented message in progress, a Close, a counter that
//! wrapped — is kept in a [`Seen`] in the session's notes, made when first needed (or at the
//! tunnel's end, which every tunnel's record reaches), in one allocation with them.

use super::super::cx::Notes;
use super::super::{End, Io};
use crate::config::Config;
use crate::metrics::MessageRow;
use crate::ws::{self, FrameHeader, FrameTracker, opcode};

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

/// What is rare in a tunnel's record of its messages. Arrays of two are indexed by the side a
/// frame came from (0: the client, 1: the upstream).
#[derive(Debug)]
pub struct Seen {
    /// Payload bytes of the message in progress from each side, its fragments so far.
    part: [u64; 2],
    /// How many times each side's 32-bit message counter (in the tunnel) wrapped.
    wraps: [u32; 2],
    /// Messages from each side, once the tunnel ends (`finish`).
    messages: [u64; 2],
    /// The Close codes the proxy sent on its own to each side (0: none).
    sent: [u16; 2],
    first: Closer,
    /// Bit `i`: side `i`'s Close frame is cut, its payload's rest comes in its next bytes.
    cut: u8,
    /// The Close frame each side sent (its first): its payload as it came (masked from the
    /// client), `have` bytes of its `len` so far (`NO_CLOSE`: none came).
    payload: [[u8; 125]; 2],
    have: [u8; 2],
    len: [u8; 2],
    mask: [Option<[u8; 4]>; 2],
    /// The tunnel's location (`Config::location_id`): where its Closes and end are counted.
    loc: u16,
}

/// `Seen::len` of a side that sent no Close.
const NO_CLOSE: u8 = u8::MAX;

impl Default for Seen {
    fn default() -> Seen {
        Seen {
            part: [0; 2],
            wraps: [0; 2],
            messages: [0; 2],
            sent: [0; 2],
            first: Closer::Nobody,
            cut: 0,
            payload: [[0; 125]; 2],
            have: [0; 2],
            len: [NO_CLOSE; 2],
            mask: [None; 2],
            loc: u16::MAX,
        }
    }
}

/// A Close frame's code and reason, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseSeen {
    /// 1005 when the frame had no code (RFC 6455 7.1.5).
    pub code: u16,
    pub reason: String,
}

impl Seen {
    /// What a tunnel handed to another process carries of this record: the fragments so far
    /// of the message in progress from each side, and how often each side's counter wrapped.
    pub fn progress(&self) -> ([u64; 2], [u32; 2]) {
        (self.part, self.wraps)
    }

    /// The record of a tunnel taken over from another process (`progress` there).
    pub fn resumed(part: [u64; 2], wraps: [u32; 2]) -> Seen {
        Seen {
            part,
            wraps,
            ..Seen::default()
        }
    }

    /// A Close frame went by, or the proxy sent one: the tunnel is closing.
    pub fn closing(&self) -> bool {
        self.len != [NO_CLOSE; 2] || self.sent != [0; 2] || self.first != Closer::Nobody
    }

    /// Side `i`'s message counter wrapped.
    pub fn wrapped(&mut self, i: usize) {
        self.wraps[i] += 1;
    }

    /// A data frame from side `i` that is not a whole message (a fragment, or the first of
    /// several); the message's size once its last fragment comes.
    pub fn fragment(&mut self, i: usize, h: &FrameHeader) -> Option<u64> {
        let size = if h.opcode == ws::opcode::CONTINUATION {
            self.part[i].saturating_add(h.len)
        } else {
            h.len
        };
        if h.fin {
            self.part[i] = 0;
            Some(size)
        } else {
            self.part[i] = size;
            None
        }
    }

    /// Side `i`'s Close frame (its first is kept: what of its payload `rest` holds, the rest
    /// from the side's next bytes, `more`); `proxy_closed`: a Close of the proxy's own went
    /// to either side before it.
    pub fn close_frame(&mut self, i: usize, h: &FrameHeader, rest: &[u8], proxy_closed: bool) {
        if self.len[i] != NO_CLOSE {
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
        self.len[i] = len as u8;
        self.mask[i] = h.mask;
        self.more(i, rest);
    }

    /// Side `i`'s Close frame is cut: the rest of its payload starts its next bytes.
    #[inline(always)]
    pub fn wants_more(&self, i: usize) -> bool {
        self.cut & (1 << i) != 0
    }

    /// `data` continues side `i`'s Close frame (its payload so far is cut short).
    pub fn more(&mut self, i: usize, data: &[u8]) {
        let (have, len) = (usize::from(self.have[i]), usize::from(self.len[i]));
        let take = (len - have).min(data.len());
        self.payload[i][have..have + take].copy_from_slice(&data[..take]);
        self.have[i] = (have + take) as u8;
        if have + take < len {
            self.cut |= 1 << i;
        } else {
            self.cut &= !(1 << i);
        }
    }

    /// The code of side `i`'s Close, if it sent one: 1005 without one, or when the frame ended
    /// before its code's two bytes (a peer that sent one byte), as RFC 6455 says.
    pub fn close_code(&self, i: usize) -> Option<u16> {
        if self.len[i] == NO_CLOSE {
            return None;
        }
        if self.have[i] < 2 {
            return Some(1005);
        }
        let (p, m) = (&self.payload[i], self.mask[i].unwrap_or_default());
        Some(u16::from_be_bytes([p[0] ^ m[0], p[1] ^ m[1]]))
    }

    /// The Close frame side `i` sent, if one came (its reason unmasked, made text).
    pub fn close_of(&self, i: usize) -> Option<CloseSeen> {
        let code = self.close_code(i)?;
        let n = usize::from(self.have[i]);
        let mut p = self.payload[i][..n].to_vec();
        if let Some(m) = self.mask[i] {
            ws::apply_mask(&mut p, m, 0);
        }
        Some(CloseSeen {
            code,
            reason: String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned(),
        })
    }

    /// Messages from each side (once the tunnel ended).
    pub fn messages(&self) -> [u64; 2] {
        self.messages
    }

    /// Who sent the first Close.
    pub fn closer(&self) -> Closer {
        self.first
    }

    /// The tunnel is ending: its message counters (`msgs`, each of which wrapped `wraps`
    /// times), the Closes the proxy sent on its own by code toward each side (if no side
    /// closed before, the proxy was first), and its location.
    pub fn finish(&mut self, msgs: [u32; 2], sent: [u16; 2], loc: u16) {
        for (i, m) in msgs.into_iter().enumerate() {
            self.messages[i] = u64::from(self.wraps[i]) << 32 | u64::from(m);
        }
        self.sent = sent;
        if self.first == Closer::Nobody && sent.iter().any(|c| *c != 0) {
            self.first = Closer::Proxy;
        }
        self.loc = loc;
    }

    /// The tunnel's location (`Config::location_id`).
    pub fn loc(&self) -> u16 {
        self.loc
    }

    /// The tunnel ended with `end`: its Closes and its end are counted on `row` (the worker's
    /// row of its location's counters).
    pub fn publish(&self, row: &MessageRow, end: End) {
        for i in 0..2 {
            if let Some(code) = self.close_code(i) {
                row.close(i, code);
            }
            if self.sent[i] != 0 {
                row.close(2 + i, self.sent[i]);
            }
        }
        row.ended(end);
    }
}

/// A tunnel's message counters (its own, and the worker's row of its location's) and the
/// session's notes (where what is rare goes).
pub(in crate::session) struct Watch<'a> {
    msgs: &'a mut [u32; 2],
    notes: &'a mut Option<Box<Notes>>,
    row: Option<&'a MessageRow>,
}

impl<'a> Watch<'a> {
    #[inline(always)]
    pub(super) fn new<I: Io + ?Sized>(
        msgs: &'a mut [u32; 2],
        notes: &'a mut Option<Box<Notes>>,
        cfg: &'a Config,
        loc: u16,
        io: &I,
    ) -> Watch<'a> {
        Watch {
            msgs,
            notes,
            row: cfg.message_row(loc, io.worker()),
        }
    }

    /// The rare part of the record, made now if there is none.
    pub(super) fn seen(&mut self) -> &mut Seen {
        let n = self.notes.get_or_insert_with(Default::default);
        n.seen.get_or_insert_with(Default::default)
    }

    /// A frame header from side `i`, followed in the same bytes by `rest`; `proxy_closed`: a
    /// Close of the proxy's own went to either side before it. A whole message is counted
    /// here; pings and pongs are not messages; the rest is rare.
    #[inline(always)]
    pub(super) fn frame(&mut self, i: usize, h: &FrameHeader, rest: &[u8], proxy_closed: bool) {
        if h.fin && h.opcode != opcode::CONTINUATION && h.opcode < opcode::CLOSE {
            self.message(i, h.len, h.len);
        } else if h.opcode < opcode::PING {
            // A copy made here, on the rare path: the header the tracker parsed then needs
            // no place in memory on the usual one (where it lives in registers).
            let h = *h;
            self.rare(i, &h, rest, proxy_closed);
        }
    }

    /// A message of `size` payload bytes from side `i` ended with a frame of `len`.
    #[inline(always)]
    fn message(&mut self, i: usize, len: u64, size: u64) {
        let m = &mut self.msgs[i];
        *m = m.wrapping_add(1);
        if *m == 0 {
            self.seen().wrapped(i);
        }
        if let Some(row) = self.row {
            row.frame(i, len);
            row.message(i, size);
        }
    }

    /// A fragment, or a Close.
    #[cold]
    fn rare(&mut self, i: usize, h: &FrameHeader, rest: &[u8], proxy_closed: bool) {
        if h.opcode == opcode::CLOSE {
            self.seen().close_frame(i, h, rest, proxy_closed);
            return;
        }
        match self.seen().fragment(i, h) {
            Some(size) => self.message(i, h.len, size),
            None => {
                if let Some(row) = self.row {
                    row.frame(i, h.len);
                }
            }
        }
    }

    /// The next bytes from side `i`, where its tracker `t` stands before them: the rest of
    /// its cut Close frame, if it sent one (only inside a frame is there any to look for).
    #[inline(always)]
    pub(super) fn more(&mut self, i: usize, t: &FrameTracker, data: &[u8]) {
        if t.payload_left() > 0
            && let Some(s) = self.notes.as_deref_mut().and_then(|n| n.seen.as_mut())
            && s.wants_more(i)
        {
            s.more(i, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{frame, opcode, parse_header};

    fn header(bytes: &[u8]) -> FrameHeader {
        parse_header(bytes).unwrap().unwrap()
    }

    #[test]
    fn a_fragmented_message_is_sized_at_its_last_fragment() {
        let mut s = Seen::default();
        let mut first = frame(opcode::TEXT, &[0; 100], None);
        first[0] &= 0x7f; // not FIN
        let mut next = frame(opcode::CONTINUATION, &[0; 200], None);
        next[0] &= 0x7f;
        let last = frame(opcode::CONTINUATION, &[0; 50], None);
        assert_eq!(s.fragment(1, &header(&first)), None);
        assert_eq!(s.fragment(1, &header(&next)), None);
        assert_eq!(s.fragment(1, &header(&last)), Some(350));
        s.wrapped(0);
        s.finish([7, 2], [0; 2], 0);
        assert_eq!(s.messages(), [(1 << 32) + 7, 2]);
    }

    #[test]
    fn a_close_cut_across_reads_is_gathered_and_unmasked() {
        let row = MessageRow::default();
        let mut s = Seen::default();
        let f = frame(
            opcode::CLOSE,
            &ws::close_payload(4001, "bye now"),
            Some([9, 8, 7, 6]),
        );
        let h = header(&f);
        let payload = &f[h.header_len..];
        s.close_frame(0, &h, &payload[..1], false);
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
        s.close_frame(1, &header(&frame(opcode::CLOSE, b"", None)), &[], false);
        assert_eq!(s.close_of(1).unwrap().code, 1005);
        s.finish([0; 2], [0, 1001], 0);
        assert_eq!(s.closer(), Closer::Client);
        s.publish(&row, End::Done);
        let t = MessageRow::sum(std::iter::once(&row));
        assert_eq!(t.closes[0][crate::metrics::close_slot(4001)], 1);
        assert_eq!(t.closes[1][5], 1, "1005");
        assert_eq!(t.closes[3][1], 1, "1001 sent to the upstream");
        assert_eq!(t.ended[End::Done.index()], 1);
    }

    #[test]
    fn the_proxy_is_first_when_its_close_went_before() {
        let mut s = Seen::default();
        let f = frame(opcode::CLOSE, b"\x03\xe8", None);
        s.close_frame(0, &header(&f), b"\x03\xe8", true);
        assert_eq!(s.closer(), Closer::Proxy);
        let mut s = Seen::default();
        s.finish([0; 2], [1012, 0], 0);
        assert_eq!(s.closer(), Closer::Proxy);
        assert_eq!(s.close_of(0), None);
    }
}
