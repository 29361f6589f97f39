//! An HTTP/2 connection handed to the process that takes over in a binary upgrade
//! (`session/handoff.rs` says what moves and how): it goes when every stream it carries is a
//! WebSocket (or it carries none), with its client socket (and TLS records), the socket pairs
//! of its streams (each stream's inner session goes with it, as a tunnel), and its state: the
//! connection's ([`Connection::export`]: the reader, HPACK, windows) and each stream's link,
//! credit and answer bytes held for the client's window. A stream with a request in flight, a
//! tunnel half-closed or with trailers to come keeps it here: it gets the drain's GOAWAY as
//! before.

use super::*;
use crate::session::protocol::Carrier;
use crate::wire::{R, W};

impl Carrier for H2 {
    fn carriable(&self, cx: &Cx) -> Result<(), &'static str> {
        self.conn.carriable()?;
        if !self.first.is_empty() {
            return Err("http2-starting");
        }
        // Within what a description carries (its bounds, not the connection's: a client that
        // keeps its windows shut, or a header block being gathered, keeps it here).
        let held: usize = self.streams.iter().map(|s| s.held.len()).sum();
        if held > HELD_MAX || self.conn.carried_bytes() > STATE_MAX / 2 {
            return Err("busy");
        }
        for s in &self.streams {
            let link = (s.link != NO_LINK).then(|| cx.links.get(s.link));
            let open = link.is_some_and(|l| l.open() && !l.eof());
            if !open || s.body == Body::Ended || s.held_end || s.trailers.is_some() {
                return Err("closing");
            }
            if !matches!(s.resp, Resp::Tunnel) || s.body != Body::Tunnel {
                return Err("http2-request");
            }
        }
        Ok(())
    }

    fn going(&mut self) {
        self.holding = true;
    }

    fn hold(&mut self, cx: &mut Cx, io: &mut dyn Io) {
        self.holding = true;
        // Links kept for a next stream go: their inner sessions end (a socket pair's end).
        for link in std::mem::take(&mut self.idle_links) {
            cx.retire(link, io);
        }
        for s in &self.streams {
            cx.links.get_mut(s.link).set_held(true);
        }
        cx.links.down.set_held(true);
    }

    fn release(&mut self, cx: &mut Cx) {
        self.holding = false;
        for s in &self.streams {
            cx.links.get_mut(s.link).set_held(false);
        }
        cx.links.down.set_held(false);
    }

    fn carried_ids(&self) -> Vec<ConnId> {
        std::iter::once(ConnId::CLIENT)
            .chain(self.streams.iter().map(|s| s.link))
            .collect()
    }

    fn flush_out(&mut self, cx: &mut Cx, io: &mut dyn Io) {
        self.flush_now(cx, io);
    }

    fn describe(&self, w: &mut W, now: u64) {
        self.conn.export(w, now);
        w.u64(self.idle_since.map_or(0, |t| now.saturating_sub(t).max(1)));
        w.u32(self.taken);
        w.u64(self.key_seed);
        w.u32(self.streams.len() as u32);
        for s in &self.streams {
            w.u32(s.id);
            w.u64(s.credit as u64);
            w.bytes(&s.held);
        }
    }
}

impl H2 {
    /// An HTTP/2 connection handed over: this side's settings as the listener `cx` was
    /// accepted on has them, the state `describe` wrote, and its streams' links (`links[i]`
    /// carries stream `i`), at `now` on this process's clock. `no_more`: the configuration
    /// here does not take it on (its listener, or HTTP/2 on it, is gone): it is told GOAWAY, as
    /// a reload tells it, and its streams go on.
    pub(in crate::session) fn adopt(
        cx: &Cx,
        r: &mut R<'_>,
        links: &[ConnId],
        now: u64,
        no_more: bool,
    ) -> Result<H2, String> {
        let mut h = H2::new(cx, Vec::new(), now);
        let settings = h.conn.settings();
        h.conn = Box::new(Connection::import(settings, r, now)?);
        let idle = r.u64()?;
        h.idle_since = (idle != 0).then(|| now.saturating_sub(idle));
        h.taken = r.u32()?;
        h.key_seed = r.u64()?;
        let n = r.u32()? as usize;
        if n != links.len() {
            return Err(format!(
                "{n} HTTP/2 streams with {} socket pairs",
                links.len()
            ));
        }
        for &link in links {
            let id = r.u32()?;
            let credit = r.u64()? as usize;
            if credit > STREAM_WINDOW as usize {
                return Err("an HTTP/2 stream's credit past its window".into());
            }
            h.streams.push(Stream {
                id,
                link,
                body: Body::Tunnel,
                head: false,
                resp: Resp::Tunnel,
                held: r.bytes(HELD_MAX)?.to_vec(),
                held_end: false,
                credit,
                keep: false,
                trailer_text: Vec::new(),
                trailers: None,
            });
        }
        if no_more {
            h.conn.goaway(Code::NoError);
        }
        h.mark_readable();
        Ok(h)
    }
}
