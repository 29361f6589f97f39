//! The upstream side of an HTTP/1 exchange: connecting (or taking an idle connection from
//! the keepalive pool), the connect's completion, and a server's failure — marked, and the
//! request tried again on the next server as `next_upstream` allows (`upstream::attempt`
//! chooses), or answered with 502 / 504.

use std::net::SocketAddr;

use super::Phase;
use super::phase::{self, Connect, Downward};
use super::{End, Env, Io, Next, Observed, Session, Step};
use crate::config::clock_ms;
use crate::config::upstream::Failure;
use crate::upstream::attempt::{self, Attempt, GaveUp};
use crate::uring::Side;

impl Session {
    /// The upstream connect completed.
    pub fn on_connect(&mut self, res: i32, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        self.cx.links.up.connect_done();
        if self.cx.links.up.retiring() {
            return self.after(io, env);
        }
        let Phase::Exchange(x) = &mut self.phase else {
            return self.after(io, env);
        };
        if !x.connecting() {
            return self.after(io, env);
        }
        if res == 0 && !x.connect_timed_out() {
            io.observe(Observed::Connected(
                io.now_ms().saturating_sub(self.cx.phase_ms),
            ));
            self.upstream_ready(io);
        } else {
            let timed_out = x.connect_timed_out();
            let why = if timed_out {
                "connect timeout".to_string()
            } else {
                crate::sys::errno_name(-res)
            };
            let peer = self.peer_addr();
            tracing::warn!(target: "upstream", "connect to {} failed: {why}", peer.map_or("-".into(), |p| p.to_string()));
            let kind = if timed_out {
                Failure::Timeout
            } else {
                Failure::Error
            };
            if self.server_failed(kind) {
                // Close it through retire/close_when_done (after any cancel aimed at it is
                // back), then the next server is tried, keeping the queued request.
                if let Phase::Exchange(x) = &mut self.phase
                    && let Some(c) = x.connect()
                {
                    *c = phase::Connect {
                        timed_out: false,
                        waiting: true,
                        resend: false,
                        delayed: false,
                    };
                }
                self.cx.retire(Side::Up, io);
            } else if timed_out {
                self.apply(Step::Respond(504, End::UpstreamTimeout), io);
            } else {
                self.apply(Step::Respond(502, End::UpstreamError(-res)), io);
            }
        }
        self.after(io, env)
    }

    /// The upstream connection is open (connected, or taken from the keepalive pool): the
    /// request goes up, the response head is awaited.
    fn upstream_ready(&mut self, io: &mut impl Io) {
        self.cx.links.up.mark_ready();
        if let Phase::Exchange(x) = &mut self.phase
            && x.connecting()
        {
            x.downward = Downward::Head(Vec::new());
        }
        self.cx.last_up_ms = io.now_ms();
        self.cx.links.up.kick(io, Side::Up);
    }

    /// Pick the next server not yet tried and start connecting; 502 when none is left.
    pub(super) fn connect_next(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        let Phase::Exchange(x) = &mut self.phase else {
            return Step::Continue;
        };
        if !x.connecting() {
            return Step::Continue;
        }
        if self.cx.links.up.fd() >= 0 {
            // The previous request's upstream socket is still closing.
            if let Some(c) = x.connect() {
                c.waiting = true;
            }
            return Step::Continue;
        }
        let resend = x.connect().is_some_and(|c| {
            c.waiting = false;
            std::mem::take(&mut c.resend)
        });
        let started_ms = x.req.started_ms;
        let ui = usize::from(x.req.upstream);
        let u = &self.cx.cfg.upstreams[ui];
        let Some(a) = x.req.attempt.as_deref_mut() else {
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
        let rr = &mut env.balancers.of(&self.cx.cfg)[ui];
        loop {
            let Some(i) = a.pick(rr, u, self.cx.client.ip(), clock_ms()) else {
                if a.count() == 0 {
                    tracing::warn!(target: "upstream", "no live server in upstream {:?}", u.name);
                }
                return gave_up(a);
            };
            x.req.peer = i as u16;
            if u.keepalive > 0
                && let Some(kept) = env.pool.take(&u.name, u.peers[i].addr, io.now_ms())
            {
                // An idle connection to this server: the request goes up on it at once (the
                // head again, after a server failed once it had it).
                self.cx.links.up.adopt(io, kept.conn);
                a.set_cached(true);
                push_copy(
                    &mut self.cx.links.up,
                    resend.then(|| a.resend_head()).flatten(),
                    io,
                );
                self.cx
                    .links
                    .up
                    .set_uses(u16::try_from(kept.served + 1).unwrap_or(u16::MAX));
                self.cx.count_peer(ui, i);
                self.upstream_ready(io);
                return Step::Continue;
            }
            a.set_cached(false);
            let source = rr.next_source(u);
            match io.connect(u.peers[i].addr, source) {
                Ok(fd) => {
                    let tls = u
                        .tls
                        .as_ref()
                        .map(|t| (t.config.clone(), t.name_for(u.peers[i].addr.ip())));
                    let addr = u.peers[i].addr;
                    // proxy_protocol = "v2": the client and what it connected to, first.
                    let preface = u.proxy_protocol.then(|| {
                        let dst =
                            crate::sys::local_of(self.cx.links.down.fd()).unwrap_or(self.cx.client);
                        crate::http::proxy::v2_header(self.cx.client, dst)
                    });
                    let r = self.cx.links.up.reset_fd(io, fd, tls, preface);
                    push_copy(
                        &mut self.cx.links.up,
                        resend.then(|| a.resend_head()).flatten(),
                        io,
                    );
                    self.cx.links.up.connect_started();
                    self.cx.links.up.set_uses(1);
                    self.cx.count_peer(ui, i);
                    self.cx.phase_ms = io.now_ms();
                    return match r {
                        Ok(()) => Step::Continue,
                        // The socket (its connect in flight) closes through the answer's retire.
                        Err(e) => {
                            tracing::warn!(target: "upstream", "TLS toward {addr} failed: {e}");
                            Step::Respond(502, End::UpstreamTls(super::end::tls_reason(&e)))
                        }
                    };
                }
                Err(e) => {
                    tracing::warn!(target: "upstream", "socket for {} failed: {}", u.peers[i].addr, crate::sys::errno_name(e));
                }
            }
        }
    }

    /// The server in use failed before its answer reached the client: count it against the
    /// server, and say whether the location lets the request go on to the next server.
    pub(super) fn server_failed(&mut self, kind: Failure) -> bool {
        let Some(r) = self.phase.req_mut() else {
            return false;
        };
        let retry = r.attempt.as_deref_mut().is_some_and(|a| a.failed(kind));
        if let Some(p) = self.peer() {
            attempt::count_failure(p, clock_ms());
        }
        retry
    }

    /// The server in use failed after the request went up, before anything of its answer
    /// reached the client: counted against it; the request goes to the next server when the
    /// location allows it and it can be sent again (then `Continue`), else `answer`.
    pub(super) fn upstream_failed(
        &mut self,
        kind: Failure,
        answer: Step,
        io: &mut impl Io,
    ) -> Step {
        if self.retry_next(kind, io) {
            Step::Continue
        } else {
            answer
        }
    }

    /// See [`Session::upstream_failed`]; true when the request goes to the next server.
    pub(super) fn retry_next(&mut self, kind: Failure, io: &mut impl Io) -> bool {
        // A kept connection the server closed (or reset) before answering: not the server's
        // failure (the attempt undoes its pick); the request goes again.
        let pooled = match &mut self.phase {
            Phase::Exchange(x) if !x.connecting() => {
                let peer = usize::from(x.req.peer);
                x.req
                    .attempt
                    .as_mut()
                    .is_some_and(|a| a.pool_failed(peer, kind))
            }
            _ => false,
        };
        let retry = pooled || self.server_failed(kind);
        let Phase::Exchange(x) = &mut self.phase else {
            return false;
        };
        if x.connecting() {
            return false;
        }
        let resend = x
            .req
            .attempt
            .as_ref()
            .is_some_and(|a| a.resend_head().is_some());
        if !retry || !resend || x.req.responded {
            return false;
        }
        x.downward = Downward::Connect(Connect {
            timed_out: false,
            waiting: true,
            resend: true,
            delayed: false,
        });
        self.cx.phase_ms = io.now_ms();
        // The socket closes (after what is in flight on it is back), then connect_next.
        self.cx.retire(Side::Up, io);
        true
    }

    /// The server in use answered: what failures it had are forgotten, and the request will
    /// not go to another server.
    pub(super) fn server_answered(&mut self) {
        let Some(r) = self.phase.req_mut() else {
            return;
        };
        r.attempt = None;
        if let Some(p) = self.peer() {
            attempt::count_success(p);
        }
    }

    /// The server the request in progress went to, if one was chosen.
    fn peer(&self) -> Option<&crate::config::Peer> {
        let r = self.phase.req()?;
        self.cx
            .cfg
            .upstreams
            .get(usize::from(r.upstream))?
            .peers
            .get(usize::from(r.peer))
    }

    pub(super) fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer().map(|p| p.addr)
    }

    // ---- response --------------------------------------------------------------------------
}

/// Queue a copy of `head` (the request head kept to send again), if any, on `up`.
fn push_copy(up: &mut super::Transport, head: Option<&[u8]>, io: &mut impl Io) {
    if let Some(head) = head {
        let mut v = io.scratch();
        v.extend_from_slice(head);
        let c = io.put(v);
        up.push(io, c);
    }
}
