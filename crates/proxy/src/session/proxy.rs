//! Whom a connection is really from: the PROXY protocol header an L4 balancer puts first on a
//! `proxy_protocol` listener, and nginx's `real_ip_header` from trusted HTTP front ends. The
//! address found is the client for `X-Real-IP`, `X-Forwarded-For`, `ip_hash`, the limits and
//! the log.

use super::Phase;
use super::request::Request;
use super::{End, Env, Io, Session, Step};
use crate::http::proxy::{self, V2_MAX};

use crate::uring::{Chunk, ConnId};

impl Session {
    /// Raw bytes from the client while its PROXY header is still to come.
    pub(super) fn proxy_header(&mut self, c: Chunk, io: &mut impl Io, env: &mut Env<'_>) -> Step {
        let Phase::Request(Request { head, .. }) = &mut self.phase else {
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
            self.cx.client = src.into();
        }
        self.cx.proxy_header = false;
        let rest = head.split_off(h.len);
        head.clear();
        if rest.is_empty() {
            return Step::Continue;
        }
        let c = io.put(rest);
        self.on_data(ConnId::CLIENT, c, io, env)
    }
}
