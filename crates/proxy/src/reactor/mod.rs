//! The reactor: what every event loop of ringway shares — the proxy's workers, the echo
//! backend and the load generator. The loop turn (submit, copy out a bounded batch of
//! completions, then dispatch: TigerBeetle's `flush`), the slots with their generations, the
//! timer wheel, and one connection's socket ([`Conn`]: recv arming, the send queue,
//! half-close, cancel-then-close). Effects on sockets go through [`Sys`], implemented over the
//! ring by [`RingSys`] and by a recording fake in the session simulation.
//!
//! This room knows sockets, buffers and completions; it knows nothing of HTTP, sessions or
//! configuration.

pub mod conn;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

pub use crate::uring::pipe::Pipe;
pub use conn::{Conn, QUEUE, Recv, Sent, Shut};

use crate::uring::slots::Slots;
use crate::uring::timer::TimerWheel;
use crate::uring::{Chunk, ConnId, Cqe, Op, Ring, SLOT_CORE, Src, UserData};

/// Effects on the sockets of one slot. Implemented by [`RingSys`] over a ring, and by the
/// session simulation's fake.
pub trait Sys {
    /// Coarse monotonic milliseconds (one reading per loop turn).
    fn now_ms(&self) -> u64;
    /// Bytes of a received pool buffer.
    fn data(&self, bid: u16, len: u32) -> &[u8];
    /// Bytes of a received pool buffer, to work on in place (TLS decrypts there).
    fn data_mut(&mut self, bid: u16, len: u32) -> &mut [u8];
    /// Bytes stored by `put`.
    fn heap(&self, id: u32) -> &[u8];
    /// The bytes of a chunk: a received pool buffer, or bytes stored by `put` (the plaintext
    /// TLS decrypted), from `c.off`.
    fn data_of(&self, c: Chunk) -> &[u8] {
        match c.src {
            Src::Pool(bid) => &self.data(bid, c.off + c.len)[c.off as usize..],
            Src::Heap(id) => &self.heap(id)[c.off as usize..(c.off + c.len) as usize],
        }
    }
    /// Give back a buffer from `scratch` that was not sent after all.
    fn recycle(&mut self, v: Vec<u8>);
    /// An empty buffer to build bytes to send in (a recycled allocation when there is one).
    fn scratch(&mut self) -> Vec<u8>;
    /// Store bytes for sending; returns a chunk covering all of them.
    fn put(&mut self, bytes: Vec<u8>) -> Chunk;
    /// Give a chunk's memory back (pool buffer to the ring, heap bytes freed).
    fn release(&mut self, c: Chunk);
    /// The send of `c` has completed (called first thing on every send completion).
    fn sent(&mut self, c: Chunk);
    /// Arm a recv on `fd` that brings about `buffers` pool buffers and then ends (its last
    /// completion without `more`): see `Ring::recv_capped`.
    fn recv(&mut self, fd: RawFd, id: ConnId, buffers: u32);
    /// The buffer pool is down to its floor: only connections that are making progress may
    /// take more.
    fn pool_low(&self) -> bool;
    /// Arm a one-shot poll that completes when the peer of `fd` hangs up.
    fn watch_hangup(&mut self, fd: RawFd, id: ConnId);
    /// Cancel the op `op` in flight on `id`.
    fn cancel(&mut self, id: ConnId, op: Op);
    fn send(&mut self, fd: RawFd, id: ConnId, c: Chunk);
    /// Create a socket (bound to `source` when given) and start connecting it; the errno when
    /// the socket cannot be made or bound.
    fn connect(
        &mut self,
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        id: ConnId,
    ) -> Result<RawFd, i32>;
    /// `shutdown(SHUT_WR)` on `fd`, now. A plain syscall, not an SQE: it only queues a FIN,
    /// and io_uring always hands IORING_OP_SHUTDOWN to an io-wq thread (REQ_F_FORCE_ASYNC),
    /// which cost a thread wake-up and ~20% of the proxy's CPU per closed WebSocket.
    fn shutdown(&mut self, fd: RawFd);
    /// Close an fd that has no op in flight (through the ring: an SQE, not a syscall).
    fn close(&mut self, fd: RawFd);
    /// Write `bytes` on `fd` now, without waiting (`MSG_DONTWAIT`): whether all of them went.
    /// Only for a socket with nothing in flight, about to close (a TLS close_notify, which
    /// fits in any socket buffer that is not full): a plain syscall, not an SQE, as nothing
    /// comes after it.
    fn send_now(&mut self, fd: RawFd, bytes: &[u8]) -> bool;
    /// Put the slot on the wait list for buffers (its recv hit ENOBUFS).
    fn park(&mut self, id: ConnId);
    /// Arm a one-shot poll that completes when `fd` can be written (`write`) or read: a socket
    /// a tunnel splices into whose send buffer was full, or one it splices from that had
    /// nothing.
    fn watch_ready(&mut self, fd: RawFd, id: ConnId, write: bool);
    /// Move up to `len` bytes from `from` to `to` with splice(2), now and without waiting
    /// (both are non-blocking; one is a pipe): how many moved (0 from a socket: its FIN), or
    /// the errno (`EAGAIN`: nothing can move now). A plain syscall, not an SQE: io_uring hands
    /// every splice to an io-wq thread (`REQ_F_FORCE_ASYNC`).
    fn splice(&mut self, from: RawFd, to: RawFd, len: u32) -> Result<u32, i32>;
    /// A pipe to splice through (None: none may be open now; forward through buffers).
    fn pipe(&mut self) -> Option<Pipe>;
    /// Give back a pipe that holds nothing, for the next splice.
    fn pipe_back(&mut self, p: Pipe);
    /// Make socket `fd` non-blocking (for splice(2)); false when that failed.
    fn nonblocking(&mut self, fd: RawFd) -> bool;
    /// A connected pair of local stream sockets, or the errno.
    fn socketpair(&mut self) -> Result<(RawFd, RawFd), i32>;
}

/// The pool's floor, as a fraction of it (1/4): below it only connections making progress
/// (nothing waiting toward the other id) and new heads get buffers, so stalled connections
/// alone cannot empty the pool (`session/LIFECYCLE.md`, "Buffer budget").
pub const POOL_FLOOR_DIV: u32 = 4;

/// [`Sys`] over a ring, for one slot.
pub struct RingSys<'a> {
    pub ring: &'a mut Ring,
    pub slot: u32,
    pub generation: u32,
    pub now_ms: u64,
    pub parked: &'a mut VecDeque<(u32, u32, ConnId)>,
}

impl RingSys<'_> {
    fn ud(&self, op: Op, id: ConnId) -> UserData {
        UserData::new(self.slot, self.generation, op, id)
    }
}

impl Sys for RingSys<'_> {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn data(&self, bid: u16, len: u32) -> &[u8] {
        self.ring.pool.bytes(bid, len)
    }

    fn data_mut(&mut self, bid: u16, len: u32) -> &mut [u8] {
        self.ring.pool.bytes_mut(bid, len)
    }

    fn heap(&self, id: u32) -> &[u8] {
        self.ring.heap.bytes(id)
    }

    fn scratch(&mut self) -> Vec<u8> {
        self.ring.heap.scratch()
    }

    fn recycle(&mut self, v: Vec<u8>) {
        self.ring.heap.recycle(v);
    }

    fn put(&mut self, bytes: Vec<u8>) -> Chunk {
        let len = bytes.len() as u32;
        Chunk {
            src: Src::Heap(self.ring.heap.put(bytes)),
            off: 0,
            len,
        }
    }

    fn release(&mut self, c: Chunk) {
        match c.src {
            Src::Pool(bid) => self.ring.pool.release(bid),
            Src::Heap(id) => self.ring.heap.free(id),
        }
    }

    fn sent(&mut self, c: Chunk) {
        self.ring.send_done(c);
    }

    fn recv(&mut self, fd: RawFd, id: ConnId, buffers: u32) {
        let ud = self.ud(Op::Recv, id);
        self.ring.recv_capped(fd, ud, buffers);
    }

    fn watch_hangup(&mut self, fd: RawFd, id: ConnId) {
        let ud = self.ud(Op::Hangup, id);
        self.ring.poll_hangup(fd, ud);
    }

    fn pool_low(&self) -> bool {
        self.ring.pool.free() <= self.ring.pool.count() / POOL_FLOOR_DIV
    }

    fn cancel(&mut self, id: ConnId, op: Op) {
        let (target, ud) = (self.ud(op, id), self.ud(Op::Cancel, id));
        self.ring.cancel_op(target, ud);
    }

    fn send(&mut self, fd: RawFd, id: ConnId, c: Chunk) {
        let ud = self.ud(Op::Send, id);
        self.ring.send(fd, c, ud);
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        id: ConnId,
    ) -> Result<RawFd, i32> {
        let by_ring = self.ring.sockopt_cmd();
        let fd = crate::sys::connect_socket(addr, source, !by_ring)?;
        if by_ring {
            self.ring.set_nodelay(fd);
        }
        let ud = self.ud(Op::Connect, id);
        self.ring.connect(fd, addr, ud);
        Ok(fd)
    }

    fn shutdown(&mut self, fd: RawFd) {
        // An error (the peer already reset) shows up on the socket's recv.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
    }

    fn close(&mut self, fd: RawFd) {
        self.ring.close(fd);
    }

    fn send_now(&mut self, fd: RawFd, bytes: &[u8]) -> bool {
        use nix::sys::socket::MsgFlags;
        nix::sys::socket::send(fd, bytes, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL)
            .is_ok_and(|n| n == bytes.len())
    }

    fn park(&mut self, id: ConnId) {
        self.ring.pool.waited();
        self.parked.push_back((self.slot, self.generation, id));
    }

    fn watch_ready(&mut self, fd: RawFd, id: ConnId, write: bool) {
        if write {
            let ud = self.ud(Op::Writable, id);
            self.ring.poll_out(fd, ud);
        } else {
            let ud = self.ud(Op::Readable, id);
            self.ring.poll_in(fd, ud);
        }
    }

    fn splice(&mut self, from: RawFd, to: RawFd, len: u32) -> Result<u32, i32> {
        crate::uring::splice(from, to, len)
    }

    fn pipe(&mut self) -> Option<Pipe> {
        self.ring.pipes.take()
    }

    fn pipe_back(&mut self, p: Pipe) {
        self.ring.pipes.give_back(p);
    }

    fn nonblocking(&mut self, fd: RawFd) -> bool {
        crate::uring::set_nonblocking(fd)
    }

    fn socketpair(&mut self) -> Result<(RawFd, RawFd), i32> {
        crate::sys::socketpair()
    }
}

/// What a loop owner does with the completions and timers the reactor hands it.
pub trait Handler<T> {
    /// A completion for a live slot (its generation matched).
    fn on_slot(&mut self, r: &mut Reactor<T>, c: Cqe);
    /// A completion that belongs to no slot: accepts (slot = listener index) and the ring's
    /// own ops.
    fn on_core(&mut self, r: &mut Reactor<T>, c: Cqe);
    /// A timer of a live slot fired at `due` (its owner checks `due` against its own mark:
    /// the wheel keeps no generation).
    fn on_timer(&mut self, r: &mut Reactor<T>, slot: u32, generation: u32, due: u64);
}

/// Completions copied out per loop turn.
pub const CQE_BATCH: usize = 256;

/// One event loop: a ring, its slots, its timer wheel.
pub struct Reactor<T> {
    pub ring: Ring,
    pub slots: Slots<T>,
    pub wheel: TimerWheel,
    /// Slots whose recv stopped on an empty buffer ring, re-armed as buffers return.
    pub parked: VecDeque<(u32, u32, ConnId)>,
    /// `monotonic_ms()` when the reactor started: its clock counts from there.
    epoch_ms: u64,
    now_ms: u64,
    cqes: Vec<Cqe>,
    fired: Vec<(u32, u64)>,
    /// Completions for slots that were already freed (a close that did not wait for all its
    /// ops): a bug, asserted in debug builds and counted in release.
    pub stale: u64,
}

impl<T> Reactor<T> {
    /// `capacity`: slots allocated up front; `tick_ms`: the wheel's resolution.
    pub fn new(ring: Ring, capacity: usize, tick_ms: u64, wheel_slots: usize) -> Reactor<T> {
        Reactor {
            ring,
            slots: Slots::with_capacity(capacity),
            wheel: TimerWheel::new(tick_ms, wheel_slots, 0),
            parked: VecDeque::new(),
            epoch_ms: monotonic_ms(),
            now_ms: 0,
            cqes: Vec::with_capacity(CQE_BATCH),
            fired: Vec::new(),
            stale: 0,
        }
    }

    /// A live slot (any generation when `generation` is `None`): its generation, its value, and
    /// a [`RingSys`] for it over this reactor's ring.
    pub fn split(
        &mut self,
        slot: u32,
        generation: Option<u32>,
    ) -> Option<(u32, &mut T, RingSys<'_>)> {
        let (g, value) = self.slots.get_any_mut(slot)?;
        if generation.is_some_and(|x| x != g) {
            return None;
        }
        let sys = RingSys {
            ring: &mut self.ring,
            slot,
            generation: g,
            now_ms: self.now_ms,
            parked: &mut self.parked,
        };
        Some((g, value, sys))
    }

    /// Milliseconds since the reactor started, read once per turn.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// One turn: submit and wait up to `wait` (or the next tick, whichever is first), copy out
    /// a batch of completions, dispatch them, fire due timers, top up the buffer ring. Returns
    /// whether a tick of the timer wheel passed (for chores done once per tick).
    pub fn turn(&mut self, h: &mut impl Handler<T>, wait: Duration) -> std::io::Result<bool> {
        let next_tick = Duration::from_millis(self.wheel.until_next_tick(self.now_ms));
        let cqes = self.wait(wait.min(next_tick))?;
        for &c in &cqes {
            self.dispatch(h, c);
        }
        self.give_back(cqes);
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        let ticked = self.wheel.advance(self.now_ms, &mut fired);
        for &(slot, due) in &fired {
            // The slot's occupant now: the one that set the entry (an owner removes its entry
            // when it goes), and it checks `due` against its own mark.
            if let Some((generation, _)) = self.slots.get_any_mut(slot) {
                h.on_timer(self, slot, generation, due);
            }
        }
        self.fired = fired;
        self.ring.pool.grow_if_low();
        if ticked {
            self.ring.pool.settle(self.now_ms);
        }
        Ok(ticked)
    }

    /// A turn with nothing in flight (no slot): sleep `wait`, then read the clock. The same
    /// wait as `turn`'s, but one every tool sees as blocking: valgrind, which runs one thread
    /// at a time, does not see a wait inside io_uring_enter as one, so an idle ring's wait
    /// would hold the process's other threads.
    pub fn rest(&mut self, wait: Duration) {
        debug_assert!(self.slots.is_empty(), "rest with ops in flight");
        std::thread::sleep(wait);
        self.tick_clock();
    }

    /// The first half of a turn, for a loop that dispatches itself (the load generator, whose
    /// clock runs in microseconds): submit and wait up to `wait`, then copy out a batch of
    /// completions. Hand the batch back with `give_back` once dispatched.
    pub fn wait(&mut self, wait: Duration) -> std::io::Result<Vec<Cqe>> {
        self.ring.submit_and_wait(wait)?;
        self.tick_clock();
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.reap(&mut cqes);
        Ok(cqes)
    }

    /// Read the clock (once per turn: every completion of the turn sees the same time).
    fn tick_clock(&mut self) {
        self.now_ms = monotonic_ms()
            .saturating_sub(self.epoch_ms)
            .max(self.now_ms);
    }

    pub fn give_back(&mut self, cqes: Vec<Cqe>) {
        self.cqes = cqes;
    }

    /// Whether a slot's completion belongs to a live slot. One for a slot that has been freed
    /// (and maybe reused) has its buffer released and is counted: it means a close did not wait
    /// for all its ops, a bug (asserted in debug builds).
    pub fn is_live(&mut self, c: &Cqe) -> bool {
        if c.ud.slot() == SLOT_CORE {
            // The core slot's own (a socket's close, whose slot may be gone): no slot's.
            return false;
        }
        if c.ud.op().is_none() {
            self.stale += 1;
            return false;
        }
        if self.slots.is_current(c.ud.slot(), c.ud.generation()) {
            return true;
        }
        self.ring.pool.release_of(c);
        debug_assert!(false, "stale completion {c:?}");
        self.stale += 1;
        false
    }

    fn dispatch(&mut self, h: &mut impl Handler<T>, c: Cqe) {
        if c.ud.slot() == SLOT_CORE || c.ud.op() == Some(Op::Accept) {
            return h.on_core(self, c);
        }
        if self.is_live(&c) {
            h.on_slot(self, c);
        }
    }

    /// Slots parked on ENOBUFS, taken while buffers last (at least `min_free` available).
    pub fn next_unparked(&mut self, min_free: u32) -> Option<(u32, u32, ConnId)> {
        while self.ring.pool.available() >= min_free {
            let (slot, generation, id) = self.parked.pop_front()?;
            if self.slots.get_mut(slot, generation).is_some() {
                return Some((slot, generation, id));
            }
        }
        None
    }
}

/// Milliseconds on `CLOCK_MONOTONIC`: the clock read straight into integer milliseconds (read
/// every turn; `Instant::elapsed` and `Duration::as_millis` cost ~5 % of the user-space
/// instructions per echoed message). The clock cannot fail on Linux; if it did, time would
/// stand still (`tick_clock` never goes back) rather than panic.
fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .wrapping_mul(1000)
            .wrapping_add(t.tv_nsec() as u64 / 1_000_000)
    })
}
