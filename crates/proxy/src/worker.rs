//! One worker: its reactor (ring, slots, timer wheel), its listening sockets (SO_REUSEPORT)
//! and its sessions. The reactor runs the loop and hands completions here; this room accepts,
//! runs session handlers with an `Io` over the ring, and is the one end-of-session point.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::config::Config;
use crate::live::{Inbox, Live, Msg};
use crate::metrics::WorkerMetrics;
use crate::reactor::{Handler, Reactor};
use crate::session::{End, Env, Kit, Listen, Next, Role, Session};
use crate::upstream::Balancers;
use crate::uring::{ConnId, Cqe, Op, Ring, RingConfig, SLOT_CORE};

/// Timer wheel resolution.
pub const TICK_MS: u64 = 50;
const WHEEL_SLOTS: usize = 4096;

mod drain;
mod handoff;
mod io;
mod log;
use drain::Farewell;
pub use handoff::HANDOFF_WAIT;
use io::WorkerIo;
pub use log::escape_log;
use log::write_access_log;

struct Slot {
    session: Session,
    /// The time this session is scheduled at in the timer wheel (0: not scheduled).
    timer_at: u64,
    /// When it was accepted (ms on the reactor's clock).
    accepted_ms: u64,
}

// Every held connection costs its slab entry: the session, its timer mark and accept time
// (the timer wheel's node is its own, 12 bytes). Moving the mark into the wheel (8 bytes
// less) cost ~100 instructions per echoed message: the mark is read after every event.
const _: () = assert!(std::mem::size_of::<Slot>() <= 288);

/// What a worker is started with.
pub struct WorkerSpec {
    pub id: usize,
    /// The configuration in force, shared with the main thread.
    pub live: Arc<Live>,
    /// Where the main thread's messages arrive.
    pub inbox: Arc<Inbox>,
    pub max_sessions: usize,
    pub backlog: i32,
    /// Pin the thread to this CPU.
    pub cpu: Option<usize>,
    /// What this worker publishes (read by the admin endpoint).
    pub metrics: Arc<WorkerMetrics>,
    /// The listening sockets came from systemd (socket activation): never `shutdown` them.
    pub activated: bool,
}

pub struct Worker {
    reactor: Reactor<Slot>,
    core: Core,
}

/// Everything of a worker but its reactor (so the reactor can hand it completions).
struct Core {
    spec: WorkerSpec,
    /// The configuration new sessions are accepted under.
    cfg: Arc<Config>,
    /// Balancers, idle upstream connections (keepalive), inner sessions (HTTP/2 streams) a
    /// session asked for (started after its event), kept `auth_request` answers.
    kit: Kit,
    /// Listening sockets by accept slot (the slot is in the accept's user_data); a listener
    /// a reload removed leaves `None`, so no slot ever names another socket.
    listeners: Vec<Option<Listener>>,
    accept_paused: bool,
    /// When shutdown began (the main thread said drain): from then on no keep-alive and no
    /// new sessions.
    drain_began: Option<Instant>,
    /// The main thread said close everything now.
    close_now: bool,
    /// Tunnels still to be sent their Close on shutdown or by a rebalance, and when each is due
    /// (spread evenly over `runtime.drain_spread` from the start of the drain, or over the
    /// rebalance's window), earliest first.
    drain_queue: std::collections::VecDeque<Farewell>,
    /// Tunnels on their way to the process that takes over (an upgrade that keeps them).
    handing: Option<handoff::Handing>,
    /// The inner sessions of HTTP/2 streams, by slot: their generation and the descriptor of
    /// the HTTP/2 connection's end of their socket pair (an upgrade hands them over with it).
    stream_peers: std::collections::HashMap<u32, (u32, RawFd)>,
}

/// One listening socket of this worker.
struct Listener {
    sock: Socket,
    addr: SocketAddr,
    /// Settings of the sessions it accepts (from the configuration in force).
    listen: Listen,
    /// Stopping without closing the socket for others (a new process, or systemd, holds it
    /// too): its accept is cancelled and the descriptor closed when the accept's last
    /// completion is in; connections it still brings are served.
    leaving: bool,
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

impl Worker {
    /// This worker's listening sockets: for each listen address, the sockets `handed` gives
    /// it (its share of those handed over by an older process or systemd), else its own
    /// SO_REUSEPORT socket (opened on the calling thread, so bind errors surface before
    /// anything starts).
    pub fn listen(
        cfg: &Config,
        backlog: i32,
        handed: impl Fn(SocketAddr) -> anyhow::Result<Vec<Socket>>,
    ) -> anyhow::Result<Vec<(SocketAddr, Socket)>> {
        use anyhow::Context;
        let mut out = Vec::new();
        for addr in &cfg.listeners {
            let mine = handed(*addr)?;
            mine.iter().for_each(crate::sys::listening);
            if mine.is_empty() {
                let s = crate::sys::listen_socket(*addr, backlog)
                    .with_context(|| format!("listening on {addr}"))?;
                out.push((*addr, s));
            }
            out.extend(mine.into_iter().map(|s| (*addr, s)));
        }
        Ok(out)
    }

    /// Set up the ring. Call on the worker's own thread: with SINGLE_ISSUER the thread that
    /// creates the ring is the only one allowed to submit to it.
    pub fn new(spec: WorkerSpec, sockets: Vec<(SocketAddr, Socket)>) -> anyhow::Result<Worker> {
        use anyhow::Context;
        let cfg = spec.live.config();
        let ring = Ring::new(RingConfig {
            sq_entries: 1024,
            buffers: cfg.runtime.buffers,
            buf_size: cfg.runtime.buffer_size,
        })
        .context("setting up io_uring")?;
        let listeners = sockets
            .into_iter()
            .map(|(addr, sock)| {
                let i = cfg
                    .listeners
                    .iter()
                    .position(|a| *a == addr)
                    .expect("a socket per listener");
                Some(Listener {
                    sock,
                    addr,
                    listen: cfg.listen[i],
                    leaving: false,
                })
            })
            .collect();
        let mut ring = ring;
        if cfg.listener_tls.iter().any(Option::is_some)
            || cfg.upstreams.iter().any(|u| u.tls.is_some())
        {
            // TLS takes its plaintext and records from recycled allocations: keep enough, and
            // large enough for a whole buffer's worth plus a record cut in two.
            ring.heap
                .keep_spares(256, 2 * cfg.runtime.buffer_size as usize + 1024);
        }
        Ok(Worker {
            reactor: Reactor::new(ring, spec.max_sessions.min(1 << 16), TICK_MS, WHEEL_SLOTS),
            core: Core {
                kit: Kit::new(Balancers::new(&cfg)),
                cfg,
                listeners,
                accept_paused: false,
                drain_began: None,
                close_now: false,
                drain_queue: Default::default(),
                handing: None,
                stream_peers: Default::default(),
                spec,
            },
        })
    }

    /// Run until shutdown: when the main thread says drain, stop accepting and let sessions
    /// finish; past `runtime.shutdown_grace` (or when it says now) close what is left; return
    /// once every session has closed (or 5 s after closing began, whatever is stuck).
    pub fn run(mut self) -> anyhow::Result<()> {
        let (r, core) = (&mut self.reactor, &mut self.core);
        if let Some(cpu) = core.spec.cpu {
            pin(cpu);
        }
        core.arm_accepts(r);
        core.arm_inbox(r);
        let mut close_began: Option<Instant> = None;
        loop {
            let grace = core.cfg.runtime.shutdown_grace;
            if close_began.is_none()
                && let Some(t) = core.drain_began
                && (core.close_now || t.elapsed() >= grace)
            {
                close_began = Some(Instant::now());
                for k in r.slots.keys() {
                    core.with_session(r, k, |s, io, env| s.shutdown(io, env));
                }
            }
            // Done once no session is left and every accept has ended (on a handover, a
            // connection its last completion brings is still served).
            if core.drain_began.is_some()
                && r.slots.is_empty()
                && core.listeners.iter().all(Option::is_none)
            {
                return Ok(());
            }
            if close_began.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                return Ok(());
            }
            let ticked = r.turn(core, Duration::from_millis(TICK_MS))?;
            // The inner sessions of HTTP/2 streams opened during the turn (not per event: the
            // per-message path stays as it was).
            if !core.kit.inner.is_empty() {
                core.start_inner(r);
            }
            core.drain_due(r);
            if core.handing.is_some() {
                core.hand_off_due(r);
            }
            // Once per tick, not per turn (a busy turn may carry one completion): expire idle
            // keepalive connections, publish the gauges the admin endpoint reads.
            if ticked {
                core.kit.pool.prune(r.now_ms());
                let m = &core.spec.metrics;
                m.stale_cqes.store(r.stale, Ordering::Relaxed);
                let pool = &r.ring.pool;
                m.pool_buffers
                    .store(u64::from(pool.count()), Ordering::Relaxed);
                m.pool_in_use
                    .store(u64::from(pool.count() - pool.free()), Ordering::Relaxed);
                m.pool_circulating
                    .store(u64::from(pool.circulating()), Ordering::Relaxed);
                m.pool_waits.store(pool.waits(), Ordering::Relaxed);
            }
            // Re-arm sessions whose recv stopped on an empty buffer ring, while buffers last.
            while let Some((slot, _, id)) = r.next_unparked(8) {
                core.with_session(r, slot, |s, io, env| s.unpark(id, io, env));
            }
            if core.accept_paused
                && r.slots.len() < core.spec.max_sessions
                && core.drain_began.is_none()
            {
                core.accept_paused = false;
                core.arm_accepts(r);
            }
        }
    }
}

impl Core {
    fn arm_inbox(&mut self, r: &mut Reactor<Slot>) {
        let ud = crate::uring::UserData::new(SLOT_CORE, 0, Op::Inbox, ConnId::CLIENT);
        r.ring.poll_in(self.spec.inbox.fd(), ud);
    }

    /// Messages from the main thread.
    fn on_inbox(&mut self, r: &mut Reactor<Slot>) {
        for m in self.spec.inbox.take() {
            match m {
                Msg::Drain => {
                    if self.drain_began.is_none() {
                        self.begin_drain(r, false, None);
                    }
                }
                Msg::Handover => {
                    let to = self.spec.inbox.take_handoff();
                    if self.drain_began.is_none() {
                        self.begin_drain(r, true, to);
                    }
                }
                Msg::Adopt => {
                    let tunnels = self.spec.inbox.take_adopted();
                    self.adopt(r, tunnels);
                }
                Msg::CloseNow => {
                    if self.drain_began.is_none() {
                        self.begin_drain(r, false, None);
                    }
                    self.close_now = true;
                }
                Msg::Nudge if self.drain_began.is_none() && !self.accept_paused => {
                    // Cancelled, each accept ends and `accept` arms a fresh one.
                    for (i, l) in self.listeners.iter().enumerate() {
                        if l.as_ref().is_some_and(|l| !l.leaving) {
                            let target = crate::uring::UserData::new(
                                i as u32,
                                0,
                                Op::Accept,
                                ConnId::CLIENT,
                            );
                            let ud = crate::uring::UserData::new(
                                SLOT_CORE,
                                0,
                                Op::Cancel,
                                ConnId::CLIENT,
                            );
                            r.ring.cancel_op(target, ud);
                        }
                    }
                }
                Msg::Nudge => {}
                Msg::Shed { count, over } => self.shed(r, count, over),
                Msg::Config => {
                    self.cfg = self.spec.live.config();
                    self.kit.balancers.of(&self.cfg);
                    self.kit.balancers.prune();
                    let sockets = self.spec.inbox.take_sockets();
                    if self.drain_began.is_none() {
                        self.relisten(r, sockets);
                    }
                    // HTTP/2 connections take no more streams under the old configuration.
                    for k in r.slots.keys() {
                        if r.slots
                            .get_any_mut(k)
                            .is_some_and(|(_, e)| e.session.role() == Role::Http2)
                        {
                            self.with_session(r, k, |s, io, env| s.reloaded(io, env));
                        }
                    }
                }
            }
        }
        self.arm_inbox(r);
    }

    fn arm_accepts(&mut self, r: &mut Reactor<Slot>) {
        for i in 0..self.listeners.len() {
            self.arm_accept(r, i);
        }
    }

    fn arm_accept(&self, r: &mut Reactor<Slot>, i: usize) {
        use std::os::fd::AsRawFd;
        if let Some(Some(l)) = self.listeners.get(i) {
            r.ring.accept_multi(
                l.sock.as_raw_fd(),
                crate::uring::UserData::new(i as u32, 0, Op::Accept, ConnId::CLIENT),
            );
        }
    }

    /// A reload: listeners kept take the new settings, new ones start from the sockets the
    /// main thread opened for this worker, removed ones leave their SO_REUSEPORT group
    /// (`shutdown`, as on drain). Sessions already accepted keep the configuration they began
    /// under.
    fn relisten(&mut self, r: &mut Reactor<Slot>, mut sockets: Vec<(SocketAddr, Socket)>) {
        let cfg = self.cfg.clone();
        for l in self.listeners.iter_mut() {
            if l.as_ref().is_some_and(|l| !cfg.listeners.contains(&l.addr)) {
                let gone = l.take().expect("checked");
                let _ = gone.sock.shutdown(std::net::Shutdown::Read);
            }
        }
        for (i, addr) in cfg.listeners.iter().enumerate() {
            let listen = cfg.listen[i];
            if let Some(l) = self
                .listeners
                .iter_mut()
                .flatten()
                .find(|l| l.addr == *addr)
            {
                l.listen = listen;
            } else if let Some(at) = sockets.iter().position(|(a, _)| a == addr) {
                let (_, sock) = sockets.swap_remove(at);
                self.listeners.push(Some(Listener {
                    sock,
                    addr: *addr,
                    listen,
                    leaving: false,
                }));
                if !self.accept_paused {
                    self.arm_accept(r, self.listeners.len() - 1);
                }
            } else {
                tracing::warn!(
                    "worker {}: no socket for the new listener {addr}",
                    self.spec.id
                );
            }
        }
    }

    /// Run a session handler with an `Io` over this worker's ring, then end the session or
    /// reschedule its timer.
    fn with_session(
        &mut self,
        r: &mut Reactor<Slot>,
        slot: u32,
        f: impl FnOnce(&mut Session, &mut WorkerIo<'_>, &mut Env<'_>) -> Next,
    ) {
        self.with_session_of(r, slot, None, f);
    }

    /// The same, for the session in `slot` only while it has generation `of` (when given).
    #[inline(always)]
    fn with_session_of(
        &mut self,
        r: &mut Reactor<Slot>,
        slot: u32,
        of: Option<u32>,
        f: impl FnOnce(&mut Session, &mut WorkerIo<'_>, &mut Env<'_>) -> Next,
    ) {
        let now_ms = r.now_ms();
        let Some((_, entry, sys)) = r.split(slot, of) else {
            return;
        };
        let mut io = WorkerIo {
            sys,
            metrics: &self.spec.metrics,
            worker: self.spec.id,
        };
        let mut env = Env::new(&mut self.kit, self.drain_began.is_some());
        let next = f(&mut entry.session, &mut io, &mut env);
        if let Next::Close(end) = next {
            return self.end_session(r, slot, end);
        }
        // The deadline moved earlier (a stage change, not traffic: traffic only pushes it
        // later, which the wheel learns lazily when the entry fires): the new entry replaces
        // the old one (`insert`), so a session has one at most and a storm leaves none behind.
        let Some(d) = entry.session.reschedule(entry.timer_at, now_ms) else {
            return;
        };
        entry.timer_at = d;
        r.wheel.insert(slot, d);
    }

    /// The one place a session ends: its closing is complete (no fd, no op in flight). Writes
    /// the access log it still owes, releases its timer, its slot and its counters.
    fn end_session(&mut self, r: &mut Reactor<Slot>, slot: u32, end: End) {
        let mut entry = r.slots.remove(slot);
        entry.session.release_limit();
        let s = &entry.session;
        debug_assert!(s.finished());
        if entry.timer_at != 0 {
            r.wheel.remove(slot, entry.timer_at);
        }
        let m = &self.spec.metrics;
        if let Some(line) = s.access_log(end, r.now_ms()) {
            m.request_done(line.bytes_in, line.bytes_out);
            if line.write {
                write_access_log(&line);
            }
        }
        if let Some(since) = s.tunnel_since() {
            m.tunnel_closed(r.now_ms().saturating_sub(since));
        }
        s.count_tunnel_end(end, self.spec.id);
        let lasted = r.now_ms().saturating_sub(entry.accepted_ms);
        match s.role() {
            // An HTTP/2 stream's inner session: its end is counted, it is not a connection.
            Role::Stream => {
                self.stream_peers.remove(&slot);
                m.count_end(end);
                m.h2.stream_sessions.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Role::Http2 => m.h2.closed(),
            Role::Connection => {}
        }
        m.session_ended(end, lasted);
        m.active.fetch_sub(1, Ordering::Relaxed);
    }

    fn accept(&mut self, r: &mut Reactor<Slot>, c: Cqe) {
        let li = c.ud.slot() as usize;
        let (listen, leaving) = match self.listeners.get(li) {
            Some(Some(l)) => (Some(l.listen), l.leaving),
            _ => (None, false),
        };
        if !c.more() {
            if leaving {
                // Its accept is over: this descriptor closes; the socket lives on for its
                // other holder. A connection this last completion brings is still served.
                self.listeners[li] = None;
            } else if listen.is_some() && self.drain_began.is_none() {
                if r.slots.len() < self.spec.max_sessions {
                    self.arm_accept(r, li);
                } else {
                    self.accept_paused = true;
                }
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
        let Some(listen) = listen else {
            // Its listener is gone (drain, reload): refuse.
            self.spec.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = nix::unistd::close(c.res);
            return;
        };
        self.serve(r, c.res, listen);
    }

    /// The inner sessions asked for (HTTP/2 streams), after the turn that asked: each starts
    /// like an accepted connection's, or, over the session cap, its socket closes (the stream is answered 502).
    fn start_inner(&mut self, r: &mut Reactor<Slot>) {
        while let Some(i) = self.kit.inner.pop() {
            if r.slots.len() >= self.spec.max_sessions {
                self.spec.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                let _ = nix::unistd::close(i.fd);
                continue;
            }
            let now = r.now_ms();
            let peer = i.peer;
            let (key, generation) = r.slots.insert(|_, _| Slot {
                session: Session::inner(i, now),
                timer_at: 0,
                accepted_ms: now,
            });
            self.stream_peers.insert(key, (generation, peer));
            let h2 = &self.spec.metrics.h2;
            h2.stream_sessions.fetch_add(1, Ordering::Relaxed);
            self.with_session(r, key, |s, io, env| {
                s.start(io, env);
                Next::Continue
            });
        }
    }

    /// A connection accepted on a listener with settings `listen`: a session for it (or
    /// refused, over the cap or from an untrusted peer of a PROXY listener).
    fn serve(&mut self, r: &mut Reactor<Slot>, raw: RawFd, listen: Listen) {
        if r.slots.len() >= self.spec.max_sessions {
            // Over the session cap: refuse instead of failing later.
            self.spec.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = nix::unistd::close(raw);
            return;
        }
        let (fd, peer): (_, SocketAddr) = crate::sys::accepted(raw);
        if let Some(Some(trusted)) = self.cfg.listener_proxy.get(usize::from(listen.index))
            && !crate::config::trusted(trusted, peer.ip())
        {
            // A PROXY protocol listener takes connections from its balancers only.
            tracing::debug!("{peer}: not in trusted_proxies of a proxy_protocol listener: refused");
            self.spec.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = nix::unistd::close(fd);
            return;
        }
        let now = r.now_ms();
        let (key, _) = r.slots.insert(|_, _| Slot {
            session: Session::new(fd, peer, listen, self.cfg.clone(), now),
            timer_at: 0,
            accepted_ms: now,
        });
        self.spec.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        self.spec.metrics.active.fetch_add(1, Ordering::Relaxed);
        self.with_session(r, key, |s, io, env| {
            s.start(io, env);
            Next::Continue
        });
    }
}

impl Handler<Slot> for Core {
    fn on_core(&mut self, r: &mut Reactor<Slot>, c: Cqe) {
        // Accepts, the inbox; anything else on the core slot is the ring's own
        // cancel-everything at drop.
        match c.ud.op() {
            Some(Op::Accept) if c.ud.slot() != SLOT_CORE => self.accept(r, c),
            Some(Op::Inbox) if c.ud.slot() == SLOT_CORE => self.on_inbox(r),
            Some(Op::Close | Op::SockOpt) if c.res < 0 => {
                tracing::debug!("{:?}: {}", c.ud.op(), crate::sys::errno_name(-c.res));
            }
            _ => {}
        }
    }

    fn on_slot(&mut self, r: &mut Reactor<Slot>, c: Cqe) {
        let (slot, id) = (c.ud.slot(), c.ud.conn());
        let Some(op) = c.ud.op() else { return };
        self.with_session(r, slot, |s, io, env| match op {
            Op::Recv => s.on_recv(id, c.res, c.more(), c.buf_id(), io, env),
            Op::Send => s.on_send(id, c.res, io, env),
            Op::Connect => s.on_connect(id, c.res, io, env),
            Op::Cancel => s.on_cancel(io, env),
            Op::Hangup => s.on_hangup(id, c.res, io, env),
            Op::Readable | Op::Writable => s.on_ready(id, op == Op::Writable, io, env),
            Op::Accept | Op::Inbox | Op::Close | Op::SockOpt => Next::Continue,
        });
    }

    fn on_timer(&mut self, r: &mut Reactor<Slot>, slot: u32, generation: u32, due: u64) {
        let Some(entry) = r.slots.get_mut(slot, generation) else {
            return;
        };
        if entry.timer_at != due {
            return; // superseded by an earlier entry
        }
        entry.timer_at = 0;
        self.with_session(r, slot, |s, io, env| s.on_timer(io, env));
    }
}
