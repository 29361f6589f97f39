//! The description of a session handed over: written by the old process ([`Session::describe`]),
//! read and taken over by the new one ([`Session::adopt`]); little-endian numbers and strings
//! (`crate::wire`), every field checked as it is read.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::session::phase::{Control, NO_PEER, Req, ReqText};
use crate::session::tunnel::Seen;
use crate::uring::timer::Stamp;
use crate::wire::{R, W};

/// Whether a description is of an HTTP/2 connection (for the count the new process logs).
pub fn describes_http2(desc: &[u8]) -> bool {
    desc.len() > 4 && desc[..4] == VERSION.to_le_bytes() && desc[4] == Kind::Http2 as u8
}

impl Session {
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
        // As a tunnel opened here: without an access log, no text is kept.
        let text = if cfg.runtime.access_log {
            ReqText::new(d.text[0], d.text[1], d.text[2], d.text[3])
        } else {
            ReqText::none()
        };
        let mut req = Req::new(text, now.saturating_sub(d.age), d.bytes_in);
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
                k.filter = crate::session::filter::for_location(loc, d.client.ip());
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
        listen: crate::session::Listen,
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
        let h = crate::session::h2::H2::adopt(&s.cx, &mut r, &links, now, no_more)?;
        if !r.done() {
            return Err("bytes after the description".into());
        }
        s.phase = Phase::Other(Box::new(h));
        Ok((s, d.unsent.iter().map(|u| u.to_vec()).collect()))
    }
}

/// A description, read.
pub(super) enum Parsed<'a> {
    Tunnel(Box<Desc<'a>>),
    Http2(H2Desc<'a>),
}

/// An HTTP/2 connection's description, read (its state is read by `H2::adopt`).
pub(super) struct H2Desc<'a> {
    pub(super) client: SocketAddr,
    pub(super) listener: &'a str,
    pub(super) tls: Option<&'a [u8]>,
    /// What waits to be sent toward the client, then toward each stream's socket pair.
    pub(super) unsent: Vec<&'a [u8]>,
    pub(super) state: &'a [u8],
}

/// A tunnel's description, read.
pub(super) struct Desc<'a> {
    /// The inner session of an HTTP/2 stream.
    pub(super) stream: bool,
    pub(super) client: SocketAddr,
    pub(super) listener: &'a str,
    pub(super) names: &'a str,
    pub(super) path: &'a str,
    pub(super) upstream: &'a str,
    pub(super) peer: &'a str,
    pub(super) text: [&'a str; 4],
    pub(super) age: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) read_ms: u32,
    pub(super) send_ms: u32,
    pub(super) down_age: u64,
    pub(super) up_age: u64,
    pub(super) served: u32,
    pub(super) frames: [FrameTracker; 2],
    pub(super) msgs: [u32; 2],
    pub(super) wraps: [u32; 2],
    pub(super) part: [u64; 2],
    /// Ages of the pings out to each side, their tags, and what is left of the lifetime.
    pub(super) ctl: Option<([u64; 2], [u64; 2], u64)>,
    /// What waits to be sent toward the client and toward the upstream.
    pub(super) unsent: [&'a [u8]; 2],
    /// The TLS state of the client's connection and of the upstream's, where they have TLS.
    pub(super) tls: [Option<&'a [u8]>; 2],
}

impl<'a> Desc<'a> {
    /// Read what `Session::describe` wrote; every field is checked.
    pub(super) fn parse(desc: &'a [u8]) -> Result<Parsed<'a>, String> {
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
