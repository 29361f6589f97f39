//! A session's clock: the deadline it wants (its protocol's own, or a send making no
//! progress) and what happens when the timer wheel fires for it.

use super::protocol::{Protocol, Step};
use super::{End, Env, Io, Next, Phase, Session, Transport};

impl Session {
    /// How long a send may make no progress: the request's `send_timeout`, or, for a
    /// request never routed (an answer of our own to an unparsed head, an HTTP/2 connection's
    /// lingering end) and between requests, the listener's `header_timeout`.
    pub(super) fn send_ms(&self) -> u64 {
        u64::from(match self.phase.req() {
            Some(r) if r.send_ms > 0 => r.send_ms,
            _ => self.cx.listen().header_timeout_ms,
        })
    }

    /// The earliest time something must happen if nothing arrives before (`now_ms`: the
    /// clock now).
    pub fn deadline(&self, now_ms: u64) -> Option<u64> {
        let phase = run!(&self.phase, p => Protocol::deadline(p, &self.cx, now_ms), None);
        // A send making no progress: the oldest one in flight, timed by the request's
        // send_timeout (looked up only when something is being sent).
        let send = match self.phase.is_closing() {
            true => None,
            false if self.client_sends_only() => self
                .cx
                .links
                .down
                .send_since_ms(now_ms)
                .map(|since| since + self.send_ms()),
            false => self
                .cx
                .links
                .earliest(|p| p.send_since_ms(now_ms))
                .map(|since| since + self.send_ms()),
        };
        match (phase, send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Only the client's sends are timed (a protocol whose other connections time their own:
    /// HTTP/2's inner sessions). Looked up only for a protocol added as a type.
    fn client_sends_only(&self) -> bool {
        matches!(&self.phase, Phase::Other(p) if !p.times_upstream_sends())
    }

    /// Where the worker's timer for this session must move after an event, given where it is
    /// (`timer_at`; 0: not scheduled): to the deadline, when that comes before it. None: leave
    /// it (a later deadline is learnt when the timer fires and finds it early).
    ///
    /// A tunnel with no heartbeat, filter or Close of ours skips the computation when nothing
    /// the event can have done moves its deadline before the mark: its idle clock only moves
    /// later, and a send it started now is timed from now by `send_timeout`. (Its timer mark
    /// is never after its deadline; a session test checks that after every event.)
    #[inline]
    pub fn reschedule(&self, timer_at: u64, now_ms: u64) -> Option<u64> {
        if timer_at != 0
            && let Phase::Tunnel(t) = &self.phase
            && t.ctl.is_none()
            && timer_at <= now_ms + u64::from(t.req.send_ms)
        {
            return None;
        }
        self.deadline(now_ms)
            .filter(|&d| timer_at == 0 || d < timer_at)
    }

    /// The timer wheel fired for this session.
    pub fn on_timer(&mut self, io: &mut impl Io, env: &mut Env<'_>) -> Next {
        let now = io.now_ms();
        let Some(d) = self.deadline(now) else {
            return Next::Continue;
        };
        if now < d {
            return Next::Continue;
        }
        let send_ms = self.send_ms();
        let stuck_at = |p: &Transport| p.send_since_ms(now).is_some_and(|s| s + send_ms <= now);
        let stuck = match self.client_sends_only() {
            true => stuck_at(&self.cx.links.down),
            false => self.cx.links.any(stuck_at),
        };
        let next = if stuck {
            Step::Close(End::SendTimeout)
        } else {
            run!(&mut self.phase, p => Protocol::timer(p, &mut self.cx, now, io, env), Step::Continue)
        };
        self.apply(next, io, env);
        self.after(io, env)
    }
}
