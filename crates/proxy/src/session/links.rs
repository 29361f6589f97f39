//! A session's connections — the client's, and the upstream's (one today; HTTP/2 and
//! handover will bring more) — each a transport over a reactor `Conn` whose state only `Conn`
//! changes, what their ops share (the cancels in flight), and what they hold while open (the
//! upstream socket's place in its server's connection count, the client's `limit_conn` slot). Every effect that affects whether
//! a socket may close goes through here: retiring a connection (cancelling exactly its ops),
//! keeping its recv and hang-up watch armed or not, cancelling a connect, counting cancels
//! back, closing or handing back a retired socket once nothing of it is in flight. The count
//! is checked: a completion that was never counted is a bug (asserted in debug builds), and the
//! count never wraps, which would free the session's slot while the kernel still holds an op.

use super::{Io, Transport};
use crate::uring::{Op, Side};

/// The connections of one session.
#[derive(Debug)]
pub struct Links {
    /// The client connection.
    pub down: Transport,
    /// The upstream connection (fd -1 between attempts).
    pub up: Transport,
    /// Cancels in flight for the session's sockets.
    cancels: u8,
    /// The server (upstream, peer) the upstream socket is counted against in its `active`
    /// gauge while it is open; `NO_PEER` in both when none.
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
            cancels: 0,
            counted: [super::phase::NO_PEER; 2],
            limited: 0,
        }
    }

    /// The connection on `side`.
    pub fn get(&self, side: Side) -> &Transport {
        match side {
            Side::Down => &self.down,
            Side::Up => &self.up,
        }
    }

    pub fn get_mut(&mut self, side: Side) -> &mut Transport {
        match side {
            Side::Down => &mut self.down,
            Side::Up => &mut self.up,
        }
    }

    /// No socket open and nothing in flight: the session's slot may be freed.
    pub fn all_closed(&self) -> bool {
        self.down.fd() < 0 && self.up.fd() < 0 && self.cancels == 0
    }

    fn cancels_sent(&mut self, n: u8) {
        debug_assert!(self.cancels.checked_add(n).is_some(), "cancels overflow");
        self.cancels = self.cancels.saturating_add(n);
    }

    /// A cancel completed.
    pub fn cancel_done(&mut self) {
        debug_assert!(self.cancels > 0, "a cancel completed that was not counted");
        self.cancels = self.cancels.saturating_sub(1);
    }

    /// Stop using the connection on `side`: cancel its ops; it closes once they are back.
    pub fn retire(&mut self, side: Side, io: &mut (impl Io + ?Sized)) {
        let n = self.get_mut(side).retire(io, side);
        self.cancels_sent(n);
    }

    /// Cancel the upstream connect in flight (its timeout).
    pub fn cancel_connect(&mut self, io: &mut (impl Io + ?Sized)) {
        self.cancels_sent(1);
        io.cancel(Side::Up, Op::Connect);
    }

    /// Keep a recv of up to `buffers` pool buffers armed on `side` exactly while `want`.
    pub fn sync_recv(&mut self, side: Side, io: &mut (impl Io + ?Sized), want: bool, buffers: u32) {
        let n = self.get_mut(side).sync_recv(io, side, want, buffers);
        self.cancels_sent(n);
    }

    /// Keep the hang-up watch armed on `side` exactly while `want`.
    pub fn sync_watch(&mut self, side: Side, io: &mut (impl Io + ?Sized), want: bool) {
        let n = self.get_mut(side).sync_watch(io, side, want);
        self.cancels_sent(n);
    }

    /// Queue plaintext on `to` and start sending it.
    pub fn send(&mut self, to: Side, c: crate::uring::Chunk, io: &mut (impl Io + ?Sized)) {
        let t = self.get_mut(to);
        t.push(io, c);
        t.kick(io, to);
    }

    /// Pass a half-close on to `side`: its write side shuts once what is queued has gone.
    pub fn half_close(&mut self, side: Side, io: &mut (impl Io + ?Sized)) {
        let t = self.get_mut(side);
        t.shut_after_flush();
        t.kick(io, side);
    }

    /// Close the client connection once it is retired and nothing of it is in flight.
    pub fn close_down_when_done(&mut self, io: &mut (impl Io + ?Sized)) {
        let cancels = self.cancels;
        self.down.close_when_done(io, cancels, false);
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
