//! One request's way through its upstream's servers (nginx's `proxy_next_upstream`): which
//! servers it tried, the hash balancers' affinity kept across tries, the location's conditions,
//! tries and time for going on, the last failure (the answer when none is left), whether the
//! connection in use came from the keepalive pool, and the request head kept to send again.
//! Pure decisions: the session does the connecting, the sending and the answering.

use std::net::IpAddr;

use super::hash::{Affinity, KeyInput};
use super::{Balancer, Pick, Tried};
use crate::config::upstream::{Failure, Failures, NextUpstream};
use crate::config::{Peer, Upstream};

/// What choosing a server for one request and going on to the next needs; in the exchange's
/// boxed terms from routing until a server answered, so a tunnel does not carry it.
#[derive(Debug, Default)]
pub struct Attempt {
    /// Servers tried.
    tried: Tried,
    /// The hash balancers' state, kept across retries.
    affinity: Affinity,
    /// Servers tried so far.
    count: u16,
    /// The location's `next_upstream`: conditions, most tries (0: no limit), how long after
    /// the request's start a next server may still be tried (0: no limit).
    next_when: Failures,
    next_tries: u16,
    next_ms: u32,
    /// The last failure, for the answer when no server is left.
    last_fail: Option<Failure>,
    /// The connection in use came from the keepalive pool (its failure before an answer is
    /// the pool's, not the server's: the request goes again on a fresh connection).
    cached: bool,
    /// The request head as sent upstream, kept while the request may still go to another
    /// server after it went up (no body, an idempotent method, `next_upstream` on, more than
    /// one server or keepalive).
    resend: Option<Box<[u8]>>,
}

/// Why no server is left for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// The last server tried timed out: 504.
    Timeout,
    /// Every server refused, failed or was down: 502.
    NoUpstream,
}

/// The methods nginx sends to another server after the request went up.
fn idempotent(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"].contains(&method)
}

impl Attempt {
    /// A request routed to `u` under a location's `next`; `input` is what hash keys read.
    pub fn new(u: &Upstream, next: &NextUpstream, input: &KeyInput<'_>) -> Attempt {
        Attempt {
            tried: Tried::new(u.peers.len()),
            affinity: Affinity::new(&u.balance, input, &mut Vec::new()),
            next_when: next.when,
            next_tries: next.tries.min(u32::from(u16::MAX)) as u16,
            next_ms: (next.timeout.as_millis().min(u128::from(u32::MAX))) as u32,
            ..Attempt::default()
        }
    }

    /// Keep the request `head` as it goes up, to send it again to the next server should this
    /// one fail before answering — when it may go again: no body, an idempotent method,
    /// `next_upstream` on and more than one try, and another server or a kept connection to
    /// go to.
    pub fn keep_for_resend(&mut self, head: &[u8], method: &str, body: bool, u: &Upstream) {
        if !body
            && idempotent(method)
            && !self.next_when.is_empty()
            && self.next_tries != 1
            && (u.peers.len() > 1 || u.keepalive > 0)
        {
            self.resend = Some(head.into());
        }
    }

    /// The head kept to send again, if any.
    pub fn resend_head(&self) -> Option<&[u8]> {
        self.resend.as_deref()
    }

    /// Whether `next_upstream`'s tries or time (from `started_ms`) are spent.
    pub fn spent(&self, started_ms: u64, now_ms: u64) -> bool {
        (self.next_tries > 0 && self.count >= self.next_tries)
            || (self.next_ms > 0
                && self.count > 0
                && now_ms >= started_ms + u64::from(self.next_ms))
    }

    /// Why no server is left: the last failure's kind.
    pub fn gave_up(&self) -> GaveUp {
        match self.last_fail {
            Some(Failure::Timeout) => GaveUp::Timeout,
            _ => GaveUp::NoUpstream,
        }
    }

    /// Servers tried so far.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The next server not yet tried (by `balancer`, for `client`, at `now_ms` on the shared
    /// clock), marked tried; `None` when none is left.
    pub fn pick(
        &mut self,
        balancer: &mut Balancer,
        u: &Upstream,
        client: IpAddr,
        now_ms: u64,
    ) -> Option<usize> {
        let pick = Pick {
            tried: &self.tried,
            now: now_ms,
            client,
            affinity: &mut self.affinity,
        };
        let i = balancer.pick(u, pick)?;
        self.count += 1;
        self.tried.mark(i);
        Some(i)
    }

    /// The connection in use comes from the keepalive pool (true) or is a fresh one.
    pub fn set_cached(&mut self, cached: bool) {
        self.cached = cached;
    }

    /// The kept connection to server `peer` failed with `kind` before answering. An error
    /// there is the pool's, not the server's: the pick is undone (the same server may be
    /// picked again, on a fresh or another kept connection; each kept one is tried once) and
    /// true is returned. Anything else: false (a failure of the server).
    pub fn pool_failed(&mut self, peer: usize, kind: Failure) -> bool {
        if !std::mem::take(&mut self.cached) || kind != Failure::Error {
            return false;
        }
        self.tried.unmark(peer);
        self.count = self.count.saturating_sub(1);
        true
    }

    /// The server in use failed with `kind`: whether the location sends the request on.
    pub fn failed(&mut self, kind: Failure) -> bool {
        self.last_fail = Some(kind);
        self.next_when.contains(kind)
    }

    /// Whether an upstream's response status is a failure the location names (502, 503 or
    /// 504 in `next_upstream`).
    pub fn names_status(&self, status: u16) -> Option<Failure> {
        Failure::of_status(status).filter(|f| self.next_when.contains(*f))
    }
}

/// Count a failure of `peer` against it (passive health: `max_fails` in `fail_timeout`),
/// logging when it takes the server out.
pub fn count_failure(peer: &Peer, now_ms: u64) {
    if peer.failure(now_ms) {
        tracing::warn!(
            target: "upstream",
            "server {} taken out for {} after {} failure(s)",
            peer.addr,
            crate::config::fmt_duration(peer.fail_timeout),
            peer.max_fails
        );
    }
}

/// Count a success of `peer`, logging when it brings the server back.
pub fn count_success(peer: &Peer) {
    if peer.success() {
        tracing::info!(target: "upstream", "server {} answers again", peer.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(servers: usize, keepalive: u32) -> Upstream {
        let list: Vec<String> = (0..servers)
            .map(|i| format!("{{ addr = \"127.0.0.1:{}\" }}", 9000 + i))
            .collect();
        let cfg = crate::config::Config::parse(
            "t.toml",
            &format!(
                "[[upstream]]\nname = \"b\"\nkeepalive = {keepalive}\nservers = [{}]\n\
                 [[server]]\nlisten = [\"127.0.0.1:1\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n",
                list.join(", ")
            ),
        )
        .unwrap();
        cfg.upstreams[0].clone()
    }

    fn input() -> KeyInput<'static> {
        KeyInput {
            client: IpAddr::from([10, 0, 0, 1]),
            uri: "/",
            head: b"GET / HTTP/1.1\r\n\r\n",
        }
    }

    #[test]
    fn every_server_once_then_the_last_failure_says_why() {
        let u = upstream(3, 0);
        let mut b = Balancer::new(&u);
        let mut a = Attempt::new(&u, &NextUpstream::default(), &input());
        let client = IpAddr::from([10, 0, 0, 1]);
        let mut seen = Vec::new();
        while let Some(i) = a.pick(&mut b, &u, client, 0) {
            assert!(a.failed(Failure::Error), "error is a default condition");
            seen.push(i);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "each server tried once");
        assert_eq!(a.gave_up(), GaveUp::NoUpstream);
        assert!(a.failed(Failure::Timeout));
        assert_eq!(a.gave_up(), GaveUp::Timeout);
        assert!(!a.failed(Failure::Invalid), "never sent on");
        assert!(!a.failed(Failure::Http502), "not a default condition");
    }

    #[test]
    fn tries_time_and_what_may_go_again() {
        let u = upstream(3, 0);
        let next = NextUpstream {
            tries: 2,
            timeout: std::time::Duration::from_millis(100),
            ..NextUpstream::default()
        };
        let mut b = Balancer::new(&u);
        let mut a = Attempt::new(&u, &next, &input());
        let client = IpAddr::from([10, 0, 0, 1]);
        assert!(!a.spent(0, 50));
        a.pick(&mut b, &u, client, 0).unwrap();
        assert!(!a.spent(0, 50));
        assert!(a.spent(0, 100), "past next_upstream_timeout");
        a.pick(&mut b, &u, client, 0).unwrap();
        assert!(a.spent(0, 0), "next_upstream_tries");
        // What may be sent again.
        a.keep_for_resend(b"GET / HTTP/1.1\r\n\r\n", "GET", false, &u);
        assert!(a.resend_head().is_some());
        let mut post = Attempt::new(&u, &next, &input());
        post.keep_for_resend(b"POST / HTTP/1.1\r\n\r\n", "POST", false, &u);
        assert!(post.resend_head().is_none(), "not idempotent");
        let one = upstream(1, 0);
        let mut single = Attempt::new(&one, &next, &input());
        single.keep_for_resend(b"GET / HTTP/1.1\r\n\r\n", "GET", false, &one);
        assert!(single.resend_head().is_none(), "nowhere else to go");
    }

    #[test]
    fn a_kept_connection_that_failed_undoes_its_pick() {
        let u = upstream(1, 4);
        let mut b = Balancer::new(&u);
        let mut a = Attempt::new(&u, &NextUpstream::default(), &input());
        let client = IpAddr::from([10, 0, 0, 1]);
        let i = a.pick(&mut b, &u, client, 0).unwrap();
        a.set_cached(true);
        assert!(a.pool_failed(i, Failure::Error));
        assert_eq!(a.count(), 0);
        assert_eq!(
            a.pick(&mut b, &u, client, 0),
            Some(i),
            "the same server again"
        );
        assert!(
            !a.pool_failed(i, Failure::Error),
            "a fresh connection's failure is the server's"
        );
        a.set_cached(true);
        assert!(
            !a.pool_failed(i, Failure::Timeout),
            "a timeout is the server's"
        );
    }
}
