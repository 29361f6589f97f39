//! The transport of one connection of a session: the seam between the socket (a reactor
//! [`Conn`]: fd, recv arming, send queue, half-close, cancel-then-close) and the protocol
//! code, which sees plaintext only. Bytes received into a pool buffer come out of
//! [`Transport::received`] as plaintext chunks, and plaintext chunks go in through
//! [`Transport::push`]; the protocol code never learns whether a connection is encrypted.
//!
//! `Plain` passes the pool buffer through untouched: a received buffer is the chunk that is
//! sent on the peer, no copy. `Server` (a client of ringway on a TLS listener) and `Client` (a
//! TLS upstream) run rustls on the worker's ring ([`crate::tls`]): records are processed in
//! the buffer they were received into, plaintext comes out as one chunk, and what is pushed
//! is encrypted into the socket's send queue.

use std::ops::{Deref, DerefMut};
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;

use super::{Fail, Info, Tls};
use crate::reactor::{Conn, Sent, Sys};
use crate::uring::{Chunk, ConnId};

/// The socket is a field of its own, the same for every transport, so that reading or
/// changing its state (the most frequent thing the session does) is a field access, not a
/// match: a TLS connection keeps its records state beside it, in one box.
#[derive(Debug)]
pub struct Transport {
    conn: Conn,
    /// `None`: plaintext TCP.
    tls: Option<Box<Secure>>,
}

/// The TLS state of a connection, whichever end ringway is.
#[derive(Debug)]
enum Secure {
    /// ringway the server (a client of ringway on a TLS listener).
    Server(Tls<UnbufferedServerConnection>),
    /// ringway the client (toward an upstream).
    Client(Tls<UnbufferedClientConnection>),
}

/// `$e` on the TLS connection `$t` (its socket as `$c`), whichever end it is; `$p` on a
/// plain one. `ref` first: read-only.
macro_rules! on_tls {
    (ref $self:expr, $t:ident, $c:ident => $e:expr, $p:expr) => {
        on_tls!(@as_deref, $self, $t, $c => $e, $p)
    };
    (@$how:ident, $self:expr, $t:ident, $c:ident => $e:expr, $p:expr) => {{
        let Transport { conn: $c, tls } = $self;
        match tls.$how() {
            None => $p,
            Some(Secure::Server($t)) => $e,
            Some(Secure::Client($t)) => $e,
        }
    }};
    ($self:expr, $t:ident, $c:ident => $e:expr, $p:expr) => {
        on_tls!(@as_deref_mut, $self, $t, $c => $e, $p)
    };
}

impl Transport {
    pub fn plain(fd: RawFd) -> Transport {
        Transport {
            conn: Conn::new(fd),
            tls: None,
        }
    }

    /// A client accepted on a TLS listener: under `config`, or `by_client` (the same but for
    /// following the client's order of suites) if its hello lists ChaCha20 first.
    pub fn server(
        fd: RawFd,
        config: &Arc<rustls::ServerConfig>,
        by_client: &Arc<rustls::ServerConfig>,
    ) -> Transport {
        let engine = UnbufferedServerConnection::new(config.clone())
            .expect("a connection was made from this configuration when it was resolved");
        Transport {
            conn: Conn::new(fd),
            tls: Some(Box::new(Secure::Server(Tls::serving(
                engine,
                by_client.clone(),
            )))),
        }
    }

    /// A TLS client on `fd` (an upstream, or the load generator's connection).
    pub fn client(
        fd: RawFd,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Transport, rustls::Error> {
        let engine = UnbufferedClientConnection::new(config, name)?;
        Ok(Transport {
            conn: Conn::new(fd),
            tls: Some(Box::new(Secure::Client(Tls::new(engine)))),
        })
    }

    /// Bytes received on the socket, as plaintext for the protocol (`Ok(None)`: nothing for
    /// it yet, the transport kept or consumed them).
    pub fn received(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        id: ConnId,
        c: Chunk,
    ) -> Result<Option<Chunk>, Fail> {
        on_tls!(self, t, conn => t.received(conn, io, id, c), Ok(Some(c)))
    }

    /// Queue plaintext for sending. A TLS connection that failed drops it, and says so in
    /// [`Transport::failed`].
    pub fn push(&mut self, io: &mut (impl Sys + ?Sized), c: Chunk) {
        let r = on_tls!(self, t, conn => t.push(conn, io, c), {
            conn.push(c);
            Ok(())
        });
        if let Err(e) = r {
            tracing::debug!(target: "tls", "encrypting failed: {e:?}");
        }
    }

    /// Start sending what is queued, if nothing is in flight.
    pub fn kick(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId) {
        on_tls!(self, t, conn => t.kick(conn, io, id), conn.kick(io, id))
    }

    /// A send completed.
    pub fn on_sent(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        id: ConnId,
        res: i32,
        dropping: bool,
    ) -> Sent {
        self.conn.on_sent(io, id, res, dropping)
    }

    /// Chunks waiting to be sent (with plaintext a TLS handshake holds back).
    #[inline]
    pub fn pending(&self) -> usize {
        on_tls!(ref self, t, conn => t.pending(conn), conn.pending())
    }

    /// Nothing waiting, nothing in flight.
    #[inline]
    pub fn flushed(&self) -> bool {
        self.pending() == 0
    }

    /// Stop using the socket (see [`Conn::retire`]); without one, what waited goes nowhere.
    pub fn retire(&mut self, io: &mut (impl Sys + ?Sized), id: ConnId) -> u8 {
        if self.fd() < 0 {
            self.release_tls(io);
        }
        self.conn_mut().retire(io, id)
    }

    /// Close a retired socket once nothing is in flight (see [`Conn::close_when_done`]);
    /// unless `keep_queue`, what the transport holds is given back.
    #[inline]
    pub fn close_when_done(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        cancels: u16,
        keep_queue: bool,
    ) -> bool {
        // Called after every event of a session: the common case (not closing) is one test,
        // inlined; the rest is out of line.
        if !self.retiring() {
            return false;
        }
        self.close_retired(io, cancels, keep_queue)
    }

    #[inline(never)]
    fn close_retired(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        cancels: u16,
        keep_queue: bool,
    ) -> bool {
        if self.fd() >= 0 && self.ops() == 0 && cancels == 0 {
            on_tls!(self, t, conn => t.farewell(conn, io), {});
        }
        let closed = self.conn_mut().close_when_done(io, cancels, keep_queue);
        if closed && !keep_queue {
            self.release_tls(io);
        }
        closed
    }

    /// The socket belongs to someone else now (a tunnel handed to a new process): it is
    /// forgotten, never closed from here. Nothing may be in flight on it.
    pub fn forget_fd(&mut self) {
        self.conn_mut().reset_fd(-1);
    }

    /// Whether the connection can go on in another process as it stands (a tunnel handed
    /// over in a binary upgrade): plain TCP, or TLS whose records can be carried.
    pub fn can_carry(&self) -> bool {
        on_tls!(ref self, t, _c => t.carriable(), true)
    }

    /// What another process needs to go on with this connection besides its socket: `Ok(None)`
    /// for plain TCP, the TLS state ([`Tls::export`]) otherwise; `Err` when it cannot be
    /// carried.
    pub fn carry(&self) -> Result<Option<Vec<u8>>, &'static str> {
        on_tls!(ref self, t, _c => t.export().map(Some).ok_or("tls"), Ok(None))
    }

    /// A connection another process handed over: its socket, and what [`Transport::carry`]
    /// wrote there (its TLS state, if any; which end ringway is comes with it).
    pub fn carried(fd: RawFd, tls: Option<&[u8]>) -> Result<Transport, String> {
        let tls = match tls {
            None => None,
            Some(b) => Some(Box::new(match b.first() {
                Some(0) => Secure::Server(Tls::import(b)?),
                Some(1) => Secure::Client(Tls::import(b)?),
                _ => return Err("a bad TLS state".into()),
            })),
        };
        Ok(Transport {
            conn: Conn::new(fd),
            tls,
        })
    }

    /// Close an idle connection that has nothing in flight (the keepalive pool's), a TLS one
    /// with close_notify first (see `Tls::farewell`).
    pub fn close_idle(mut self) {
        let mut out = Vec::new();
        let notify = on_tls!(&mut self, t, conn => t.close_notify_now(conn, &mut out), false);
        if notify {
            use nix::sys::socket::MsgFlags;
            let _ = nix::sys::socket::send(
                self.fd(),
                &out,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            );
        }
        let _ = nix::unistd::close(self.fd());
    }

    /// Whether the connection could carry another exchange: plain, or TLS at rest (open,
    /// nothing held or half-received, no close_notify sent).
    pub fn at_rest(&self) -> bool {
        on_tls!(ref self, t, _c => t.at_rest(), true)
    }

    /// The connection itself, kept open for the upstream keepalive pool, once nothing of it
    /// is in flight (as [`Conn::close_when_done`] would close it); plaintext waiting for the
    /// next connection (`keep_queue`) stays here, on a transport without a socket.
    pub fn detach_when_done(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        cancels: u16,
        keep_queue: bool,
    ) -> Option<Transport> {
        if self.fd() < 0 || !self.retiring() || self.ops() > 0 || cancels > 0 {
            return None;
        }
        let waiting = self.take_waiting(io);
        let mut out = std::mem::replace(self, Transport::plain(-1));
        out.conn_mut().handed_back();
        self.conn_mut().mark_unready();
        for c in waiting {
            if keep_queue {
                self.conn_mut().push(c);
            } else {
                io.release(c);
            }
        }
        Some(out)
    }

    /// Take a kept connection (from the keepalive pool) in place of this socketless one; the
    /// plaintext waiting here goes on it.
    pub fn adopt(&mut self, io: &mut (impl Sys + ?Sized), kept: Transport) {
        let waiting = self.take_waiting(io);
        *self = kept;
        for c in waiting {
            self.push(io, c);
        }
    }

    /// The plaintext not sent yet: held back by a TLS handshake, or in a plain socket's queue
    /// (what a TLS socket has queued is ciphertext for that connection only: released).
    fn take_waiting(&mut self, io: &mut (impl Sys + ?Sized)) -> Vec<Chunk> {
        let mut waiting = Vec::new();
        on_tls!(self, t, conn => waiting = t.take_held(), {
            while let Some(c) = conn.pop() {
                waiting.push(c);
            }
        });
        while let Some(c) = self.conn.pop() {
            io.release(c);
        }
        waiting
    }

    /// A new upstream socket `fd` (a new attempt): plaintext that waited for the previous one
    /// is kept; with `tls`, a new TLS connection is started on it. `preface` goes out first,
    /// as it is, below any TLS (a PROXY protocol header).
    pub fn reset_fd(
        &mut self,
        io: &mut (impl Sys + ?Sized),
        fd: RawFd,
        tls: Option<(
            Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        )>,
        preface: Option<Vec<u8>>,
    ) -> Result<(), rustls::Error> {
        // What is queued on the old socket (a previous hello) goes nowhere.
        let waiting = self.take_waiting(io);
        self.release_tls(io);
        *self = match tls {
            None => Transport::plain(fd),
            Some((config, name)) => match Transport::client(fd, config, name) {
                Ok(t) => t,
                Err(e) => {
                    waiting.into_iter().for_each(|c| io.release(c));
                    *self = Transport::plain(fd);
                    self.conn_mut().mark_unready();
                    return Err(e);
                }
            },
        };
        self.conn_mut().mark_unready();
        if let Some(p) = preface {
            let c = io.put(p);
            self.conn_mut().push(c);
        }
        for c in waiting {
            self.push(io, c);
        }
        Ok(())
    }

    /// Plaintext TCP: its bytes on the wire are the stream's (what may be spliced).
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.tls.is_none()
    }

    /// TLS failed on this connection (a record could not be sealed or opened).
    #[inline]
    pub fn failed(&self) -> bool {
        on_tls!(ref self, t, _c => t.failed(), false)
    }

    /// The negotiated TLS parameters (for the access log); `None` on a plain connection.
    pub fn tls_info(&self) -> Option<Info<'_>> {
        on_tls!(ref self, t, _c => Some(t.info()), None)
    }

    fn release_tls(&mut self, io: &mut (impl Sys + ?Sized)) {
        on_tls!(self, t, _c => t.release(io), {})
    }

    #[inline]
    fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// The socket under the transport: its state is the same whatever the transport does.
impl Deref for Transport {
    type Target = Conn;

    #[inline]
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for Transport {
    #[inline]
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn_mut()
    }
}
