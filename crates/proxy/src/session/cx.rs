//! What a session is besides its protocol ([`Cx`]): its links, the configuration and
//! listener settings it was accepted under ([`Listen`]), its clocks and its end, and the
//! effects every protocol shares (sending, forwarding, retiring a connection, counting the
//! upstream socket against its server, handing an idle one to the keepalive pool).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::Side;
use super::links::Links;
use super::phase;
use super::{End, Env, Io, Transport};
use crate::config::{Config, Listen};
use crate::uring::timer::Stamp;
use crate::uring::{Chunk, ConnId};

/// The client's address as a session keeps it: 20 bytes, not a `SocketAddr`'s 32 (an IPv6
/// flow label and scope id are not kept: nothing the proxy does with the address uses them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    ip: IpAddr,
    port: u16,
}

impl Peer {
    #[inline]
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    #[inline]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Peer {
        Peer {
            ip: a.ip(),
            port: a.port(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr().fmt(f)
    }
}

/// What a session's client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A client connection (HTTP/1, or not yet known).
    Connection,
    /// A client connection that chose HTTP/2.
    Http2,
    /// The inner session of an HTTP/2 stream: its client is the stream.
    Stream,
}

/// What a session is besides its protocol: its connections, the configuration and listener it
/// was accepted under, its clocks and its end. Every protocol works through it.
#[derive(Debug)]
pub struct Cx {
    /// The client connection and the upstream connection, and the cancels in flight for them.
    pub(super) links: Links,
    /// The configuration this session was accepted under (a reload cannot change it).
    pub(super) cfg: Arc<Config>,
    /// The listener it was accepted on (its settings: [`Cx::listen`]).
    pub(super) listener: u16,
    /// The connection starts with a PROXY protocol header, still to be read.
    pub(super) proxy_header: bool,
    /// What the client is: a connection (HTTP/1, or HTTP/2 once it chose it), or an HTTP/2
    /// stream (`Session::inner`).
    pub(super) role: Role,
    pub(super) client: Peer,
    /// When the current phase's clock started (head read, connect, linger); it may lie ahead
    /// (a request delayed by `limit_req`). 32-bit stamps: `at(now)` gives the time.
    pub(super) phase_ms: Stamp,
    pub(super) last_up_ms: Stamp,
    pub(super) last_down_ms: Stamp,
    /// What its last log line says besides its request (why it ended; a tunnel's record of
    /// its messages), made when first needed: 8 bytes of every idle session, one allocation
    /// at a tunnel's first message or at the close.
    pub(super) notes: Option<Box<Notes>>,
    /// Requests answered on this connection.
    pub(super) served: u32,
}

/// What a session's last log line says besides its request.
#[derive(Debug, Default)]
pub(super) struct Notes {
    /// Why the session ends, once that is decided (the first reason given is kept).
    pub end: Option<End>,
    /// What is rare in a tunnel's record of its messages (`tunnel/seen.rs`), from its first
    /// fragment or Close, or its end.
    pub seen: Option<super::tunnel::Seen>,
}

impl Cx {
    /// Record why the session ends, unless a reason is recorded already.
    pub(super) fn end_with(&mut self, end: End) {
        let n = self.notes.get_or_insert_with(Default::default);
        n.end.get_or_insert(end);
    }

    /// Why the session ends: the reason recorded, else `Done`.
    pub(super) fn ended(&self) -> End {
        self.notes
            .as_deref()
            .and_then(|n| n.end)
            .unwrap_or(End::Done)
    }

    /// The settings of the listener this session was accepted on (from the configuration it
    /// was accepted under, which it keeps: a reload cannot change them).
    #[inline]
    pub(super) fn listen(&self) -> &Listen {
        &self.cfg.listen[usize::from(self.listener)]
    }

    /// Bytes received from `from`, on to its peer (given back if the peer is closed).
    pub(super) fn pass_on(&mut self, from: Side, c: Chunk, io: &mut (impl Io + ?Sized)) {
        if self.links.get(from.peer()).open() {
            self.send_to(from.peer(), c, io);
        } else {
            io.release(c);
        }
    }

    /// Queue plaintext on `to` and start sending it.
    pub(super) fn send_to(&mut self, to: impl Into<ConnId>, c: Chunk, io: &mut (impl Io + ?Sized)) {
        self.links.send(to, c, io);
    }

    /// Build bytes with `f` in a recycled buffer, queue them on `to` and start sending.
    pub(super) fn send_built(
        &mut self,
        to: impl Into<ConnId>,
        io: &mut (impl Io + ?Sized),
        f: impl FnOnce(&mut Vec<u8>),
    ) {
        let mut out = io.scratch();
        f(&mut out);
        let c = io.put(out);
        self.send_to(to, c, io);
    }

    /// Stop using one connection: cancel its ops; it closes when they are all back.
    pub(super) fn retire(&mut self, id: impl Into<ConnId>, io: &mut (impl Io + ?Sized)) {
        self.links.retire(id, io);
    }

    /// The upstream socket is open to server `peer` of upstream `upstream`: count it.
    pub(super) fn count_peer(&mut self, upstream: usize, peer: usize) {
        self.cfg.upstreams[upstream].peers[peer].state.add();
        self.links.counted = [upstream as u16, peer as u16];
    }

    /// The upstream socket, idle after a whole response, goes to the worker's keepalive pool.
    pub(super) fn pool_upstream(
        &mut self,
        conn: Transport,
        uses: u16,
        io: &mut (impl Io + ?Sized),
        env: &mut Env<'_>,
    ) {
        let [u, p] = self.links.counted;
        match self
            .cfg
            .upstreams
            .get(usize::from(u))
            .and_then(|up| Some((up, up.peers.get(usize::from(p))?)))
            // A connection that began with a client's PROXY header is that client's only.
            .filter(|(up, _)| !up.proxy_protocol)
        {
            Some((up, peer)) => env
                .pool
                .put(up, peer.addr, conn, u32::from(uses), io.now_ms()),
            None => io.close(conn.fd()),
        }
        self.uncount_peer();
    }

    /// The upstream socket closed: uncount it.
    pub(super) fn uncount_peer(&mut self) {
        let [u, p] = std::mem::replace(&mut self.links.counted, [phase::NO_PEER; 2]);
        if let Some(peer) = self
            .cfg
            .upstreams
            .get(usize::from(u))
            .and_then(|x| x.peers.get(usize::from(p)))
        {
            peer.state.sub();
        }
    }

    /// Give back the `limit_conn` slot this connection holds (idempotent).
    pub(super) fn release_limit(&mut self) {
        let z = std::mem::take(&mut self.links.limited);
        if let Some(zone) = z
            .checked_sub(1)
            .and_then(|z| self.cfg.conn_zones.get(usize::from(z)))
        {
            zone.table
                .give_back(crate::limits::key_of(self.client.ip()));
        }
    }

    /// `real_ip_header` of the server `si`: from a trusted peer, the client is the header's
    /// last address (nginx's default, `real_ip_recursive off`); from any other peer, or without
    /// a usable header, it is the peer. A connection from a front end carries many clients'
    /// requests: the limit_conn slot held for the previous one is given back when it changes.
    pub(super) fn real_ip(&mut self, si: usize, head: &[u8]) {
        let s = &self.cfg.servers[si];
        let Some(name) = &s.real_ip_header else {
            return;
        };
        if self.cfg.listener_proxy[usize::from(self.listener)].is_some() {
            return; // the PROXY header said who the client is
        }
        let Some(peer) = crate::sys::peer_of(self.links.down.fd()) else {
            return;
        };
        let mut client = peer;
        if crate::config::trusted(&s.trusted_proxies, peer.ip())
            && let Some(v) = crate::http::header_values(head, name).last()
            && let Some(last) = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.rsplit(',').next())
            && let Ok(ip) = last.trim().parse::<std::net::IpAddr>()
        {
            client = std::net::SocketAddr::new(ip, peer.port());
        }
        let client = Peer::from(client);
        if client != self.client {
            self.release_limit();
            self.client = client;
        }
    }
}
