//! HTTP/2 toward the client, a protocol type (run as `Phase::Other`): the connection's frames
//! through [`crate::h2::Connection`], and each stream carried by an inner HTTP/1 session of the
//! same worker over a socket pair. A stream's request goes to its inner session as an HTTP/1.1
//! request (an extended CONNECT for `websocket` as an `Upgrade: websocket` GET); the inner
//! session does everything an HTTP/1 client connection gets — routing, limits, balancing,
//! retries, the keepalive pool, `X-Forwarded-*`, the tunnel's heartbeats and Close frames, the
//! access log — and its HTTP/1.1 response comes back as the stream's HEADERS and DATA (a 101
//! as a 200, the stream then carrying the tunnel's bytes).
//!
//! Bounds: streams at once (`http2_max_concurrent_streams`, at most 128: each takes one of the
//! session's connection ids); per stream, what the client may send ahead (the stream window,
//! given back once its bytes have gone into the socket pair) and what waits for the client's
//! window (one read of the inner session's answer: its socket is not read again until that
//! has gone); toward the client, nothing is read from it while `QUEUE` chunks wait for it.

use std::os::fd::RawFd;

use super::protocol::{Protocol, Step};
use super::{Cx, End, Env, Inner, Io, Observed, QUEUE, RESPONSE_HEAD_MAX};
use crate::h2::fields::{FieldList, Request as H2Request};
use crate::h2::{Code, Connection, Handler, Settings};
use crate::http::{self, BodyKind, BodyTracker, HeadError};
use crate::uring::{Chunk, ConnId};

mod events;
mod handoff;
mod translate;

use events::Events;
use translate::{response_fields, trailer_fields};

/// Bytes of frames gathered toward the client while a send to it is in flight before they
/// go anyway; the inner sessions are not read past it.
const OUT_GATHER: usize = 64 * 1024;

/// The most an HTTP/2 connection's state may take in a binary upgrade's description (the
/// HPACK table, a frame and a header block gathered in part, its streams); one with more stays
/// and is drained.
pub(super) const STATE_MAX: usize = 128 * 1024;

/// What waits for the clients' windows on an HTTP/2 connection's streams, together, that its
/// description carries; a connection with more stays and is drained.
pub(super) const HELD_MAX: usize = 256 * 1024;

/// The window each stream starts with (what a client may send one stream ahead of its inner
/// session).
const STREAM_WINDOW: u32 = 64 * 1024;

/// An HTTP/2 connection and its streams.
pub(super) struct H2 {
    conn: Box<Connection>,
    streams: Vec<Stream>,
    /// Bytes the session read before it knew it was HTTP/2 (the preface and what followed).
    first: Vec<u8>,
    /// When the connection last became idle (no stream), for `keepalive_timeout`; None while
    /// a stream is open.
    idle_since: Option<u64>,
    /// Streams taken on this connection (for `keepalive_requests`).
    taken: u32,
    /// A key for the next generated `Sec-WebSocket-Key`.
    key_seed: u64,
    /// Links whose inner session answered its request whole and waits for the next one
    /// (HTTP/1.1 keep-alive between the two): the next stream takes one before making a new
    /// socket pair.
    idle_links: Vec<ConnId>,
    /// The links `wants` reads (a bit per connection id), set as each event settles.
    readable: [u64; 4],
    /// Queued to be handed to the process that takes over, or being handed (a binary
    /// upgrade): the drain does not tell the client to go.
    holding: bool,
}

impl std::fmt::Debug for H2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2")
            .field("streams", &self.streams.len())
            .finish()
    }
}

/// One stream and the inner session carrying it.
#[derive(Debug)]
struct Stream {
    id: u32,
    /// This side's end of the socket pair.
    link: ConnId,
    /// How the request's body goes to the inner session.
    body: Body,
    /// HEAD: the answer has no body whatever its head says.
    head: bool,
    resp: Resp,
    /// Answer bytes waiting for the client's window; `held_end`: the stream ends after them.
    held: Vec<u8>,
    held_end: bool,
    /// DATA bytes queued toward the inner session, given back once they have left.
    credit: usize,
    /// The inner session's answer keeps its connection (HTTP/1.1 keep-alive): once the
    /// stream is done both ways, its link may carry the next stream.
    keep: bool,
    /// A chunked answer's trailer lines as they came, then as fields once the body ended:
    /// they end the stream (a HEADERS with END_STREAM) after the last DATA.
    trailer_text: Vec<u8>,
    trailers: Option<FieldList>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// No body, or one of a known length: its bytes go as they are.
    Plain,
    /// A body without a length: chunked toward the inner session.
    Chunked,
    /// A WebSocket's bytes after the 101.
    Tunnel,
    /// The client's half has ended.
    Ended,
}

#[derive(Debug)]
enum Resp {
    /// Our own answer, with no inner session (sent as the event ends, by `settle`).
    Own(u16),
    /// The answer's head, gathering (a tunnel's 101 becomes the stream's 200).
    Head {
        buf: Vec<u8>,
        tunnel: bool,
    },
    Body(BodyTracker),
    Tunnel,
}

impl H2 {
    /// The connection of a client that chose HTTP/2, with what it sent so far.
    pub(super) fn new(cx: &Cx, first: Vec<u8>, now: u64) -> H2 {
        let h = cx.listen().http2.unwrap_or(crate::config::Http2 {
            websocket: true,
            max_streams: crate::config::HTTP2_STREAMS_DEFAULT,
        });
        let settings = Settings {
            max_streams: u32::from(h.max_streams),
            window: STREAM_WINDOW,
            max_header_list: cx.listen().header_max,
            connect_protocol: h.websocket,
        };
        H2 {
            conn: Box::new(Connection::new(settings)),
            streams: Vec::new(),
            first,
            idle_since: Some(now),
            taken: 0,
            idle_links: Vec::new(),
            readable: [0; 4],
            holding: false,
            key_seed: now ^ (u64::from(cx.client.addr().port()) << 32) ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Which links may be read, for `wants` (asked once per link after every event: one pass
    /// here instead of a search per link): a stream's while nothing of its answer waits for
    /// the client's window, and an idle one, so that its inner session's end is noticed at
    /// once.
    fn mark_readable(&mut self) {
        self.readable = [0; 4];
        let links = self
            .streams
            .iter()
            .filter(|s| s.held.is_empty() && !s.held_end && s.link != NO_LINK)
            .map(|s| s.link);
        for ConnId(l) in links.chain(self.idle_links.iter().copied()) {
            self.readable[usize::from(l / 64)] |= 1 << (l % 64);
        }
    }

    fn by_link(&self, link: ConnId) -> Option<usize> {
        self.streams.iter().position(|s| s.link == link)
    }

    /// Bytes from the client, through the connection's state machine.
    fn client_bytes(
        &mut self,
        cx: &mut Cx,
        data: &[u8],
        io: &mut (impl Io + ?Sized),
        env: &mut Env<'_>,
    ) -> Step {
        let now = io.now_ms();
        let mut ev = Events {
            streams: &mut self.streams,
            cx,
            io,
            inner: &mut env.inner,
            taken: &mut self.taken,
            key_seed: &mut self.key_seed,
            idle_links: &mut self.idle_links,
        };
        let r = self.conn.received(data, now, &mut ev);
        if !self.streams.is_empty() {
            self.idle_since = None;
        }
        match r {
            Ok(()) => Step::Continue,
            Err(code) => {
                self.flush_now(cx, io);
                Step::Fail(End::BadRequest(code.name()))
            }
        }
    }

    /// What the connection did since the last time, for the metrics.
    fn report(&mut self, io: &mut (impl Io + ?Sized)) {
        let Some(t) = self.conn.take_tally() else {
            return;
        };
        if t.streams > 0 {
            io.observe(Observed::Http2Streams(t.streams));
        }
        for (sent, counts) in [(true, t.resets_sent), (false, t.resets_received)] {
            for (code, n) in counts.into_iter().enumerate() {
                if n > 0 {
                    let code = Code::from_u32(code as u32);
                    io.observe(Observed::Http2Resets { sent, code, n });
                }
            }
        }
        if let Some(code) = t.goaway {
            io.observe(Observed::Http2Goaway(code));
        }
    }

    /// What the connection wrote, on to the client (and what it did, to the metrics) — once
    /// the previous send has gone: frames of many streams' events gather meanwhile into one
    /// send (up to `OUT_GATHER` bytes), instead of a send each.
    fn flush(&mut self, cx: &mut Cx, io: &mut (impl Io + ?Sized)) {
        if cx.links.down.pending() > 0 && self.conn.out().len() < OUT_GATHER {
            self.report(io);
            return;
        }
        self.flush_now(cx, io);
    }

    /// What the connection wrote, on to the client now (before an end).
    fn flush_now(&mut self, cx: &mut Cx, io: &mut (impl Io + ?Sized)) {
        self.report(io);
        let out = self.conn.out();
        if out.is_empty() || !cx.links.down.open() {
            out.clear();
            return;
        }
        let mut v = io.scratch();
        std::mem::swap(&mut v, out);
        let c = io.put(v);
        cx.send_to(ConnId::CLIENT, c, io);
    }

    /// The inner session's answer for stream `i`: its head (translated), its body (as DATA).
    fn answer_bytes(&mut self, cx: &mut Cx, i: usize, data: &[u8], io: &mut (impl Io + ?Sized)) {
        {
            let s = &mut self.streams[i];
            match &mut s.resp {
                Resp::Own(_) => {}
                Resp::Head { buf, tunnel } => {
                    let tunnel = *tunnel;
                    buf.extend_from_slice(data);
                    let parsed = http::parse_response(buf, RESPONSE_HEAD_MAX, s.head);
                    let r = match parsed {
                        Ok(None) => return,
                        Ok(Some(r)) => r,
                        Err(HeadError::TooLarge | HeadError::UriTooLong)
                        | Err(HeadError::Invalid(_)) => {
                            self.fail_stream(cx, i, io);
                            return;
                        }
                    };
                    let head = std::mem::take(buf);
                    let rest = head[r.head_len..].to_vec();
                    let upgraded = tunnel && r.status == 101;
                    let status = if upgraded { 200 } else { r.status };
                    // A 101 answers only an upgrade; an upgrade answered 2xx without one was not
                    // taken, and a 2xx would tell the client its WebSocket is open (RFC 8441
                    // §5): both are the upstream's fault, answered 502.
                    if (r.status == 101 && !tunnel)
                        || (tunnel && !upgraded && (200..300).contains(&r.status))
                    {
                        self.fail_stream(cx, i, io);
                        return;
                    }
                    let fields = response_fields(&head[..r.head_len], r.drop_length, upgraded);
                    let list: Vec<(&[u8], &[u8])> =
                        fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
                    let id = s.id;
                    if (100..200).contains(&r.status) && !upgraded {
                        // An interim answer: passed on, and the final one is still to come
                        // (the inner session passes at most `INTERIM_MAX` of them).
                        self.conn.respond(id, status, &list, false);
                        s.resp = Resp::Head {
                            buf: Vec::new(),
                            tunnel,
                        };
                        if !rest.is_empty() {
                            self.answer_bytes(cx, i, &rest, io);
                        }
                        return;
                    }
                    s.keep = r.keep_alive && !upgraded;
                    let body = if upgraded {
                        BodyKind::UntilClose
                    } else {
                        r.body
                    };
                    let end = body == BodyKind::None || body == BodyKind::Length(0);
                    self.conn.respond(id, status, &list, end);
                    if end {
                        self.stream_done(cx, i, io);
                        return;
                    }
                    s.resp = if upgraded {
                        Resp::Tunnel
                    } else {
                        Resp::Body(BodyTracker::new(body))
                    };
                    if !rest.is_empty() {
                        self.answer_bytes(cx, i, &rest, io);
                    }
                }
                Resp::Tunnel => self.send_data(cx, i, data, false, io),
                Resp::Body(t) => {
                    let mut payload = io.scratch();
                    let text = &mut s.trailer_text;
                    let fed = t.feed_parts(
                        data,
                        |p| payload.extend_from_slice(p),
                        |b| text.extend_from_slice(b),
                    );
                    let end = t.done();
                    // A chunked answer's trailer fields, bounded as a head is.
                    let too_long = s.trailer_text.len() > cx.listen().header_max as usize;
                    if end && !s.trailer_text.is_empty() {
                        s.trailers = Some(trailer_fields(&s.trailer_text));
                    }
                    match fed {
                        Ok(_) if !too_long => self.send_data(cx, i, &payload, end, io),
                        _ => self.fail_stream(cx, i, io),
                    }
                    io.recycle(payload);
                }
            }
        }
    }

    /// Answer bytes toward the client, as far as its windows allow; the rest is held.
    fn send_data(
        &mut self,
        cx: &mut Cx,
        i: usize,
        bytes: &[u8],
        end: bool,
        io: &mut (impl Io + ?Sized),
    ) {
        let s = &mut self.streams[i];
        if !s.held.is_empty() || s.held_end {
            s.held.extend_from_slice(bytes);
            s.held_end |= end;
            return;
        }
        let n = self
            .conn
            .send_data(s.id, bytes, end && s.trailers.is_none());
        if n < bytes.len() {
            s.held.extend_from_slice(&bytes[n..]);
            s.held_end = end;
        } else if end {
            self.end_stream(cx, i, io);
        }
    }

    /// Held bytes go as the windows opened.
    fn send_held(&mut self, cx: &mut Cx, io: &mut (impl Io + ?Sized)) {
        let mut i = 0;
        while i < self.streams.len() {
            let s = &mut self.streams[i];
            if s.held.is_empty() && !s.held_end {
                i += 1;
                continue;
            }
            let n = self
                .conn
                .send_data(s.id, &s.held, s.held_end && s.trailers.is_none());
            s.held.drain(..n);
            if s.held.is_empty() && s.held_end {
                self.end_stream(cx, i, io);
                continue;
            }
            if s.held.is_empty() {
                s.held = Vec::new();
            }
            i += 1;
        }
    }

    /// The answer's body has gone: its trailers end the stream when it has some (else its
    /// last DATA did), and the stream is done.
    fn end_stream(&mut self, cx: &mut Cx, i: usize, io: &mut (impl Io + ?Sized)) {
        if let Some(t) = self.streams[i].trailers.take() {
            let list: Vec<(&[u8], &[u8])> = t.iter().map(|(n, v)| (&n[..], &v[..])).collect();
            self.conn.send_trailers(self.streams[i].id, &list);
        }
        self.stream_done(cx, i, io);
    }

    /// The stream's answer is whole: its link waits for the next stream when its inner
    /// session keeps the connection and the request went whole; else it is let go.
    fn stream_done(&mut self, cx: &mut Cx, i: usize, io: &mut (impl Io + ?Sized)) {
        let s = self.streams.swap_remove(i);
        let link = cx.links.get(s.link);
        if s.keep && s.body == Body::Ended && link.open() && !link.eof() {
            self.idle_links.push(s.link);
        } else {
            cx.retire(s.link, io);
        }
    }

    /// An idle link's inner session closed or said something unasked: it is let go.
    fn drop_idle(&mut self, cx: &mut Cx, link: ConnId, io: &mut (impl Io + ?Sized)) -> bool {
        match self.idle_links.iter().position(|&l| l == link) {
            Some(k) => {
                self.idle_links.swap_remove(k);
                cx.retire(link, io);
                true
            }
            None => false,
        }
    }

    /// The inner session's answer cannot be read (or ended early): 502 if nothing went to the
    /// client yet, else the stream is reset.
    fn fail_stream(&mut self, cx: &mut Cx, i: usize, io: &mut (impl Io + ?Sized)) {
        let id = self.streams[i].id;
        if matches!(self.streams[i].resp, Resp::Head { .. } | Resp::Own(_)) {
            self.conn
                .respond(id, 502, &[(b"content-length", b"0")], true);
        }
        self.conn.reset(id, Code::Internal);
        self.streams[i].keep = false;
        self.stream_done(cx, i, io);
    }
}

/// The link of a stream answered here, which has no inner session.
const NO_LINK: ConnId = ConnId(0);

impl Stream {
    /// A stream answered with our own `status` (`settle` sends it).
    fn answered(id: u32, status: u16) -> Stream {
        Stream {
            id,
            link: NO_LINK,
            body: Body::Ended,
            head: false,
            resp: Resp::Own(status),
            held: Vec::new(),
            held_end: false,
            credit: 0,
            keep: false,
            trailer_text: Vec::new(),
            trailers: None,
        }
    }
}

impl Protocol for H2 {
    fn name(&self) -> &'static str {
        "http2"
    }

    fn start<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        let first = std::mem::take(&mut self.first);
        let step = self.client_bytes(cx, &first, io, env);
        self.flush(cx, io);
        step
    }

    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        // The bytes leave the pool buffer at once (into a recycled one): what the frames
        // carry is copied on anyway, and the buffer goes back to the ring.
        let mut data = io.scratch();
        data.extend_from_slice(io.data_of(c));
        io.release(c);
        let step = if from == ConnId::CLIENT {
            self.client_bytes(cx, &data, io, env)
        } else {
            match self.by_link(from) {
                Some(i) => self.answer_bytes(cx, i, &data, io),
                None => {
                    self.drop_idle(cx, from, io);
                }
            }
            Step::Continue
        };
        io.recycle(data);
        step
    }

    /// The client left: every stream ends with it. An inner session ended: its stream's
    /// answer ends there (a body read until close), or is cut short.
    fn eof<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, io: &mut I) -> Step {
        if from == ConnId::CLIENT {
            return Step::Close(End::ClientClosed);
        }
        if self.drop_idle(cx, from, io) {
            return Step::Continue;
        }
        if let Some(i) = self.by_link(from) {
            let until_close = match &self.streams[i].resp {
                Resp::Tunnel => true,
                Resp::Body(t) => t.until_close(),
                Resp::Head { .. } | Resp::Own(_) => false,
            };
            if until_close {
                self.send_data(cx, i, &[], true, io);
            } else {
                self.fail_stream(cx, i, io);
            }
        }
        Step::Continue
    }

    fn error<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, end: End, io: &mut I) -> Step {
        if from == ConnId::CLIENT {
            return Step::Close(end);
        }
        if self.drop_idle(cx, from, io) {
            return Step::Continue;
        }
        if let Some(i) = self.by_link(from) {
            self.fail_stream(cx, i, io);
        }
        Step::Continue
    }

    /// The preface is late (`header_timeout`), or the connection has been idle, with no
    /// stream, past `keepalive_timeout`.
    fn timer<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        _now: u64,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        if !self.conn.started() {
            return Step::Close(End::HeaderTimeout);
        }
        self.conn.goaway(Code::NoError);
        self.flush_now(cx, io);
        Step::Linger(End::KeepaliveTimeout)
    }

    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        if !self.conn.started() {
            return Some(cx.phase_ms.at(now) + u64::from(cx.listen().header_timeout_ms));
        }
        self.idle_since
            .map(|t| t + u64::from(cx.listen().keepalive_timeout_ms))
    }

    fn wants(&self, cx: &Cx, id: ConnId, _room: bool) -> bool {
        let room = cx.links.down.pending() < QUEUE && self.conn.pending_out() < OUT_GATHER;
        if id == ConnId::CLIENT {
            return room;
        }
        room && self.readable[usize::from(id.0 / 64)] & (1 << (id.0 % 64)) != 0
    }

    fn times_upstream_sends(&self) -> bool {
        false
    }

    /// After every event: our own answers, held bytes the windows now allow, credit for what
    /// went to the inner sessions, the connection's frames on to the client; the idle clock;
    /// the end once a drain's GOAWAY has no stream left.
    fn settle<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        let mut i = 0;
        while i < self.streams.len() {
            let s = &self.streams[i];
            if let Resp::Own(status) = s.resp {
                let id = s.id;
                self.conn
                    .respond(id, status, &[(b"content-length", b"0")], true);
                self.streams.swap_remove(i);
                continue;
            }
            if s.credit > 0 && cx.links.get(s.link).pending() == 0 {
                let (id, n) = (s.id, s.credit);
                self.streams[i].credit = 0;
                self.conn.consumed(id, n);
            }
            i += 1;
        }
        self.send_held(cx, io);
        if (env.draining && !self.holding) || self.taken >= cx.listen().keepalive_requests {
            self.conn.goaway(Code::NoError);
        }
        if self.streams.is_empty() && self.conn.finished() {
            self.flush_now(cx, io);
        } else {
            self.flush(cx, io);
        }
        if self.streams.is_empty() {
            if self.conn.finished() {
                // What the client still sends after the GOAWAY is read and dropped: a close
                // with unread bytes would be a reset, and the GOAWAY lost with it.
                return Step::Linger(if env.draining {
                    End::Shutdown
                } else {
                    End::Done
                });
            }
            // Idle from the last stream's end: keepalive_timeout runs from now.
            self.idle_since.get_or_insert(io.now_ms());
        }
        self.mark_readable();
        Step::Continue
    }

    /// A reload: GOAWAY now, so that the client's next requests come on a new connection
    /// under the new configuration; open streams (WebSockets too) go on under the old one,
    /// and the connection ends with its last (`settle`).
    fn reloaded<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        self.conn.goaway(Code::NoError);
        self.flush(cx, io);
        Step::Continue
    }

    fn carrier(&self) -> Option<&dyn super::protocol::Carrier> {
        Some(self)
    }

    fn carrier_mut(&mut self) -> Option<&mut dyn super::protocol::Carrier> {
        Some(self)
    }

    /// A drain: GOAWAY now; open streams go on (their inner sessions drain as any session
    /// does: a tunnel's Close frame at a frame boundary), the connection ends with the last.
    fn drain<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        self.conn.goaway(Code::NoError);
        self.flush_now(cx, io);
        if self.streams.is_empty() {
            return Step::Linger(End::Shutdown);
        }
        Step::Continue
    }
}
