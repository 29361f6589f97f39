//! The state machine driven without a kernel: a fake `Io` that records what the session asks
//! for, and a seeded simulation that completes those ops in random order with short sends and
//! random recv splits. A failing case prints its seed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::*;
use crate::config::Config;
use crate::upstream::Balancers;
use crate::uring::{Chunk, ConnId, Src};

use super::Side;

/// A completion the fake will deliver when asked.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ev {
    RecvEnd(ConnId, i32),
    Hangup(ConnId, i32),
    Send(ConnId),
    SendCancelled(ConnId),
    Connect(ConnId, i32),
    Cancel,
    /// A readiness poll of a splice completes (`true`: for writing), with this result.
    Ready(ConnId, bool, i32),
}

/// What a simulated pipe holds at most.
const PIPE_CAP: usize = 64 * 1024;

/// Connections a simulated session may have: the client, the first upstream, two more.
const CONNS: usize = 4;

#[derive(Default)]
struct Fake {
    now: u64,
    bufs: HashMap<u16, Vec<u8>>,
    next_bid: u16,
    heap: HashMap<u32, Vec<u8>>,
    next_heap: u32,
    recv_armed: [bool; CONNS],
    /// Buffers the armed recv may still bring (a capped multishot: `more` until the last).
    recv_left: [u32; CONNS],
    sending: [Option<Chunk>; CONNS],
    /// The address each connection is connecting to.
    connecting: [Option<SocketAddr>; CONNS],
    /// Which connection each upstream socket is.
    conn_of: HashMap<RawFd, ConnId>,
    /// Result the next connect completes with, per address port.
    refuse: Vec<u16>,
    next_fd: RawFd,
    open_fds: Vec<RawFd>,
    pending: Vec<Ev>,
    wire: [Vec<u8>; CONNS],
    shut: [bool; CONNS],
    logs: Vec<String>,
    /// What the session told the metrics.
    observed: Vec<super::Observed>,
    parked: Vec<ConnId>,
    /// What `pool_low` answers.
    low: bool,
    /// A hang-up watch is armed on the side.
    hup_armed: [bool; CONNS],
    /// Bytes waiting in a connection's socket that nothing has read yet: splice(2) reads
    /// them, and `Sim::step` hands them to an armed recv.
    inbox: [Vec<u8>; CONNS],
    /// The peer of a connection ended its stream once its inbox is read.
    inbox_eof: [bool; CONNS],
    /// A connection's socket takes nothing more (its peer does not read).
    full: [bool; CONNS],
    /// Readiness polls armed: [for reading, for writing] per connection.
    ready_armed: [[bool; 2]; CONNS],
    /// Simulated pipes by number (ends -10 - 2n and -11 - 2n), with what each holds.
    pipes: HashMap<i32, Vec<u8>>,
    next_pipe: i32,
    /// Pipes handed out and not given back.
    pipes_out: usize,
    /// No more pipes than this at once (None: any number).
    pipe_limit: Option<usize>,
    /// Effects asked for so far (every call that arms, cancels, sends, connects, closes,
    /// releases or splices): what `Sim::settle` compares to see that a handler left the
    /// session reconciled.
    effects: u64,
    /// The last of them.
    last_effect: &'static str,
}

/// The number of the simulated pipe an end belongs to.
fn pipe_of(fd: RawFd) -> i32 {
    (-10 - fd) / 2
}

fn idx(id: impl Into<ConnId>) -> usize {
    usize::from(id.into().0)
}

impl Sys for Fake {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn data(&self, bid: u16, len: u32) -> &[u8] {
        &self.bufs[&bid][..len as usize]
    }
    fn data_mut(&mut self, bid: u16, len: u32) -> &mut [u8] {
        &mut self.bufs.get_mut(&bid).expect("live buffer")[..len as usize]
    }
    fn heap(&self, id: u32) -> &[u8] {
        &self.heap[&id]
    }
    fn scratch(&mut self) -> Vec<u8> {
        Vec::new()
    }
    fn recycle(&mut self, _v: Vec<u8>) {}
    fn put(&mut self, bytes: Vec<u8>) -> Chunk {
        self.fx("put");
        let id = self.next_heap;
        self.next_heap += 1;
        let len = bytes.len() as u32;
        self.heap.insert(id, bytes);
        Chunk {
            src: Src::Heap(id),
            off: 0,
            len,
        }
    }
    fn release(&mut self, c: Chunk) {
        self.fx("release");
        match c.src {
            Src::Pool(b) => assert!(self.bufs.remove(&b).is_some(), "double release of {b}"),
            Src::Heap(h) => assert!(self.heap.remove(&h).is_some(), "double free of {h}"),
        }
    }
    fn sent(&mut self, _c: Chunk) {}
    fn recv(&mut self, fd: RawFd, side: ConnId, buffers: u32) {
        self.fx("recv");
        assert!(self.open_fds.contains(&fd), "recv on closed fd");
        assert!(!self.recv_armed[idx(side)], "two recvs on {side:?}");
        assert!(buffers >= 1);
        self.recv_armed[idx(side)] = true;
        self.recv_left[idx(side)] = buffers;
    }
    fn pool_low(&self) -> bool {
        self.low
    }
    fn watch_hangup(&mut self, fd: RawFd, side: ConnId) {
        self.fx("watch_hangup");
        assert!(self.open_fds.contains(&fd), "watch on closed fd");
        assert!(!self.hup_armed[idx(side)], "two watches on {side:?}");
        self.hup_armed[idx(side)] = true;
    }
    fn cancel(&mut self, side: ConnId, op: crate::uring::Op) {
        self.fx("cancel");
        use crate::uring::Op;
        match op {
            Op::Recv => {
                if std::mem::take(&mut self.recv_armed[idx(side)]) {
                    self.pending.push(Ev::RecvEnd(side, -libc::ECANCELED));
                }
            }
            Op::Send => {
                if let Some(i) = self.pending.iter().position(|e| *e == Ev::Send(side)) {
                    self.pending[i] = Ev::SendCancelled(side);
                }
            }
            Op::Hangup => {
                if std::mem::take(&mut self.hup_armed[idx(side)]) {
                    self.pending.push(Ev::Hangup(side, -libc::ECANCELED));
                }
            }
            Op::Readable | Op::Writable => {
                let write = op == Op::Writable;
                if std::mem::take(&mut self.ready_armed[idx(side)][usize::from(write)]) {
                    self.pending.push(Ev::Ready(side, write, -libc::ECANCELED));
                }
            }
            Op::Connect => {
                if self.connecting[idx(side)].take().is_some() {
                    if let Some(i) = self
                        .pending
                        .iter()
                        .position(|e| matches!(e, Ev::Connect(c, _) if *c == side))
                    {
                        self.pending.remove(i);
                    }
                    self.pending.push(Ev::Connect(side, -libc::ECANCELED));
                }
            }
            other => panic!("cancel of {other:?}"),
        }
        self.pending.push(Ev::Cancel);
    }

    fn send(&mut self, fd: RawFd, side: ConnId, c: Chunk) {
        self.fx("send");
        assert!(self.open_fds.contains(&fd));
        assert!(
            self.sending[idx(side)].is_none(),
            "two sends in flight on {side:?}"
        );
        self.sending[idx(side)] = Some(c);
        self.pending.push(Ev::Send(side));
    }
    fn connect(
        &mut self,
        addr: SocketAddr,
        _source: Option<std::net::IpAddr>,
        id: ConnId,
    ) -> Result<RawFd, i32> {
        self.fx("connect");
        self.next_fd += 1;
        self.open_fds.push(self.next_fd);
        self.conn_of.insert(self.next_fd, id);
        self.connecting[idx(id)] = Some(addr);
        let res = if self.refuse.contains(&addr.port()) {
            -libc::ECONNREFUSED
        } else {
            0
        };
        self.pending.push(Ev::Connect(id, res));
        Ok(self.next_fd)
    }
    fn shutdown(&mut self, fd: RawFd) {
        self.fx("shutdown");
        assert!(self.open_fds.contains(&fd), "shutdown of a closed fd");
        let id = if fd == CLIENT_FD {
            ConnId::CLIENT
        } else {
            self.conn_of[&fd]
        };
        self.shut[idx(id)] = true;
    }
    fn send_now(&mut self, fd: RawFd, _bytes: &[u8]) -> bool {
        self.fx("send_now");
        assert!(self.open_fds.contains(&fd), "send_now on a closed fd");
        true
    }
    fn close(&mut self, fd: RawFd) {
        self.fx("close");
        let i = self
            .open_fds
            .iter()
            .position(|&f| f == fd)
            .expect("close of an fd not open");
        self.open_fds.remove(i);
    }
    fn park(&mut self, side: ConnId) {
        self.fx("park");
        self.parked.push(side);
    }
    fn watch_ready(&mut self, fd: RawFd, id: ConnId, write: bool) {
        self.fx("watch_ready");
        assert!(self.open_fds.contains(&fd), "poll on a closed fd");
        assert_eq!(self.conn_of_fd(fd), id, "poll on another connection's fd");
        let armed = &mut self.ready_armed[idx(id)][usize::from(write)];
        assert!(!*armed, "two readiness polls for the same thing on {id:?}");
        *armed = true;
    }
    fn splice(&mut self, from: RawFd, to: RawFd, len: u32) -> Result<u32, i32> {
        let moved = self.splice_bytes(from, to, len);
        // A splice that finds nothing to move (EAGAIN) changes nothing.
        if moved.is_ok() {
            self.fx("splice");
        }
        moved
    }
    fn pipe(&mut self) -> Option<crate::reactor::Pipe> {
        self.fx("pipe");
        if self.pipe_limit.is_some_and(|l| self.pipes_out >= l) {
            return None;
        }
        let n = self.next_pipe;
        self.next_pipe += 1;
        self.pipes.insert(n, Vec::new());
        self.pipes_out += 1;
        Some(crate::reactor::Pipe::detached(-10 - 2 * n, -11 - 2 * n))
    }
    fn pipe_back(&mut self, p: crate::reactor::Pipe) {
        self.fx("pipe_back");
        let held = self
            .pipes
            .remove(&pipe_of(p.read_end()))
            .expect("a live pipe");
        assert!(
            held.is_empty(),
            "a pipe given back with {} bytes in it",
            held.len()
        );
        self.pipes_out -= 1;
    }
    fn nonblocking(&mut self, fd: RawFd) -> bool {
        self.fx("nonblocking");
        assert!(self.open_fds.contains(&fd), "fcntl on a closed fd");
        true
    }
    // The simulation runs HTTP/1 sessions only: none asks for a socket pair.
    fn socketpair(&mut self) -> Result<(RawFd, RawFd), i32> {
        Err(libc::EMFILE)
    }
}

impl Fake {
    /// What splice(2) would do with the simulated sockets and pipes.
    fn splice_bytes(&mut self, from: RawFd, to: RawFd, len: u32) -> Result<u32, i32> {
        assert!(len > 0, "a splice of nothing");
        if from < 0 {
            // Pipe to socket.
            assert!(self.open_fds.contains(&to), "splice into a closed fd");
            let id = self.conn_of_fd(to);
            assert!(
                self.sending[idx(id)].is_none(),
                "a splice into {id:?} under a send in flight"
            );
            if self.full[idx(id)] {
                return Err(libc::EAGAIN);
            }
            let pipe = self.pipes.get_mut(&pipe_of(from)).expect("a live pipe");
            let n = pipe.len().min(len as usize);
            assert!(n > 0, "a splice from an empty pipe");
            self.wire[idx(id)].extend(pipe.drain(..n));
            return Ok(n as u32);
        }
        // Socket to pipe.
        assert!(self.open_fds.contains(&from), "splice from a closed fd");
        let id = self.conn_of_fd(from);
        assert!(
            !self.recv_armed[idx(id)],
            "a splice from {id:?} under an armed recv"
        );
        let inbox = &mut self.inbox[idx(id)];
        if inbox.is_empty() {
            return if self.inbox_eof[idx(id)] {
                Ok(0)
            } else {
                Err(libc::EAGAIN)
            };
        }
        let pipe = self.pipes.get_mut(&pipe_of(to)).expect("a live pipe");
        let n = (PIPE_CAP - pipe.len()).min(inbox.len()).min(len as usize);
        if n == 0 {
            return Err(libc::EAGAIN);
        }
        pipe.extend(inbox.drain(..n));
        Ok(n as u32)
    }

    /// One more effect, `what` (the `Sys` call).
    fn fx(&mut self, what: &'static str) {
        self.effects += 1;
        self.last_effect = what;
    }

    fn conn_of_fd(&self, fd: RawFd) -> ConnId {
        if fd == CLIENT_FD {
            ConnId::CLIENT
        } else {
            self.conn_of[&fd]
        }
    }

    /// Readiness polls whose condition holds now complete.
    fn poll_ready(&mut self) {
        for i in 0..CONNS {
            let id = ConnId(i as u8);
            if self.ready_armed[i][0] && (!self.inbox[i].is_empty() || self.inbox_eof[i]) {
                self.ready_armed[i][0] = false;
                self.pending.push(Ev::Ready(id, false, libc::POLLIN as i32));
            }
            if self.ready_armed[i][1] && !self.full[i] {
                self.ready_armed[i][1] = false;
                self.pending.push(Ev::Ready(id, true, libc::POLLOUT as i32));
            }
        }
    }
}

impl Io for Fake {
    fn log(&mut self, l: &AccessLog<'_>) {
        self.logs
            .push(format!("{} {} {} {}", l.method, l.path, l.status, l.end));
    }
    fn as_dyn(&mut self) -> &mut dyn Io {
        self
    }

    fn observe(&mut self, what: super::Observed) {
        self.observed.push(what);
    }
}

/// The `Env` over a `Sim`'s fields (a macro: it borrows fields, not the whole `Sim`).
macro_rules! env_of {
    ($sim:expr) => {
        Env::new(&mut $sim.kit, $sim.draining)
    };
}

/// The simulated client socket (upstream sockets get the numbers after it).
const CLIENT_FD: RawFd = 100;

struct Sim {
    s: Session,
    io: Fake,
    /// The worker's balancers, pool, auth answers and inner sessions asked for (none: the
    /// simulation runs HTTP/1).
    kit: super::Kit,
    draining: bool,
    rng: u64,
    /// The end-of-session point ran.
    ended: bool,
    /// Where the worker's timer for the session is (0: none), moved as the worker moves it
    /// (`Session::reschedule`) after every event.
    timer_at: u64,
}

const CFG: &str = r#"
[[upstream]]
name = "b"
servers = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }]
[[server]]
listen = ["127.0.0.1:8080"]
[[server.location]]
path = "/"
upstream = "b"
read_timeout = "5s"
[[server.location]]
path = "/ws/"
upstream = "b"
[[server.location]]
path = "/once/"
upstream = "b"
next_upstream_tries = 1
[[server.location]]
path = "/off/"
upstream = "b"
next_upstream = ["off"]
[[server.location]]
path = "/quick/"
upstream = "b"
connect_timeout = "2s"
next_upstream_timeout = "1s"
"#;

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim::with(seed, Phase::Request(Request::default()))
    }

    /// A session that begins with `phase` (a protocol of the test's own, say).
    fn with(seed: u64, phase: Phase) -> Sim {
        Sim::with_config(seed, CFG, phase)
    }

    /// A session under configuration `text`, beginning with `phase`.
    fn with_config(seed: u64, text: &str, phase: Phase) -> Sim {
        let cfg = std::sync::Arc::new(Config::parse("t.toml", text).unwrap());
        let balancers = Balancers::new(&cfg);
        let mut io = Fake {
            next_fd: CLIENT_FD,
            ..Fake::default()
        };
        io.open_fds.push(CLIENT_FD);
        let listen = cfg.listen[0];
        let client = "10.1.2.3:5555".parse().unwrap();
        let s = Session::with(CLIENT_FD, client, listen, cfg, 0, phase);
        let mut sim = Sim {
            s,
            io,
            kit: super::Kit::new(balancers),
            draining: false,
            ended: false,
            timer_at: 0,
            rng: seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                | 1,
        };
        let mut env = env_of!(sim);
        sim.s.start(&mut sim.io, &mut env);
        sim
    }

    /// A session under configuration `text` whose WebSocket upgrade went through: a tunnel.
    fn tunnel(text: &str) -> Sim {
        let mut sim = Sim::with_config(1, text, Phase::Request(Request::default()));
        sim.deliver(Side::Down, UPGRADE);
        sim.run(false);
        sim.deliver(Side::Up, SWITCH);
        sim.run(false);
        assert_eq!(sim.s.stage(), Stage::Tunnel);
        sim
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n.max(1)
    }

    /// Bytes arrive on `side` (if a recv is armed; else they wait, as in a socket buffer). A
    /// capped recv ends with the last buffer it may bring: the session arms the next one if it
    /// wants more.
    fn deliver(&mut self, side: impl Into<ConnId>, bytes: &[u8]) {
        let side = side.into();
        assert!(self.io.recv_armed[idx(side)], "no recv armed on {side:?}");
        self.io.recv_left[idx(side)] -= 1;
        let more = self.io.recv_left[idx(side)] > 0;
        self.io.recv_armed[idx(side)] = more;
        let bid = self.io.next_bid;
        self.io.next_bid = self.io.next_bid.wrapping_add(1);
        self.io.bufs.insert(bid, bytes.to_vec());
        let mut env = env_of!(self);
        let next = self.s.on_recv(
            side,
            bytes.len() as i32,
            more,
            Some(bid),
            &mut self.io,
            &mut env,
        );
        self.settle(next);
    }

    /// Buffers the session holds (received, not yet given back).
    fn held(&self) -> usize {
        self.io.bufs.len()
    }

    fn eof(&mut self, side: impl Into<ConnId>) {
        let side = side.into();
        self.io.recv_armed[idx(side)] = false;
        let mut env = env_of!(self);
        let next = self.s.on_recv(side, 0, false, None, &mut self.io, &mut env);
        self.settle(next);
    }

    /// Complete one pending op (a random one when `random`); sends may complete short. Bytes
    /// waiting in a socket (`Fake::inbox`) go to its armed recv first, a buffer at a time.
    fn step(&mut self, random: bool) -> bool {
        for i in 0..CONNS {
            if self.io.recv_armed[i] && !self.io.inbox[i].is_empty() {
                let n = self.io.inbox[i].len().min(16 * 1024);
                let bytes: Vec<u8> = self.io.inbox[i].drain(..n).collect();
                self.deliver(ConnId(i as u8), &bytes);
                return true;
            }
            if self.io.recv_armed[i] && self.io.inbox_eof[i] && !self.ended {
                self.eof(ConnId(i as u8));
                return true;
            }
        }
        self.io.poll_ready();
        if self.io.pending.is_empty() {
            return false;
        }
        let i = if random {
            self.rand(self.io.pending.len() as u64) as usize
        } else {
            0
        };
        let ev = self.io.pending.remove(i);
        let short = random && self.rand(3) == 0;
        let mut env = env_of!(self);
        let next = match ev {
            Ev::RecvEnd(side, res) => {
                self.s
                    .on_recv(side, res, false, None, &mut self.io, &mut env)
            }
            Ev::Send(side) => {
                let c = self.io.sending[idx(side)].take().unwrap();
                let bytes = match c.src {
                    Src::Pool(b) => {
                        self.io.bufs[&b][c.off as usize..(c.off + c.len) as usize].to_vec()
                    }
                    Src::Heap(h) => {
                        self.io.heap[&h][c.off as usize..(c.off + c.len) as usize].to_vec()
                    }
                };
                let n = if short && c.len > 1 {
                    1 + (self.rng % u64::from(c.len - 1)) as usize
                } else {
                    bytes.len()
                };
                self.io.wire[idx(side)].extend_from_slice(&bytes[..n]);
                self.s.on_send(side, n as i32, &mut self.io, &mut env)
            }
            Ev::SendCancelled(side) => {
                self.io.sending[idx(side)] = None;
                self.s
                    .on_send(side, -libc::ECANCELED, &mut self.io, &mut env)
            }
            Ev::Connect(id, res) => {
                self.io.connecting[idx(id)] = None;
                self.s.on_connect(id, res, &mut self.io, &mut env)
            }
            Ev::Cancel => self.s.on_cancel(&mut self.io, &mut env),
            Ev::Hangup(side, res) => self.s.on_hangup(side, res, &mut self.io, &mut env),
            Ev::Ready(side, write, _res) => self.s.on_ready(side, write, &mut self.io, &mut env),
        };
        self.settle(next);
        true
    }

    /// The client hangs up while its socket is watched, not read.
    fn hang_up(&mut self) {
        assert!(self.io.hup_armed[0], "no hang-up watch armed");
        self.io.hup_armed[0] = false;
        let mut env = env_of!(self);
        let next = self.s.on_hangup(
            ConnId::CLIENT,
            libc::POLLRDHUP as i32,
            &mut self.io,
            &mut env,
        );
        self.settle(next);
    }

    /// What the worker's end-of-session point does when a handler says the session ended:
    /// write the access log it still owes (once: a second end is a bug).
    fn settle(&mut self, next: Next) {
        match next {
            Next::Continue => {
                // Every handler leaves the session reconciled, including one that skipped
                // the bookkeeping after its event (a steady state, `LIFECYCLE.md`): running
                // it again now asks for nothing.
                let before = self.io.effects;
                let mut env = env_of!(self);
                let again = self.s.reconcile(&mut self.io, &mut env);
                assert_eq!(
                    again,
                    Next::Continue,
                    "the bookkeeping again ended the session"
                );
                assert_eq!(
                    self.io.effects,
                    before,
                    "the bookkeeping again asked for more ({}, stage {:?})",
                    self.io.last_effect,
                    self.s.stage()
                );
                // The worker's timer: never after the deadline, whether `reschedule`
                // computed it or skipped it.
                let now = self.io.now;
                if let Some(d) = self.s.reschedule(self.timer_at, now) {
                    self.timer_at = d;
                }
                if let Some(d) = self.s.deadline(now) {
                    assert!(
                        self.timer_at <= d,
                        "timer at {} after the deadline {d} (now {now}, stage {:?})",
                        self.timer_at,
                        self.s.stage()
                    );
                }
            }
            Next::Close(end) => {
                assert!(self.s.finished(), "Close before closing completed");
                assert!(!self.ended, "the session ended twice");
                self.ended = true;
                if let Some(line) = self.s.access_log(end, self.io.now) {
                    let text =
                        format!("{} {} {} {}", line.method, line.path, line.status, line.end);
                    self.io.logs.push(text);
                }
            }
        }
    }

    fn run(&mut self, random: bool) {
        for _ in 0..100_000 {
            if !self.step(random) {
                return;
            }
        }
        panic!("ops never settled");
    }

    fn timer(&mut self, at: u64) {
        self.io.now = at;
        if self.ended {
            return; // the worker's slot is gone: no timer fires for it
        }
        self.timer_at = 0; // the worker takes the entry out before the session sees it
        let mut env = env_of!(self);
        let next = self.s.on_timer(&mut self.io, &mut env);
        self.settle(next);
    }

    /// Nothing leaked: no buffer, no heap bytes, no fd.
    fn assert_clean(&self) {
        assert!(
            self.s.finished(),
            "session not finished: {:?}",
            self.s.stage()
        );
        assert!(self.ended, "the end-of-session point never ran");
        for u in &self.s.config().upstreams {
            for p in &u.peers {
                assert_eq!(p.state.active(), 0, "{} still counted", p.addr);
            }
        }
        assert!(
            self.io.bufs.is_empty(),
            "buffers leaked: {:?}",
            self.io.bufs.keys()
        );
        assert!(
            self.io.heap.is_empty(),
            "heap leaked: {:?}",
            self.io.heap.keys()
        );
        assert!(
            self.io.open_fds.is_empty(),
            "fds left open: {:?}",
            self.io.open_fds
        );
    }

    /// The client reads our answer and closes (ending a lingering close).
    fn client_closes(&mut self) {
        if self.io.recv_armed[idx(Side::Down)] {
            self.eof(Side::Down);
        }
        self.run(false);
    }

    fn wire(&self, side: Side) -> String {
        String::from_utf8_lossy(&self.io.wire[idx(side)]).into_owned()
    }
}

const UPGRADE: &[u8] = b"GET /ws/chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

#[test]
fn websocket_session_from_head_to_close() {
    let mut sim = Sim::new(1);
    // The head arrives in three pieces.
    sim.deliver(Side::Down, &UPGRADE[..10]);
    sim.deliver(Side::Down, &UPGRADE[10..50]);
    assert_eq!(sim.s.stage(), Stage::Request);
    sim.deliver(Side::Down, &UPGRADE[50..]);
    assert_eq!(sim.s.stage(), Stage::Connecting);
    sim.run(false);
    assert_eq!(sim.s.stage(), Stage::Proxy);
    assert!(sim.wire(Side::Up).starts_with(
        "GET /ws/chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
    ));
    assert!(sim.wire(Side::Up).contains("X-Forwarded-For: 10.1.2.3\r\n"));
    // The 101 and the first frame arrive in one read.
    let mut resp = SWITCH.to_vec();
    resp.extend_from_slice(b"\x81\x02hi");
    sim.deliver(Side::Up, &resp);
    assert_eq!(sim.s.stage(), Stage::Tunnel);
    sim.run(false);
    assert!(sim.io.wire[0].starts_with(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x02hi"));
    // The metrics heard of the connect and the 101, once each.
    assert!(matches!(
        sim.io.observed[..],
        [
            super::Observed::Connected(_),
            super::Observed::TunnelOpened(_)
        ]
    ));
    // Both ways, then FIN from the client is passed on as a half-close, then upstream FIN.
    sim.deliver(Side::Down, b"client bytes");
    sim.deliver(Side::Up, b"server bytes");
    sim.run(false);
    assert!(sim.wire(Side::Up).ends_with("client bytes"));
    assert!(sim.wire(Side::Down).ends_with("server bytes"));
    sim.eof(Side::Down);
    sim.run(false);
    assert!(sim.io.shut[idx(Side::Up)], "half-close not passed on");
    assert_eq!(sim.s.stage(), Stage::Tunnel);
    sim.eof(Side::Up);
    // The second FIN ends both streams: the close that follows sends the client its FIN, with
    // no shutdown of its own first.
    assert!(
        !sim.io.shut[idx(Side::Down)],
        "a shutdown right before the close"
    );
    sim.run(false);
    sim.assert_clean();
    assert_eq!(sim.io.logs, vec!["GET /ws/chat 101 done"]);
}

/// A tunnel being handed over (reads and sends held) whose client resets meanwhile closes like
/// any tunnel: its upstream socket is closed, not taken for the keepalive pool (holding sends
/// once borrowed the pool's flag), and nothing leaks.
#[test]
fn a_tunnel_that_fails_while_it_is_handed_over_closes_cleanly() {
    let mut sim = Sim::tunnel(&CFG.replace(
        "servers = [{ addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9002\" }]",
        "servers = [{ addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9002\" }]\nkeepalive = 8",
    ));
    // A send toward the client is in flight when the hand-over begins.
    sim.deliver(
        Side::Up,
        &crate::ws::frame(crate::ws::opcode::TEXT, b"hi", None),
    );
    assert!(sim.io.sending[0].is_some());
    let mut env = env_of!(sim);
    let next = sim
        .s
        .hand_off(&mut sim.io, &mut env)
        .expect("a plain tunnel goes");
    sim.settle(next);
    assert_eq!(sim.s.handoff_ready(), Ok(false));
    // Before its cancel lands, the send fails: the client reset the connection.
    let at = sim
        .io
        .pending
        .iter()
        .position(|e| *e == Ev::SendCancelled(ConnId::CLIENT));
    sim.io.pending.remove(at.expect("the send's cancel"));
    sim.io.sending[0] = None;
    let mut env = env_of!(sim);
    let next = sim
        .s
        .on_send(ConnId::CLIENT, -libc::ECONNRESET, &mut sim.io, &mut env);
    sim.settle(next);
    sim.run(false);
    assert!(
        sim.kit.pool.is_empty(),
        "a tunnel's upstream socket is never pooled"
    );
    sim.assert_clean();
}

/// Without an access log a tunnel keeps no request text (an idle tunnel's memory), yet its
/// end still counts its bytes; with one, the line names the request.
#[test]
fn a_tunnel_without_an_access_log_keeps_no_request_text() {
    for log in [false, true] {
        let mut sim = Sim::tunnel(&format!("[runtime]\naccess_log = {log}\n{CFG}"));
        let text = sim.s.phase.req().map(|r| (r.method(), r.path()));
        let want = if log { ("GET", "/ws/chat") } else { ("-", "-") };
        assert_eq!(text, Some(want), "access_log = {log}");
        sim.deliver(Side::Down, b"ab");
        sim.run(false);
        let line = sim.s.access_log(End::Done, sim.io.now).unwrap();
        assert_eq!(
            line.bytes_in,
            UPGRADE.len() as u64 + 2,
            "access_log = {log}"
        );
    }
}

/// The worker's timer follows a tunnel's deadline down when a send starts and its
/// `send_timeout` is shorter than the idle timeout (what `reschedule` may not skip).
#[test]
fn a_send_that_starts_in_a_tunnel_moves_its_timer_earlier() {
    let cfg = CFG.replacen(
        "path = \"/ws/\"\nupstream = \"b\"\n",
        "path = \"/ws/\"\nupstream = \"b\"\nread_timeout = \"60s\"\nsend_timeout = \"1s\"\n",
        1,
    );
    let mut sim = Sim::tunnel(&cfg);
    // The 101's send set the timer at 1 s; it fires, finds the send done, and goes to the
    // idle deadline.
    assert_eq!(sim.timer_at, 1_000, "the 101's send");
    sim.timer(1_000);
    assert_eq!(
        sim.timer_at, 60_000,
        "idle: read_timeout from the last bytes"
    );
    sim.io.now = 5_000;
    sim.deliver(Side::Down, b"\x81\x02hi");
    assert_eq!(
        sim.timer_at, 6_000,
        "the send to the upstream, timed by send_timeout"
    );
}

#[test]
fn garbage_gets_400_then_close() {
    let mut sim = Sim::new(2);
    sim.deliver(Side::Down, b"\x16\x03\x01garbage\r\n\r\n");
    sim.run(false);
    assert!(
        sim.wire(Side::Down)
            .starts_with("HTTP/1.1 400 Bad Request\r\n")
    );
    assert!(
        sim.io.shut[idx(Side::Down)],
        "lingering close: FIN after the answer"
    );
    sim.client_closes();
    sim.assert_clean();
    assert_eq!(sim.io.logs.len(), 1);
    assert!(
        sim.io.logs[0].contains("400 bad-request"),
        "{:?}",
        sim.io.logs
    );
}

#[test]
fn refused_connect_tries_the_next_server_then_502() {
    let mut sim = Sim::new(3);
    sim.io.refuse = vec![9001];
    sim.deliver(Side::Down, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    sim.run(false);
    // One refused, the other accepted: we are connected and the request went up.
    assert_eq!(sim.s.stage(), Stage::Proxy);
    assert!(sim.wire(Side::Up).starts_with("GET /x HTTP/1.1\r\n"));

    let mut sim = Sim::new(4);
    sim.io.refuse = vec![9001, 9002];
    sim.deliver(Side::Down, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    sim.run(false);
    assert!(
        sim.wire(Side::Down)
            .starts_with("HTTP/1.1 502 Bad Gateway\r\n")
    );
    sim.client_closes();
    sim.assert_clean();
    assert_eq!(sim.io.logs, vec!["GET /x 502 no-upstream"]);
}

#[test]
fn next_upstream_tries_and_off_stop_at_the_first_failed_server() {
    // Tries spent: every server it may try failed (no-upstream); off: this one's error.
    for (path, end) in [
        ("/once/x", "no-upstream"),
        ("/off/x", "upstream-error:ECONNREFUSED"),
    ] {
        let mut sim = Sim::new(3);
        sim.io.refuse = vec![9001];
        sim.deliver(
            Side::Down,
            format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        );
        sim.run(false);
        // The first server refused; the second is never tried: 502 with the connect's error.
        assert!(
            sim.wire(Side::Down)
                .starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{path}"
        );
        assert!(sim.wire(Side::Up).is_empty(), "{path}: nothing went up");
        sim.client_closes();
        sim.assert_clean();
        assert_eq!(sim.io.logs, vec![format!("GET {path} 502 {end}")]);
    }
}

#[test]
fn next_upstream_timeout_stops_the_tries() {
    let mut sim = Sim::new(3);
    sim.deliver(Side::Down, b"GET /quick/x HTTP/1.1\r\nHost: h\r\n\r\n");
    // The server never answers the SYN: its connect stays in flight.
    sim.io.pending.retain(|e| !matches!(e, Ev::Connect(..)));
    sim.run(false);
    assert_eq!(sim.s.stage(), Stage::Connecting);
    // The connect times out at 2 s, past next_upstream_timeout (1 s): no second server, 504.
    sim.timer(2000);
    sim.run(false);
    assert!(
        sim.wire(Side::Down)
            .starts_with("HTTP/1.1 504 Gateway Timeout\r\n")
    );
    sim.client_closes();
    sim.assert_clean();
    assert_eq!(sim.io.logs, vec!["GET /quick/x 504 upstream-timeout"]);
}

#[test]
fn silent_upstream_gets_504_and_silent_client_is_closed() {
    let mut sim = Sim::new(5);
    sim.deliver(Side::Down, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    sim.run(false);
    assert_eq!(sim.s.deadline(sim.io.now), Some(5000));
    sim.timer(4999);
    assert_eq!(sim.s.stage(), Stage::Proxy);
    // next_upstream's default "timeout": the request goes again to the other server...
    sim.timer(5000);
    sim.run(false);
    assert_eq!(sim.s.stage(), Stage::Proxy);
    assert_eq!(sim.wire(Side::Up).matches("GET /x HTTP/1.1\r\n").count(), 2);
    assert_eq!(sim.s.deadline(sim.io.now), Some(10_000));
    // ... and when that one is silent too, the client gets the 504.
    sim.timer(10_000);
    sim.run(false);
    assert!(
        sim.wire(Side::Down)
            .starts_with("HTTP/1.1 504 Gateway Timeout\r\n")
    );
    // A client that never closes is let go when the lingering time is up.
    sim.timer(10_000 + LINGER_MS);
    sim.run(false);
    sim.assert_clean();

    let mut sim = Sim::new(6);
    sim.deliver(Side::Down, b"GET /x HT");
    sim.timer(10_000);
    sim.run(false);
    assert!(
        sim.io.wire[0].is_empty(),
        "nothing is sent on a header timeout"
    );
    sim.assert_clean();
    assert_eq!(sim.io.logs, vec!["- - 0 header-timeout"]);
}

#[test]
fn backpressure_stops_the_fast_side() {
    let mut sim = Sim::new(7);
    sim.deliver(Side::Down, UPGRADE);
    sim.run(false);
    sim.deliver(Side::Up, SWITCH);
    sim.run(false);
    // The client does not read: sends toward it never complete. The upstream keeps sending.
    for i in 0..QUEUE {
        assert!(
            sim.io.recv_armed[idx(Side::Up)],
            "recv stopped too early at {i}"
        );
        sim.deliver(Side::Up, &[b'x'; 100]);
    }
    // At the budget no recv is armed: nothing more can arrive, so nothing to cancel.
    assert!(!sim.io.recv_armed[idx(Side::Up)]);
    assert_eq!(sim.held(), QUEUE, "a direction holds at most QUEUE buffers");
    // Once the client drains, the recv is armed again.
    sim.run(false);
    assert!(sim.io.recv_armed[idx(Side::Up)]);
    assert_eq!(
        sim.io.wire[0].iter().filter(|&&b| b == b'x').count(),
        100 * QUEUE
    );
}

#[test]
fn below_the_pool_floor_only_sessions_making_progress_read() {
    let mut sim = Sim::new(9);
    sim.deliver(Side::Down, UPGRADE);
    sim.run(false);
    sim.deliver(Side::Up, SWITCH);
    sim.run(false);
    sim.io.low = true;
    // Nothing waits toward the client: the session is making progress and reads on.
    assert!(sim.io.recv_armed[idx(Side::Up)]);
    sim.deliver(Side::Up, b"one");
    // One chunk waits for a client that does not read: stalled, and the pool is low.
    assert!(
        !sim.io.recv_armed[idx(Side::Up)],
        "a stalled direction took a buffer below the floor"
    );
    assert_eq!(sim.held(), 1);
    // The client reads: the session is making progress again and reads on.
    sim.run(false);
    assert!(sim.io.recv_armed[idx(Side::Up)]);
    // Above the floor, a stalled direction may hold up to its budget.
    sim.io.low = false;
    for _ in 0..QUEUE {
        sim.deliver(Side::Up, b"more");
    }
    assert_eq!(sim.held(), QUEUE);
    assert!(!sim.io.recv_armed[idx(Side::Up)]);
}

/// A tunnel skips the bookkeeping after an event only in its steady state, where it would ask
/// for nothing (`LIFECYCLE.md`, invariant 14). Each case below is one that looks steady and is
/// not; `Sim::settle` runs the bookkeeping again after every event and fails if it asks for
/// anything.
#[test]
fn a_send_that_frees_the_budget_of_a_side_not_read_is_not_steady() {
    let mut sim = Sim::tunnel(CFG);
    // Below the pool's floor, a chunk waiting toward the client stops the upstream's recv.
    sim.io.low = true;
    sim.deliver(Side::Up, b"one");
    assert!(!sim.io.recv_armed[idx(Side::Up)]);
    // The cancel comes back before the send does: the recv is off, not being cancelled.
    sim.io.pending.sort_by_key(|e| matches!(e, Ev::Send(_)));
    while !matches!(sim.io.pending.first(), Some(Ev::Send(_))) {
        sim.step(false);
    }
    assert_eq!(sim.s.cx.links.up.recv_state(), Recv::Off);
    // The send goes whole: nothing waits toward the client, so the upstream is read again.
    sim.step(false);
    assert!(
        sim.io.recv_armed[idx(Side::Up)],
        "the upstream's recv was not armed again"
    );
}

/// A tunnel with heartbeats (a `Control`) takes the steady state's shortcut too: traffic both
/// ways in random pieces, then silence, pings and the heartbeat's timeout, with the bookkeeping
/// run again after every event (`Sim::settle`) finding nothing to do.
#[test]
fn a_tunnel_with_heartbeats_stays_reconciled_through_traffic_pings_and_its_timeout() {
    use crate::ws::{self, opcode};
    let cfg = CFG.replace(
        "path = \"/ws/\"\nupstream = \"b\"\n",
        "path = \"/ws/\"\nupstream = \"b\"\nheartbeat = { interval = \"1s\", timeout = \"3s\", upstream_interval = \"1s\" }\n",
    );
    assert_ne!(cfg, CFG, "the heartbeat went into the configuration");
    for seed in 1..40u64 {
        let mut sim = Sim::tunnel(&cfg);
        sim.rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut now = sim.io.now;
        for step in 0..80 {
            now += 250;
            if sim.timer_at != 0 && sim.timer_at <= now {
                sim.timer(now);
            } else {
                sim.io.now = now;
            }
            if sim.ended {
                break;
            }
            // Two seconds of traffic in random pieces, then silence.
            if step < 8 {
                for side in [Side::Down, Side::Up] {
                    if !sim.io.recv_armed[idx(side)] {
                        continue;
                    }
                    let mask = (side == Side::Down).then_some([7, 7, 7, 7]);
                    let f = ws::frame(opcode::BINARY, &[b'm'; 40], mask);
                    let n = 1 + sim.rand(f.len() as u64) as usize;
                    sim.deliver(side, &f[..n]);
                    if n == f.len() {
                        continue;
                    }
                    if sim.io.recv_armed[idx(side)] {
                        sim.deliver(side, &f[n..]);
                    } else {
                        sim.io.inbox[idx(side)].extend_from_slice(&f[n..]);
                    }
                }
            }
            sim.run(true);
        }
        assert!(sim.ended, "seed {seed}: the silent tunnel was not closed");
        // Either side, both silent, may be the first whose timeout comes.
        let end = sim.s.end().map(|e| e.to_string()).unwrap_or_default();
        assert!(end.starts_with("heartbeat-timeout"), "seed {seed}: {end}");
        let pings: usize = [Side::Down, Side::Up]
            .iter()
            .map(|&side| {
                let w = &sim.io.wire[idx(side)];
                w.iter().filter(|&&b| b == 0x80 | opcode::PING).count()
            })
            .sum();
        assert!(pings > 0, "seed {seed}: no ping went out");
        sim.assert_clean();
    }
}

#[test]
fn a_send_with_more_behind_it_below_the_pool_floor_is_not_steady() {
    let mut sim = Sim::tunnel(CFG);
    // Two chunks toward the client: one sent, one waiting.
    sim.deliver(Side::Up, b"one");
    sim.deliver(Side::Up, b"two");
    assert!(sim.io.recv_armed[idx(Side::Up)]);
    // The pool falls below its floor meanwhile (other sessions took buffers).
    sim.io.low = true;
    // The first send goes whole and the second starts: one chunk still waits toward a client
    // that has not taken it, so the upstream stops being read.
    assert!(matches!(sim.io.pending.first(), Some(Ev::Send(c)) if *c == ConnId::CLIENT));
    sim.step(false);
    assert_eq!(sim.s.cx.links.down.pending(), 1);
    assert_ne!(sim.s.cx.links.up.recv_state(), Recv::On);
    sim.run(false);
    assert_eq!(sim.wire(Side::Down).matches("onetwo").count(), 1);
}

#[test]
fn a_client_that_fills_its_hold_and_hangs_up_is_seen() {
    let mut sim = Sim::new(10);
    // An upgrade request, then more bytes than the hold takes, then the client hangs up.
    sim.deliver(Side::Down, UPGRADE);
    sim.run(false);
    assert_eq!(sim.s.stage(), Stage::Proxy);
    while sim.io.recv_armed[idx(Side::Down)] {
        sim.deliver(Side::Down, &[b'z'; 4096]);
    }
    sim.run(false);
    assert!(
        !sim.io.recv_armed[idx(Side::Down)],
        "the hold is full: not read"
    );
    assert!(sim.io.hup_armed[0], "but watched for a hang-up");
    assert!(
        !sim.wire(Side::Up).contains('z'),
        "held bytes never go up before the 101"
    );
    sim.hang_up();
    sim.run(false);
    sim.assert_clean();
    assert_eq!(sim.s.end(), Some(End::ClientClosed));
}

#[test]
fn keep_alive_runs_pipelined_requests_in_order() {
    let mut sim = Sim::new(8);
    let two = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    sim.deliver(Side::Down, two);
    sim.run(false);
    assert!(
        sim.wire(Side::Up).ends_with("\r\n\r\nabc"),
        "{}",
        sim.wire(Side::Up)
    );
    sim.deliver(Side::Up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nA!");
    sim.run(false);
    // The second request went to a new upstream connection.
    assert!(
        sim.wire(Side::Up).contains("GET /b HTTP/1.1"),
        "{}",
        sim.wire(Side::Up)
    );
    sim.deliver(
        Side::Up,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nB\r\n0\r\n\r\n",
    );
    sim.run(false);
    let down = sim.wire(Side::Down);
    let first = down.find("A!").unwrap();
    let second = down.find("1\r\nB\r\n0\r\n\r\n").unwrap();
    assert!(first < second);
    assert_eq!(down.matches("Connection: keep-alive").count(), 2);
    sim.eof(Side::Down);
    sim.run(false);
    sim.assert_clean();
    assert_eq!(sim.io.logs, vec!["POST /a 200 done", "GET /b 200 done"]);
}

/// The next request on a kept-alive connection, held back by limit_req (burst, no nodelay)
/// while the previous request's upstream socket is still closing, still goes up once its delay
/// is over: the head waiting in the upstream queue is kept when that socket closes.
#[test]
fn a_delayed_pipelined_request_keeps_its_head_while_the_previous_socket_closes() {
    let text = format!(
        "{CFG}[[limit_req_zone]]\nname = \"z\"\nrate = \"1r/s\"\n[[server.location]]\npath = \"/lr/\"\nupstream = \"b\"\nlimit_req = {{ zone = \"z\", burst = 5 }}\n"
    );
    let mut sim = Sim::with_config(9, &text, Phase::Request(Request::default()));
    let two = b"GET /lr/a HTTP/1.1\r\nHost: h\r\n\r\nGET /lr/b HTTP/1.1\r\nHost: h\r\n\r\n";
    sim.deliver(Side::Down, two);
    sim.run(false);
    assert!(sim.wire(Side::Up).contains("GET /lr/a HTTP/1.1"));
    sim.deliver(Side::Up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nA!");
    sim.run(false);
    // The second request waits out its delay (1 r/s: a second), then goes up.
    assert!(!sim.wire(Side::Up).contains("GET /lr/b"));
    let due = sim
        .s
        .deadline(sim.io.now)
        .expect("the delayed request has a deadline");
    assert!((900..=1000).contains(&due), "delayed until {due}");
    sim.timer(due);
    sim.run(false);
    assert!(
        sim.wire(Side::Up).contains("GET /lr/b HTTP/1.1"),
        "{}",
        sim.wire(Side::Up)
    );
    sim.deliver(Side::Up, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nB!");
    sim.run(false);
    assert!(
        sim.wire(Side::Down).ends_with("B!"),
        "{}",
        sim.wire(Side::Down)
    );
    sim.eof(Side::Down);
    sim.run(false);
    sim.assert_clean();
    assert_eq!(
        sim.io.logs,
        vec!["GET /lr/a 200 done", "GET /lr/b 200 done"]
    );
}

impl Sim {
    fn drain(&mut self) {
        self.draining = true;
        if self.ended {
            return;
        }
        let mut env = env_of!(self);
        let next = self.s.drain(&mut self.io, &mut env);
        self.settle(next);
    }
}

#[test]
fn draining_closes_idle_keep_alive_at_once() {
    let mut sim = Sim::new(11);
    sim.deliver(Side::Down, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    sim.run(false);
    sim.deliver(Side::Up, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA");
    sim.run(false);
    assert_eq!(sim.s.stage(), Stage::Request, "kept alive before draining");
    sim.drain();
    sim.run(false);
    sim.assert_clean();
    assert_eq!(sim.s.end(), Some(End::Shutdown));
    assert_eq!(sim.io.logs, vec!["GET /a 200 done"]);
}

#[test]
fn draining_answers_the_request_in_progress_then_closes() {
    let mut sim = Sim::new(12);
    sim.deliver(Side::Down, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    sim.run(false);
    sim.drain();
    sim.run(false);
    assert_eq!(
        sim.s.stage(),
        Stage::Proxy,
        "a request in flight is not cut"
    );
    sim.deliver(Side::Up, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA");
    sim.run(false);
    let down = sim.wire(Side::Down);
    assert!(down.contains("Connection: close\r\n"), "{down}");
    assert!(down.ends_with("\r\n\r\nA"), "{down}");
    sim.assert_clean();
    assert_eq!(sim.io.logs, vec!["GET /a 200 done"]);
}

#[test]
fn draining_leaves_a_tunnel_running() {
    let mut sim = Sim::new(13);
    sim.deliver(Side::Down, UPGRADE);
    sim.run(false);
    sim.deliver(Side::Up, SWITCH);
    sim.run(false);
    sim.drain();
    sim.run(false);
    assert_eq!(sim.s.stage(), Stage::Tunnel);
    sim.deliver(Side::Down, b"still here");
    sim.run(false);
    assert!(sim.wire(Side::Up).ends_with("still here"));
    let mut env = env_of!(sim);
    let next = sim.s.shutdown(&mut sim.io, &mut env);
    sim.settle(next);
    sim.run(false);
    sim.assert_clean();
    assert_eq!(sim.s.end(), Some(End::Shutdown));
}

#[test]
fn seeded_random_completions_never_lose_or_reorder_bytes() {
    for seed in 1..200u64 {
        let result = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed);
            // The head in random pieces.
            let mut i = 0;
            while i < UPGRADE.len() {
                let n = 1 + sim.rand(40) as usize;
                let end = (i + n).min(UPGRADE.len());
                sim.deliver(Side::Down, &UPGRADE[i..end]);
                i = end;
            }
            sim.run(true);
            sim.deliver(Side::Up, SWITCH);
            sim.run(true);
            let mut up_expect = Vec::new();
            let mut down_expect = Vec::new();
            for k in 0..60u32 {
                let side = if sim.rand(2) == 0 {
                    Side::Down
                } else {
                    Side::Up
                };
                let n = 1 + sim.rand(300) as usize;
                let bytes: Vec<u8> = (0..n).map(|j| (k as usize * 7 + j) as u8).collect();
                if sim.io.recv_armed[idx(side)] {
                    sim.deliver(side, &bytes);
                    if side == Side::Down {
                        up_expect.extend(&bytes)
                    } else {
                        down_expect.extend(&bytes)
                    }
                }
                for _ in 0..sim.rand(4) {
                    sim.step(true);
                }
            }
            sim.run(true);
            sim.eof(Side::Up);
            sim.run(true);
            sim.eof(Side::Down);
            sim.run(true);
            let down_wire = &sim.io.wire[0];
            assert!(
                down_wire.ends_with(&down_expect),
                "downstream bytes lost or reordered"
            );
            let up_wire = &sim.io.wire[1];
            assert!(
                up_wire.ends_with(&up_expect),
                "upstream bytes lost or reordered"
            );
            sim.assert_clean();
        });
        if let Err(e) = result {
            panic!("seed {seed} failed: {:?}", e.downcast_ref::<String>());
        }
    }
}

/// Requests a client might send: the corpus the fuzz test mutates.
const FUZZ_DOWN: &[&[u8]] = &[
    UPGRADE,
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET /ws/ HTTP/1.0\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n",
];

/// Responses an upstream might send.
const FUZZ_UP: &[&[u8]] = &[
    SWITCH,
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\nTrailer: t\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nbody until close",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi",
];

impl Sim {
    /// A corpus entry, maybe mangled: bytes flipped, inserted, deleted, repeated, cut.
    fn mangle(&mut self, corpus: &[&[u8]]) -> Vec<u8> {
        let mut v = corpus[self.rand(corpus.len() as u64) as usize].to_vec();
        for _ in 0..self.rand(4) {
            let at = self.rand(v.len() as u64 + 1) as usize;
            match self.rand(7) {
                0 if at < v.len() => v[at] = self.rand(256) as u8,
                1 => {
                    const ODD: &[u8] = b"\r\n\0:; \t\x7fz9";
                    v.insert(at, ODD[self.rand(ODD.len() as u64) as usize])
                }
                2 if at < v.len() => {
                    v.remove(at);
                }
                3 => {
                    let n = self.rand(40_000) as usize;
                    v.splice(at..at, std::iter::repeat_n(b'a', n));
                }
                4 => v.truncate(at),
                5 => {
                    let copy = v[at..].to_vec();
                    v.extend_from_slice(&copy);
                }
                _ => v.extend_from_slice(b"\x81\xfe\xff\xff"),
            }
        }
        v
    }

    /// A recv on `side` fails with `errno`.
    fn fail(&mut self, side: impl Into<ConnId>, errno: i32) {
        let side = side.into();
        self.io.recv_armed[idx(side)] = false;
        let mut env = env_of!(self);
        let next = self
            .s
            .on_recv(side, -errno, false, None, &mut self.io, &mut env);
        self.settle(next);
    }
}

/// Broken and hostile input from both sides, in random pieces, with random completion order,
/// short sends, errors, EOFs, timers and a drain: the session never panics, always ends, and
/// leaves no buffer, heap chunk or fd behind. A failure prints its seed.
#[test]
fn mangled_input_from_both_sides_never_panics_or_leaks() {
    for seed in 1..5000u64 {
        let result = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed);
            let mut down = sim.mangle(FUZZ_DOWN);
            let mut up = sim.mangle(FUZZ_UP);
            for _ in 0..400 {
                if sim.s.finished() {
                    break;
                }
                match sim.rand(40) {
                    0..=14 => {
                        let side = if sim.rand(2) == 0 {
                            Side::Down
                        } else {
                            Side::Up
                        };
                        let src = if side == Side::Down {
                            &mut down
                        } else {
                            &mut up
                        };
                        if sim.io.recv_armed[idx(side)] && !src.is_empty() {
                            let n = 1 + (sim.rng % src.len() as u64) as usize;
                            let piece: Vec<u8> = src.drain(..n).collect();
                            sim.deliver(side, &piece);
                        }
                    }
                    15..=35 => {
                        sim.step(true);
                    }
                    36 | 37 => {
                        let at = sim.io.now + sim.rand(3_000);
                        sim.timer(at);
                    }
                    _ => {
                        let side = if sim.rand(2) == 0 {
                            Side::Down
                        } else {
                            Side::Up
                        };
                        if sim.io.hup_armed[0] && sim.rand(3) == 0 {
                            sim.hang_up();
                        }
                        if sim.io.recv_armed[idx(side)] {
                            match sim.rand(4) {
                                0 => sim.fail(side, libc::ECONNRESET),
                                1 => sim.fail(side, libc::ENOBUFS),
                                2 => sim.eof(side),
                                _ => {
                                    if !sim.draining {
                                        sim.drain()
                                    }
                                }
                            }
                        }
                        if down.is_empty() && sim.rand(3) == 0 {
                            down = sim.mangle(FUZZ_DOWN);
                        }
                        if up.is_empty() && sim.rand(3) == 0 {
                            up = sim.mangle(FUZZ_UP);
                        }
                    }
                }
                // Buffers came back: re-arm what parked on ENOBUFS.
                if !sim.io.parked.is_empty() && sim.rand(2) == 0 {
                    let side = sim.io.parked.remove(0);
                    let mut env = env_of!(sim);
                    if !sim.ended {
                        let next = sim.s.unpark(side, &mut sim.io, &mut env);
                        sim.settle(next);
                    }
                }
            }
            // Wind down: both peers go away; whatever still waits times out.
            for _ in 0..20 {
                if sim.s.finished() {
                    break;
                }
                sim.run(true);
                for side in [Side::Down, Side::Up] {
                    if sim.io.recv_armed[idx(side)] {
                        sim.eof(side);
                    }
                }
                if sim.io.hup_armed[0] {
                    sim.hang_up();
                }
                while let Some(side) = sim.io.parked.pop() {
                    let mut env = env_of!(sim);
                    if !sim.ended {
                        let next = sim.s.unpark(side, &mut sim.io, &mut env);
                        sim.settle(next);
                    }
                }
                sim.run(true);
                let at = sim.io.now + 100_000_000;
                sim.timer(at);
            }
            sim.run(true);
            sim.assert_clean();
        });
        if let Err(e) = result {
            panic!(
                "seed {seed} failed: {:?}",
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(e.downcast_ref::<&str>().copied())
            );
        }
    }
}

#[test]
fn an_idle_session_stays_small() {
    // Memory per idle WebSocket is a headline figure (BENCHMARKS.md): guard the layout.
    // 304 (from 320): the listener's settings are the configuration's (`Config::listen`), not
    // a copy in every session; one pointer for the links past the first two (`Links::more`).
    // 248: a connection's send in flight is its queue's first chunk (one chunk slot, not
    // two); the session's clocks are 32-bit stamps; the client address is 20 bytes.
    // 224: the reason a session ends is boxed (decided as it closes); the exchange boxes
    // what only it needs, and the tunnel, now the largest phase, keeps 15-byte frame
    // trackers and its control itself (the phase's tag is a byte of its own: 56).
    // 232: the tunnel counts its messages each way (two 32-bit counters, 8 bytes in every
    // session, where a record on the heap at a tunnel's first message was 80 bytes in every
    // tunnel that carried one; what is rare goes to the session's notes).
    // 280: the request's record is inline in every phase, where each held a `Box<Req>`: 48
    // bytes more in the slab entry against a 64-byte allocation and the allocator's slack
    // around it, and an idle tunnel then holds no heap of its own (`tests/storms.rs`).
    // 272: the phase's tag is in the spare values of a `bool` at the tunnel's end (`Phase`).
    assert!(
        std::mem::size_of::<Session>() <= 272,
        "Session grew to {} bytes",
        std::mem::size_of::<Session>()
    );
    // Req lives as long as its tunnel, inline in every session's largest phase: 56 bytes
    // (what only the exchange needs is in `Terms`; it was 88).
    assert!(
        std::mem::size_of::<Req>() <= 56,
        "Req grew to {} bytes",
        std::mem::size_of::<Req>()
    );
}

/// `LIFECYCLE.md` points at the code with `file.rs:LINE` anchors: each must land on a line
/// that names what the text names just before it, so the document cannot drift from the code.
#[test]
fn lifecycle_anchors_point_at_what_they_name() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("src/session/LIFECYCLE.md")).unwrap();
    let file_of = |name: &str| match name {
        "reactor/mod.rs" => "src/reactor/mod.rs".to_string(),
        "conn.rs" => "src/reactor/conn.rs".to_string(),
        "worker.rs" => "src/worker.rs".to_string(),
        "tls/transport.rs" => "src/tls/transport.rs".to_string(),
        other => format!("src/session/{other}"),
    };
    let mut checked = 0;
    // The whole text as one line: a name and its anchor may sit on either side of a line break.
    let joined = doc.lines().collect::<Vec<_>>().join(" ");
    {
        let mut rest = joined.as_str();
        while let Some(at) = rest.find(".rs:") {
            let start = rest[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '/'))
                .map_or(0, |i| i + 1);
            let file = &rest[start..at + 3];
            let digits: String = rest[at + 4..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            // The nearest backticked name before the anchor.
            let before = &rest[..start];
            let name = before
                .rsplit('`')
                .nth(1)
                .and_then(|n| n.rsplit("::").next())
                .map(|n| {
                    n.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .unwrap_or_default();
            rest = &rest[at + 4 + digits.len()..];
            let (Ok(n), false) = (digits.parse::<usize>(), name.is_empty()) else {
                continue;
            };
            let text = std::fs::read_to_string(root.join(file_of(file))).unwrap();
            let code = text.lines().nth(n - 1).unwrap_or("");
            assert!(
                code.contains(&name),
                "LIFECYCLE.md: {file}:{n} should name `{name}`, but it is: {code}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} anchors found");
}

/// The tunnel follows WebSocket frames each way, whatever the reads' splits: at the end of a
/// frame it is at a boundary, inside one it is not, and the bytes pass unchanged. The same
/// with the 70,000-byte frame's payload spliced (odd seeds: `splice_min` 1k, so the
/// 3,000-byte frame is spliced too) or not at all (even seeds: off): while a direction
/// splices, its bytes wait in the socket for splice(2) instead of going to a recv.
#[test]
fn the_tunnel_knows_where_frames_end_in_any_split() {
    use crate::ws::{self, opcode};
    for seed in 1..200u64 {
        let runtime = if seed % 2 == 1 {
            "[runtime]\nsplice_min = \"1k\"\n"
        } else {
            "[runtime]\nsplice_min = 0\n"
        };
        let cfg = format!("{runtime}{CFG}");
        let mut sim = Sim::with_config(seed, &cfg, Phase::Request(Request::default()));
        sim.deliver(Side::Down, UPGRADE);
        sim.run(true);
        // The upstream's first frame comes in the 101's read.
        let mut resp = SWITCH.to_vec();
        resp.extend_from_slice(&ws::frame(opcode::TEXT, b"welcome", None));
        sim.deliver(Side::Up, &resp);
        sim.run(true);
        let mut up = Vec::new();
        let mut down = Vec::new();
        for i in 0..6usize {
            let len = [0, 1, 125, 126, 3000, 70_000][i];
            up.extend(ws::frame(
                opcode::BINARY,
                &vec![i as u8; len],
                Some([1, 2, 3, 4]),
            ));
            down.extend(ws::frame(opcode::BINARY, &vec![i as u8; len], None));
        }
        // Everything but the last byte of each stream, in random pieces.
        for (side, bytes) in [(Side::Down, &up), (Side::Up, &down)] {
            let mut at = 0;
            for _ in 0..100_000 {
                if at == bytes.len() - 1 {
                    break;
                }
                let n = (1 + sim.rand(20_000) as usize).min(bytes.len() - 1 - at);
                if sim.io.recv_armed[idx(side)] {
                    sim.deliver(side, &bytes[at..at + n]);
                    at += n;
                } else if sim.io.inbox[idx(side)].is_empty() {
                    sim.io.inbox[idx(side)].extend_from_slice(&bytes[at..at + n]);
                    at += n;
                }
                sim.run(true);
            }
            assert_eq!(
                at,
                bytes.len() - 1,
                "seed {seed}: the tunnel stopped reading"
            );
        }
        let Phase::Tunnel(super::tunnel::Tunnel { frames, .. }) = &sim.s.phase else {
            panic!("seed {seed}: not a tunnel: {:?}", sim.s.stage());
        };
        assert!(
            !frames[0].at_boundary() && !frames[1].at_boundary(),
            "seed {seed}"
        );
        for (side, bytes) in [(Side::Down, &up), (Side::Up, &down)] {
            sim.run(true);
            if sim.io.recv_armed[idx(side)] {
                sim.deliver(side, &bytes[bytes.len() - 1..]);
            } else {
                assert!(seed % 2 == 1, "seed {seed}: no recv armed, and no splice");
                sim.io.inbox[idx(side)].push(bytes[bytes.len() - 1]);
            }
            sim.run(true);
        }
        assert!(sim.io.inbox.iter().all(|b| b.is_empty()), "seed {seed}");
        assert_eq!(sim.io.pipes_out, 0, "seed {seed}: every pipe back");
        let spliced: u64 = sim
            .io
            .observed
            .iter()
            .map(|o| match o {
                super::Observed::Spliced(n) => u64::from(*n),
                _ => 0,
            })
            .sum();
        if seed % 2 == 1 {
            assert!(spliced > 0, "seed {seed}: nothing spliced");
        } else {
            assert_eq!(spliced, 0, "seed {seed}: spliced with splice_min = 0");
        }
        let Phase::Tunnel(super::tunnel::Tunnel { frames, .. }) = &sim.s.phase else {
            panic!("seed {seed}: not a tunnel");
        };
        assert!(frames[0].at_boundary() && !frames[0].lost(), "seed {seed}");
        assert!(frames[1].at_boundary() && !frames[1].lost(), "seed {seed}");
        // Byte-exact both ways.
        assert!(sim.io.wire[idx(Side::Up)].ends_with(&up), "seed {seed}");
        assert!(sim.io.wire[idx(Side::Down)].ends_with(&down), "seed {seed}");
    }
}

/// The tunnel's filter hook: a policy of the test's own (a toy that lets N frames from the
/// client through, then ends the tunnel), plugged in as a `FrameFilter` without a line of the
/// tunnel changing: every frame before it goes on byte-exact whatever the split, the refused
/// frame and everything after it do not, each side gets its Close, and the tunnel ends with
/// the filter's reason.
#[test]
fn a_filter_at_frame_boundaries_passes_then_ends_the_tunnel() {
    use super::filter::{FrameFilter, Verdict};
    use crate::ws::{self, FrameHeader, opcode};

    #[derive(Debug)]
    struct Toy {
        left: u32,
        seen: std::rc::Rc<std::cell::Cell<u32>>,
    }
    impl FrameFilter for Toy {
        fn frame(&mut self, from: Side, _h: &FrameHeader, _now: u64) -> Verdict {
            self.seen.set(self.seen.get() + 1);
            if from == Side::Up || self.left > 0 {
                self.left = self.left.saturating_sub(u32::from(from == Side::Down));
                return Verdict::Pass;
            }
            Verdict::Close {
                offender: 1008,
                other: 1001,
                reason: "toy",
                end: End::FrameTooLarge(from),
            }
        }
    }

    for seed in 1..60u64 {
        let mut sim = Sim::new(seed);
        sim.deliver(Side::Down, UPGRADE);
        sim.run(true);
        sim.deliver(Side::Up, SWITCH);
        sim.run(true);
        let seen = std::rc::Rc::new(std::cell::Cell::new(0));
        let Phase::Tunnel(super::tunnel::Tunnel { ctl, .. }) = &mut sim.s.phase else {
            panic!("seed {seed}: not a tunnel");
        };
        let mut k = super::phase::Control::new(None);
        k.filter = Some(Box::new(Toy {
            left: 3,
            seen: seen.clone(),
        }));
        *ctl = Some(Box::new(k));
        // Three frames pass (in random pieces), the fourth is refused with what follows it.
        let mut passed = Vec::new();
        for i in 0..3u8 {
            passed.extend(ws::frame(
                opcode::TEXT,
                &vec![b'a' + i; 10 + usize::from(i) * 200],
                Some([1, 2, 3, 4]),
            ));
        }
        let mut all = passed.clone();
        all.extend(ws::frame(opcode::BINARY, &[9; 50], Some([1, 2, 3, 4])));
        all.extend(ws::frame(opcode::TEXT, b"after", Some([1, 2, 3, 4])));
        let before = sim.io.wire[idx(Side::Up)].len();
        let mut at = 0;
        for _ in 0..10_000 {
            if at == all.len() || sim.s.stage() != Stage::Tunnel {
                break;
            }
            if sim.io.recv_armed[idx(Side::Down)] {
                let n = (1 + sim.rand(300) as usize).min(all.len() - at);
                sim.deliver(Side::Down, &all[at..at + n]);
                at += n;
            }
            sim.run(true);
        }
        // The upstream got the three frames, then a masked Close 1001, nothing else.
        let up = sim.io.wire[idx(Side::Up)][before..].to_vec();
        assert!(
            up.starts_with(&passed),
            "seed {seed}: the passed frames, byte-exact"
        );
        let rest = &up[passed.len()..];
        let h = ws::parse_header(rest).unwrap().unwrap();
        assert_eq!(h.opcode, opcode::CLOSE, "seed {seed}");
        let mut payload = rest[h.header_len..h.header_len + h.len as usize].to_vec();
        ws::apply_mask(&mut payload, h.mask.expect("masked toward the upstream"), 0);
        assert_eq!(&payload[..2], &1001u16.to_be_bytes(), "seed {seed}");
        assert_eq!(
            rest.len(),
            h.header_len + h.len as usize,
            "seed {seed}: nothing after"
        );
        // The client got its Close 1008 (the stream toward it was at a boundary).
        let down = &sim.io.wire[idx(Side::Down)];
        let close = ws::frame(opcode::CLOSE, &ws::close_payload(1008, "toy"), None);
        assert!(down.ends_with(&close), "seed {seed}");
        assert_eq!(
            seen.get(),
            4,
            "seed {seed}: shown every frame up to the refused one"
        );
        // Both sides were shut once their Closes went out. The offender is still read (what
        // it sends is dropped: closing it with bytes unread would reset it, and the reset
        // would take its Close with it) until it closes, or `LINGER_MS` at most.
        sim.run(true);
        assert_eq!(sim.s.stage(), Stage::Tunnel, "seed {seed}: lingering");
        assert!(
            sim.io.recv_armed[idx(Side::Down)],
            "seed {seed}: the offender read"
        );
        let up_before = sim.io.wire[idx(Side::Up)].len();
        sim.deliver(
            Side::Down,
            &ws::frame(opcode::TEXT, b"still talking", Some([1, 2, 3, 4])),
        );
        sim.run(true);
        assert_eq!(
            sim.io.wire[idx(Side::Up)].len(),
            up_before,
            "seed {seed}: dropped"
        );
        match seed % 4 {
            0 | 2 => {
                sim.eof(Side::Down);
                sim.run(true);
            }
            1 => {
                let at = sim.io.now + super::LINGER_MS;
                sim.timer(at);
                sim.run(true);
            }
            _ => {
                // It keeps sending, each time within `LINGER_MS` of the last (a loaded client
                // still pushing what it had, its Close not read yet): the linger goes on while
                // it does, and ends `LINGER_TIME_MS` after the refusal at the latest.
                let began = sim.io.now;
                let step = super::LINGER_MS - 500;
                let mut t = began;
                while t + step < began + super::LINGER_TIME_MS {
                    t += step;
                    sim.timer(t);
                    assert_eq!(
                        sim.s.stage(),
                        Stage::Tunnel,
                        "seed {seed}: lingering at {t}"
                    );
                    sim.deliver(
                        Side::Down,
                        &ws::frame(opcode::TEXT, b"more", Some([1, 2, 3, 4])),
                    );
                    sim.run(true);
                }
                assert_eq!(sim.io.wire[idx(Side::Up)].len(), up_before, "seed {seed}");
                sim.timer(began + super::LINGER_TIME_MS - 1);
                assert_eq!(sim.s.stage(), Stage::Tunnel, "seed {seed}: not yet");
                sim.timer(began + super::LINGER_TIME_MS);
                sim.run(true);
            }
        }
        sim.assert_clean();
        assert_eq!(
            sim.io.logs,
            vec!["GET /ws/chat 101 frame-too-large"],
            "seed {seed}"
        );
    }

    // The stream toward the client is mid-frame when its frame is refused: its Close waits
    // for the frame under way to end. Until then the upstream is still read and the client's
    // stream stays open (shut now, it would end before the Close; a loaded client then saw a
    // bare FIN, `tests/message_policy.rs`); then the rest of the frame, the Close, nothing else.
    for seed in 1..40u64 {
        let mut sim = Sim::new(seed);
        sim.deliver(Side::Down, UPGRADE);
        sim.run(true);
        sim.deliver(Side::Up, SWITCH);
        sim.run(true);
        let Phase::Tunnel(super::tunnel::Tunnel { ctl, .. }) = &mut sim.s.phase else {
            panic!("seed {seed}: not a tunnel");
        };
        let mut k = super::phase::Control::new(None);
        k.filter = Some(Box::new(Toy {
            left: 0,
            seen: std::rc::Rc::new(std::cell::Cell::new(0)),
        }));
        *ctl = Some(Box::new(k));
        let echo = ws::frame(opcode::TEXT, &[b'e'; 100], None);
        let down_before = sim.io.wire[idx(Side::Down)].len();
        sim.deliver(Side::Up, &echo[..40]);
        sim.run(true);
        sim.deliver(
            Side::Down,
            &ws::frame(opcode::BINARY, &[9; 50], Some([1, 2, 3, 4])),
        );
        sim.run(true);
        assert_eq!(sim.s.stage(), Stage::Tunnel, "seed {seed}");
        assert_eq!(
            &sim.io.wire[idx(Side::Down)][down_before..],
            &echo[..40],
            "seed {seed}: no Close in the middle of a frame"
        );
        assert!(
            !sim.io.shut[idx(Side::Down)],
            "seed {seed}: the client's stream stays open for its Close"
        );
        assert!(
            sim.io.recv_armed[idx(Side::Up)],
            "seed {seed}: the upstream is still read"
        );
        let mut rest = echo[40..].to_vec();
        rest.extend(ws::frame(opcode::TEXT, b"after", None));
        sim.deliver(Side::Up, &rest);
        sim.run(true);
        let mut want = echo.clone();
        want.extend(ws::frame(
            opcode::CLOSE,
            &ws::close_payload(1008, "toy"),
            None,
        ));
        assert_eq!(
            &sim.io.wire[idx(Side::Down)][down_before..],
            &want[..],
            "seed {seed}: the frame's end, the Close, nothing after"
        );
        assert!(
            sim.io.shut[idx(Side::Down)],
            "seed {seed}: shut behind its Close"
        );
        // What the upstream sends after it goes nowhere.
        if sim.io.recv_armed[idx(Side::Up)] {
            sim.deliver(Side::Up, &ws::frame(opcode::TEXT, b"later", None));
            sim.run(true);
        }
        assert_eq!(
            &sim.io.wire[idx(Side::Down)][down_before..],
            &want[..],
            "seed {seed}: nothing after the Close"
        );
        sim.eof(Side::Down);
        sim.run(true);
        let end = sim.io.now + super::LINGER_TIME_MS;
        sim.timer(end);
        sim.run(true);
        sim.assert_clean();
    }
}

/// A protocol added as a type, the way HTTP/2 will be: it answers whatever the client sends
/// with a fixed response and ends once that is sent, or ends the session when the client says
/// nothing for a second. Nothing in `Links`, the reactor or the worker knows it.
#[derive(Debug, Default)]
struct Fixed {
    answered: bool,
}

const FIXED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nhi\n";

impl super::protocol::Protocol for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        _from: ConnId,
        c: Chunk,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> super::protocol::Step {
        io.release(c);
        if !std::mem::replace(&mut self.answered, true) {
            cx.send_built(Side::Down, io, |out| out.extend_from_slice(FIXED));
        }
        super::protocol::Step::Continue
    }

    fn wants(&self, _cx: &Cx, id: ConnId, _room: bool) -> bool {
        id == ConnId::CLIENT && !self.answered
    }

    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        (!self.answered).then_some(cx.phase_ms.at(now) + 1000)
    }

    fn timer<I: Io + ?Sized>(
        &mut self,
        _cx: &mut Cx,
        _now: u64,
        _io: &mut I,
        _env: &mut Env<'_>,
    ) -> super::protocol::Step {
        super::protocol::Step::Close(End::HeaderTimeout)
    }

    fn settle<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        _io: &mut I,
        _env: &mut Env<'_>,
    ) -> super::protocol::Step {
        if self.answered && cx.links.get(Side::Down).flushed() {
            super::protocol::Step::Close(End::Done)
        } else {
            super::protocol::Step::Continue
        }
    }
}

#[test]
fn a_protocol_added_as_a_type_runs_on_the_same_links() {
    for seed in 1..200 {
        let mut sim = Sim::with(seed, Phase::Other(Box::new(Fixed::default())));
        assert_eq!(sim.s.stage(), Stage::Other("fixed"));
        // Whatever the client sends, in any split; completions in random order, sends short.
        let hello = b"hello, fixed protocol";
        let cut = 1 + sim.rand(hello.len() as u64 - 1) as usize;
        sim.deliver(Side::Down, &hello[..cut]);
        sim.run(true);
        if sim.io.recv_armed[0] {
            sim.deliver(Side::Down, &hello[cut..]);
        }
        sim.run(true);
        assert_eq!(sim.io.wire[0], FIXED, "seed {seed}");
        sim.assert_clean();
    }
    // Its timer: a client that says nothing is closed at the protocol's deadline.
    let mut sim = Sim::with(7, Phase::Other(Box::new(Fixed::default())));
    assert_eq!(sim.s.deadline(sim.io.now), Some(1000));
    sim.timer(999);
    assert!(!sim.ended);
    sim.timer(1000);
    sim.run(true);
    assert!(sim.io.wire[0].is_empty());
    assert_eq!(sim.s.end(), Some(End::HeaderTimeout));
    sim.assert_clean();
}

/// A protocol added as a type that reads the client's first bytes and hands the connection to
/// HTTP/1 with them (as a protocol sniffing a preface would): `Step::Become` from an added
/// protocol to a built-in one.
#[derive(Debug, Default)]
struct Sniff;

impl super::protocol::Protocol for Sniff {
    fn name(&self) -> &'static str {
        "sniff"
    }

    fn bytes<I: Io + ?Sized>(
        &mut self,
        _cx: &mut Cx,
        _from: ConnId,
        c: Chunk,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> super::protocol::Step {
        let head = io.data_of(c).to_vec();
        io.release(c);
        super::protocol::Step::Become(Phase::Request(Request {
            head,
            granted: None,
        }))
    }
}

#[test]
fn an_added_protocol_hands_the_connection_to_http1() {
    for seed in 1..100 {
        let mut sim = Sim::with(seed, Phase::Other(Box::new(Sniff)));
        assert_eq!(sim.s.stage(), Stage::Other("sniff"));
        // The first piece goes to the added protocol, the rest to the request head it became.
        let cut = 1 + sim.rand(UPGRADE.len() as u64 - 1) as usize;
        sim.deliver(Side::Down, &UPGRADE[..cut]);
        assert_ne!(sim.s.stage(), Stage::Other("sniff"), "seed {seed}");
        if cut < UPGRADE.len() {
            assert_eq!(sim.s.stage(), Stage::Request);
            sim.deliver(Side::Down, &UPGRADE[cut..]);
        }
        sim.run(true);
        assert_eq!(sim.s.stage(), Stage::Proxy, "seed {seed}");
        assert!(
            sim.wire(Side::Up)
                .starts_with("GET /ws/chat HTTP/1.1\r\nHost: h\r\n")
        );
        sim.deliver(Side::Up, SWITCH);
        sim.run(true);
        assert_eq!(sim.s.stage(), Stage::Tunnel);
        assert!(
            sim.wire(Side::Down)
                .starts_with("HTTP/1.1 101 Switching Protocols\r\n")
        );
        sim.eof(Side::Down);
        sim.run(true);
        sim.eof(Side::Up);
        sim.run(true);
        sim.assert_clean();
        assert_eq!(sim.io.logs, vec!["GET /ws/chat 101 done"], "seed {seed}");
    }
}

/// A protocol added as a type that keeps several upstream connections at once (as HTTP/2's
/// streams will): the client's request goes to two servers, on the first upstream connection
/// and on one more the links add; each answers and closes; the client gets both answers, in
/// the order of the connections, then the session ends. Nothing in `Links`, the reactor or the
/// worker knows it.
#[derive(Debug, Default)]
struct Fan {
    /// The upstream connections, once opened.
    ups: Vec<ConnId>,
    /// What each has answered, and whether it has finished.
    answers: Vec<(Vec<u8>, bool)>,
    answered: bool,
}

impl Fan {
    fn open<I: Io + ?Sized>(&mut self, cx: &mut Cx, request: &[u8], io: &mut I) {
        let addrs: Vec<SocketAddr> = cx.cfg.upstreams[0].peers.iter().map(|p| p.addr).collect();
        for (i, addr) in addrs.into_iter().enumerate() {
            let id = if i == 0 {
                ConnId::UPSTREAM
            } else {
                cx.links.add().expect("room for another connection")
            };
            let fd = io.connect(addr, None, id).expect("fake connect");
            let t = cx.links.get_mut(id);
            t.reset_fd(io, fd, None, None).expect("plain");
            t.connect_started();
            let c = io.put(request.to_vec());
            cx.send_to(id, c, io);
            self.ups.push(id);
            self.answers.push((Vec::new(), false));
        }
    }

    fn index(&self, id: ConnId) -> Option<usize> {
        self.ups.iter().position(|u| *u == id)
    }
}

impl super::protocol::Protocol for Fan {
    fn name(&self) -> &'static str {
        "fan"
    }

    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> super::protocol::Step {
        let bytes = io.data_of(c).to_vec();
        io.release(c);
        match self.index(from) {
            None if self.ups.is_empty() => self.open(cx, &bytes, io),
            None => {}
            Some(i) => self.answers[i].0.extend_from_slice(&bytes),
        }
        super::protocol::Step::Continue
    }

    fn eof<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        io: &mut I,
    ) -> super::protocol::Step {
        let Some(i) = self.index(from) else {
            return super::protocol::Step::Close(End::ClientClosed);
        };
        self.answers[i].1 = true;
        if self.answers.iter().all(|a| a.1) && !self.answered {
            self.answered = true;
            let all: Vec<u8> = self.answers.iter().flat_map(|a| a.0.clone()).collect();
            let c = io.put(all);
            cx.send_to(ConnId::CLIENT, c, io);
        }
        super::protocol::Step::Continue
    }

    fn connected<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        id: ConnId,
        res: i32,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> super::protocol::Step {
        if res != 0 {
            return super::protocol::Step::Respond(502, End::UpstreamError(-res));
        }
        let t = cx.links.get_mut(id);
        t.mark_ready();
        t.kick(io, id);
        super::protocol::Step::Continue
    }

    fn wants(&self, _cx: &Cx, id: ConnId, _room: bool) -> bool {
        match self.index(id) {
            None => self.ups.is_empty(),
            Some(i) => !self.answers[i].1,
        }
    }

    fn settle<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        _io: &mut I,
        _env: &mut Env<'_>,
    ) -> super::protocol::Step {
        if self.answered && cx.links.down.flushed() {
            super::protocol::Step::Close(End::Done)
        } else {
            super::protocol::Step::Continue
        }
    }
}

#[test]
fn a_protocol_added_as_a_type_keeps_several_upstream_connections() {
    for seed in 1..200 {
        let mut sim = Sim::with(seed, Phase::Other(Box::new(Fan::default())));
        sim.deliver(ConnId::CLIENT, b"question");
        // Connects, sends (short ones too) and their completions, in random order.
        sim.run(true);
        for id in [ConnId(1), ConnId(2)] {
            assert_eq!(sim.io.wire[idx(id)], b"question", "seed {seed}: {id:?}");
        }
        // The second server answers first, in two pieces; each closes after its answer.
        sim.deliver(ConnId(2), b"two");
        sim.run(true);
        sim.deliver(ConnId(1), b"one ");
        sim.deliver(ConnId(2), b"!");
        sim.eof(ConnId(2));
        sim.run(true);
        assert!(
            sim.io.wire[0].is_empty(),
            "seed {seed}: answered before both were whole"
        );
        sim.eof(ConnId(1));
        sim.run(true);
        assert_eq!(sim.io.wire[0], b"one two!", "seed {seed}");
        // Every socket closed, the extra one included, with nothing in flight on any.
        sim.assert_clean();
    }
}

/// A tunnel under `splice_min = 1k` (and `send_timeout` 30 s), its upgrade through.
fn splicing_tunnel() -> Sim {
    let cfg = format!("[runtime]\nsplice_min = \"1k\"\n{CFG}");
    let cfg = cfg.replace(
        "path = \"/ws/\"\nupstream = \"b\"",
        "path = \"/ws/\"\nupstream = \"b\"\nsend_timeout = \"30s\"",
    );
    Sim::tunnel(&cfg)
}

fn spliced_bytes(sim: &Sim) -> u64 {
    sim.io
        .observed
        .iter()
        .map(|o| match o {
            super::Observed::Spliced(n) => u64::from(*n),
            _ => 0,
        })
        .sum()
}

/// A bulk frame from the upstream is spliced after what was queued before it; the proxy's
/// drain Close waits for the frame's end (its last bytes in the pipe), then goes; the
/// client's reply ends the tunnel with nothing lost, and the pipe went back empty.
#[test]
fn a_spliced_frame_keeps_its_place_and_a_close_waits_for_its_end() {
    use crate::ws::{self, opcode};
    let mut sim = splicing_tunnel();
    let big = ws::frame(opcode::BINARY, &vec![7u8; 200_000], None);
    let mut stream = ws::frame(opcode::TEXT, b"before", None);
    stream.extend_from_slice(&big);
    stream.extend(ws::frame(opcode::TEXT, b"after", None));
    // The first read brings the small frame and the big one's header: the rest waits in
    // the socket, for splice(2).
    sim.deliver(Side::Up, &stream[..3000]);
    sim.io.inbox[idx(Side::Up)].extend_from_slice(&stream[3000..]);
    // Shutdown reaches the tunnel while the frame is in flight: its Close waits.
    let mut env = env_of!(sim);
    let next = sim.s.drain_tunnel(&mut sim.io, &mut env);
    sim.settle(next);
    sim.run(true);
    assert!(
        spliced_bytes(&sim) >= 190_000,
        "spliced {}",
        spliced_bytes(&sim)
    );
    assert_eq!(sim.io.pipes_out, 0, "the pipe went back");
    let wire = &sim.io.wire[idx(Side::Down)];
    let head = SWITCH.len();
    let close = ws::frame(
        opcode::CLOSE,
        &ws::close_payload(1012, "service restart"),
        None,
    );
    // Everything the upstream sent up to the end of the spliced frame, in order, then our
    // Close at that boundary, and nothing after it (the frame that followed is not sent).
    assert!(wire[head..].starts_with(&stream[..stream.len() - 7]));
    assert_eq!(&wire[head + stream.len() - 7..], &close[..]);
    // The client answers the Close: the tunnel ends.
    sim.deliver(
        Side::Down,
        &ws::frame(opcode::CLOSE, &[3, 0xf4], Some([1, 2, 3, 4])),
    );
    sim.run(true);
    sim.eof(Side::Down);
    sim.run(true);
    sim.eof(Side::Up);
    sim.run(true);
    sim.assert_clean();
    assert_eq!(sim.s.end(), Some(End::Drained));
}

/// A client that stops reading while a frame is spliced toward it: the pipe's bytes wait,
/// nothing more is read from the upstream, and `send_timeout` ends the tunnel as it ends a
/// send that makes no progress.
#[test]
fn a_splice_into_a_peer_that_does_not_read_is_timed_out() {
    use crate::ws::{self, opcode};
    let mut sim = splicing_tunnel();
    sim.io.full[idx(Side::Down)] = true;
    let big = ws::frame(opcode::BINARY, &vec![1u8; 500_000], None);
    sim.deliver(Side::Up, &big[..2000]);
    sim.run(true);
    sim.io.inbox[idx(Side::Up)].extend_from_slice(&big[2000..]);
    sim.run(true);
    // The pipe fills and waits for the client; the rest waits in the upstream's socket,
    // not read through buffers meanwhile.
    assert!(sim.io.inbox[idx(Side::Up)].len() >= big.len() - 2000 - PIPE_CAP);
    assert!(!sim.io.recv_armed[idx(Side::Up)]);
    assert!(
        sim.io.ready_armed[idx(Side::Down)][1],
        "waiting for the client to read"
    );
    sim.timer(sim.io.now + 10_000);
    assert_eq!(sim.s.stage(), Stage::Tunnel, "not before send_timeout");
    sim.timer(sim.io.now + 31_000);
    sim.run(true);
    sim.assert_clean();
    assert_eq!(sim.s.end(), Some(End::SendTimeout));
}

/// The upstream ends its stream in the middle of a spliced frame: what it sent reaches the
/// client before the FIN, and the tunnel ends when the client ends its side too.
#[test]
fn a_fin_during_a_splice_goes_after_the_spliced_bytes() {
    use crate::ws::{self, opcode};
    let mut sim = splicing_tunnel();
    let big = ws::frame(opcode::BINARY, &vec![9u8; 100_000], None);
    sim.deliver(Side::Up, &big[..1500]);
    sim.io.inbox[idx(Side::Up)].extend_from_slice(&big[1500..80_000]);
    sim.io.inbox_eof[idx(Side::Up)] = true;
    sim.run(true);
    assert_eq!(
        &sim.io.wire[idx(Side::Down)][SWITCH.len()..],
        &big[..80_000],
        "every byte before the FIN"
    );
    assert!(sim.io.shut[idx(Side::Down)], "the FIN passed on");
    sim.eof(Side::Down);
    sim.run(true);
    sim.assert_clean();
    assert_eq!(sim.s.end(), Some(End::Done));
}

/// With no pipe to be had (the process's pipes are all in use), a bulk frame goes through
/// buffers as before.
#[test]
fn without_a_pipe_a_bulk_frame_goes_through_buffers() {
    use crate::ws::{self, opcode};
    let mut sim = splicing_tunnel();
    sim.io.pipe_limit = Some(0);
    let big = ws::frame(opcode::BINARY, &vec![3u8; 100_000], Some([1, 2, 3, 4]));
    sim.deliver(Side::Down, &big[..1000]);
    sim.io.inbox[idx(Side::Down)].extend_from_slice(&big[1000..]);
    sim.run(true);
    assert_eq!(spliced_bytes(&sim), 0);
    assert!(sim.io.wire[idx(Side::Up)].ends_with(&big));
    assert!(sim.io.recv_armed[idx(Side::Down)]);
}
