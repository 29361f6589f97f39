//! The HTTP/1 protocol of a session: request heads (parsed, routed, rewritten), bodies,
//! response heads, keep-alive, the upgrade to a tunnel, and the access log. It sees plaintext
//! chunks from the transports and hands plaintext chunks back; it returns a [`Next`] instead
//! of acting on errors itself.

use super::Phase;
use super::Session;
use super::answer::Answer;
use super::phase::Linger;
use super::phase::{Downward, Exchange, Upward};
use super::request::Request;
use super::tunnel::Tunnel;
use super::{
    AccessLog, End, Env, INTERIM_BYTES_MAX, INTERIM_MAX, Io, Observed, RESPONSE_HEAD_MAX, Step,
};
use crate::config::upstream::Failure;
use crate::http::{self, BodyTracker, ClientConnection, HeadError};
use crate::uring::{Chunk, Side};
use crate::ws::FrameTracker;

impl Session {
    /// Plaintext from the client.
    pub(super) fn on_client_bytes(&mut self, c: Chunk, io: &mut impl Io) -> Step {
        match &mut self.phase {
            Phase::Exchange(x) => match &mut x.upward {
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
            Phase::Request(_)
            | Phase::Respond { .. }
            | Phase::Closing(_)
            | Phase::Tunnel(_)
            | Phase::Other(_) => {
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
            Phase::Exchange(x) => match &mut x.downward {
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

    fn try_response(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        loop {
            let Phase::Exchange(x) = &mut self.phase else {
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
            let Phase::Exchange(x) = &mut self.phase else {
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
        let Phase::Exchange(x) = &mut self.phase else {
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
            Phase::Exchange(Exchange {
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
        if let Phase::Exchange(x) = &self.phase {
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
            Phase::Exchange(x) => x,
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
        self.cx.phase_ms = io.now_ms();
        // What the client pipelined may be the next request, whole (`Request::start`).
        Step::Become(Phase::Request(Request { head: stash }))
    }

    /// The upstream closed (outside a tunnel).
    pub(super) fn upstream_eof(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        let Phase::Exchange(x) = &mut self.phase else {
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
