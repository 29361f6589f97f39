//! Header blocks on the connection: HEADERS and CONTINUATION gathered (bounded in bytes and
//! frames), then decoded as a new request, trailers, or only to keep HPACK in step; a request
//! this side will not take answered or refused.

use super::*;

impl Connection {
    pub(super) fn headers(
        &mut self,
        head: Head,
        p: &[u8],
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        let id = head.stream;
        if id == 0 || id.is_multiple_of(2) {
            return Err(Code::Protocol);
        }
        let mut p = p;
        let mut pad = 0usize;
        if head.has(flag::PADDED) {
            let Some((&n, rest)) = p.split_first() else {
                return Err(Code::FrameSize);
            };
            pad = usize::from(n);
            p = rest;
        }
        let mut self_dependent = false;
        if head.has(flag::PRIORITY) {
            if p.len() < 5 {
                return Err(Code::FrameSize);
            }
            self_dependent = dependency(p) == id;
            p = &p[5..];
        }
        if pad > p.len() {
            return Err(Code::Protocol);
        }
        let fragment = &p[..p.len() - pad];
        if id <= self.last_stream {
            match self.index(id).map(|i| self.streams[i].remote_done) {
                // Trailers on an open stream.
                Some(false) => {}
                Some(true) => {
                    // Decode anyway: HPACK's table must stay in step.
                    return self.gather(head, fragment, false, now_ms, h);
                }
                // A stream this side reset: the block was on its way (trailers, most
                // likely); decoded for HPACK's sake, then dropped.
                None if self.reset_lately(id) => {
                    self.glitch(now_ms)?;
                    return self.gather(head, fragment, true, now_ms, h);
                }
                None if self.was_skipped(id) => return Err(Code::Protocol),
                None => return Err(Code::StreamClosed),
            }
        } else {
            self.opened(id);
        }
        self.gather(head, fragment, false, now_ms, h)?;
        if let Some(b) = self.block.as_mut() {
            b.self_dependent = self_dependent;
        } else if self_dependent {
            self.stream_error(StreamError(id, Code::Protocol), h);
        }
        Ok(())
    }

    /// Starts (or, with END_HEADERS, completes) a header block.
    fn gather(
        &mut self,
        head: Head,
        fragment: &[u8],
        ignore: bool,
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        self.block_bytes.clear();
        self.block_bytes.extend_from_slice(fragment);
        self.block = Some(Block {
            stream: head.stream,
            end_stream: head.has(flag::END_STREAM),
            frames: 0,
            self_dependent: false,
            ignore,
        });
        if head.has(flag::END_HEADERS) {
            return self.block_done(now_ms, h);
        }
        Ok(())
    }

    pub(super) fn continuation(
        &mut self,
        head: Head,
        p: &[u8],
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        let max = self.max_block();
        let Some(b) = self.block.as_mut() else {
            return Err(Code::Protocol);
        };
        b.frames += 1;
        if b.frames > MAX_CONTINUATIONS || self.block_bytes.len() + p.len() > max {
            return Err(Code::EnhanceYourCalm);
        }
        self.block_bytes.extend_from_slice(p);
        if head.has(flag::END_HEADERS) {
            return self.block_done(now_ms, h);
        }
        Ok(())
    }

    /// A whole header block: a new request, trailers, or a block decoded only to keep HPACK
    /// in step.
    fn block_done(&mut self, now_ms: u64, h: &mut impl Handler) -> Result<(), Code> {
        let Some(Block {
            stream: id,
            end_stream,
            self_dependent,
            ignore,
            ..
        }) = self.block.take()
        else {
            return Err(Code::Internal);
        };
        let block = std::mem::take(&mut self.block_bytes);
        let r = if ignore {
            self.fields
                .trailers(&block)
                .map(drop)
                .map_err(|_| Code::Compression)
        } else {
            self.block_for(id, end_stream, &block, now_ms, h)
        };
        if self_dependent && r.is_ok() {
            self.stream_error(StreamError(id, Code::Protocol), h);
        }
        self.block_bytes = block;
        self.block_bytes.clear();
        if self.block_bytes.capacity() > 4_096 {
            self.block_bytes = Vec::new();
        }
        r
    }

    fn block_for(
        &mut self,
        id: u32,
        end: bool,
        block: &[u8],
        now_ms: u64,
        h: &mut impl Handler,
    ) -> Result<(), Code> {
        if let Some(i) = self.index(id) {
            let s = &self.streams[i];
            if s.remote_done {
                self.fields.trailers(block).map_err(|_| Code::Compression)?;
                self.stream_error(StreamError(id, Code::StreamClosed), h);
                return Ok(());
            }
            // Trailers.
            let t = match self.fields.trailers(block) {
                Err(Refusal::Compression) => return Err(Code::Compression),
                Err(_) => Err(StreamError(id, Code::Protocol)),
                Ok(_) if !end => Err(StreamError(id, Code::Protocol)),
                Ok(t) => Ok(t),
            };
            match t {
                Err(e) => self.stream_error(e, h),
                Ok(t) => {
                    let s = &mut self.streams[i];
                    s.remote_done = true;
                    if s.content_length.is_some_and(|l| l != s.received) {
                        self.stream_error(StreamError(id, Code::Protocol), h);
                    } else {
                        h.trailers(id, t);
                        self.close_if_done(id);
                    }
                }
            }
            return Ok(());
        }
        let req = self.fields.request(block, self.settings.connect_protocol);
        let refused = self.goaway.is_some_and(|last| id > last)
            || self.streams.len() >= self.settings.max_streams as usize;
        match req {
            Err(Refusal::Compression) => Err(Code::Compression),
            _ if refused => {
                self.glitch(now_ms)?;
                self.rst(id, Code::RefusedStream);
                Ok(())
            }
            Err(Refusal::Malformed(_)) => {
                self.rst(id, Code::Protocol);
                Ok(())
            }
            Err(Refusal::TooLarge) => {
                self.answer_only(id, 431, end);
                Ok(())
            }
            Ok(req) => {
                if end && req.content_length.is_some_and(|l| l > 0) {
                    self.rst(id, Code::Protocol);
                    return Ok(());
                }
                self.streams.push(Stream {
                    id,
                    remote_done: end,
                    local_done: false,
                    answered: false,
                    recv_window: i64::from(self.settings.window),
                    unacked: 0,
                    send_window: i64::from(self.peer_window),
                    content_length: req.content_length,
                    received: 0,
                });
                self.tally.streams += 1;
                h.request(id, req, end);
                Ok(())
            }
        }
    }

    /// Answers a stream this side never opened (a request it would not take) with a status.
    fn answer_only(&mut self, id: u32, status: u16, end: bool) {
        let mut block = Vec::with_capacity(8);
        fields::encode_status(&mut block, status);
        fields::encode_field(&mut block, b"content-length", b"0");
        frame::headers(&mut self.out, id, &block, true, self.peer_max_frame);
        if !end {
            self.rst(id, Code::NoError);
        }
    }
}
