//! What the connection's owner asks of it: answers (HEADERS, DATA within the peer's windows,
//! trailers), credit given back, resets and GOAWAY.

use super::*;

impl Connection {
    /// Whether a stream is open (or half-closed) here.
    pub fn is_open(&self, id: u32) -> bool {
        self.index(id).is_some()
    }

    /// Bytes passed on for a stream: their credit goes back to the peer.
    pub fn consumed(&mut self, id: u32, n: usize) {
        if let Some(s) = self.stream_mut(id) {
            s.unacked = s.unacked.saturating_add(n.min(u32::MAX as usize) as u32);
        }
        self.ack_stream(id, false);
    }

    /// Sends a response's (or an informational response's, `status` < 200) HEADERS.
    pub fn respond(&mut self, id: u32, status: u16, list: &[(&[u8], &[u8])], end: bool) -> bool {
        let max = self.peer_max_frame;
        let Some(s) = self.stream_mut(id) else {
            return false;
        };
        if s.local_done {
            return false;
        }
        s.answered |= status >= 200;
        let mut block = Vec::with_capacity(64);
        fields::encode_status(&mut block, status);
        for (n, v) in list {
            fields::encode_field(&mut block, n, v);
        }
        let end = end && status >= 200;
        if end {
            s.local_done = true;
        }
        frame::headers(&mut self.out, id, &block, end, max);
        if end {
            self.finish_local(id);
        }
        true
    }

    /// What this side may send a stream now (both windows).
    pub fn window(&self, id: u32) -> usize {
        match self.index(id) {
            Some(i) => self.streams[i].send_window.min(self.send_window).max(0) as usize,
            None => 0,
        }
    }

    /// Sends body bytes, as many as the windows allow; returns how many went. `end` ends the
    /// stream once all of `bytes` went.
    pub fn send_data(&mut self, id: u32, bytes: &[u8], end: bool) -> usize {
        let max = self.peer_max_frame as usize;
        let n = self.window(id).min(bytes.len());
        let Some(s) = self.stream_mut(id) else {
            return 0;
        };
        if s.local_done {
            return 0;
        }
        s.send_window -= n as i64;
        let all = n == bytes.len();
        if end && all {
            s.local_done = true;
        }
        self.send_window -= n as i64;
        let mut chunks = bytes[..n].chunks(max).peekable();
        if n == 0 && end && all {
            frame::data(&mut self.out, id, &[], true);
        }
        while let Some(c) = chunks.next() {
            frame::data(&mut self.out, id, c, end && all && chunks.peek().is_none());
        }
        if end && all {
            self.finish_local(id);
        }
        n
    }

    /// Sends trailers, ending the stream.
    pub fn send_trailers(&mut self, id: u32, list: &[(&[u8], &[u8])]) -> bool {
        let max = self.peer_max_frame;
        let Some(s) = self.stream_mut(id) else {
            return false;
        };
        if s.local_done {
            return false;
        }
        s.local_done = true;
        let mut block = Vec::with_capacity(64);
        for (n, v) in list {
            fields::encode_field(&mut block, n, v);
        }
        frame::headers(&mut self.out, id, &block, true, max);
        self.finish_local(id);
        true
    }

    /// This side ended its half: a stream the peer has not finished sending is told to stop
    /// (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    fn finish_local(&mut self, id: u32) {
        if let Some(i) = self.index(id) {
            if !self.streams[i].remote_done {
                self.rst(id, Code::NoError);
            }
            self.streams.swap_remove(i);
        }
    }

    /// Resets a stream from this side.
    pub fn reset(&mut self, id: u32, code: Code) {
        if let Some(i) = self.index(id) {
            self.streams.swap_remove(i);
            self.rst(id, code);
        }
    }

    /// Announces the end (drain): no stream past those already opened will be taken; they go
    /// on until they end.
    pub fn goaway(&mut self, code: Code) {
        if self.goaway.is_none() && self.dead.is_none() {
            frame::goaway(&mut self.out, self.last_stream, code);
            self.tally.goaway = Some(code);
            self.goaway = Some(self.last_stream);
        }
    }
}
