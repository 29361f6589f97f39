//! The connection against frames written by hand: each answer RFC 9113 asks for, and the
//! bounds on a hostile peer.

use super::*;
use crate::h2::fields::encode_field;

#[derive(Default)]
struct Rec {
    requests: Vec<(u32, Request, bool)>,
    data: Vec<(u32, Vec<u8>, bool)>,
    trailers: Vec<u32>,
    resets: Vec<(u32, Code)>,
    writable: Vec<u32>,
}

impl Handler for Rec {
    fn request(&mut self, stream: u32, req: Request, end: bool) {
        self.requests.push((stream, req, end));
    }
    fn data(&mut self, stream: u32, bytes: &[u8], end: bool) {
        match self.data.last_mut() {
            Some((s, b, e)) if *s == stream && !*e => {
                b.extend_from_slice(bytes);
                *e = end;
            }
            _ => self.data.push((stream, bytes.to_vec(), end)),
        }
    }
    fn trailers(&mut self, stream: u32, _fields: crate::h2::fields::FieldList) {
        self.trailers.push(stream);
    }
    fn reset(&mut self, stream: u32, code: Code) {
        self.resets.push((stream, code));
    }
    fn writable(&mut self, stream: u32) {
        self.writable.push(stream);
    }
}

/// Frames this side wrote: (kind, flags, stream, payload).
fn frames(out: &mut Vec<u8>) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at + HEAD_LEN <= out.len() {
        let h = Head::parse(out[at..at + HEAD_LEN].try_into().unwrap());
        let end = at + HEAD_LEN + h.len as usize;
        v.push((h.kind, h.flags, h.stream, out[at + HEAD_LEN..end].to_vec()));
        at = end;
    }
    assert_eq!(at, out.len(), "a partial frame in the output");
    out.clear();
    v
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Head {
        len: payload.len() as u32,
        kind,
        flags,
        stream,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

fn get_block(path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "h"),
    ] {
        encode_field(&mut b, n.as_bytes(), v.as_bytes());
    }
    b
}

fn post_block(len: Option<usize>) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/p"),
        (":authority", "h"),
    ] {
        encode_field(&mut b, n.as_bytes(), v.as_bytes());
    }
    if let Some(l) = len {
        encode_field(&mut b, b"content-length", l.to_string().as_bytes());
    }
    b
}

/// A connection past its preface and first SETTINGS, its output so far dropped.
fn open(settings: Settings) -> (Connection, Rec) {
    let mut c = Connection::new(settings);
    let mut r = Rec::default();
    let mut hello = frame::PREFACE.to_vec();
    hello.extend(raw(kind::SETTINGS, 0, 0, &[]));
    c.received(&hello, 0, &mut r).unwrap();
    let f = frames(c.out());
    assert_eq!(
        f.iter().map(|f| f.0).collect::<Vec<_>>(),
        [kind::SETTINGS, kind::WINDOW_UPDATE, kind::SETTINGS]
    );
    assert_eq!(f[2].1, flag::ACK);
    (c, r)
}

fn goaway_code(f: &[(u8, u8, u32, Vec<u8>)]) -> Option<Code> {
    f.iter()
        .find(|f| f.0 == kind::GOAWAY)
        .map(|f| Code::from_u32(u32::from_be_bytes(f.3[4..8].try_into().unwrap())))
}

fn rst_of(f: &[(u8, u8, u32, Vec<u8>)], stream: u32) -> Option<Code> {
    f.iter()
        .find(|f| f.0 == kind::RST_STREAM && f.2 == stream)
        .map(|f| Code::from_u32(u32::from_be_bytes(f.3[..4].try_into().unwrap())))
}

#[test]
fn this_sides_settings_announce_the_limits_and_rfc_8441() {
    let mut c = Connection::new(Settings {
        max_streams: 7,
        window: 1000,
        max_header_list: 900,
        connect_protocol: true,
    });
    let f = frames(c.out());
    let values: Vec<(u16, u32)> = f[0]
        .3
        .chunks(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    assert!(values.contains(&(setting::MAX_CONCURRENT_STREAMS, 7)));
    assert!(values.contains(&(setting::INITIAL_WINDOW_SIZE, 1000)));
    assert!(values.contains(&(setting::MAX_HEADER_LIST_SIZE, 900)));
    assert!(values.contains(&(setting::ENABLE_CONNECT_PROTOCOL, 1)));
    let mut off = Connection::new(Settings {
        connect_protocol: false,
        ..Settings::default()
    });
    let f = frames(off.out());
    assert!(
        !f[0]
            .3
            .chunks(6)
            .any(|s| u16::from_be_bytes([s[0], s[1]]) == setting::ENABLE_CONNECT_PROTOCOL)
    );
}

#[test]
fn a_wrong_preface_or_a_first_frame_other_than_settings_ends_the_connection() {
    let mut c = Connection::new(Settings::default());
    frames(c.out());
    assert_eq!(
        c.received(b"GET / HTTP/1.1\r\n\r\n", 0, &mut Rec::default()),
        Err(Code::Protocol)
    );
    assert_eq!(goaway_code(&frames(c.out())), Some(Code::Protocol));
    let mut c = Connection::new(Settings::default());
    let mut bytes = frame::PREFACE.to_vec();
    bytes.extend(raw(kind::PING, 0, 0, &[0; 8]));
    assert_eq!(
        c.received(&bytes, 0, &mut Rec::default()),
        Err(Code::Protocol)
    );
    // Nothing more is read once the connection is dead.
    assert_eq!(
        c.received(&raw(kind::SETTINGS, 0, 0, &[]), 0, &mut Rec::default()),
        Err(Code::Protocol)
    );
}

#[test]
fn a_request_and_its_answer_in_every_split_of_the_input() {
    let mut input = raw(kind::HEADERS, flag::END_HEADERS, 1, &post_block(Some(11)));
    input.extend(raw(
        kind::DATA,
        flag::PADDED,
        1,
        &[3, b'h', b'e', b'l', b'l', b'o', 0, 0, 0],
    ));
    input.extend(raw(kind::DATA, flag::END_STREAM, 1, b" world"));
    for step in [1, 2, 3, 7, 9, 10, 64] {
        let (mut c, mut r) = open(Settings::default());
        for piece in input.chunks(step) {
            c.received(piece, 0, &mut r).unwrap();
        }
        assert_eq!(r.requests.len(), 1, "step {step}");
        assert_eq!(r.requests[0].1.method, b"POST");
        assert!(!r.requests[0].2);
        assert_eq!(
            r.data,
            vec![(1, b"hello world".to_vec(), true)],
            "step {step}"
        );
        assert!(c.is_open(1));
        assert!(c.respond(1, 200, &[(b"content-type", b"text/plain")], false));
        assert_eq!(c.send_data(1, b"ok", true), 2);
        assert!(!c.is_open(1));
        let f = frames(c.out());
        let kinds: Vec<u8> = f.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [kind::HEADERS, kind::DATA]);
        assert_eq!(f[1].1, flag::END_STREAM);
        let got = loona_hpack::Decoder::new().decode(&f[0].3).unwrap();
        assert_eq!(got[0], (b":status".to_vec(), b"200".to_vec()));
    }
}

#[test]
fn a_stream_past_its_window_is_reset_and_the_others_go_on() {
    let (mut c, mut r) = open(Settings {
        window: 10,
        ..Settings::default()
    });
    let mut input = raw(kind::HEADERS, flag::END_HEADERS, 1, &post_block(None));
    input.extend(raw(kind::HEADERS, flag::END_HEADERS, 3, &post_block(None)));
    input.extend(raw(kind::DATA, 0, 1, &[1; 11]));
    input.extend(raw(kind::DATA, 0, 3, &[3; 10]));
    c.received(&input, 0, &mut r).unwrap();
    assert_eq!(rst_of(&frames(c.out()), 1), Some(Code::FlowControl));
    assert_eq!(r.resets, [(1, Code::FlowControl)]);
    assert_eq!(r.data, [(3, vec![3; 10], false)]);
    // Stream 3's credit comes back once its bytes are passed on, not before.
    assert!(frames(c.out()).is_empty());
    c.consumed(3, 10);
    let f = frames(c.out());
    assert_eq!(
        f,
        [(kind::WINDOW_UPDATE, 0, 3, 10u32.to_be_bytes().to_vec())]
    );
    c.received(&raw(kind::DATA, flag::END_STREAM, 3, &[3; 10]), 0, &mut r)
        .unwrap();
    assert_eq!(r.data[0].1.len(), 20);
}

#[test]
fn sending_waits_for_the_peers_window() {
    let (mut c, mut r) = open(Settings::default());
    // The peer allows 5 bytes per stream.
    let mut s = Vec::new();
    s.extend_from_slice(&setting::INITIAL_WINDOW_SIZE.to_be_bytes());
    s.extend_from_slice(&5u32.to_be_bytes());
    let mut input = raw(kind::SETTINGS, 0, 0, &s);
    input.extend(raw(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &get_block("/"),
    ));
    c.received(&input, 0, &mut r).unwrap();
    c.respond(1, 200, &[], false);
    assert_eq!(c.send_data(1, b"0123456789", true), 5);
    assert!(c.is_open(1));
    assert_eq!(c.send_data(1, b"56789", true), 0);
    c.received(
        &raw(kind::WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()),
        0,
        &mut r,
    )
    .unwrap();
    assert_eq!(r.writable, [1]);
    assert_eq!(c.send_data(1, b"56789", true), 5);
    assert!(!c.is_open(1));
    let f = frames(c.out());
    let data: Vec<(u8, usize)> = f
        .iter()
        .filter(|f| f.0 == kind::DATA)
        .map(|f| (f.1, f.3.len()))
        .collect();
    assert_eq!(data, [(0, 5), (flag::END_STREAM, 5)]);
}

#[test]
fn a_window_past_2_31_is_a_flow_control_error() {
    let (mut c, mut r) = open(Settings::default());
    c.received(
        &raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &get_block("/"),
        ),
        0,
        &mut r,
    )
    .unwrap();
    c.received(
        &raw(kind::WINDOW_UPDATE, 0, 1, &frame::MAX_WINDOW.to_be_bytes()),
        0,
        &mut r,
    )
    .unwrap();
    assert_eq!(rst_of(&frames(c.out()), 1), Some(Code::FlowControl));
    assert_eq!(
        c.received(
            &raw(kind::WINDOW_UPDATE, 0, 0, &frame::MAX_WINDOW.to_be_bytes()),
            0,
            &mut r
        ),
        Err(Code::FlowControl)
    );
    let (mut c, mut r) = open(Settings::default());
    assert_eq!(
        c.received(
            &raw(kind::WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()),
            0,
            &mut r
        ),
        Err(Code::Protocol)
    );
}

#[test]
fn frames_break_the_rules_each_get_rfc_9113s_answer() {
    type Case = (&'static str, Vec<u8>, Result<(), Code>);
    let hdr = |flags, stream| raw(kind::HEADERS, flags, stream, &get_block("/"));
    let cases: Vec<Case> = vec![
        (
            "a frame past 16 KiB",
            raw(kind::DATA, 0, 1, &vec![0; 16_385]),
            Err(Code::FrameSize),
        ),
        (
            "DATA on stream 0",
            raw(kind::DATA, 0, 0, b"x"),
            Err(Code::Protocol),
        ),
        (
            "DATA on an idle stream",
            raw(kind::DATA, 0, 5, b"x"),
            Err(Code::Protocol),
        ),
        (
            "HEADERS on stream 0",
            hdr(flag::END_HEADERS, 0),
            Err(Code::Protocol),
        ),
        (
            "HEADERS on an even stream",
            hdr(flag::END_HEADERS, 2),
            Err(Code::Protocol),
        ),
        (
            "PUSH_PROMISE from a client",
            raw(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2]),
            Err(Code::Protocol),
        ),
        (
            "SETTINGS on a stream",
            raw(kind::SETTINGS, 0, 1, &[]),
            Err(Code::Protocol),
        ),
        (
            "SETTINGS of 5 bytes",
            raw(kind::SETTINGS, 0, 0, &[0; 5]),
            Err(Code::FrameSize),
        ),
        (
            "a SETTINGS ACK with a payload",
            raw(kind::SETTINGS, flag::ACK, 0, &[0; 6]),
            Err(Code::FrameSize),
        ),
        (
            "ENABLE_PUSH 2",
            raw(kind::SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
            Err(Code::Protocol),
        ),
        (
            "a window of 2^31",
            raw(kind::SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            Err(Code::FlowControl),
        ),
        (
            "a frame size under 16 KiB",
            raw(kind::SETTINGS, 0, 0, &[0, 5, 0, 0, 0x3f, 0xff]),
            Err(Code::Protocol),
        ),
        (
            "PING on a stream",
            raw(kind::PING, 0, 1, &[0; 8]),
            Err(Code::Protocol),
        ),
        (
            "PING of 7 bytes",
            raw(kind::PING, 0, 0, &[0; 7]),
            Err(Code::FrameSize),
        ),
        (
            "GOAWAY on a stream",
            raw(kind::GOAWAY, 0, 1, &[0; 8]),
            Err(Code::Protocol),
        ),
        (
            "RST_STREAM on stream 0",
            raw(kind::RST_STREAM, 0, 0, &[0; 4]),
            Err(Code::Protocol),
        ),
        (
            "RST_STREAM on an idle stream",
            raw(kind::RST_STREAM, 0, 9, &[0; 4]),
            Err(Code::Protocol),
        ),
        (
            "RST_STREAM of 3 bytes",
            raw(kind::RST_STREAM, 0, 1, &[0; 3]),
            Err(Code::FrameSize),
        ),
        (
            "WINDOW_UPDATE of 3 bytes",
            raw(kind::WINDOW_UPDATE, 0, 0, &[0; 3]),
            Err(Code::FrameSize),
        ),
        (
            "WINDOW_UPDATE on an idle stream",
            raw(kind::WINDOW_UPDATE, 0, 9, &[0, 0, 0, 1]),
            Err(Code::Protocol),
        ),
        (
            "PRIORITY on stream 0",
            raw(kind::PRIORITY, 0, 0, &[0; 5]),
            Err(Code::Protocol),
        ),
        (
            "CONTINUATION with no block open",
            raw(kind::CONTINUATION, flag::END_HEADERS, 1, &[]),
            Err(Code::Protocol),
        ),
        (
            "HPACK garbage",
            raw(
                kind::HEADERS,
                flag::END_HEADERS,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
            Err(Code::Compression),
        ),
        (
            "padding longer than the frame",
            raw(
                kind::HEADERS,
                flag::END_HEADERS | flag::PADDED,
                1,
                &[200, 0x82],
            ),
            Err(Code::Protocol),
        ),
        ("an unknown frame type", raw(0x10, 0, 0, &[1, 2, 3]), Ok(())),
        (
            "an unknown setting",
            raw(kind::SETTINGS, 0, 0, &[0, 0x99, 0, 0, 0, 1]),
            Ok(()),
        ),
    ];
    for (what, bytes, want) in cases {
        let (mut c, mut r) = open(Settings::default());
        assert_eq!(c.received(&bytes, 0, &mut r), want, "{what}");
        let f = frames(c.out());
        assert_eq!(goaway_code(&f), want.err(), "{what}: {f:?}");
    }
}

#[test]
fn a_header_list_past_the_limit_is_answered_431() {
    let (mut c, mut r) = open(Settings {
        max_header_list: 300,
        ..Settings::default()
    });
    let mut b = get_block("/");
    encode_field(&mut b, b"x-big", &[b'v'; 400]);
    c.received(&raw(kind::HEADERS, flag::END_HEADERS, 1, &b), 0, &mut r)
        .unwrap();
    let f = frames(c.out());
    assert_eq!(f[0].0, kind::HEADERS);
    assert_eq!(
        loona_hpack::Decoder::new().decode(&f[0].3).unwrap()[0].1,
        b"431"
    );
    assert_eq!(rst_of(&f, 1), Some(Code::NoError));
    assert!(r.requests.is_empty());
}

#[test]
fn a_continuation_flood_ends_the_connection() {
    // Empty CONTINUATIONs: the frame count bounds them.
    let (mut c, mut r) = open(Settings::default());
    let mut input = raw(kind::HEADERS, 0, 1, &get_block("/"));
    for _ in 0..=MAX_CONTINUATIONS {
        input.extend(raw(kind::CONTINUATION, 0, 1, &[]));
    }
    assert_eq!(c.received(&input, 0, &mut r), Err(Code::EnhanceYourCalm));
    // Full ones: the byte count bounds them.
    let (mut c, mut r) = open(Settings {
        max_header_list: 1_000,
        ..Settings::default()
    });
    let mut input = raw(kind::HEADERS, 0, 1, &get_block("/"));
    input.extend(raw(kind::CONTINUATION, 0, 1, &vec![0x82; 16_384]));
    input.extend(raw(kind::CONTINUATION, 0, 1, &vec![0x82; 16_384]));
    assert_eq!(c.received(&input, 0, &mut r), Err(Code::EnhanceYourCalm));
    // A block cut by another frame.
    let (mut c, mut r) = open(Settings::default());
    let mut input = raw(kind::HEADERS, 0, 1, &get_block("/"));
    input.extend(raw(kind::PING, 0, 0, &[0; 8]));
    assert_eq!(c.received(&input, 0, &mut r), Err(Code::Protocol));
    // A block split in three arrives as one request.
    let (mut c, mut r) = open(Settings::default());
    let b = get_block("/split");
    let mut input = raw(kind::HEADERS, flag::END_STREAM, 1, &b[..3]);
    input.extend(raw(kind::CONTINUATION, 0, 1, &b[3..6]));
    input.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 1, &b[6..]));
    c.received(&input, 0, &mut r).unwrap();
    assert_eq!(r.requests[0].1.path.as_deref(), Some(&b"/split"[..]));
    assert!(r.requests[0].2);
}

#[test]
fn rapid_reset_and_control_floods_spend_the_glitch_bucket() {
    type Flood = Box<dyn Fn(u32) -> Vec<u8>>;
    let floods: Vec<(&str, Flood)> = vec![
        (
            "rapid reset",
            Box::new(|i| {
                let id = 2 * i + 1;
                let mut v = raw(kind::HEADERS, flag::END_HEADERS, id, &get_block("/"));
                v.extend(raw(
                    kind::RST_STREAM,
                    0,
                    id,
                    &(Code::Cancel as u32).to_be_bytes(),
                ));
                v
            }),
        ),
        ("PING", Box::new(|_| raw(kind::PING, 0, 0, &[0; 8]))),
        ("SETTINGS", Box::new(|_| raw(kind::SETTINGS, 0, 0, &[]))),
        (
            "PRIORITY",
            Box::new(|i| raw(kind::PRIORITY, 0, 2 * i + 1, &[0, 0, 0, 0, 16])),
        ),
        (
            "empty DATA",
            Box::new(|i| {
                if i == 0 {
                    raw(kind::HEADERS, flag::END_HEADERS, 1, &post_block(None))
                } else {
                    raw(kind::DATA, 0, 1, &[])
                }
            }),
        ),
    ];
    for (what, f) in floods {
        let (mut c, mut r) = open(Settings::default());
        let mut ended = None;
        for i in 0..2 * GLITCH_BURST {
            // All at one instant: nothing drains.
            if let Err(code) = c.received(&f(i), 5_000, &mut r) {
                ended = Some((i, code));
                break;
            }
            c.out().clear();
        }
        let (at, code) = ended.unwrap_or_else(|| panic!("{what}: never ended"));
        assert_eq!(code, Code::EnhanceYourCalm, "{what}");
        assert!(at >= GLITCH_BURST - 2, "{what}: ended after {at}");
    }
    // The same frames spread over time are a well-behaved peer's.
    let (mut c, mut r) = open(Settings::default());
    for i in 0..5 * GLITCH_BURST {
        c.received(&raw(kind::PING, 0, 0, &[0; 8]), u64::from(i) * 20, &mut r)
            .unwrap();
    }
}

#[test]
fn goaway_takes_no_new_stream_and_lets_the_open_ones_finish() {
    let (mut c, mut r) = open(Settings::default());
    c.received(
        &raw(kind::HEADERS, flag::END_HEADERS, 1, &post_block(None)),
        0,
        &mut r,
    )
    .unwrap();
    c.goaway(Code::NoError);
    let f = frames(c.out());
    assert_eq!(goaway_code(&f), Some(Code::NoError));
    assert_eq!(u32::from_be_bytes(f[0].3[..4].try_into().unwrap()), 1);
    c.received(
        &raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            3,
            &get_block("/"),
        ),
        0,
        &mut r,
    )
    .unwrap();
    assert_eq!(rst_of(&frames(c.out()), 3), Some(Code::RefusedStream));
    assert_eq!(r.requests.len(), 1);
    assert!(!c.finished());
    c.received(&raw(kind::DATA, flag::END_STREAM, 1, b"last"), 0, &mut r)
        .unwrap();
    c.respond(1, 204, &[], true);
    assert!(c.finished());
}

#[test]
fn random_frames_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3_000 {
        let (mut c, mut r) = open(Settings {
            max_streams: 4,
            window: 100,
            ..Settings::default()
        });
        for _ in 0..20 {
            let k = (next() % 11) as u8;
            let flags = next() as u8;
            let stream = (next() % 8) as u32;
            let len = (next() % 40) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if k == kind::HEADERS && next() % 2 == 0 {
                p = get_block("/");
            }
            if c.received(&raw(k, flags, stream, &p), next() % 100_000, &mut r)
                .is_err()
            {
                break;
            }
            let id = (next() % 8) as u32;
            match next() % 4 {
                0 => {
                    c.respond(id, 200, &[], next() % 2 == 0);
                }
                1 => {
                    c.send_data(id, b"abc", next() % 2 == 0);
                }
                2 => c.consumed(id, (next() % 200) as usize),
                _ => c.reset(id, Code::Cancel),
            }
            frames(c.out());
        }
    }
}

mod carry;
mod streams;
