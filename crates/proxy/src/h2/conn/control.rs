//! The connection's control frames that change what may be sent: the peer's SETTINGS (its
//! window, frame size and limits, each checked as RFC 9113 §6.5.2 asks) and WINDOW_UPDATE
//! (credit for the connection or one stream, bounded at 2^31 - 1).

use super::*;

impl Connection {
    pub(super) fn settings_frame(
        &mut self,
        head: Head,
        p: &[u8],
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        if head.stream != 0 {
            return Err(Code::Protocol);
        }
        if head.has(flag::ACK) {
            return if p.is_empty() {
                Ok(())
            } else {
                Err(Code::FrameSize)
            };
        }
        if !p.len().is_multiple_of(6) {
            return Err(Code::FrameSize);
        }
        if self.settings_seen {
            self.glitch(now_ms)?;
        }
        self.settings_seen = true;
        let mut opened = false;
        for s in p.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                setting::ENABLE_PUSH | setting::ENABLE_CONNECT_PROTOCOL if v > 1 => {
                    return Err(Code::Protocol);
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if v > frame::MAX_WINDOW {
                        return Err(Code::FlowControl);
                    }
                    let delta = i64::from(v) - i64::from(self.peer_window);
                    self.peer_window = v;
                    for st in &mut self.streams {
                        st.send_window += delta;
                        if st.send_window > i64::from(frame::MAX_WINDOW) {
                            return Err(Code::FlowControl);
                        }
                    }
                    opened |= delta > 0;
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::MIN_MAX_FRAME..=frame::MAX_MAX_FRAME).contains(&v) {
                        return Err(Code::Protocol);
                    }
                    self.peer_max_frame = v;
                }
                // HEADER_TABLE_SIZE: the response encoder uses no dynamic table.
                // MAX_CONCURRENT_STREAMS: this side opens none. MAX_HEADER_LIST_SIZE:
                // advisory. Unknown settings are ignored (RFC 9113 §6.5.2).
                _ => {}
            }
        }
        frame::settings_ack(&mut self.out);
        if opened {
            h.writable(0);
        }
        Ok(())
    }

    pub(super) fn window_update(
        &mut self,
        head: Head,
        p: &[u8],
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        if p.len() != 4 {
            return Err(Code::FrameSize);
        }
        let inc = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & frame::MAX_WINDOW;
        if head.stream == 0 {
            if inc == 0 {
                return Err(Code::Protocol);
            }
            self.send_window += i64::from(inc);
            if self.send_window > i64::from(frame::MAX_WINDOW) {
                return Err(Code::FlowControl);
            }
            h.writable(0);
            return Ok(());
        }
        if head.stream > self.last_stream {
            return Err(Code::Protocol);
        }
        let r = match self.stream_mut(head.stream) {
            None => None,
            Some(_) if inc == 0 => Some(Err(Code::Protocol)),
            Some(s) => {
                s.send_window += i64::from(inc);
                Some(if s.send_window > i64::from(frame::MAX_WINDOW) {
                    Err(Code::FlowControl)
                } else {
                    Ok(())
                })
            }
        };
        match r {
            None => self.glitch(now_ms),
            Some(Err(code)) => {
                self.stream_error(StreamError(head.stream, code), h);
                Ok(())
            }
            Some(Ok(())) => {
                h.writable(head.stream);
                Ok(())
            }
        }
    }
}
