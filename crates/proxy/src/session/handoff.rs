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

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::cx::Role;
use super::phase::{Control, Inject, NO_PEER, Req, ReqText};
use super::tunnel::{Seen, Tunnel};
use super::{Env, Io, Next, Phase, Recv, Session, Shut, Transport};
use crate::config::Config;
use crate::uring::ConnId;
use crate::uring::timer::Stamp;
use crate::wire::{R, W};
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

/// Whether a description is of an HTTP/2 connection (for the count the new process logs).
pub fn describes_http2(desc: &[u8]) -> bool {
    desc.len() > 4 && desc[..4] == VERSION.to_le_bytes() && desc[4] == Kind::Http2 as u8
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

/// A tunnel handed over that is not taken (see [`refuse`]); an HTTP/2 connection's streams
/// first.
pub fn refuse_handed(t: Handed, why: &str) {
    for (_, s) in t.streams {
        refuse(&s.fds, &s.desc, why);
    }
    refuse(&t.fds, &t.desc, why);
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

    /// The description of this tunnel at `now`, with what waits to be sent toward each side.
    pub(super) fn describe(&self, now: u64, unsent: &[Vec<u8>]) -> Vec<u8> {
        let cx = &self.cx;
        let cfg = &cx.cfg;
        let mut w = W(Vec::with_capacity(256));
        w.u32(VERSION);
        let kind = match (&self.phase, cx.role) {
            (Phase::Other(_), _) => Kind::Http2,
            (_, Role::Stream) => Kind::Stream,
            _ => Kind::Tunnel,
        };
        w.u8(kind as u8);
        w.str(&cx.client.addr().to_string());
        w.str(
            &cfg.listeners
                .get(usize::from(cx.listener))
                .map_or(String::new(), |a| a.to_string()),
        );
        let t = match &self.phase {
            Phase::Tunnel(t) => t,
            Phase::Other(p) => {
                let c = p
                    .carrier()
                    .expect("export of a session that cannot be carried");
                tls_state(&mut w, &cx.links.down);
                w.u32(unsent.len() as u32);
                for u in unsent {
                    w.bytes(u);
                }
                c.describe(&mut w, now);
                return w.0;
            }
            _ => unreachable!("export of a session that is not a tunnel"),
        };
        // Where it is: its server's names and its location's path.
        let (names, path) = place_of(cfg, t.loc).unwrap_or_default();
        w.str(&names.join(" "));
        w.str(&path);
        let r = &t.req;
        let u = cfg.upstreams.get(usize::from(r.upstream));
        w.str(u.map_or("", |u| u.name.as_str()));
        let peer = u.and_then(|u| u.peers.get(usize::from(r.peer)));
        w.str(&peer.map_or(String::new(), |p| p.addr.to_string()));
        for s in [r.method(), r.host(), r.path(), r.upgrade_proto()] {
            w.str(s);
        }
        w.u64(now.saturating_sub(r.started_ms));
        w.u64(r.bytes_in);
        w.u64(r.bytes_out);
        w.u32(r.read_ms);
        w.u32(r.send_ms);
        w.u64(now.saturating_sub(cx.last_down_ms.at(now)));
        w.u64(now.saturating_sub(cx.last_up_ms.at(now)));
        w.u32(cx.served);
        for f in &t.frames {
            w.0.extend_from_slice(&f.to_bytes());
        }
        let (part, wraps) = cx
            .notes
            .as_deref()
            .and_then(|n| n.seen.as_ref())
            .map_or(([0; 2], [0; 2]), Seen::progress);
        for i in 0..2 {
            w.u32(t.msgs[i]);
            w.u32(wraps[i]);
            w.u64(part[i]);
        }
        match t.ctl.as_deref() {
            None => w.u8(0),
            Some(k) => {
                w.u8(1);
                for i in 0..2 {
                    w.u64(if k.pinged[i] == 0 {
                        0
                    } else {
                        now.saturating_sub(k.pinged[i]).max(1)
                    });
                    w.u64(k.expect[i]);
                }
                w.u64(if k.expires == 0 {
                    0
                } else {
                    k.expires.saturating_sub(now).max(1)
                });
            }
        }
        // Each side's TLS state (client side, upstream side).
        for c in [&cx.links.down, &cx.links.up] {
            tls_state(&mut w, c);
        }
        for u in unsent {
            w.bytes(u);
        }
        w.0
    }

    /// A tunnel handed over by the old process: `fds` (client, upstream) and its description,
    /// under configuration `cfg`, at `now` on this worker's clock, with what waits to be sent
    /// toward each side (for [`Session::resume`]). `Err` says why it cannot be taken (the
    /// sockets are then the caller's to close).
    pub fn adopt(
        cfg: &Arc<Config>,
        fds: &[RawFd],
        desc: &[u8],
        now: u64,
    ) -> Result<(Session, Vec<Vec<u8>>), String> {
        let d = match Desc::parse(desc)? {
            Parsed::Tunnel(d) => d,
            Parsed::Http2(h) => return Session::adopt_http2(cfg, fds, h, now),
        };
        let &[down_fd, up_fd] = fds else {
            return Err(format!("a tunnel with {} sockets", fds.len()));
        };
        // Its place in this configuration.
        let (si, li) = find_place(cfg, d.names, d.path)
            .ok_or_else(|| format!("no location {:?} of server {:?} here", d.path, d.names))?;
        let loc = &cfg.servers[si].locations[li];
        let listen_at = d
            .listener
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| cfg.listeners.iter().position(|l| *l == a))
            .or_else(|| cfg.servers[si].listen.first().copied())
            .unwrap_or(0);
        let listen = *cfg.listen.get(listen_at).ok_or("no listener")?;
        let mut req = Box::new(Req::new(
            ReqText::new(d.text[0], d.text[1], d.text[2], d.text[3]),
            now.saturating_sub(d.age),
            d.bytes_in,
        ));
        req.bytes_out = d.bytes_out;
        req.read_ms = d.read_ms;
        req.send_ms = d.send_ms;
        req.status = 101;
        req.responded = true;
        let ui = loc.upstream;
        let u = &cfg.upstreams[ui];
        req.upstream = ui as u16;
        req.peer = if u.name == d.upstream {
            u.peers
                .iter()
                .position(|p| p.addr.to_string() == d.peer)
                .map_or(NO_PEER, |i| i as u16)
        } else {
            NO_PEER
        };
        if !cfg.runtime.access_log {
            req.text = ReqText::none();
        }
        let ctl = match d.ctl {
            None => None,
            Some((pinged, expect, expires)) => {
                let mut k = Control::new(loc.heartbeat.as_ref());
                k.filter = super::filter::for_location(loc, d.client.ip());
                for i in 0..2 {
                    k.pinged[i] = if pinged[i] == 0 {
                        0
                    } else {
                        now.saturating_sub(pinged[i]).max(1)
                    };
                    k.expect[i] = expect[i];
                }
                if expires != 0 {
                    k.expires = now.saturating_add(expires);
                }
                Some(Box::new(k))
            }
        };
        let tunnel = Tunnel {
            req,
            ctl,
            frames: d.frames,
            loc: cfg.location_id(si, li),
            msgs: d.msgs,
        };
        let down = Transport::carried(down_fd, d.tls[0])?;
        let up = Transport::carried(up_fd, d.tls[1])?;
        let role = if d.stream {
            Role::Stream
        } else {
            Role::Connection
        };
        let mut s = Session::taken_over(
            down,
            d.client,
            listen,
            cfg,
            now,
            Phase::Tunnel(tunnel),
            role,
        );
        s.cx.links.up = up;
        s.cx.last_down_ms = Stamp::new(now.saturating_sub(d.down_age));
        s.cx.last_up_ms = Stamp::new(now.saturating_sub(d.up_age));
        s.cx.served = d.served;
        if d.part != [0; 2] || d.wraps != [0; 2] {
            let n = s.cx.notes.get_or_insert_with(Default::default);
            n.seen = Some(Seen::resumed(d.part, d.wraps));
        }
        if let Phase::Tunnel(t) = &s.phase
            && t.req.peer != NO_PEER
        {
            let peer = usize::from(t.req.peer);
            s.cx.count_peer(ui, peer);
        }
        if let Some(lc) = loc.limit_conn {
            // An established tunnel is counted, never refused: its client is connected.
            let key = crate::limits::key_of(d.client.ip());
            if cfg.conn_zones[lc.zone].table.take(key, u32::MAX) == crate::limits::Taken::Yes {
                s.cx.links.limited = lc.zone as u16 + 1;
            }
        }
        Ok((s, d.unsent.iter().map(|u| u.to_vec()).collect()))
    }

    /// A session over a connection another process handed over: no PROXY header comes on it.
    fn taken_over(
        down: Transport,
        client: SocketAddr,
        listen: super::Listen,
        cfg: &Arc<Config>,
        now: u64,
        phase: Phase,
        role: Role,
    ) -> Session {
        let mut s = Session::over(down, client, listen, cfg.clone(), now, phase);
        s.cx.proxy_header = false;
        s.cx.role = role;
        s
    }

    /// An HTTP/2 connection handed over (`adopt`): its client's socket and TLS, its streams'
    /// socket pairs, its state.
    fn adopt_http2(
        cfg: &Arc<Config>,
        fds: &[RawFd],
        d: H2Desc<'_>,
        now: u64,
    ) -> Result<(Session, Vec<Vec<u8>>), String> {
        // Under a configuration that no longer has its listener, or HTTP/2 on it, it is taken
        // as a reload keeps it: its streams go on, and it is told to take no more (GOAWAY).
        let at = d
            .listener
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| cfg.listeners.iter().position(|l| *l == a));
        let listen = *cfg.listen.get(at.unwrap_or(0)).ok_or("no listener")?;
        let no_more = at.is_none() || listen.http2.is_none();
        let (&client_fd, link_fds) = fds.split_first().ok_or("no socket")?;
        if d.unsent.len() != fds.len() {
            return Err("what waits to be sent does not match the sockets".into());
        }
        let down = Transport::carried(client_fd, d.tls)?;
        // (Its phase is set once its links are in place.)
        let phase = Phase::Closing(None);
        let mut s = Session::taken_over(down, d.client, listen, cfg, now, phase, Role::Http2);
        let mut links = Vec::with_capacity(link_fds.len());
        for &fd in link_fds {
            let t = Transport::carried(fd, None)?;
            links.push(s.cx.links.adopt_more(t).ok_or("too many streams")?);
        }
        let mut r = R(d.state);
        let h = super::h2::H2::adopt(&s.cx, &mut r, &links, now, no_more)?;
        if !r.done() {
            return Err("bytes after the description".into());
        }
        s.phase = Phase::Other(Box::new(h));
        Ok((s, d.unsent.iter().map(|u| u.to_vec()).collect()))
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

/// A description, read.
enum Parsed<'a> {
    Tunnel(Box<Desc<'a>>),
    Http2(H2Desc<'a>),
}

/// An HTTP/2 connection's description, read (its state is read by `H2::adopt`).
struct H2Desc<'a> {
    client: SocketAddr,
    listener: &'a str,
    tls: Option<&'a [u8]>,
    /// What waits to be sent toward the client, then toward each stream's socket pair.
    unsent: Vec<&'a [u8]>,
    state: &'a [u8],
}

/// A tunnel's description, read.
struct Desc<'a> {
    /// The inner session of an HTTP/2 stream.
    stream: bool,
    client: SocketAddr,
    listener: &'a str,
    names: &'a str,
    path: &'a str,
    upstream: &'a str,
    peer: &'a str,
    text: [&'a str; 4],
    age: u64,
    bytes_in: u64,
    bytes_out: u64,
    read_ms: u32,
    send_ms: u32,
    down_age: u64,
    up_age: u64,
    served: u32,
    frames: [FrameTracker; 2],
    msgs: [u32; 2],
    wraps: [u32; 2],
    part: [u64; 2],
    /// Ages of the pings out to each side, their tags, and what is left of the lifetime.
    ctl: Option<([u64; 2], [u64; 2], u64)>,
    /// What waits to be sent toward the client and toward the upstream.
    unsent: [&'a [u8]; 2],
    /// The TLS state of the client's connection and of the upstream's, where they have TLS.
    tls: [Option<&'a [u8]>; 2],
}

impl<'a> Desc<'a> {
    /// Read what `Session::describe` wrote; every field is checked.
    fn parse(desc: &'a [u8]) -> Result<Parsed<'a>, String> {
        let mut r = R(desc);
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!("description version {version}, not {VERSION}"));
        }
        let kind = r.u8()?;
        let client = r.str()?.parse().map_err(|_| "a bad client address")?;
        let listener = r.str()?;
        let stream = match kind {
            k if k == Kind::Tunnel as u8 => false,
            k if k == Kind::Stream as u8 => true,
            k if k == Kind::Http2 as u8 => {
                let tls = read_tls(&mut r, 0)?;
                let n = r.u32()? as usize;
                if n > 1 + usize::from(crate::uring::CONN_MAX) {
                    return Err("more streams than a session holds".into());
                }
                let mut unsent = Vec::with_capacity(n);
                for _ in 0..n {
                    unsent.push(
                        r.bytes(UNSENT_MAX)
                            .map_err(|_| "too much waiting to be sent")?,
                    );
                }
                return Ok(Parsed::Http2(H2Desc {
                    client,
                    listener,
                    tls,
                    unsent,
                    state: r.0,
                }));
            }
            _ => return Err(format!("a description of kind {kind}")),
        };
        let (names, path) = (r.str()?, r.str()?);
        let (upstream, peer) = (r.str()?, r.str()?);
        let text = [r.str()?, r.str()?, r.str()?, r.str()?];
        let (age, bytes_in, bytes_out) = (r.u64()?, r.u64()?, r.u64()?);
        let (read_ms, send_ms) = (r.u32()?, r.u32()?);
        let (down_age, up_age) = (r.u64()?, r.u64()?);
        let served = r.u32()?;
        let mut frames = [FrameTracker::default(); 2];
        for f in frames.iter_mut() {
            let b = r.take(FrameTracker::BYTES)?.try_into().expect("sized");
            *f = FrameTracker::from_bytes(b).ok_or("a bad frame tracker")?;
        }
        let (mut msgs, mut wraps, mut part) = ([0u32; 2], [0u32; 2], [0u64; 2]);
        for i in 0..2 {
            msgs[i] = r.u32()?;
            wraps[i] = r.u32()?;
            part[i] = r.u64()?;
        }
        let ctl = match r.u8()? {
            0 => None,
            1 => {
                let (mut pinged, mut expect) = ([0u64; 2], [0u64; 2]);
                for i in 0..2 {
                    pinged[i] = r.u64()?;
                    expect[i] = r.u64()?;
                }
                Some((pinged, expect, r.u64()?))
            }
            _ => return Err("a bad control marker".into()),
        };
        let tls = [read_tls(&mut r, 0)?, read_tls(&mut r, 1)?];
        let mut unsent: [&[u8]; 2] = [&[], &[]];
        for u in unsent.iter_mut() {
            *u = r
                .bytes(UNSENT_MAX)
                .map_err(|_| "too much waiting to be sent")?;
        }
        if !r.0.is_empty() {
            return Err("bytes after the description".into());
        }
        Ok(Parsed::Tunnel(Box::new(Desc {
            stream,
            client,
            listener,
            names,
            path,
            upstream,
            peer,
            text,
            age,
            bytes_in,
            bytes_out,
            read_ms,
            send_ms,
            down_age,
            up_age,
            served,
            frames,
            msgs,
            wraps,
            part,
            ctl,
            unsent,
            tls,
        })))
    }
}

/// A connection's TLS state in a description. One whose TLS cannot be carried (`quiet`
/// rules that out first) gets a marker the new process refuses.
fn tls_state(w: &mut W, c: &Transport) {
    match c.carry() {
        Ok(None) => w.u8(0),
        Ok(Some(b)) => {
            w.u8(1);
            w.bytes(&b);
        }
        Err(_) => w.u8(u8::MAX),
    }
}

/// A TLS state as [`tls_state`] wrote it, of the end ringway is on `side` (0: the server, on a
/// client's connection; 1: the client, on an upstream's).
fn read_tls<'a>(r: &mut R<'a>, side: u8) -> Result<Option<&'a [u8]>, String> {
    match r.u8()? {
        0 => Ok(None),
        1 => {
            let b = r
                .bytes(crate::tls::CARRIED_MAX)
                .map_err(|_| "a TLS state too large")?;
            if b.first() != Some(&side) {
                return Err("a TLS state of the wrong end".into());
            }
            Ok(Some(b))
        }
        _ => Err("a TLS state that could not be carried".into()),
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

/// The names of the server and the path of the location numbered `id`.
fn place_of(cfg: &Config, id: u16) -> Option<(Vec<String>, String)> {
    let mut id = usize::from(id);
    for s in &cfg.servers {
        if id < s.locations.len() {
            return Some((s.names.clone(), s.locations[id].path.clone()));
        }
        id -= s.locations.len();
    }
    None
}

/// The server with these names (space-separated) and its location with this path.
fn find_place(cfg: &Config, names: &str, path: &str) -> Option<(usize, usize)> {
    let want: Vec<&str> = names.split(' ').filter(|n| !n.is_empty()).collect();
    cfg.servers.iter().enumerate().find_map(|(si, s)| {
        let same = s.names.len() == want.len() && s.names.iter().zip(&want).all(|(a, b)| a == b);
        if !same {
            return None;
        }
        let li = s.locations.iter().position(|l| l.path == path)?;
        Some((si, li))
    })
}

/// A session handed over that cannot be taken (`why`). A tunnel: each side is sent what
/// waited for it, then the Close it would get from a drain — 1012 to the client, 1001 to the
/// upstream — where its stream stands at a frame boundary, sealed in a record and followed by
/// close_notify on a TLS connection (sent at once, without waiting: a socket at rest has room
/// for a few bytes; what does not go whole is followed by nothing), then both sockets close.
/// An HTTP/2 connection: its client is sent what waited, then a GOAWAY (NO_ERROR) the same
/// way, and its sockets close (its streams' sessions, refused with it, have had their Close
/// sent into their socket pairs, which nothing reads any more). A description that cannot be
/// read at all says nothing of the boundaries: the sockets just close.
pub fn refuse(fds: &[RawFd], desc: &[u8], why: &str) {
    tracing::warn!("upgrade: a tunnel handed over is not taken ({why}): closing it");
    let send = |fd: RawFd, bytes: &[u8]| {
        let sent = nix::sys::socket::send(
            fd,
            bytes,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        );
        sent == Ok(bytes.len())
    };
    let sealed = |tls: Option<&[u8]>, plain: &[u8]| match tls {
        None if plain.is_empty() => None,
        None => Some(plain.to_vec()),
        Some(state) => crate::tls::seal_carried(state, plain),
    };
    match Desc::parse(desc) {
        Ok(Parsed::Tunnel(d)) if fds.len() == 2 => {
            // Toward the client goes what the upstream's stream carries, and the other way.
            let sides = [
                (0, &d.frames[1], crate::ws::close_payload(1012, ""), None),
                (
                    1,
                    &d.frames[0],
                    crate::ws::close_payload(1001, ""),
                    // Masked as the tunnel masks its own frames (random keys, `mask_for`).
                    Some(super::tunnel::mask_for(fds[1] as u64)),
                ),
            ];
            for (i, t, payload, mask) in sides {
                if !d.unsent[i].is_empty() && !send(fds[i], d.unsent[i]) {
                    continue;
                }
                let close = if t.at_boundary() && !t.lost() {
                    crate::ws::frame(crate::ws::opcode::CLOSE, &payload, mask)
                } else {
                    Vec::new()
                };
                if let Some(b) = sealed(d.tls[i], &close) {
                    send(fds[i], &b);
                }
            }
        }
        Ok(Parsed::Http2(h))
            if !fds.is_empty()
                && h.unsent
                    .first()
                    .is_none_or(|u| u.is_empty() || send(fds[0], u)) =>
        {
            let mut goaway = Vec::new();
            crate::h2::frame::goaway(
                &mut goaway,
                crate::h2::frame::MAX_WINDOW,
                crate::h2::Code::NoError,
            );
            if let Some(b) = sealed(h.tls, &goaway) {
                send(fds[0], &b);
            }
        }
        _ => {}
    }
    // The client's side ends after what was sent, and what it had sent is read first (a
    // close with bytes unread would be a reset, which can discard our last words at the
    // client): at once, without waiting.
    if let Some(&fd) = fds.first() {
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
        let mut sink = [0u8; 16 * 1024];
        for _ in 0..64 {
            match nix::sys::socket::recv(fd, &mut sink, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    for &fd in fds {
        let _ = nix::unistd::close(fd);
    }
}

#[cfg(test)]
mod tests;
