//! What the phases of a session own (`Phase` is in `mod.rs`): the per-request record, an
//! HTTP/1 exchange's state each way, a tunnel's heartbeats and Close frames, the lingering
//! close.

use crate::http::BodyTracker;
use crate::upstream::attempt::Attempt;

/// What a tunnel does besides forwarding (see `tunnel.rs`). Arrays are indexed by the side a
/// stream comes *from* (0: the client, 1: the upstream), as `Tunnel::frames` is.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// Ping a side after this many ms of silence from it (0: never), indexed by that side.
    pub every: [u32; 2],
    /// Close a pinged side that stays silent this long after the ping.
    pub timeout: u32,
    /// When our last ping to a side went out (0: none); it is answered once anything came
    /// from that side after it.
    pub pinged: [u64; 2],
    /// The tag of our last ping to a side: a Pong from it carrying that tag, or an earlier
    /// one of ours, is ours and is taken out of the stream (0: none expected).
    pub expect: [u64; 2],
    /// A frame waiting for the next frame boundary of the stream from a side, to go there.
    pub want: [Inject; 2],
    /// Opcode of the current frame of the stream from a side (`NO_OP`: not known).
    pub op: [u8; 2],
    /// A frame from a side is being gathered, to tell whether it is a Pong of ours (made at
    /// the first one: an idle tunnel's record stays small).
    pub gathering: [bool; 2],
    pub pong: Option<Box<[Vec<u8>; 2]>>,
    /// A Close of ours went toward a side (nothing more goes to it).
    pub closed: [bool; 2],
    /// When the tunnel ends if its peers have not both closed by then: `CLOSE_WAIT_MS` after a
    /// Close of ours went toward the client, sooner after a policy refused a frame (0: no
    /// close under way).
    pub close_by: u64,
    /// The client's Close reply has passed up: the close handshake is complete.
    pub replied: bool,
    /// The location's policy at frame boundaries (`filter.rs`), if any: while there is one,
    /// every frame's header is shown to it before the frame goes on.
    pub filter: Option<Box<dyn super::filter::FrameFilter>>,
    /// The splice of a bulk frame's payload from a side, while there is one (`splice.rs`).
    pub splice: [Option<Box<Splice>>; 2],
    /// A filter delayed a frame from a side: its bytes from that frame on, and until when;
    /// the side is not read meanwhile.
    pub paused: [Option<Box<Paused>>; 2],
    /// The next frame header from a side is a delayed one coming back: the filters judged it.
    pub judged: [bool; 2],
    /// When the tunnel's `max_lifetime` ends (worker clock, ms; 0: it has none, or it came).
    pub expires: u64,
    /// The code of the Close of ours that went toward a side (0: none), for the tunnel's
    /// record (`tunnel/seen.rs`).
    pub sent: [u16; 2],
    /// A lingering close after a refused frame (`Tunnel::refused`): the side it reads and
    /// drops (its index + 1; 0: none), and when it began. It ends when that side closes, or as
    /// `super::linger_end` says (then instead of `close_by`).
    pub lingering: u8,
    pub linger_began: u64,
}

/// What waits of a stream a filter delayed (`filter::Verdict::Delay`).
#[derive(Debug)]
pub(super) struct Paused {
    pub until: u64,
    pub bytes: Vec<u8>,
    /// The side ended its stream behind them: passed on after them.
    pub eof: bool,
}

/// One direction's splice of a frame's payload (`tunnel/splice.rs` moves it).
#[derive(Debug)]
pub(super) struct Splice {
    pub pipe: crate::reactor::Pipe,
    /// Bytes in the pipe, not yet on their way to the peer.
    pub held: u32,
    /// The source ended its stream (a splice read 0): passed on once the pipe is empty.
    pub eof: bool,
    /// When the pipe's bytes last found the peer's socket full (0: they did not), for
    /// `send_timeout`.
    pub stalled_ms: u64,
}

/// `Control::op` before the slow path has seen the frame's header.
pub(super) const NO_OP: u8 = 0xff;

/// A frame the proxy puts into a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Inject {
    #[default]
    None,
    Ping,
    /// The Close of a shutdown (`runtime.drain_close`).
    Drain,
    /// Close 1001 to a peer whose other side stopped answering heartbeats.
    GoingAway,
    /// A Close a filter asked for (`filter::Verdict::Close`).
    Close(u16, &'static str),
}

/// A request on its way: from the parsed head to the end of the response.
#[derive(Debug)]
pub(super) struct Exchange {
    pub req: Req,
    pub terms: Box<Terms>,
    /// What bytes from the upstream are now.
    pub downward: Downward,
}

/// Bytes from the client during an exchange.
#[derive(Debug)]
pub(super) enum Upward {
    /// The request body, counted off.
    Body(BodyTracker),
    /// After the body: the next request's bytes (or, for an upgrade, the first tunnel bytes),
    /// kept until the response says which they are.
    Hold(Vec<u8>),
}

/// Bytes from the upstream during an exchange.
#[derive(Debug)]
pub(super) enum Downward {
    /// Nothing expected yet: connecting.
    Connect(Connect),
    Head(Vec<u8>),
    Body(BodyTracker),
    /// The 101 went to the client: what the upstream sent after it (already passed on with
    /// it), for the tunnel's frame tracker; the exchange finishes into a tunnel. (A boxed
    /// slice, not a `Vec`: `Downward` then fits in 24 bytes, beside `Head`'s niche.)
    Upgraded(Box<[u8]>),
    /// The response is whole: the exchange finishes into the next request (`again`: the
    /// connection is kept), or into the end of the connection.
    Over {
        again: bool,
    },
    /// An `auth_request` subrequest allowed the request (its head and what followed, and what
    /// the answer gave it): the exchange finishes into that request, parsed again.
    Authorized(Box<(Vec<u8>, super::auth::Granted)>),
}

/// Where a connect attempt stands.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Connect {
    /// The attempt timed out; its cancel is on its way.
    pub timed_out: bool,
    /// Waiting for the previous upstream socket to finish closing.
    pub waiting: bool,
    /// The request went up to a server that then failed: what is left of it on that socket
    /// is dropped and `Exchange::resend` goes to the next one.
    pub resend: bool,
    /// limit_req delays the request until the phase's clock (no connect started yet).
    pub delayed: bool,
}

impl Exchange {
    /// The exchange of `req` whose head is queued toward the upstream: its connect starts after
    /// limit_req's `delay_ms` (the phase's clock is set to it), else as soon as no previous
    /// upstream socket is closing (`Session::after`).
    pub(super) fn to_connect(req: Req, terms: Box<Terms>, delay_ms: u64) -> Exchange {
        Exchange {
            req,
            terms,
            downward: Downward::Connect(Connect {
                waiting: delay_ms == 0,
                delayed: delay_ms > 0,
                ..Connect::default()
            }),
        }
    }

    /// Still connecting (or waiting to): nothing has come from an upstream for it yet.
    pub fn connecting(&self) -> bool {
        matches!(self.downward, Downward::Connect(_))
    }

    /// Waiting for the response head.
    pub fn awaiting_head(&self) -> bool {
        matches!(self.downward, Downward::Head(_))
    }

    /// The connect attempt, while there is one.
    pub fn connect(&mut self) -> Option<&mut Connect> {
        match &mut self.downward {
            Downward::Connect(c) => Some(c),
            _ => None,
        }
    }

    pub fn connect_timed_out(&self) -> bool {
        matches!(self.downward, Downward::Connect(c) if c.timed_out)
    }

    pub fn connect_waiting(&self) -> bool {
        matches!(self.downward, Downward::Connect(c) if c.waiting)
    }
}

/// The lingering close after an error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Linger {
    No,
    /// Linger once the answer is flushed.
    AfterFlush,
    /// Write side shut since `phase_ms`; discarding what the client sends until it closes or
    /// the time is up.
    On,
}

/// Per-request state: what a request keeps for as long as it lives, a tunnel included (its
/// log line, its server, its timeouts). 56 bytes, inline in every phase that has a request
/// (an idle tunnel holds no allocation for it); what only the exchange needs is in [`Terms`],
/// boxed.
#[derive(Debug)]
pub(super) struct Req {
    /// The request's method, Host, target and upgrade protocols, for the log and the 101
    /// check: one allocation.
    pub text: ReqText,
    pub started_ms: u64,
    /// Bytes from the client for this request (head included).
    pub bytes_in: u64,
    /// Bytes from the upstream for this request.
    pub bytes_out: u64,
    pub read_ms: u32,
    pub send_ms: u32,
    pub upstream: u16,
    /// Index of the server in use; `NO_PEER` before one is chosen (a sentinel, not an
    /// Option: two bytes less in a struct that lives as long as a tunnel).
    pub peer: u16,
    /// The status answered; 101 only once the 101 passed (the request is a tunnel).
    pub status: u16,
    /// Response bytes have been queued to the client.
    pub responded: bool,
    pub logged: bool,
}

/// What an exchange needs besides its [`Req`] and only while it runs: the server choice, the
/// connect and body timeouts, what the client asked and the server said about the
/// connection, the interim responses passed on, the state of the bytes from the client, and
/// the control the tunnel will carry. Boxed in the exchange (one allocation, as the server
/// choice alone was), so a tunnel keeps none of it, and the exchange is smaller than a tunnel.
#[derive(Debug)]
pub(super) struct Terms {
    /// Choosing a server and going on to the next: from routing until a server answered.
    pub attempt: Option<Attempt>,
    /// A tunnel's heartbeats and the proxy's own Close, made when an upgrade is routed to a
    /// location with a heartbeat or a filter; the tunnel takes it.
    pub ctl: Option<Box<Control>>,
    pub connect_ms: u32,
    pub body_ms: u32,
    /// Interim (1xx) responses passed on, and their bytes.
    pub interim: u8,
    pub interim_bytes: u16,
    pub keep_alive: bool,
    /// The upstream's response leaves its connection open (for the keepalive pool).
    pub up_keep: bool,
    /// What bytes from the client are now.
    pub upward: Upward,
    /// The location's number (`Config::location_id`), for the tunnel's message counters.
    pub loc: u16,
    /// This exchange is an `auth_request` subrequest: the request it asks about.
    pub auth: Option<Box<super::auth::Pending>>,
}

/// `Req::peer` before a server is chosen.
pub(super) const NO_PEER: u16 = u16::MAX;

pub(super) use crate::config::ms32;

/// A request's method, Host, target and the protocols it asked to upgrade to, in one
/// allocation: three `u16` ends (where the method, the Host and the target stop), then the four
/// texts end to end (the upgrade protocols run to the end). Sixteen bytes in `Req`, which a
/// tunnel keeps for as long as it lives.
#[derive(Debug)]
pub(super) struct ReqText(Box<[u8]>);

const ENDS: usize = 6;

impl ReqText {
    /// The four parts; each is cut to 16 KiB (a head is at most that much: nothing is lost).
    pub fn new(method: &str, host: &str, path: &str, upgrade: &str) -> ReqText {
        let cap = |s: &str| {
            let mut n = s.len().min(16 * 1024);
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            n
        };
        let parts = [method, host, path, upgrade];
        let mut all = Vec::with_capacity(ENDS + parts.iter().map(|p| cap(p)).sum::<usize>());
        all.extend_from_slice(&[0; ENDS]);
        for (i, p) in parts.iter().enumerate() {
            all.extend_from_slice(&p.as_bytes()[..cap(p)]);
            if i < 3 {
                let end = (all.len() - ENDS) as u16;
                all[2 * i..2 * i + 2].copy_from_slice(&end.to_le_bytes());
            }
        }
        ReqText(all.into_boxed_slice())
    }

    /// No text (no allocation): every part reads as `-`.
    pub fn none() -> ReqText {
        ReqText(Box::default())
    }

    fn part(&self, i: usize) -> &str {
        match self.bytes(i) {
            // Cut at char boundaries from `&str`s: always UTF-8.
            Some(b) => std::str::from_utf8(b).unwrap_or("-"),
            None => "-",
        }
    }

    /// Part `i` as bytes (no UTF-8 check, for a comparison); `None` without text.
    fn bytes(&self, i: usize) -> Option<&[u8]> {
        if self.0.len() < ENDS {
            return None;
        }
        let end_of = |k: usize| usize::from(u16::from_le_bytes([self.0[2 * k], self.0[2 * k + 1]]));
        let text = &self.0[ENDS..];
        let start = if i == 0 { 0 } else { end_of(i - 1) };
        let end = if i < 3 { end_of(i) } else { text.len() };
        Some(&text[start..end])
    }
}

impl Req {
    pub fn method(&self) -> &str {
        self.text.part(0)
    }

    pub fn host(&self) -> &str {
        self.text.part(1)
    }

    pub fn path(&self) -> &str {
        self.text.part(2)
    }

    /// The protocols the client asked to upgrade to ("" when not an upgrade).
    pub fn upgrade_proto(&self) -> &str {
        self.text.part(3)
    }

    /// Forwarded as an upgrade (an allowed protocol, HTTP/1.1: the text keeps the protocols
    /// only then). Read from the text, which an exchange always has.
    pub fn upgrading(&self) -> bool {
        self.text.bytes(3).is_some_and(|p| !p.is_empty())
    }

    /// A HEAD request (its response has no body). Read from the text, as `upgrading`.
    pub fn is_head(&self) -> bool {
        self.text.bytes(0) == Some(b"HEAD")
    }

    /// A request whose head could not be parsed (logged with `-` fields).
    pub fn unparsed(started_ms: u64, bytes_in: u64) -> Req {
        Req::new(ReqText::new("-", "-", "-", ""), started_ms, bytes_in)
    }

    /// A request with nothing decided yet but its text, start and head bytes.
    pub fn new(text: ReqText, started_ms: u64, bytes_in: u64) -> Req {
        Req {
            text,
            started_ms,
            bytes_in,
            bytes_out: 0,
            read_ms: 0,
            send_ms: 0,
            upstream: u16::MAX,
            peer: NO_PEER,
            status: 0,
            responded: false,
            logged: false,
        }
    }

    /// A 101 turned this request into a tunnel.
    pub fn tunnel(&self) -> bool {
        self.status == 101
    }
}

#[cfg(test)]
mod req_text_tests {
    use super::*;

    #[test]
    fn the_four_parts_come_back_as_given() {
        for (m, h, p, u) in [
            ("GET", "ws.example.com", "/chat?x=1", "websocket"),
            ("-", "-", "-", ""),
            ("", "", "", ""),
            ("POST", "ünïcode.example", "/ä/ö", ""),
        ] {
            let t = ReqText::new(m, h, p, u);
            assert_eq!([t.part(0), t.part(1), t.part(2), t.part(3)], [m, h, p, u]);
        }
        // Each part is cut to 16 KiB at a character boundary.
        let long = "é".repeat(10_000);
        let t = ReqText::new("GET", &long, "/", "");
        assert!(t.part(1).len() <= 16 * 1024 && long.starts_with(t.part(1)));
        assert_eq!(t.part(2), "/");
    }
}
