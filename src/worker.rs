//! One worker: its ring, its listening sockets (SO_REUSEPORT), its session slab, its timer wheel.
//! The loop submits, copies out a bounded batch of completions, then dispatches them
//! (TigerBeetle's `flush`), so no handler runs inside another.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::config::Config;
use crate::session::{AccessLog, Env, Io, Listen, Session};
use crate::upstream::RoundRobin;
use crate::uring::slots::Slots;
use crate::uring::timer::TimerWheel;
use crate::uring::{Chunk, Cqe, Op, Ring, RingConfig, SLOT_CORE, Side, Src, UserData};

/// Completions copied out per loop turn.
const CQE_BATCH: usize = 256;
/// The pool's floor, as a fraction of it (1/4): below it only sessions making progress (nothing
/// waiting toward the other side) and new heads get buffers, so stalled sessions alone cannot
/// empty the pool (`session/LIFECYCLE.md`, "Buffer budget").
const POOL_FLOOR_DIV: u32 = 4;
/// Timer wheel resolution.
pub const TICK_MS: u64 = 50;
const WHEEL_SLOTS: usize = 4096;

/// Counters a worker publishes (read by the main thread; relaxed atomics, written by one thread).
#[derive(Default, Debug)]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub rejected: AtomicU64,
    pub stale_cqes: AtomicU64,
}

struct Slot {
    session: Session,
    /// Heap id of the address of the connect in flight, if any.
    connect_addr: Option<u32>,
}

/// How far shutdown has gone, set by the main thread, read by every worker each loop turn.
#[derive(Default, Debug)]
pub struct Stop(AtomicU8);

impl Stop {
    const RUN: u8 = 0;
    const DRAIN: u8 = 1;
    const NOW: u8 = 2;

    /// Stop accepting; let sessions finish for up to `runtime.shutdown_grace`.
    pub fn drain(&self) {
        let _ =
            self.0
                .compare_exchange(Self::RUN, Self::DRAIN, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Close every session now.
    pub fn now(&self) {
        self.0.store(Self::NOW, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= Self::DRAIN
    }

    pub fn closing(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= Self::NOW
    }
}

/// Per-process settings every worker shares.
pub struct WorkerSpec {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub max_sessions: usize,
    pub backlog: i32,
    /// Pin the thread to this CPU.
    pub cpu: Option<usize>,
    pub stop: Arc<Stop>,
    pub stats: Arc<WorkerStats>,
}

pub struct Worker {
    ring: Ring,
    spec: WorkerSpec,
    rr: Vec<RoundRobin>,
    listeners: Vec<(Socket, Listen)>,
    slots: Slots<Slot>,
    wheel: TimerWheel,
    parked: VecDeque<(u32, u32, Side)>,
    epoch: Instant,
    now_ms: u64,
    cqes: Vec<Cqe>,
    fired: Vec<((u32, u32), u64)>,
    accept_paused: bool,
    /// When shutdown began (the main thread said drain): from then on no keep-alive and no
    /// new sessions.
    drain_began: Option<Instant>,
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

impl Worker {
    /// Open this worker's listening sockets (on the calling thread, so bind errors surface
    /// before anything starts).
    pub fn listen(cfg: &Config, backlog: i32) -> anyhow::Result<Vec<Socket>> {
        use anyhow::Context;
        cfg.listeners
            .iter()
            .map(|addr| {
                crate::sys::listen_socket(*addr, backlog)
                    .with_context(|| format!("listening on {addr}"))
            })
            .collect()
    }

    /// Set up the ring. Call on the worker's own thread: with SINGLE_ISSUER the thread that
    /// creates the ring is the only one allowed to submit to it.
    pub fn new(spec: WorkerSpec, sockets: Vec<Socket>) -> anyhow::Result<Worker> {
        use anyhow::Context;
        let cfg = spec.cfg.clone();
        let ring = Ring::new(RingConfig {
            sq_entries: 1024,
            buffers: cfg.runtime.buffers,
            buf_size: cfg.runtime.buffer_size,
        })
        .context("setting up io_uring")?;
        let mut listeners = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            let server = cfg
                .servers
                .iter()
                .find(|s| s.listen.contains(&i))
                .expect("every listener belongs to a server");
            let listen = Listen::of(i, server);
            listeners.push((sock, listen));
        }
        let rr = cfg.upstreams.iter().map(RoundRobin::new).collect();
        Ok(Worker {
            ring,
            rr,
            listeners,
            slots: Slots::with_capacity(spec.max_sessions.min(1 << 16)),
            wheel: TimerWheel::new(TICK_MS, WHEEL_SLOTS, 0),
            parked: VecDeque::new(),
            epoch: Instant::now(),
            now_ms: 0,
            cqes: Vec::with_capacity(CQE_BATCH),
            fired: Vec::new(),
            accept_paused: false,
            drain_began: None,
            spec,
        })
    }

    fn arm_accepts(&mut self) {
        for (i, (sock, _)) in self.listeners.iter().enumerate() {
            use std::os::fd::AsRawFd;
            self.ring.accept_multi(
                sock.as_raw_fd(),
                UserData::new(i as u32, 0, Op::Accept, Side::Down),
            );
        }
    }

    /// Run until shutdown: when the main thread says drain, stop accepting and let sessions
    /// finish; past `runtime.shutdown_grace` (or when it says now) close what is left; return
    /// once every session has closed (or 5 s after closing began, whatever is stuck).
    pub fn run(mut self) -> anyhow::Result<()> {
        if let Some(cpu) = self.spec.cpu {
            pin(cpu);
        }
        self.arm_accepts();
        let grace = self.spec.cfg.runtime.shutdown_grace;
        let mut close_began: Option<Instant> = None;
        loop {
            if self.drain_began.is_none() && self.spec.stop.draining() {
                self.begin_drain();
            }
            if close_began.is_none()
                && let Some(t) = self.drain_began
                && (self.spec.stop.closing() || t.elapsed() >= grace)
            {
                close_began = Some(Instant::now());
                for k in self.slots.keys() {
                    self.with_session(k, |s, io, env| s.shutdown(io, env));
                }
            }
            if self.drain_began.is_some() && self.slots.is_empty() {
                return Ok(());
            }
            if close_began.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                return Ok(());
            }
            let next_tick = TICK_MS - (self.now_ms % TICK_MS);
            self.ring
                .submit_and_wait(Duration::from_millis(next_tick))?;
            self.now_ms = self.epoch.elapsed().as_millis() as u64;
            let mut cqes = std::mem::take(&mut self.cqes);
            self.ring.reap(&mut cqes);
            for c in &cqes {
                self.dispatch(*c);
            }
            self.cqes = cqes;
            self.timers();
            self.ring.pool.grow_if_low();
            self.unpark();
            if self.accept_paused
                && self.slots.len() < self.spec.max_sessions
                && self.drain_began.is_none()
            {
                self.accept_paused = false;
                self.arm_accepts();
            }
        }
    }

    /// Stop accepting and tell every session. `shutdown(SHUT_RD)` stops each listener at once:
    /// it leaves its SO_REUSEPORT group (new connections go to the other processes on the
    /// port; with `net.ipv4.tcp_migrate_req` so do the queued ones) and its multishot accept
    /// ends with EINVAL. Closing the fd alone would not do either: the pending accept holds a
    /// reference to the socket.
    fn begin_drain(&mut self) {
        self.drain_began = Some(Instant::now());
        for (sock, _) in &self.listeners {
            let _ = sock.shutdown(std::net::Shutdown::Read);
        }
        self.listeners.clear();
        for k in self.slots.keys() {
            self.with_session(k, |s, io, env| s.drain(io, env));
        }
    }

    fn dispatch(&mut self, c: Cqe) {
        let Some(op) = c.ud.op() else {
            self.spec.stats.stale_cqes.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if c.ud.slot() == SLOT_CORE {
            // Our own cancel-everything at drop time; nothing to do.
            return;
        }
        if op == Op::Accept {
            return self.on_accept(c);
        }
        let slot = c.ud.slot();
        let Some(entry) = self.slots.get_mut(slot, c.ud.generation()) else {
            // A completion for a slot that has been freed and maybe reused. Release any buffer
            // it carries; count it (it means a close did not wait for all its ops).
            self.ring.pool.release_of(&c);
            debug_assert!(false, "stale completion {:?}", c);
            self.spec.stats.stale_cqes.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let side = c.ud.side();
        if op == Op::Connect
            && let Some(id) = entry.connect_addr.take()
        {
            self.ring.connect_done(id);
        }
        self.with_session(slot, |s, io, env| match op {
            Op::Recv => s.on_recv(side, c.res, c.more(), c.buf_id(), io, env),
            Op::Send => s.on_send(side, c.res, io, env),
            Op::Connect => s.on_connect(c.res, io, env),
            Op::Cancel => s.on_cancel(io, env),
            Op::Hangup => s.on_hangup(side, c.res, io, env),
            Op::Accept => unreachable!("handled above"),
        });
    }

    /// Run a session handler with an `Io` over this worker's ring, then free or reschedule.
    fn with_session(
        &mut self,
        slot: u32,
        f: impl FnOnce(&mut Session, &mut WorkerIo<'_>, &mut Env<'_>),
    ) {
        let Some((generation, entry)) = self.slots.get_any_mut(slot) else {
            return;
        };
        let mut io = WorkerIo {
            ring: &mut self.ring,
            slot,
            generation,
            now_ms: self.now_ms,
            parked: &mut self.parked,
            connect_addr: &mut entry.connect_addr,
            access_log: self.spec.cfg.runtime.access_log,
        };
        let mut env = Env {
            cfg: &self.spec.cfg,
            rr: &mut self.rr,
            draining: self.drain_began.is_some(),
        };
        f(&mut entry.session, &mut io, &mut env);
        if entry.session.finished() {
            if entry.session.timer_at != 0 {
                self.wheel
                    .remove((slot, generation), entry.session.timer_at);
            }
            self.slots.remove(slot);
            self.spec.stats.active.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if let Some(d) = entry.session.deadline()
            && (entry.session.timer_at == 0 || d < entry.session.timer_at)
        {
            // The deadline moved earlier (a stage change, not traffic: traffic only pushes it
            // later, which the wheel learns lazily when the entry fires): replace the entry,
            // so a session has one at most and a storm leaves none behind.
            if entry.session.timer_at != 0 {
                self.wheel
                    .remove((slot, generation), entry.session.timer_at);
            }
            self.wheel.insert((slot, generation), d);
            entry.session.timer_at = d;
        }
    }

    fn on_accept(&mut self, c: Cqe) {
        let li = c.ud.slot() as usize;
        if !c.more() && li < self.listeners.len() && self.drain_began.is_none() {
            if self.slots.len() < self.spec.max_sessions {
                use std::os::fd::AsRawFd;
                self.ring
                    .accept_multi(self.listeners[li].0.as_raw_fd(), c.ud);
            } else {
                self.accept_paused = true;
            }
        }
        if c.res < 0 {
            match -c.res {
                libc::ECANCELED | libc::EBADF | libc::EINVAL => {}
                e => tracing::warn!(
                    "accept failed: {} (check `ringway preflight` limits)",
                    crate::sys::errno_name(e)
                ),
            }
            return;
        }
        let fd: RawFd = c.res;
        if li >= self.listeners.len() || self.slots.len() >= self.spec.max_sessions {
            // Over the session cap (or stopping): refuse instead of failing later.
            self.spec.stats.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = nix::unistd::close(fd);
            return;
        }
        let (fd, peer) = crate::sys::accepted(fd);
        let listen = self.listeners[li].1;
        let now = self.now_ms;
        let (key, _) = self.slots.insert(|_, _| Slot {
            session: Session::new(fd, peer, listen, now),
            connect_addr: None,
        });
        self.spec.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.spec.stats.active.fetch_add(1, Ordering::Relaxed);
        self.with_session(key, |s, io, _| s.start(io));
    }

    fn timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        self.wheel.advance(self.now_ms, &mut fired);
        for &((slot, generation), due) in &fired {
            let Some(entry) = self.slots.get_mut(slot, generation) else {
                continue;
            };
            if entry.session.timer_at != due {
                continue; // superseded by an earlier entry, or the slot was reused
            }
            entry.session.timer_at = 0;
            self.with_session(slot, |s, io, env| s.on_timer(io, env));
        }
        self.fired = fired;
    }

    /// Re-arm sessions whose recv stopped on an empty buffer ring, while buffers last.
    fn unpark(&mut self) {
        while !self.parked.is_empty() && self.ring.pool.available() >= 8 {
            let Some((slot, generation, side)) = self.parked.pop_front() else {
                break;
            };
            if self.slots.get_mut(slot, generation).is_some() {
                self.with_session(slot, |s, io, env| s.unpark(side, io, env));
            }
        }
    }
}

/// What came from the network, made safe for one access-log line as nginx does: `"`, `\\`,
/// spaces, control bytes and non-ASCII bytes become `\xHH`, so no request can forge a field
/// or a line. Borrowed when nothing needs escaping (the common case).
pub fn escape_log(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |b: u8| b <= b' ' || b >= 0x7f || b == b'"' || b == b'\\';
    if !s.bytes().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for b in s.bytes() {
        if bad(b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    std::borrow::Cow::Owned(out)
}

struct WorkerIo<'a> {
    ring: &'a mut Ring,
    slot: u32,
    generation: u32,
    now_ms: u64,
    parked: &'a mut VecDeque<(u32, u32, Side)>,
    connect_addr: &'a mut Option<u32>,
    access_log: bool,
}

impl WorkerIo<'_> {
    fn ud(&self, op: Op, side: Side) -> UserData {
        UserData::new(self.slot, self.generation, op, side)
    }
}

impl Io for WorkerIo<'_> {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn data(&self, bid: u16, len: u32) -> &[u8] {
        self.ring.pool.bytes(bid, len)
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

    fn recv(&mut self, fd: RawFd, side: Side, buffers: u32) {
        let ud = self.ud(Op::Recv, side);
        self.ring.recv_capped(fd, ud, buffers);
    }

    fn watch_hangup(&mut self, fd: RawFd, side: Side) {
        let ud = self.ud(Op::Hangup, side);
        self.ring.poll_hangup(fd, ud);
    }

    fn pool_low(&self) -> bool {
        self.ring.pool.free() <= self.ring.pool.count() / POOL_FLOOR_DIV
    }

    fn cancel(&mut self, side: Side, op: Op) {
        let (target, ud) = (self.ud(op, side), self.ud(Op::Cancel, side));
        self.ring.cancel_op(target, ud);
    }

    fn send(&mut self, fd: RawFd, side: Side, c: Chunk) {
        let ud = self.ud(Op::Send, side);
        self.ring.send(fd, c, ud);
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
    ) -> Result<RawFd, i32> {
        let fd = crate::sys::connect_socket(addr, source)?;
        let ud = self.ud(Op::Connect, Side::Up);
        *self.connect_addr = Some(self.ring.connect(fd, addr, ud));
        Ok(fd)
    }

    fn shutdown(&mut self, fd: RawFd) {
        // An error (the peer already reset) shows up on the socket's recv.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
    }

    fn close(&mut self, fd: RawFd) {
        let _ = nix::unistd::close(fd);
    }

    fn park(&mut self, side: Side) {
        self.parked.push_back((self.slot, self.generation, side));
    }

    fn log(&mut self, l: &AccessLog<'_>) {
        if !self.access_log {
            return;
        }
        let upstream = l.upstream.map_or("-".to_string(), |a| a.to_string());
        let status = if l.status == 0 {
            "-".to_string()
        } else {
            l.status.to_string()
        };
        tracing::info!(
            target: "access",
            "{} \"{} {}\" host={} status={} upstream={} {}ms in={} out={} {}end={}",
            l.client, escape_log(l.method), escape_log(l.path), escape_log(l.host), status, upstream,
            l.duration_ms, l.bytes_in, l.bytes_out, if l.tunnel { "ws " } else { "" }, l.end
        );
    }
}

#[cfg(test)]
mod tests {
    use super::escape_log;

    #[test]
    fn access_log_fields_cannot_be_forged() {
        assert_eq!(escape_log("/ws/chat?x=1"), "/ws/chat?x=1");
        assert_eq!(
            escape_log("a\" status=200 upstream=evil"),
            "a\\x22\\x20status=200\\x20upstream=evil"
        );
        assert_eq!(escape_log("x\r\ny"), "x\\x0D\\x0Ay");
        assert_eq!(escape_log("caf\u{e9}"), "caf\\xC3\\xA9");
        assert_eq!(escape_log("a\\b"), "a\\x5Cb");
    }
}
