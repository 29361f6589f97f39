//! The proxy's own Close in a tunnel: put into a stream at a frame boundary (`inject`), on
//! shutdown (`drain_close`), after a policy refused a frame (`refused`, with its lingering
//! close, and `close_went` once a Close that waited for a boundary has gone), and when a
//! heartbeat goes unanswered (`heartbeat_lost`); both write sides shut behind them
//! (`shut_both`).

use super::super::phase::{Control, Inject};
use super::super::protocol::Step;
use super::super::{Cx, End, Io, Shut, Side};
use super::{CLOSE_WAIT_MS, Tunnel, from, side_of};

impl Tunnel {
    /// The Close of `runtime.drain_close` toward the client at the next frame boundary (or,
    /// in a stream that is not WebSocket, FIN both ways).
    pub(in crate::session) fn drain_close<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) {
        if !self.inject(cx, Side::Up, Inject::Drain, true, io) {
            cx.end_with(End::Shutdown);
            self.shut_both(cx, io, None);
        }
    }

    /// Put `kind` into the stream from `side` (toward its peer): now if that stream stands at
    /// a frame boundary, else at its next one (`wait`) or not at all. False when the stream
    /// is not a WebSocket frame stream (nothing can be put into it).
    pub(super) fn inject<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        side: Side,
        kind: Inject,
        wait: bool,
        io: &mut I,
    ) -> bool {
        let now = io.now_ms();
        let open = cx.links.get(side.peer()).shut() == Shut::Open;
        let t = &self.frames[from(side)];
        if t.lost() || !open {
            return false;
        }
        let k = self.ctl.get_or_insert_with(|| Box::new(Control::new(None)));
        let i = from(side);
        if kind == Inject::Ping && k.want[i] != Inject::None {
            return true; // a Close waits there: no ping before it
        }
        if !t.at_boundary() || k.splice[i].is_some() {
            // Mid-frame, or the frame's end still in a splice's pipe: at the next boundary.
            if wait {
                k.want[i] = kind;
            }
            return true;
        }
        k.want[i] = kind;
        let mut out = io.scratch();
        let rt = &cx.cfg.runtime;
        k.put(
            side,
            now,
            (rt.drain_code, rt.drain_reason.as_str()),
            &mut out,
        );
        if out.is_empty() {
            io.recycle(out);
        } else {
            let c = io.put(out);
            cx.send_to(side.peer(), c, io);
        }
        true
    }

    /// Both write sides are shut once what is queued has gone (but `keep`'s, when given: a
    /// Close of ours still waits for a frame boundary toward it); the session ends when both
    /// peers have closed theirs (within `CLOSE_WAIT_MS`).
    pub(super) fn shut_both<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        io: &mut I,
        keep: Option<Side>,
    ) {
        for side in [Side::Down, Side::Up] {
            if keep != Some(side) {
                cx.links.half_close(side, io);
            }
        }
        let k = self.ctl.get_or_insert_with(|| Box::new(Control::new(None)));
        if k.close_by == 0 {
            k.close_by = io.now_ms() + CLOSE_WAIT_MS;
        }
    }

    /// A filter refused a frame from `offender` (the other side's Close is on its way): the
    /// offender gets a Close with `code` where the stream toward it stands at a frame
    /// boundary, now or once the frame under way has passed (`close_went`), and the tunnel
    /// ends once both peers have closed (`linger_end`: within `LINGER_MS` of the offender's
    /// last bytes, `LINGER_TIME_MS` in all). The offender is still read meanwhile, and what it
    /// sends dropped (nginx's lingering close): a socket closed with bytes unread sends a
    /// reset, and the kernel then discards what it had not yet sent of ours, the Close among
    /// it. The other side is not read again once the offender's Close has gone.
    pub(super) fn refused<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        offender: Side,
        code: u16,
        reason: &'static str,
        end: End,
        io: &mut I,
    ) {
        tracing::debug!("{}: {end} ({reason})", cx.client);
        cx.end_with(end);
        // The offender's Close goes where the stream toward it stands at a frame boundary: now,
        // or, mid-frame, once the frame under way has passed. Until then the other side is
        // still read and the offender's write side stays open (`close_went`): shut now, it
        // would end the stream before the Close.
        self.inject(cx, offender.peer(), Inject::Close(code, reason), true, io);
        let waits = self
            .ctl
            .as_deref()
            .is_some_and(|k| k.want[from(offender.peer())] != Inject::None);
        if !waits {
            cx.links.get_mut(offender.peer()).mark_eof();
        }
        self.shut_both(cx, io, waits.then_some(offender));
        // An offender that does not close is not waited for long (nginx's lingering close):
        // `LINGER_MS` after it last sent something, `LINGER_TIME_MS` in all.
        if let Some(k) = self.ctl.as_deref_mut() {
            k.lingering = from(offender) as u8 + 1;
            k.linger_began = io.now_ms();
        }
    }

    /// `silent` did not answer a ping within `heartbeat.timeout`: both sides get a Close 1001
    /// where their stream stands at a frame boundary now, and the session ends once that is
    /// flushed (a peer that does not read is ended by `send_timeout`).
    pub(super) fn heartbeat_lost<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        silent: Side,
        io: &mut I,
    ) -> Step {
        tracing::debug!("{}: heartbeat unanswered by the {silent:?} side", cx.client);
        cx.end_with(End::HeartbeatTimeout(silent));
        for side in [Side::Up, Side::Down] {
            self.inject(cx, side, Inject::GoingAway, false, io);
        }
        cx.links.down.mark_eof();
        cx.links.up.mark_eof();
        self.shut_both(cx, io, None);
        Step::Continue
    }

    /// A refused frame's Close that waited for a frame boundary in the stream from `side`
    /// (`refused`) has gone with these bytes: that side is not read again, and the offender's
    /// write side is shut behind its Close.
    pub(super) fn close_went<I: Io + ?Sized>(&mut self, cx: &mut Cx, side: Side, io: &mut I) {
        let Some(k) = self.ctl.as_deref() else {
            return;
        };
        if k.lingering == 0 {
            return;
        }
        let offender = side_of(usize::from(k.lingering - 1));
        if side == offender.peer()
            && k.closed[from(offender)]
            && cx.links.get(offender).shut() == Shut::Open
        {
            cx.links.get_mut(side).mark_eof();
            cx.links.half_close(offender, io);
        }
    }
}
