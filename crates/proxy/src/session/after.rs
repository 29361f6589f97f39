//! The bookkeeping after every event (`Session::after`): retired sockets close or go to the
//! keepalive pool, the protocol settles, and each connection's recv is kept armed exactly
//! while the protocol should read it, within its direction's budget (`LIFECYCLE.md`,
//! "Buffer budget"), with the client's hang-up watch while it is not read; skipped in a
//! protocol's steady state (`LIFECYCLE.md`, invariant 14).

use super::links::Side;
use super::protocol::{Protocol, Step};
use super::{Cx, End, Env, Io, Next, Phase, QUEUE, Recv, Session, Transport};
use crate::uring::ConnId;

impl Session {
    /// Bookkeeping after every event: the protocol settles (an answer sent, a connect that
    /// waited), retired sockets close, recvs are kept armed or stopped; `Close` once closing
    /// is complete. The protocol is looked up once for the settling and once for the recvs:
    /// what it answers in between (whether it keeps a queue, wants a connection read, watches
    /// the client) is compiled in for each built-in protocol. A protocol in its steady state
    /// (a plain tunnel reading both ways, most of its events) needs none of it: one test of
    /// its links says so (`Protocol::steady`; `LIFECYCLE.md`, invariant 14).
    #[inline(always)]
    pub(super) fn after(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        if run!(&self.phase, p => p.steady(&self.cx, io), false) {
            return Next::Continue;
        }
        self.reconcile(io, env)
    }

    /// The bookkeeping itself (see `after`): what the session tests run again after every
    /// event, to check that it would ask for nothing.
    pub(super) fn reconcile(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        // Sealing failed on a connection (TLS 1.2 past its records per key): it can carry
        // nothing more, so the session ends now rather than at read_timeout. (A failure while
        // opening was answered where it happened: the phase is Respond by now.)
        if !matches!(self.phase, Phase::Respond(_) | Phase::Closing(_)) {
            if self.cx.links.down.failed() {
                self.close(End::ClientTls("seal"), io);
            } else if self.cx.links.any_upstream(Transport::failed) {
                self.close(End::UpstreamTls("seal"), io);
            }
        }
        let cx = &mut self.cx;
        let step = run!(&mut self.phase, p => settled(p, cx, io, env), {
            close_retired(false, cx, io, env);
            Step::Continue
        });
        if !matches!(step, Step::Continue) {
            self.carry_out(step, io, env);
            // What the step retired may close now.
            self.close_retired(io, env);
        }
        if self.phase.is_closing() {
            return match self.finished() {
                true => Next::Close(self.cx.ended()),
                false => Next::Continue,
            };
        }
        self.sync_recv(io);
        Next::Continue
    }

    /// Close (or hand to the keepalive pool) the sockets that are retired and have nothing in
    /// flight.
    pub(super) fn close_retired(&mut self, io: &mut impl Io, env: &mut Env<'_>) {
        let keep = run!(&self.phase, p => Protocol::keeps_queue(p), false);
        close_retired(keep, &mut self.cx, io, env);
    }

    /// Keep each connection's recv armed exactly while the protocol should read it (see the
    /// free `sync_recv` below), the protocol looked up once.
    pub(super) fn sync_recv(&mut self, io: &mut impl Io) {
        let cx = &mut self.cx;
        run!(&mut self.phase, p => sync_recv(p, cx, io), ());
    }
}

/// Retired sockets close (see `close_retired`), then protocol `p` settles.
#[inline(always)]
pub(super) fn settled<P: Protocol, I: Io>(
    p: &mut P,
    cx: &mut Cx,
    io: &mut I,
    env: &mut Env<'_>,
) -> Step {
    close_retired(p.keeps_queue(), cx, io, env);
    p.settle(cx, io, env)
}

/// Close (or hand to the keepalive pool) the sockets that are retired and have nothing in
/// flight; `keep`: what waits for the upstream stays, for the next attempt.
#[inline(always)]
pub(super) fn close_retired(keep: bool, cx: &mut Cx, io: &mut impl Io, env: &mut Env<'_>) {
    cx.links.close_down_when_done(io);
    if cx.links.up.keep() {
        let uses = cx.links.up.uses();
        if let Some(conn) = cx.links.detach_up_when_done(io, keep) {
            cx.pool_upstream(conn, uses, io, env);
        }
    } else if cx.links.close_up_when_done(io, keep) {
        cx.uncount_peer();
    }
    cx.links.close_more_when_done(io);
}

/// Keep a recv armed on every connection exactly while protocol `p` should read it (see
/// `sync_recv_of`), and the client's hang-up watch while it is not read.
#[inline(always)]
pub(super) fn sync_recv<P: Protocol>(p: &mut P, cx: &mut Cx, io: &mut impl Io) {
    let pool_low = io.pool_low();
    sync_recv_of(p, cx, ConnId::CLIENT, pool_low, io);
    sync_recv_of(p, cx, ConnId::UPSTREAM, pool_low, io);
    for id in cx.links.more_ids() {
        sync_recv_of(p, cx, id, pool_low, io);
    }
    // While the client's bytes are held back (its hold is full, or its body waits for a
    // slow upstream) nothing reads its socket, so its FIN or reset would go unseen until
    // the response: a poll for POLLRDHUP watches for it meanwhile.
    let down = &cx.links.down;
    let watch = down.recv_state() == Recv::Off && down.open() && !down.eof() && p.watches_client();
    if watch || down.hup_state() == Recv::On {
        cx.links.sync_watch(Side::Down, io, watch);
    }
}

/// Whether connection `id` should have a recv armed right now, given `waiting`, the chunks
/// that wait toward the other side. `pool_low`: the worker's buffer pool is at its floor.
#[inline(always)]
fn want_recv<P: Protocol>(p: &P, cx: &Cx, id: ConnId, waiting: usize, pool_low: bool) -> bool {
    let c = cx.links.get(id);
    // (Never called while closing: `after` returns before.)
    if !c.readable() {
        return false;
    }
    p.wants(cx, id, room(waiting, pool_low))
}

/// Whether a direction with `waiting` chunks toward the other side has room to read more (what
/// `want_recv` and the links' steady state both ask). The per-direction budget: a recv is
/// armed only while fewer than QUEUE chunks wait toward the other side, and capped at what is
/// left of the budget (`sync_recv`), so a direction holds at most QUEUE pool buffers. Below the
/// pool's floor (`pool_low`), a direction whose previous bytes have not left yet (a slow or
/// stalled reader) waits; one that has drained everything (making progress) reads on.
#[inline(always)]
pub(super) fn room(waiting: usize, pool_low: bool) -> bool {
    waiting < QUEUE && (waiting == 0 || !pool_low)
}

/// Keep a recv armed on connection `id` exactly while it should read, for what is left of
/// its direction's budget.
#[inline(always)]
fn sync_recv_of<P: Protocol>(p: &mut P, cx: &mut Cx, id: ConnId, pool_low: bool, io: &mut impl Io) {
    let waiting = cx.links.get(Side::of(id).peer()).pending();
    let want = want_recv(p, cx, id, waiting, pool_low);
    // Only arming a recv that is off, or cancelling one that is on, changes anything: the
    // steady state (reading, and still wanting to) ends here.
    match (want, cx.links.get(id).recv_state()) {
        (true, Recv::Off) => p.resumed(cx, id, io.now_ms()),
        (false, Recv::On) => {}
        _ => return,
    }
    // What this direction may still take: the budget less what waits toward the peer; one
    // at a time below the pool's floor.
    let buffers = if pool_low {
        1
    } else {
        QUEUE.saturating_sub(waiting).max(1) as u32
    };
    cx.links.sync_recv(id, io, want, buffers);
}
