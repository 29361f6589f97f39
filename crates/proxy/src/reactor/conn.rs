//! One connection's socket: its fd, its receive state, the queue of chunks waiting to be sent
//! on it (one send in flight at a time, so bytes stay in order), its half-close, and
//! cancel-then-close. Every effect goes through [`Sys`], so the same code runs over the ring
//! (proxy, echo backend, load generator) and under the session simulation's fake.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use super::Sys;
use crate::uring::timer::Stamp;
use crate::uring::{Chunk, ConnId, Op};

/// Chunks that may wait to be sent on one socket (plus the one in flight). At this many, the
/// source id's recv is cancelled: backpressure instead of unbounded buffering. The limit is
/// soft: completions already posted before the cancel lands are still queued (bounded by the
/// worker's buffer ring).
pub const QUEUE: usize = 4;

/// State of the (multishot) recv on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// Not armed.
    Off,
    /// Armed; completions will keep coming.
    On,
    /// A cancel was submitted; the final completion has not arrived yet.
    Cancelling,
}

/// Half-close of the write id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shut {
    Open,
    /// Shut down the write id once the queue is empty.
    Pending,
    /// `shutdown(SHUT_WR)` submitted or done.
    Done,
}

/// One socket's state. Its fields are private: owners read them through the accessors below
/// and change them only through the methods that keep them consistent (the count of ops in
/// flight decides when the fd may close, so nothing outside this file may edit it).
#[derive(Debug)]
pub struct Conn {
    fd: RawFd,
    /// When the send in flight was submitted or last made progress (`send_since_ms` rebuilds
    /// the whole time from the clock now; a send is timed out before its stamp could wrap).
    send_since: Stamp,
    /// Ops in flight on `fd` (a multishot recv counts once until its last completion).
    ops: u8,
    recv: Recv,
    shut: Shut,
    /// The hang-up watch (a poll for POLLRDHUP) on this socket, armed while it is not read.
    hup: Recv,
    /// The readiness polls of a splice (`READABLE`, `WRITABLE`) armed on this socket, whether
    /// it is non-blocking (`NONBLOCK`), and whether its stream was torn (`TORN`): the rare
    /// states, beside the flags tested on every event.
    polls: u8,
    /// The yes/no state below (`EOF` … `UNREAD`), one bit each: a connection is in every
    /// session twice, so its size is memory per connection.
    flags: u8,
    /// Requests this connection has carried (for its owner's keepalive limit).
    uses: u16,
    /// What waits to be sent, oldest first; while `SENDING`, its first chunk is the send in
    /// flight (one chunk slot, not two: a connection is in every session twice).
    queue: Queue,
}

/// The peer has sent FIN: nothing more will be read.
const EOF: u8 = 1;
/// The recv stopped on ENOBUFS; waiting for buffers.
const PARKED: u8 = 1 << 1;
/// Being closed: no new ops; fd closed when `ops` reaches 0.
const RETIRING: u8 = 1 << 2;
/// The socket is connected and may be sent on.
const READY: u8 = 1 << 3;
/// Retiring to be kept open (handed back by `detach_when_done`), not closed.
const KEEP: u8 = 1 << 4;
/// Sends are held (`hold_sends`): the socket is being handed to another process, with what
/// waits to be sent on it. No send starts; the one in flight keeps what it did not send.
const HELD: u8 = 1 << 5;
/// A send is in flight: it is the queue's first chunk.
const SENDING: u8 = 1 << 6;
/// Not read through buffers for now: a splice reads this socket, or a tunnel's filter holds
/// its bytes back (one of the flags `readable` tests, so the per-event question costs nothing
/// more).
const UNREAD: u8 = 1 << 7;

/// `Conn::polls`: a poll for POLLIN is armed (the socket a tunnel splices from).
const READABLE: u8 = 1;
/// `Conn::polls`: a poll for POLLOUT is armed (the socket a tunnel splices into).
const WRITABLE: u8 = 1 << 1;
/// `Conn::polls`: bytes queued for this socket were dropped unsent (a send cut short, a queue
/// released): the peer did not get the whole stream, so nothing may claim it did (no TLS
/// close_notify after it). Rare, so kept here, beside the splice's bits.
const TORN: u8 = 1 << 3;
/// `Conn::polls`: the socket is non-blocking (made so for splice(2), which would wait on a
/// blocking one).
const NONBLOCK: u8 = 1 << 2;

fn poll_bit(write: bool) -> u8 {
    if write { WRITABLE } else { READABLE }
}

impl Conn {
    #[inline(always)]
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    #[inline(always)]
    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }
}

/// Reading a connection's state.
impl Conn {
    #[inline]
    pub fn fd(&self) -> RawFd {
        self.fd
    }
    /// Ops in flight.
    #[inline]
    pub fn ops(&self) -> u8 {
        self.ops
    }
    #[inline]
    pub fn recv_state(&self) -> Recv {
        self.recv
    }
    /// The hang-up watch's state.
    #[inline]
    pub fn hup_state(&self) -> Recv {
        self.hup
    }
    /// The peer sent FIN (or the connection is treated as if it had).
    #[inline]
    pub fn eof(&self) -> bool {
        self.has(EOF)
    }
    #[inline]
    pub fn parked(&self) -> bool {
        self.has(PARKED)
    }
    #[inline]
    pub fn shut(&self) -> Shut {
        self.shut
    }
    #[inline]
    pub fn retiring(&self) -> bool {
        self.has(RETIRING)
    }
    #[inline]
    pub fn ready(&self) -> bool {
        self.has(READY)
    }
    /// Open, connected, not at EOF, not waiting for buffers and not spliced from: a recv may
    /// be armed (one test of the flags; it runs for both sockets after every event).
    #[inline]
    pub fn readable(&self) -> bool {
        self.flags & (RETIRING | READY | EOF | PARKED | UNREAD) == READY && self.fd >= 0
    }
    /// A splice reads this socket (see [`Conn::set_spliced`]).
    #[inline]
    pub fn spliced(&self) -> bool {
        self.has(UNREAD)
    }
    /// To be handed back (not closed) once retired.
    #[inline]
    pub fn keep(&self) -> bool {
        self.has(KEEP)
    }
    pub fn uses(&self) -> u16 {
        self.uses
    }
    /// When the send in flight started or last made progress, given the clock now (None: no
    /// send in flight).
    #[inline]
    pub fn send_since_ms(&self, now_ms: u64) -> Option<u64> {
        self.has(SENDING).then(|| self.send_since.at(now_ms))
    }
    pub fn torn(&self) -> bool {
        self.polls & TORN != 0
    }
}

/// Changing a connection's state, each change in one place.
impl Conn {
    /// Nothing more will be read (FIN seen, or the owner stops reading for good).
    pub fn mark_eof(&mut self) {
        self.set(EOF, true);
    }

    /// The recv stopped on ENOBUFS: true when it was not parked already (the owner then puts
    /// it on the wait list for buffers).
    pub fn park(&mut self) -> bool {
        let newly = self.open() && !self.has(PARKED);
        if newly {
            self.set(PARKED, true);
        }
        newly
    }

    /// Buffers are back.
    pub fn unpark(&mut self) {
        self.set(PARKED, false);
    }

    /// A connect was submitted on this socket: not ready to send until it completes, and
    /// one op in flight.
    pub fn connect_started(&mut self) {
        debug_assert!(self.ops == 0, "connect on a busy socket");
        self.set(READY, false);
        self.ops = 1;
    }

    /// Not ready to send (a socket whose connect is still to be submitted).
    pub fn mark_unready(&mut self) {
        self.set(READY, false);
    }

    /// Handed back by its owner after being retired (the keepalive pool): usable again.
    pub fn handed_back(&mut self) {
        self.set(RETIRING, false);
        self.set(KEEP, false);
    }

    /// The connect submitted with `connect_started` completed.
    pub fn connect_done(&mut self) {
        self.op_done();
    }

    /// The socket is connected (or was taken ready from a pool): sends may start.
    pub fn mark_ready(&mut self) {
        self.set(READY, true);
    }

    /// Shut the write id once what is queued has gone (no-op when already shut).
    pub fn shut_after_flush(&mut self) {
        if self.shut == Shut::Open {
            self.shut = Shut::Pending;
        }
    }

    /// Whether this connection, once retired, is handed back (keepalive) instead of closed.
    pub fn set_keep(&mut self, keep: bool) {
        self.set(KEEP, keep);
    }

    /// Requests it has carried.
    pub fn set_uses(&mut self, uses: u16) {
        self.uses = uses;
    }

    /// One op of this socket completed for good. Checked: a count that would go below zero is
    /// a bug (asserted in debug builds) and stays at zero rather than wrap, which would keep
    /// the fd open for ever.
    fn op_done(&mut self) {
        debug_assert!(self.ops > 0, "an op completed that was not counted");
        self.ops = self.ops.saturating_sub(1);
    }

    /// One more op in flight (at most a handful per socket: recv, send, hang-up watch, connect).
    fn op_started(&mut self) {
        debug_assert!(self.ops < u8::MAX, "ops in flight overflow");
        self.ops = self.ops.saturating_add(1);
    }
}

impl Conn {
    pub fn new(fd: RawFd) -> Conn {
        Conn {
            fd,
            send_since: Stamp::default(),
            ops: 0,
            recv: Recv::Off,
            shut: Shut::Open,
            hup: Recv::Off,
            polls: 0,
            flags: if fd >= 0 { READY } else { 0 },
            uses: 0,
            queue: Queue::default(),
        }
    }

    /// Chunks queued or in flight.
    #[inline]
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Nothing queued, nothing in flight.
    #[inline]
    pub fn flushed(&self) -> bool {
        self.pending() == 0
    }

    pub fn push(&mut self, c: Chunk) {
        self.queue.push(c);
    }

    /// Take the oldest chunk waiting (never one in flight: only once the socket's ops are back).
    pub fn pop(&mut self) -> Option<Chunk> {
        debug_assert!(!self.has(SENDING), "popping a chunk still being sent");
        self.queue.pop()
    }

    /// Replace the fd (a new upstream attempt) keeping the queue (nothing is in flight: the
    /// old fd's ops are all back).
    pub fn reset_fd(&mut self, fd: RawFd) {
        debug_assert!(!self.has(SENDING), "a new fd under a send in flight");
        let queue = std::mem::take(&mut self.queue);
        *self = Conn::new(fd);
        self.set(READY, false);
        self.queue = queue;
    }

    /// Whether the fd is open and usable for new ops.
    #[inline]
    pub fn open(&self) -> bool {
        self.fd >= 0 && !self.has(RETIRING)
    }
}

/// How a send completion left the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The chunk went out whole (or its rest was resubmitted); the queue moves on.
    Ok,
    /// The send failed with this errno (not a cancel).
    Failed(i32),
    /// The connection is going away (or the send was cancelled): the chunk was released.
    Dropped,
}

impl Conn {
    /// A recv completion arrived: a multishot recv without `more` has ended.
    pub fn recv_ended(&mut self, more: bool) {
        if !more {
            self.op_done();
            self.recv = Recv::Off;
        }
    }

    /// Start the next send if none is in flight; pass a pending half-close on once the queue
    /// is empty.
    pub fn kick(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId) {
        // Not sending, not retiring, sends not held, ready, with a socket: one test of the
        // flags.
        if self.flags & (SENDING | RETIRING | READY | HELD) != READY || self.fd < 0 {
            return;
        }
        if let Some(c) = self.queue.first {
            self.set(SENDING, true);
            self.send_since = Stamp::new(io.now_ms());
            self.op_started();
            io.send(self.fd, id, c);
        } else if self.shut == Shut::Pending {
            self.shut = Shut::Done;
            io.shutdown(self.fd);
        }
    }

    /// A send completed with `res`. A short send resubmits the rest before anything else;
    /// `dropping` (the owner is closing) releases the chunk whatever happened.
    pub fn on_sent(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        id: ConnId,
        res: i32,
        dropping: bool,
    ) -> Sent {
        self.op_done();
        let mut c = match self.queue.first {
            Some(c) if self.has(SENDING) => c,
            _ => unreachable!("send completion without a send"),
        };
        io.sent(c);
        // One test of the flags for the usual case (neither retiring nor holding sends).
        if res < 0 || dropping || self.flags & (RETIRING | HELD) != 0 {
            if self.has(HELD) && !self.has(RETIRING) && !dropping {
                return self.sent_held(io, c, res);
            }
            self.sent_whole();
            if res < 0 || (res as u32) < c.len {
                self.polls |= TORN;
            }
            io.release(c);
            return if res < 0 && !dropping && res != -libc::ECANCELED {
                Sent::Failed(-res)
            } else {
                Sent::Dropped
            };
        }
        if (res as u32) < c.len {
            c.off += res as u32;
            c.len -= res as u32;
            self.send_since = Stamp::new(io.now_ms());
            self.queue.first = Some(c);
            self.op_started();
            io.send(self.fd, id, c);
        } else {
            self.sent_whole();
            io.release(c);
            self.kick(io, id);
        }
        Sent::Ok
    }

    /// Arm a recv of up to `buffers` pool buffers when `want` and none is armed; cancel the
    /// armed one when not `want`. Returns the cancels submitted (0 or 1).
    pub fn sync_recv(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        id: ConnId,
        want: bool,
        buffers: u32,
    ) -> u8 {
        match (want, self.recv) {
            (true, Recv::Off) => {
                self.recv = Recv::On;
                self.op_started();
                io.recv(self.fd, id, buffers);
                0
            }
            (false, Recv::On) if self.open() && !self.has(EOF) => {
                self.recv = Recv::Cancelling;
                io.cancel(id, Op::Recv);
                1
            }
            _ => 0,
        }
    }

    /// Keep a hang-up watch (a poll for POLLRDHUP) armed exactly while `want`. Returns the
    /// cancels submitted (0 or 1).
    pub fn sync_watch(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId, want: bool) -> u8 {
        match (want, self.hup) {
            (true, Recv::Off) => {
                self.hup = Recv::On;
                self.op_started();
                io.watch_hangup(self.fd, id);
                0
            }
            (false, Recv::On) if self.open() => {
                self.hup = Recv::Cancelling;
                io.cancel(id, Op::Hangup);
                1
            }
            _ => 0,
        }
    }

    /// The hang-up watch completed.
    pub fn watch_ended(&mut self) {
        self.op_done();
        self.hup = Recv::Off;
    }

    /// Whether the readiness poll for writing (`write`) or reading is armed.
    #[inline]
    pub fn ready_armed(&self, write: bool) -> bool {
        self.polls & poll_bit(write) != 0
    }

    /// Arm a one-shot poll for the socket being writable (`write`) or readable, unless it is
    /// armed already or the socket is going away.
    pub fn watch_ready(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId, write: bool) {
        if self.ready_armed(write) || !self.open() {
            return;
        }
        self.polls |= poll_bit(write);
        self.op_started();
        io.watch_ready(self.fd, id, write);
    }

    /// The readiness poll for writing (`write`) or reading completed.
    pub fn ready_ended(&mut self, write: bool) {
        debug_assert!(
            self.ready_armed(write),
            "a readiness poll that was not armed"
        );
        if self.ready_armed(write) {
            self.polls &= !poll_bit(write);
            self.op_done();
        }
    }

    /// Make the socket non-blocking (once), for splice(2); false when that failed.
    pub fn make_nonblocking(&mut self, io: &mut (impl Sys + ?Sized)) -> bool {
        if self.polls & NONBLOCK == 0 {
            if !self.open() || !io.nonblocking(self.fd) {
                return false;
            }
            self.polls |= NONBLOCK;
        }
        true
    }

    /// A splice reads this socket from now on (`on`), or no longer: while it does, the socket
    /// is not `readable` (no recv is armed; an armed one is cancelled).
    pub fn set_spliced(&mut self, on: bool) {
        self.set(UNREAD, on);
    }

    /// A tunnel's filter holds this socket's bytes back (a delayed frame), or no longer: while
    /// it does, the socket is not `readable`, as while spliced from (a tunnel under a filter
    /// never splices, so the two never share the flag).
    pub fn set_held(&mut self, on: bool) {
        self.set(UNREAD, on);
    }

    /// Stop using the socket: cancel exactly the ops in flight, by their user_data (a
    /// shutdown in flight completes on its own); the fd closes in [`Conn::close_when_done`]
    /// once they are all back. Without a socket (between upstream attempts), what waited for
    /// one goes nowhere. Returns the cancels submitted.
    pub fn retire(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId) -> u8 {
        if self.fd < 0 {
            self.release_queue(io);
            return 0;
        }
        if self.has(RETIRING) {
            return 0;
        }
        self.set(RETIRING, true);
        let mut ops = [None; 6];
        if self.recv == Recv::On {
            self.recv = Recv::Cancelling;
            ops[0] = Some(Op::Recv);
        }
        if self.has(SENDING) {
            ops[1] = Some(Op::Send);
        }
        if self.hup == Recv::On {
            self.hup = Recv::Cancelling;
            ops[2] = Some(Op::Hangup);
        }
        if !self.has(READY) && self.ops > 0 {
            ops[3] = Some(Op::Connect);
        }
        if self.ready_armed(false) {
            ops[4] = Some(Op::Readable);
        }
        if self.ready_armed(true) {
            ops[5] = Some(Op::Writable);
        }
        let mut n = 0;
        for op in ops.into_iter().flatten() {
            n += 1;
            io.cancel(id, op);
        }
        n
    }

    /// Close a retired socket once no op of it, and no cancel of its owner (`cancels`), is in
    /// flight, so no cancel can still be looking for an op of this fd when a new socket takes
    /// its number. The queue is released unless `keep_queue` (a request waiting for the next
    /// upstream attempt). Returns whether it closed.
    pub fn close_when_done(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        cancels: u16,
        keep_queue: bool,
    ) -> bool {
        if self.fd < 0 || !self.has(RETIRING) || self.ops > 0 || cancels > 0 {
            return false;
        }
        if !keep_queue {
            self.release_queue(io);
        }
        io.close(self.fd);
        self.reset_fd(-1);
        self.set(RETIRING, false);
        true
    }

    /// A send completed while sends are held (`hold_sends`): what it sent leaves the queue,
    /// what it did not (cancelled, or cut short) stays first in it, and nothing more starts.
    #[cold]
    fn sent_held(&mut self, io: &mut (impl Sys + ?Sized), mut c: Chunk, res: i32) -> Sent {
        self.set(SENDING, false);
        if res < 0 && res != -libc::ECANCELED {
            return Sent::Failed(-res);
        }
        let n = res.max(0) as u32;
        if n >= c.len {
            self.queue.pop();
            io.release(c);
        } else {
            c.off += n;
            c.len -= n;
            self.queue.first = Some(c);
        }
        Sent::Ok
    }

    /// Hold the sends on this socket (it is being handed to another process with what waits
    /// on it): none starts from now on, and the one in flight is cancelled. Returns the
    /// cancels submitted (0 or 1).
    pub fn hold_sends(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId) -> u8 {
        self.set(HELD, true);
        if self.has(SENDING) {
            io.cancel(id, Op::Send);
            return 1;
        }
        0
    }

    /// Sends go on again (a hand-over that did not happen).
    pub fn release_sends(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId) {
        self.set(HELD, false);
        self.kick(io, id);
    }

    /// Every chunk waiting (none may be in flight), oldest first.
    pub fn take_queue(&mut self) -> Vec<Chunk> {
        debug_assert!(!self.has(SENDING), "taking a queue with a send in flight");
        let mut out = Vec::with_capacity(self.queue.len());
        while let Some(c) = self.queue.pop() {
            out.push(c);
        }
        out
    }

    /// The send in flight is over (gone, or dropped): its chunk leaves the queue.
    fn sent_whole(&mut self) {
        self.set(SENDING, false);
        self.queue.pop();
    }

    fn release_queue(&mut self, io: &mut (impl Sys + ?Sized)) {
        while let Some(c) = self.queue.pop() {
            self.polls |= TORN;
            io.release(c);
        }
    }
}

/// A FIFO of chunks: the first lives in the session itself, so a session with at most one
/// chunk waiting allocates nothing; a burst spills into a heap deque, freed when it drains.
#[derive(Debug, Default)]
struct Queue {
    first: Option<Chunk>,
    /// Boxed on purpose: 8 bytes in every session instead of a 32-byte `VecDeque`, for the
    /// rare session that has more than one chunk waiting.
    #[allow(clippy::box_collection)]
    spill: Option<Box<VecDeque<Chunk>>>,
}

impl Queue {
    #[inline]
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.spill.as_ref().map_or(0, |s| s.len())
    }

    fn push(&mut self, c: Chunk) {
        if self.first.is_none() {
            // Invariant: the spill is empty whenever `first` is.
            self.first = Some(c);
        } else {
            self.spill
                .get_or_insert_with(|| Box::new(VecDeque::with_capacity(QUEUE * 2)))
                .push_back(c);
        }
    }

    fn pop(&mut self) -> Option<Chunk> {
        let c = self.first.take()?;
        if let Some(s) = self.spill.as_mut() {
            self.first = s.pop_front();
            if s.is_empty() {
                self.spill = None;
            }
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::Src;

    fn c(i: u16) -> Chunk {
        Chunk {
            src: Src::Pool(i),
            off: 0,
            len: 1,
        }
    }

    #[test]
    fn fifo_through_inline_and_spill() {
        let mut p = Conn::new(3);
        let mut next_out = 0;
        let mut next_in = 0;
        // Interleave pushes and pops so the queue crosses the inline/spill edge many times.
        for round in 0..50u16 {
            for _ in 0..(round % 7) {
                p.push(c(next_in));
                next_in += 1;
            }
            for _ in 0..(round % 5) {
                if let Some(x) = p.pop() {
                    assert_eq!(x, c(next_out));
                    next_out += 1;
                }
            }
            assert_eq!(p.pending(), usize::from(next_in - next_out));
        }
        while let Some(x) = p.pop() {
            assert_eq!(x, c(next_out));
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert!(p.flushed());
        assert!(
            p.queue.spill.is_none(),
            "an empty queue holds no heap memory"
        );
    }

    #[test]
    fn readable_is_open_ready_not_eof_not_parked_not_spliced_for_every_state() {
        for fd in [-1, 3] {
            for flags in 0..=u8::MAX {
                let mut p = Conn::new(fd);
                p.flags = flags;
                let want = p.open() && p.ready() && !p.eof() && !p.parked() && !p.spliced();
                assert_eq!(p.readable(), want, "fd {fd} flags {flags:#b}");
            }
        }
    }

    #[test]
    fn a_send_has_a_start_only_while_in_flight_and_keeps_it_across_the_clocks_wrap() {
        let mut p = Conn::new(3);
        // Started 100 ms before the low 32 bits of the clock wrap, read 150 ms later.
        let start = (1u64 << 32) - 100 + (7u64 << 32);
        p.send_since = Stamp::new(start);
        assert_eq!(p.send_since_ms(start + 150), None, "nothing in flight");
        p.push(c(1));
        p.set(SENDING, true);
        assert_eq!(p.send_since_ms(start), Some(start));
        assert_eq!(p.send_since_ms(start + 150), Some(start));
        assert_eq!(
            (p.queue.first, p.pending()),
            (Some(c(1)), 1),
            "in flight, and pending"
        );
        // The send is over: no start, and the chunk left the queue.
        p.sent_whole();
        assert_eq!((p.send_since_ms(start + 150), p.pending()), (None, 0));
    }
}
