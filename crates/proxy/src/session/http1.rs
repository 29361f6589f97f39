//! The HTTP/1 exchange, a protocol type: from a routed request to the end of its response —
//! the request body going up, the response head (interim responses passed on), its body
//! coming down, keep-alive, the upgrade to a tunnel, and the access log. The upstream side
//! (connecting, a server's failure, retries) is in `connect.rs`. It sees plaintext chunks
//! from the transports and hands plaintext chunks back; what it decides is a [`Step`].

use super::Phase;
use super::Side;
use super::answer::Answer;
use super::phase::{Downward, Exchange, Linger, Req, ReqText, Terms, Upward};
use super::protocol::Protocol;
use super::request::Request;
use super::tunnel::Tunnel;
use super::{
    AccessLog, Cx, End, Env, INTERIM_BYTES_MAX, INTERIM_MAX, Io, Observed, RESPONSE_HEAD_MAX, Recv,
    Step,
};
use crate::config::upstream::Failure;
use crate::http::{self, BodyTracker, ClientConnection, HeadError};
use crate::uring::timer::Stamp;
use crate::uring::{Chunk, ConnId};
use crate::ws::FrameTracker;

impl Protocol for Exchange {
    fn name(&self) -> &'static str {
        "http1"
    }

    fn bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: ConnId,
        c: Chunk,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        match Side::of(from) {
            Side::Down => self.client_bytes(cx, c, io),
            Side::Up => self.upstream_bytes(cx, c, io, env),
        }
    }

    /// A head cut short, or nothing more can be delivered to a client that has gone: the
    /// upstream side ends now (nginx's `proxy_ignore_client_abort off`), whether it is still
    /// connecting, waiting for the head or relaying a body.
    fn eof<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, io: &mut I) -> Step {
        match Side::of(from) {
            Side::Down => Step::Close(End::ClientClosed),
            Side::Up => self.upstream_eof(cx, io),
        }
    }

    /// An upstream that fails before its answer is whole is a failed server (the request may
    /// go to the next one); anything else ends the session.
    fn error<I: Io + ?Sized>(&mut self, cx: &mut Cx, from: ConnId, end: End, io: &mut I) -> Step {
        if Side::of(from) == Side::Up
            && (self.awaiting_head() || matches!(end, End::UpstreamTls(_)))
        {
            self.upstream_failed(cx, Failure::Error, Step::Respond(502, end), io)
        } else {
            Step::Close(end)
        }
    }

    fn connected<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        _id: ConnId,
        res: i32,
        io: &mut I,
        _env: &mut Env<'_>,
    ) -> Step {
        self.on_connect(cx, res, io)
    }

    /// The request body stopped arriving (408), limit_req's delay is over (connect now), the
    /// connect took too long (cancelled: its completion tries the next server), or the
    /// upstream is silent past `read_timeout` (504 before the head, else the end).
    fn timer<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        now: u64,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        if self.body_deadline(cx, now).is_some_and(|b| b <= now) {
            return Step::Respond(408, End::BodyTimeout);
        }
        if let Some(c) = self.connect() {
            if c.delayed {
                c.delayed = false;
                cx.phase_ms = Stamp::new(now);
                return self.connect_next(cx, io, env);
            }
            c.timed_out = true;
            cx.links.cancel_connect(Side::Up, io);
            return Step::Continue;
        }
        if self.awaiting_head() {
            return self.upstream_failed(
                cx,
                Failure::Timeout,
                Step::Respond(504, End::UpstreamTimeout),
                io,
            );
        }
        Step::Close(End::IdleTimeout)
    }

    fn deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        let ms = u64::from;
        let phase = match self.downward {
            Downward::Connect(c) if c.delayed => Some(cx.phase_ms.at(now)),
            Downward::Connect(c) if !c.timed_out => {
                Some(cx.phase_ms.at(now) + ms(self.terms.connect_ms))
            }
            Downward::Connect(_) => None,
            _ => Some(cx.last_up_ms.at(now) + ms(self.req.read_ms)),
        };
        match self.body_deadline(cx, now) {
            Some(b) => Some(phase.map_or(b, |p| p.min(b))),
            None => phase,
        }
    }

    fn wants(&self, cx: &Cx, id: ConnId, room: bool) -> bool {
        match Side::of(id) {
            Side::Down => match &self.terms.upward {
                Upward::Body(_) => room,
                Upward::Hold(stash) => stash.len() < cx.listen().header_max as usize,
            },
            Side::Up => match self.downward {
                Downward::Head(_) => true,
                Downward::Body(_) => room,
                _ => false,
            },
        }
    }

    /// The body clock runs only while the body is read: it restarts when reading resumes.
    fn resumed(&mut self, cx: &mut Cx, id: ConnId, now: u64) {
        if id == ConnId::CLIENT && matches!(self.terms.upward, Upward::Body(_)) {
            cx.last_down_ms = Stamp::new(now);
        }
    }

    fn watches_client(&self) -> bool {
        true
    }

    /// The request waits (in the upstream's queue) for the next socket — for the previous one
    /// to close, or for limit_req's delay to pass; not when it is sent again from `resend`.
    fn keeps_queue(&self) -> bool {
        matches!(self.downward, Downward::Connect(c) if (c.waiting || c.delayed) && !c.resend)
    }

    /// A connect that waited for the previous upstream socket to close starts once it has.
    fn settle<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        if self.connect_waiting() && cx.links.up.fd() < 0 {
            self.connect_next(cx, io, env)
        } else {
            Step::Continue
        }
    }

    /// Upgraded: the request becomes a tunnel, whose first bytes each way are what the client
    /// sent after its request and what the upstream sent after its 101. A whole response: the
    /// next request (what the client pipelined may be it), or the end of the connection.
    fn finish<I: Io + ?Sized>(self, cx: &mut Cx, io: &mut I) -> Phase {
        let Exchange {
            req,
            terms,
            downward,
        } = self;
        let Terms {
            upward, ctl, loc, ..
        } = *terms;
        let held = match upward {
            Upward::Hold(held) => held,
            Upward::Body(_) => Vec::new(),
        };
        match downward {
            Downward::Upgraded(rest) => {
                // The tunnel keeps the record in itself: no allocation of its own for as
                // long as it lives.
                let mut req = req;
                // Without an access log the request's text is never read again: a tunnel
                // does not keep it.
                if !cx.cfg.runtime.access_log {
                    req.text = ReqText::none();
                }
                let mut tunnel = Tunnel {
                    req,
                    ctl,
                    frames: [FrameTracker::default(); 2],
                    loc,
                    msgs: [0; 2],
                };
                tunnel.first_bytes(cx, [&held, &rest], io);
                if !held.is_empty() {
                    let c = io.put(held);
                    cx.send_to(Side::Up, c, io);
                }
                Phase::Tunnel(tunnel)
            }
            Downward::Over { again: true } => {
                cx.served = cx.served.saturating_add(1);
                cx.phase_ms = Stamp::new(io.now_ms());
                Phase::Request(Request {
                    head: held,
                    granted: None,
                })
            }
            Downward::Authorized(allowed) => {
                // The client's head again, with what it sent meanwhile, allowed.
                let (mut head, granted) = *allowed;
                head.extend_from_slice(&held);
                Phase::Request(Request {
                    head,
                    granted: Some(Box::new(granted)),
                })
            }
            _ => {
                cx.end_with(End::Done);
                Phase::Respond(Answer {
                    req,
                    linger: Linger::No,
                })
            }
        }
    }
}

impl Exchange {
    /// Plaintext from the client: the request body, then what follows it, held.
    fn client_bytes<I: Io + ?Sized>(&mut self, cx: &mut Cx, c: Chunk, io: &mut I) -> Step {
        match &mut self.terms.upward {
            Upward::Body(t) => match t.feed(io.data_of(c)) {
                Ok(n) => {
                    if t.done() {
                        self.terms.upward = Upward::Hold(io.data_of(c)[n..].to_vec());
                    }
                    self.forward_prefix(cx, Side::Down, c, n, io);
                    Step::Continue
                }
                Err(e) => {
                    io.release(c);
                    Step::Respond(400, End::BadRequest(e.0))
                }
            },
            Upward::Hold(stash) => {
                // Never dropped: `wants` stops reading at the bound, so at most what the recv
                // already armed may bring (QUEUE buffers) lands past it.
                stash.extend_from_slice(io.data_of(c));
                io.release(c);
                Step::Continue
            }
        }
    }

    /// Plaintext from the upstream: the response head, then its body.
    fn upstream_bytes<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        c: Chunk,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        match &mut self.downward {
            Downward::Head(v) => {
                v.extend_from_slice(io.data_of(c));
                io.release(c);
                self.try_response(cx, io, env)
            }
            Downward::Body(t) => match t.feed(io.data_of(c)) {
                Ok(n) => {
                    let done = t.done();
                    self.forward_prefix(cx, Side::Up, c, n, io);
                    if done {
                        return self.response_done(cx, io, env.draining);
                    }
                    Step::Continue
                }
                Err(e) => {
                    io.release(c);
                    Step::Close(End::BadResponse(e.0))
                }
            },
            _ => {
                io.release(c);
                Step::Continue
            }
        }
    }

    /// Forward the first `n` bytes of `c` (the part that belongs to the current message), or
    /// give the buffer back when none does.
    fn forward_prefix<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        from: Side,
        c: Chunk,
        n: usize,
        io: &mut I,
    ) {
        if n == 0 {
            io.release(c);
            return;
        }
        let c = Chunk { len: n as u32, ..c };
        let to = from.peer();
        // Toward an upstream still being connected (or reconnected), bytes wait in the queue.
        let connecting = to == Side::Up && self.connecting();
        if !connecting && !cx.links.get(to).open() {
            io.release(c);
            return;
        }
        if to == Side::Down {
            self.req.responded = true;
        }
        cx.send_to(to, c, io);
    }

    /// The response head gathered so far: parse it (interim responses passed on), and act on
    /// the final one.
    fn try_response<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, env: &mut Env<'_>) -> Step {
        loop {
            let Downward::Head(head) = &mut self.downward else {
                return Step::Continue;
            };
            // Parsed out of the phase (its headers, as parsed, go on to the rewrite); put back
            // for anything but the final head.
            let mut buf = std::mem::take(head);
            let mut headers = http::Headers::new();
            let parsed =
                http::parse_response_in(&buf, RESPONSE_HEAD_MAX, self.req.is_head(), &mut headers);
            let (resp, lines) = match parsed {
                Ok(Some(r)) => r,
                other => {
                    let why = match other {
                        Ok(_) => None,
                        Err(HeadError::TooLarge | HeadError::UriTooLong) => {
                            Some("response head too large")
                        }
                        Err(HeadError::Invalid(why)) => Some(why),
                    };
                    self.downward = Downward::Head(buf);
                    let Some(why) = why else {
                        return Step::Continue;
                    };
                    let answer = Step::Respond(502, End::BadResponse(why));
                    return self.upstream_failed(cx, Failure::Invalid, answer, io);
                }
            };
            let t = &mut self.terms;
            if (100..200).contains(&resp.status) && resp.status != 101 {
                // 100 Continue and friends: pass on as they are, then read the real head;
                // bounded in number and bytes per request.
                t.interim += 1;
                let head_len = u16::try_from(resp.head_len).unwrap_or(u16::MAX);
                t.interim_bytes = t.interim_bytes.saturating_add(head_len);
                if t.interim > INTERIM_MAX || u32::from(t.interim_bytes) > INTERIM_BYTES_MAX {
                    self.downward = Downward::Head(buf);
                    return Step::Respond(502, End::BadResponse("too many interim responses"));
                }
                let info: Vec<u8> = buf.drain(..resp.head_len).collect();
                self.downward = Downward::Head(buf);
                if t.auth.is_some() {
                    // An auth service's interim answer is its own business: not the client's.
                    continue;
                }
                self.req.responded = true;
                let c = io.put(info);
                cx.send_to(Side::Down, c, io);
                continue;
            }
            let named = t.attempt.as_ref().and_then(|a| a.names_status(resp.status));
            if let Some(f) = named {
                // A 502/503/504 that next_upstream names: a failure of this server; the next
                // one gets the request if it can, else this answer goes to the client.
                if self.retry_next(cx, f, io) {
                    return Step::Continue;
                }
            } else {
                self.server_answered(cx);
            }
            if self.terms.auth.is_some() {
                // The auth answer reads its head from the phase.
                self.downward = Downward::Head(buf);
                return self.auth_answer(cx, &resp, io, env);
            }
            return self.final_head(cx, &resp, &lines, &buf, io, env);
        }
    }

    /// The final response head, parsed (`lines`, in `buf`): passed on rewritten (or the
    /// exchange upgrades), its body to follow.
    fn final_head<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        resp: &http::Response,
        lines: &http::ResponseLines<'_, '_>,
        buf: &[u8],
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        self.terms.up_keep = resp.keep_alive;
        let mut out = io.scratch();
        out.reserve(resp.head_len + 64);
        if resp.status == 101 {
            return self.upgraded(cx, resp, lines, buf, out, io);
        }
        self.req.status = resp.status;
        let mut t = BodyTracker::new(resp.body);
        let keep = self.terms.keep_alive
            && !t.until_close()
            && !cx.links.down.eof()
            && !env.draining
            && cx.listen().keepalive_timeout_ms > 0
            && cx.served.saturating_add(1) < cx.listen().keepalive_requests;
        self.terms.keep_alive = keep;
        let conn = if keep {
            ClientConnection::KeepAlive
        } else {
            ClientConnection::Close
        };
        http::rewrite_response_parsed(lines, conn, resp.drop_length, &mut out);
        let rest = &buf[resp.head_len..];
        match t.feed(rest) {
            Ok(n) => out.extend_from_slice(&rest[..n]),
            Err(e) => {
                io.recycle(out);
                return Step::Close(End::BadResponse(e.0));
            }
        }
        let done = t.done();
        self.downward = Downward::Body(t);
        self.req.responded = true;
        let c = io.put(out);
        cx.send_to(Side::Down, c, io);
        if done {
            return self.response_done(cx, io, env.draining);
        }
        Step::Continue
    }

    /// A 101 to the request: checked (asked for, naming the protocol asked for, the request
    /// whole) and passed on; the exchange then finishes into a tunnel.
    fn upgraded<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        resp: &http::Response,
        lines: &http::ResponseLines<'_, '_>,
        buf: &[u8],
        mut out: Vec<u8>,
        io: &mut I,
    ) -> Step {
        let r = &mut self.req;
        let why = if !r.upgrading() {
            Some("101 to a request that did not ask to upgrade")
        } else if !resp
            .upgrade
            .as_deref()
            .is_some_and(|v| http::upgrade_matches(v, r.upgrade_proto()))
        {
            Some("101 without the protocol the client asked for")
        } else if !matches!(self.terms.upward, Upward::Hold(_)) {
            Some("101 before the request body was complete")
        } else {
            None
        };
        if let Some(why) = why {
            io.recycle(out);
            return Step::Respond(502, End::BadResponse(why));
        }
        http::rewrite_response_parsed(lines, ClientConnection::Upgrade, false, &mut out);
        out.extend_from_slice(&buf[resp.head_len..]);
        // Status 101 says the request is a tunnel: it is set only once the 101 passed.
        r.status = 101;
        r.responded = true;
        io.observe(Observed::TunnelOpened(
            io.now_ms().saturating_sub(r.started_ms),
        ));
        let rt = &cx.cfg.runtime;
        if rt.access_log && rt.access_log_open {
            // A tunnel that lives for days is in the log the day it opens.
            if let Some(line) = access_line(cx, r, None, End::Done, io.now_ms()) {
                io.log_open(&line);
            }
        }
        let c = io.put(out);
        cx.send_to(Side::Down, c, io);
        // What the upstream sent after its 101 went with it; the tunnel's tracker starts on it.
        self.downward = Downward::Upgraded(buf[resp.head_len..].into());
        Step::Finish
    }

    /// The response body is complete (or the upstream closed a close-delimited one).
    fn response_done<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I, draining: bool) -> Step {
        self.log_request(cx, End::Done, io);
        // The upstream connection goes to the keepalive pool when the exchange on it is
        // whole and clean: the request sent whole, the response whole and not ending with
        // the connection, nothing else on it.
        let whole = matches!(self.terms.upward, Upward::Hold(_));
        let (up, r, t) = (&cx.links.up, &self.req, &self.terms);
        let u = &cx.cfg.upstreams[usize::from(r.upstream)];
        let pool = u.keepalive > 0
            && t.up_keep
            && !r.upgrading()
            && whole
            && up.flushed()
            && !up.eof()
            && up.at_rest()
            && u32::from(up.uses()) < u.keepalive_requests
            && !draining;
        cx.links.up.set_keep(pool);
        cx.retire(Side::Up, io);
        // Reuse the client connection only when the request went up whole (the upstream may
        // answer before it has read the body) and nothing else is pending.
        let again =
            t.keep_alive && whole && cx.links.up.flushed() && !cx.links.down.eof() && !draining;
        self.downward = Downward::Over { again };
        Step::Finish
    }

    /// The upstream closed.
    fn upstream_eof<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) -> Step {
        match &self.downward {
            Downward::Body(t) if t.until_close() => {
                self.terms.keep_alive = false;
                // Neither connection is kept, draining or not.
                self.response_done(cx, io, false)
            }
            Downward::Head(v) => {
                let why = if v.is_empty() {
                    "upstream closed without a response"
                } else {
                    "upstream closed inside the response head"
                };
                self.upstream_failed(
                    cx,
                    Failure::Error,
                    Step::Respond(502, End::BadResponse(why)),
                    io,
                )
            }
            Downward::Body(_) => Step::Close(End::UpstreamClosed),
            _ => Step::Continue,
        }
    }

    /// When a request body that stopped arriving gets its 408: only while the proxy is
    /// reading it (a body held back because the upstream is slow is not the client's fault).
    fn body_deadline(&self, cx: &Cx, now: u64) -> Option<u64> {
        let reading =
            matches!(self.terms.upward, Upward::Body(_)) && cx.links.down.recv_state() == Recv::On;
        reading.then(|| cx.last_down_ms.at(now) + u64::from(self.terms.body_ms))
    }

    /// Log the request in progress (once).
    fn log_request<I: Io + ?Sized>(&mut self, cx: &Cx, end: End, io: &mut I) {
        let now = io.now_ms();
        if let Some(line) = access_line(cx, &self.req, None, end, now) {
            io.log(&line);
        }
        self.req.logged = true;
    }
}

/// The access-log line of request `r`, if it still owes one (a tunnel's with what it `seen`).
pub(super) fn access_line<'a>(
    cx: &'a Cx,
    r: &'a Req,
    seen: Option<&'a super::tunnel::Seen>,
    end: End,
    now_ms: u64,
) -> Option<AccessLog<'a>> {
    if r.logged {
        return None;
    }
    Some(AccessLog {
        client: cx.client.addr(),
        method: r.method(),
        host: r.host(),
        path: r.path(),
        upstream: super::connect::peer_of(cx, r).map(|p| p.addr),
        status: r.status,
        duration_ms: now_ms.saturating_sub(r.started_ms),
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        end,
        tunnel: r.tunnel(),
        h2: cx.role == super::cx::Role::Stream,
        tls: cx.links.down.tls_info(),
        messages: seen.map(super::end::TunnelLog),
        write: cx.cfg.runtime.access_log,
    })
}
