//! The session: one client connection, its upstream connections (one for HTTP/1; a protocol
//! may keep more, each by its `ConnId`), and the protocol that runs over them.
//!
//! HTTP/1: `Request → Exchange (connecting, then proxying) → Tunnel | Respond | Request → Closing`.
//!
//! Four layers, each in its own file: the socket of each connection ([`crate::reactor::Conn`]),
//! the transport over it that gives plaintext in and takes plaintext out ([`Transport`], in the
//! `tls` room), the session's links ([`links`]: its connections, the cancels in flight for them
//! and what they hold), and the protocol over them: HTTP/1 ([`http1`]) with the phases it moves
//! through ([`phase`]), or a protocol added as a type behind the interface in [`protocol`]. What
//! a session is besides its protocol is one value, [`Cx`], beside the phase. Handlers decide;
//! they never touch the ring. Every effect goes through [`Io`], which the worker implements
//! over its ring and the tests implement with a recording fake. A protocol answers each event
//! with a `Step`; the worker gets a [`Next`]. See `LIFECYCLE.md` beside this file for the phases
//! and invariants.

/// Call the protocol `$phase` runs as `$p` (the built-in ones directly, one added as a type
/// through its box); `$closing` is the answer while closing, when none runs.
macro_rules! run {
    ($phase:expr, $p:ident => $call:expr, $closing:expr) => {
        match $phase {
            Phase::Request($p) => $call,
            Phase::Exchange($p) => $call,
            Phase::Tunnel($p) => $call,
            Phase::Respond($p) => $call,
            Phase::Other($p) => $call,
            Phase::Closing(_) => $closing,
        }
    };
}

mod after;
mod answer;
mod auth;
mod connect;
mod cx;
mod end;
mod filter;
mod h2;
mod handoff;
mod http1;
mod links;
mod phase;
mod protocol;
mod proxy;
mod request;
mod time;
mod tunnel;

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::config::Config;
pub use crate::config::Listen;
pub use crate::reactor::{QUEUE, Recv, Shut, Sys};
pub use crate::tls::Transport;
use crate::uring::timer::Stamp;
use crate::uring::{Chunk, ConnId, Src};
mod env;
use answer::Answer;
pub use auth::Cache as AuthCache;
use cx::Cx;
pub use cx::Role;
pub use end::{AccessLog, End, TunnelLog};
pub use env::{Env, Inner, Io, Kit, Observed};
pub use handoff::{
    DESC_MAX, Departure, FDS_MAX, Handed, VERSION as HANDOFF_VERSION, describes_http2,
    refuse_handed,
};
use links::Links;
pub use links::Side;
use phase::{Exchange, Linger, Req};
use protocol::{Protocol, Step};
use request::Request;
pub use tunnel::CloseSeen;

/// Largest response head accepted from an upstream.
pub const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// Interim (1xx) responses passed on per request: a backend streaming `100 Continue` gets a
/// 502 past this many, instead of growing what waits for the client.
pub const INTERIM_MAX: u8 = 8;
/// Bytes of interim responses passed on per request.
pub const INTERIM_BYTES_MAX: u32 = 16 * 1024;
/// How long a lingering close waits for the client to send more (nginx: lingering_timeout),
/// and how long it lasts at most however much the client sends (nginx: lingering_time).
pub const LINGER_MS: u64 = 2000;
pub const LINGER_TIME_MS: u64 = 30_000;

/// When a lingering close that began at `began` ends, the peer it reads and drops having last
/// sent something at `last`: `LINGER_MS` after that (or after it began), and `LINGER_TIME_MS`
/// after it began at the latest. A peer still sending when it ends is closed with bytes unread,
/// so it gets a reset, and the kernel throws away what it had not yet sent of ours: a peer that
/// keeps sending but reads slowly (a loaded client) keeps its answer as long as it sends, up
/// to the bound.
pub(crate) fn linger_end(began: u64, last: u64) -> u64 {
    (began.max(last) + LINGER_MS).min(began + LINGER_TIME_MS)
}

/// What a session tells the worker after an event: go on, or `Close`, which means that
/// closing is complete: no fd open, no op in flight, the slot may be freed (the worker's
/// end-of-session point). (Inside the session, protocols answer with a [`protocol::Step`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Next {
    Continue,
    Close(End),
}

/// Phase of a session, as a tag (for the worker, logs and tests).
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
    /// Running a protocol added as a type (`protocol.rs`), by its name.
    Other(&'static str),
}

/// Where a session stands, with what that phase owns. The largest phase is a tunnel's (104
/// bytes, its request record included), and the phase is no larger: the tag is kept in the
/// spare values of a `bool` at the tunnel's end (its request record is laid out last,
/// `repr(C)`), past the bytes of every other phase, where a tag of its own took 8 bytes with
/// its padding. Decoding it costs nothing measurable (callgrind: 3,868 against 3,866
/// instructions per echoed 64 B message). A tag in the spare values of a `Vec`'s capacity
/// inside the exchange, where the compiler once put it, cost ~135 (it then got a byte of its
/// own, `repr(u8)`, until the tunnel could hold it).
#[derive(Debug)]
enum Phase {
    /// Reading (and parsing) a request head (`request.rs`, a protocol type).
    Request(Request),
    /// A request on its way: connecting to an upstream server (or waiting for the previous
    /// socket to close), then the request going up, the response head or body coming down.
    Exchange(Exchange),
    /// A 101 turned the request into a tunnel (`tunnel.rs`, a protocol type).
    Tunnel(tunnel::Tunnel),
    /// Sending our own answer (an error page, or the end of a response that does not keep
    /// the connection), then closing, after a lingering close (`answer.rs`, a protocol type).
    Respond(answer::Answer),
    /// Cancelling ops and closing sockets; the request to log when the session ends, if any.
    Closing(Option<Req>),
    /// A protocol added as a type (`protocol.rs`), called through its interface: HTTP/2
    /// (`h2.rs`), and the session tests' toy protocols.
    Other(Box<dyn protocol::Erased>),
}

impl Phase {
    /// Take the phase out, leaving `Closing(None)` in its place for the caller to replace: a
    /// transition is then one total `match` on the value, with no arm that cannot happen.
    pub fn take(&mut self) -> Phase {
        std::mem::replace(self, Phase::Closing(None))
    }

    /// The request this phase carries, if any.
    pub fn req(&self) -> Option<&Req> {
        match self {
            Phase::Request(_) | Phase::Other(_) => None,
            Phase::Exchange(x) => Some(&x.req),
            Phase::Tunnel(t) => Some(&t.req),
            Phase::Respond(a) => Some(&a.req),
            Phase::Closing(r) => r.as_ref(),
        }
    }

    pub fn req_mut(&mut self) -> Option<&mut Req> {
        match self {
            Phase::Request(_) | Phase::Other(_) => None,
            Phase::Exchange(x) => Some(&mut x.req),
            Phase::Tunnel(t) => Some(&mut t.req),
            Phase::Respond(a) => Some(&mut a.req),
            Phase::Closing(r) => r.as_mut(),
        }
    }

    /// Take the request out, leaving the phase as `Closing(None)`.
    pub fn take_req(&mut self) -> Option<Req> {
        match std::mem::replace(self, Phase::Closing(None)) {
            Phase::Request(_) | Phase::Other(_) => None,
            Phase::Exchange(x) => Some(x.req),
            Phase::Tunnel(t) => Some(t.req),
            Phase::Respond(a) => Some(a.req),
            Phase::Closing(r) => r,
        }
    }

    pub fn is_closing(&self) -> bool {
        matches!(self, Phase::Closing(_))
    }
}

/// A session: its connections and what it knows of them ([`Cx`]), and the protocol that
/// runs over them now ([`Phase`]).
#[derive(Debug)]
pub struct Session {
    cx: Cx,
    phase: Phase,
}

impl Session {
    /// A session for a freshly accepted client socket.
    pub fn new(
        fd: RawFd,
        client: SocketAddr,
        listen: Listen,
        cfg: Arc<Config>,
        now_ms: u64,
    ) -> Session {
        Session::with(
            fd,
            client,
            listen,
            cfg,
            now_ms,
            Phase::Request(Request::default()),
        )
    }

    /// A session for a freshly accepted client socket that begins with `phase` (`start` runs
    /// it).
    fn with(
        fd: RawFd,
        client: SocketAddr,
        listen: Listen,
        cfg: Arc<Config>,
        now_ms: u64,
        phase: Phase,
    ) -> Session {
        let down = match cfg.listener_tls.get(usize::from(listen.index)) {
            Some(Some(t)) => Transport::server(fd, &t.config, &t.by_client),
            _ => Transport::plain(fd),
        };
        Session::over(down, client, listen, cfg, now_ms, phase)
    }

    /// The inner HTTP/1 session of an HTTP/2 stream (`Inner`): plaintext on its socket, no
    /// PROXY header, no HTTP/2 of its own.
    pub fn inner(i: Inner, now_ms: u64) -> Session {
        let listen = Listen {
            proxy_header: false,
            http2: None,
            // Between requests the HTTP/2 session keeps the link or lets it go (its own
            // keepalive_timeout and drain): the inner session does not time it out.
            keepalive_timeout_ms: crate::config::ms32(crate::config::MAX_TIMEOUT),
            ..i.listen
        };
        let down = Transport::plain(i.fd);
        let phase = Phase::Request(Request::default());
        let mut s = Session::over(down, i.client, listen, i.cfg, now_ms, phase);
        s.cx.role = Role::Stream;
        s
    }

    fn over(
        down: Transport,
        client: SocketAddr,
        listen: Listen,
        cfg: Arc<Config>,
        now_ms: u64,
        phase: Phase,
    ) -> Session {
        Session {
            cx: Cx {
                links: Links::new(down),
                cfg,
                listener: listen.index,
                proxy_header: listen.proxy_header,
                role: Role::Connection,
                client: client.into(),
                phase_ms: Stamp::new(now_ms),
                last_up_ms: Stamp::new(now_ms),
                last_down_ms: Stamp::new(now_ms),
                notes: None,
                served: 0,
            },
            phase,
        }
    }

    /// Start: the first protocol begins; arm the client recv.
    pub fn start(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        let next = self.started(io, env);
        self.apply(next, io, env);
        self.sync_recv(io);
    }

    /// The session has just become what its phase is: its protocol starts (a request head
    /// begun with bytes already parses them; a protocol added as a type does what it does).
    fn started(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        run!(&mut self.phase, p => Protocol::start(p, &mut self.cx, io, env), Step::Continue)
    }

    /// The phase, as a tag.
    pub fn stage(&self) -> Stage {
        match self.phase {
            Phase::Request(_) => Stage::Request,
            Phase::Exchange(ref x) if x.connecting() => Stage::Connecting,
            Phase::Exchange(_) => Stage::Proxy,
            Phase::Tunnel(_) => Stage::Tunnel,
            Phase::Respond(_) => Stage::Respond,
            Phase::Closing(_) => Stage::Closing,
            Phase::Other(ref p) => Stage::Other(p.name()),
        }
    }

    /// Closing is complete: no fd open, no op in flight. The worker frees the slot.
    pub fn finished(&self) -> bool {
        self.phase.is_closing() && self.cx.links.all_closed()
    }

    /// What its client is (an HTTP/2 stream's inner session is not a client connection).
    pub fn role(&self) -> Role {
        self.cx.role
    }

    /// The configuration this session was accepted under.
    pub fn config(&self) -> &Config {
        &self.cx.cfg
    }

    /// Why it ended (once closing).
    pub fn end(&self) -> Option<End> {
        self.cx.notes.as_deref().and_then(|n| n.end)
    }

    fn conn(&mut self, id: ConnId) -> &mut Transport {
        self.cx.links.get_mut(id)
    }

    // ---- events -------------------------------------------------------------------------

    /// A recv completion on connection `id`. `bid` is the pool buffer when `res > 0`.
    pub fn on_recv(
        &mut self,
        id: ConnId,
        res: i32,
        more: bool,
        bid: Option<u16>,
        io: &mut impl Io,
        env: &mut Env<'_>,
    ) -> Next {
        self.conn(id).recv_ended(more);
        if res > 0 {
            let bid = bid.expect("recv with data carries a buffer");
            let c = Chunk {
                src: Src::Pool(bid),
                off: 0,
                len: res as u32,
            };
            let next = self.on_data(id, c, io, env);
            self.apply(next, io, env);
        } else if let Some(bid) = bid {
            // A buffer with no data: just give it back.
            io.release(Chunk {
                src: Src::Pool(bid),
                off: 0,
                len: 0,
            });
        }
        if res == 0 {
            let next = self.on_eof(id, io);
            self.apply(next, io, env);
        } else if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::ENOBUFS => {
                    if self.conn(id).park() {
                        io.park(id);
                    }
                }
                e => {
                    let next = self.on_error(id, protocol::end_of_error(Side::of(id), e), io);
                    self.apply(next, io, env);
                }
            }
        }
        self.after(io, env)
    }

    /// A send completion on connection `id`.
    pub fn on_send(&mut self, id: ConnId, res: i32, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        let closing = self.phase.is_closing();
        if let crate::reactor::Sent::Failed(e) = self.conn(id).on_sent(io, id, res, closing) {
            let next = self.on_error(id, protocol::end_of_error(Side::of(id), e), io);
            self.apply(next, io, env);
        }
        self.after(io, env)
    }

    /// The connect of connection `id` completed.
    pub fn on_connect(
        &mut self,
        id: ConnId,
        res: i32,
        io: &mut impl Io,
        env: &mut Env<'_>,
    ) -> Next {
        self.conn(id).connect_done();
        if !self.conn(id).retiring() {
            let next = run!(&mut self.phase, p => Protocol::connected(p, &mut self.cx, id, res, io, env), Step::Continue);
            self.apply(next, io, env);
        }
        self.after(io, env)
    }

    /// The hang-up watch completed: `res` holds the poll events (the client hung up), or an
    /// errno (cancelled).
    pub fn on_hangup(&mut self, id: ConnId, res: i32, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        let p = self.conn(id);
        p.watch_ended();
        let retiring = p.retiring();
        if res > 0 && !retiring && !self.phase.is_closing() {
            self.conn(id).mark_eof();
            self.close(End::ClientClosed, io);
        }
        self.after(io, env)
    }

    /// A readiness poll of a splice completed (`write`: the socket can take more; else it has
    /// more to read, or its peer hung up): the tunnel's splice goes on (in `after`, as it
    /// settles). `res`, the poll's events or an errno, is not looked at: the next splice(2)
    /// says what the socket's state is. (Out of line: only a splice waits on readiness, and
    /// the worker's dispatch of the per-message completions stays as it was.)
    #[inline(never)]
    pub fn on_ready(
        &mut self,
        id: ConnId,
        write: bool,
        io: &mut impl Io,
        env: &mut Env<'_>,
    ) -> Next {
        self.conn(id).ready_ended(write);
        self.after(io, env)
    }

    /// A cancel completion.
    pub fn on_cancel(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        self.cx.links.cancel_done();
        self.after(io, env)
    }

    /// Buffers are back: re-arm a recv parked on ENOBUFS.
    pub fn unpark(&mut self, id: ConnId, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        self.conn(id).unpark();
        self.after(io, env)
    }

    /// The worker began draining: an idle keep-alive connection closes now; a request in
    /// progress — or the first one of a connection just accepted, which may be on its way —
    /// is answered and its connection then closed (`env.draining`); a tunnel gets its Close
    /// at its time in the drain spread.
    pub fn drain(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        let step = run!(&mut self.phase, p => Protocol::drain(p, &mut self.cx, io), Step::Continue);
        self.apply(step, io, env);
        self.after(io, env)
    }

    /// Shutdown reached this session at its time in `drain_spread`: a tunnel's client gets
    /// the Close of `runtime.drain_close` at the next frame boundary, its reply goes up and the
    /// session ends (a stream that is not WebSocket: both sides are shut).
    pub fn drain_tunnel(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        let step =
            run!(&mut self.phase, p => Protocol::farewell(p, &mut self.cx, io), Step::Continue);
        self.apply(step, io, env);
        self.after(io, env)
    }

    /// A reload put a new configuration in force (this session keeps the one it was accepted
    /// under): an HTTP/2 connection sends GOAWAY, its open streams go on.
    pub fn reloaded(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        let step =
            run!(&mut self.phase, p => Protocol::reloaded(p, &mut self.cx, io), Step::Continue);
        self.apply(step, io, env);
        self.after(io, env)
    }

    /// A rebalance shed this session: a tunnel's client gets the drain's Close at the next
    /// frame boundary (reconnect, elsewhere), and the session ends once it has answered.
    pub fn shed(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        if self.stage() == Stage::Tunnel {
            self.cx.end_with(End::Shed);
        }
        self.drain_tunnel(io, env)
    }

    /// The worker is stopping: close now.
    pub fn shutdown(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        self.close(End::Shutdown, io);
        self.after(io, env)
    }

    // ---- bytes ---------------------------------------------------------------------------

    /// Bytes received on connection `id`, through its transport to the protocol.
    fn on_data(&mut self, id: ConnId, c: Chunk, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        let side = Side::of(id);
        if self.phase.is_closing() || self.conn(id).retiring() {
            // Bytes after a whole response: that connection is not clean to reuse.
            if side == Side::Up {
                self.conn(id).set_keep(false);
            }
            io.release(c);
            return Step::Continue;
        }
        if side == Side::Down && self.cx.proxy_header {
            // Below TLS: the balancer's PROXY header comes before anything of the client's.
            return self.proxy_header(c, io, env);
        }
        let c = match self.conn(id).received(io, id, c) {
            Ok(Some(c)) => c,
            Ok(None) => return Step::Continue,
            Err(crate::tls::Fail::PlainHttp) => return Step::Respond(400, End::PlainHttp),
            Err(crate::tls::Fail::Tls(e)) => return self.tls_failed(id, &e, io),
        };
        let now = io.now_ms();
        if let Some(r) = self.phase.req_mut() {
            match side {
                Side::Down => r.bytes_in += u64::from(c.len),
                Side::Up => r.bytes_out += u64::from(c.len),
            }
        }
        match side {
            Side::Down => self.cx.last_down_ms = Stamp::new(now),
            Side::Up => self.cx.last_up_ms = Stamp::new(now),
        }
        run!(&mut self.phase, p => Protocol::bytes(p, &mut self.cx, id, c, io, env), {
            io.release(c);
            Step::Continue
        })
    }

    /// The transport of connection `id` failed (its alert, if any, is queued).
    #[inline(never)]
    fn tls_failed(&mut self, id: ConnId, e: &rustls::Error, io: &mut impl Io) -> Step {
        let why = end::tls_reason(e);
        match Side::of(id) {
            Side::Down => {
                tracing::info!(target: "tls", "{}: TLS failed: {e}", self.cx.client);
                // No HTTP answer: the alert is on its way.
                Step::Fail(End::ClientTls(why))
            }
            Side::Up => {
                let peer = self.phase.req().and_then(|r| connect::peer_of(&self.cx, r));
                tracing::warn!(target: "upstream", "TLS with {} failed: {e}", peer.map_or("-".into(), |p| p.addr.to_string()));
                self.on_error(id, End::UpstreamTls(why), io)
            }
        }
    }

    // ---- endings -------------------------------------------------------------------------

    fn on_eof(&mut self, id: ConnId, io: &mut impl Io) -> Step {
        if self.phase.is_closing() || self.conn(id).retiring() {
            return Step::Continue;
        }
        self.conn(id).mark_eof();
        run!(&mut self.phase, p => Protocol::eof(p, &mut self.cx, id, io), Step::Continue)
    }

    fn on_error(&mut self, id: ConnId, end: End, io: &mut impl Io) -> Step {
        run!(&mut self.phase, p => Protocol::error(p, &mut self.cx, id, end, io), Step::Continue)
    }

    /// Carry out what a protocol decided. Nearly every event decides to go on: that is tested
    /// where the step is made, and the rest is carried out out of line (`Step` holds a whole
    /// phase, for `Become`, and moving it where nothing is to be done cost instructions on
    /// every event).
    #[inline(always)]
    fn apply(&mut self, step: Step, io: &mut impl Io, env: &mut Env<'_>) {
        if !matches!(step, Step::Continue) {
            self.carry_out(step, io, env);
        }
    }

    #[inline(never)]
    fn carry_out(&mut self, step: Step, io: &mut impl Io, env: &mut Env<'_>) {
        match step {
            Step::Continue => {}
            Step::Become(phase) => self.enter(phase, io, env),
            Step::Respond(status, end) => self.respond(status, end, io),
            Step::Answer(req, status, end) => self.answer(req, status, end, io),
            // Status 0: no answer of ours (the log says 0), only the transport's alert.
            Step::Fail(end) => self.respond(0, end, io),
            Step::Close(end) => self.close(end, io),
            Step::Linger(end) => {
                let mut req = Req::unparsed(io.now_ms(), 0);
                req.logged = true;
                self.answer(req, 0, end, io);
            }
            Step::Finish => {
                let next = run!(self.phase.take(), p => Protocol::finish(p, &mut self.cx, io), Phase::Closing(None));
                match next {
                    Phase::Closing(req) => {
                        let end = self.cx.ended();
                        self.shut(req, end, io);
                    }
                    next => self.enter(next, io, env),
                }
            }
        }
    }

    /// The session runs `phase` from now on (its protocol starts at once).
    fn enter(&mut self, phase: Phase, io: &mut impl Io, env: &mut Env<'_>) {
        self.phase = phase;
        let first = self.started(io, env);
        self.apply(first, io, env);
    }

    /// Answer with our own response and close after it (if nothing was sent yet; else close).
    fn respond(&mut self, status: u16, end: End, io: &mut impl Io) {
        if self.phase.is_closing() {
            return;
        }
        // An `auth_request` subrequest that fails (its servers down, a timeout, a bad answer)
        // is 500 to the client, as in nginx; the log says why.
        let (status, end) = match &self.phase {
            Phase::Exchange(x) if x.terms.auth.is_some() && status >= 500 => {
                (500, auth::failed(end))
            }
            _ => (status, end),
        };
        if self.phase.req().is_some_and(|r| r.responded) {
            return self.close(end, io);
        }
        let now = io.now_ms();
        let started = self.cx.phase_ms.at(now).min(now);
        let bytes_in = match &self.phase {
            Phase::Request(r) => r.head.len() as u64,
            _ => 0,
        };
        let req = self
            .phase
            .take_req()
            .unwrap_or_else(|| Req::unparsed(started, bytes_in));
        self.answer(req, status, end, io);
    }

    /// Send our own `status` for `req` (0: none, for `Step::Fail`) and close after it,
    /// lingering while the client may still be sending, so the answer is not lost to a reset
    /// (nginx's lingering close).
    fn answer(&mut self, mut req: Req, status: u16, end: End, io: &mut impl Io) {
        req.status = status;
        self.cx.end_with(end);
        let linger = if self.cx.links.down.eof() {
            Linger::No
        } else {
            Linger::AfterFlush
        };
        self.phase = Phase::Respond(Answer { req, linger });
        self.cx.links.retire_upstreams(io);
        if status == 0 {
            // `Step::Fail`: no answer of ours, only what the transport queued.
            self.cx.links.down.kick(io, ConnId::CLIENT);
            return;
        }
        self.cx.send_built(Side::Down, io, |out| {
            out.extend_from_slice(&match end {
                End::PlainHttp => {
                    crate::http::error_page(status, "The plain HTTP request was sent to HTTPS port")
                }
                _ => crate::http::error_response(status),
            })
        });
    }

    /// Close both sockets: cancel what is in flight; the fds close when the last completion
    /// has arrived.
    fn close(&mut self, end: End, io: &mut impl Io) {
        if let Phase::Tunnel(t) = &mut self.phase {
            // A tunnel's record of its messages stays for its log line and its location's
            // counters at the session's end, with the Closes the proxy sent.
            t.note_end(&mut self.cx, io);
        }
        let req = match &self.phase {
            Phase::Closing(_) => return,
            // A connection that sent part of a head, or never completed its first one, gets a
            // log line; an idle keep-alive connection closing does not (as in nginx).
            Phase::Request(r)
                if !r.head.is_empty() || (end == End::HeaderTimeout && self.cx.served == 0) =>
            {
                Some(Req::unparsed(
                    self.cx.phase_ms.at(io.now_ms()),
                    r.head.len() as u64,
                ))
            }
            _ => self.phase.take_req(),
        };
        self.shut(req, end, io);
    }

    /// The session is closing (with `req` to log at its end, if any): both connections are
    /// retired.
    fn shut(&mut self, req: Option<Req>, end: End, io: &mut impl Io) {
        self.cx.end_with(end);
        self.phase = Phase::Closing(req);
        self.cx.links.retire_all(io);
    }

    /// When the tunnel this session carries began (its upgrade request), if it carries one.
    pub fn tunnel_since(&self) -> Option<u64> {
        self.phase
            .req()
            .filter(|r| r.tunnel())
            .map(|r| r.started_ms)
    }

    /// Give back the `limit_conn` slot this connection holds (the worker calls it once, at the
    /// session's end; it is idempotent).
    pub fn release_limit(&mut self) {
        self.cx.release_limit();
    }

    /// The access-log line of the request this session still owes one for, if any: the
    /// worker writes it at the end of the session; kept-alive requests are logged as each
    /// response completes.
    pub fn access_log(&self, end: End, now_ms: u64) -> Option<AccessLog<'_>> {
        let seen = self.cx.notes.as_deref().and_then(|n| n.seen.as_ref());
        http1::access_line(&self.cx, self.phase.req()?, seen, end, now_ms)
    }

    /// The session ended with `end`: if it carried a tunnel, the tunnel's Closes and end are
    /// counted for its location (on worker `worker`'s row).
    pub fn count_tunnel_end(&self, end: End, worker: usize) {
        if let Some(seen) = self.cx.notes.as_deref().and_then(|n| n.seen.as_ref())
            && let Some(row) = self.cx.cfg.message_row(seen.loc(), worker)
        {
            seen.publish(row, end);
        }
    }
}

#[cfg(test)]
mod tests;
