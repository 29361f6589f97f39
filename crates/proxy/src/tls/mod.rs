//! TLS on a reactor connection: rustls's unbuffered API driven by the worker that owns the
//! connection, on its ring, from the buffers the ring received into. No thread, no blocking
//! call: a received buffer is processed where it lies, the plaintext comes out as one chunk,
//! handshake records and encrypted application data go out through the connection's send
//! queue like any other chunk.
//!
//! Once the handshake is done (TLS 1.3 or 1.2), rustls hands over the traffic secrets and
//! ringway runs the records itself ([`records`]): decrypted in place in the pool buffer they
//! arrived in, so the plaintext goes on to the peer with no copy and no allocation; sealed into
//! one recycled buffer on the way out. (rustls 0.23's own unbuffered record path copies each
//! record into a `Vec` of its own both ways.) See `docs/design-notes.md`.
//!
//! Memory: between records a connection holds its two keys and rustls's small post-handshake
//! state. A record cut by the end of a received buffer is kept (`partial`, a recycled
//! allocation) until the rest arrives, then given back.
//!
//! The room knows sockets and buffers (`reactor`, `uring`), nothing of HTTP or sessions.

mod carry;
mod drive;
mod hello;
pub mod records;
pub mod setup;
pub mod transport;

pub use carry::{CARRIED_MAX, seal_carried};
pub(crate) use drive::drive;
pub use hello::{Hello, peek_hello, prefers_chacha};

pub use transport::Transport;

use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::UnbufferedStatus;

use crate::reactor::{Conn, Sys};
use crate::uring::{Chunk, ConnId, Src};
use records::{Keys, Records};
use rustls::kernel::KernelConnection;

/// The two ends rustls plays: a server (clients of ringway) or a client (TLS upstreams).
pub trait Engine: Sized {
    type Data;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &rustls::CommonState;
    /// The handshake is done: the secrets and rustls's post-handshake state, for ringway's
    /// own record layer, with the secrets [`records::Capture`] caught, if any, kept to be
    /// carried.
    fn into_records(
        self,
        captured: Option<&records::Captured>,
    ) -> Result<Records<Keys<Self::Data>>, rustls::Error>;
    /// A fresh server connection under `config` (`None` for a client end): a server's
    /// connection is made again under its listener's other configuration when the client's
    /// hello asks for ChaCha20 (`Tls::first_flight`).
    fn serving(config: Arc<rustls::ServerConfig>) -> Option<Self>;
    /// Whether this end speaks first (a client sends its hello as soon as it is connected).
    const CLIENT: bool;
    /// The most this end holds of a handshake not complete yet (a handshake message may span
    /// records; rustls joins them in the caller's buffer).
    const PARTIAL_MAX: usize;
}

/// The two ends implement the engine alike; only their types and who speaks first differ.
macro_rules! engine {
    ($conn:ty, $data:ty, $client:expr, $partial_max:expr, $serving:expr) => {
        impl Engine for $conn {
            type Data = $data;
            const CLIENT: bool = $client;
            const PARTIAL_MAX: usize = $partial_max;
            fn serving(config: Arc<rustls::ServerConfig>) -> Option<Self> {
                $serving(config)
            }
            fn process<'c, 'i>(
                &'c mut self,
                buf: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(buf)
            }
            fn common(&self) -> &rustls::CommonState {
                self
            }
            fn into_records(
                self,
                captured: Option<&records::Captured>,
            ) -> Result<Records<Keys<Self::Data>>, rustls::Error> {
                let (secrets, kernel) = self.dangerous_into_kernel_connection()?;
                let keys = Keys::new(&secrets, kernel, captured, $client);
                Records::new(secrets, keys)
            }
        }
    };
}

// A server receives only a client's hello and Finished (a few KiB, a post-quantum key share
// included): a client sending more is refused at 32 KiB rather than held, up to rustls's 64 KiB
// message, until `header_timeout`. A client receives the server's certificate chain, which
// may be larger.
engine!(
    UnbufferedServerConnection,
    rustls::server::ServerConnectionData,
    false,
    32 * 1024,
    |c| UnbufferedServerConnection::new(c).ok()
);
engine!(
    UnbufferedClientConnection,
    rustls::client::ClientConnectionData,
    true,
    64 * 1024 + 16 * 1024 + 1024,
    |_| None
);

/// Who runs the records: rustls during the handshake, ringway once it is done.
enum Stage<E: Engine> {
    Handshake(Box<E>),
    Records(Box<Records<Keys<E::Data>>>),
    /// Between the two (only while handing over).
    Gone,
}

/// Why a TLS connection cannot go on.
#[derive(Debug)]
pub enum Fail {
    /// A server got plain HTTP where a ClientHello belonged (the caller answers it in plain
    /// text: the transport now passes bytes through untouched).
    PlainHttp,
    /// The handshake or a record failed; the alert (if any) is queued on the connection.
    Tls(rustls::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Handshaking,
    Open,
    /// Plain bytes both ways (the answer to plain HTTP on a TLS port).
    Raw,
    /// Failed: nothing more is read or encrypted; only what is queued goes out.
    Failed,
}

/// A TLS connection over a reactor [`Conn`].
pub struct Tls<E: Engine> {
    stage: Stage<E>,
    state: State,
    /// Ciphertext received but not processed yet (a record cut by the end of a buffer).
    partial: Vec<u8>,
    /// Bytes at the front of `partial` that rustls has seen and not discarded (see `drive`).
    shown: usize,
    /// Plaintext queued before the handshake completed, sent (encrypted) once it has.
    held: Vec<Chunk>,
    /// A client's hello has been produced.
    started: bool,
    /// A close_notify has been queued.
    notified: bool,
    /// The server name the client asked for (read from its hello), for the access log.
    sni: Option<Box<str>>,
    /// The handshake resumed a session (kept for the log once rustls has handed over).
    resumed: bool,
    /// ALPN chose `h2` (kept, as `resumed` is, past the hand-over).
    h2: bool,
    /// The secrets caught during the handshake for the records to carry (`records::Capture`,
    /// set on the configuration of a process that hands tunnels over).
    captured: Option<Box<records::Captured>>,
    /// A server's other configuration, which follows the client's order of cipher suites
    /// (its own prefers AES-128-GCM): used if the client's hello lists ChaCha20 first, and
    /// let go at the first bytes.
    by_client: Option<Arc<rustls::ServerConfig>>,
}

impl<E: Engine> std::fmt::Debug for Tls<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("state", &self.state)
            .field("partial", &self.partial.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl<E: Engine> Tls<E>
where
    KernelConnection<E::Data>: records::Kernel,
{
    pub fn new(engine: E) -> Tls<E> {
        Tls {
            stage: Stage::Handshake(Box::new(engine)),
            state: State::Handshaking,
            partial: Vec::new(),
            shown: 0,
            held: Vec::new(),
            started: false,
            notified: false,
            sni: None,
            resumed: false,
            h2: false,
            captured: None,
            by_client: None,
        }
    }

    /// A server connection that goes over to `by_client` if the client's hello lists
    /// ChaCha20 first.
    pub fn serving(engine: E, by_client: Arc<rustls::ServerConfig>) -> Tls<E> {
        Tls {
            by_client: Some(by_client),
            ..Tls::new(engine)
        }
    }

    /// TLS failed on this connection: nothing more is read or sealed.
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Open, nothing held, nothing half-received, no close_notify sent: fit to carry another
    /// exchange (the upstream keepalive pool).
    pub fn at_rest(&self) -> bool {
        self.state == State::Open
            && self.held.is_empty()
            && self.partial.is_empty()
            && !self.notified
            && matches!(self.stage, Stage::Records(_))
    }

    /// Chunks waiting: plaintext held for the handshake plus what is queued on the socket.
    pub fn pending(&self, conn: &Conn) -> usize {
        self.held.len() + conn.pending()
    }

    /// Negotiated version, cipher suite and requested server name, once known.
    pub fn info(&self) -> Info<'_> {
        let (version, suite) = match &self.stage {
            Stage::Handshake(e) => (
                e.common().protocol_version(),
                e.common().negotiated_cipher_suite(),
            ),
            Stage::Records(r) => (
                Some(records::Kernel::protocol_version(r.kernel())),
                records::Kernel::negotiated_cipher_suite(r.kernel()),
            ),
            Stage::Gone => (None, None),
        };
        Info {
            version: version.map(version_name),
            cipher: suite.and_then(|s| s.suite().as_str()),
            sni: self.sni.as_deref(),
            resumed: self.resumed,
            h2: self.h2,
        }
    }

    /// Bytes received on the socket: plaintext for the caller, if a record completed.
    /// Handshake records produced on the way are sent at once.
    pub fn received(
        &mut self,
        conn: &mut Conn,
        io: &mut (impl Sys + ?Sized),
        id: ConnId,
        c: Chunk,
    ) -> Result<Option<Chunk>, Fail> {
        match self.state {
            State::Raw => return Ok(Some(c)),
            State::Failed => {
                io.release(c);
                return Ok(None);
            }
            State::Handshaking | State::Open => {}
        }
        if matches!(self.stage, Stage::Records(_)) {
            return self.received_records(conn, io, c);
        }
        if !E::CLIENT
            && self.state == State::Handshaking
            && self.partial.is_empty()
            && let Some(f) = self.first_flight(conn, io, id, c)
        {
            io.release(c);
            return Err(f);
        }
        let mut plain = io.scratch();
        let mut out = io.scratch();
        let Tls {
            stage,
            partial,
            shown,
            captured,
            ..
        } = self;
        let Stage::Handshake(engine) = stage else {
            // Records are handled above; `Gone` only lives inside `hand_over`.
            io.release(c);
            io.recycle(plain);
            io.recycle(out);
            return Ok(None);
        };
        let result = match c.src {
            Src::Pool(bid) if partial.is_empty() => {
                let buf = &mut io.data_mut(bid, c.off + c.len)[c.off as usize..];
                let r = records::capturing(captured, || {
                    drive(&mut **engine, buf, shown, &mut plain, &mut out)
                });
                if let Ok(used) = r
                    && used < buf.len()
                {
                    partial.extend_from_slice(&buf[used..]);
                }
                r
            }
            _ => {
                if partial.is_empty() {
                    *partial = io.scratch();
                }
                partial.extend_from_slice(io.data_of(c));
                let r = records::capturing(captured, || {
                    drive(&mut **engine, partial, shown, &mut plain, &mut out)
                });
                if let Ok(used) = r {
                    partial.drain(..used);
                }
                r
            }
        };
        io.release(c);
        self.queue(conn, io, out);
        let done = match &self.stage {
            Stage::Handshake(e) => !e.common().is_handshaking(),
            _ => false,
        };
        let fail = match result {
            // What a handshake not complete yet may hold (after it, what is left is records).
            Ok(_) if !done && self.partial.len() > E::PARTIAL_MAX => Some(Fail::Tls(
                rustls::Error::General("record or handshake message too large".into()),
            )),
            Ok(_) => None,
            Err(e) => Some(Fail::Tls(e)),
        };
        if let Some(f) = fail {
            io.recycle(plain);
            self.fail(io);
            conn.kick(io, id);
            return Err(f);
        }
        if self.state == State::Handshaking
            && done
            && let Err(e) = self.opened(conn, io, &mut plain)
        {
            io.recycle(plain);
            conn.kick(io, id);
            return Err(e);
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            // Idle between records: hold no buffer.
            io.recycle(std::mem::take(&mut self.partial));
        }
        self.kick(conn, io, id);
        if plain.is_empty() {
            io.recycle(plain);
            Ok(None)
        } else {
            Ok(Some(io.put(plain)))
        }
    }

    /// A server's first bytes, before rustls sees them: plain HTTP sent to a TLS port, or a
    /// ClientHello offering only TLS 1.0/1.1 (refused here with the alert its version
    /// understands); its SNI noted. The failure, if any (the caller gives `c` back).
    fn first_flight(
        &mut self,
        conn: &mut Conn,
        io: &mut (impl Sys + ?Sized),
        id: ConnId,
        c: Chunk,
    ) -> Option<Fail> {
        let data = io.data_of(c);
        // A TLS record starts with its content type (22, handshake); a letter is a
        // request line: plain HTTP sent to a TLS port.
        if data.first().is_some_and(|b| b.is_ascii_uppercase()) {
            self.state = State::Raw;
            return Some(Fail::PlainHttp);
        }
        if let Some(hello) = peek_hello(data) {
            if hello.old_only {
                // Only TLS 1.0/1.1 offered: a protocol_version alert (rustls would say
                // handshake_failure), in a record of the version the client spoke.
                let alert = [21, 3, 1, 0, 2, 2, 70];
                let mut out = io.scratch();
                out.extend_from_slice(&alert);
                self.state = State::Failed;
                self.queue(conn, io, out);
                conn.kick(io, id);
                return Some(Fail::Tls(rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::Tls12NotOffered,
                )));
            }
            self.sni = hello.sni.map(Into::into);
        }
        // Nothing has reached rustls yet: a client without AES hardware (ChaCha20 first) gets
        // a connection under the configuration that follows its order.
        if let Some(by_client) = self.by_client.take()
            && prefers_chacha(data)
            && let Some(engine) = E::serving(by_client)
        {
            self.stage = Stage::Handshake(Box::new(engine));
        }
        None
    }

    /// The handshake has just completed: the records are ringway's from here (what came after
    /// the record that completed it is opened into `plain`), and the plaintext held meanwhile
    /// is sealed and queued.
    fn opened(
        &mut self,
        conn: &mut Conn,
        io: &mut (impl Sys + ?Sized),
        plain: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        self.state = State::Open;
        // What came after the record that completed the handshake (data, a KeyUpdate, a
        // session ticket) is the records layer's.
        if let Err(e) = self.hand_over().and_then(|()| self.open_left(plain)) {
            self.fail_with_alert(conn, io, &e);
            return Err(e);
        }
        let mut held = std::mem::take(&mut self.held).into_iter();
        while let Some(c) = held.next() {
            if let Err(e) = self.push(conn, io, c) {
                held.for_each(|c| io.release(c));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Queue plaintext: sealed now when the handshake is complete (the records are ringway's
    /// from then on), else held until it is.
    pub fn push(
        &mut self,
        conn: &mut Conn,
        io: &mut (impl Sys + ?Sized),
        c: Chunk,
    ) -> Result<(), Fail> {
        match self.state {
            State::Raw => conn.push(c),
            State::Failed => io.release(c),
            State::Handshaking => self.held.push(c),
            // A connection being retired sends nothing more: plaintext pushed now (the next
            // request of a kept-alive client, while the previous upstream connection closes)
            // waits, unsealed, for the next connection (`take_held`), not sealed under keys
            // that are going away.
            State::Open if !conn.open() => self.held.push(c),
            State::Open => {
                let mut out = io.scratch();
                let r = match &mut self.stage {
                    Stage::Records(r) => r.seal(io.data_of(c), &mut out),
                    _ => Err(rustls::Error::General("no record layer".into())),
                };
                io.release(c);
                self.queue(conn, io, out);
                if let Err(e) = r {
                    self.fail(io);
                    return Err(Fail::Tls(e));
                }
            }
        }
        Ok(())
    }

    /// Start sending: a client's hello once connected; a close_notify queued behind the last
    /// data when a half-close is pending (nothing more is pushed then); then the socket's
    /// queue.
    pub fn kick(&mut self, conn: &mut Conn, io: &mut (impl Sys + ?Sized), id: ConnId) {
        if E::CLIENT
            && !self.started
            && conn.ready()
            && conn.open()
            && let Tls {
                stage: Stage::Handshake(engine),
                partial,
                shown,
                captured,
                ..
            } = self
        {
            let mut out = io.scratch();
            let r = records::capturing(captured, || {
                drive(&mut **engine, partial, shown, &mut Vec::new(), &mut out)
            });
            self.started = true;
            self.queue(conn, io, out);
            match r {
                Ok(used) => drop(self.partial.drain(..used)),
                Err(_) => self.fail(io),
            }
        }
        if conn.shut() == crate::reactor::Shut::Pending
            && self.state == State::Open
            && !self.notified
        {
            self.notified = true;
            let mut out = io.scratch();
            if let Stage::Records(r) = &mut self.stage {
                let _ = r.close_notify(&mut out);
            }
            self.queue(conn, io, out);
        }
        conn.kick(io, id);
    }

    /// The socket is about to close with nothing in flight: end the TLS stream with
    /// close_notify (RFC 8446 §6.1), as nginx does, so the peer can tell a complete close from
    /// a truncated one — unless one went already, or bytes queued for the peer were dropped
    /// (then it must not look complete), or the connection is not open. Written straight to
    /// the socket without waiting: a 24-byte record that any socket buffer not full takes.
    pub fn farewell(&mut self, conn: &Conn, io: &mut (impl Sys + ?Sized)) {
        let mut out = io.scratch();
        if self.close_notify_now(conn, &mut out) {
            io.send_now(conn.fd(), &out);
        }
        io.recycle(out);
    }

    /// The close_notify a socket about to close sends (see `farewell`), appended to `out`;
    /// false when there is none to send.
    pub fn close_notify_now(&mut self, conn: &Conn, out: &mut Vec<u8>) -> bool {
        if self.state != State::Open
            || self.notified
            || conn.torn()
            || conn.pending() > 0
            || conn.shut() != crate::reactor::Shut::Open
        {
            return false;
        }
        let Stage::Records(r) = &mut self.stage else {
            return false;
        };
        self.notified = true;
        r.close_notify(out).is_ok()
    }

    /// Give back what the connection holds besides its socket (on close).
    pub fn release(&mut self, io: &mut (impl Sys + ?Sized)) {
        for c in self.held.drain(..) {
            io.release(c);
        }
        if self.partial.capacity() > 0 {
            io.recycle(std::mem::take(&mut self.partial));
        }
    }

    /// Take back the plaintext not sent yet (a new upstream attempt starts a new connection).
    pub fn take_held(&mut self) -> Vec<Chunk> {
        std::mem::take(&mut self.held)
    }

    /// The handshake is done: note how it went, and take the records over from rustls.
    fn hand_over(&mut self) -> Result<(), Fail> {
        let e = match std::mem::replace(&mut self.stage, Stage::Gone) {
            Stage::Handshake(e) => e,
            other => {
                self.stage = other;
                return Ok(());
            }
        };
        self.resumed = e.common().handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.h2 = e.common().alpn_protocol() == Some(b"h2");
        let captured = self.captured.take();
        let r = (*e).into_records(captured.as_deref()).map_err(Fail::Tls)?;
        self.stage = Stage::Records(Box::new(r));
        self.shown = 0;
        Ok(())
    }

    /// Open the whole records left in `partial` when the handshake completed; their plaintext
    /// is appended to `plain`.
    fn open_left(&mut self, plain: &mut Vec<u8>) -> Result<(), Fail> {
        let Tls {
            stage: Stage::Records(r),
            partial,
            ..
        } = self
        else {
            return Ok(());
        };
        if partial.is_empty() {
            return Ok(());
        }
        let (n, used) = r.open(partial).map_err(Fail::Tls)?;
        plain.extend_from_slice(&partial[..n]);
        partial.drain(..used);
        Ok(())
    }

    /// Records after a TLS 1.3 handshake: decrypted where they arrived; the plaintext is the
    /// front of the same pool buffer (or of the kept partial record, for one that was cut).
    fn received_records(
        &mut self,
        conn: &mut Conn,
        io: &mut (impl Sys + ?Sized),
        c: Chunk,
    ) -> Result<Option<Chunk>, Fail> {
        let Tls { stage, partial, .. } = self;
        let Stage::Records(r) = stage else {
            // Called for records only.
            io.release(c);
            return Ok(None);
        };
        let result = match c.src {
            Src::Pool(bid) if partial.is_empty() => {
                let buf = &mut io.data_mut(bid, c.off + c.len)[c.off as usize..];
                r.open(buf).map(|(p, u)| (p, u, Some(bid)))
            }
            _ => {
                if partial.is_empty() {
                    *partial = io.scratch();
                }
                partial.extend_from_slice(io.data_of(c));
                r.open(partial).map(|(p, u)| (p, u, None))
            }
        };
        let plain = match result {
            Ok((n, used, Some(bid))) => {
                // In the pool buffer: keep the cut record, hand the plaintext on in place.
                if used < c.len as usize {
                    let mut keep = io.scratch();
                    keep.extend_from_slice(&io.data(bid, c.off + c.len)[c.off as usize + used..]);
                    self.partial = keep;
                }
                if n > 0 {
                    Some(Chunk { len: n as u32, ..c })
                } else {
                    io.release(c);
                    None
                }
            }
            Ok((n, used, None)) => {
                io.release(c);
                let p = if n > 0 {
                    let mut v = io.scratch();
                    v.extend_from_slice(&self.partial[..n]);
                    Some(io.put(v))
                } else {
                    None
                };
                self.partial.drain(..used);
                p
            }
            Err(e) => {
                io.release(c);
                let e = Fail::Tls(e);
                self.fail_with_alert(conn, io, &e);
                return Err(e);
            }
        };
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            io.recycle(std::mem::take(&mut self.partial));
        }
        // (What is kept is less than one record: `open` refuses a length past the largest.)
        Ok(plain)
    }

    fn queue(&mut self, conn: &mut Conn, io: &mut (impl Sys + ?Sized), out: Vec<u8>) {
        if out.is_empty() {
            io.recycle(out);
        } else {
            let c = io.put(out);
            conn.push(c);
        }
    }

    /// The records failed: a fatal alert says why (RFC 8446 §6.2; none for an alert the peer
    /// sent), then nothing more is read or encrypted.
    fn fail_with_alert(&mut self, conn: &mut Conn, io: &mut (impl Sys + ?Sized), e: &Fail) {
        if let (Stage::Records(r), Fail::Tls(e)) = (&mut self.stage, e)
            && let Some(description) = records::alert_for(e)
        {
            let mut out = io.scratch();
            if r.alert(description, &mut out).is_ok() {
                self.queue(conn, io, out);
            } else {
                io.recycle(out);
            }
        }
        self.fail(io);
    }

    /// Nothing more is read or encrypted (the alert, if any, is already queued: `drive`).
    fn fail(&mut self, io: &mut (impl Sys + ?Sized)) {
        self.state = State::Failed;
        for c in self.held.drain(..) {
            io.release(c);
        }
    }
}

/// Negotiated TLS parameters, for the access log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Info<'a> {
    pub version: Option<&'static str>,
    pub cipher: Option<&'static str>,
    pub sni: Option<&'a str>,
    /// The handshake resumed an earlier session.
    pub resumed: bool,
    /// ALPN chose HTTP/2.
    pub h2: bool,
}

fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record: legacy version, and extensions as (type, body).
    fn hello(legacy: u16, exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&legacy.to_be_bytes());
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut e = Vec::new();
        for (t, b) in exts {
            e.extend_from_slice(&t.to_be_bytes());
            e.extend_from_slice(&(b.len() as u16).to_be_bytes());
            e.extend_from_slice(b);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni(name: &str) -> Vec<u8> {
        let mut list = vec![0, (name.len() >> 8) as u8, name.len() as u8];
        list.extend_from_slice(name.as_bytes());
        let mut b = (list.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&list);
        b
    }

    #[test]
    fn hello_peek_reads_sni_and_old_only_offers() {
        let modern = hello(0x0303, &[(0, sni("chat.example.com")), (43, vec![2, 3, 4])]);
        assert_eq!(
            peek_hello(&modern),
            Some(Hello {
                sni: Some("chat.example.com"),
                old_only: false
            })
        );
        // TLS 1.2 without supported_versions: not old.
        assert!(!peek_hello(&hello(0x0303, &[])).unwrap().old_only);
        // TLS 1.0/1.1 only: old, with or without extensions.
        assert!(
            peek_hello(&hello(0x0302, &[(0, sni("a"))]))
                .unwrap()
                .old_only
        );
        assert!(peek_hello(&hello(0x0301, &[])).unwrap().old_only);
        // A 1.0 legacy version with supported_versions is a modern client.
        assert!(
            !peek_hello(&hello(0x0301, &[(43, vec![2, 3, 4])]))
                .unwrap()
                .old_only
        );
        // A name with a space or control byte is not logged.
        assert_eq!(
            peek_hello(&hello(0x0303, &[(0, sni("a b"))])).unwrap().sni,
            None
        );
        // Every cut of a hello, and garbage: no panic, and no answer but None or a prefix's.
        for n in 0..modern.len() {
            let _ = peek_hello(&modern[..n]);
        }
        assert_eq!(peek_hello(b"GET / HTTP/1.1\r\n"), None);
        let mut rng = 0x1234_5678u64;
        for _ in 0..2000 {
            let mut m = modern.clone();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let at = (rng as usize) % m.len();
            m[at] = (rng >> 32) as u8;
            let _ = peek_hello(&m);
        }
    }
}
