//! One HTTP/2 connection, server side: the preface, frames read as they arrive (a DATA
//! payload is handed on slice by slice, never gathered), the stream states of RFC 9113 §5.1,
//! both directions' flow control, and the answer RFC 9113 asks for to every frame a peer may
//! send in every state (a stream error: RST_STREAM; a connection error: GOAWAY, then the end).
//!
//! Bounds on a peer:
//! - open streams: `Settings::max_streams`; past it a stream is refused (REFUSED_STREAM);
//! - bytes it may send a stream before this side has passed them on: `Settings::window`
//!   (the connection's window is given back as bytes arrive, so one slow stream never
//!   stalls the others);
//! - a frame: 16 KiB (`SETTINGS_MAX_FRAME_SIZE` is not raised); a header block with its
//!   CONTINUATION frames: [`Connection::max_block`] bytes and [`MAX_CONTINUATIONS`] frames;
//!   a decoded header list: `Settings::max_header_list` (answered 431);
//! - frames that cost this side work but carry nothing a request needs (PING, SETTINGS,
//!   PRIORITY, empty DATA, RST_STREAM, WINDOW_UPDATE on closed streams, refused streams):
//!   "glitches", a leaky bucket of [`GLITCH_BURST`] draining at [`GLITCH_RATE`] per second;
//!   past it, GOAWAY with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487, and the control
//!   frame floods);
//! - what this side writes: the caller drains [`Connection::out`] and stops feeding input
//!   while it is not drained, so a peer that does not read cannot grow it.

use super::fields::{self, FieldList, Fields, Refusal, Request};
use super::frame::{self, Code, HEAD_LEN, Head, flag, kind, setting};

/// What this side announces in its SETTINGS.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_streams: u32,
    /// `SETTINGS_INITIAL_WINDOW_SIZE`: what a peer may send one stream ahead of this side.
    pub window: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_header_list: u32,
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441).
    pub connect_protocol: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_streams: 100,
            window: 65_535,
            max_header_list: 32_768,
            connect_protocol: true,
        }
    }
}

/// What the connection tells its owner.
pub trait Handler {
    /// A stream opened with this request (`end`: it has no body).
    fn request(&mut self, stream: u32, req: Request, end: bool);
    /// Body bytes of a stream (`end`: the last of them; `bytes` may then be empty). Pass them
    /// on, then give their credit back with [`Connection::consumed`].
    fn data(&mut self, stream: u32, bytes: &[u8], end: bool);
    /// A stream's trailers; the stream's body has ended.
    fn trailers(&mut self, stream: u32, fields: FieldList);
    /// A stream ended abnormally: the peer reset it, or this side did for an error it found.
    fn reset(&mut self, stream: u32, code: Code);
    /// The peer opened its window: for this stream, or for every stream (`stream` 0).
    fn writable(&mut self, stream: u32);
}

/// CONTINUATION frames one header block may take.
pub const MAX_CONTINUATIONS: u32 = 16;
/// Glitches a peer may spend at once.
pub const GLITCH_BURST: u32 = 1_000;
/// Glitches per second the bucket drains.
pub const GLITCH_RATE: u32 = 100;
/// Stream ids this side reset that are remembered, so that frames already on their way on
/// them are ignored.
const RECENT_RESETS: usize = 16;
/// Ranges of skipped stream ids remembered.
const SKIPPED_MAX: usize = 8;
/// The connection's receive window, given back as bytes arrive.
const CONN_WINDOW: u32 = 1 << 20;
/// This side's (and every peer's first) frame size.
const MAX_FRAME: u32 = frame::MIN_MAX_FRAME;

/// What happened on the connection since its owner last took the tally (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Streams taken (requests handed to the owner).
    pub streams: u32,
    /// RST_STREAM frames this side sent, by error code.
    pub resets_sent: [u32; 14],
    /// RST_STREAM frames the peer sent for streams still open, by error code.
    pub resets_received: [u32; 14],
    /// The GOAWAY this side sent, if it sent it since.
    pub goaway: Option<Code>,
}

/// One open (or half-closed) stream.
struct Stream {
    id: u32,
    /// The peer has ended its side (END_STREAM, or trailers).
    remote_done: bool,
    /// This side has ended its side.
    local_done: bool,
    /// A response's HEADERS went out (a final one, or an informational).
    answered: bool,
    /// What the peer may still send before a WINDOW_UPDATE.
    recv_window: i64,
    /// Passed-on bytes not yet given back.
    unacked: u32,
    /// What this side may still send.
    send_window: i64,
    content_length: Option<u64>,
    received: u64,
}

/// Where the reader is.
#[derive(Clone, Copy, Debug)]
enum Read {
    /// Bytes of the client's preface matched so far.
    Preface(u8),
    /// Bytes of a frame header gathered so far (in `head`).
    Head(u8),
    /// A non-DATA frame's payload, gathered into `buf`.
    Payload(Head),
    /// A padded DATA frame's pad length byte.
    DataPad(Head),
    /// A DATA frame's bytes, handed on as they come (`deliver` false: dropped).
    Data {
        stream: u32,
        left: u32,
        pad: u32,
        end: bool,
        deliver: bool,
    },
    /// Bytes dropped (padding, a frame of no interest).
    Skip(u32),
}

/// A header block being gathered across CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    frames: u32,
    /// A HEADERS whose priority named its own stream: decoded, then refused (§5.3.1).
    self_dependent: bool,
    /// Decoded only to keep HPACK in step (a stream this side reset), then dropped.
    ignore: bool,
}

/// The server side of one HTTP/2 connection.
pub struct Connection {
    settings: Settings,
    fields: Fields,
    read: Read,
    head: [u8; HEAD_LEN],
    buf: Vec<u8>,
    block: Option<Block>,
    block_bytes: Vec<u8>,
    streams: Vec<Stream>,
    /// The highest stream id the peer has used.
    last_stream: u32,
    /// The peer's first SETTINGS has come.
    settings_seen: bool,
    peer_window: u32,
    peer_max_frame: u32,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    /// GOAWAY sent: the last stream id it named.
    goaway: Option<u32>,
    peer_goaway: bool,
    dead: Option<Code>,
    glitches: u32,
    glitch_ms: u64,
    /// Stream ids this side reset last (RST_STREAM sent, whatever its code): what the peer
    /// had already sent on them when the reset reached it is ignored (RFC 9113 §5.1).
    recent_resets: [u32; RECENT_RESETS],
    recent_at: usize,
    /// Ranges of stream ids the peer skipped (implicitly closed, never opened), the latest
    /// `SKIPPED_MAX`: a HEADERS on one is an unexpected stream id (§5.1.1), not a closed
    /// stream's.
    skipped: Vec<(u32, u32)>,
    tally: Tally,
    out: Vec<u8>,
}

/// A stream error found while reading: the stream is reset and reading goes on.
struct StreamError(u32, Code);

impl Connection {
    /// A connection that has not read the preface yet; this side's SETTINGS (and the raise of
    /// the connection's window) are already in [`Connection::out`].
    pub fn new(settings: Settings) -> Connection {
        let mut out = Vec::with_capacity(64);
        let mut values = vec![
            (setting::MAX_CONCURRENT_STREAMS, settings.max_streams),
            (
                setting::INITIAL_WINDOW_SIZE,
                settings.window.min(frame::MAX_WINDOW),
            ),
            (setting::MAX_HEADER_LIST_SIZE, settings.max_header_list),
            (setting::ENABLE_PUSH, 0),
        ];
        if settings.connect_protocol {
            values.push((setting::ENABLE_CONNECT_PROTOCOL, 1));
        }
        frame::settings(&mut out, &values);
        frame::window_update(&mut out, 0, CONN_WINDOW - frame::DEFAULT_WINDOW);
        Connection {
            settings,
            fields: Fields::new(settings.max_header_list as usize),
            read: Read::Preface(0),
            head: [0; HEAD_LEN],
            buf: Vec::new(),
            block: None,
            block_bytes: Vec::new(),
            streams: Vec::new(),
            last_stream: 0,
            settings_seen: false,
            peer_window: frame::DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(CONN_WINDOW),
            recv_unacked: 0,
            goaway: None,
            peer_goaway: false,
            dead: None,
            glitches: 0,
            glitch_ms: 0,
            recent_resets: [0; RECENT_RESETS],
            recent_at: 0,
            skipped: Vec::new(),
            tally: Tally::default(),
            out,
        }
    }

    /// What this side announces.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The largest header block (HEADERS and its CONTINUATIONs) this side gathers.
    pub fn max_block(&self) -> usize {
        self.settings.max_header_list as usize + 16_384
    }

    /// Bytes to write to the peer; the caller drains them.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Bytes written and not yet drained by the owner.
    pub fn pending_out(&self) -> usize {
        self.out.len()
    }

    /// The client's preface and first SETTINGS have come.
    pub fn started(&self) -> bool {
        self.settings_seen
    }

    /// Whether the connection has nothing more to do: GOAWAY sent or received, no stream left.
    pub fn finished(&self) -> bool {
        self.dead.is_some()
            || ((self.goaway.is_some() || self.peer_goaway) && self.streams.is_empty())
    }

    /// Reads bytes from the peer. `Err` is a connection error: its GOAWAY is in `out`, and
    /// the connection is done once `out` is written.
    pub fn received(
        &mut self,
        mut input: &[u8],
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        if let Some(code) = self.dead {
            return Err(code);
        }
        while !input.is_empty() {
            let used = match self.step(input, now_ms, h) {
                Ok(n) => n,
                Err(code) => return Err(self.fail(code)),
            };
            input = &input[used..];
        }
        Ok(())
    }

    /// Ends the connection for an error this side found.
    fn fail(&mut self, code: Code) -> Code {
        if self.dead.is_none() {
            frame::goaway(&mut self.out, self.last_stream, code);
            self.tally.goaway = Some(code);
            self.dead = Some(code);
            self.goaway = Some(self.last_stream);
        }
        code
    }

    /// One step of the reader over `input`; returns the bytes it took.
    fn step(&mut self, input: &[u8], now_ms: u64, h: &mut impl Handler) -> Result<usize, Code> {
        match self.read {
            Read::Preface(have) => {
                let have = usize::from(have);
                let n = (frame::PREFACE.len() - have).min(input.len());
                if input[..n] != frame::PREFACE[have..have + n] {
                    return Err(Code::Protocol);
                }
                self.read = if have + n == frame::PREFACE.len() {
                    Read::Head(0)
                } else {
                    Read::Preface((have + n) as u8)
                };
                Ok(n)
            }
            Read::Head(have) => {
                let have = usize::from(have);
                let n = (HEAD_LEN - have).min(input.len());
                self.head[have..have + n].copy_from_slice(&input[..n]);
                if have + n < HEAD_LEN {
                    self.read = Read::Head((have + n) as u8);
                } else {
                    let head = Head::parse(&self.head);
                    self.begin(head, now_ms, h)?;
                }
                Ok(n)
            }
            Read::Payload(head) => {
                let n = (head.len as usize - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..n]);
                if self.buf.len() == head.len as usize {
                    self.read = Read::Head(0);
                    let payload = std::mem::take(&mut self.buf);
                    let r = self.frame(head, &payload, now_ms, h);
                    self.buf = payload;
                    self.buf.clear();
                    r?;
                }
                Ok(n)
            }
            Read::DataPad(head) => {
                let pad = u32::from(input[0]);
                if pad >= head.len {
                    return Err(Code::Protocol);
                }
                self.data_body(head, head.len - 1 - pad, pad, h);
                Ok(1)
            }
            Read::Data {
                stream,
                left,
                pad,
                end,
                deliver,
            } => {
                let n = (left as usize).min(input.len());
                let rest = left - n as u32;
                if deliver {
                    h.data(stream, &input[..n], end && rest == 0);
                }
                self.read = if rest > 0 {
                    Read::Data {
                        stream,
                        left: rest,
                        pad,
                        end,
                        deliver,
                    }
                } else {
                    self.skip(pad)
                };
                Ok(n)
            }
            Read::Skip(left) => {
                let n = (left as usize).min(input.len());
                self.read = self.skip(left - n as u32);
                Ok(n)
            }
        }
    }

    fn skip(&self, n: u32) -> Read {
        if n == 0 { Read::Head(0) } else { Read::Skip(n) }
    }

    /// A frame header has come: checks what can be checked before its payload.
    fn begin(&mut self, head: Head, now_ms: u64, h: &mut impl Handler) -> Result<(), Code> {
        if head.len > MAX_FRAME {
            return Err(Code::FrameSize);
        }
        if !self.settings_seen && (head.kind != kind::SETTINGS || head.has(flag::ACK)) {
            return Err(Code::Protocol);
        }
        if self
            .block
            .as_ref()
            .is_some_and(|b| head.kind != kind::CONTINUATION || head.stream != b.stream)
        {
            return Err(Code::Protocol);
        }
        if head.kind == kind::DATA {
            return self.data_head(head, now_ms, h);
        }
        self.read = if head.len == 0 {
            Read::Head(0)
        } else {
            Read::Payload(head)
        };
        if head.len == 0 {
            self.frame(head, &[], now_ms, h)?;
        }
        Ok(())
    }

    /// A DATA frame's header: flow control and the stream's state, before any of its bytes.
    fn data_head(&mut self, head: Head, now_ms: u64, h: &mut impl Handler) -> Result<(), Code> {
        if head.stream == 0 {
            return Err(Code::Protocol);
        }
        if head.stream > self.last_stream {
            return Err(Code::Protocol);
        }
        // The whole frame counts against the connection's window, whatever its stream.
        let len = head.len;
        if i64::from(len) > self.recv_window {
            return Err(Code::FlowControl);
        }
        self.recv_window -= i64::from(len);
        self.give_back_connection(len);
        let end = head.has(flag::END_STREAM);
        if len == 0 && !end {
            self.glitch(now_ms)?;
        }
        let error = match self.index(head.stream) {
            // Sent before the peer knew this side had reset the stream: dropped.
            None if self.reset_lately(head.stream) => {
                self.glitch(now_ms)?;
                self.read = self.skip(len);
                return Ok(());
            }
            None => {
                self.glitch(now_ms)?;
                Some(Code::StreamClosed)
            }
            Some(i) => {
                let s = &mut self.streams[i];
                if s.remote_done {
                    Some(Code::StreamClosed)
                } else if i64::from(len) > s.recv_window {
                    Some(Code::FlowControl)
                } else {
                    s.recv_window -= i64::from(len);
                    None
                }
            }
        };
        if let Some(code) = error {
            self.stream_error(StreamError(head.stream, code), h);
            self.read = self.skip(len);
            return Ok(());
        }
        if head.has(flag::PADDED) {
            if len == 0 {
                return Err(Code::FrameSize);
            }
            self.read = Read::DataPad(head);
        } else {
            self.data_body(head, len, 0, h);
        }
        Ok(())
    }

    /// A DATA frame's body is next: `len` bytes of data, then `pad` of padding.
    fn data_body(&mut self, head: Head, len: u32, pad: u32, h: &mut impl Handler) {
        let end = head.has(flag::END_STREAM);
        let id = head.stream;
        // Padding (and its length byte) is given back at once: nothing of it is passed on.
        let padding = head.len - len;
        let Some(s) = self.stream_mut(id) else { return };
        s.received += u64::from(len);
        s.unacked += padding;
        let too_long = s
            .content_length
            .is_some_and(|l| s.received > l || (end && s.received != l));
        if end {
            s.remote_done = true;
        }
        if too_long {
            self.stream_error(StreamError(id, Code::Protocol), h);
            self.read = self.skip(len + pad);
            return;
        }
        self.ack_stream(id, false);
        if len == 0 {
            if end {
                h.data(id, &[], true);
                self.close_if_done(id);
            }
            self.read = self.skip(pad);
            return;
        }
        self.read = Read::Data {
            stream: id,
            left: len,
            pad,
            end,
            deliver: true,
        };
        if end {
            // Removed once both sides are done; its remaining bytes still reach the handler.
            self.close_if_done(id);
        }
    }

    /// A whole non-DATA frame.
    fn frame(
        &mut self,
        head: Head,
        p: &[u8],
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        match head.kind {
            kind::HEADERS => self.headers(head, p, now_ms, h),
            kind::CONTINUATION => self.continuation(head, p, now_ms, h),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(Code::Protocol);
                }
                self.glitch(now_ms)?;
                if p.len() != 5 {
                    self.stream_error(StreamError(head.stream, Code::FrameSize), h);
                } else if dependency(p) == head.stream {
                    self.stream_error(StreamError(head.stream, Code::Protocol), h);
                }
                Ok(())
            }
            kind::RST_STREAM => {
                if head.stream == 0 {
                    return Err(Code::Protocol);
                }
                if p.len() != 4 {
                    return Err(Code::FrameSize);
                }
                if head.stream > self.last_stream {
                    return Err(Code::Protocol);
                }
                let code = Code::from_u32(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
                // A reset before this side has answered (work started and thrown away), or of
                // a stream already closed, is a glitch; cancelling a response under way is not.
                if !self.stream_mut(head.stream).is_some_and(|s| s.answered) {
                    self.glitch(now_ms)?;
                }
                if let Some(i) = self.index(head.stream) {
                    self.streams.swap_remove(i);
                    self.tally.resets_received[code as usize] += 1;
                    h.reset(head.stream, code);
                }
                Ok(())
            }
            kind::SETTINGS => self.settings_frame(head, p, now_ms, h),
            kind::PUSH_PROMISE => Err(Code::Protocol),
            kind::PING => {
                if head.stream != 0 {
                    return Err(Code::Protocol);
                }
                if p.len() != 8 {
                    return Err(Code::FrameSize);
                }
                if !head.has(flag::ACK) {
                    self.glitch(now_ms)?;
                    frame::ping_ack(&mut self.out, p.try_into().expect("8 bytes"));
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(Code::Protocol);
                }
                if p.len() < 8 {
                    return Err(Code::FrameSize);
                }
                self.peer_goaway = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, p, now_ms, h),
            // Unknown types (PRIORITY_UPDATE among them) are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    /// Resets a stream for an error found reading it.
    fn stream_error(&mut self, StreamError(id, code): StreamError, h: &mut impl Handler) {
        self.rst(id, code);
        if let Some(i) = self.index(id) {
            self.streams.swap_remove(i);
            h.reset(id, code);
        }
    }

    /// Writes a RST_STREAM, counted and remembered.
    fn rst(&mut self, id: u32, code: Code) {
        frame::rst(&mut self.out, id, code);
        self.tally.resets_sent[code as usize] += 1;
        self.recent_resets[self.recent_at] = id;
        self.recent_at = (self.recent_at + 1) % RECENT_RESETS;
    }

    /// This side reset stream `id` lately: frames the peer sent before it knew are ignored.
    fn reset_lately(&self, id: u32) -> bool {
        self.recent_resets.contains(&id)
    }

    /// The peer opens stream `id` (above every stream it used): ids it skipped are noted.
    fn opened(&mut self, id: u32) {
        // The id the peer would have used next (client ids are odd, from 1).
        let next = if self.last_stream == 0 {
            1
        } else {
            self.last_stream + 2
        };
        if id > next {
            if self.skipped.len() == SKIPPED_MAX {
                self.skipped.remove(0);
            }
            self.skipped.push((next, id - 2));
        }
        self.last_stream = id;
    }

    /// Stream `id` was skipped by the peer, never opened (as far as is remembered).
    fn was_skipped(&self, id: u32) -> bool {
        self.skipped.iter().any(|&(a, b)| (a..=b).contains(&id))
    }

    /// What happened since the last call (for the owner's metrics), and a fresh tally.
    pub fn take_tally(&mut self) -> Option<Tally> {
        let t = std::mem::take(&mut self.tally);
        (t != Tally::default()).then_some(t)
    }

    /// Counts a glitch; past the bucket, a connection error.
    fn glitch(&mut self, now_ms: u64) -> Result<(), Code> {
        let drained = now_ms
            .saturating_sub(self.glitch_ms)
            .saturating_mul(u64::from(GLITCH_RATE))
            / 1000;
        if drained > 0 {
            self.glitches = self
                .glitches
                .saturating_sub(drained.min(u64::from(u32::MAX)) as u32);
            self.glitch_ms = now_ms;
        }
        self.glitches += 1;
        if self.glitches > GLITCH_BURST {
            return Err(Code::EnhanceYourCalm);
        }
        Ok(())
    }

    fn give_back_connection(&mut self, n: u32) {
        self.recv_unacked += n;
        if self.recv_unacked >= CONN_WINDOW / 4 {
            frame::window_update(&mut self.out, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }

    /// Sends a stream's WINDOW_UPDATE once half its window is waiting (or `force`).
    fn ack_stream(&mut self, id: u32, force: bool) {
        let window = self.settings.window;
        let Some(s) = self.stream_mut(id) else { return };
        if s.remote_done || s.unacked == 0 || (!force && s.unacked < window / 2) {
            return;
        }
        let n = s.unacked;
        s.unacked = 0;
        s.recv_window += i64::from(n);
        frame::window_update(&mut self.out, id, n);
    }

    fn index(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    fn close_if_done(&mut self, id: u32) {
        if let Some(i) = self.index(id) {
            let s = &self.streams[i];
            if s.remote_done && s.local_done {
                self.streams.swap_remove(i);
            }
        }
    }
}

/// The stream a PRIORITY block depends on.
fn dependency(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & frame::MAX_WINDOW
}

mod blocks;
mod carry;
mod control;
mod send;

#[cfg(test)]
mod tests;
