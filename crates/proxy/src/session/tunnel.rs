//! What a tunnel does besides forwarding bytes: heartbeats (a Ping toward a side that has been
//! silent for `heartbeat.interval`, its Pong taken out of the stream, the side closed when it
//! stays silent past `heartbeat.timeout`) and the proxy's own Close on shutdown (at a frame
//! boundary, then the client's Close reply passed up and both sides closed).
//!
//! A frame is put into a stream only where a frame of it ends (the frame trackers know where),
//! and only our own Pong is taken out. While nothing of this is pending for a stream, its bytes
//! take the fast path (tracked and forwarded as they are, zero-copy); while something is, they
//! are stepped through frame by frame and copied (a few hundred bytes around a ping, or the
//! rest of a tunnel that is being closed).

mod close;
pub mod seen;
mod splice;

use std::hash::{BuildHasher, Hasher};

use super::Side;
use super::filter::Verdict;
use super::phase::{Control, Inject, NO_OP, Paused, Req, ms32};
pub use seen::CloseSeen;
pub(super) use seen::{Seen, Watch};

use super::protocol::{Protocol, Step};
use super::{Cx, End, Env, Io};
use crate::config::Heartbeat;
use crate::uring::{Chunk, ConnId};
use crate::ws::{self, FrameTracker, Piece, opcode};

/// How long the client has to answer the proxy's Close, and both sides to close after the
/// close handshake, before the connection is closed anyway.
pub const CLOSE_WAIT_MS: u64 = 10_000;

/// The index of the stream coming from `side` (as `Tunnel::frames`).
fn from(side: Side) -> usize {
    match side {
        Side::Down => 0,
        Side::Up => 1,
    }
}

fn side_of(i: usize) -> Side {
    if i == 0 { Side::Down } else { Side::Up }
}

/// The payload of the ping tagged `tag`: recognised in the Pong that answers it.
fn ping_payload(tag: u64) -> Vec<u8> {
    format!("ringway {tag}").into_bytes()
}

/// A mask for a frame toward the upstream (RFC 6455 5.3: unpredictable): the tag hashed with
/// the process's random hash keys.
pub(super) fn mask_for(tag: u64) -> [u8; 4] {
    thread_local! {
        static KEYS: std::collections::hash_map::RandomState = Default::default();
    }
    let h = KEYS.with(|k| {
        let mut h = k.build_hasher();
        h.write_u64(tag);
        h.finish()
    });
    (h as u32).to_ne_bytes()
}

impl Control {
    pub(in crate::session) fn new(hb: Option<&Heartbeat>) -> Control {
        Control {
            every: hb.map_or([0; 2], |h| {
                [ms32(h.interval), h.upstream_interval.map_or(0, ms32)]
            }),
            timeout: hb.map_or(0, |h| ms32(h.timeout)),
            op: [NO_OP; 2],
            ..Control::default()
        }
    }

    /// Bytes from `side` must be stepped through: a frame waits for a boundary in them, a Pong
    /// in them may be ours, a Close of ours went the way they go, or the client's Close reply
    /// is awaited in them.
    fn busy(&self, side: Side) -> bool {
        let i = from(side);
        self.want[i] != Inject::None
            || self.expect[i] != 0
            || self.gathering[i]
            || self.filter.is_some()
            || self.closed[1 - i]
            || (side == Side::Down && self.closed[0])
    }

    /// Side `j`'s heartbeat, given when each side last sent something: when its next ping is
    /// due (`false`), or when it counts as silent past its ping (`true`: a ping out since, and
    /// nothing from it after). `None`: no heartbeat for it now (none configured, or a Close of
    /// ours gone to it).
    ///
    /// A ping that waits for a frame boundary in the stream toward `j` (a frame is halfway
    /// through) cannot prove anything, so the silence is judged without it: `j` is lost once
    /// neither it nor the stream toward it has moved for `interval + timeout`. A peer that
    /// sends the header of a huge frame (which an echoing backend mirrors back) and goes quiet
    /// is closed then, not held for `read_timeout`; one that is reading a long message is not.
    fn beat(&self, j: usize, last: [u64; 2]) -> Option<(u64, bool)> {
        if self.every[j] == 0 || self.closed[j] {
            return None;
        }
        let wait = u64::from(self.timeout);
        if self.want[1 - j] == Inject::Ping {
            let moved = last[j].max(last[1 - j]);
            return Some((moved + u64::from(self.every[j]) + wait, true));
        }
        let p = self.pinged[j];
        Some(if p != 0 && last[j] < p {
            (p + wait, true)
        } else {
            (last[j] + u64::from(self.every[j]), false)
        })
    }

    /// The earliest time a heartbeat or the Close wait needs attention (`u64::MAX`: never).
    /// `last`: when each side last sent something.
    pub(super) fn due(&self, last: [u64; 2]) -> u64 {
        let close = self.close_at(last);
        (0..2)
            .filter_map(|j| self.beat(j, last))
            .map(|(at, _)| at)
            .fold(close, u64::min)
    }

    /// When the Close wait ends (`u64::MAX`: none under way): `close_by`, or for a lingering
    /// close, when `linger_end` says, given when the side it reads last sent something.
    fn close_at(&self, last: [u64; 2]) -> u64 {
        match (self.lingering, self.close_by) {
            (0, 0) => u64::MAX,
            (0, t) => t,
            (i, _) => super::linger_end(self.linger_began, last[usize::from(i - 1)]),
        }
    }

    /// The frame gathered from stream `i` is decided: its bytes go to `out` (or are dropped);
    /// the gathering buffers go once neither stream gathers.
    fn stop_gathering(&mut self, i: usize, out: Option<&mut Vec<u8>>) {
        self.gathering[i] = false;
        if let (Some(p), Some(out)) = (self.pong.as_mut(), out) {
            out.append(&mut p[i]);
        }
        if let Some(p) = self.pong.as_mut() {
            p[i].clear();
        }
        if !self.gathering.iter().any(|g| *g) {
            self.pong = None;
        }
    }

    /// Write the frame waiting for the stream from `side` into `out` (it stands at a boundary).
    fn put(&mut self, side: Side, now: u64, drain: (u16, &str), out: &mut Vec<u8>) {
        let toward = side.peer();
        let j = from(toward);
        let kind = std::mem::take(&mut self.want[from(side)]);
        if self.closed[j] {
            return;
        }
        let (code, reason) = match kind {
            Inject::None => return,
            Inject::Ping => {
                let tag = now.max(1);
                self.pinged[j] = tag;
                self.expect[j] = tag;
                (0, "")
            }
            Inject::Drain => drain,
            Inject::GoingAway => (1001, "heartbeat timeout"),
            Inject::Close(code, reason) => (code, reason),
        };
        let (op, payload) = match code {
            0 => (opcode::PING, ping_payload(now.max(1))),
            _ => (opcode::CLOSE, ws::close_payload(code, reason)),
        };
        if op == opcode::CLOSE {
            self.closed[j] = true;
            self.sent[j] = code;
            if toward == Side::Down && self.close_by == 0 {
                self.close_by = now + CLOSE_WAIT_MS;
            }
        }
        let mask = (toward == Side::Up).then(|| mask_for(now ^ u64::from(op) << 56));
        out.extend_from_slice(&ws::frame(op, &payload, mask));
    }
}

/// Whether the gathered `frame` is a Pong to one of our pings, the last of which was tagged
/// `tag` (and whether it answers that last one). A peer may answer an earlier ping late (its
/// Pong queued behind data) or answer only the latest (RFC 6455 5.5.3); tags grow with time.
fn ours(frame: &[u8], tag: u64) -> Option<bool> {
    let h = ws::parse_header(frame).ok()??;
    let mut p = frame[h.header_len..].to_vec();
    if let Some(m) = h.mask {
        ws::apply_mask(&mut p, m, 0);
    }
    let n: u64 = std::str::from_utf8(p.strip_prefix(b"ringway ")?)
        .ok()?
        .parse()
        .ok()?;
    (h.opcode == opcode::PONG && n > 0 && n <= tag && ping_payload(n) == p).then_some(n == tag)
}

/// The slow path over `data` from `side`: copy what goes on into `out`, frame by frame; put
/// the waiting frame at the first boundary; show each frame's header to the filter, if any,
/// before the frame goes on; hold a Pong until it is known to be ours (then drop it); note the
/// client's Close reply; drop what follows a Close of ours. A filter that ends the tunnel: its
/// Close toward the other side goes where the refused frame would have, nothing of the frame
/// or after it goes on, and the verdict is returned.
#[allow(clippy::too_many_arguments)]
fn pass(
    t: &mut FrameTracker,
    k: &mut Control,
    w: &mut Watch<'_>,
    side: Side,
    mut data: &[u8],
    out: &mut Vec<u8>,
    now: u64,
    drain: (u16, &str),
) -> Option<Verdict> {
    let i = from(side);
    loop {
        if k.want[i] != Inject::None && t.at_boundary() && !t.lost() {
            k.put(side, now, drain, out);
        }
        if data.is_empty() || k.closed[1 - i] {
            // What follows a Close of ours toward the other side is not sent.
            return None;
        }
        if t.lost() {
            out.extend_from_slice(data);
            return None;
        }
        if t.at_boundary() && (k.expect[i] != 0 || k.filter.is_some()) {
            // A frame starts: held until its header is whole (the filter's verdict, whether it
            // can be our Pong).
            k.gathering[i] = true;
        }
        let mut mine = k.gathering[i];
        let s = match t.step(data) {
            Ok(s) => s,
            Err(e) if k.filter.is_some() => {
                // A stream under a message policy that breaks RFC 6455 could not be held to
                // it any more: the tunnel ends (Close 1002 toward the side that broke it).
                tracing::debug!("{side:?} stream is not RFC 6455 ({})", e.0);
                k.stop_gathering(i, None);
                k.want[i] = Inject::Close(1001, "protocol error");
                k.put(side, now, drain, out);
                return Some(Verdict::Close {
                    offender: 1002,
                    other: 1001,
                    reason: "protocol error",
                    end: End::BadFrame(side),
                });
            }
            Err(_) => {
                // Not RFC 6455 from here on: pass everything as it is, track no more.
                t.track(data);
                if mine {
                    k.stop_gathering(i, Some(out));
                }
                out.extend_from_slice(data);
                return None;
            }
        };
        let bytes = &data[..s.used];
        if let Piece::Header(h) = s.piece {
            k.op[i] = h.opcode;
            let verdict = if std::mem::take(&mut k.judged[i]) {
                None
            } else {
                k.filter.as_mut().map(|f| f.frame(side, &h, now))
            };
            match verdict {
                Some(v @ Verdict::Close { other, reason, .. }) => {
                    // Refused: what was held of its header is dropped, the other side's Close
                    // goes here, at this boundary, and nothing more of this stream goes on.
                    k.stop_gathering(i, None);
                    k.want[i] = Inject::Close(other, reason);
                    k.put(side, now, drain, out);
                    return Some(v);
                }
                Some(v @ Verdict::Delay { until }) => {
                    // Delayed: the frame, from its first header byte, and what follows it
                    // wait (the tracker back at the boundary before it); it comes back
                    // judged.
                    let mut bytes = Vec::new();
                    if let Some(p) = k.pong.as_mut() {
                        bytes.append(&mut p[i]);
                    }
                    bytes.extend_from_slice(data);
                    k.stop_gathering(i, None);
                    *t = FrameTracker::default();
                    k.op[i] = NO_OP;
                    k.judged[i] = true;
                    k.paused[i] = Some(Box::new(Paused {
                        until,
                        bytes,
                        eof: false,
                    }));
                    return Some(v);
                }
                _ => w.frame(i, &h, &data[s.used..], k.closed.contains(&true)),
            }
            if mine && (h.opcode != opcode::PONG || k.expect[i] == 0) {
                k.stop_gathering(i, Some(out));
                mine = false;
            }
        }
        if mine {
            k.pong.get_or_insert_with(Default::default)[i].extend_from_slice(bytes);
        } else {
            out.extend_from_slice(bytes);
        }
        if s.end {
            if mine {
                let tag = k.pong.as_ref().and_then(|p| ours(&p[i], k.expect[i]));
                if tag == Some(true) {
                    k.expect[i] = 0;
                }
                // Ours: dropped; else it goes on.
                k.stop_gathering(i, tag.is_none().then_some(&mut *out));
            }
            if side == Side::Down && k.closed[0] && k.op[0] == opcode::CLOSE && !k.replied {
                // The client answered our Close: it goes up, and nothing after it.
                k.replied = true;
                k.closed[1] = true;
            }
            k.op[i] = NO_OP;
        }
        data = &data[s.used..];
    }
}

/// Both sides have ended their streams and what was queued toward them has gone.
#[inline(always)]
fn both_ended(cx: &Cx) -> bool {
    let l = &cx.links;
    l.down.eof() && l.up.eof() && l.down.flushed() && l.up.flushed()
}

/// A 101 turned the request into a tunnel: bytes flow both ways untouched, and a frame
/// tracker per direction (client to upstream, then upstream to client) knows where WebSocket
/// frames end, for what will be put between them (pings, Close on drain, a filter's Close).
/// Laid out in the order written (`repr(C)`), its request record last: the record's `bool`s
/// are then the tunnel's last bytes, past every other phase's, so the phase keeps its tag in
/// their spare values (`Phase`: 8 bytes less in every session).
#[derive(Debug)]
#[repr(C)]
pub(super) struct Tunnel {
    /// Heartbeats, filters and the proxy's own Close: only tunnels that ping, filter or are
    /// being closed by the proxy carry one (made at the 101, or at a drain).
    pub ctl: Option<Box<Control>>,
    /// Messages from each side so far (the rest of its record is in the session's notes,
    /// `seen.rs`).
    pub msgs: [u32; 2],
    pub frames: [FrameTracker; 2],
    /// Its location's number (`Config::location_id`): where its messages are counted.
    pub loc: u16,
    /// The request's record, in the tunnel itself: an idle tunnel then holds no heap record
    /// (a 64-byte allocation and the allocator's slack around it, where the session grew 48
    /// bytes).
    pub req: Req,
}

impl Protocol for Tunnel {
    fn name(&self) -> &'static str {
        "tunnel"
    }

    /// A tunnel that opens while the worker drains (its upgrade was on its way when shutdown
    /// began) is told at once.
    fn start<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        if env.draining {
            self.drain_close(cx, io);
        }
        Step::Continue
    }

    /// Bytes from connection `id`, on to the other side.
    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        id: ConnId,
        c: Chunk,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        let side = Side::of(id);
        let t = &mut self.frames[from(side)];
        match self.ctl.as_deref_mut() {
            Some(k) if k.busy(side) => {
                if let Some(p) = k.paused[from(side)].as_mut() {
                    // A frame from this side waits (a filter's delay): what was on its way
                    // when reading stopped waits behind it.
                    p.bytes.extend_from_slice(io.data_of(c));
                    io.release(c);
                    return Step::Continue;
                }
                let replied = k.replied;
                let mut out = io.scratch();
                let rt = &cx.cfg.runtime;
                let drain = (rt.drain_code, rt.drain_reason.as_str());
                let mut w = Watch::new(&mut self.msgs, &mut cx.notes, &cx.cfg, self.loc, io);
                let data = io.data_of(c);
                w.more(from(side), t, data);
                let verdict = pass(t, k, &mut w, side, data, &mut out, io.now_ms(), drain);
                let replied = !replied && k.replied;
                io.release(c);
                self.passed(cx, side, out, replied, verdict, io);
            }
            _ => {
                let i = from(side);
                let mut w = Watch::new(&mut self.msgs, &mut cx.notes, &cx.cfg, self.loc, io);
                let data = io.data_of(c);
                w.more(i, t, data);
                // Inlined: per frame, a call would also make the header go through memory.
                let left = t.track_with(
                    data,
                    #[inline(always)]
                    |h, rest| w.frame(i, h, rest, false),
                );
                cx.pass_on(side, c, io);
                if left > 0 {
                    self.maybe_splice(cx, side, io);
                }
            }
        }
        Step::Continue
    }

    /// The stream from `from` ended: the half-close is passed on once what is queued has gone
    /// out (the tunnel ends when both have, `settle`).
    fn eof<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, io: &mut I) -> Step {
        if let Some(p) = self.paused_mut(Side::of(from)) {
            // Bytes a filter delayed are still to go: the end follows them.
            p.eof = true;
            return Step::Continue;
        }
        let peer = Side::of(from).peer();
        let l = &cx.links;
        // The peer ended its stream already and nothing waits either way: the session closes
        // now, and closing the socket sends the peer its FIN (TLS: its close_notify first), so
        // a shutdown before it would be one more syscall for the same bytes on the wire.
        if l.get(peer).eof() && l.get(peer).flushed() && l.get(from).flushed() {
            return Step::Close(End::Done);
        }
        cx.links.half_close(peer, io);
        Step::Continue
    }

    /// Idle past `read_timeout`, a heartbeat due or unanswered, or the Close wait over.
    fn timer<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        now: u64,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        if let Some(step) = self.resume_paused(cx, now, io) {
            return step;
        }
        let last = self.heard(cx, now);
        if now >= last[0].max(last[1]) + u64::from(self.req.read_ms) {
            return Step::Close(End::IdleTimeout);
        }
        let Some(k) = self.ctl.as_deref_mut() else {
            return Step::Continue;
        };
        if now >= k.splice_stalled(self.req.send_ms) {
            // Spliced bytes wait for a peer that takes nothing, as a send would.
            return Step::Close(End::SendTimeout);
        }
        if k.expires != 0 && now >= k.expires {
            // Its `max_lifetime` came: the client is told to reconnect (the drain's Close,
            // at a frame boundary), and the tunnel ends once it has answered.
            k.expires = 0;
            cx.end_with(End::Lifetime);
            self.drain_close(cx, io);
            return Step::Continue;
        }
        if now >= k.close_at(last) {
            return Step::Close(if k.replied {
                End::Drained
            } else {
                End::Shutdown
            });
        }
        let mut ping = [false; 2];
        for (j, due) in ping.iter_mut().enumerate() {
            match k.beat(j, last) {
                Some((at, true)) if now >= at => return self.heartbeat_lost(cx, side_of(j), io),
                Some((at, false)) => *due = now >= at,
                _ => {}
            }
        }
        for (j, due) in ping.into_iter().enumerate() {
            // The ping to side j goes into the stream from the other side.
            if due
                && !self.inject(cx, side_of(1 - j), Inject::Ping, true, io)
                && let Some(k) = self.ctl.as_deref_mut()
            {
                // Not a WebSocket stream: no heartbeat for it.
                k.every[j] = 0;
            }
        }
        Step::Continue
    }

    /// Idle past `read_timeout`, or the next heartbeat.
    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        let Some(k) = self.ctl.as_deref() else {
            let idle = cx.last_down_ms.at(now).max(cx.last_up_ms.at(now));
            return Some(idle + u64::from(self.req.read_ms));
        };
        let last = self.heard(cx, now);
        let idle = last[0].max(last[1]) + u64::from(self.req.read_ms);
        let paused = k.paused.iter().flatten().map(|p| p.until).min();
        let expires = if k.expires == 0 { u64::MAX } else { k.expires };
        Some(
            idle.min(k.due(last))
                .min(k.splice_stalled(self.req.send_ms))
                .min(paused.unwrap_or(u64::MAX))
                .min(expires),
        )
    }

    /// Both ways, within the direction's budget. (A direction that splices is not read
    /// through buffers, nor one whose frame a filter delayed: its source is not `readable`
    /// meanwhile, `Conn::set_spliced`, `Conn::set_held`.)
    fn wants(&self, _cx: &Cx, _id: ConnId, room: bool) -> bool {
        room
    }

    /// A tunnel that is not splicing settles only once a side has ended (with a `Control`,
    /// what it settles besides is its splices), reads while there is room and watches
    /// nothing: the links' steady state says all of it. (Heartbeats, filters and Closes of
    /// ours act on bytes and timers, not in the bookkeeping; a filter holding a side back
    /// makes it unread, and so not steady.)
    #[inline]
    fn steady<I: Io + ?Sized>(&self, cx: &Cx, io: &I) -> bool {
        self.ctl.as_ref().is_none_or(|k| !k.splices()) && cx.links.steady(io.pool_low())
    }

    /// Both sides have ended their streams and what was queued toward them has gone: done.
    /// Else what a splice can move now moves (`splice.rs`: only a tunnel with a `Control`
    /// can be splicing, and it is looked at out of line).
    fn settle<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, _env: &mut Env<'_>) -> Step {
        if both_ended(cx) && !self.holds() {
            Step::Close(End::Done)
        } else if self.ctl.is_some() {
            self.settle_splices(cx, io)
        } else {
            Step::Continue
        }
    }

    /// Shutdown reached this tunnel (at its time in `drain_spread`): its client gets the Close
    /// of `runtime.drain_close` at the next frame boundary; its reply goes up and the session
    /// ends. A tunnel that is not a WebSocket stream is told the only way it can be: both
    /// sides are shut (FIN).
    fn farewell<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        self.drain_close(cx, io);
        Step::Continue
    }
}

impl Tunnel {
    /// The tunnel's first bytes from each side (what came after the request, after the 101),
    /// tracked as they go on.
    pub(super) fn first_bytes<I: Io + ?Sized>(&mut self, cx: &mut Cx, data: [&[u8]; 2], io: &I) {
        let mut w = Watch::new(&mut self.msgs, &mut cx.notes, &cx.cfg, self.loc, io);
        for (i, d) in data.into_iter().enumerate() {
            self.frames[i].track_with(d, |h, rest| w.frame(i, h, rest, false));
        }
    }

    /// The tunnel is closing: its record of its messages is made whole (its counters, the
    /// Closes the proxy sent, where its end is counted: every tunnel's end is counted for its
    /// location).
    pub(super) fn note_end<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &I) {
        let sent = self.ctl.as_deref().map_or([0; 2], |k| k.sent);
        let msgs = self.msgs;
        let mut w = Watch::new(&mut self.msgs, &mut cx.notes, &cx.cfg, self.loc, io);
        w.seen().finish(msgs, sent, self.loc);
    }

    /// What the slow path made of bytes from `side`: `out` on to the other side; the end of
    /// the close handshake (`replied`); a filter's Close. (A filter's delay needs nothing
    /// more: the side is not read until its time, `wants`, `deadline`.)
    fn passed<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        side: Side,
        out: Vec<u8>,
        replied: bool,
        verdict: Option<Verdict>,
        io: &mut I,
    ) {
        if out.is_empty() {
            io.recycle(out);
        } else {
            let c = io.put(out);
            cx.pass_on(side, c, io);
        }
        self.close_went(cx, side, io);
        if replied {
            cx.end_with(End::Drained);
            self.shut_both(cx, io, None);
        }
        if let Some(Verdict::Delay { .. }) = verdict {
            // Not read until the frame's time (`resume_paused`).
            cx.links.get_mut(side).set_held(true);
            io.observe(super::Observed::MessageDelayed);
        }
        if let Some(Verdict::Close {
            offender,
            reason,
            end,
            ..
        }) = verdict
        {
            self.refused(cx, side, offender, reason, end, io);
        }
    }

    /// What a filter delayed from `side`, if anything.
    fn paused_mut(&mut self, side: Side) -> Option<&mut Paused> {
        self.ctl.as_deref_mut()?.paused[from(side)].as_deref_mut()
    }

    /// A filter holds bytes of either side.
    fn holds(&self) -> bool {
        self.ctl
            .as_deref()
            .is_some_and(|k| k.paused.iter().any(Option::is_some))
    }

    /// Frames a filter delayed whose time has come go on (and what waited behind them, as
    /// far as the filters let it; then the side's end, if it came meanwhile).
    fn resume_paused<I: Io + ?Sized>(&mut self, cx: &mut Cx, now: u64, io: &mut I) -> Option<Step> {
        let k = self.ctl.as_deref_mut()?;
        for i in 0..2 {
            if k.paused[i].as_ref().is_none_or(|p| now < p.until) {
                continue;
            }
            let Some(p) = k.paused[i].take() else {
                continue;
            };
            let side = side_of(i);
            cx.links.get_mut(side).set_held(false);
            // Its bytes were read before the pause: the side was heard from.
            match side {
                Side::Down => cx.last_down_ms = crate::uring::timer::Stamp::new(now),
                Side::Up => cx.last_up_ms = crate::uring::timer::Stamp::new(now),
            }
            let replied = k.replied;
            let mut out = io.scratch();
            let rt = &cx.cfg.runtime;
            let drain = (rt.drain_code, rt.drain_reason.as_str());
            let mut w = Watch::new(&mut self.msgs, &mut cx.notes, &cx.cfg, self.loc, io);
            let t = &mut self.frames[i];
            let verdict = pass(t, k, &mut w, side, &p.bytes, &mut out, now, drain);
            let replied = !replied && k.replied;
            self.passed(cx, side, out, replied, verdict, io);
            if p.eof {
                match self.paused_mut(side) {
                    // Delayed again: the end stays behind what waits.
                    Some(again) => again.eof = true,
                    None => {
                        let id = match side {
                            Side::Down => ConnId::CLIENT,
                            Side::Up => ConnId::UPSTREAM,
                        };
                        if let step @ Step::Close(_) = self.eof(cx, id, io) {
                            return Some(step);
                        }
                    }
                }
            }
            return self.resume_paused(cx, now, io);
        }
        None
    }

    /// When each side was last heard from; a side a filter has paused counts as heard from
    /// now (it is not read by our choice: no heartbeat or idle timeout for that).
    fn heard(&self, cx: &Cx, now: u64) -> [u64; 2] {
        let mut last = [cx.last_down_ms.at(now), cx.last_up_ms.at(now)];
        if let Some(k) = self.ctl.as_deref() {
            for (i, l) in last.iter_mut().enumerate() {
                if k.paused[i].is_some() {
                    *l = now;
                }
            }
        }
        last
    }
}
