//! What a session is handed by its worker with each event: the effects it may ask for (`Io`:
//! the sockets, the access log, the metrics), the worker's shared state (`Env`), and what it
//! may ask the worker to start (`Inner`, an HTTP/2 stream's session).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::{AccessLog, Listen};
use crate::config::Config;
use crate::reactor::Sys;
use crate::upstream::Balancers;

/// Effects a handler asks for: the socket effects of [`Sys`], the access log, and what the
/// worker's metrics record.
pub trait Io: Sys {
    /// Emit an access-log line.
    fn log(&mut self, line: &AccessLog);
    /// Something worth a metric happened.
    fn observe(&mut self, what: Observed);
    /// The line of a tunnel's opening (after its 101), where the configuration asks for one
    /// (`runtime.access_log_open`).
    fn log_open(&mut self, _line: &AccessLog) {}
    /// The worker's number (which row of per-worker counters is its own).
    fn worker(&self) -> usize {
        0
    }
    /// The same, as `dyn Io` (for a protocol added as a type, which is called through a box).
    fn as_dyn(&mut self) -> &mut dyn Io;
}

/// What a session tells the worker's metrics, as it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// An upstream connect completed after this many milliseconds.
    Connected(u64),
    /// A 101 went to the client this many milliseconds after its request began.
    TunnelOpened(u64),
    /// This many bytes of a tunnel went by splice(2), socket to pipe.
    Spliced(u32),
    /// A client connection began speaking HTTP/2.
    Http2Opened,
    /// An HTTP/2 connection took this many streams.
    Http2Streams(u32),
    /// `n` RST_STREAM frames with `code`, sent by this side (`sent`) or by the client.
    Http2Resets {
        sent: bool,
        code: crate::h2::Code,
        n: u32,
    },
    /// This side sent a GOAWAY with this code.
    Http2Goaway(crate::h2::Code),
    /// A location's `message_rate` delayed a client's WebSocket frame.
    MessageDelayed,
}

/// What a handler needs from the worker besides I/O: its balancers, pool, inner sessions and
/// auth answers (the worker's [`Kit`], reached through one pointer: an `Env` is made for every
/// event, so it stays two words) and whether it drains.
pub struct Env<'a> {
    /// The worker is draining (shutdown began): answer what is in progress, then close
    /// instead of keeping the client connection alive.
    pub draining: bool,
    kit: &'a mut Kit,
}

impl<'a> Env<'a> {
    pub fn new(kit: &'a mut Kit, draining: bool) -> Env<'a> {
        Env { draining, kit }
    }
}

impl std::ops::Deref for Env<'_> {
    type Target = Kit;
    fn deref(&self) -> &Kit {
        self.kit
    }
}

impl std::ops::DerefMut for Env<'_> {
    fn deref_mut(&mut self) -> &mut Kit {
        self.kit
    }
}

/// What a worker keeps for its sessions' handlers.
pub struct Kit {
    /// The worker's balancers, per configuration in use.
    pub balancers: Balancers,
    /// The worker's idle upstream connections (keepalive).
    pub pool: crate::upstream::pool::Pool,
    /// Sessions to start beside this one once its event is handled (an HTTP/2 stream's).
    pub inner: Vec<Inner>,
    /// The worker's kept `auth_request` answers.
    pub auth: super::auth::Cache,
}

impl Kit {
    pub fn new(balancers: Balancers) -> Kit {
        Kit {
            balancers,
            pool: Default::default(),
            inner: Vec::new(),
            auth: Default::default(),
        }
    }
}

/// A session a protocol asks the worker to start beside its own: the inner HTTP/1 session that
/// carries one HTTP/2 stream, over its end of a socket pair, for the same client, under the
/// same configuration and listener (its `X-Forwarded-Proto`, its servers).
#[derive(Debug)]
pub struct Inner {
    pub fd: RawFd,
    /// The other end of its socket pair, the HTTP/2 connection's (what ties the two together
    /// when a binary upgrade hands them over).
    pub peer: RawFd,
    pub client: SocketAddr,
    pub listen: Listen,
    pub cfg: Arc<Config>,
}
