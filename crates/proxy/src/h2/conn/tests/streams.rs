//! Frames on one stream: errors that reset only that stream, closed streams and their
//! history, streams past the limit.

use super::*;

#[test]
fn frames_on_a_stream_break_the_rules_reset_only_that_stream() {
    let open_get = |c: &mut Connection, r: &mut Rec, id| {
        c.received(
            &raw(kind::HEADERS, flag::END_HEADERS, id, &post_block(None)),
            0,
            r,
        )
        .unwrap();
    };
    // Self-dependency, a PRIORITY of the wrong size, a zero WINDOW_UPDATE, DATA after
    // END_STREAM, trailers without END_STREAM, a content-length that DATA does not meet.
    let cases: Vec<(&str, Vec<u8>, Code)> = vec![
        (
            "PRIORITY on itself",
            raw(kind::PRIORITY, 0, 1, &[0, 0, 0, 1, 16]),
            Code::Protocol,
        ),
        (
            "PRIORITY of 4 bytes",
            raw(kind::PRIORITY, 0, 1, &[0; 4]),
            Code::FrameSize,
        ),
        (
            "a zero WINDOW_UPDATE",
            raw(kind::WINDOW_UPDATE, 0, 1, &[0; 4]),
            Code::Protocol,
        ),
        (
            "trailers without END_STREAM",
            raw(kind::HEADERS, flag::END_HEADERS, 1, &{
                let mut b = Vec::new();
                encode_field(&mut b, b"x-t", b"1");
                b
            }),
            Code::Protocol,
        ),
    ];
    for (what, bytes, want) in cases {
        let (mut c, mut r) = open(Settings::default());
        open_get(&mut c, &mut r, 1);
        open_get(&mut c, &mut r, 3);
        assert_eq!(c.received(&bytes, 0, &mut r), Ok(()), "{what}");
        let f = frames(c.out());
        assert_eq!(rst_of(&f, 1), Some(want), "{what}");
        assert_eq!(goaway_code(&f), None, "{what}");
        assert!(c.is_open(3), "{what}");
        assert_eq!(r.resets, [(1, want)], "{what}");
    }
    let (mut c, mut r) = open(Settings::default());
    c.received(
        &raw(kind::HEADERS, flag::END_HEADERS, 1, &post_block(Some(3))),
        0,
        &mut r,
    )
    .unwrap();
    c.received(&raw(kind::DATA, flag::END_STREAM, 1, b"ab"), 0, &mut r)
        .unwrap();
    assert_eq!(rst_of(&frames(c.out()), 1), Some(Code::Protocol));
    c.received(
        &raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            3,
            &post_block(Some(3)),
        ),
        0,
        &mut r,
    )
    .unwrap();
    assert_eq!(rst_of(&frames(c.out()), 3), Some(Code::Protocol));
    assert!(!c.is_open(3));
    // DATA after END_STREAM: STREAM_CLOSED.
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
    c.received(&raw(kind::DATA, 0, 1, b"x"), 0, &mut r).unwrap();
    assert_eq!(rst_of(&frames(c.out()), 1), Some(Code::StreamClosed));
}

#[test]
fn frames_on_closed_streams_get_the_answer_their_history_calls_for() {
    let post = |id| raw(kind::HEADERS, flag::END_HEADERS, id, &post_block(None));
    let get = |id| {
        raw(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &get_block("/"),
        )
    };
    // A stream this side reset: what the peer had already sent on it (DATA, and trailers
    // that add to HPACK's table) is dropped, and the connection goes on in step.
    let (mut c, mut r) = open(Settings::default());
    c.received(&post(1), 0, &mut r).unwrap();
    c.reset(1, Code::Cancel);
    frames(c.out());
    let mut trailers = Vec::new();
    trailers.extend_from_slice(&[0x40, 5]);
    trailers.extend_from_slice(b"x-seq");
    trailers.extend_from_slice(&[1, b'7']);
    let mut late = raw(kind::DATA, 0, 1, b"late");
    late.extend(raw(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &trailers,
    ));
    c.received(&late, 0, &mut r).unwrap();
    assert!(frames(c.out()).is_empty(), "ignored without a word");
    let mut b = get_block("/");
    b.push(0x80 | 62);
    c.received(&raw(kind::HEADERS, flag::END_HEADERS, 3, &b), 0, &mut r)
        .unwrap();
    assert_eq!(r.requests[1].1.field(b"x-seq"), Some(&b"7"[..]));
    assert!(r.data.is_empty());
    // A stream id the peer skipped was never opened: HEADERS on it is an unexpected stream
    // id (RFC 9113 §5.1.1).
    let (mut c, mut r) = open(Settings::default());
    c.received(&get(5), 0, &mut r).unwrap();
    assert_eq!(c.received(&get(3), 0, &mut r), Err(Code::Protocol));
    let (mut c, mut r) = open(Settings::default());
    c.received(&get(0x7fff_ffff), 0, &mut r).unwrap();
    assert_eq!(c.received(&get(1), 0, &mut r), Err(Code::Protocol));
    // A stream that was opened and has closed (the peer reset it): STREAM_CLOSED (§5.1).
    let (mut c, mut r) = open(Settings::default());
    c.received(&post(1), 0, &mut r).unwrap();
    c.received(&raw(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]), 0, &mut r)
        .unwrap();
    assert_eq!(c.received(&get(1), 0, &mut r), Err(Code::StreamClosed));
}

#[test]
fn streams_past_the_limit_are_refused_and_hpack_stays_in_step() {
    let (mut c, mut r) = open(Settings {
        max_streams: 2,
        ..Settings::default()
    });
    for id in [1, 3, 5] {
        // Each block adds an entry to the peer's dynamic table, which the next refers to.
        let mut b = get_block("/");
        b.push(0x40);
        b.push(5);
        b.extend_from_slice(b"x-seq");
        b.push(1);
        b.push(b'0' + id as u8);
        c.received(&raw(kind::HEADERS, flag::END_HEADERS, id, &b), 0, &mut r)
            .unwrap();
    }
    assert_eq!(r.requests.len(), 2);
    assert_eq!(rst_of(&frames(c.out()), 5), Some(Code::RefusedStream));
    c.reset(1, Code::Cancel);
    let mut b = get_block("/");
    b.push(0x80 | 62);
    c.received(&raw(kind::HEADERS, flag::END_HEADERS, 7, &b), 0, &mut r)
        .unwrap();
    assert_eq!(r.requests[2].1.field(b"x-seq"), Some(&b"5"[..]));
}
