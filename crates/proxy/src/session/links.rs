//! A session's connections, by [`ConnId`] — the client's (0), the first upstream's (1) and
//! any more a protocol keeps at once (HTTP/2 streams will) — each a transport over a reactor
//! `Conn` whose state only `Conn` changes, what their ops share (the cancels in flight), and
//! what they hold while open (the first upstream socket's place in its server's connection
//! count, the client's `limit_conn` slot). Every effect that affects whether a socket may
//! close goes through here: retiring a connection (cancelling exactly its ops), keeping its
//! recv and hang-up watch armed or not, cancelling a connect, counting cancels back, closing or
//! handing back a retired socket once nothing of it is in flight. The count is checked: a
//! completion that was never counted is a bug (asserted in debug builds), and the count never
//! wraps, which would free the session's slot while the kernel still holds an op.

use super::{Io, Recv, Transport};
use crate::uring::{CONN_MAX, Chunk, ConnId, Op};

/// The two connections of a one-to-one exchange (an HTTP/1 request, its tunnel) by name:
/// the client's (`Down`, id 0) and the first upstream's (`Up`, id 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client connection (downstream).
    Down,
    /// The upstream connection.
    Up,
}

impl Side {
    /// The other side: where bytes received on `self` are sent.
    pub fn peer(self) -> Side {
        match self {
            Side::Down => Side::Up,
            Side::Up => Side::Down,
        }
    }

    /// Which side connection `id` is on: the client's, or an upstream's.
    pub fn of(id: ConnId) -> Side {
        if id == ConnId::CLIENT {
            Side::Down
        } else {
            Side::Up
        }
    }
}

impl From<Side> for ConnId {
    fn from(s: Side) -> ConnId {
        match s {
            Side::Down => ConnId::CLIENT,
            Side::Up => ConnId::UPSTREAM,
        }
    }
}

/// The connections of one session, by [`ConnId`]: the client's (0), the first upstream's (1),
/// and any more a protocol opens (2 up to [`CONN_MAX`]).
#[derive(Debug)]
pub struct Links {
    /// The client connection.
    pub down: Transport,
    /// The first upstream connection (fd -1 between attempts).
    pub up: Transport,
    /// Connections past the first two, for a protocol that keeps several upstream connections
    /// at once (ids from 2). Boxed: a session that has none pays one pointer. Entries are never
    /// removed (an id stays valid for completions still on their way); a closed one is reused.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<Transport>>>,
    /// Cancels in flight for the session's sockets.
    cancels: u16,
    /// The server (upstream, peer) the first upstream socket is counted against in its
    /// `active` gauge while it is open; `NO_PEER` in both when none.
    pub counted: [u16; 2],
    /// The `limit_conn` zone (index + 1) the client connection is counted in; 0: none.
    pub limited: u16,
}

impl Links {
    /// The links of a session whose client connection is `down`.
    pub fn new(down: Transport) -> Links {
        Links {
            down,
            up: Transport::plain(-1),
            more: None,
            cancels: 0,
            counted: [super::phase::NO_PEER; 2],
            limited: 0,
        }
    }

    /// The ids of the session's connections.
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + use<> {
        let n = 2 + self.more.as_ref().map_or(0, |m| m.len());
        (0..n).map(|i| ConnId(i as u8))
    }

    /// The ids past the first two (none for a session that never added a connection).
    pub fn more_ids(&self) -> impl Iterator<Item = ConnId> + use<> {
        let n = self.more.as_ref().map_or(0, |m| m.len());
        (2..2 + n).map(|i| ConnId(i as u8))
    }

    /// The steady state of two connections that forward to each other: both plain and being
    /// read (their recvs armed, neither at its end, retiring, parked or spliced), the client's
    /// hang-up watch not armed, no connection past the first two, and each direction within
    /// what it may read now (`after::room`, the budget `sync_recv` keeps; `pool_low`: the
    /// worker's buffer pool is at its floor). In it, the bookkeeping after
    /// an event would ask for nothing: no socket to close, no recv to arm or cancel, no watch
    /// (`LIFECYCLE.md`, invariant 14; the same test as `sync_recv`'s, asked of both at once).
    #[inline]
    pub fn steady(&self, pool_low: bool) -> bool {
        let reads = |c: &Transport, waiting: usize| {
            c.readable() && c.recv_state() == Recv::On && super::after::room(waiting, pool_low)
        };
        self.more.is_none()
            && reads(&self.down, self.up.pending())
            && reads(&self.up, self.down.pending())
            && self.down.hup_state() != Recv::On
            && self.down.is_plain()
            && self.up.is_plain()
    }

    /// Whether `f` holds for any connection. (Called after every event: the two inline
    /// connections are looked at directly, the rest only when there are any.)
    #[inline]
    pub fn any(&self, f: impl Fn(&Transport) -> bool) -> bool {
        f(&self.down) || f(&self.up) || self.more.as_ref().is_some_and(|m| m.iter().any(f))
    }

    /// Whether `f` holds for any upstream connection.
    #[inline]
    pub fn any_upstream(&self, f: impl Fn(&Transport) -> bool) -> bool {
        f(&self.up) || self.more.as_ref().is_some_and(|m| m.iter().any(f))
    }

    /// The earliest of what `f` says of each connection.
    #[inline]
    pub fn earliest(&self, f: impl Fn(&Transport) -> Option<u64>) -> Option<u64> {
        let mut at = match (f(&self.down), f(&self.up)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(m) = self.more.as_ref() {
            for t in m.iter() {
                at = match (at, f(t)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        at
    }

    /// The connection `id` (which must exist).
    #[inline]
    pub fn get(&self, id: impl Into<ConnId>) -> &Transport {
        match id.into().0 {
            0 => &self.down,
            1 => &self.up,
            n => self.extra(n),
        }
    }

    #[inline]
    pub fn get_mut(&mut self, id: impl Into<ConnId>) -> &mut Transport {
        match id.into().0 {
            0 => &mut self.down,
            1 => &mut self.up,
            n => self.extra_mut(n),
        }
    }

    #[cold]
    #[inline(never)]
    fn extra(&self, n: u8) -> &Transport {
        &self.more.as_ref().expect("a connection past the first two")[usize::from(n) - 2]
    }

    #[cold]
    #[inline(never)]
    fn extra_mut(&mut self, n: u8) -> &mut Transport {
        &mut self.more.as_mut().expect("a connection past the first two")[usize::from(n) - 2]
    }

    /// A connection for another upstream socket: one that is closed with nothing in flight
    /// (from 2), or a new one; None past [`CONN_MAX`]. Give it its socket with
    /// `Transport::reset_fd` after `Io::connect` with this id before asking for another: until
    /// it has one, it is the closed connection the next call finds.
    pub fn add(&mut self) -> Option<ConnId> {
        let more = self.more.get_or_insert_with(Default::default);
        if let Some(i) = more.iter().position(|t| t.fd() < 0 && t.ops() == 0) {
            return Some(ConnId(2 + i as u8));
        }
        let id = 2 + more.len();
        if id > usize::from(CONN_MAX) {
            return None;
        }
        more.push(Transport::plain(-1));
        Some(ConnId(id as u8))
    }

    /// A connection for a socket another process handed over (past the first two).
    pub fn adopt_more(&mut self, t: Transport) -> Option<ConnId> {
        let id = self.add()?;
        *self.get_mut(id) = t;
        Some(id)
    }

    /// No socket open and nothing in flight: the session's slot may be freed.
    pub fn all_closed(&self) -> bool {
        self.cancels == 0 && !self.any(|t| t.fd() >= 0)
    }
    #[inline]
    fn cancels_sent(&mut self, n: u8) {
        if n == 0 {
            return;
        }
        let n = u16::from(n);
        debug_assert!(self.cancels.checked_add(n).is_some(), "cancels overflow");
        self.cancels = self.cancels.saturating_add(n);
    }

    /// Hold the sends on every socket (`Conn::hold_sends`).
    pub fn hold_sends(&mut self, io: &mut (impl Io + ?Sized)) {
        for id in self.ids() {
            let n = self.get_mut(id).hold_sends(io, id);
            self.cancels_sent(n);
        }
    }

    /// Let them go on again.
    pub fn release_sends(&mut self, io: &mut (impl Io + ?Sized)) {
        for id in self.ids() {
            self.get_mut(id).release_sends(io, id);
        }
    }

    /// Cancels in flight.
    pub fn cancels(&self) -> u16 {
        self.cancels
    }

    /// A cancel completed.
    pub fn cancel_done(&mut self) {
        debug_assert!(self.cancels > 0, "a cancel completed that was not counted");
        self.cancels = self.cancels.saturating_sub(1);
    }

    /// Stop using connection `id`: cancel its ops; it closes once they are back.
    pub fn retire(&mut self, id: impl Into<ConnId>, io: &mut (impl Io + ?Sized)) {
        let id = id.into();
        let n = self.get_mut(id).retire(io, id);
        self.cancels_sent(n);
    }

    /// Stop using every connection (the session closes).
    pub fn retire_all(&mut self, io: &mut (impl Io + ?Sized)) {
        for id in self.ids() {
            self.retire(id, io);
        }
    }

    /// Stop using every upstream connection (the client gets our own answer).
    pub fn retire_upstreams(&mut self, io: &mut (impl Io + ?Sized)) {
        for id in self.ids().skip(1) {
            self.retire(id, io);
        }
    }

    /// Cancel the connect in flight on `id` (its timeout).
    pub fn cancel_connect(&mut self, id: impl Into<ConnId>, io: &mut (impl Io + ?Sized)) {
        self.cancels_sent(1);
        io.cancel(id.into(), Op::Connect);
    }

    /// Keep a recv of up to `buffers` pool buffers armed on `id` exactly while `want`.
    pub fn sync_recv(
        &mut self,
        id: impl Into<ConnId>,
        io: &mut (impl Io + ?Sized),
        want: bool,
        buffers: u32,
    ) {
        let id = id.into();
        let n = self.get_mut(id).sync_recv(io, id, want, buffers);
        self.cancels_sent(n);
    }

    /// Keep the hang-up watch armed on `id` exactly while `want`.
    pub fn sync_watch(&mut self, id: impl Into<ConnId>, io: &mut (impl Io + ?Sized), want: bool) {
        let id = id.into();
        let n = self.get_mut(id).sync_watch(io, id, want);
        self.cancels_sent(n);
    }

    /// Queue plaintext on `to` and start sending it.
    pub fn send(&mut self, to: impl Into<ConnId>, c: Chunk, io: &mut (impl Io + ?Sized)) {
        let to = to.into();
        let t = self.get_mut(to);
        t.push(io, c);
        t.kick(io, to);
    }

    /// Pass a half-close on to `id`: its write side shuts once what is queued has gone.
    pub fn half_close(&mut self, id: impl Into<ConnId>, io: &mut (impl Io + ?Sized)) {
        let id = id.into();
        let t = self.get_mut(id);
        t.shut_after_flush();
        t.kick(io, id);
    }

    /// Close the client connection once it is retired and nothing of it is in flight.
    pub fn close_down_when_done(&mut self, io: &mut (impl Io + ?Sized)) {
        let cancels = self.cancels;
        self.down.close_when_done(io, cancels, false);
    }

    /// Close the connections past the first two once each is retired and nothing of it is in
    /// flight.
    pub fn close_more_when_done(&mut self, io: &mut (impl Io + ?Sized)) {
        let cancels = self.cancels;
        if let Some(more) = self.more.as_mut() {
            for t in more.iter_mut() {
                t.close_when_done(io, cancels, false);
            }
        }
    }

    /// Close the upstream connection once it is retired and nothing of it is in flight
    /// (`keep_queue`: what waits for it stays, for the next attempt); true when it closed.
    pub fn close_up_when_done(&mut self, io: &mut (impl Io + ?Sized), keep_queue: bool) -> bool {
        let cancels = self.cancels;
        self.up.close_when_done(io, cancels, keep_queue)
    }

    /// The upstream connection itself, retired to be kept (the keepalive pool), once nothing
    /// of it is in flight.
    pub fn detach_up_when_done(
        &mut self,
        io: &mut (impl Io + ?Sized),
        keep_queue: bool,
    ) -> Option<Transport> {
        let cancels = self.cancels;
        self.up.detach_when_done(io, cancels, keep_queue)
    }
}
