//! Our own answer (an error page, or the end of a response that does not keep the
//! connection), then the close, after a lingering close when the client may still be sending,
//! so the answer is not lost to a reset (nginx's lingering close). A protocol type: the
//! session runs it as `Phase::Respond`.

use super::Side;
use super::phase::{Linger, Req};
use super::protocol::{Protocol, Step};
use super::{Cx, Env, Io, linger_end};
use crate::uring::timer::Stamp;
use crate::uring::{Chunk, ConnId};

/// The answer going out, and the request it answers (its status for the log).
#[derive(Debug)]
pub(super) struct Answer {
    pub req: Req,
    pub linger: Linger,
}

impl Protocol for Answer {
    fn name(&self) -> &'static str {
        "respond"
    }

    /// What the client still sends is dropped (read only while lingering).
    fn bytes<I: Io + ?Sized>(
        &mut self,
        _cx: &mut Cx,
        _from: ConnId,
        c: Chunk,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        io.release(c);
        Step::Continue
    }

    /// Lingering: the client has finished, close. Otherwise the answer is still on its way:
    /// it is sent, then the connection closes.
    fn eof<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, _io: &mut I) -> Step {
        match (Side::of(from), self.linger) {
            (Side::Down, Linger::On) => Step::Close(cx.ended()),
            _ => Step::Continue,
        }
    }

    /// The lingering close is over.
    fn timer<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        _now: u64,
        _io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        Step::Close(cx.ended())
    }

    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        (self.linger == Linger::On)
            .then(|| linger_end(cx.phase_ms.at(now), cx.last_down_ms.at(now)))
    }

    /// Only while lingering, to read and drop what the client still sends.
    fn wants(&self, _cx: &Cx, id: ConnId, _room: bool) -> bool {
        id == ConnId::CLIENT && self.linger == Linger::On
    }

    /// The answer is flushed: linger (write side shut behind it, a TLS close_notify first)
    /// while the client may still be sending, or close.
    fn settle<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, _env: &mut Env<'_>) -> Step {
        let down = &mut cx.links.down;
        if self.linger == Linger::On || !down.flushed() {
            return Step::Continue;
        }
        if self.linger == Linger::AfterFlush && !down.eof() && down.open() {
            self.linger = Linger::On;
            cx.phase_ms = Stamp::new(io.now_ms());
            down.shut_after_flush();
            down.kick(io, ConnId::CLIENT);
            Step::Continue
        } else {
            Step::Close(cx.ended())
        }
    }
}
