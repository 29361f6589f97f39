//! A session's clock: the deadline it wants (the phase's own, a send making no progress, a
//! request body that stopped arriving) and what happens when the timer wheel fires for it.

use super::phase::Upward;
use super::protocol::{Protocol, Step};
use super::{End, Env, Io, Next, Phase, Recv, Session};
use crate::config::upstream::Failure;

impl Session {
    /// How long a send may make no progress.
    pub(super) fn send_ms(&self) -> u64 {
        u64::from(
            self.phase
                .req()
                .map_or(self.cx.listen.header_timeout_ms, |r| r.send_ms),
        )
    }

    /// The earliest time something must happen if nothing arrives before.
    pub fn deadline(&self) -> Option<u64> {
        let ms = u64::from;
        let phase = match &self.phase {
            Phase::Request(r) => Protocol::deadline(r, &self.cx),
            Phase::Exchange(x) if x.delayed() => Some(self.cx.phase_ms),
            Phase::Exchange(x) if x.connecting() && !x.connect_timed_out() => {
                Some(self.cx.phase_ms + ms(x.req.connect_ms))
            }
            Phase::Exchange(x) if x.connecting() => None,
            Phase::Exchange(x) => Some(self.cx.last_up_ms + ms(x.req.read_ms)),
            Phase::Tunnel(t) => Protocol::deadline(t, &self.cx),
            Phase::Respond(a) => Protocol::deadline(a, &self.cx),
            Phase::Closing(_) => None,
            Phase::Other(p) => p.deadline(&self.cx),
        };
        let send = [&self.cx.links.down, &self.cx.links.up]
            .iter()
            .filter(|p| p.sending().is_some() && !self.phase.is_closing())
            .map(|p| p.send_since_ms() + self.send_ms())
            .min();
        [phase, send, self.body_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When a request body that stopped arriving gets its 408: only while the proxy is
    /// reading it (a body held back because the upstream is slow is not the client's fault).
    pub(super) fn body_deadline(&self) -> Option<u64> {
        match &self.phase {
            Phase::Exchange(x)
                if matches!(x.upward, Upward::Body(_))
                    && self.cx.links.down.recv_state() == Recv::On =>
            {
                Some(self.cx.last_down_ms + u64::from(x.req.body_ms))
            }
            _ => None,
        }
    }

    /// The timer wheel fired for this session.
    pub fn on_timer(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        let now = io.now_ms();
        let Some(d) = self.deadline() else {
            return Next::Continue;
        };
        if now < d {
            return Next::Continue;
        }
        let send_ms = self.send_ms();
        let stuck = [&self.cx.links.down, &self.cx.links.up]
            .iter()
            .any(|p| p.sending().is_some() && p.send_since_ms() + send_ms <= now);
        let next = if stuck {
            Step::Close(End::SendTimeout)
        } else if self.body_deadline().is_some_and(|b| b <= now) {
            Step::Respond(408, End::BodyTimeout)
        } else {
            match &mut self.phase {
                Phase::Request(r) => Protocol::timer(r, &mut self.cx, now, io),
                Phase::Exchange(x) if x.delayed() => {
                    // limit_req's delay is over: now connect.
                    if let Some(c) = x.connect() {
                        c.delayed = false;
                    }
                    self.cx.phase_ms = now;
                    let next = self.connect_next(io, env);
                    self.apply(next, io);
                    return self.after(io, env);
                }
                Phase::Exchange(x) if x.connecting() => {
                    if let Some(c) = x.connect() {
                        c.timed_out = true;
                    }
                    self.cx.links.cancel_connect(io);
                    Step::Continue
                }
                Phase::Exchange(x) if x.awaiting_head() => self.upstream_failed(
                    Failure::Timeout,
                    Step::Respond(504, End::UpstreamTimeout),
                    io,
                ),
                Phase::Exchange(_) => Step::Close(End::IdleTimeout),
                Phase::Tunnel(t) => Protocol::timer(t, &mut self.cx, now, io),
                Phase::Respond(a) => Protocol::timer(a, &mut self.cx, now, io),
                Phase::Closing(_) => Step::Continue,
                Phase::Other(p) => p.timer(&mut self.cx, now, io),
            }
        };
        self.apply(next, io);
        self.after(io, env)
    }
}
