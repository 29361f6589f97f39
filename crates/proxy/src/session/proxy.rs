//! Whom a connection is really from: the PROXY protocol header an L4 balancer puts first on a
//! `proxy_protocol` listener, and nginx's `real_ip_header` from trusted HTTP front ends. The
//! address found is the client for `X-Real-IP`, `X-Forwarded-For`, `ip_hash`, the limits and
//! the log.

use super::Phase;
use super::{End, Env, Io, Session, Step};
use crate::http::proxy::{self, V2_MAX};
use crate::uring::{Chunk, Side};

impl Session {
    /// Raw bytes from the client while its PROXY header is still to come.
    pub(super) fn proxy_header(&mut self, c: Chunk, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        let Phase::Request { head } = &mut self.phase else {
            io.release(c);
            return Step::Continue;
        };
        head.extend_from_slice(io.data_of(c));
        io.release(c);
        let h = match proxy::parse(head) {
            Ok(Some(h)) => h,
            Ok(None) if head.len() < V2_MAX => return Step::Continue,
            Ok(None) => return Step::Close(End::BadRequest("PROXY header too long")),
            // No answer: the peer is a balancer that broke the protocol (nginx closes too).
            Err(why) => return Step::Close(End::BadRequest(why)),
        };
        if let Some(src) = h.source {
            self.cx.client = src;
        }
        self.cx.listen.proxy_header = false;
        let rest = head.split_off(h.len);
        head.clear();
        if rest.is_empty() {
            return Step::Continue;
        }
        let c = io.put(rest);
        self.on_data(Side::Down, c, io, env)
    }

    /// `real_ip_header` of the server `si`: from a trusted peer, the client is the header's
    /// last address (nginx's default, `real_ip_recursive off`); from any other peer, or without
    /// a usable header, it is the peer. A connection from a front end carries many clients'
    /// requests: the limit_conn slot held for the previous one is given back when it changes.
    pub(super) fn real_ip(&mut self, si: usize, head: &[u8]) {
        let s = &self.cx.cfg.servers[si];
        let Some(name) = &s.real_ip_header else {
            return;
        };
        if self.cx.cfg.listener_proxy[usize::from(self.cx.listen.index)].is_some() {
            return; // the PROXY header said who the client is
        }
        let Some(peer) = crate::sys::peer_of(self.cx.links.down.fd()) else {
            return;
        };
        let mut client = peer;
        if crate::config::trusted(&s.trusted_proxies, peer.ip())
            && let Some(v) = crate::http::header_values(head, name).last()
            && let Some(last) = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.rsplit(',').next())
            && let Ok(ip) = last.trim().parse::<std::net::IpAddr>()
        {
            client = std::net::SocketAddr::new(ip, peer.port());
        }
        if client != self.cx.client {
            self.release_limit();
            self.cx.client = client;
        }
    }
}
