//! A connection carried to another process (a binary upgrade) at any byte of its input goes
//! on exactly as one that was not: the same events, the same frames out.

use super::*;
use crate::wire::{R, W};

/// A client's bytes: its preface and SETTINGS, then requests whose header blocks use the
/// HPACK dynamic table (a reference encoder's), DATA on several streams (padded too), a
/// header block split over CONTINUATION frames, PINGs, WINDOW_UPDATEs, a reset.
fn client_bytes() -> Vec<u8> {
    let mut enc = loona_hpack::Encoder::new();
    let mut b = frame::PREFACE.to_vec();
    b.extend(raw(kind::SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
    let block = |enc: &mut loona_hpack::Encoder, path: &str, extra: &str| {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", path.as_bytes()),
            (b":authority", b"chat.example"),
            (b"x-extra", extra.as_bytes()),
        ];
        enc.encode(fields)
    };
    for (i, id) in [1u32, 3, 5].into_iter().enumerate() {
        let h = block(&mut enc, &format!("/s{i}"), &"e".repeat(40 + i));
        b.extend(raw(kind::HEADERS, flag::END_HEADERS, id, &h));
    }
    for k in 0..6u32 {
        let id = [1, 3, 5][k as usize % 3];
        let payload: Vec<u8> = (0..700 + k * 37).map(|x| (x * 7 + k) as u8).collect();
        b.extend(raw(kind::DATA, 0, id, &payload));
    }
    let mut padded = vec![5u8];
    padded.extend_from_slice(b"padded data");
    padded.extend_from_slice(&[0; 5]);
    b.extend(raw(kind::DATA, flag::PADDED, 3, &padded));
    b.extend(raw(kind::PING, 0, 0, b"12345678"));
    b.extend(raw(kind::WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes()));
    // A header block in three pieces, referring to the dynamic table.
    let h = block(&mut enc, "/s0", &"e".repeat(40));
    let (a, rest) = h.split_at(h.len() / 3);
    let (m, z) = rest.split_at(rest.len() / 2);
    b.extend(raw(kind::HEADERS, 0, 7, a));
    b.extend(raw(kind::CONTINUATION, 0, 7, m));
    b.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 7, z));
    b.extend(raw(kind::DATA, flag::END_STREAM, 7, b"last"));
    b.extend(raw(kind::RST_STREAM, 0, 5, &8u32.to_be_bytes()));
    b.extend(raw(kind::DATA, flag::END_STREAM, 1, b"one ends"));
    b
}

#[test]
fn a_connection_carried_at_any_byte_goes_on_as_one_that_was_not() {
    let input = client_bytes();
    let (mut whole, mut want) = (Connection::new(Settings::default()), Rec::default());
    whole.received(&input, 10, &mut want).unwrap();
    let want_out = frames(whole.out());
    assert_eq!(want.requests.len(), 4);
    // Every cut past the first SETTINGS (a connection that has not started is not carried).
    let start = frame::PREFACE.len() + HEAD_LEN + 6;
    let mut carried = 0;
    for cut in start..=input.len() {
        let (mut c, mut got) = (Connection::new(Settings::default()), Rec::default());
        c.received(&input[..cut], 10, &mut got).unwrap();
        let mut out = frames(c.out());
        c.carriable().unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let mut w = W(Vec::new());
        c.export(&mut w, 1_000);
        let mut r = R(&w.0);
        let mut c = Connection::import(Settings::default(), &mut r, 50).unwrap();
        assert!(r.done(), "cut {cut}: bytes left after the state");
        c.received(&input[cut..], 60, &mut got).unwrap();
        out.extend(frames(c.out()));
        assert_eq!(got.requests, want.requests, "cut {cut}");
        assert_eq!(got.data, want.data, "cut {cut}");
        assert_eq!(got.resets, want.resets, "cut {cut}");
        assert_eq!(out, want_out, "cut {cut}");
        carried += 1;
    }
    assert_eq!(carried, input.len() - start + 1);
}

#[test]
fn a_carried_state_out_of_bounds_is_refused_and_never_panics() {
    let input = client_bytes();
    let (mut c, mut rec) = (Connection::new(Settings::default()), Rec::default());
    c.received(&input[..input.len() / 2], 0, &mut rec).unwrap();
    frames(c.out());
    let mut w = W(Vec::new());
    c.export(&mut w, 0);
    let good = w.0;
    // Every prefix is cut short; every single byte changed is read or refused, never a panic.
    for n in 0..good.len() {
        assert!(Connection::import(Settings::default(), &mut R(&good[..n]), 0).is_err());
    }
    for i in 0..good.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut bad = good.clone();
            bad[i] = v;
            let _ = Connection::import(Settings::default(), &mut R(&bad), 0);
        }
    }
    // More streams than this side allows.
    let few = Settings {
        max_streams: 1,
        ..Settings::default()
    };
    assert!(Connection::import(few, &mut R(&good), 0).is_err());
}
