//! The upstream side of an HTTP/1 exchange: connecting (or taking an idle connection from
//! the keepalive pool), the connect's completion, and a server's failure — marked, and the
//! request tried again on the next server as `next_upstream` allows (`upstream::attempt`
//! chooses), or answered with 502 / 504.

use super::Side;
use super::phase::{Connect, Downward, Exchange, Req};
use super::{Cx, End, Env, Io, Observed, Step};
use crate::config::clock_ms;
use crate::config::upstream::Failure;
use crate::upstream::attempt::{self, Attempt, GaveUp};
use crate::uring::ConnId;
use crate::uring::timer::Stamp;

impl Exchange {
    /// The upstream connect completed (`res`: 0, or an errno negated).
    pub(super) fn on_connect<I: Io + ?Sized>(&mut self, cx: &mut Cx, res: i32, io: &mut I) -> Step {
        if !self.connecting() {
            return Step::Continue;
        }
        let timed_out = self.connect_timed_out();
        if res == 0 && !timed_out {
            let now = io.now_ms();
            io.observe(Observed::Connected(now.saturating_sub(cx.phase_ms.at(now))));
            self.upstream_ready(cx, io);
            return Step::Continue;
        }
        let why = if timed_out {
            "connect timeout".to_string()
        } else {
            crate::sys::errno_name(-res)
        };
        let peer = peer_of(cx, &self.req).map(|p| p.addr);
        tracing::warn!(target: "upstream", "connect to {} failed: {why}", peer.map_or("-".into(), |p| p.to_string()));
        let kind = if timed_out {
            Failure::Timeout
        } else {
            Failure::Error
        };
        if self.server_failed(cx, kind) {
            // Close it through retire/close_when_done (after any cancel aimed at it is
            // back), then the next server is tried (`settle`), keeping the queued request.
            if let Some(c) = self.connect() {
                *c = Connect {
                    waiting: true,
                    ..Connect::default()
                };
            }
            cx.retire(Side::Up, io);
            Step::Continue
        } else if timed_out {
            Step::Respond(504, End::UpstreamTimeout)
        } else {
            Step::Respond(502, End::UpstreamError(-res))
        }
    }

    /// The upstream connection is open (connected, or taken from the keepalive pool): the
    /// request goes up, the response head is awaited.
    fn upstream_ready<I: Io + ?Sized>(&mut self, cx: &mut Cx, io: &mut I) {
        cx.links.up.mark_ready();
        if self.connecting() {
            self.downward = Downward::Head(Vec::new());
        }
        cx.last_up_ms = Stamp::new(io.now_ms());
        cx.links.up.kick(io, ConnId::UPSTREAM);
    }

    /// Pick the next server not yet tried and start connecting; 502 when none is left.
    pub(super) fn connect_next<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        let Some(c) = self.connect() else {
            return Step::Continue;
        };
        if cx.links.up.fd() >= 0 {
            // The previous request's upstream socket is still closing.
            c.waiting = true;
            return Step::Continue;
        }
        c.waiting = false;
        let resend = std::mem::take(&mut c.resend);
        let started_ms = self.req.started_ms;
        let ui = usize::from(self.req.upstream);
        let u = &cx.cfg.upstreams[ui];
        let Some(a) = self.terms.attempt.as_mut() else {
            return Step::Respond(502, End::NoUpstream);
        };
        let gave_up = |a: &Attempt| match a.gave_up() {
            GaveUp::Timeout => Step::Respond(504, End::UpstreamTimeout),
            GaveUp::NoUpstream => Step::Respond(502, End::NoUpstream),
        };
        // A request that failed on a server goes to the next only within next_upstream's
        // tries and time.
        if a.spent(started_ms, io.now_ms()) {
            return gave_up(a);
        }
        let kit = &mut **env;
        let rr = &mut kit.balancers.of(&cx.cfg)[ui];
        loop {
            let Some(i) = a.pick(rr, u, cx.client.ip(), clock_ms()) else {
                if a.count() == 0 {
                    tracing::warn!(target: "upstream", "no live server in upstream {:?}", u.name);
                }
                return gave_up(a);
            };
            self.req.peer = i as u16;
            if u.keepalive > 0
                && let Some(kept) = kit.pool.take(&u.name, u.peers[i].addr, io.now_ms())
            {
                // An idle connection to this server: the request goes up on it at once (the
                // head again, after a server failed once it had it).
                cx.links.up.adopt(io, kept.conn);
                a.set_cached(true);
                push_copy(
                    &mut cx.links.up,
                    resend.then(|| a.resend_head()).flatten(),
                    io,
                );
                let uses = u16::try_from(kept.served + 1).unwrap_or(u16::MAX);
                cx.links.up.set_uses(uses);
                cx.count_peer(ui, i);
                self.upstream_ready(cx, io);
                return Step::Continue;
            }
            a.set_cached(false);
            let source = rr.next_source(u);
            let addr = u.peers[i].addr;
            let fd = match io.connect(addr, source, ConnId::UPSTREAM) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(target: "upstream", "socket for {addr} failed: {}", crate::sys::errno_name(e));
                    continue;
                }
            };
            let tls = u
                .tls
                .as_ref()
                .map(|t| (t.config.clone(), t.name_for(addr.ip())));
            // proxy_protocol = "v2": the client and what it connected to, first.
            let preface = u.proxy_protocol.then(|| {
                let dst = crate::sys::local_of(cx.links.down.fd()).unwrap_or(cx.client.addr());
                crate::http::proxy::v2_header(cx.client.addr(), dst)
            });
            let r = cx.links.up.reset_fd(io, fd, tls, preface);
            push_copy(
                &mut cx.links.up,
                resend.then(|| a.resend_head()).flatten(),
                io,
            );
            cx.links.up.connect_started();
            cx.links.up.set_uses(1);
            cx.count_peer(ui, i);
            cx.phase_ms = Stamp::new(io.now_ms());
            return match r {
                Ok(()) => Step::Continue,
                // The socket (its connect in flight) closes through the answer's retire.
                Err(e) => {
                    tracing::warn!(target: "upstream", "TLS toward {addr} failed: {e}");
                    Step::Respond(502, End::UpstreamTls(super::end::tls_reason(&e)))
                }
            };
        }
    }

    /// The server in use failed before its answer reached the client: count it against the
    /// server, and say whether the location lets the request go on to the next server.
    fn server_failed(&mut self, cx: &Cx, kind: Failure) -> bool {
        let retry = self.terms.attempt.as_mut().is_some_and(|a| a.failed(kind));
        if let Some(p) = peer_of(cx, &self.req) {
            attempt::count_failure(p, clock_ms());
        }
        retry
    }

    /// The server in use failed after the request went up, before anything of its answer
    /// reached the client: counted against it; the request goes to the next server when the
    /// location allows it and it can be sent again (then `Continue`), else `answer`.
    pub(super) fn upstream_failed<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        kind: Failure,
        answer: Step,
        io: &mut I,
    ) -> Step {
        if self.retry_next(cx, kind, io) {
            Step::Continue
        } else {
            answer
        }
    }

    /// See [`Exchange::upstream_failed`]; true when the request goes to the next server.
    pub(super) fn retry_next<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        kind: Failure,
        io: &mut I,
    ) -> bool {
        // A kept connection the server closed (or reset) before answering: not the server's
        // failure (the attempt undoes its pick); the request goes again.
        let pooled = !self.connecting() && {
            let peer = usize::from(self.req.peer);
            self.terms
                .attempt
                .as_mut()
                .is_some_and(|a| a.pool_failed(peer, kind))
        };
        let retry = pooled || self.server_failed(cx, kind);
        if self.connecting() {
            return false;
        }
        let resend = self
            .terms
            .attempt
            .as_ref()
            .is_some_and(|a| a.resend_head().is_some());
        if !retry || !resend || self.req.responded {
            return false;
        }
        self.downward = Downward::Connect(Connect {
            waiting: true,
            resend: true,
            ..Connect::default()
        });
        cx.phase_ms = Stamp::new(io.now_ms());
        // The socket closes (after what is in flight on it is back), then connect_next.
        cx.retire(Side::Up, io);
        true
    }

    /// The server in use answered: what failures it had are forgotten, and the request will
    /// not go to another server.
    pub(super) fn server_answered(&mut self, cx: &Cx) {
        self.terms.attempt = None;
        if let Some(p) = peer_of(cx, &self.req) {
            attempt::count_success(p);
        }
    }
}

/// The server request `r` went to, if one was chosen.
pub(super) fn peer_of<'a>(cx: &'a Cx, r: &Req) -> Option<&'a crate::config::Peer> {
    cx.cfg
        .upstreams
        .get(usize::from(r.upstream))?
        .peers
        .get(usize::from(r.peer))
}

/// Queue a copy of `head` (the request head kept to send again), if any, on `up`.
fn push_copy<I: Io + ?Sized>(up: &mut super::Transport, head: Option<&[u8]>, io: &mut I) {
    if let Some(head) = head {
        let mut v = io.scratch();
        v.extend_from_slice(head);
        let c = io.put(v);
        up.push(io, c);
    }
}
