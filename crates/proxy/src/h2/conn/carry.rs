//! A connection's whole state written for the process that takes it over in a binary upgrade,
//! and read back there (`session/h2/handoff.rs` carries it with the connection's sockets):
//! where the reader stands (a frame received in part goes with it, the rest is still in the
//! socket), the header block being gathered, the HPACK table, every stream's state and
//! windows, both directions' connection windows, the GOAWAY state, the glitch bucket, the
//! remembered resets and skipped ids. What waits to be written must have been taken out first
//! ([`Connection::out`] is empty): it goes with the connection's socket.

use super::*;
use crate::wire::{R, W};

impl Connection {
    /// Whether the connection can be carried now: it has started and has not failed. (What
    /// it has written must be drained before [`Connection::export`].) `Err` names why not.
    pub fn carriable(&self) -> Result<(), &'static str> {
        if !self.settings_seen || matches!(self.read, Read::Preface(_)) {
            return Err("http2-starting");
        }
        if self.dead.is_some() {
            return Err("closing");
        }
        Ok(())
    }

    /// About what [`Connection::export`] writes past its fixed fields: a frame and a header
    /// block gathered in part, the HPACK table.
    pub fn carried_bytes(&self) -> usize {
        self.buf.len() + self.block_bytes.len() + self.fields.table_bytes()
    }

    /// The state, at `now_ms` on this process's clock (the glitch bucket's time goes as an
    /// age). The caller checked [`Connection::carriable`].
    pub fn export(&self, w: &mut W, now_ms: u64) {
        debug_assert!(
            self.out.is_empty(),
            "a connection carried with bytes unwritten"
        );
        self.fields.export(w);
        match self.read {
            Read::Preface(n) => {
                w.u8(0);
                w.u8(n);
            }
            Read::Head(n) => {
                w.u8(1);
                w.u8(n);
                w.0.extend_from_slice(&self.head);
            }
            Read::Payload(h) => {
                w.u8(2);
                head(w, h);
            }
            Read::DataPad(h) => {
                w.u8(3);
                head(w, h);
            }
            Read::Data {
                stream,
                left,
                pad,
                end,
                deliver,
            } => {
                w.u8(4);
                w.u32(stream);
                w.u32(left);
                w.u32(pad);
                w.bool(end);
                w.bool(deliver);
            }
            Read::Skip(n) => {
                w.u8(5);
                w.u32(n);
            }
        }
        w.bytes(&self.buf);
        match &self.block {
            None => w.u8(0),
            Some(b) => {
                w.u8(1);
                w.u32(b.stream);
                w.bool(b.end_stream);
                w.u32(b.frames);
                w.bool(b.self_dependent);
                w.bool(b.ignore);
            }
        }
        w.bytes(&self.block_bytes);
        w.u32(self.streams.len() as u32);
        for s in &self.streams {
            w.u32(s.id);
            w.bool(s.remote_done);
            w.bool(s.local_done);
            w.bool(s.answered);
            w.i64(s.recv_window);
            w.u32(s.unacked);
            w.i64(s.send_window);
            match s.content_length {
                None => w.u8(0),
                Some(n) => {
                    w.u8(1);
                    w.u64(n);
                }
            }
            w.u64(s.received);
        }
        w.u32(self.last_stream);
        w.bool(self.settings_seen);
        w.u32(self.peer_window);
        w.u32(self.peer_max_frame);
        w.i64(self.send_window);
        w.i64(self.recv_window);
        w.u32(self.recv_unacked);
        match self.goaway {
            None => w.u8(0),
            Some(id) => {
                w.u8(1);
                w.u32(id);
            }
        }
        w.bool(self.peer_goaway);
        w.u32(self.glitches);
        w.u64(now_ms.saturating_sub(self.glitch_ms));
        for id in self.recent_resets {
            w.u32(id);
        }
        w.u32(self.recent_at as u32);
        w.u32(self.skipped.len() as u32);
        for &(a, b) in &self.skipped {
            w.u32(a);
            w.u32(b);
        }
    }

    /// A connection with this side's `settings` and the state [`Connection::export`] wrote,
    /// at `now_ms` on this process's clock. Every field is checked against the bounds the
    /// connection keeps to.
    pub fn import(settings: Settings, r: &mut R<'_>, now_ms: u64) -> Result<Connection, String> {
        let mut c = Connection::new(settings);
        c.out.clear();
        c.fields = Fields::import(settings.max_header_list as usize, r)?;
        let bad = |what: &str| format!("HTTP/2 state: {what}");
        c.read = match r.u8()? {
            0 => Read::Preface(r.u8()?.min(frame::PREFACE.len() as u8)),
            1 => {
                let n = r.u8()?;
                if usize::from(n) >= HEAD_LEN {
                    return Err(bad("a frame header past its length"));
                }
                c.head.copy_from_slice(r.take(HEAD_LEN)?);
                Read::Head(n)
            }
            2 => Read::Payload(read_head(r)?),
            3 => Read::DataPad(read_head(r)?),
            4 => {
                let (stream, left, pad) = (r.u32()?, r.u32()?, r.u32()?);
                if left > MAX_FRAME || pad > MAX_FRAME {
                    return Err(bad("a DATA frame past the frame size"));
                }
                Read::Data {
                    stream,
                    left,
                    pad,
                    end: r.bool()?,
                    deliver: r.bool()?,
                }
            }
            5 => {
                let n = r.u32()?;
                if n > MAX_FRAME {
                    return Err(bad("a skip past the frame size"));
                }
                Read::Skip(n)
            }
            _ => return Err(bad("a bad reader state")),
        };
        c.buf = r.bytes(MAX_FRAME as usize)?.to_vec();
        c.block = match r.u8()? {
            0 => None,
            1 => Some(Block {
                stream: r.u32()?,
                end_stream: r.bool()?,
                frames: r.u32()?.min(MAX_CONTINUATIONS),
                self_dependent: r.bool()?,
                ignore: r.bool()?,
            }),
            _ => return Err(bad("a bad header block marker")),
        };
        c.block_bytes = r.bytes(c.max_block())?.to_vec();
        let n = r.u32()? as usize;
        if n > settings.max_streams as usize {
            return Err(bad("more streams than this side allows"));
        }
        for _ in 0..n {
            let id = r.u32()?;
            let (remote_done, local_done, answered) = (r.bool()?, r.bool()?, r.bool()?);
            let recv_window = r.i64()?;
            let unacked = r.u32()?;
            let send_window = r.i64()?;
            let content_length = match r.u8()? {
                0 => None,
                1 => Some(r.u64()?),
                _ => return Err(bad("a bad content length")),
            };
            let received = r.u64()?;
            let max = i64::from(frame::MAX_WINDOW);
            if !(-max..=max).contains(&recv_window) || !(-max..=max).contains(&send_window) {
                return Err(bad("a window out of range"));
            }
            c.streams.push(Stream {
                id,
                remote_done,
                local_done,
                answered,
                recv_window,
                unacked,
                send_window,
                content_length,
                received,
            });
        }
        c.last_stream = r.u32()?;
        c.settings_seen = r.bool()?;
        c.peer_window = r.u32()?.min(frame::MAX_WINDOW);
        c.peer_max_frame = r.u32()?.clamp(frame::MIN_MAX_FRAME, frame::MAX_MAX_FRAME);
        c.send_window = r.i64()?;
        c.recv_window = r.i64()?;
        c.recv_unacked = r.u32()?;
        c.goaway = match r.u8()? {
            0 => None,
            1 => Some(r.u32()?),
            _ => return Err(bad("a bad GOAWAY marker")),
        };
        c.peer_goaway = r.bool()?;
        c.glitches = r.u32()?.min(GLITCH_BURST);
        c.glitch_ms = now_ms.saturating_sub(r.u64()?);
        for id in c.recent_resets.iter_mut() {
            *id = r.u32()?;
        }
        c.recent_at = r.u32()? as usize % RECENT_RESETS;
        let n = r.u32()? as usize;
        if n > SKIPPED_MAX {
            return Err(bad("too many skipped ranges"));
        }
        for _ in 0..n {
            c.skipped.push((r.u32()?, r.u32()?));
        }
        Ok(c)
    }
}

fn head(w: &mut W, h: Head) {
    w.u32(h.len);
    w.u8(h.kind);
    w.u8(h.flags);
    w.u32(h.stream);
}

fn read_head(r: &mut R<'_>) -> Result<Head, String> {
    let h = Head {
        len: r.u32()?,
        kind: r.u8()?,
        flags: r.u8()?,
        stream: r.u32()? & frame::MAX_WINDOW,
    };
    if h.len > MAX_FRAME {
        return Err("HTTP/2 state: a frame past the frame size".into());
    }
    Ok(h)
}
