//! The properties every fuzz target checks, shared by the mutation fuzzer in `tests/fuzz.rs`
//! (run by `cargo test`) and the AFL++ harness in `fuzz-afl/` (coverage-guided). Each function
//! takes one input and panics when a property breaks; none of them is used by the proxy.
//!
//! - request and response heads: never a panic; what parses re-reads the same from its head
//!   alone; the rewritten head parses again with the same framing;
//! - chunked bodies and WebSocket frames: the same answer whatever the split into reads;
//! - config: never a panic; an error points into the file.
//! - TLS records (the receive path of ringway's record layer, `tls::records`): never a panic;
//!   records sealed by a peer (of every content type, any payload, key updates included) open
//!   the same whatever the split into reads, as do raw bytes; the plaintext of what opens is
//!   what the peer sealed as application data; a failure is a failure at any split.

use crate::config::Config;
use crate::http::{
    BodyKind, BodyTracker, ClientConnection, Forwarded, HeadLimits, parse_request, parse_response,
    rewrite_request, rewrite_response,
};
use crate::ws::{FrameTracker, parse_header};

/// Feed `data` in pieces cut at `cuts` (sorted; clamped to the data).
fn feed_split<T>(
    data: &[u8],
    cuts: &[usize],
    mut feed: impl FnMut(&[u8]) -> Result<usize, T>,
) -> Result<usize, T> {
    let mut used = 0;
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(start, data.len());
        used += feed(&data[start..c])?;
        start = c;
    }
    Ok(used)
}

/// A request head.
pub fn request_head(input: &[u8]) {
    let lim = HeadLimits {
        head_max: 4096,
        request_line_max: 1024,
        header_line_max: 1024,
    };
    let Ok(Some(req)) = parse_request(input, &lim) else {
        // Incomplete heads stay incomplete (or fail) when cut shorter.
        if let Ok(None) = parse_request(input, &lim) {
            for cut in [0, input.len() / 2, input.len().saturating_sub(1)] {
                assert!(
                    !matches!(parse_request(&input[..cut], &lim), Ok(Some(_))),
                    "a prefix of an incomplete head parsed complete"
                );
            }
        }
        return;
    };
    assert!(req.head_len <= input.len() && req.head_len <= lim.head_max);
    let again = parse_request(&input[..req.head_len], &lim)
        .expect("the head alone parses")
        .expect("the head alone is complete");
    assert_eq!(again, req, "the head re-read differently");
    for upgrade in [false, true] {
        let mut out = Vec::new();
        let fwd = Forwarded {
            upgrade,
            client_ip: std::net::IpAddr::from([10, 0, 0, 1]),
            proto: "http",
            default_host: "backend",
            keepalive: false,
            target: None,
            set: &[],
            no_body: false,
        };
        rewrite_request(&input[..req.head_len], &fwd, &mut out).expect("rewrite");
        // What the session writes: from the first parse's headers, not the bytes again.
        let mut headers = crate::http::Headers::new();
        let (_, lines) = crate::http::parse_request_in(input, &lim, &mut headers)
            .expect("parsed once")
            .expect("complete once");
        let mut session = Vec::new();
        crate::http::rewrite_request_parsed(&lines, &fwd, &mut session);
        assert_eq!(
            session, out,
            "rewritten from the parse, not as from the bytes"
        );
        let up = parse_request(&out, &HeadLimits::flat(1 << 20))
            .unwrap_or_else(|e| {
                panic!(
                    "rewritten head refused: {e:?}: {:?}",
                    String::from_utf8_lossy(&out)
                )
            })
            .expect("rewritten head complete");
        assert_eq!(up.head_len, out.len());
        assert_eq!(up.body, req.body, "framing changed on the way up");
        assert_eq!((&up.method, &up.path), (&req.method, &req.path));
        assert_eq!(up.upgrade.is_some(), upgrade && req.upgrade.is_some());
    }
}

/// A response head.
pub fn response_head(input: &[u8]) {
    for head_request in [false, true] {
        let Ok(Some(resp)) = parse_response(input, 4096, head_request) else {
            continue;
        };
        assert!(resp.head_len <= input.len());
        for conn in [
            ClientConnection::Upgrade,
            ClientConnection::KeepAlive,
            ClientConnection::Close,
        ] {
            let mut out = Vec::new();
            rewrite_response(&input[..resp.head_len], conn, resp.drop_length, &mut out)
                .expect("rewrite");
            let mut headers = crate::http::Headers::new();
            let (_, lines) =
                crate::http::parse_response_in(input, 4096, head_request, &mut headers)
                    .expect("parsed once")
                    .expect("complete once");
            let mut session = Vec::new();
            crate::http::rewrite_response_parsed(&lines, conn, resp.drop_length, &mut session);
            assert_eq!(
                session, out,
                "rewritten from the parse, not as from the bytes"
            );
            let back = parse_response(&out, 1 << 20, head_request)
                .unwrap_or_else(|e| panic!("rewritten head refused: {e:?}"))
                .expect("rewritten head complete");
            assert_eq!(back.status, resp.status);
            assert_eq!(back.body, resp.body, "framing changed on the way down");
            assert!(
                !back.drop_length,
                "Content-Length left beside Transfer-Encoding"
            );
        }
    }
}

/// A chunked body, read whole and in pieces cut at `cuts` (sorted).
pub fn chunked(input: &[u8], cuts: &[usize]) {
    let whole = {
        let mut t = BodyTracker::new(BodyKind::Chunked);
        t.feed(input).map(|n| (n, t.done()))
    };
    let mut t = BodyTracker::new(BodyKind::Chunked);
    let split = feed_split(
        input,
        cuts,
        |piece| if t.done() { Ok(0) } else { t.feed(piece) },
    )
    .map(|n| (n, t.done()));
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "split at {cuts:?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("split at {cuts:?}: {whole:?} vs {split:?}"),
    }
    if let Ok((n, done)) = whole {
        assert!(n <= input.len());
        if !done {
            assert_eq!(n, input.len(), "an unfinished body takes every byte");
        }
    }
}

/// WebSocket frames, walked with the one-shot header parser and tracked in pieces cut at
/// `cuts` (sorted).
pub fn frames(input: &[u8], cuts: &[usize]) {
    let (mut frames, mut pos, mut bad, mut boundary) = (0u64, 0usize, false, true);
    while pos < input.len() {
        match parse_header(&input[pos..]) {
            Ok(Some(h)) => {
                let end = (pos + h.header_len) as u64 + h.len;
                if end <= input.len() as u64 {
                    frames += 1;
                    pos = end as usize;
                } else {
                    boundary = false;
                    break;
                }
            }
            Ok(None) => {
                boundary = false;
                break;
            }
            Err(_) => {
                bad = true;
                break;
            }
        }
    }
    let mut t = FrameTracker::default();
    let mut seen = 0;
    let res = feed_split(input, cuts, |piece| {
        t.feed(piece).map(|n| {
            seen += n;
            0
        })
    });
    assert_eq!(res.is_err(), bad, "split at {cuts:?}");
    if !bad {
        assert_eq!(seen, frames, "split at {cuts:?}");
        assert_eq!(t.at_boundary(), boundary, "split at {cuts:?}");
    }
}

/// A config file's text.
pub fn config(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    match Config::parse("fuzz.toml", text) {
        Ok(c) => {
            let _ = c.describe();
            for i in 0..c.servers.len() {
                let _ = c.find_location(i, b"/ws/x");
            }
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            assert!(e.line <= lines + 1, "line {} of {lines}: {e}", e.line);
            assert!(e.to_string().starts_with("fuzz.toml:"), "{e}");
        }
    }
}

/// The record layer's receive path. The first byte picks the record format (TLS 1.3 or 1.2,
/// ChaCha20-Poly1305 or AES-256-GCM) and whether the rest is raw ciphertext or a script of
/// records a peer seals: `[type, length, payload…]` repeated (a type of 0 means application
/// data, 1 an alert, 2 a handshake message, 3 a KeyUpdate — real sealing with the peer's
/// current keys, so the receiver's checks past decryption are reached). The second byte seeds
/// the cuts.
pub fn tls_records(input: &[u8]) {
    use crate::tls::records::{Records, StandIn};
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let Some((&cut_seed, body)) = rest.split_first() else {
        return;
    };
    let tls13 = mode & 1 == 0;
    let chacha = mode & 2 == 0;
    let a = ([7u8; 32], [1u8; 12]);
    let b = ([9u8; 32], [2u8; 12]);
    let version = if tls13 {
        rustls::ProtocolVersion::TLSv1_3
    } else {
        rustls::ProtocolVersion::TLSv1_2
    };
    let make = |tx: ([u8; 32], [u8; 12]), rx: ([u8; 32], [u8; 12])| {
        let k = StandIn {
            version,
            chacha,
            tx,
            rx,
        };
        let (t, r) = (k.secrets(tx), k.secrets(rx));
        Records::from_secrets(t, r, k).expect("records on fixed secrets")
    };
    // The wire: the input itself, or the records a peer seals from the script.
    let mut expected = Vec::new();
    let wire = if mode & 4 == 0 {
        body.to_vec()
    } else {
        let mut peer = make(a, b);
        let mut wire = Vec::new();
        let mut s = body;
        while let [kind, len, tail @ ..] = s {
            let n = usize::from(*len).min(tail.len());
            let (payload, next) = tail.split_at(n);
            s = next;
            let r = match kind % 4 {
                0 => {
                    expected.extend_from_slice(payload);
                    peer.seal(payload, &mut wire)
                }
                1 => peer.seal_raw(21, payload, &mut wire),
                2 => peer.seal_raw(22, payload, &mut wire),
                _ if tls13 => {
                    // A KeyUpdate the peer sends and moves to: the receiver must follow.
                    let request = payload.first().copied().unwrap_or(0) & 1;
                    peer.seal_raw(22, &[24, 0, 0, 1, request], &mut wire)
                        .and_then(|()| peer.rotate_tx())
                }
                _ => {
                    if *kind == 23 {
                        expected.extend_from_slice(payload);
                    }
                    peer.seal_raw(*kind, payload, &mut wire)
                }
            };
            if r.is_err() {
                break;
            }
        }
        wire
    };
    // Read whole, then cut at places the second byte chooses.
    let read = |cuts: &[usize]| -> (Result<(), String>, Vec<u8>, bool) {
        let mut rx = make(b, a);
        let mut pending = Vec::new();
        let mut plain = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&wire.len())) {
            let c = c.clamp(start, wire.len());
            pending.extend_from_slice(&wire[start..c]);
            start = c;
            match rx.open(&mut pending) {
                Ok((n, used)) => {
                    assert!(n <= used && used <= pending.len(), "open: {n} {used}");
                    plain.extend_from_slice(&pending[..n]);
                    pending.drain(..used);
                }
                Err(e) => return (Err(format!("{e:?}")), plain, rx.peer_closed()),
            }
        }
        assert!(
            pending.len() < 5 + crate::tls::records::CIPHER_MAX,
            "more than a record left unread"
        );
        (Ok(()), plain, rx.peer_closed())
    };
    let whole = read(&[]);
    let mut cuts: Vec<usize> = (0..usize::from(cut_seed % 8))
        .map(|i| (usize::from(cut_seed) * 31 + i * 977) % (wire.len() + 1))
        .collect();
    cuts.sort_unstable();
    let split = read(&cuts);
    assert_eq!(
        whole.0.is_ok(),
        split.0.is_ok(),
        "whole: {:?}, split: {:?}",
        whole.0,
        split.0
    );
    match &whole.0 {
        Ok(()) => {
            assert_eq!(whole.1, split.1, "the split changed the plaintext");
            assert_eq!(whole.2, split.2, "the split changed close_notify");
            if mode & 4 != 0 && !whole.2 {
                assert_eq!(whole.1, expected, "the plaintext is what the peer sealed");
            }
        }
        Err(_) => assert!(
            expected.starts_with(&split.1) || mode & 4 == 0,
            "plaintext before a failure is not what the peer sealed"
        ),
    }
    if mode & 4 != 0 && whole.0.is_ok() && !whole.2 {
        assert!(expected.starts_with(&whole.1));
    }
}
