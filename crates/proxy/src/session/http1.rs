//! The HTTP/1 protocol of a session: request heads (parsed, routed, rewritten), bodies,
//! response heads, keep-alive, the upgrade to a tunnel, and the access log. It sees plaintext
//! chunks from the transports and hands plaintext chunks back; it returns a [`Next`] instead
//! of acting on errors itself.

use super::Phase;
use super::Session;
use super::answer::Answer;
use super::phase::Linger;
use super::phase::{Connect, Downward, Exchange, Req, Upward, ms32};
use super::tunnel::Tunnel;
use super::{
    AccessLog, End, Env, INTERIM_BYTES_MAX, INTERIM_MAX, Io, Observed, RESPONSE_HEAD_MAX, Step,
};
use crate::config::Location;
use crate::config::clock_ms;
use crate::config::upstream::Failure;
use crate::http::{self, BodyKind, BodyTracker, ClientConnection, HeadError};
use crate::upstream::KeyInput;
use crate::upstream::attempt::Attempt;
use crate::uring::{Chunk, Side};
use crate::ws::FrameTracker;

impl Session {
    /// Plaintext from the client.
    pub(super) fn on_client_bytes(
        &mut self,
        c: Chunk,
        io: &mut impl Io,
        env: &mut Env<'_>,
    ) -> Step {
        let now = io.now_ms();
        match &mut self.phase {
            Phase::Request { head } => {
                if head.is_empty() && self.cx.served > 0 {
                    // The next request on a kept-alive connection: its header clock starts
                    // with its first byte, as in nginx.
                    self.cx.phase_ms = now;
                }
                head.extend_from_slice(io.data_of(c));
                io.release(c);
                self.try_request(io, env)
            }
            Phase::Connecting(x) | Phase::Proxy(x) => match &mut x.upward {
                Upward::Body(t) => match t.feed(io.data_of(c)) {
                    Ok(n) => {
                        if t.done() {
                            x.upward = Upward::Hold(io.data_of(c)[n..].to_vec());
                        }
                        self.forward_prefix(Side::Down, c, n, io);
                        Step::Continue
                    }
                    Err(e) => {
                        io.release(c);
                        Step::Respond(400, End::BadRequest(e.0))
                    }
                },
                Upward::Hold(stash) => {
                    // Never dropped: `want_recv` stops reading at the bound, so at most what
                    // the recv already armed may bring (QUEUE buffers) lands past it.
                    stash.extend_from_slice(io.data_of(c));
                    io.release(c);
                    Step::Continue
                }
            },
            // Our answer is going out: what the client still sends is dropped. (A protocol
            // type, a tunnel among them, has had its bytes in `on_data`.)
            Phase::Respond { .. } | Phase::Closing(_) | Phase::Tunnel(_) | Phase::Other(_) => {
                io.release(c);
                Step::Continue
            }
        }
    }

    /// Plaintext from the upstream.
    pub(super) fn on_upstream_bytes(
        &mut self,
        c: Chunk,
        io: &mut impl Io,
        env: &mut Env<'_>,
    ) -> Step {
        match &mut self.phase {
            Phase::Proxy(x) => match &mut x.downward {
                Downward::Head(v) => {
                    v.extend_from_slice(io.data_of(c));
                    io.release(c);
                    self.try_response(io, env)
                }
                Downward::Body(t) => match t.feed(io.data_of(c)) {
                    Ok(n) => {
                        let done = t.done();
                        self.forward_prefix(Side::Up, c, n, io);
                        if done {
                            return self.response_done(io, env);
                        }
                        Step::Continue
                    }
                    Err(e) => {
                        io.release(c);
                        Step::Close(End::BadResponse(e.0))
                    }
                },
                Downward::Connect(_) => {
                    io.release(c);
                    Step::Continue
                }
            },
            _ => {
                io.release(c);
                Step::Continue
            }
        }
    }

    // ---- request ---------------------------------------------------------------------------

    pub(super) fn try_request(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        let Phase::Request { head } = &mut self.phase else {
            return Step::Continue;
        };
        let buf = &*head;
        let req = match http::parse_request(buf, &self.cx.listen.limits()) {
            Ok(None) => return Step::Continue,
            Ok(Some(r)) => r,
            Err(HeadError::TooLarge) => return Step::Respond(431, End::HeadTooLarge),
            Err(HeadError::UriTooLong) => return Step::Respond(414, End::UriTooLong),
            Err(HeadError::Invalid(why)) => return Step::Respond(400, End::BadRequest(why)),
        };
        // The head is complete: it leaves the phase with the request.
        let buf = std::mem::take(head);
        self.phase = Phase::Closing(None);
        let now = io.now_ms();
        if let Some(si) = self
            .cx
            .cfg
            .find_server(usize::from(self.cx.listen.index), req.host_name())
        {
            self.real_ip(si, &buf[..req.head_len]);
        }
        let cfg = &*self.cx.cfg;
        // Locations match the normalised path; the request goes up as the client sent it.
        let norm = http::normalize_path(&req.path);
        let route = norm.as_ref().ok().and_then(|path| {
            let s = cfg.find_server(usize::from(self.cx.listen.index), req.host_name())?;
            Some(&cfg.servers[s].locations[cfg.find_location(s, path.as_bytes())?])
        });
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
        let mut r = self.new_req(&req, route, upgrade, &buf);
        if let Err(HeadError::Invalid(why)) = norm {
            self.answer(r, 400, End::BadRequest(why), io);
            return Step::Continue;
        }
        let Some(loc) = route else {
            self.answer(r, 404, End::NoRoute, io);
            return Step::Continue;
        };
        loc.stats.routed();
        let delay_ms = match take_limits(cfg, loc, self.cx.client.ip(), &mut self.cx.links.limited)
        {
            Ok(ms) => ms,
            Err(status) => {
                loc.stats.limited();
                self.answer(r, status, End::Limited, io);
                return Step::Continue;
            }
        };
        let (out, upward) = match self.request_up(&req, &buf, &r, loc, io) {
            Ok(up) => up,
            Err(why) => {
                self.answer(r, 400, End::BadRequest(why), io);
                return Step::Continue;
            }
        };
        // Kept to send again to the next server if this one fails after the request went up
        // (nginx does not resend a non-idempotent request; a body is not kept).
        if let Some(a) = r.attempt.as_deref_mut() {
            let body = req.body != BodyKind::None;
            a.keep_for_resend(&out, &req.method, body, &cfg.upstreams[loc.upstream]);
        }
        self.phase = Phase::Connecting(Exchange {
            req: r,
            upward,
            downward: Downward::Connect(Connect::default()),
        });
        let head = io.put(out);
        // The head goes first: nothing can be queued toward an upstream not yet chosen.
        debug_assert!(self.cx.links.up.flushed());
        self.cx.links.up.push(io, head);
        self.cx.phase_ms = now;
        if delay_ms > 0 {
            // limit_req without nodelay: the request waits its turn (its timer is the
            // connect deadline until then).
            if let Phase::Connecting(x) = &mut self.phase
                && let Some(c) = x.connect()
            {
                c.delayed = true;
            }
            self.cx.phase_ms = now + delay_ms;
            return Step::Continue;
        }
        self.connect_next(io, env)
    }

    /// The record of a request whose head `req` (in `buf`) was routed to `route`, asking to
    /// upgrade to `upgrade` ("" when it may not).
    fn new_req(
        &self,
        req: &http::Request,
        route: Option<&Location>,
        upgrade: &str,
        buf: &[u8],
    ) -> Box<Req> {
        let cfg = &*self.cx.cfg;
        let host = req.host.as_deref().unwrap_or("-");
        let text = super::phase::ReqText::new(&req.method, host, &req.path, upgrade);
        Box::new(Req {
            upgrade: !upgrade.is_empty(),
            keep_alive: req.keep_alive,
            is_head: req.is_head(),
            upstream: route.map_or(0, |l| l.upstream as u16),
            // A tunnel's control: its heartbeats and its filters, only when it has either.
            ctl: route.filter(|_| !upgrade.is_empty()).and_then(|l| {
                let filter = super::filter::for_location(l);
                (l.heartbeat.is_some() || filter.is_some()).then(|| {
                    let mut k = super::phase::Control::new(l.heartbeat.as_ref());
                    k.filter = filter;
                    Box::new(k)
                })
            }),
            attempt: route.map(|l| {
                let u = &cfg.upstreams[l.upstream];
                let input = KeyInput {
                    client: self.cx.client.ip(),
                    uri: &req.path,
                    head: &buf[..req.head_len],
                };
                Box::new(Attempt::new(u, &l.next_upstream, &input))
            }),
            connect_ms: route.map_or(0, |l| ms32(l.connect_timeout)),
            read_ms: route.map_or(0, |l| ms32(l.read_timeout)),
            send_ms: route.map_or(self.cx.listen.header_timeout_ms, |l| ms32(l.send_timeout)),
            body_ms: route.map_or(self.cx.listen.header_timeout_ms, |l| ms32(l.body_timeout)),
            ..Req::new(text, self.cx.phase_ms, buf.len() as u64)
        })
    }

    /// The head of `req` (in `buf`) rewritten for `loc`'s upstream, with what of the body came
    /// with it, and what the client's next bytes are (body, or held); the reason it is a bad
    /// request when it is one.
    fn request_up(
        &self,
        req: &http::Request,
        buf: &[u8],
        r: &Req,
        loc: &Location,
        io: &mut impl Io,
    ) -> Result<(Vec<u8>, Upward), &'static str> {
        let cfg = &*self.cx.cfg;
        let mut out = io.scratch();
        out.reserve(req.head_len + 256);
        let fwd = http::Forwarded {
            upgrade: r.upgrade,
            client_ip: self.cx.client.ip(),
            proto: if self.cx.listen.tls { "https" } else { "http" },
            default_host: &cfg.upstreams[loc.upstream].name,
            keepalive: cfg.upstreams[loc.upstream].keepalive > 0,
        };
        if let Err(HeadError::Invalid(why)) =
            http::rewrite_request(&buf[..req.head_len], &fwd, &mut out)
        {
            io.recycle(out);
            return Err(why);
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

    fn try_response(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        loop {
            let Phase::Proxy(x) = &mut self.phase else {
                return Step::Continue;
            };
            let Downward::Head(buf) = &mut x.downward else {
                return Step::Continue;
            };
            let r = &mut x.req;
            let resp = match http::parse_response(buf, RESPONSE_HEAD_MAX, r.is_head) {
                Ok(None) => return Step::Continue,
                Ok(Some(resp)) => resp,
                Err(HeadError::TooLarge | HeadError::UriTooLong) => {
                    let answer = Step::Respond(502, End::BadResponse("response head too large"));
                    return self.upstream_failed(Failure::Invalid, answer, io);
                }
                Err(HeadError::Invalid(why)) => {
                    return self.upstream_failed(
                        Failure::Invalid,
                        Step::Respond(502, End::BadResponse(why)),
                        io,
                    );
                }
            };
            if (100..200).contains(&resp.status) && resp.status != 101 {
                // 100 Continue and friends: pass on as they are, then read the real head;
                // bounded in number and bytes per request.
                r.interim += 1;
                let head_len = u16::try_from(resp.head_len).unwrap_or(u16::MAX);
                r.interim_bytes = r.interim_bytes.saturating_add(head_len);
                if r.interim > INTERIM_MAX || u32::from(r.interim_bytes) > INTERIM_BYTES_MAX {
                    return Step::Respond(502, End::BadResponse("too many interim responses"));
                }
                r.responded = true;
                let info: Vec<u8> = buf.drain(..resp.head_len).collect();
                let c = io.put(info);
                self.cx.send_to(Side::Down, c, io);
                continue;
            }
            let named = r.attempt.as_ref().and_then(|a| a.names_status(resp.status));
            if let Some(f) = named {
                // A 502/503/504 that next_upstream names: a failure of this server; the next
                // one gets the request if it can, else this answer goes to the client.
                if self.retry_next(f, io) {
                    return Step::Continue;
                }
            } else {
                self.server_answered();
            }
            // (Still proxying, still at the head: neither call above changes the phase.)
            let Phase::Proxy(x) = &mut self.phase else {
                return Step::Continue;
            };
            let (Downward::Head(buf), r) = (&mut x.downward, &mut x.req) else {
                return Step::Continue;
            };
            let buf = std::mem::take(buf);
            r.status = resp.status;
            r.up_keep = resp.keep_alive;
            let mut out = io.scratch();
            out.reserve(resp.head_len + 64);
            if resp.status == 101 {
                return self.upgraded(&resp, buf, out, io, env);
            }
            let mut t = BodyTracker::new(resp.body);
            let keep = r.keep_alive
                && !t.until_close()
                && !self.cx.links.down.eof()
                && !env.draining
                && self.cx.listen.keepalive_timeout_ms > 0
                && self.cx.served.saturating_add(1) < self.cx.listen.keepalive_requests;
            r.keep_alive = keep;
            let conn = if keep {
                ClientConnection::KeepAlive
            } else {
                ClientConnection::Close
            };
            let _ = http::rewrite_response(&buf[..resp.head_len], conn, resp.drop_length, &mut out);
            let rest = &buf[resp.head_len..];
            match t.feed(rest) {
                Ok(n) => out.extend_from_slice(&rest[..n]),
                Err(e) => {
                    io.recycle(out);
                    return Step::Close(End::BadResponse(e.0));
                }
            }
            let done = t.done();
            x.downward = Downward::Body(t);
            r.responded = true;
            let c = io.put(out);
            self.cx.send_to(Side::Down, c, io);
            if done {
                return self.response_done(io, env);
            }
            return Step::Continue;
        }
    }

    /// A 101 to the request: checked (asked for, naming the protocol asked for, the request
    /// whole), passed on, and the exchange becomes a tunnel; the bytes after each head are its
    /// first bytes.
    fn upgraded(
        &mut self,
        resp: &http::Response,
        buf: Vec<u8>,
        mut out: Vec<u8>,
        io: &mut impl Io,
        env: &mut Env<'_>,
    ) -> Step {
        let Phase::Proxy(x) = &mut self.phase else {
            io.recycle(out);
            return Step::Continue;
        };
        let r = &mut x.req;
        if !r.upgrade {
            return Step::Respond(
                502,
                End::BadResponse("101 to a request that did not ask to upgrade"),
            );
        }
        if !resp
            .upgrade
            .as_deref()
            .is_some_and(|v| http::upgrade_matches(v, r.upgrade_proto()))
        {
            return Step::Respond(
                502,
                End::BadResponse("101 without the protocol the client asked for"),
            );
        }
        if !matches!(x.upward, Upward::Hold(_)) {
            return Step::Respond(
                502,
                End::BadResponse("101 before the request body was complete"),
            );
        }
        let _ = http::rewrite_response(
            &buf[..resp.head_len],
            ClientConnection::Upgrade,
            false,
            &mut out,
        );
        out.extend_from_slice(&buf[resp.head_len..]);
        r.tunnel = true;
        r.responded = true;
        io.observe(Observed::TunnelOpened(
            io.now_ms().saturating_sub(r.started_ms),
        ));
        let (req, held) = match self.phase.take() {
            Phase::Proxy(Exchange {
                req,
                upward: Upward::Hold(held),
                ..
            }) => (req, held),
            other => {
                // Checked above: a 101 comes only while the client's bytes are held.
                self.phase = other;
                io.recycle(out);
                return Step::Respond(502, End::BadResponse("101 out of place"));
            }
        };
        // The tunnel's first bytes each way: what the client sent after its request,
        // and what the upstream sent after its 101.
        let mut frames = [FrameTracker::default(); 2];
        frames[0].track(&held);
        frames[1].track(&buf[resp.head_len..]);
        let mut tunnel = Tunnel { req, frames };
        let c = io.put(out);
        self.cx.send_to(Side::Down, c, io);
        // What the client sent after its request is the start of the tunnel.
        if !held.is_empty() {
            let c = io.put(held);
            self.cx.send_to(Side::Up, c, io);
        }
        if env.draining {
            // Shutdown began while this upgrade was on its way: it is told at once.
            tunnel.drain_close(&mut self.cx, io);
        }
        Step::Become(Phase::Tunnel(tunnel))
    }

    /// The response body is complete (or the upstream closed a close-delimited one).
    fn response_done(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        self.log_request(End::Done, io);
        // The upstream connection goes to the keepalive pool when the exchange on it is
        // whole and clean: the request sent whole, the response whole and not ending with
        // the connection, nothing else on it.
        if let Phase::Proxy(x) = &self.phase {
            let u = &self.cx.cfg.upstreams[usize::from(x.req.upstream)];
            let keep = u.keepalive > 0
                && x.req.up_keep
                && !x.req.upgrade
                && matches!(x.upward, Upward::Hold(_))
                && self.cx.links.up.flushed()
                && !self.cx.links.up.eof()
                && self.cx.links.up.at_rest()
                && u32::from(self.cx.links.up.uses()) < u.keepalive_requests
                && !env.draining;
            self.cx.links.up.set_keep(keep);
        }
        self.cx.retire(Side::Up, io);
        let x = match self.phase.take() {
            Phase::Proxy(x) => x,
            other => {
                self.phase = other;
                return Step::Continue;
            }
        };
        // Reuse the client connection only when the request went up whole (the upstream may
        // answer before it has read the body) and nothing else is pending.
        let keep = x.req.keep_alive
            && matches!(x.upward, Upward::Hold(_))
            && self.cx.links.up.flushed()
            && !self.cx.links.down.eof()
            && !env.draining;
        let stash = match x.upward {
            Upward::Hold(stash) if keep => stash,
            _ => {
                self.cx.end.get_or_insert(End::Done);
                return Step::Become(Phase::Respond(Answer {
                    req: x.req,
                    linger: Linger::No,
                }));
            }
        };
        self.cx.served = self.cx.served.saturating_add(1);
        self.phase = Phase::Request { head: stash };
        self.cx.phase_ms = io.now_ms();
        self.try_request(io, env)
    }

    /// The upstream closed (outside a tunnel).
    pub(super) fn upstream_eof(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        let Phase::Proxy(x) = &mut self.phase else {
            return Step::Continue;
        };
        match &x.downward {
            Downward::Body(t) if t.until_close() => {
                x.req.keep_alive = false;
                self.response_done(io, env)
            }
            Downward::Head(v) => {
                let why = if v.is_empty() {
                    "upstream closed without a response"
                } else {
                    "upstream closed inside the response head"
                };
                self.upstream_failed(
                    Failure::Error,
                    Step::Respond(502, End::BadResponse(why)),
                    io,
                )
            }
            Downward::Body(_) => Step::Close(End::UpstreamClosed),
            Downward::Connect(_) => Step::Continue,
        }
    }

    /// Log the request in progress (once).
    fn log_request(&mut self, end: End, io: &mut impl Io) {
        let now = io.now_ms();
        if let Some(line) = self.access_log(end, now) {
            io.log(&line);
        }
        if let Some(r) = self.phase.req_mut() {
            r.logged = true;
        }
    }

    /// The access-log line of the request this session still owes one for, if any: the
    /// worker writes it at the end of the session; kept-alive requests are logged as each
    /// response completes.
    pub fn access_log(&self, end: End, now_ms: u64) -> Option<AccessLog<'_>> {
        let r = self.phase.req().filter(|r| !r.logged)?;
        Some(AccessLog {
            client: self.cx.client,
            method: r.method(),
            host: r.host(),
            path: r.path(),
            upstream: self.peer_addr(),
            status: r.status,
            duration_ms: now_ms.saturating_sub(r.started_ms),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            end,
            tunnel: r.tunnel,
            tls: self.cx.links.down.tls_info(),
        })
    }
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
