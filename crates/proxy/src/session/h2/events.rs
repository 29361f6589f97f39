//! What the connection's state machine reports about streams, acted on: a request gets a link
//! to an inner session (a kept one, or a new socket pair) and goes to it as HTTP/1.1; body
//! bytes, trailers and resets follow it.

use std::io::Write;

use super::translate::request_head;
use super::*;

/// What the connection's state machine reports, acted on.
pub(super) struct Events<'a, I: Io + ?Sized> {
    pub(super) streams: &'a mut Vec<Stream>,
    pub(super) cx: &'a mut Cx,
    pub(super) io: &'a mut I,
    pub(super) inner: &'a mut Vec<Inner>,
    pub(super) taken: &'a mut u32,
    pub(super) key_seed: &'a mut u64,
    pub(super) idle_links: &'a mut Vec<ConnId>,
}

impl<I: Io + ?Sized> Events<'_, I> {
    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    fn send(&mut self, link: ConnId, f: impl FnOnce(&mut Vec<u8>)) {
        self.cx.send_built(link, self.io, f);
    }

    /// A new link: a connection of the session over one end of a socket pair, the other end
    /// for an inner session the worker starts after this turn.
    fn new_link(&mut self) -> Option<ConnId> {
        let link = self.cx.links.add()?;
        let (ours, theirs): (RawFd, RawFd) = match self.io.socketpair() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "http2: no socket pair for a stream: {}",
                    crate::sys::errno_name(e)
                );
                return None;
            }
        };
        let t = self.cx.links.get_mut(link);
        // A plain transport cannot fail to take a socket.
        let _ = t.reset_fd(self.io, ours, None, None);
        t.mark_ready();
        self.inner.push(Inner {
            fd: theirs,
            peer: ours,
            client: self.cx.client.addr(),
            listen: *self.cx.listen(),
            cfg: self.cx.cfg.clone(),
        });
        Some(link)
    }

    /// A pseudo-random `Sec-WebSocket-Key` (a nonce: RFC 6455 asks for no more).
    fn ws_key(&mut self) -> String {
        let mut bytes = [0u8; 16];
        for half in bytes.chunks_mut(8) {
            *self.key_seed = self.key_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *self.key_seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            half.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

impl<I: Io + ?Sized> Handler for Events<'_, I> {
    fn request(&mut self, id: u32, req: H2Request, end: bool) {
        let ws = req.is_extended_connect();
        if req.method == b"CONNECT" && !ws {
            // A plain CONNECT asks for a forward proxy, which ringway is not.
            self.streams.push(Stream::answered(id, 405));
            return;
        }
        if ws && req.protocol.as_deref() != Some(b"websocket") {
            self.streams.push(Stream::answered(id, 501));
            return;
        }
        let link = match self.idle_links.pop() {
            Some(link) => link,
            None => match self.new_link() {
                Some(link) => link,
                None => {
                    self.streams.push(Stream::answered(id, 503));
                    return;
                }
            },
        };
        *self.taken += 1;
        let key = ws.then(|| self.ws_key());
        let mut body = Body::Ended;
        self.send(link, |out| {
            body = request_head(out, &req, end, key.as_deref())
        });
        self.streams.push(Stream {
            id,
            link,
            body,
            head: req.method == b"HEAD",
            resp: Resp::Head {
                buf: Vec::new(),
                tunnel: ws,
            },
            held: Vec::new(),
            held_end: false,
            credit: 0,
            keep: false,
            trailer_text: Vec::new(),
            trailers: None,
        });
    }

    fn data(&mut self, id: u32, bytes: &[u8], end: bool) {
        let Some(i) = self.find(id) else { return };
        let s = &mut self.streams[i];
        if s.link == NO_LINK {
            return;
        }
        let (link, body) = (s.link, s.body);
        s.credit += bytes.len();
        if end && body != Body::Tunnel {
            s.body = Body::Ended;
        }
        match body {
            Body::Ended => {}
            Body::Plain | Body::Tunnel => {
                if !bytes.is_empty() {
                    self.send(link, |out| out.extend_from_slice(bytes));
                }
                if end && body == Body::Tunnel {
                    self.streams[i].body = Body::Ended;
                    self.cx.links.half_close(link, self.io);
                }
            }
            Body::Chunked => self.send(link, |out| {
                if !bytes.is_empty() {
                    // The chunk's size line, written in place (no allocation per DATA).
                    let _ = write!(out, "{:x}\r\n", bytes.len());
                    out.extend_from_slice(bytes);
                    out.extend_from_slice(b"\r\n");
                }
                if end {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }),
        }
    }

    fn trailers(&mut self, id: u32, fields: FieldList) {
        let Some(i) = self.find(id) else { return };
        let s = &mut self.streams[i];
        let (link, body) = (s.link, s.body);
        s.body = Body::Ended;
        if body == Body::Chunked {
            self.send(link, |out| {
                out.extend_from_slice(b"0\r\n");
                for (n, v) in &fields {
                    out.extend_from_slice(n);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(v);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
            });
        } else if body == Body::Tunnel {
            self.cx.links.half_close(link, self.io);
        }
    }

    fn reset(&mut self, id: u32, _code: Code) {
        if let Some(i) = self.find(id) {
            let s = self.streams.swap_remove(i);
            if s.link != NO_LINK {
                self.cx.retire(s.link, self.io);
            }
        }
    }

    fn writable(&mut self, _id: u32) {
        // Held bytes are sent once the event is handled (`settle`).
    }
}
