//! `auth_request`: before a request to such a location is proxied, a subrequest asks the
//! location's auth upstream about it — the client's method and headers, the target the
//! configuration names (the client's own in `X-Original-URI`), no body. The subrequest is an
//! exchange like any (balancing, keepalive, `max_fails`, health), whose answer is read here
//! instead of going to the client: a 2xx lets the request through (the headers `set` names
//! copied from the answer into it), 401 and 403 go to the client, anything else — or no
//! answer within the timeout — is 500, as nginx answers. Then the client's head is parsed
//! again (`Request::granted`) and routed as it would have been, without limits counted twice.
//!
//! Answers may be kept for `cache` per worker, keyed by the request's credentials: its
//! `Authorization`, `Cookie` and `Sec-WebSocket-Protocol` (where a browser's WebSocket can
//! carry a token) and its query string.

use std::collections::HashMap;

use super::Side;
use super::phase::{Downward, Exchange, Req, Terms, Upward, ms32};
use super::{Cx, End, Env, Io, Phase, Step};
use crate::config::auth::AuthRequest;
use crate::config::upstream::NextUpstream;
use crate::http::{self, BodyKind};
use crate::upstream::KeyInput;
use crate::upstream::attempt::Attempt;
use crate::uring::timer::Stamp;

/// The request `req` (its head and what followed it in `buf`, its record `r`) at location
/// number `loc`, whose `auth_request` is `a`, after limit_req's `delay_ms`: what a kept answer
/// says of its credentials
/// (`Ok`: allowed, with these values; `Err(Step::Answer)`: refused), or the exchange that
/// asks (`Err(Step::Become)`).
#[allow(clippy::too_many_arguments)]
pub(super) fn ask<I: Io + ?Sized>(
    cx: &mut Cx,
    req: &http::Request,
    buf: Vec<u8>,
    mut r: Req,
    a: &AuthRequest,
    loc: u16,
    delay_ms: u64,
    io: &mut I,
    env: &mut Env<'_>,
) -> Result<(Granted, Vec<u8>, Req), Step> {
    let now = io.now_ms();
    let head = &buf[..req.head_len];
    let key = a.cache.and_then(|_| credentials(head, &req.path));
    if let Some(k) = &key {
        match env.auth.get(loc, k, now) {
            Some(Verdict::Allow(values)) => {
                let g = Granted {
                    values,
                    started_ms: r.started_ms,
                };
                return Ok((g, buf, r));
            }
            Some(Verdict::Deny(status)) => return Err(Step::Answer(r, status, End::AuthDenied)),
            None => {}
        }
    }
    let cfg = cx.cfg.clone();
    let u = &cfg.upstreams[a.upstream];
    let mut out = io.scratch();
    out.reserve(req.head_len + 128);
    let set: [(&str, Option<&[u8]>); 2] = [
        ("X-Original-URI", Some(req.path.as_bytes())),
        ("X-Original-Method", Some(req.method.as_bytes())),
    ];
    let fwd = http::Forwarded {
        upgrade: false,
        client_ip: cx.client.ip(),
        proto: if cx.listen().tls { "https" } else { "http" },
        default_host: &u.name,
        keepalive: u.keepalive > 0,
        target: a.uri.as_deref(),
        set: &set,
        no_body: true,
    };
    if let Err(http::HeadError::Invalid(why)) = http::rewrite_request(head, &fwd, &mut out) {
        io.recycle(out);
        return Err(Step::Answer(r, 400, End::BadRequest(why)));
    }
    // The subrequest's record: the client's request (its log line, if it is refused), timed
    // by the subrequest's timeout, toward the auth upstream.
    r.upstream = a.upstream as u16;
    r.read_ms = ms32(a.timeout);
    r.send_ms = ms32(a.timeout);
    let input = KeyInput {
        client: cx.client.ip(),
        uri: &req.path,
        head,
    };
    let terms = Box::new(Terms {
        attempt: Some(Attempt::new(u, &NextUpstream::default(), &input)),
        ctl: None,
        connect_ms: ms32(a.timeout),
        body_ms: ms32(a.timeout),
        interim: 0,
        interim_bytes: 0,
        keep_alive: false,
        up_keep: false,
        // What the client sends meanwhile waits, and is parsed with its head once allowed.
        upward: Upward::Hold(Vec::new()),
        loc,
        auth: Some(Box::new(Pending {
            original: buf,
            loc,
            key,
            started_ms: r.started_ms,
        })),
    });
    let c = io.put(out);
    debug_assert!(cx.links.up.flushed());
    cx.links.up.push(io, c);
    // limit_req's delay, if any, comes before the subrequest (as it would before the request).
    cx.phase_ms = Stamp::new(now + delay_ms);
    Err(Step::Become(Phase::Exchange(Exchange::to_connect(
        r, terms, delay_ms,
    ))))
}

impl Exchange {
    /// The auth upstream's final answer (its head `resp`, in the exchange's head buffer): a
    /// 2xx lets the request through (the exchange finishes into the request, parsed again),
    /// 401 and 403 go to the client, anything else is 500. Kept for the credentials where
    /// answers are cached.
    pub(super) fn auth_answer<I: Io + ?Sized>(
        &mut self,
        cx: &mut Cx,
        resp: &http::Response,
        io: &mut I,
        env: &mut Env<'_>,
    ) -> Step {
        let (Some(p), Downward::Head(buf)) = (self.terms.auth.take(), &self.downward) else {
            return Step::Continue;
        };
        let cfg = cx.cfg.clone();
        let Some(a) = cfg
            .location_by_id(p.loc)
            .and_then(|l| l.auth_request.as_ref())
        else {
            return Step::Respond(500, End::AuthFailed("error"));
        };
        let verdict = match resp.status {
            200..=299 => Verdict::Allow(granted_values(a, &buf[..resp.head_len])),
            401 | 403 => Verdict::Deny(resp.status),
            _ => {
                tracing::warn!(target: "upstream", "auth_request answered {}: 500 to the client", resp.status);
                return Step::Respond(500, End::AuthFailed("status"));
            }
        };
        let now = io.now_ms();
        if let (Some(ttl), Some(key)) = (a.cache, p.key) {
            let until = now + ttl.as_millis() as u64;
            env.auth.put(p.loc, key, until, now, verdict.clone());
        }
        let values = match verdict {
            Verdict::Deny(status) => return Step::Respond(status, End::AuthDenied),
            Verdict::Allow(values) => values,
        };
        // The auth connection goes back to the pool when its answer had no body (as auth
        // services answer) and it may be kept; otherwise it closes.
        let empty =
            matches!(resp.body, BodyKind::None | BodyKind::Length(0)) && buf.len() == resp.head_len;
        let (up, u) = (&cx.links.up, &cfg.upstreams[usize::from(self.req.upstream)]);
        let pool = u.keepalive > 0
            && resp.keep_alive
            && empty
            && up.flushed()
            && !up.eof()
            && up.at_rest()
            && u32::from(up.uses()) < u.keepalive_requests
            && !env.draining;
        cx.links.up.set_keep(pool);
        cx.retire(Side::Up, io);
        // The request is logged once, by the exchange that proxies it.
        self.req.logged = true;
        self.downward = Downward::Authorized(Box::new((
            p.original,
            Granted {
                values,
                started_ms: p.started_ms,
            },
        )));
        Step::Finish
    }
}

/// What an auth exchange keeps of the request it asks about.
#[derive(Debug)]
pub(super) struct Pending {
    /// The client's head and what came after it, parsed again once allowed.
    pub original: Vec<u8>,
    /// The location's number, and the request's credentials when answers are cached.
    pub loc: u16,
    pub key: Option<Box<[u8]>>,
    /// When the client's request began (its log line's duration counts the subrequest).
    pub started_ms: u64,
}

/// What the answer allowed: the values of the location's `set` headers (in its order; `None`
/// where the answer had no such header: the request then goes without one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Granted {
    pub values: Vec<Option<Vec<u8>>>,
    pub started_ms: u64,
}

/// What an answer said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow(Vec<Option<Vec<u8>>>),
    Deny(u16),
}

/// Cached answers are per worker, at most this many (a full cache takes no more until some
/// expire).
pub const CACHE_ENTRIES: usize = 10_000;

/// Credentials longer than this are asked about every time (not cached).
pub const KEY_MAX: usize = 2048;

/// An answer is kept only when its credentials and the values it gives come to at most this
/// many bytes: a worker's cache holds at most `CACHE_ENTRIES × ENTRY_MAX` (40 MB) of them.
pub const ENTRY_MAX: usize = 4096;

/// A cached answer's key: the location's number and the request's credentials.
type Key = (u16, Box<[u8]>);

/// A worker's cache of answers (until when each holds, and what it said).
#[derive(Debug, Default)]
pub struct Cache {
    map: HashMap<Key, (u64, Verdict)>,
}

impl Cache {
    /// The answer kept for `key` at location `loc`, if it has not expired at `now` (ms).
    pub fn get(&mut self, loc: u16, key: &[u8], now: u64) -> Option<Verdict> {
        let k = (loc, Box::<[u8]>::from(key));
        match self.map.get(&k) {
            Some((until, v)) if *until > now => Some(v.clone()),
            Some(_) => {
                self.map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Keep `v` for `key` at `loc` until `until` (ms), room allowing.
    pub fn put(&mut self, loc: u16, key: Box<[u8]>, until: u64, now: u64, v: Verdict) {
        let given = match &v {
            Verdict::Allow(values) => values.iter().flatten().map(Vec::len).sum(),
            Verdict::Deny(_) => 0,
        };
        if key.len() + given > ENTRY_MAX {
            return;
        }
        if self.map.len() >= CACHE_ENTRIES {
            self.map.retain(|_, (u, _)| *u > now);
            if self.map.len() >= CACHE_ENTRIES {
                return;
            }
        }
        self.map.insert((loc, key), (until, v));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The credentials of the request whose head is `head` with target `target` (what a cached
/// answer is keyed by); `None` when they are too long to keep.
pub(super) fn credentials(head: &[u8], target: &str) -> Option<Box<[u8]>> {
    let mut key = Vec::new();
    let query = target.split_once('?').map_or("", |(_, q)| q);
    key.extend_from_slice(query.as_bytes());
    for name in ["authorization", "cookie", "sec-websocket-protocol"] {
        key.push(0);
        for v in http::header_values(head, name) {
            key.extend_from_slice(v);
            key.push(b'\n');
        }
    }
    (key.len() <= KEY_MAX).then(|| key.into_boxed_slice())
}

/// The values of `a.set`'s answer headers in the answer head `head`.
pub(super) fn granted_values(a: &AuthRequest, head: &[u8]) -> Vec<Option<Vec<u8>>> {
    a.set
        .iter()
        .map(|(_, from)| {
            http::header_values(head, from)
                .next()
                .map(|v| v.trim_ascii().to_vec())
        })
        .collect()
}

/// Why a subrequest that failed gives 500 (the log's `end=auth-failed:…`), from how the
/// exchange ended.
pub(super) fn failed(end: super::End) -> super::End {
    use super::End as E;
    super::End::AuthFailed(match end {
        E::UpstreamTimeout => "timeout",
        E::NoUpstream | E::UpstreamError(_) => "unreachable",
        E::BadResponse(_) | E::UpstreamClosed => "bad-answer",
        E::UpstreamTls(_) => "tls",
        _ => "error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_until_they_expire_and_the_cache_is_bounded() {
        let mut c = Cache::default();
        c.put(0, b"a".as_slice().into(), 100, 0, Verdict::Deny(401));
        assert_eq!(c.get(0, b"a", 50), Some(Verdict::Deny(401)));
        assert_eq!(c.get(1, b"a", 50), None, "another location");
        assert_eq!(c.get(0, b"a", 100), None, "expired");
        assert!(c.is_empty(), "an expired answer is dropped when found");
        for i in 0..CACHE_ENTRIES + 10 {
            c.put(
                0,
                i.to_string().into_bytes().into(),
                1000,
                0,
                Verdict::Deny(403),
            );
        }
        assert_eq!(c.len(), CACHE_ENTRIES);
        // Once they expire, new ones are taken again.
        c.put(0, b"new".as_slice().into(), 5000, 2000, Verdict::Deny(403));
        assert_eq!(c.len(), 1);
        // An answer that gives more than an entry may hold is not kept.
        let big = Verdict::Allow(vec![Some(vec![b'x'; ENTRY_MAX])]);
        c.put(0, b"big".as_slice().into(), 5000, 2000, big);
        assert_eq!(c.get(0, b"big", 2000), None);
    }

    #[test]
    fn credentials_are_the_tokens_a_client_can_carry() {
        let head = b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\nSec-WebSocket-Protocol: t.xyz, chat\r\n\r\n";
        let a = credentials(head, "/ws?token=abc").unwrap();
        let b = credentials(head, "/ws?token=abd").unwrap();
        assert_ne!(a, b);
        let other = b"GET /ws?token=abc HTTP/1.1\r\nHost: y\r\nCookie: s=2\r\nSec-WebSocket-Protocol: t.xyz, chat\r\n\r\n";
        assert_ne!(a, credentials(other, "/ws?token=abc").unwrap());
        let long = format!(
            "GET / HTTP/1.1\r\nAuthorization: {}\r\n\r\n",
            "x".repeat(3000)
        );
        assert_eq!(credentials(long.as_bytes(), "/"), None);
    }
}
