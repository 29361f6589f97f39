//! The session state machine: one client connection and (at most) one upstream connection.
//!
//! `Request → Connecting → Proxy (response head, then HTTP relay) | Tunnel → Closing`.
//!
//! Handlers decide; they never touch the ring. Every effect goes through [`Io`], which the
//! worker implements over its ring and the tests implement with a recording fake. See
//! `LIFECYCLE.md` beside this file for the phases and invariants.

pub mod pipe;

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::config::Config;
use crate::http::{self, BodyTracker, ClientConnection, HeadError, HeadLimits};
pub use crate::sys::errno_name;
use crate::upstream::{RoundRobin, Tried};
use crate::uring::{Chunk, Op, Side, Src};
pub use pipe::{Pipe, QUEUE, Recv, Shut};

/// Largest response head accepted from an upstream.
pub const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// Interim (1xx) responses passed on per request: a backend streaming `100 Continue` gets a
/// 502 past this many, instead of growing what waits for the client.
pub const INTERIM_MAX: u8 = 8;
/// Bytes of interim responses passed on per request.
pub const INTERIM_BYTES_MAX: u32 = 16 * 1024;

/// Effects a handler asks for. Implemented by the worker over its ring.
pub trait Io {
    /// Coarse monotonic milliseconds (one reading per event-loop turn).
    fn now_ms(&self) -> u64;
    /// Bytes of a received pool buffer.
    fn data(&self, bid: u16, len: u32) -> &[u8];
    /// Store bytes for sending; returns a chunk covering all of them.
    fn put(&mut self, bytes: Vec<u8>) -> Chunk;
    /// Give a chunk's memory back (pool buffer to the ring, heap bytes freed).
    fn release(&mut self, c: Chunk);
    /// The send of `c` has completed (called first thing on every send completion).
    fn sent(&mut self, c: Chunk);
    /// Arm a recv on `fd` that brings about `buffers` pool buffers and then ends (its last
    /// completion without `more`): see `Ring::recv_capped`.
    fn recv(&mut self, fd: RawFd, side: Side, buffers: u32);
    /// The worker's buffer pool is down to its floor: only sessions that are making progress
    /// may take more.
    fn pool_low(&self) -> bool;
    /// Arm a one-shot poll that completes when the peer of `fd` hangs up.
    fn watch_hangup(&mut self, fd: RawFd, side: Side);
    /// Cancel the recv armed on `side`.
    fn cancel(&mut self, side: Side, op: crate::uring::Op);
    fn send(&mut self, fd: RawFd, side: Side, c: Chunk);
    /// Create an upstream socket (bound to `source` when given) and start connecting it; the
    /// errno when the socket cannot be made or bound.
    fn connect(&mut self, addr: SocketAddr, source: Option<std::net::IpAddr>)
    -> Result<RawFd, i32>;
    /// `shutdown(SHUT_WR)` on `fd`, now. A plain syscall, not an SQE: it only queues a FIN,
    /// and io_uring always hands IORING_OP_SHUTDOWN to an io-wq thread (REQ_F_FORCE_ASYNC),
    /// which cost a thread wake-up and ~20% of the proxy's CPU per closed WebSocket.
    fn shutdown(&mut self, fd: RawFd);
    /// Close an fd that has no op in flight.
    fn close(&mut self, fd: RawFd);
    /// Put the session on the wait list for buffers (its recv hit ENOBUFS).
    fn park(&mut self, side: Side);
    /// Emit an access-log line.
    fn log(&mut self, line: &AccessLog);
}

/// What a handler needs from the worker besides I/O: the config and the balancers.
pub struct Env<'a> {
    pub cfg: &'a Config,
    /// One balancer per upstream, indexed like `cfg.upstreams`.
    pub rr: &'a mut [RoundRobin],
    /// The worker is draining (shutdown began): answer what is in progress, then close
    /// instead of keeping the client connection alive.
    pub draining: bool,
}

/// Why a request or session ended (the access log's last field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Response complete (HTTP) or both sides closed (tunnel).
    Done,
    /// The client closed or reset.
    ClientClosed,
    /// The upstream closed (tunnel) or closed before the response was complete.
    UpstreamClosed,
    /// Socket error, with errno.
    ClientError(i32),
    UpstreamError(i32),
    /// Not HTTP, or broken framing: 400.
    BadRequest(&'static str),
    /// Head (or one header line) over the limit: 431.
    HeadTooLarge,
    /// Request line over the limit: 414.
    UriTooLong,
    /// The request body stopped arriving for body_timeout: 408.
    BodyTimeout,
    /// An idle keep-alive connection reached keepalive_timeout (not logged, as in nginx).
    KeepaliveTimeout,
    /// No location matched: 404.
    NoRoute,
    /// Every server refused or timed out: 502.
    NoUpstream,
    /// The upstream's response could not be used: 502.
    BadResponse(&'static str),
    /// The upstream said nothing within read_timeout: 504.
    UpstreamTimeout,
    /// The client did not finish its head within header_timeout.
    HeaderTimeout,
    /// No bytes either way within read_timeout.
    IdleTimeout,
    /// A send made no progress within send_timeout.
    SendTimeout,
    /// The worker is stopping.
    Shutdown,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Done => write!(f, "done"),
            End::ClientClosed => write!(f, "client-closed"),
            End::UpstreamClosed => write!(f, "upstream-closed"),
            End::ClientError(e) => write!(f, "client-error:{}", errno_name(*e)),
            End::UpstreamError(e) => write!(f, "upstream-error:{}", errno_name(*e)),
            End::BadRequest(why) => write!(f, "bad-request:{}", why.replace(' ', "-")),
            End::HeadTooLarge => write!(f, "head-too-large"),
            End::UriTooLong => write!(f, "uri-too-long"),
            End::BodyTimeout => write!(f, "body-timeout"),
            End::KeepaliveTimeout => write!(f, "keepalive-timeout"),
            End::NoRoute => write!(f, "no-route"),
            End::NoUpstream => write!(f, "no-upstream"),
            End::BadResponse(why) => write!(f, "bad-response:{}", why.replace(' ', "-")),
            End::UpstreamTimeout => write!(f, "upstream-timeout"),
            End::HeaderTimeout => write!(f, "header-timeout"),
            End::IdleTimeout => write!(f, "idle-timeout"),
            End::SendTimeout => write!(f, "send-timeout"),
            End::Shutdown => write!(f, "shutdown"),
        }
    }
}

/// One access-log line.
#[derive(Debug)]
pub struct AccessLog<'a> {
    pub client: SocketAddr,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub duration_ms: u64,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes from the upstream.
    pub bytes_out: u64,
    pub end: End,
    pub tunnel: bool,
}

/// Phase of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading (and parsing) a request head.
    Request,
    /// Connecting to an upstream server.
    Connecting,
    /// Connected: request going up, response head or body coming down.
    Proxy,
    /// 101 seen: bytes flow both ways untouched.
    Tunnel,
    /// Sending our own response (error page), then closing.
    Respond,
    /// Cancelling ops and closing sockets.
    Closing,
}

/// What bytes from the client are, at this point.
#[derive(Debug)]
enum Upward {
    /// Part of a request head.
    Head(Vec<u8>),
    /// The request body, counted off.
    Body(BodyTracker),
    /// Tunnel (or an upgrade request): all forwarded.
    Stream,
    /// After the body: the next request's bytes, kept until the response is done.
    Hold(Vec<u8>),
    /// Ignored (we are answering with an error and closing).
    Discard,
}

/// What bytes from the upstream are.
#[derive(Debug)]
enum Downward {
    /// Nothing expected yet.
    Idle,
    Head(Vec<u8>),
    Body(BodyTracker),
    Stream,
    Discard,
}

/// Per-request state, boxed so an idle session stays small.
#[derive(Debug)]
struct Req {
    /// `METHOD\nHOST\nPATH\nUPGRADE` in one allocation (none of them can contain a newline:
    /// httparse refuses one in a request line or a header value);
    /// UPGRADE is the protocol list the client asked for, empty when this is not an upgrade.
    text: Box<str>,
    /// Forwarded as an upgrade (an allowed protocol, HTTP/1.1).
    upgrade: bool,
    keep_alive: bool,
    is_head: bool,
    upstream: u16,
    /// Index of the server in use; `NO_PEER` before one is chosen (a sentinel, not an
    /// Option: two bytes less in a struct that lives as long as a tunnel).
    peer: u16,
    tried: Tried,
    connect_ms: u32,
    read_ms: u32,
    send_ms: u32,
    body_ms: u32,
    status: u16,
    /// Interim (1xx) responses passed on, and their bytes.
    interim: u8,
    interim_bytes: u16,
    /// Response bytes have been queued to the client.
    responded: bool,
    logged: bool,
    /// A 101 turned this request into a tunnel.
    tunnel: bool,
    started_ms: u64,
    /// Bytes from the client for this request (head included).
    bytes_in: u64,
    /// Bytes from the upstream for this request.
    bytes_out: u64,
}

/// How long a lingering close waits for the client to finish sending (nginx: lingering_timeout).
pub const LINGER_MS: u64 = 2000;

/// The lingering close after an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Linger {
    No,
    /// Linger once the answer is flushed.
    AfterFlush,
    /// Write side shut since `phase_ms`; discarding what the client sends until it closes or
    /// the time is up.
    On,
}

/// `Req::peer` before a server is chosen.
const NO_PEER: u16 = u16::MAX;

/// Milliseconds of a configured duration, as stored per request (capped at ~49 days).
fn ms32(d: std::time::Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

impl Req {
    fn part(&self, i: usize) -> &str {
        self.text.split('\n').nth(i).unwrap_or("-")
    }

    fn method(&self) -> &str {
        self.part(0)
    }

    fn host(&self) -> &str {
        self.part(1)
    }

    fn path(&self) -> &str {
        self.part(2)
    }

    /// The protocols the client asked to upgrade to ("" when not an upgrade).
    fn upgrade_proto(&self) -> &str {
        self.text.split('\n').nth(3).unwrap_or("")
    }

    /// A request whose head could not be parsed (logged with `-` fields).
    fn unparsed(started_ms: u64, bytes_in: u64) -> Req {
        Req {
            text: "-\n-\n-\n".into(),
            upgrade: false,
            keep_alive: false,
            is_head: false,
            upstream: u16::MAX,
            peer: NO_PEER,
            tried: Tried::default(),
            connect_ms: 0,
            read_ms: 0,
            send_ms: 0,
            body_ms: 0,
            status: 0,
            interim: 0,
            interim_bytes: 0,
            responded: false,
            logged: false,
            tunnel: false,
            started_ms,
            bytes_in,
            bytes_out: 0,
        }
    }
}

/// Settings fixed for a session when it is accepted (from its listener's default server).
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    pub index: u16,
    pub header_timeout_ms: u32,
    pub header_max: u32,
    pub request_line_max: u32,
    pub header_line_max: u32,
    /// How long an idle keep-alive connection waits for its next request; 0: no keep-alive.
    pub keepalive_timeout_ms: u32,
    /// Requests served on one connection before it is closed.
    pub keepalive_requests: u32,
    /// `X-Forwarded-Proto` value.
    pub tls: bool,
}

impl Listen {
    /// The settings of `server` for sessions accepted on listener `index`.
    pub fn of(index: usize, server: &crate::config::Server) -> Listen {
        Listen {
            index: index as u16,
            header_timeout_ms: ms32(server.header_timeout),
            header_max: server.header_max,
            request_line_max: server.request_line_max,
            header_line_max: server.header_line_max,
            keepalive_timeout_ms: ms32(server.keepalive_timeout),
            keepalive_requests: server.keepalive_requests,
            tls: false,
        }
    }

    fn limits(&self) -> HeadLimits {
        HeadLimits {
            head_max: self.header_max as usize,
            request_line_max: self.request_line_max as usize,
            header_line_max: self.header_line_max as usize,
        }
    }
}

/// A session: client socket, upstream socket, and where the exchange between them stands.
#[derive(Debug)]
pub struct Session {
    pub stage: Stage,
    pub down: Pipe,
    pub up: Pipe,
    /// Cancel ops in flight for this session.
    pub cancels: u8,
    upward: Upward,
    downward: Downward,
    listen: Listen,
    client: SocketAddr,
    req: Option<Box<Req>>,
    /// When the current phase's clock started (head read, connect).
    phase_ms: u64,
    last_up_ms: u64,
    last_down_ms: u64,
    /// The connect attempt timed out; its cancel is on its way.
    connect_timed_out: bool,
    /// A connect is waiting for the previous upstream socket to finish closing.
    connect_waiting: bool,
    /// Close once everything queued for the client is sent.
    close_after_flush: bool,
    /// Our own error answer went out while the client may still be sending: after the
    /// flush, half-close and discard what it sends until it closes or `LINGER_MS` pass
    /// (nginx's lingering close), so the answer is not lost to a reset.
    linger: Linger,
    end: Option<End>,
    /// Requests answered on this connection.
    served: u32,
    /// The time this session is scheduled at in the worker's timer wheel (0: not scheduled).
    pub timer_at: u64,
}

impl Session {
    /// A session for a freshly accepted client socket.
    pub fn new(fd: RawFd, client: SocketAddr, listen: Listen, now_ms: u64) -> Session {
        Session {
            stage: Stage::Request,
            down: Pipe::new(fd),
            up: Pipe::new(-1),
            cancels: 0,
            upward: Upward::Head(Vec::new()),
            downward: Downward::Idle,
            listen,
            client,
            req: None,
            phase_ms: now_ms,
            last_up_ms: now_ms,
            last_down_ms: now_ms,
            connect_timed_out: false,
            connect_waiting: false,
            close_after_flush: false,
            linger: Linger::No,
            end: None,
            served: 0,
            timer_at: 0,
        }
    }

    /// Start: arm the client recv.
    pub fn start(&mut self, io: &mut impl Io) {
        self.sync_recv(io);
    }

    /// Closing is complete: no fd open, no op in flight. The worker frees the slot.
    pub fn finished(&self) -> bool {
        self.stage == Stage::Closing && self.down.fd < 0 && self.up.fd < 0 && self.cancels == 0
    }

    /// Why it ended (once closing).
    pub fn end(&self) -> Option<End> {
        self.end
    }

    fn pipe(&mut self, side: Side) -> &mut Pipe {
        match side {
            Side::Down => &mut self.down,
            Side::Up => &mut self.up,
        }
    }

    // ---- events -------------------------------------------------------------------------

    /// A recv completion. `bid` is the pool buffer when `res > 0`.
    pub fn on_recv(
        &mut self,
        side: Side,
        res: i32,
        more: bool,
        bid: Option<u16>,
        io: &mut impl Io,
        env: &mut Env<'_>,
    ) {
        {
            let p = self.pipe(side);
            if !more {
                p.ops -= 1;
                p.recv = Recv::Off;
            }
        }
        if res > 0 {
            let bid = bid.expect("recv with data carries a buffer");
            self.on_data(side, bid, res as u32, io, env);
        } else if let Some(bid) = bid {
            // A buffer with no data: just give it back.
            io.release(Chunk {
                src: Src::Pool(bid),
                off: 0,
                len: 0,
            });
        }
        if res == 0 {
            self.on_eof(side, io, env);
        } else if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::ENOBUFS => {
                    let p = self.pipe(side);
                    if p.open() && !p.parked {
                        p.parked = true;
                        io.park(side);
                    }
                }
                e => self.on_error(side, e, io),
            }
        }
        self.after(io, env);
    }

    /// A send completion.
    pub fn on_send(&mut self, side: Side, res: i32, io: &mut impl Io, env: &mut Env<'_>) {
        let now = io.now_ms();
        let closing = self.stage == Stage::Closing;
        let p = self.pipe(side);
        p.ops -= 1;
        let mut c = p.sending.take().expect("send completion without a send");
        io.sent(c);
        if res < 0 || closing || p.retiring {
            io.release(c);
            if res < 0 && !closing && res != -libc::ECANCELED {
                self.on_error(side, -res, io);
            }
        } else if (res as u32) < c.len {
            // Short send: the rest goes before anything else.
            c.off += res as u32;
            c.len -= res as u32;
            p.send_since_ms = now;
            p.sending = Some(c);
            p.ops += 1;
            io.send(p.fd, side, c);
        } else {
            io.release(c);
            self.kick(side, io);
        }
        self.after(io, env);
    }

    /// The upstream connect completed.
    pub fn on_connect(&mut self, res: i32, io: &mut impl Io, env: &mut Env<'_>) {
        self.up.ops -= 1;
        if self.stage == Stage::Closing || self.up.retiring {
            self.after(io, env);
            return;
        }
        if res == 0 && !self.connect_timed_out {
            self.up.ready = true;
            self.stage = Stage::Proxy;
            self.downward = Downward::Head(Vec::new());
            self.last_up_ms = io.now_ms();
            self.kick(Side::Up, io);
        } else {
            let why = if self.connect_timed_out {
                "connect timeout".to_string()
            } else {
                errno_name(-res)
            };
            let peer = self.peer_addr(env);
            tracing::warn!(target: "upstream", "connect to {} failed: {why}", peer.map_or("-".into(), |p| p.to_string()));
            self.connect_timed_out = false;
            // Close it through retire/maybe_close_fd (after any cancel aimed at it is back),
            // then the next server is tried, keeping the queued request.
            self.connect_waiting = true;
            self.retire(Side::Up, io);
        }
        self.after(io, env);
    }

    /// The hang-up watch completed: `res` holds the poll events (the client hung up), or an
    /// errno (cancelled).
    pub fn on_hangup(&mut self, side: Side, res: i32, io: &mut impl Io, env: &mut Env<'_>) {
        let p = self.pipe(side);
        p.ops -= 1;
        p.hup = Recv::Off;
        if res > 0 && !p.retiring && self.stage != Stage::Closing {
            self.pipe(side).eof = true;
            self.close(End::ClientClosed, io);
        }
        self.after(io, env);
    }

    /// A cancel completion.
    pub fn on_cancel(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        self.cancels -= 1;
        self.after(io, env);
    }

    /// Buffers are back: re-arm a recv parked on ENOBUFS.
    pub fn unpark(&mut self, side: Side, io: &mut impl Io, env: &mut Env<'_>) {
        self.pipe(side).parked = false;
        self.after(io, env);
    }

    /// The worker began draining: a connection waiting for a request with nothing received
    /// (idle keep-alive, or just accepted) closes now; a request in progress is answered and
    /// its connection then closed (`env.draining`); a tunnel runs on until it ends or the
    /// worker's grace runs out.
    pub fn drain(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        if self.stage == Stage::Request
            && self.req.is_none()
            && matches!(&self.upward, Upward::Head(v) if v.is_empty())
        {
            self.close(End::Shutdown, io);
        }
        self.after(io, env);
    }

    /// The worker is stopping: close now.
    pub fn shutdown(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        self.close(End::Shutdown, io);
        self.after(io, env);
    }

    /// The earliest time something must happen if nothing arrives before.
    pub fn deadline(&self) -> Option<u64> {
        let r = self.req.as_deref();
        let ms = u64::from;
        let phase = match self.stage {
            Stage::Request if self.idle_keepalive() => {
                Some(self.phase_ms + ms(self.listen.keepalive_timeout_ms))
            }
            Stage::Request => Some(self.phase_ms + ms(self.listen.header_timeout_ms)),
            Stage::Connecting if !self.connect_timed_out => {
                r.map(|r| self.phase_ms + ms(r.connect_ms))
            }
            Stage::Connecting => None,
            Stage::Proxy => r.map(|r| self.last_up_ms + ms(r.read_ms)),
            Stage::Tunnel => r.map(|r| self.last_up_ms.max(self.last_down_ms) + ms(r.read_ms)),
            Stage::Respond if self.linger == Linger::On => Some(self.phase_ms + LINGER_MS),
            Stage::Respond => None,
            Stage::Closing => None,
        };
        let send_ms = ms(r.map_or(self.listen.header_timeout_ms, |r| r.send_ms));
        let send = [&self.down, &self.up]
            .iter()
            .filter(|p| p.sending.is_some() && self.stage != Stage::Closing)
            .map(|p| p.send_since_ms + send_ms)
            .min();
        [phase, send, self.body_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Waiting for the first byte of the next request on a kept-alive connection.
    fn idle_keepalive(&self) -> bool {
        self.served > 0 && matches!(&self.upward, Upward::Head(v) if v.is_empty())
    }

    /// When a request body that stopped arriving gets its 408: only while the proxy is
    /// reading it (a body held back because the upstream is slow is not the client's fault).
    fn body_deadline(&self) -> Option<u64> {
        let r = self.req.as_deref()?;
        let reading = matches!(self.upward, Upward::Body(_)) && self.down.recv == Recv::On;
        (reading && matches!(self.stage, Stage::Connecting | Stage::Proxy))
            .then(|| self.last_down_ms + u64::from(r.body_ms))
    }

    /// The timer wheel fired for this session.
    pub fn on_timer(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        let now = io.now_ms();
        let Some(d) = self.deadline() else { return };
        if now < d {
            return;
        }
        let r = self.req.as_deref();
        let send_ms = u64::from(r.map_or(self.listen.header_timeout_ms, |r| r.send_ms));
        let stuck = [&self.down, &self.up]
            .iter()
            .any(|p| p.sending.is_some() && p.send_since_ms + send_ms <= now);
        if stuck {
            self.close(End::SendTimeout, io);
        } else if self.body_deadline().is_some_and(|b| b <= now) {
            self.respond(408, End::BodyTimeout, io);
        } else {
            match self.stage {
                Stage::Request if self.idle_keepalive() => self.close(End::KeepaliveTimeout, io),
                Stage::Request => self.close(End::HeaderTimeout, io),
                Stage::Connecting => {
                    self.connect_timed_out = true;
                    self.cancels += 1;
                    io.cancel(Side::Up, Op::Connect);
                }
                Stage::Proxy if matches!(self.downward, Downward::Head(_)) => {
                    self.respond(504, End::UpstreamTimeout, io)
                }
                Stage::Proxy | Stage::Tunnel => self.close(End::IdleTimeout, io),
                Stage::Respond => {
                    let end = self.end.unwrap_or(End::Done);
                    self.close(end, io);
                }
                Stage::Closing => {}
            }
        }
        self.after(io, env);
    }

    // ---- data ----------------------------------------------------------------------------

    fn on_data(&mut self, side: Side, bid: u16, len: u32, io: &mut impl Io, env: &mut Env<'_>) {
        let chunk = Chunk {
            src: Src::Pool(bid),
            off: 0,
            len,
        };
        let now = io.now_ms();
        if self.stage == Stage::Closing || self.pipe(side).retiring {
            io.release(chunk);
            return;
        }
        if let Some(r) = self.req.as_mut() {
            match side {
                Side::Down => r.bytes_in += u64::from(len),
                Side::Up => r.bytes_out += u64::from(len),
            }
        }
        match side {
            Side::Down => {
                self.last_down_ms = now;
                match &mut self.upward {
                    Upward::Head(v) => {
                        if v.is_empty() && self.served > 0 {
                            // The next request on a kept-alive connection: its header clock
                            // starts with its first byte, as in nginx.
                            self.phase_ms = now;
                        }
                        v.extend_from_slice(io.data(bid, len));
                        io.release(chunk);
                        self.try_request(io, env);
                    }
                    Upward::Body(t) => match t.feed(io.data(bid, len)) {
                        Ok(n) => {
                            if t.done() {
                                self.upward = Upward::Hold(io.data(bid, len)[n..].to_vec());
                            }
                            self.forward_prefix(Side::Down, chunk, n, io);
                        }
                        Err(e) => {
                            io.release(chunk);
                            self.respond(400, End::BadRequest(e.0), io);
                        }
                    },
                    Upward::Stream => self.forward(Side::Down, chunk, io),
                    Upward::Hold(stash) => {
                        // Never dropped: `want_recv` stops reading at the bound, so at most
                        // what the recv already armed may bring (QUEUE buffers) lands past it.
                        stash.extend_from_slice(io.data(bid, len));
                        io.release(chunk);
                    }
                    Upward::Discard => io.release(chunk),
                }
            }
            Side::Up => {
                self.last_up_ms = now;
                match &mut self.downward {
                    Downward::Head(v) => {
                        v.extend_from_slice(io.data(bid, len));
                        io.release(chunk);
                        self.try_response(io, env);
                    }
                    Downward::Body(t) => match t.feed(io.data(bid, len)) {
                        Ok(n) => {
                            let done = t.done();
                            self.forward_prefix(Side::Up, chunk, n, io);
                            if done {
                                self.response_done(io, env);
                            }
                        }
                        Err(e) => {
                            io.release(chunk);
                            self.close(End::BadResponse(e.0), io);
                        }
                    },
                    Downward::Stream => self.forward(Side::Up, chunk, io),
                    Downward::Idle | Downward::Discard => io.release(chunk),
                }
            }
        }
    }

    /// Forward the first `n` bytes of `c` (the part that belongs to the current message), or
    /// give the buffer back when none does.
    fn forward_prefix(&mut self, from: Side, c: Chunk, n: usize, io: &mut impl Io) {
        if n > 0 {
            self.forward(from, Chunk { len: n as u32, ..c }, io);
        } else {
            io.release(c);
        }
    }

    /// Queue `c`, received on `from`, for sending on the other side.
    fn forward(&mut self, from: Side, c: Chunk, io: &mut impl Io) {
        let to = from.peer();
        // Toward an upstream still being connected (or reconnected), bytes wait in the queue.
        let connecting = to == Side::Up && self.stage == Stage::Connecting;
        if !connecting && !self.pipe(to).open() {
            io.release(c);
            return;
        }
        if to == Side::Down
            && let Some(r) = self.req.as_mut()
        {
            r.responded = true;
        }
        self.pipe(to).push(c);
        self.kick(to, io);
    }

    /// Start the next send on `side` if none is in flight; pass a pending half-close on.
    fn kick(&mut self, side: Side, io: &mut impl Io) {
        let now = io.now_ms();
        let p = self.pipe(side);
        if p.sending.is_some() || !p.open() || !p.ready {
            return;
        }
        if let Some(c) = p.pop() {
            p.sending = Some(c);
            p.send_since_ms = now;
            p.ops += 1;
            io.send(p.fd, side, c);
        } else if p.shut == Shut::Pending {
            p.shut = Shut::Done;
            io.shutdown(p.fd);
        }
    }

    // ---- request ---------------------------------------------------------------------------

    fn try_request(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        let Upward::Head(buf) = &self.upward else {
            return;
        };
        let req = match http::parse_request(buf, &self.listen.limits()) {
            Ok(None) => return,
            Ok(Some(r)) => r,
            Err(HeadError::TooLarge) => return self.respond(431, End::HeadTooLarge, io),
            Err(HeadError::UriTooLong) => return self.respond(414, End::UriTooLong, io),
            Err(HeadError::Invalid(why)) => return self.respond(400, End::BadRequest(why), io),
        };
        let Upward::Head(buf) = std::mem::replace(&mut self.upward, Upward::Discard) else {
            unreachable!()
        };
        let now = io.now_ms();
        let cfg = env.cfg;
        // Locations match the normalised path; the request goes up as the client sent it.
        let norm = http::normalize_path(&req.path);
        let route = norm.as_ref().ok().and_then(|path| {
            cfg.find_server(usize::from(self.listen.index), req.host_name())
                .and_then(|s| {
                    cfg.find_location(s, path.as_bytes())
                        .map(|l| &cfg.servers[s].locations[l])
                })
        });
        // Only an allowed protocol (websocket by default), and never on HTTP/1.0, is tunnelled;
        // any other Upgrade is dropped and the request proxied as plain HTTP.
        let upgrade = match (&req.upgrade, route) {
            (Some(v), Some(l))
                if req.version_minor == 1 && http::upgrade_allowed(v, &l.upgrade) =>
            {
                v.as_str()
            }
            _ => "",
        };
        let host = req.host.as_deref().unwrap_or("-");
        let r = Box::new(Req {
            text: format!("{}\n{}\n{}\n{}", req.method, host, req.path, upgrade).into(),
            upgrade: !upgrade.is_empty(),
            keep_alive: req.keep_alive,
            is_head: req.is_head(),
            upstream: route.map_or(0, |l| l.upstream as u16),
            peer: NO_PEER,
            tried: Tried::new(route.map_or(0, |l| cfg.upstreams[l.upstream].peers.len())),
            connect_ms: route.map_or(0, |l| ms32(l.connect_timeout)),
            read_ms: route.map_or(0, |l| ms32(l.read_timeout)),
            send_ms: route.map_or(self.listen.header_timeout_ms, |l| ms32(l.send_timeout)),
            body_ms: route.map_or(self.listen.header_timeout_ms, |l| ms32(l.body_timeout)),
            status: 0,
            interim: 0,
            interim_bytes: 0,
            responded: false,
            logged: false,
            tunnel: false,
            started_ms: self.phase_ms,
            bytes_in: buf.len() as u64,
            bytes_out: 0,
        });
        if let Err(HeadError::Invalid(why)) = norm {
            self.req = Some(r);
            return self.respond(400, End::BadRequest(why), io);
        }
        let Some(loc) = route else {
            self.req = Some(r);
            return self.respond(404, End::NoRoute, io);
        };
        let mut out = Vec::with_capacity(req.head_len + 256);
        let fwd = http::Forwarded {
            upgrade: r.upgrade,
            client_ip: self.client.ip(),
            proto: if self.listen.tls { "https" } else { "http" },
            default_host: &cfg.upstreams[loc.upstream].name,
        };
        if let Err(HeadError::Invalid(why)) =
            http::rewrite_request(&buf[..req.head_len], &fwd, &mut out)
        {
            self.req = Some(r);
            return self.respond(400, End::BadRequest(why), io);
        }
        // The body (if any) goes up as it comes; whatever follows it is held — for an upgrade
        // until the 101 arrives (then it is tunnel data), otherwise as the next request —
        // so no byte reaches the upstream that ringway has not parsed, routed and rewritten.
        let extra = &buf[req.head_len..];
        let mut t = BodyTracker::new(req.body);
        match t.feed(extra) {
            Ok(n) => {
                out.extend_from_slice(&extra[..n]);
                self.upward = if t.done() {
                    Upward::Hold(extra[n..].to_vec())
                } else {
                    Upward::Body(t)
                };
            }
            Err(e) => {
                self.req = Some(r);
                return self.respond(400, End::BadRequest(e.0), io);
            }
        }
        self.req = Some(r);
        let head = io.put(out);
        // The head goes first: nothing can be queued toward an upstream not yet chosen.
        debug_assert!(self.up.flushed());
        self.up.push(head);
        self.phase_ms = now;
        self.connect_next(io, env);
    }

    /// Pick the next server not yet tried and start connecting; 502 when none is left.
    fn connect_next(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        if self.up.fd >= 0 {
            // The previous request's upstream socket is still closing.
            self.connect_waiting = true;
            self.stage = Stage::Connecting;
            return;
        }
        self.connect_waiting = false;
        let Some(r) = self.req.as_mut() else { return };
        let ui = usize::from(r.upstream);
        let u = &env.cfg.upstreams[ui];
        loop {
            let Some(i) = env.rr[ui].pick(u, &r.tried) else {
                return self.respond(502, End::NoUpstream, io);
            };
            r.tried.mark(i);
            r.peer = i as u16;
            let source = env.rr[ui].next_source(u);
            match io.connect(u.peers[i].addr, source) {
                Ok(fd) => {
                    self.up.reset_fd(fd);
                    self.up.ops = 1;
                    self.stage = Stage::Connecting;
                    self.phase_ms = io.now_ms();
                    return;
                }
                Err(e) => {
                    tracing::warn!(target: "upstream", "socket for {} failed: {}", u.peers[i].addr, errno_name(e));
                }
            }
        }
    }

    fn peer_addr(&self, env: &Env<'_>) -> Option<SocketAddr> {
        let r = self.req.as_deref()?;
        Some(
            env.cfg
                .upstreams
                .get(usize::from(r.upstream))?
                .peers
                .get(usize::from(r.peer))?
                .addr,
        )
    }

    // ---- response --------------------------------------------------------------------------

    fn try_response(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        loop {
            let Downward::Head(buf) = &mut self.downward else {
                return;
            };
            let Some(r) = self.req.as_mut() else { return };
            let resp = match http::parse_response(buf, RESPONSE_HEAD_MAX, r.is_head) {
                Ok(None) => return,
                Ok(Some(resp)) => resp,
                Err(HeadError::TooLarge | HeadError::UriTooLong) => {
                    return self.respond(502, End::BadResponse("response head too large"), io);
                }
                Err(HeadError::Invalid(why)) => {
                    return self.respond(502, End::BadResponse(why), io);
                }
            };
            if (100..200).contains(&resp.status) && resp.status != 101 {
                // 100 Continue and friends: pass on as they are, then read the real head;
                // bounded in number and bytes per request.
                r.interim += 1;
                let head_len = u16::try_from(resp.head_len).unwrap_or(u16::MAX);
                r.interim_bytes = r.interim_bytes.saturating_add(head_len);
                if r.interim > INTERIM_MAX || u32::from(r.interim_bytes) > INTERIM_BYTES_MAX {
                    return self.respond(502, End::BadResponse("too many interim responses"), io);
                }
                let info: Vec<u8> = buf.drain(..resp.head_len).collect();
                let c = io.put(info);
                r.responded = true;
                self.down.push(c);
                self.kick(Side::Down, io);
                continue;
            }
            let buf = std::mem::take(buf);
            let mut tunnel_start = Vec::new();
            r.status = resp.status;
            let mut out = Vec::with_capacity(resp.head_len + 64);
            if resp.status == 101 {
                if !r.upgrade {
                    return self.respond(
                        502,
                        End::BadResponse("101 to a request that did not ask to upgrade"),
                        io,
                    );
                }
                if !resp
                    .upgrade
                    .as_deref()
                    .is_some_and(|v| http::upgrade_matches(v, r.upgrade_proto()))
                {
                    return self.respond(
                        502,
                        End::BadResponse("101 without the protocol the client asked for"),
                        io,
                    );
                }
                let Upward::Hold(held) = std::mem::replace(&mut self.upward, Upward::Stream) else {
                    self.upward = Upward::Discard;
                    return self.respond(
                        502,
                        End::BadResponse("101 before the request body was complete"),
                        io,
                    );
                };
                let _ = http::rewrite_response(
                    &buf[..resp.head_len],
                    ClientConnection::Upgrade,
                    false,
                    &mut out,
                );
                out.extend_from_slice(&buf[resp.head_len..]);
                self.downward = Downward::Stream;
                r.tunnel = true;
                self.stage = Stage::Tunnel;
                // What the client sent after its request is the start of the tunnel.
                tunnel_start = held;
            } else {
                let mut t = BodyTracker::new(resp.body);
                let request_framed = !matches!(self.upward, Upward::Stream | Upward::Discard);
                let keep = r.keep_alive
                    && request_framed
                    && !t.until_close()
                    && !self.down.eof
                    && !env.draining
                    && self.listen.keepalive_timeout_ms > 0
                    && self.served.saturating_add(1) < self.listen.keepalive_requests;
                r.keep_alive = keep;
                let conn = if keep {
                    ClientConnection::KeepAlive
                } else {
                    ClientConnection::Close
                };
                let _ =
                    http::rewrite_response(&buf[..resp.head_len], conn, resp.drop_length, &mut out);
                let rest = &buf[resp.head_len..];
                match t.feed(rest) {
                    Ok(n) => out.extend_from_slice(&rest[..n]),
                    Err(e) => return self.close(End::BadResponse(e.0), io),
                }
                self.downward = Downward::Body(t);
            }
            r.responded = true;
            let c = io.put(out);
            self.down.push(c);
            self.kick(Side::Down, io);
            if !tunnel_start.is_empty() {
                let c = io.put(tunnel_start);
                self.up.push(c);
                self.kick(Side::Up, io);
            }
            if let Downward::Body(t) = &self.downward
                && t.done()
            {
                self.response_done(io, env);
            }
            return;
        }
    }

    /// The response body is complete (or the upstream closed a close-delimited one).
    fn response_done(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        let body_sent = matches!(self.upward, Upward::Hold(_));
        self.log_request(End::Done, io, env);
        self.retire(Side::Up, io);
        self.downward = Downward::Idle;
        // Reuse the client connection only when the request went up whole (the upstream may
        // answer before it has read the body) and nothing else is pending.
        let keep = self.req.as_ref().is_some_and(|r| r.keep_alive)
            && body_sent
            && self.up.flushed()
            && !self.down.eof
            && !env.draining;
        if !keep {
            self.upward = Upward::Discard;
            self.close_after_flush = true;
            self.stage = Stage::Respond;
            self.end.get_or_insert(End::Done);
            return;
        }
        let stash = match std::mem::replace(&mut self.upward, Upward::Discard) {
            Upward::Hold(v) => v,
            _ => Vec::new(),
        };
        self.req = None;
        self.served = self.served.saturating_add(1);
        self.upward = Upward::Head(stash);
        self.stage = Stage::Request;
        self.phase_ms = io.now_ms();
        self.try_request(io, env);
    }

    fn log_request(&mut self, end: End, io: &mut impl Io, env: &Env<'_>) {
        let peer = self.peer_addr(env);
        let now = io.now_ms();
        let Some(r) = self.req.as_mut() else { return };
        if r.logged {
            return;
        }
        r.logged = true;
        io.log(&AccessLog {
            client: self.client,
            method: r.method(),
            host: r.host(),
            path: r.path(),
            upstream: peer,
            status: r.status,
            duration_ms: now.saturating_sub(r.started_ms),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            end,
            tunnel: r.tunnel,
        });
    }

    // ---- endings ---------------------------------------------------------------------------

    fn on_eof(&mut self, side: Side, io: &mut impl Io, env: &mut Env<'_>) {
        if self.stage == Stage::Closing || self.pipe(side).retiring {
            return;
        }
        self.pipe(side).eof = true;
        match (self.stage, side) {
            (Stage::Tunnel, _) => {
                // Pass the half-close on once what is queued has gone out.
                let to = self.pipe(side.peer());
                if to.shut == Shut::Open {
                    to.shut = Shut::Pending;
                }
                self.kick(side.peer(), io);
            }
            (_, Side::Down) => match self.upward {
                Upward::Head(ref v) if v.is_empty() && self.req.is_none() => {
                    self.close(End::ClientClosed, io)
                }
                Upward::Head(_) | Upward::Body(_) => self.close(End::ClientClosed, io),
                // Lingering after our answer: the client has finished; close.
                _ if self.linger == Linger::On => {
                    let end = self.end.unwrap_or(End::Done);
                    self.close(end, io);
                }
                // Our own answer is on its way: send it, then close.
                _ if self.stage == Stage::Respond => {}
                // Nothing more can be delivered to a client that has gone: the upstream side
                // ends now (nginx's `proxy_ignore_client_abort off`), whether it is still
                // connecting, waiting for the head or relaying a body.
                _ => self.close(End::ClientClosed, io),
            },
            (_, Side::Up) => match &self.downward {
                Downward::Body(t) if t.until_close() => {
                    if let Some(r) = self.req.as_mut() {
                        r.keep_alive = false;
                    }
                    self.response_done(io, env);
                }
                Downward::Head(v) => {
                    let why = if v.is_empty() {
                        "upstream closed without a response"
                    } else {
                        "upstream closed inside the response head"
                    };
                    self.respond(502, End::BadResponse(why), io);
                }
                Downward::Body(_) => self.close(End::UpstreamClosed, io),
                _ => {}
            },
        }
    }

    fn on_error(&mut self, side: Side, errno: i32, io: &mut impl Io) {
        if self.stage == Stage::Closing {
            return;
        }
        let normal = matches!(errno, libc::ECONNRESET | libc::EPIPE);
        let end = match (side, normal) {
            (Side::Down, true) => End::ClientClosed,
            (Side::Down, false) => End::ClientError(errno),
            (Side::Up, true) => End::UpstreamClosed,
            (Side::Up, false) => End::UpstreamError(errno),
        };
        if side == Side::Up && matches!(self.downward, Downward::Head(_)) {
            self.respond(502, end, io);
        } else {
            self.close(end, io);
        }
    }

    /// Answer with our own response and close after it (if nothing was sent yet; else close).
    fn respond(&mut self, status: u16, end: End, io: &mut impl Io) {
        if self.stage == Stage::Closing {
            return;
        }
        if self.req.as_ref().is_some_and(|r| r.responded) {
            return self.close(end, io);
        }
        let now = io.now_ms();
        let started = self.phase_ms;
        let bytes_in = match &self.upward {
            Upward::Head(v) => v.len() as u64,
            _ => 0,
        };
        let r = self
            .req
            .get_or_insert_with(|| Box::new(Req::unparsed(started.min(now), bytes_in)));
        r.status = status;
        self.end.get_or_insert(end);
        let c = io.put(http::error_response(status));
        self.down.push(c);
        if !self.down.eof {
            self.linger = Linger::AfterFlush;
        }
        self.upward = Upward::Discard;
        self.downward = Downward::Discard;
        self.close_after_flush = true;
        self.stage = Stage::Respond;
        self.retire(Side::Up, io);
        self.kick(Side::Down, io);
    }

    /// Close both sockets: cancel what is in flight; the fds close when the last completion
    /// has arrived.
    fn close(&mut self, end: End, io: &mut impl Io) {
        if self.stage == Stage::Closing {
            return;
        }
        // A connection that sent part of a head, or never completed its first one, gets a
        // log line; an idle keep-alive connection closing does not (as in nginx).
        let partial = matches!(&self.upward, Upward::Head(v) if !v.is_empty());
        if self.req.is_none() && (partial || (end == End::HeaderTimeout && self.served == 0)) {
            let bytes_in = match &self.upward {
                Upward::Head(v) => v.len() as u64,
                _ => 0,
            };
            self.req = Some(Box::new(Req::unparsed(self.phase_ms, bytes_in)));
        }
        self.end.get_or_insert(end);
        self.stage = Stage::Closing;
        self.retire(Side::Down, io);
        self.retire(Side::Up, io);
    }

    /// Stop using one socket: cancel its ops; it closes when they are all back.
    fn retire(&mut self, side: Side, io: &mut impl Io) {
        let p = self.pipe(side);
        if p.fd < 0 {
            // No socket (between upstream attempts): what waited for it goes nowhere.
            let queued = p.drain();
            for c in queued {
                io.release(c);
            }
            return;
        }
        if p.retiring {
            return;
        }
        p.retiring = true;
        // Cancel exactly the ops in flight, by their user_data (see `Ring::cancel_op`). A
        // shutdown in flight completes on its own.
        let mut ops = Vec::with_capacity(3);
        if p.recv == Recv::On {
            p.recv = Recv::Cancelling;
            ops.push(Op::Recv);
        }
        if p.sending.is_some() {
            ops.push(Op::Send);
        }
        if p.hup == Recv::On {
            p.hup = Recv::Cancelling;
            ops.push(Op::Hangup);
        }
        if !p.ready && p.ops > 0 {
            ops.push(Op::Connect);
        }
        for op in ops {
            self.cancels += 1;
            io.cancel(side, op);
        }
    }

    fn maybe_close_fd(&mut self, side: Side, io: &mut impl Io) {
        // Close only when every cancel of this session is back, so no cancel can still be
        // looking for an op of this socket when a new one takes its place.
        let cancels = self.cancels;
        let keep_queue =
            side == Side::Up && self.connect_waiting && self.stage == Stage::Connecting;
        let p = self.pipe(side);
        if p.fd < 0 || !p.retiring || p.ops > 0 || cancels > 0 {
            return;
        }
        let fd = p.fd;
        if !keep_queue {
            let queued = p.drain();
            for c in queued {
                io.release(c);
            }
        }
        io.close(fd);
        let p = self.pipe(side);
        p.reset_fd(-1);
        p.retiring = false;
    }

    /// Bookkeeping after every event: close retired sockets, keep recvs armed or stopped,
    /// finish a flush-then-close, start a waiting connect, log the end.
    fn after(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        if self.close_after_flush && self.stage != Stage::Closing && self.down.flushed() {
            if self.linger == Linger::AfterFlush && !self.down.eof && self.down.open() {
                self.close_after_flush = false;
                self.linger = Linger::On;
                self.phase_ms = io.now_ms();
                self.down.shut = Shut::Done;
                io.shutdown(self.down.fd);
            } else {
                let end = self.end.unwrap_or(End::Done);
                self.close(end, io);
            }
        }
        if self.stage == Stage::Tunnel
            && self.down.eof
            && self.up.eof
            && self.down.flushed()
            && self.up.flushed()
        {
            self.close(End::Done, io);
        }
        self.maybe_close_fd(Side::Down, io);
        self.maybe_close_fd(Side::Up, io);
        if self.connect_waiting && self.up.fd < 0 && self.stage == Stage::Connecting {
            self.connect_next(io, env);
        }
        if self.stage == Stage::Closing {
            let end = self.end.unwrap_or(End::Done);
            self.log_request(end, io, env);
            return;
        }
        self.sync_recv(io);
    }

    /// Whether `side` should have a recv armed right now. `pool_low`: the worker's buffer pool
    /// is at its floor.
    fn want_recv(&self, side: Side, pool_low: bool) -> bool {
        let (p, peer) = match side {
            Side::Down => (&self.down, &self.up),
            Side::Up => (&self.up, &self.down),
        };
        if !p.open() || !p.ready || p.eof || p.parked || self.stage == Stage::Closing {
            return false;
        }
        // The per-direction budget: a recv is armed only while fewer than QUEUE chunks wait
        // toward the other side, and capped at what is left of the budget (`sync_recv`), so a
        // direction holds at most QUEUE pool buffers. Below the pool's floor, a direction whose
        // previous bytes have not left yet (a slow or stalled reader) waits; one that has
        // drained everything (making progress) reads on.
        let room = peer.pending() < QUEUE && (peer.pending() == 0 || !pool_low);
        match side {
            Side::Down => match self.upward {
                Upward::Head(_) => true,
                Upward::Body(_) | Upward::Stream => room,
                Upward::Hold(ref stash) => stash.len() < self.listen.header_max as usize,
                // Read and drop what the client still sends while lingering.
                Upward::Discard => self.linger == Linger::On,
            },
            Side::Up => match self.downward {
                Downward::Head(_) => true,
                Downward::Body(_) | Downward::Stream => room,
                Downward::Idle | Downward::Discard => false,
            },
        }
    }

    fn sync_recv(&mut self, io: &mut impl Io) {
        let pool_low = io.pool_low();
        for side in [Side::Down, Side::Up] {
            let want = self.want_recv(side, pool_low);
            if want
                && side == Side::Down
                && self.down.recv == Recv::Off
                && matches!(self.upward, Upward::Body(_))
            {
                // The body clock runs only while we read: it restarts when reading resumes.
                self.last_down_ms = io.now_ms();
            }
            // What this direction may still take: the budget less what waits toward the peer;
            // one at a time below the pool's floor.
            let waiting = match side {
                Side::Down => self.up.pending(),
                Side::Up => self.down.pending(),
            };
            let buffers = if pool_low {
                1
            } else {
                QUEUE.saturating_sub(waiting).max(1) as u32
            };
            let p = self.pipe(side);
            match (want, p.recv) {
                (true, Recv::Off) => {
                    p.recv = Recv::On;
                    p.ops += 1;
                    io.recv(p.fd, side, buffers);
                }
                (false, Recv::On) if p.open() && !p.eof => {
                    p.recv = Recv::Cancelling;
                    self.cancels += 1;
                    io.cancel(side, Op::Recv);
                }
                _ => {}
            }
        }
        // While the client's bytes are held back (its hold is full, or its body waits for a
        // slow upstream) nothing reads its socket, so its FIN or reset would go unseen until
        // the response: a poll for POLLRDHUP watches for it meanwhile.
        let watch = matches!(self.stage, Stage::Connecting | Stage::Proxy)
            && matches!(self.upward, Upward::Hold(_) | Upward::Body(_))
            && self.down.recv == Recv::Off
            && self.down.open()
            && !self.down.eof;
        let p = &mut self.down;
        match (watch, p.hup) {
            (true, Recv::Off) => {
                p.hup = Recv::On;
                p.ops += 1;
                io.watch_hangup(p.fd, Side::Down);
            }
            (false, Recv::On) if p.open() => {
                p.hup = Recv::Cancelling;
                self.cancels += 1;
                io.cancel(Side::Down, Op::Hangup);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
