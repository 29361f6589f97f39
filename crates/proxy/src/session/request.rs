//! The HTTP/1 request head, read and parsed as it arrives (on a kept-alive connection,
//! starting with what the client pipelined): a protocol type. Once whole, it is routed (the
//! server by Host, the location by the normalised path, the limits), rewritten for the
//! upstream, and the session becomes the exchange that connects; or it is answered here
//! (400, 404, 414, 431, 503). An idle kept-alive connection waits here for its next request.

use super::Side;
use super::phase::{Exchange, Req, Terms, Upward, ms32};
use super::protocol::{Protocol, Step};
use super::{Cx, End, Env, Io, Phase};
use crate::config::{Location, clock_ms};
use crate::http::{self, BodyKind, BodyTracker, HeadError};
use crate::upstream::KeyInput;
use crate::upstream::attempt::Attempt;
use crate::uring::timer::Stamp;
use crate::uring::{Chunk, ConnId};

/// A request head being read: its bytes so far; `granted`: the head is one an `auth_request`
/// allowed, parsed again (its limits were taken the first time).
#[derive(Debug, Default)]
pub(super) struct Request {
    pub head: Vec<u8>,
    pub granted: Option<Box<super::auth::Granted>>,
}

impl Protocol for Request {
    fn name(&self) -> &'static str {
        "request"
    }

    /// Begun with bytes already (what a kept-alive client pipelined, or what another protocol
    /// read before handing the connection over): they may be a whole head.
    fn start<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        if self.head.is_empty() {
            Step::Continue
        } else {
            self.parse(cx, io, env)
        }
    }

    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        if from != ConnId::CLIENT {
            // Nothing is expected from an upstream between requests.
            io.release(c);
            return Step::Continue;
        }
        if self.idle(cx) {
            // The next request on a kept-alive connection: its header clock starts with its
            // first byte, as in nginx.
            cx.phase_ms = Stamp::new(io.now_ms());
        }
        self.head.extend_from_slice(io.data_of(c));
        io.release(c);
        if cx.served == 0
            && cx.listen().http2.is_some()
            && let Some(step) = self.http2(cx, io)
        {
            return step;
        }
        self.parse(cx, io, env)
    }

    /// A head cut short, or a client gone between requests.
    fn eof<I: Io + ?Sized>(&mut self, _cx: &mut Cx, from: ConnId, _io: &mut I) -> Step {
        match Side::of(from) {
            Side::Down => Step::Close(End::ClientClosed),
            Side::Up => Step::Continue,
        }
    }

    fn timer<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        _now: u64,
        _io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        Step::Close(if self.idle(cx) {
            End::KeepaliveTimeout
        } else {
            End::HeaderTimeout
        })
    }

    /// `keepalive_timeout` while idle between requests, else `header_timeout` for the head.
    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        let ms = if self.idle(cx) {
            cx.listen().keepalive_timeout_ms
        } else {
            cx.listen().header_timeout_ms
        };
        Some(cx.phase_ms.at(now) + u64::from(ms))
    }

    fn wants(&self, _cx: &Cx, id: ConnId, _room: bool) -> bool {
        id == ConnId::CLIENT
    }

    /// An idle kept-alive connection closes at once; a head on its way (or the first of a
    /// connection just accepted) is answered, and the connection then closed.
    fn drain<I: Io + ?Sized>(&mut self, cx: &mut Cx, _io: &mut I) -> Step {
        if self.idle(cx) {
            Step::Close(End::Shutdown)
        } else {
            Step::Continue
        }
    }
}

impl Request {
    /// On a listener with `http2`, the connection's first bytes: HTTP/2 when TLS chose it
    /// (ALPN `h2`), or, on a plain listener, when they are the client preface (h2c with prior
    /// knowledge); then the session becomes the HTTP/2 connection, which reads them again.
    /// None: HTTP/1.
    #[cold]
    fn http2<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Option<Step> {
        let alpn = cx.links.down.tls_info().is_some_and(|i| i.h2);
        if !alpn {
            let preface = crate::h2::frame::PREFACE;
            let n = self.head.len().min(preface.len());
            if !cx.links.down.is_plain() || self.head[..n] != preface[..n] {
                return None;
            }
            if n < preface.len() {
                return Some(Step::Continue);
            }
        }
        let first = std::mem::take(&mut self.head);
        let h2 = super::h2::H2::new(cx, first, io.now_ms());
        cx.role = super::Role::Http2;
        io.observe(super::Observed::Http2Opened);
        Some(Step::Become(Phase::Other(Box::new(h2))))
    }

    /// Waiting for the first byte of the next request on a kept-alive connection.
    pub(super) fn idle(&self, cx: &Cx) -> bool {
        cx.served > 0 && self.head.is_empty()
    }

    /// Parse the head so far; once it is whole, route it (the location, the limits), rewrite
    /// it for the upstream and become the exchange that connects (`Connecting`: the connect
    /// starts once the previous upstream socket, if any, has closed), or answer it ourselves.
    pub(super) fn parse<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        // Parsed out of the phase: a whole head leaves it with the request (its headers, as
        // parsed, go on to the rewrite); anything else puts it back.
        let buf = std::mem::take(&mut self.head);
        let mut headers = http::Headers::new();
        let (req, lines) = match http::parse_request_in(&buf, &cx.listen().limits(), &mut headers) {
            Ok(Some(r)) => r,
            other => {
                let step = match other {
                    Ok(_) => Step::Continue,
                    Err(HeadError::TooLarge) => Step::Respond(431, End::HeadTooLarge),
                    Err(HeadError::UriTooLong) => Step::Respond(414, End::UriTooLong),
                    Err(HeadError::Invalid(why)) => Step::Respond(400, End::BadRequest(why)),
                };
                self.head = buf;
                return step;
            }
        };
        let now = io.now_ms();
        if let Some(si) = cx
            .cfg
            .find_server(usize::from(cx.listen().index), req.host_name())
        {
            cx.real_ip(si, &buf[..req.head_len]);
        }
        let cfg = &*cx.cfg;
        // Locations match the normalised path; the request goes up as the client sent it.
        let norm = http::normalize_path(&req.path);
        let found = norm.as_ref().ok().and_then(|path| {
            let s = cfg.find_server(usize::from(cx.listen().index), req.host_name())?;
            let l = cfg.find_location(s, path.as_bytes())?;
            Some((s, l))
        });
        let route = found.map(|(s, l)| &cfg.servers[s].locations[l]);
        // Only an allowed protocol (websocket by default), and never on HTTP/1.0, is tunnelled;
        // any other Upgrade is dropped and the request proxied as plain HTTP.
        let upgrade = match (&req.upgrade, route) {
            (Some(v), Some(l))
                if req.version_minor == 1 && http::upgrade_allowed(v, &l.upgrade) =>
            {
                v.as_str()
            }
            _ => "",
        };
        let r = new_req(cx, &req, route, upgrade, &buf, now);
        if let Err(HeadError::Invalid(why)) = norm {
            return Step::Answer(r, 400, End::BadRequest(why));
        }
        let Some(loc) = route else {
            return Step::Answer(r, 404, End::NoRoute);
        };
        let granted = self.granted.take();
        let delay_ms = if granted.is_some() {
            // Counted and limited when it was first routed.
            0
        } else {
            loc.stats.routed();
            match take_limits(cfg, loc, cx.client.ip(), &mut cx.links.limited) {
                // At most the longest timeout: the phase's clock is a 32-bit stamp, exact
                // within 24 days (a 1r/m rate with a burst of 100,000 could ask for 70).
                Ok(ms) => ms.min(crate::config::MAX_TIMEOUT.as_millis() as u64),
                Err(status) => {
                    loc.stats.limited();
                    return Step::Answer(r, status, End::Limited);
                }
            }
        };
        let (si, li) = found.unwrap_or_default();
        let id = cfg.location_id(si, li);
        let routed = Routed {
            req: &req,
            si,
            li,
            id,
            upgrade,
            delay_ms,
            now,
        };
        match granted {
            Some(g) => routed.go_up(cx, &buf, Some(&lines), r, Some(*g), io),
            None if loc.auth_request.is_some() => {
                // Asked first (or a kept answer): the configuration is held by this session
                // meanwhile, as it is by `cx`. The head goes to the subrequest; when a kept
                // answer brings it straight back, it is parsed again for the rewrite.
                let held = cx.cfg.clone();
                let Some(a) = &held.servers[si].locations[li].auth_request else {
                    return Step::Answer(r, 500, End::AuthFailed("error"));
                };
                match super::auth::ask(cx, &req, buf, r, a, id, delay_ms, io, env) {
                    Ok((g, buf, back)) => routed.go_up(cx, &buf, None, back, Some(g), io),
                    Err(step) => step,
                }
            }
            None => routed.go_up(cx, &buf, Some(&lines), r, None, io),
        }
    }
}

/// A whole request head, routed: to location `li` of server `si` (`id` the location's), asking
/// to upgrade to `upgrade` ("" when it may not), to go after `delay_ms` (`limit_req`); `now`:
/// the clock when it was parsed.
struct Routed<'a> {
    req: &'a http::Request,
    si: usize,
    li: usize,
    id: u16,
    upgrade: &'a str,
    delay_ms: u64,
    now: u64,
}

impl Routed<'_> {
    /// Rewritten for the upstream (from `lines`, the head as parsed, or parsed again when
    /// `None`) and queued toward it: the exchange that connects. `granted`: what an
    /// `auth_request` allowed, if one was asked.
    fn go_up<I: Io + ?Sized>(
        &self,
        cx: &mut Cx,
        buf: &[u8],
        lines: Option<&http::RequestLines<'_, '_>>,
        mut r: Req,
        granted: Option<super::auth::Granted>,
        io: &mut I,
    ) -> Step {
        let (req, upgrade, now) = (self.req, self.upgrade, self.now);
        let cfg = &*cx.cfg;
        let loc = &cfg.servers[self.si].locations[self.li];
        if let Some(g) = &granted {
            // The request began before its subrequest.
            r.started_ms = g.started_ms;
        }
        let set: Vec<(&str, Option<&[u8]>)> = match (&loc.auth_request, &granted) {
            (Some(a), Some(g)) => a
                .set
                .iter()
                .zip(&g.values)
                .map(|((name, _), v)| (name.as_str(), v.as_deref()))
                .collect(),
            // A location's `set` headers never come from the client.
            (Some(a), None) => a.set.iter().map(|(n, _)| (n.as_str(), None)).collect(),
            _ => Vec::new(),
        };
        let up = self.request_up(cx, buf, lines, loc, &set, io);
        let (out, upward) = match up {
            Ok(up) => up,
            Err(why) => {
                return Step::Answer(r, 400, End::BadRequest(why));
            }
        };
        let mut terms = new_terms(cx, req, loc, upgrade, buf, upward, now);
        terms.loc = self.id;
        // Kept to send again to the next server if this one fails after the request went up
        // (nginx does not resend a non-idempotent request; a body is not kept).
        if let Some(a) = terms.attempt.as_mut() {
            let body = req.body != BodyKind::None;
            a.keep_for_resend(&out, &req.method, body, &cfg.upstreams[loc.upstream]);
        }
        let head = io.put(out);
        // The head goes first: nothing can be queued toward an upstream not yet chosen.
        debug_assert!(cx.links.up.flushed());
        cx.links.up.push(io, head);
        // limit_req without nodelay: the request waits its turn (its timer is the connect
        // deadline until then); otherwise the connect starts as soon as no previous upstream
        // socket is closing (`Session::after`).
        cx.phase_ms = Stamp::new(now + self.delay_ms);
        Step::Become(Phase::Exchange(Exchange::to_connect(
            r,
            terms,
            self.delay_ms,
        )))
    }

    /// The head (in `buf`) rewritten for `loc`'s upstream, with what of the body came
    /// with it, and what the client's next bytes are (body, or held); the reason it is a bad
    /// request when it is one.
    fn request_up(
        &self,
        cx: &Cx,
        buf: &[u8],
        lines: Option<&http::RequestLines<'_, '_>>,
        loc: &Location,
        set: &[(&str, Option<&[u8]>)],
        io: &mut (impl Io + ?Sized),
    ) -> Result<(Vec<u8>, Upward), &'static str> {
        let (req, upgrade) = (self.req, !self.upgrade.is_empty());
        let cfg = &*cx.cfg;
        let mut out = io.scratch();
        out.reserve(req.head_len + 256);
        let fwd = http::Forwarded {
            upgrade,
            client_ip: cx.client.ip(),
            proto: if cx.listen().tls { "https" } else { "http" },
            default_host: &cfg.upstreams[loc.upstream].name,
            keepalive: cfg.upstreams[loc.upstream].keepalive > 0,
            target: None,
            set,
            no_body: false,
        };
        match lines {
            Some(lines) => http::rewrite_request_parsed(lines, &fwd, &mut out),
            None => {
                if let Err(HeadError::Invalid(why)) =
                    http::rewrite_request(&buf[..req.head_len], &fwd, &mut out)
                {
                    io.recycle(out);
                    return Err(why);
                }
            }
        }
        // The body (if any) goes up as it comes; whatever follows it is held — for an upgrade
        // until the 101 arrives (then it is tunnel data), otherwise as the next request —
        // so no byte reaches the upstream that ringway has not parsed, routed and rewritten.
        let extra = &buf[req.head_len..];
        let mut t = BodyTracker::new(req.body);
        let upward = match t.feed(extra) {
            Ok(n) => {
                out.extend_from_slice(&extra[..n]);
                if t.done() {
                    Upward::Hold(extra[n..].to_vec())
                } else {
                    Upward::Body(t)
                }
            }
            Err(e) => {
                io.recycle(out);
                return Err(e.0);
            }
        };
        Ok((out, upward))
    }
}

/// The record of a request whose head `req` (in `buf`) was routed to `route`, asking to
/// upgrade to `upgrade` ("" when it may not); `now`: the clock.
fn new_req(
    cx: &Cx,
    req: &http::Request,
    route: Option<&Location>,
    upgrade: &str,
    buf: &[u8],
    now: u64,
) -> Req {
    let host = req.host.as_deref().unwrap_or("-");
    let text = super::phase::ReqText::new(&req.method, host, &req.path, upgrade);
    Req {
        upstream: route.map_or(0, |l| l.upstream as u16),
        read_ms: route.map_or(0, |l| ms32(l.read_timeout)),
        send_ms: route.map_or(cx.listen().header_timeout_ms, |l| ms32(l.send_timeout)),
        ..Req::new(text, cx.phase_ms.at(now), buf.len() as u64)
    }
}

/// A tunnel's lifetime: `max` less a part of `jitter` drawn from the client's port and the
/// clock (hashed with the process's random keys), so that tunnels opened together do not end
/// together.
fn lifetime_ms(max: std::time::Duration, jitter: std::time::Duration, port: u16, now: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static KEYS: std::collections::hash_map::RandomState = Default::default();
    }
    let jitter = jitter.as_millis() as u64;
    let draw = KEYS.with(|k| {
        let mut h = k.build_hasher();
        h.write_u64(now ^ (u64::from(port) << 48));
        h.finish()
    });
    (max.as_millis() as u64).saturating_sub(draw % (jitter + 1))
}

/// What the exchange of request `req` (in `buf`), routed to `loc` and asking to upgrade to
/// `upgrade` ("" when it may not), needs besides its record; `upward`: what the client's
/// next bytes are.
fn new_terms(
    cx: &Cx,
    req: &http::Request,
    loc: &Location,
    upgrade: &str,
    buf: &[u8],
    upward: Upward,
    now: u64,
) -> Box<Terms> {
    let u = &cx.cfg.upstreams[loc.upstream];
    let input = KeyInput {
        client: cx.client.ip(),
        uri: &req.path,
        head: &buf[..req.head_len],
    };
    Box::new(Terms {
        attempt: Some(Attempt::new(u, &loc.next_upstream, &input)),
        // A tunnel's control: its heartbeats and its filters, only when it has either.
        ctl: (!upgrade.is_empty())
            .then(|| {
                let filter = super::filter::for_location(loc, cx.client.ip());
                let lives = loc.max_lifetime.is_some();
                (loc.heartbeat.is_some() || filter.is_some() || lives).then(|| {
                    let mut k = super::phase::Control::new(loc.heartbeat.as_ref());
                    k.filter = filter;
                    if let Some((max, jitter)) = loc.max_lifetime {
                        k.expires = now + lifetime_ms(max, jitter, cx.client.addr().port(), now);
                    }
                    Box::new(k)
                })
            })
            .flatten(),
        connect_ms: ms32(loc.connect_timeout),
        body_ms: ms32(loc.body_timeout),
        interim: 0,
        interim_bytes: 0,
        keep_alive: req.keep_alive,
        up_keep: false,
        upward,
        loc: u16::MAX,
        auth: None,
    })
}

/// The location's limits for a request from `ip`: `Ok(delay in ms)` (0: go now), or
/// `Err(status)` when refused. A connection holds at most one `limit_conn` slot (`held`:
/// zone + 1), from its first limited request until it ends; a request for another zone
/// trades it.
fn take_limits(
    cfg: &crate::config::Config,
    loc: &crate::config::Location,
    ip: std::net::IpAddr,
    held: &mut u16,
) -> Result<u64, u16> {
    let key = crate::limits::key_of(ip);
    if let Some(lc) = loc.limit_conn
        && usize::from(*held) != lc.zone + 1
    {
        match cfg.conn_zones[lc.zone].table.take(key, lc.max) {
            crate::limits::Taken::Yes => {
                if let Some(old) = held.checked_sub(1) {
                    cfg.conn_zones[usize::from(old)].table.give_back(key);
                }
                *held = lc.zone as u16 + 1;
            }
            crate::limits::Taken::Over => return Err(lc.status),
            crate::limits::Taken::Full => {
                tracing::warn!(target: "limits", "limit_conn_zone {:?} is full ({} addresses): refusing new addresses", cfg.conn_zones[lc.zone].name, cfg.conn_zones[lc.zone].table.capacity());
                return Err(lc.status);
            }
        }
    }
    match loc.limit_req {
        None => Ok(0),
        Some(lr) => {
            let z = &cfg.req_zones[lr.zone].table;
            match z.check(key, clock_ms(), lr.rate_milli, lr.burst, lr.nodelay) {
                crate::limits::Verdict::Pass => Ok(0),
                crate::limits::Verdict::Delay(ms) => Ok(ms),
                crate::limits::Verdict::Refuse => Err(lr.status),
            }
        }
    }
}
