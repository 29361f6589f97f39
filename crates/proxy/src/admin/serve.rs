//! The admin endpoint's event loop: one thread, its own io_uring through the same reactor the
//! workers, the echo backend and the load generator run on (accept, recv into a small buffer
//! ring, send, cancel-then-close), and a timer wheel for deadlines.
//!
//! Bounds (what a client of the admin port can make the process hold):
//! - **Connections.** At most [`CONNECTIONS_MAX`] are served at once. One more arriving at
//!   the cap takes the place of the oldest connection that has not finished sending its
//!   request (closed at once), so idle or trickling connections can never keep a probe out:
//!   a probe sends its request as it connects and is answered within the turn. Connections
//!   being closed count against twice the cap; past that a new one is closed unread.
//! - **Time.** A request head must arrive whole within [`REQUEST_DEADLINE`]; its answer must be
//!   sent within the same again; after the answer the connection lingers at most
//!   [`LINGER`] for the client's FIN (so the answer is not reset by unread bytes).
//! - **Memory.** A head is at most [`HEAD_MAX`] bytes (431 past it); bytes after it are read and
//!   dropped, at most [`DISCARD_MAX`]. So at most 2 × `CONNECTIONS_MAX` × (`HEAD_MAX` + one
//!   answer) — the largest answer is `/metrics`, a few KiB per upstream server.
//! - **Reloads** run on a thread of their own, one at a time, at most [`RELOADS_QUEUED`]
//!   waiting (503 past that): a slow reload never stalls `/healthz`.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::AdminState;
use super::guard::{self, Endpoint};
use crate::config::admin::{Admin, Token};
use crate::reactor::{Conn, Handler, Reactor, RingSys, Sent, Sys};
use crate::uring::{ConnId, Cqe, Op, Ring, RingConfig, UNCAPPED, UserData};

/// Admin connections served at once (see the module's bounds).
pub const CONNECTIONS_MAX: usize = 256;
/// Largest request head.
pub const HEAD_MAX: usize = 8 * 1024;
/// A request head must arrive whole in this; its answer must then be sent in as long again.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// After the answer, how long the client has to close its side.
pub const LINGER: Duration = Duration::from_secs(1);
/// Bytes after a head that are read and dropped before the connection is closed.
pub const DISCARD_MAX: usize = 64 * 1024;
/// Reloads waiting behind the one running.
pub const RELOADS_QUEUED: usize = 4;
/// How long a `POST /reload` waits for its reload.
const RELOAD_WAIT: Duration = Duration::from_secs(120);
const TICK_MS: u64 = 50;

/// Where one connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading its request head.
    Reading,
    /// Its head is whole, not yet decided on.
    Complete,
    /// Its reload is queued or running.
    Reloading { head_only: bool },
    /// Its answer is being sent.
    Answering,
    /// Answered and half-closed; waiting for the client's FIN.
    Lingering,
}

struct Client {
    sock: Conn,
    /// The address the connection reached (what its `Host` must name).
    local: SocketAddr,
    head: Vec<u8>,
    /// Bytes read and dropped after the head.
    discarded: usize,
    phase: Phase,
    closing: bool,
    /// Cancels in flight.
    cancels: u8,
    accepted_ms: u64,
    /// When the current phase runs out.
    deadline_ms: u64,
    /// The due time of this client's one entry in the timer wheel.
    armed_ms: u64,
}

/// The token file's contents in force, re-read when the file changes (a rotated token is in
/// force at once, and `ringway reload`, which reads the same file, is accepted).
#[derive(Default)]
struct TokenCache {
    /// Path, and (inode, size, mtime) of the file it was read from.
    key: Option<(std::path::PathBuf, (u64, u64, i64, i64))>,
    token: Option<Token>,
}

impl TokenCache {
    fn current(&mut self, policy: &Admin) -> Option<Token> {
        use std::os::unix::fs::MetadataExt;
        let path = policy.token_file.as_ref()?;
        let stamp = std::fs::metadata(path)
            .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
            .ok();
        let same_path = self.key.as_ref().is_some_and(|(p, _)| p == path);
        if let (Some(stamp), true) = (stamp, same_path)
            && self.key.as_ref().is_some_and(|(_, s)| *s == stamp)
        {
            return self.token.clone();
        }
        match (stamp, Token::read(path)) {
            (Some(stamp), Ok((t, _))) => {
                self.key = Some((path.clone(), stamp));
                self.token = Some(t);
            }
            (_, Err(e)) => {
                tracing::warn!(
                    "admin.token_file {}: {e}; the token read before stays in force",
                    path.display()
                );
                if !same_path {
                    self.key = None;
                    self.token = policy.token.clone();
                }
            }
            (None, Ok(_)) => {}
        }
        self.token.clone().or_else(|| policy.token.clone())
    }
}

type ReloadDone = ((u32, u32), Result<String, crate::live::ReloadError>);

/// What deciding on a request needs: the reports, the policy, the token, the reload queue.
struct Desk {
    /// The policy the endpoint started with (used if a reload drops `[admin]`).
    policy: Admin,
    state: Arc<AdminState>,
    tokens: TokenCache,
    reload_tx: Option<SyncSender<(u32, u32)>>,
}

struct AdminLoop {
    listener: std::net::TcpListener,
    stop: Arc<AtomicBool>,
    desk: Desk,
    /// Finished reloads, and the eventfd the reload thread wakes the loop with.
    reload_rx: Option<(Receiver<ReloadDone>, Arc<EventFd>)>,
}

/// Start the loop's thread on `listener`.
pub(super) fn start(
    listener: std::net::TcpListener,
    policy: Admin,
    state: Arc<AdminState>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (reload_tx, reload_rx) = match state.reload.clone() {
        None => (None, None),
        Some(reload) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(u32, u32)>(RELOADS_QUEUED);
            let (done_tx, done_rx) = std::sync::mpsc::channel::<ReloadDone>();
            let wake = Arc::new(
                EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map_err(std::io::Error::from)?,
            );
            let waker = wake.clone();
            std::thread::Builder::new()
                .name("ringway-reload".into())
                .spawn(move || {
                    // Ends when the loop (the sender) goes away.
                    for who in rx {
                        if done_tx.send((who, reload())).is_err() {
                            return;
                        }
                        let _ = waker.write(1);
                    }
                })?;
            (Some(tx), Some((done_rx, wake)))
        }
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("ringway-admin".into())
        .spawn(move || {
            // The ring is made on the thread that uses it (SINGLE_ISSUER).
            let ring = match Ring::new(RingConfig {
                sq_entries: 256,
                buffers: 64,
                buf_size: 4096,
            }) {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut r = Reactor::new(ring, CONNECTIONS_MAX, TICK_MS, 256);
            let mut lp = AdminLoop {
                listener,
                stop,
                desk: Desk {
                    policy,
                    state,
                    tokens: TokenCache::default(),
                    reload_tx,
                },
                reload_rx,
            };
            if let Err(e) = lp.run(&mut r) {
                tracing::error!("admin endpoint stopped: {e}");
            }
            let fds: Vec<i32> = r
                .slots
                .keys()
                .into_iter()
                .filter_map(|k| r.slots.get_any_mut(k).map(|(_, c)| c.sock.fd()))
                .filter(|fd| *fd >= 0)
                .collect();
            // The ring cancels and drains what is in flight as it drops; then the sockets close.
            drop(r);
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the admin thread died")))
}

fn accept_ud() -> UserData {
    UserData::new(0, 0, Op::Accept, ConnId::CLIENT)
}

/// The poll on the reload thread's eventfd.
fn wake_ud() -> UserData {
    UserData::new(crate::uring::SLOT_CORE, 0, Op::Inbox, ConnId::CLIENT)
}

/// Run `f` on a live client with a `Sys` over the ring, then settle it; free its slot when it
/// is gone, and keep its timer entry at its deadline when that moved earlier.
fn with(
    r: &mut Reactor<Client>,
    slot: u32,
    generation: Option<u32>,
    f: impl FnOnce(&mut Client, &mut RingSys<'_>),
) {
    let Some((g, c, mut sys)) = r.split(slot, generation) else {
        return;
    };
    f(c, &mut sys);
    let gone = c.settle(&mut sys);
    let (deadline, armed) = (c.deadline_ms, c.armed_ms);
    if gone {
        r.wheel.remove(slot, armed);
        r.slots.remove(slot);
    } else if deadline < armed {
        // A later deadline is handled when the entry fires; an earlier one moves the entry
        // (`insert` replaces it).
        r.wheel.insert(slot, deadline);
        c_armed(r, slot, g, deadline);
    }
}

fn c_armed(r: &mut Reactor<Client>, slot: u32, generation: u32, at: u64) {
    if let Some(c) = r.slots.get_mut(slot, generation) {
        c.armed_ms = at;
    }
}

impl AdminLoop {
    fn run(&mut self, r: &mut Reactor<Client>) -> std::io::Result<()> {
        r.ring.accept_multi(self.listener.as_raw_fd(), accept_ud());
        if let Some((_, wake)) = &self.reload_rx {
            r.ring.poll_in(wake.as_raw_fd(), wake_ud());
        }
        while !self.stop.load(Ordering::Relaxed) {
            r.turn(self, Duration::from_millis(TICK_MS))?;
        }
        Ok(())
    }

    /// Answer the connections whose reload has finished (the reload thread woke the loop).
    fn reloads_done(&mut self, r: &mut Reactor<Client>) {
        let Some((rx, wake)) = &self.reload_rx else {
            return;
        };
        let _ = wake.read();
        r.ring.poll_in(wake.as_raw_fd(), wake_ud());
        let done: Vec<ReloadDone> = rx.try_iter().collect();
        for ((slot, generation), result) in done {
            let (status, body) = match result {
                Ok(summary) => {
                    tracing::info!("admin /reload: {summary}");
                    (200, format!("{summary}\n"))
                }
                Err(e) => {
                    tracing::error!(
                        "admin /reload: reload failed, the configuration in force stays: {e}"
                    );
                    (422, format!("{e}\n"))
                }
            };
            with(r, slot, Some(generation), |c, sys| {
                if let Phase::Reloading { head_only } = c.phase {
                    c.answer(sys, response(status, "text/plain", &body, head_only, &[]));
                }
            });
        }
    }

    /// Make room for one more connection: close the oldest that is still sending its head.
    /// False when every connection is past that (then the new one is refused).
    fn evict_one(r: &mut Reactor<Client>) -> bool {
        let mut oldest: Option<(u64, u32)> = None;
        for k in r.slots.keys() {
            if let Some((_, c)) = r.slots.get_any_mut(k)
                && c.phase == Phase::Reading
                && !c.closing
                && oldest.is_none_or(|(t, _)| c.accepted_ms < t)
            {
                oldest = Some((c.accepted_ms, k));
            }
        }
        let Some((_, slot)) = oldest else {
            return false;
        };
        with(r, slot, None, |c, _| c.closing = true);
        true
    }
}

impl Desk {
    /// A complete head arrived on `c`: decide and answer (or queue its reload).
    fn request(&mut self, c: &mut Client, sys: &mut RingSys<'_>) {
        let cfg = self.state.live.config();
        let policy = cfg.admin.as_ref().unwrap_or(&self.policy);
        let req = match guard::parse(&c.head) {
            Ok(req) => req,
            Err(why) => {
                return c.answer(
                    sys,
                    response(400, "text/plain", &format!("{why}\n"), false, &[]),
                );
            }
        };
        let head_only = req.method == "HEAD";
        let token = self.tokens.current(policy);
        match guard::check(&req, c.local, policy, token.as_ref()) {
            Err(refusal) => {
                let extra: &[&str] = match refusal.status {
                    401 => &["WWW-Authenticate: Bearer realm=\"ringway admin\""],
                    405 if req.path.starts_with("/reload")
                        || req.path.starts_with("/rebalance") =>
                    {
                        &["Allow: POST"]
                    }
                    405 => &["Allow: GET, HEAD"],
                    _ => &[],
                };
                if refusal.status == 401 || refusal.status == 403 {
                    tracing::warn!(
                        "admin: {} {} refused ({}): {}",
                        req.method.escape_debug(),
                        req.path.escape_debug(),
                        refusal.status,
                        refusal.why
                    );
                }
                let body = format!("{}\n", refusal.why);
                c.answer(
                    sys,
                    response(refusal.status, "text/plain", &body, head_only, extra),
                );
            }
            Ok(Endpoint::Read(read)) => {
                let (status, ctype, body) = super::report(read, &self.state);
                c.answer(sys, response(status, ctype, &body, head_only, &[]));
            }
            Ok(Endpoint::Rebalance) => {
                let (status, body) = if self.state.stopping.load(Ordering::Relaxed) {
                    (503, "stopping: not rebalancing\n".to_string())
                } else {
                    match (
                        &self.state.rebalance,
                        guard::rebalance_of(&req.path, cfg.runtime.drain_spread),
                    ) {
                        (None, _) => (404, "not found\n".to_string()),
                        (_, Err(why)) => (400, format!("{why}\n")),
                        (Some(f), Ok(shed)) => {
                            let said = f(shed);
                            tracing::info!("admin: rebalance: {said}");
                            (200, format!("{said}\n"))
                        }
                    }
                };
                c.answer(sys, response(status, "text/plain", &body, head_only, &[]));
            }
            Ok(Endpoint::Reload) => {
                let refused = if self.state.stopping.load(Ordering::Relaxed) {
                    Some((503, "stopping: not reloading"))
                } else {
                    match &self.reload_tx {
                        None => Some((404, "not found")),
                        Some(tx) => match tx.try_send((sys.slot, sys.generation)) {
                            Ok(()) => None,
                            Err(TrySendError::Full(_)) => {
                                Some((503, "reloads are already queued: try again"))
                            }
                            Err(TrySendError::Disconnected(_)) => {
                                Some((503, "the reload thread is gone"))
                            }
                        },
                    }
                };
                match refused {
                    Some((status, why)) => c.answer(
                        sys,
                        response(status, "text/plain", &format!("{why}\n"), head_only, &[]),
                    ),
                    None => {
                        c.phase = Phase::Reloading { head_only };
                        c.deadline_ms = sys.now_ms + RELOAD_WAIT.as_millis() as u64;
                    }
                }
            }
        }
    }
}

impl Client {
    /// Queue `bytes` as the answer; the connection half-closes once they are sent.
    fn answer(&mut self, sys: &mut RingSys<'_>, bytes: Vec<u8>) {
        let chunk = sys.put(bytes);
        self.sock.push(chunk);
        self.phase = Phase::Answering;
        self.deadline_ms = sys.now_ms + REQUEST_DEADLINE.as_millis() as u64;
    }

    fn on_recv(&mut self, sys: &mut RingSys<'_>, c: Cqe) {
        self.sock.recv_ended(c.more());
        if c.res <= 0 {
            sys.ring.pool.release_of(&c);
            match -c.res {
                // Re-armed by settle (ENOBUFS) or our own cancel.
                libc::ENOBUFS | libc::ECANCELED => {}
                // EOF or an error: nothing more will come.
                _ => self.sock.mark_eof(),
            }
            return;
        }
        let bid = c.buf_id().expect("recv data has a buffer");
        let data = sys.data(bid, c.res as u32);
        match self.phase {
            Phase::Reading => {
                let room = HEAD_MAX - self.head.len();
                let take = data.len().min(room);
                self.head.extend_from_slice(&data[..take]);
                self.discarded += data.len() - take;
            }
            _ => self.discarded += data.len(),
        }
        sys.ring.pool.release(bid);
        if self.phase != Phase::Reading {
            if self.discarded > DISCARD_MAX {
                self.closing = true;
            }
            return;
        }
        if let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") {
            // What follows the head (a body) is dropped, and counted.
            self.discarded += self.head.len() - (end + 4);
            self.head.truncate(end + 4);
            self.phase = Phase::Complete;
        } else if self.head.len() >= HEAD_MAX {
            self.answer(
                sys,
                response(431, "text/plain", "request head too large\n", false, &[]),
            );
        }
    }

    /// After any event: send, half-close, keep reading (to drop what comes) or close. True
    /// when the client is gone (its slot may be freed).
    fn settle(&mut self, sys: &mut RingSys<'_>) -> bool {
        if self.sock.eof() && matches!(self.phase, Phase::Reading | Phase::Lingering) {
            self.closing = true;
        }
        if self.closing {
            self.cancels += self.sock.retire(sys, ConnId::CLIENT);
            return self.sock.close_when_done(sys, self.cancels.into(), false);
        }
        self.sock.kick(sys, ConnId::CLIENT);
        if self.phase == Phase::Answering && self.sock.flushed() {
            sys.shutdown(self.sock.fd());
            self.phase = Phase::Lingering;
            self.deadline_ms = sys.now_ms + LINGER.as_millis() as u64;
        }
        self.cancels += self
            .sock
            .sync_recv(sys, ConnId::CLIENT, !self.sock.eof(), UNCAPPED);
        false
    }
}

impl Handler<Client> for AdminLoop {
    fn on_core(&mut self, r: &mut Reactor<Client>, c: Cqe) {
        if c.ud == wake_ud() {
            return self.reloads_done(r);
        }
        if c.ud != accept_ud() {
            return;
        }
        if !c.more() && !self.stop.load(Ordering::Relaxed) {
            r.ring.accept_multi(self.listener.as_raw_fd(), accept_ud());
        }
        if c.res < 0 {
            return;
        }
        let (fd, _) = crate::sys::accepted(c.res);
        if r.slots.len() >= CONNECTIONS_MAX && !Self::evict_one(r)
            || r.slots.len() >= 2 * CONNECTIONS_MAX
        {
            let _ = nix::unistd::close(fd);
            return;
        }
        let local = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd)
            .ok()
            .and_then(|a| crate::sys::sockaddr(&a))
            .unwrap_or(self.desk.policy.listen);
        let now = r.now_ms();
        let deadline = now + REQUEST_DEADLINE.as_millis() as u64;
        let (slot, generation) = r.slots.insert(|_, _| Client {
            sock: Conn::new(fd),
            local,
            head: Vec::new(),
            discarded: 0,
            phase: Phase::Reading,
            closing: false,
            cancels: 0,
            accepted_ms: now,
            deadline_ms: deadline,
            armed_ms: deadline,
        });
        r.wheel.insert(slot, deadline);
        with(r, slot, Some(generation), |_, _| {});
    }

    fn on_slot(&mut self, r: &mut Reactor<Client>, c: Cqe) {
        let desk = &mut self.desk;
        with(
            r,
            c.ud.slot(),
            Some(c.ud.generation()),
            |client, sys| match c.ud.op() {
                Some(Op::Recv) => {
                    client.on_recv(sys, c);
                    if client.phase == Phase::Complete {
                        desk.request(client, sys);
                    }
                }
                Some(Op::Send) => {
                    let closing = client.closing;
                    if let Sent::Failed(_) =
                        client.sock.on_sent(sys, ConnId::CLIENT, c.res, closing)
                    {
                        client.closing = true;
                    }
                }
                Some(Op::Cancel) => client.cancels = client.cancels.saturating_sub(1),
                _ => {}
            },
        );
    }

    fn on_timer(&mut self, r: &mut Reactor<Client>, slot: u32, generation: u32, due: u64) {
        let now = r.now_ms();
        let Some(c) = r.slots.get_mut(slot, generation) else {
            return;
        };
        if c.armed_ms != due {
            // An entry that was replaced.
            return;
        }
        if c.deadline_ms > now {
            c.armed_ms = c.deadline_ms;
            r.wheel.insert(slot, c.deadline_ms);
            return;
        }
        let phase = c.phase;
        with(r, slot, Some(generation), |c, sys| match phase {
            Phase::Reloading { head_only } => c.answer(
                sys,
                response(
                    503,
                    "text/plain",
                    "the reload is still running: its outcome will be in the log\n",
                    head_only,
                    &[],
                ),
            ),
            _ => c.closing = true,
        });
        // A client still here has a new deadline: arm it.
        if let Some(c) = r.slots.get_mut(slot, generation)
            && c.armed_ms == due
        {
            c.armed_ms = c.deadline_ms;
            r.wheel.insert(slot, c.deadline_ms);
        }
    }
}

/// A whole response with `Connection: close` (no body for `HEAD`).
fn response(status: u16, ctype: &str, body: &str, head_only: bool, extra: &[&str]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: ringway\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        crate::http::reason(status),
        body.len()
    );
    for h in extra {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}
