//! A tunnel handed to the process that takes over in a binary upgrade, and taken over there
//! (`app/handover.rs` carries it between the two): its two sockets and a versioned description
//! of everything else, so that neither the client nor the backend sees anything happen.
//!
//! **Quiescing** (the old process): the tunnel stops reading both sockets (`Conn::set_held`, as
//! a filter's delay does, so the recvs are cancelled by the usual bookkeeping). What was read
//! before the cancels landed goes on as always, tracked; bytes that arrive after stay in the
//! kernel's socket buffers for the new process. The tunnel is ready to go once nothing is in
//! flight on either socket and nothing waits to be sent ([`Session::handoff_ready`]): every
//! byte read has been passed on whole and the frame trackers stand exactly where the streams
//! do. Then its description is written ([`Session::export`]) and its slot freed without
//! closing the sockets.
//!
//! **Taking over** (the new process): [`Session::adopt`] builds the tunnel again under the new
//! configuration (its location found by server names and path, its upstream server by name and
//! address), with its clocks moved to the new process's (ages, not times, cross over), its
//! limit_conn slot taken again and its heartbeats, filters and lifetime as the location has
//! them; then its receives are armed like any tunnel's.
//!
//! **TLS** (version 2): a TLS side's records go on in the new process with the same keys and
//! sequence numbers (`Transport::carry`, `tls/records/carried.rs`): what waits to be sent is
//! records already sealed and goes as it is; a record received in part goes with the tunnel and
//! is completed by the bytes still in the socket; TLS 1.3 key updates after the move are
//! derived by ringway's own key schedule. A connection keeps what this needs only when its
//! handshake ran under `runtime.upgrade_tunnels`.
//!
//! **HTTP/2** (version 3): a connection goes whole, with the inner sessions of its WebSocket
//! streams (`session/h2/handoff.rs`): its client socket and TLS, its streams' socket pairs,
//! and its state (`h2::Connection::export`). A stream's tunnel is described as any tunnel,
//! marked as a stream's; it goes only with its connection.
//!
//! What version 3 does not cover, so such a tunnel is not handed over but gets the drain's
//! Close as before: TLS whose keys were not kept, an HTTP/2 connection with a request in flight
//! (or a stream half-closed), a tunnel that is closing (a Close frame, a FIN or a close_notify
//! went by) or that splices, whose filter holds a frame back, or that waits to put a frame of
//! the proxy's own into a stream.

use std::os::fd::RawFd;

use super::cx::Role;
use super::phase::Inject;
use super::tunnel::Tunnel;
use super::{Env, Io, Next, Phase, Recv, Session, Shut, Transport};
use crate::uring::ConnId;
use crate::ws::FrameTracker;

/// The description's version. A new process that speaks another one is handed no tunnel: the
/// old process drains them as before.
pub const VERSION: u32 = 3;

/// The most a tunnel carries of what waits to be sent toward one side (a direction holds about
/// four pool buffers); a tunnel with more stays and is drained.
pub const UNSENT_MAX: usize = 256 * 1024;

/// The largest description of one tunnel (its request text is at most 3 × 16 KiB, or an HTTP/2
/// connection's state; what waits to be sent, at most `2 × UNSENT_MAX` in all; answer bytes held
/// on HTTP/2 streams; the TLS state of each side).
pub const DESC_MAX: usize =
    super::h2::STATE_MAX + 2 * UNSENT_MAX + super::h2::HELD_MAX + 2 * crate::tls::CARRIED_MAX;

/// Descriptors per batch (the kernel takes at most 253 in one message); an HTTP/2 connection
/// with its streams goes in one batch, so it holds at most this many.
pub const FDS_MAX: usize = 250;

/// A tunnel on its way to the new process: its sockets (open; whoever holds this closes them
/// once they are sent, or if they cannot be) and its description. A tunnel's sockets are its
/// client's and its upstream's; an HTTP/2 connection's are its client's, then the socket pair
/// of each of its streams, and the inner sessions of those streams go with it (`streams`:
/// the stream's place among the pairs, and the tunnel).
#[derive(Debug, Default)]
pub struct Handed {
    pub fds: Vec<RawFd>,
    pub desc: Vec<u8>,
    pub streams: Vec<(u32, Handed)>,
}

impl Handed {
    /// Every socket it holds, its streams' too.
    pub fn all_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.fds
            .iter()
            .copied()
            .chain(self.streams.iter().flat_map(|(_, t)| t.fds.iter().copied()))
    }
}

/// What a description is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A tunnel of a client connection.
    Tunnel = 0,
    /// A tunnel of an HTTP/2 stream (its inner session; its client socket is the stream's
    /// socket pair).
    Stream = 1,
    /// An HTTP/2 connection (`session/h2/handoff.rs`).
    Http2 = 2,
}

/// What a worker of the old process sends the thread that talks to the new one.
#[derive(Debug)]
pub enum Departure {
    /// A tunnel at rest, to go.
    Tunnel(Handed),
    /// This worker is through: how many tunnels went, and how many stayed (and got the drain's
    /// Close), by why.
    Done {
        moved: u64,
        /// HTTP/2 connections that went (carrying some of the tunnels that went).
        http2: u64,
        /// Bytes that waited to be sent in the tunnels that went, and went with them.
        waiting: u64,
        stayed: std::collections::BTreeMap<&'static str, u64>,
    },
}

impl Session {
    /// Begin handing this session over: stop reading its sockets. `Err` names why it cannot
    /// be (a word for the log's count); nothing changed then.
    pub fn hand_off(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Result<Next, &'static str> {
        self.can_hand_off()?;
        match &mut self.phase {
            Phase::Other(p) => {
                let c = p.carrier_mut().ok_or("not-a-tunnel")?;
                c.hold(&mut self.cx, io.as_dyn());
            }
            _ => {
                self.cx.links.down.set_held(true);
                self.cx.links.up.set_held(true);
            }
        }
        // What waits to be sent goes with it: a send in flight toward a peer that does not
        // read could take any time.
        self.cx.links.hold_sends(io);
        // The recvs and the hang-up watch are cancelled by the usual bookkeeping.
        Ok(self.after(io, env))
    }

    /// This session is queued to be handed over (the worker holds a wave at a time): an
    /// HTTP/2 connection does not send the drain's GOAWAY meanwhile.
    pub fn going(&mut self) {
        if let Phase::Other(p) = &mut self.phase
            && let Some(c) = p.carrier_mut()
        {
            c.going();
        }
    }

    /// Whether this session can be handed over now; `Err` names why not.
    pub fn can_hand_off(&self) -> Result<(), &'static str> {
        match (&self.phase, self.cx.role) {
            (Phase::Tunnel(t), Role::Connection | Role::Stream) => {
                if self.cx.links.more_ids().next().is_some() {
                    return Err("not-a-tunnel");
                }
                quiet(t, self)
            }
            (Phase::Other(p), Role::Http2) => {
                let c = p.carrier().ok_or("not-a-tunnel")?;
                open_to_carry(&self.cx.links.down)?;
                c.carriable(&self.cx)
            }
            _ => Err("not-a-tunnel"),
        }
    }

    /// A session being handed over could not be (it took too long, or something began that
    /// the description does not cover): it reads again, and gets the drain's Close now (an
    /// HTTP/2 connection: the drain's GOAWAY).
    pub fn hand_off_failed(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        match &mut self.phase {
            Phase::Tunnel(_) => {
                self.cx.links.down.set_held(false);
                self.cx.links.up.set_held(false);
                self.cx.links.release_sends(io);
            }
            Phase::Other(p) => {
                if let Some(c) = p.carrier_mut() {
                    c.release(&mut self.cx);
                    self.cx.links.release_sends(io);
                    return self.drain(io, env);
                }
            }
            _ => {}
        }
        self.drain_tunnel(io, env)
    }

    /// The connections that go with this session: a tunnel's client and upstream, an HTTP/2
    /// connection's client and stream links.
    fn carried_ids(&self) -> Vec<ConnId> {
        match &self.phase {
            Phase::Other(p) => p.carrier().map_or_else(Vec::new, |c| c.carried_ids()),
            _ => vec![ConnId::CLIENT, ConnId::UPSTREAM],
        }
    }

    /// The sockets that would go with this session (`carried_ids`), in order.
    pub fn carried_fds(&self) -> Vec<RawFd> {
        self.carried_ids()
            .into_iter()
            .map(|id| self.cx.links.get(id).fd())
            .collect()
    }

    /// Whether the session being handed over has come to rest: nothing in flight on any
    /// socket (what waits to be sent goes with it), every socket that does not go closed, and
    /// still nothing the description cannot carry. `Err` when it can no longer be handed over.
    pub fn handoff_ready(&self) -> Result<bool, &'static str> {
        match &self.phase {
            Phase::Tunnel(t) => quiet(t, self)?,
            Phase::Other(_) => self.can_hand_off().map_err(|e| match e {
                "not-a-tunnel" => "closing",
                e => e,
            })?,
            _ => return Err("closing"),
        }
        let l = &self.cx.links;
        let ids = self.carried_ids();
        let rest = |c: &Transport| {
            c.recv_state() == Recv::Off && c.hup_state() == Recv::Off && c.ops() == 0
        };
        let others_closed = l
            .ids()
            .filter(|id| !ids.contains(id))
            .all(|id| l.get(id).fd() < 0 && l.get(id).ops() == 0);
        Ok(l.cancels() == 0 && others_closed && ids.iter().all(|&id| rest(l.get(id))))
    }

    /// What waits to be sent toward each connection that goes (`carried_ids`' order) of a
    /// session at rest, taken out to go with it; `Err` (and nothing taken) past [`UNSENT_MAX`]
    /// toward any, or twice that in all.
    pub fn take_unsent(&mut self, io: &mut impl Io) -> Result<Vec<Vec<u8>>, &'static str> {
        if let Phase::Other(p) = &mut self.phase
            && let Some(c) = p.carrier_mut()
        {
            c.flush_out(&mut self.cx, io.as_dyn());
        }
        let ids = self.carried_ids();
        let queues: Vec<_> = ids
            .iter()
            .map(|&id| self.cx.links.get_mut(id).take_queue())
            .collect();
        let lens: Vec<usize> = queues
            .iter()
            .map(|q| q.iter().map(|c| c.len as usize).sum())
            .collect();
        let too_much =
            lens.iter().any(|&n| n > UNSENT_MAX) || lens.iter().sum::<usize>() > 2 * UNSENT_MAX;
        if too_much {
            for (&id, q) in ids.iter().zip(queues) {
                let conn = self.cx.links.get_mut(id);
                for c in q {
                    crate::reactor::Conn::push(conn, c);
                }
            }
            return Err("busy");
        }
        Ok(queues
            .into_iter()
            .map(|q| {
                let mut out = Vec::with_capacity(q.iter().map(|c| c.len as usize).sum());
                for c in q {
                    out.extend_from_slice(io.data_of(c));
                    io.release(c);
                }
                out
            })
            .collect())
    }

    /// The session, at rest (`handoff_ready`) with its `unsent` bytes taken out, leaves this
    /// process: its sockets (not closed) and its description. The server gauge and the
    /// limit_conn slot it held are given back here (the new process takes them again).
    pub fn export(mut self, now: u64, unsent: Vec<Vec<u8>>) -> Handed {
        let ids = self.carried_ids();
        let fds = ids.iter().map(|&id| self.cx.links.get(id).fd()).collect();
        let desc = self.describe(now, &unsent);
        self.cx.uncount_peer();
        self.cx.release_limit();
        // The sockets are the new process's now: nothing here may close them.
        for id in ids {
            self.cx.links.get_mut(id).forget_fd();
        }
        Handed {
            fds,
            desc,
            streams: Vec::new(),
        }
    }

    /// A tunnel just taken over (`adopt`) starts here: what waited to be sent goes first, as
    /// it is (on a TLS connection, records already sealed), then it reads both sides like any
    /// tunnel.
    pub fn resume(&mut self, unsent: Vec<Vec<u8>>, io: &mut impl Io, env: &mut Env<'_>) {
        let ids = self.carried_ids();
        for (bytes, id) in unsent.into_iter().zip(ids) {
            if !bytes.is_empty() {
                let c = io.put(bytes);
                let t = self.cx.links.get_mut(id);
                crate::reactor::Conn::push(t, c);
                t.kick(io, id);
            }
        }
        self.start(io, env);
    }
}

/// Whether a connection can be carried as it stands (open both ways, its TLS carriable).
fn open_to_carry(c: &Transport) -> Result<(), &'static str> {
    // (A splice shows in the tunnel's control: the socket's own flag is also the hold's.)
    if c.fd() < 0 || c.retiring() || c.eof() || c.shut() != Shut::Open {
        return Err("closing");
    }
    // TLS whose records' keys were not kept (`runtime.upgrade_tunnels` was off at its
    // handshake), or that is not open for records both ways.
    if !c.can_carry() {
        return Err("tls");
    }
    Ok(())
}

/// What the description cannot carry, if anything.
fn quiet(t: &Tunnel, s: &Session) -> Result<(), &'static str> {
    let l = &s.cx.links;
    for c in [&l.down, &l.up] {
        open_to_carry(c)?;
    }
    if t.frames.iter().any(FrameTracker::lost) {
        return Err("not-quiet");
    }
    if let Some(seen) = s.cx.notes.as_deref().and_then(|n| n.seen.as_ref())
        && seen.closing()
    {
        return Err("closing");
    }
    if let Some(k) = t.ctl.as_deref()
        && (k.want != [Inject::None; 2]
            || k.gathering != [false; 2]
            || k.closed != [false; 2]
            || k.close_by != 0
            || k.splice.iter().any(Option::is_some)
            || k.paused.iter().any(Option::is_some)
            || k.judged != [false; 2])
    {
        return Err("busy");
    }
    Ok(())
}

mod desc;
mod linger;
mod refuse;

pub use desc::describes_http2;
pub use refuse::refuse_handed;

#[cfg(test)]
mod tests;
