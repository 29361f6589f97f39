//! A bulk frame's payload spliced in a plain tunnel: socket → pipe → socket, the kernel moving
//! its pages with no copy through user space (`docs/design-notes.md`, "Splice for bulk
//! frames").
//!
//! When a frame's header has gone by on the fast path and at least `runtime.splice_min` of its
//! payload is still to come, the direction takes a pipe and stops reading its source through
//! buffers (its socket is marked spliced, `Conn::set_spliced`, so its recv is cancelled). Once the recv is off and what
//! was queued toward the peer has gone, `pump` moves the rest of the payload with splice(2):
//! source → pipe, pipe → peer, waiting on one-shot readiness polls through the ring where the
//! source is empty or the peer full. The frame tracker counts the spliced bytes as payload
//! that went by. When the payload has gone whole and the pipe is empty, the pipe goes back to
//! the worker and buffers take over again: the next header, and everything put between
//! frames, goes the usual way.
//!
//! Order on the wire toward the peer: what was queued before the splice, then the pipe's
//! bytes, then what follows the frame. Nothing is queued toward the peer while the pipe holds
//! bytes: the source is not read through buffers, and a frame to put into the stream waits
//! for the boundary after the splice (`Tunnel::inject`).

use super::super::phase::Splice;
use super::super::protocol::{Protocol, end_of_error};
use super::super::{Cx, Io, Side, Step};
use super::{Control, Inject, Tunnel, both_ended, from, side_of};
use crate::reactor::{Recv, Shut};
use crate::uring::timer::Stamp;

/// splice(2) calls per direction and event, at most: past them the direction waits for its
/// sockets' readiness like everything else (it completes at once if there is more), so a
/// fast sender does not keep the worker from its other sessions.
const ROUNDS: u32 = 16;

/// Bytes asked of one splice from the source (the pipe takes what fits).
const SPLICE_LEN: u64 = 1 << 20;

impl Control {
    /// Whether any direction splices.
    #[inline]
    pub(super) fn splices(&self) -> bool {
        self.splice.iter().any(Option::is_some)
    }

    /// When a direction's spliced bytes have waited for a full peer longer than `send_ms`
    /// allows (`u64::MAX`: none waits).
    pub(super) fn splice_stalled(&self, send_ms: u32) -> u64 {
        self.splice
            .iter()
            .flatten()
            .filter(|s| s.stalled_ms != 0)
            .map(|s| s.stalled_ms + u64::from(send_ms))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Nothing of a heartbeat, a filter, a Close or a splice: what `Control::new(None)` is
    /// (made for a splice only, and dropped after it, so a plain tunnel's record stays small
    /// and its deadline cheap).
    fn unused(&self) -> bool {
        self.every == [0; 2]
            && self.pinged == [0; 2]
            && self.expect == [0; 2]
            && self.want == [Inject::None; 2]
            && !self.gathering.iter().any(|g| *g)
            && self.pong.is_none()
            && self.closed == [false; 2]
            && self.close_by == 0
            && self.filter.is_none()
            && !self.splices()
    }
}

impl Tunnel {
    /// Whether the stream from `side` is being spliced.
    #[inline]
    pub(super) fn splicing(&self, side: Side) -> bool {
        self.ctl
            .as_ref()
            .is_some_and(|k| k.splice[from(side)].is_some())
    }

    /// Bytes from `side` went on by the fast path: when the frame they end in still has
    /// `runtime.splice_min` of payload to come, and both connections are plain and open, the
    /// rest of it is spliced. (Out of line: a tunnel of small messages never gets here, and
    /// its per-event path stays as it was.)
    #[cold]
    #[inline(never)]
    pub(super) fn maybe_splice<I: Io + ?Sized>(&mut self, cx: &mut Cx, side: Side, io: &mut I) {
        let min = cx.cfg.runtime.splice_min;
        if min == 0 || self.frames[from(side)].payload_left() < min || self.splicing(side) {
            return;
        }
        let (src, dst) = (cx.links.get(side), cx.links.get(side.peer()));
        if !src.is_plain()
            || !dst.is_plain()
            || !src.readable()
            || !dst.open()
            || dst.shut() != Shut::Open
        {
            return;
        }
        if !cx.links.get_mut(side).make_nonblocking(io)
            || !cx.links.get_mut(side.peer()).make_nonblocking(io)
        {
            return;
        }
        let Some(pipe) = io.pipe() else { return };
        cx.links.get_mut(side).set_spliced(true);
        let k = self.ctl.get_or_insert_with(|| Box::new(Control::new(None)));
        k.splice[from(side)] = Some(Box::new(Splice {
            pipe,
            held: 0,
            eof: false,
            stalled_ms: 0,
        }));
    }

    /// `settle` of a tunnel with a `Control`: the splices move, and a tunnel whose streams
    /// have both ended by then (a FIN read by a splice, passed on) is done.
    #[inline(never)]
    pub(super) fn settle_splices<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        if !self.ctl.as_ref().is_some_and(|k| k.splices()) {
            return Step::Continue;
        }
        let step = self.pump(cx, io);
        if !matches!(step, Step::Continue) {
            return step;
        }
        if both_ended(cx) {
            Step::Close(super::super::End::Done)
        } else {
            Step::Continue
        }
    }

    /// Move what can move now in each spliced direction (after every event, as the tunnel
    /// settles).
    fn pump<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        for i in 0..2 {
            if self.splicing(side_of(i)) {
                let step = self.pump_one(cx, side_of(i), io);
                if !matches!(step, Step::Continue) {
                    return step;
                }
            }
        }
        Step::Continue
    }

    fn pump_one<I: Io + ?Sized>(&mut self, cx: &mut Cx, src: Side, io: &mut I) -> Step {
        let (i, dst) = (from(src), src.peer());
        let now = io.now_ms();
        let t = &mut self.frames[i];
        let Some(sp) = self
            .ctl
            .as_deref_mut()
            .and_then(|k| k.splice[i].as_deref_mut())
        else {
            return Step::Continue;
        };
        debug_assert!(cx.links.get(src).spliced(), "a splice whose source is read");
        let mut failed = None;
        for round in 1..=ROUNDS {
            let mut moved = false;
            // The pipe's bytes toward the peer, once what was queued for it before has gone.
            let d = cx.links.get_mut(dst);
            if sp.held > 0 && d.flushed() && d.open() && !d.ready_armed(true) {
                match io.splice(sp.pipe.read_end(), d.fd(), sp.held) {
                    Ok(n) => {
                        sp.held -= n.min(sp.held);
                        sp.stalled_ms = 0;
                        moved = n > 0;
                    }
                    Err(libc::EAGAIN) => {
                        d.watch_ready(io, dst.into(), true);
                        if sp.stalled_ms == 0 {
                            sp.stalled_ms = now.max(1);
                        }
                    }
                    Err(e) => {
                        failed = Some((dst, e));
                        break;
                    }
                }
            }
            // The source's payload into the pipe, once its recv is off.
            let left = t.payload_left();
            let s = cx.links.get_mut(src);
            if left > 0
                && !sp.eof
                && s.recv_state() == Recv::Off
                && s.open()
                && !s.eof()
                && !s.ready_armed(false)
            {
                match io.splice(s.fd(), sp.pipe.write_end(), left.min(SPLICE_LEN) as u32) {
                    Ok(0) => sp.eof = true,
                    Ok(n) => {
                        t.skip(u64::from(n));
                        sp.held += n;
                        moved = true;
                        let stamp = Stamp::new(now);
                        match src {
                            Side::Down => cx.last_down_ms = stamp,
                            Side::Up => cx.last_up_ms = stamp,
                        }
                        match src {
                            Side::Down => self.req.bytes_in += u64::from(n),
                            Side::Up => self.req.bytes_out += u64::from(n),
                        }
                        io.observe(super::super::Observed::Spliced(n));
                    }
                    // Nothing to read: wait for more. (With bytes in the pipe it may be the
                    // pipe that is full: their going brings this back.)
                    Err(libc::EAGAIN) if sp.held == 0 => s.watch_ready(io, src.into(), false),
                    Err(libc::EAGAIN) => {}
                    Err(e) => {
                        failed = Some((src, e));
                        break;
                    }
                }
            }
            if !moved {
                break;
            }
            if round == ROUNDS {
                // Enough for one event: come back on readiness (at once if there is more).
                let d = cx.links.get_mut(dst);
                if sp.held > 0 && d.flushed() {
                    d.watch_ready(io, dst.into(), true);
                } else if t.payload_left() > 0 && !sp.eof {
                    cx.links.get_mut(src).watch_ready(io, src.into(), false);
                }
            }
        }
        if let Some((side, errno)) = failed {
            return Protocol::error(self, cx, side.into(), end_of_error(side, errno), io);
        }
        if sp.held > 0 || (t.payload_left() > 0 && !sp.eof) {
            return Step::Continue;
        }
        self.splice_done(cx, src, io)
    }

    /// The spliced payload has gone whole (or its source ended): the pipe goes back, the
    /// source is read through buffers again, a frame that waited for this boundary goes, and
    /// a source that ended has its end passed on.
    fn splice_done<I: Io + ?Sized>(&mut self, cx: &mut Cx, src: Side, io: &mut I) -> Step {
        let i = from(src);
        let Some(k) = self.ctl.as_deref_mut() else {
            return Step::Continue;
        };
        let Some(sp) = k.splice[i].take() else {
            return Step::Continue;
        };
        let Splice { pipe, eof, .. } = *sp;
        io.pipe_back(pipe);
        cx.links.get_mut(src).set_spliced(false);
        let kind = std::mem::take(&mut k.want[i]);
        if kind != Inject::None {
            self.inject(cx, src, kind, true, io);
        }
        if self.ctl.as_ref().is_some_and(|k| k.unused()) {
            self.ctl = None;
        }
        if eof {
            cx.links.get_mut(src).mark_eof();
            return Protocol::eof(self, cx, src.into(), io);
        }
        Step::Continue
    }
}
