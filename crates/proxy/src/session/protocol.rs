//! The interface a protocol run by a session implements: what it does with bytes from a
//! connection, the end of a stream, an error and its timer, when it wants its timer and what it
//! wants to read; each answer is a [`Step`]. A protocol works through the session's [`Cx`]
//! (its links, configuration, clocks and end) and the worker's [`Io`]; it never touches a
//! socket, the ring or the worker.
//!
//! The request head (`request.rs`), the tunnel (`tunnel.rs`) and our own answer (`answer.rs`)
//! are protocol types with a `Phase` variant each, called without indirection. A protocol added
//! later is a type too: it implements [`Protocol`], and a session runs it as `Phase::Other`
//! (boxed, called through [`Erased`]) from a `Step::Become` or from `Session::with`. Nothing in
//! `Links`, the reactor or the worker changes for it.

use std::fmt::Debug;

use super::Phase;
use super::Side;
use super::phase::Req;
use super::{Cx, End, Env, Io};
use crate::uring::{Chunk, ConnId};

/// What a protocol decided.
#[derive(Debug)]
#[must_use]
pub(super) enum Step {
    /// Go on.
    Continue,
    /// The session runs another protocol from now on (its `start` runs at once).
    Become(Phase),
    /// Answer the client with our own `status` (if nothing went to it yet), then close.
    Respond(u16, End),
    /// The same, for this request (one the phase does not hold yet: just parsed).
    Answer(Req, u16, End),
    /// The client's transport failed and queued its last words: flush them, then close.
    Fail(End),
    /// Close both connections now.
    Close(End),
    /// Close once what is queued toward the client has gone, lingering while it may still be
    /// sending (so a reset does not take our last words with it), with no request of its own
    /// to log: an HTTP/2 connection's end after its GOAWAY.
    Linger(End),
    /// This protocol is through: the session takes it by value, and runs what its
    /// [`Protocol::finish`] makes of it (what it owns moves on, as a request into its tunnel).
    Finish,
}

/// The end of a session whose connection `side` failed with `errno`.
pub(super) fn end_of_error(side: Side, errno: i32) -> End {
    let normal = matches!(errno, libc::ECONNRESET | libc::EPIPE);
    match (side, normal) {
        (Side::Down, true) => End::ClientClosed,
        (Side::Down, false) => End::ClientError(errno),
        (Side::Up, true) => End::UpstreamClosed,
        (Side::Up, false) => End::UpstreamError(errno),
    }
}

/// A protocol a session can run. Generic over the worker's `Io`, so the built-in protocols
/// are called without indirection; [`Erased`] is the same interface for a boxed one.
pub(super) trait Protocol: Debug {
    /// Its name, for the session's stage and the logs.
    fn name(&self) -> &'static str;

    /// The session has just become this protocol.
    fn start<I: Io + ?Sized>(&mut self, _cx: &mut Cx, _io: &mut I, _env: &mut Env<'_>) -> Step {
        Step::Continue
    }

    /// Plaintext `c` arrived from `from` (the buffer is the protocol's: forward it, or give
    /// it back with `io.release`).
    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step;

    /// The stream from `from` ended (FIN, or the transport's end of stream).
    fn eof<I: Io + ?Sized>(&mut self, _cx: &mut Cx, from: ConnId, _io: &mut I) -> Step {
        Step::Close(match Side::of(from) {
            Side::Down => End::ClientClosed,
            Side::Up => End::UpstreamClosed,
        })
    }

    /// The connection `from` failed, which ends the session with `end` (an errno, as
    /// [`end_of_error`] names it, or its transport's TLS).
    fn error<I: Io + ?Sized>(
        &mut self,
        _cx: &mut Cx,
        _from: ConnId,
        end: End,
        _io: &mut I,
    ) -> Step {
        Step::Close(end)
    }

    /// The connect of connection `id` completed with `res` (0, or an errno negated).
    fn connected<I: Io + ?Sized>(
        &mut self,
        _cx: &mut Cx,
        _id: ConnId,
        _res: i32,
        _io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        Step::Continue
    }

    /// Its deadline (from `deadline`) has come.
    fn timer<I: Io + ?Sized>(
        &mut self,
        _cx: &mut Cx,
        _now: u64,
        _io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        Step::Continue
    }

    /// The earliest time (ms) its timer must fire if nothing arrives before; None: no timer.
    /// (Sends that make no progress are timed by the session for every protocol.)
    fn deadline(&self, _cx: &Cx, _now: u64) -> Option<u64> {
        None
    }

    /// Whether connection `id` should be read now. `room`: fewer than the direction's
    /// budget of chunks wait toward the other side (what a protocol that forwards obeys).
    fn wants(&self, _cx: &Cx, id: ConnId, room: bool) -> bool {
        id == ConnId::CLIENT && room
    }

    /// Reading connection `id` resumes after a pause (its clock may restart).
    fn resumed(&mut self, _cx: &mut Cx, _id: ConnId, _now: u64) {}

    /// While the client connection is not read, watch it for a hang-up (a request waiting for
    /// its answer: a client that has gone ends it at once).
    fn watches_client(&self) -> bool {
        false
    }

    /// What is queued toward the upstream connection stays when it closes, for the next one.
    fn keeps_queue(&self) -> bool {
        false
    }

    /// Whether a send to an upstream connection that makes no progress ends the session (at
    /// the request's `send_timeout`). HTTP/2's connections past the client's lead to inner
    /// sessions, which time their own upstreams: only the client's sends are timed there.
    fn times_upstream_sends(&self) -> bool {
        true
    }

    /// Whether the session is in a state where the bookkeeping after an event
    /// (`Session::after`) would ask for nothing: then it is not run (`LIFECYCLE.md`, invariant
    /// 14). Only a protocol whose `settle`, `wants` and `watches_client` are answered by the
    /// links' steady state says yes; false (the default) is always right. A boxed protocol
    /// always gets the bookkeeping.
    fn steady<I: Io + ?Sized>(&self, _cx: &Cx, _io: &I) -> bool {
        false
    }

    /// After every event, once the links have settled (sends completed, sockets closed): the
    /// place to notice what only the links show, such as an answer fully sent or a previous
    /// socket closed.
    fn settle<I: Io + ?Sized>(&mut self, _cx: &mut Cx, _io: &mut I, _env: &mut Env<'_>) -> Step {
        Step::Continue
    }

    /// It answered [`Step::Finish`]: what the session runs next, made of what it owns.
    /// (`Closing` closes the session.)
    fn finish<I: Io + ?Sized>(self, _cx: &mut Cx, _io: &mut I) -> Phase
    where
        Self: Sized,
    {
        Phase::Closing(None)
    }

    /// The worker began draining (shutdown): finish what is in progress, or end now.
    fn drain<I: Io + ?Sized>(&mut self, _cx: &mut Cx, _io: &mut I) -> Step {
        Step::Continue
    }

    /// The drain spread reached this session, which carries long-lived streams (a tunnel):
    /// tell its peers to go (a WebSocket Close at a frame boundary), and end once they have.
    fn farewell<I: Io + ?Sized>(&mut self, _cx: &mut Cx, _io: &mut I) -> Step {
        Step::Continue
    }

    /// A reload put a new configuration in force: a connection that would take more requests
    /// under the old one (HTTP/2) says it takes no more, so that its client's next requests
    /// come on a new connection, under the new configuration.
    fn reloaded<I: Io + ?Sized>(&mut self, _cx: &mut Cx, _io: &mut I) -> Step {
        Step::Continue
    }

    /// How a binary upgrade hands it over whole, if it can be (`session/handoff.rs`).
    fn carrier(&self) -> Option<&dyn Carrier> {
        None
    }

    fn carrier_mut(&mut self) -> Option<&mut dyn Carrier> {
        None
    }
}

/// [`Protocol`] for a boxed protocol, over `dyn Io`: every protocol type is one.
pub(super) trait Erased: Debug {
    fn name(&self) -> &'static str;
    fn start(&mut self, cx: &mut Cx, io: &mut dyn Io, env: &mut Env<'_>) -> Step;
    fn bytes(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut dyn Io,
        env: &mut Env<'_>,
    ) -> Step;
    fn eof(&mut self, cx: &mut Cx, from: ConnId, io: &mut dyn Io) -> Step;
    fn error(&mut self, cx: &mut Cx, from: ConnId, end: End, io: &mut dyn Io) -> Step;
    fn connected(
        &mut self,
        cx: &mut Cx,
        id: ConnId,
        res: i32,
        io: &mut dyn Io,
        env: &mut Env<'_>,
    ) -> Step;
    fn timer(&mut self, cx: &mut Cx, now: u64, io: &mut dyn Io, env: &mut Env<'_>) -> Step;
    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64>;
    fn wants(&self, cx: &Cx, id: ConnId, room: bool) -> bool;
    fn resumed(&mut self, cx: &mut Cx, id: ConnId, now: u64);
    fn watches_client(&self) -> bool;
    fn keeps_queue(&self) -> bool;
    fn times_upstream_sends(&self) -> bool;
    fn settle(&mut self, cx: &mut Cx, io: &mut dyn Io, env: &mut Env<'_>) -> Step;
    fn finish(self: Box<Self>, cx: &mut Cx, io: &mut dyn Io) -> Phase;
    fn drain(&mut self, cx: &mut Cx, io: &mut dyn Io) -> Step;
    fn farewell(&mut self, cx: &mut Cx, io: &mut dyn Io) -> Step;
    fn reloaded(&mut self, cx: &mut Cx, io: &mut dyn Io) -> Step;
    fn carrier(&self) -> Option<&dyn Carrier>;
    fn carrier_mut(&mut self) -> Option<&mut dyn Carrier>;
}

impl<P: Protocol> Erased for P {
    fn name(&self) -> &'static str {
        Protocol::name(self)
    }
    fn start(&mut self, cx: &mut Cx, io: &mut dyn Io, env: &mut Env<'_>) -> Step {
        Protocol::start(self, cx, io, env)
    }
    fn bytes(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut dyn Io,
        env: &mut Env<'_>,
    ) -> Step {
        Protocol::bytes(self, cx, from, c, io, env)
    }
    fn eof(&mut self, cx: &mut Cx, from: ConnId, io: &mut dyn Io) -> Step {
        Protocol::eof(self, cx, from, io)
    }
    fn error(&mut self, cx: &mut Cx, from: ConnId, end: End, io: &mut dyn Io) -> Step {
        Protocol::error(self, cx, from, end, io)
    }
    fn connected(
        &mut self,
        cx: &mut Cx,
        id: ConnId,
        res: i32,
        io: &mut dyn Io,
        env: &mut Env<'_>,
    ) -> Step {
        Protocol::connected(self, cx, id, res, io, env)
    }
    fn timer(&mut self, cx: &mut Cx, now: u64, io: &mut dyn Io, env: &mut Env<'_>) -> Step {
        Protocol::timer(self, cx, now, io, env)
    }
    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        Protocol::deadline(self, cx, now)
    }
    fn wants(&self, cx: &Cx, id: ConnId, room: bool) -> bool {
        Protocol::wants(self, cx, id, room)
    }
    fn resumed(&mut self, cx: &mut Cx, id: ConnId, now: u64) {
        Protocol::resumed(self, cx, id, now)
    }
    fn watches_client(&self) -> bool {
        Protocol::watches_client(self)
    }
    fn keeps_queue(&self) -> bool {
        Protocol::keeps_queue(self)
    }
    fn times_upstream_sends(&self) -> bool {
        Protocol::times_upstream_sends(self)
    }
    fn settle(&mut self, cx: &mut Cx, io: &mut dyn Io, env: &mut Env<'_>) -> Step {
        Protocol::settle(self, cx, io, env)
    }
    fn finish(self: Box<Self>, cx: &mut Cx, io: &mut dyn Io) -> Phase {
        Protocol::finish(*self, cx, io)
    }
    fn drain(&mut self, cx: &mut Cx, io: &mut dyn Io) -> Step {
        Protocol::drain(self, cx, io)
    }
    fn farewell(&mut self, cx: &mut Cx, io: &mut dyn Io) -> Step {
        Protocol::farewell(self, cx, io)
    }
    fn reloaded(&mut self, cx: &mut Cx, io: &mut dyn Io) -> Step {
        Protocol::reloaded(self, cx, io)
    }
    fn carrier(&self) -> Option<&dyn Carrier> {
        Protocol::carrier(self)
    }
    fn carrier_mut(&mut self) -> Option<&mut dyn Carrier> {
        Protocol::carrier_mut(self)
    }
}

/// A protocol added as a type, boxed, is run like the built-in ones (`Phase::Other`): through
/// [`Erased`], over the worker's `Io` as `dyn Io`.
impl Protocol for Box<dyn Erased> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn start<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        (**self).start(cx, io.as_dyn(), env)
    }
    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        (**self).bytes(cx, from, c, io.as_dyn(), env)
    }
    fn eof<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, io: &mut I) -> Step {
        (**self).eof(cx, from, io.as_dyn())
    }
    fn error<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, end: End, io: &mut I) -> Step {
        (**self).error(cx, from, end, io.as_dyn())
    }
    fn connected<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        id: ConnId,
        res: i32,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        (**self).connected(cx, id, res, io.as_dyn(), env)
    }
    fn timer<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        now: u64,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        (**self).timer(cx, now, io.as_dyn(), env)
    }
    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        (**self).deadline(cx, now)
    }
    fn wants(&self, cx: &Cx, id: ConnId, room: bool) -> bool {
        (**self).wants(cx, id, room)
    }
    fn resumed(&mut self, cx: &mut Cx, id: ConnId, now: u64) {
        (**self).resumed(cx, id, now)
    }
    fn watches_client(&self) -> bool {
        (**self).watches_client()
    }
    fn keeps_queue(&self) -> bool {
        (**self).keeps_queue()
    }
    fn times_upstream_sends(&self) -> bool {
        (**self).times_upstream_sends()
    }
    fn settle<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        (**self).settle(cx, io.as_dyn(), env)
    }
    fn drain<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        (**self).drain(cx, io.as_dyn())
    }
    fn farewell<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        (**self).farewell(cx, io.as_dyn())
    }
    fn reloaded<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        (**self).reloaded(cx, io.as_dyn())
    }
    fn finish<I: Io + ?Sized>(self, cx: &mut Cx, io: &mut I) -> Phase {
        <dyn Erased as Erased>::finish(self, cx, io.as_dyn())
    }
    fn carrier(&self) -> Option<&dyn Carrier> {
        (**self).carrier()
    }
    fn carrier_mut(&mut self) -> Option<&mut dyn Carrier> {
        (**self).carrier_mut()
    }
}

/// A protocol that a binary upgrade hands over as a whole connection besides the tunnel
/// (HTTP/2's): what `Session`'s hand-over (`handoff.rs`) asks of it, through
/// [`Protocol::carrier`].
pub(super) trait Carrier {
    /// Whether it can go now; `Err` names why not.
    fn carriable(&self, cx: &Cx) -> Result<(), &'static str>;
    /// It is queued to go: until it goes or cannot, the drain does not tell its client to go.
    fn going(&mut self);
    /// Stop reading every connection that goes with it (what was read goes on as always).
    fn hold(&mut self, cx: &mut Cx, io: &mut dyn Io);
    /// Read again (a hand-over that did not happen).
    fn release(&mut self, cx: &mut Cx);
    /// The connections that go with it, the client's first.
    fn carried_ids(&self) -> Vec<ConnId>;
    /// What it has written and not yet queued, onto the queues (sealed on TLS).
    fn flush_out(&mut self, cx: &mut Cx, io: &mut dyn Io);
    /// Its state, at `now`.
    fn describe(&self, w: &mut crate::wire::W, now: u64);
}
