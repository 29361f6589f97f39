//! Message body framing (RFC 9112 §6): where a request or response body ends, without
//! rewriting it. Chunked bodies are tracked byte by byte through a small state machine so that
//! a keep-alive connection knows where the next message starts.

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (GET without length, HEAD responses, 1xx/204/304).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Response without a length: the body ends when the upstream closes.
    UntilClose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size {
        digits: u8,
        value: u64,
    },
    /// Whitespace after the size: only more whitespace and CRLF may follow.
    SizeWs {
        value: u64,
    },
    Ext {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    /// A trailer field's name (a token), up to its colon.
    TrailerName,
    /// A trailer field's value, up to CR.
    TrailerLine,
    TrailerLineLf,
    FinalLf,
}

/// A byte that may stand in a chunk extension or a field value: visible ASCII, SP, HTAB and
/// obs-text; never CR, LF or another control byte (a bare LF there is read as a line end by
/// some parsers and not by others).
fn field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// A token character (RFC 9110 §5.6.2): what a field name is made of.
fn token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A malformed chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyError(pub &'static str);

/// Counts off a body as its bytes go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyTracker {
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

impl BodyTracker {
    pub fn new(kind: BodyKind) -> BodyTracker {
        let state = match kind {
            BodyKind::None | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::Chunked(Chunk::Size {
                digits: 0,
                value: 0,
            }),
            BodyKind::UntilClose => State::UntilClose,
        };
        BodyTracker { state }
    }

    /// The body is complete; bytes after it belong to the next message.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The body ends only when the connection closes.
    pub fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Feed bytes; returns how many of them belong to this body (all of them until it is done).
    #[inline]
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, BodyError> {
        self.feed_payload(data, |_| {})
    }

    /// [`BodyTracker::feed`], showing `payload` each run of the body's content: what a
    /// chunked body carries without its framing (an HTTP/2 stream's DATA).
    #[inline]
    pub fn feed_payload(
        &mut self,
        data: &[u8],
        payload: impl FnMut(&[u8]),
    ) -> Result<usize, BodyError> {
        self.feed_parts(data, payload, |_| {})
    }

    /// [`BodyTracker::feed_payload`], showing `trailer` the bytes of a chunked body's trailer
    /// fields as they go by (each line with its CRLF; an HTTP/2 stream's trailers).
    #[inline]
    pub fn feed_parts(
        &mut self,
        data: &[u8],
        mut payload: impl FnMut(&[u8]),
        mut trailer: impl FnMut(&[u8]),
    ) -> Result<usize, BodyError> {
        match self.state {
            State::Done => Ok(0),
            State::UntilClose => {
                payload(data);
                Ok(data.len())
            }
            State::Length(left) => {
                let take = (data.len() as u64).min(left);
                payload(&data[..take as usize]);
                let left = left - take;
                self.state = if left == 0 {
                    State::Done
                } else {
                    State::Length(left)
                };
                Ok(take as usize)
            }
            State::Chunked(mut c) => {
                let mut i = 0;
                while i < data.len() {
                    match c {
                        // Data is taken as a run, not a byte at a time.
                        Chunk::Data(left) => {
                            let take = ((data.len() - i) as u64).min(left);
                            payload(&data[i..i + take as usize]);
                            i += take as usize;
                            let left = left - take;
                            c = if left == 0 {
                                Chunk::DataCr
                            } else {
                                Chunk::Data(left)
                            };
                            continue;
                        }
                        Chunk::FinalLf => {
                            if data[i] != b'\n' {
                                return Err(BodyError("expected LF after last chunk"));
                            }
                            self.state = State::Done;
                            return Ok(i + 1);
                        }
                        _ => {
                            let before = c;
                            c = c.after(data[i])?;
                            if matches!(
                                c,
                                Chunk::TrailerName | Chunk::TrailerLine | Chunk::TrailerLineLf
                            ) || before == Chunk::TrailerLineLf
                            {
                                trailer(&data[i..i + 1]);
                            }
                        }
                    }
                    i += 1;
                }
                self.state = State::Chunked(c);
                Ok(data.len())
            }
        }
    }
}

impl Chunk {
    /// Where the chunked framing stands after byte `b` (in a size line, an extension, the CRLF
    /// after data, a trailer); `Data` and `FinalLf` are `feed`'s.
    fn after(self, b: u8) -> Result<Chunk, BodyError> {
        Ok(match self {
            Chunk::Size { digits, value } => match hex(b) {
                Some(d) => {
                    if digits >= 15 {
                        return Err(BodyError("chunk size too large"));
                    }
                    Chunk::Size {
                        digits: digits + 1,
                        value: value << 4 | u64::from(d),
                    }
                }
                None if digits == 0 => return Err(BodyError("chunk size missing")),
                None if b == b'\r' => Chunk::SizeLf { value },
                // Extensions run to the end of the line. Whitespace after the
                // size may only end the line: `5 ;ext` is read differently by
                // different parsers (h11 refuses it), so it is refused here.
                None if b == b';' => Chunk::Ext { value },
                None if b == b' ' || b == b'\t' => Chunk::SizeWs { value },
                None => return Err(BodyError("invalid chunk size")),
            },
            Chunk::SizeWs { value } => match b {
                b' ' | b'\t' => Chunk::SizeWs { value },
                b'\r' => Chunk::SizeLf { value },
                _ => return Err(BodyError("invalid chunk size")),
            },
            Chunk::Ext { value } => {
                if b == b'\r' {
                    Chunk::SizeLf { value }
                } else if field_byte(b) {
                    Chunk::Ext { value }
                } else {
                    return Err(BodyError("control byte in chunk extension"));
                }
            }
            Chunk::SizeLf { value } => {
                if b != b'\n' {
                    return Err(BodyError("expected LF after chunk size"));
                }
                if value == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data(value)
                }
            }
            Chunk::DataCr => {
                if b != b'\r' {
                    return Err(BodyError("expected CRLF after chunk data"));
                }
                Chunk::DataLf
            }
            Chunk::DataLf => {
                if b != b'\n' {
                    return Err(BodyError("expected CRLF after chunk data"));
                }
                Chunk::Size {
                    digits: 0,
                    value: 0,
                }
            }
            Chunk::TrailerStart => {
                if b == b'\r' {
                    Chunk::FinalLf
                } else if token_byte(b) {
                    Chunk::TrailerName
                } else {
                    return Err(BodyError("invalid trailer field"));
                }
            }
            Chunk::TrailerName => {
                if b == b':' {
                    Chunk::TrailerLine
                } else if token_byte(b) {
                    Chunk::TrailerName
                } else {
                    return Err(BodyError("invalid trailer field"));
                }
            }
            Chunk::TrailerLine => {
                if b == b'\r' {
                    Chunk::TrailerLineLf
                } else if field_byte(b) {
                    Chunk::TrailerLine
                } else {
                    return Err(BodyError("control byte in trailer"));
                }
            }
            Chunk::TrailerLineLf => {
                if b != b'\n' {
                    return Err(BodyError("expected LF in trailer"));
                }
                Chunk::TrailerStart
            }
            Chunk::Data(_) | Chunk::FinalLf => self,
        })
    }
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(kind: BodyKind, data: &[u8], step: usize) -> Result<(usize, bool), BodyError> {
        let mut t = BodyTracker::new(kind);
        let mut used = 0;
        for piece in data.chunks(step.max(1)) {
            if t.done() {
                break;
            }
            used += t.feed(piece)?;
        }
        Ok((used, t.done()))
    }

    #[test]
    fn content_length() {
        assert_eq!(
            feed_all(BodyKind::Length(5), b"helloGET /", 3).unwrap(),
            (5, true)
        );
        assert_eq!(
            feed_all(BodyKind::Length(5), b"hel", 1).unwrap(),
            (3, false)
        );
        assert!(BodyTracker::new(BodyKind::Length(0)).done());
        assert!(BodyTracker::new(BodyKind::None).done());
    }

    #[test]
    fn the_payload_of_a_chunked_body_comes_without_its_framing_in_every_split() {
        let body =
            b"5 \r\nhello\r\n1a;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nnext";
        for step in 1..body.len() {
            let mut t = BodyTracker::new(BodyKind::Chunked);
            let mut got = Vec::new();
            let mut used = 0;
            for piece in body.chunks(step) {
                used += t.feed_payload(piece, |p| got.extend_from_slice(p)).unwrap();
            }
            assert_eq!(got, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(used, body.len() - 4);
        }
        // The trailer fields, line by line, as they went by.
        let mut t = BodyTracker::new(BodyKind::Chunked);
        let mut trailers = Vec::new();
        t.feed_parts(body, |_| {}, |b| trailers.extend_from_slice(b))
            .unwrap();
        assert_eq!(trailers, b"X-T: 1\r\n");
        let mut t = BodyTracker::new(BodyKind::Length(3));
        let mut got = Vec::new();
        assert_eq!(
            t.feed_payload(b"abcdef", |p| got.extend_from_slice(p)),
            Ok(3)
        );
        assert_eq!(got, b"abc");
    }

    #[test]
    fn chunked_in_every_split() {
        let body = b"5 \r\nhello\r\n1a;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        let mut data = body.to_vec();
        data.extend_from_slice(b"NEXT");
        for step in 1..data.len() {
            assert_eq!(
                feed_all(BodyKind::Chunked, &data, step).unwrap(),
                (body.len(), true),
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello",
            b"\r\n",
            b"ffffffffffffffffff\r\n",
            // Bare LF in an extension, in a trailer, after the last chunk.
            b"5;a=b\nc\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX-T: 1\nY: 2\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nnot a field\r\n\r\n",
            b"5 x\r\nhello\r\n",
            b"5 ;a=b\r\nhello\r\n",
        ] {
            assert!(
                feed_all(BodyKind::Chunked, bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn until_close_never_ends() {
        let mut t = BodyTracker::new(BodyKind::UntilClose);
        assert_eq!(t.feed(b"abc").unwrap(), 3);
        assert!(!t.done() && t.until_close());
    }
}
