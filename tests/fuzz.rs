//! Fuzz targets for everything that reads bytes from the network or the operator: the request
//! head parser, the response head parser, the chunked decoder, the WebSocket frame tracker and
//! the config loader. cargo-fuzz needs a nightly compiler, which this toolchain does not have,
//! so each target is a seeded mutation fuzzer over a corpus of valid and hostile inputs, with
//! properties checked on every input (never a panic; the same answer whatever the split of
//! the input into reads; what is accepted re-reads the same way).
//!
//! `RINGWAY_FUZZ_ITERS` sets the inputs per target (default 20,000; a long run: 2,000,000),
//! `RINGWAY_FUZZ_SEED` the seed. Inputs that once broke a property live in
//! `tests/fuzz-corpus/<target>/` and are replayed first on every run; a failing input is
//! printed as hex so it can be added there.

mod common;

use std::path::Path;

use common::Rng;

use ringway::config::Config;
use ringway::http::{
    BodyKind, BodyTracker, ClientConnection, Forwarded, HeadLimits, parse_request, parse_response,
    rewrite_request, rewrite_response,
};
use ringway::ws::{FrameTracker, parse_header};

fn iters() -> usize {
    std::env::var("RINGWAY_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("RINGWAY_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x2545_f491_4f6c_dd1d)
}

/// A corpus entry mangled: bytes flipped, inserted, deleted, duplicated, spliced, cut.
fn mutate(r: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = corpus[r.below(corpus.len())].clone();
    for _ in 0..1 + r.below(5) {
        let at = r.below(v.len() + 1);
        match r.below(9) {
            0 if at < v.len() => v[at] = r.next() as u8,
            1 if at < v.len() => v[at] ^= 1 << r.below(8),
            2 => {
                const ODD: &[u8] = b"\r\n\0:; \t\x7f,\"=0fF-+\x80\xff";
                v.insert(at, ODD[r.below(ODD.len())]);
            }
            3 if at < v.len() => {
                let n = r.below(v.len() - at + 1);
                v.drain(at..at + n);
            }
            4 => {
                let end = (at + r.below(64)).min(v.len());
                let copy = v[at..end].to_vec();
                let to = r.below(v.len() + 1);
                v.splice(to..to, copy);
            }
            5 => {
                let other = &corpus[r.below(corpus.len())];
                let from = r.below(other.len() + 1);
                v.splice(at..at, other[from..].iter().copied());
            }
            6 => v.truncate(at),
            7 => {
                let n = r.below(300);
                v.splice(at..at, std::iter::repeat_n(b'a', n));
            }
            _ => {}
        }
    }
    v
}

/// Saved inputs of `target`, replayed before the random ones.
fn saved(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.into_iter().map(|(_, b)| b).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run `check` on the saved corpus, then on `iters()` mutations of `seeds` and the corpus;
/// report the first input that panics or breaks a property.
fn run(target: &str, seeds: &[&[u8]], check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    let replay = saved(target);
    corpus.extend(replay.iter().cloned());
    let mut r = Rng(seed() | 1);
    let n = iters();
    let inputs = replay
        .into_iter()
        .chain((0..n).map(|_| mutate(&mut r, &corpus)));
    let mut count = 0;
    for input in inputs {
        count += 1;
        let result = std::panic::catch_unwind(|| check(&input));
        if let Err(e) = result {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "{target}: input {count} broke a property: {why}\n  input (hex, save it as tests/fuzz-corpus/{target}/crash-NAME): {}\n  as text: {:?}",
                hex(&input),
                String::from_utf8_lossy(&input)
            );
        }
    }
    eprintln!("{target}: {count} inputs");
}

/// Feed `data` to a fresh tracker in pieces cut at `cuts`.
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

const REQUESTS: &[&[u8]] = &[
    b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close, X-A\r\nX-A: 1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET /%2e%2e/a HTTP/1.1\r\nHost: [::1]:80\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
];

#[test]
fn fuzz_request_head() {
    let lim = HeadLimits {
        head_max: 4096,
        request_line_max: 1024,
        header_line_max: 1024,
    };
    run("request-head", REQUESTS, |input| {
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
        // The head alone reads the same; what follows it does not change it.
        let again = parse_request(&input[..req.head_len], &lim)
            .unwrap()
            .unwrap();
        assert_eq!(again, req, "the head re-read differently");
        // The rewritten head is a valid head with the same framing.
        for upgrade in [false, true] {
            let mut out = Vec::new();
            let fwd = Forwarded {
                upgrade,
                client_ip: "10.0.0.1".parse().unwrap(),
                proto: "http",
                default_host: "backend",
            };
            rewrite_request(&input[..req.head_len], &fwd, &mut out).unwrap();
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
            assert_eq!((up.method, up.path), (req.method.clone(), req.path.clone()));
            assert_eq!(up.upgrade.is_some(), upgrade && req.upgrade.is_some());
        }
    });
}

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-B\r\nX-B: 2\r\n\r\nbody",
];

#[test]
fn fuzz_response_head() {
    run("response-head", RESPONSES, |input| {
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
                    .unwrap();
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
    });
}

#[test]
fn fuzz_chunked_body() {
    run(
        "chunked",
        &[
            b"5\r\nhello\r\n0\r\n\r\nNEXT",
            b"1a;name=v\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n0;x\r\nT: a\r\nU: b\r\n\r\n",
        ],
        |input| {
            let mut r = Rng((input.len() as u64 * 2654435761) | 1);
            let whole = {
                let mut t = BodyTracker::new(BodyKind::Chunked);
                t.feed(input).map(|n| (n, t.done()))
            };
            // Any split into reads gives the same answer.
            for _ in 0..4 {
                let mut cuts: Vec<usize> =
                    (0..r.below(6)).map(|_| r.below(input.len() + 1)).collect();
                cuts.sort();
                let mut t = BodyTracker::new(BodyKind::Chunked);
                let split = feed_split(
                    input,
                    &cuts,
                    |piece| {
                        if t.done() { Ok(0) } else { t.feed(piece) }
                    },
                )
                .map(|n| (n, t.done()));
                match (&whole, &split) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "split at {cuts:?}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("split at {cuts:?}: {whole:?} vs {split:?}"),
                }
            }
            if let Ok((n, done)) = whole {
                assert!(n <= input.len());
                if !done {
                    assert_eq!(n, input.len(), "an unfinished body takes every byte");
                }
            }
        },
    );
}

#[test]
fn fuzz_frame_tracker() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for (op, len, mask) in [
        (1u8, 5usize, true),
        (2, 126, false),
        (9, 0, true),
        (8, 2, false),
        (2, 70_000, false),
    ] {
        seeds.push(ringway::ws::frame(
            op,
            &vec![b'x'; len],
            mask.then_some([1, 2, 3, 4]),
        ));
    }
    let joined: Vec<u8> = seeds.concat();
    seeds.push(joined);
    let seed_refs: Vec<&[u8]> = seeds.iter().map(|s| s.as_slice()).collect();
    run("frame-tracker", &seed_refs, |input| {
        // Reference: walk the frames with the one-shot header parser.
        let mut frames = 0u64;
        let mut pos = 0usize;
        let mut bad = false;
        let mut boundary = true;
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
        let mut r = Rng((input.len() as u64 * 40503) | 1);
        for _ in 0..4 {
            let mut cuts: Vec<usize> = (0..r.below(8)).map(|_| r.below(input.len() + 1)).collect();
            cuts.sort();
            let mut t = FrameTracker::default();
            let res = feed_split(input, &cuts, |piece| t.feed(piece).map(|()| 0));
            assert_eq!(res.is_err(), bad, "split at {cuts:?}");
            if !bad {
                assert_eq!(t.frames, frames, "split at {cuts:?}");
                assert_eq!(t.at_boundary(), boundary, "split at {cuts:?}");
            }
        }
    });
}

const CONFIG: &str = r#"[runtime]
workers = 2
max_connections = 1000
shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:9900"

[[upstream]]
name = "ws"
servers = [{ addr = "127.0.0.1:9001", weight = 3 }, { addr = "127.0.0.1:9002", backup = true }]
source = "127.0.1.0/30"

[[server]]
listen = ["127.0.0.1:8080"]
server_name = ["ws.example.com", "*.example.org"]
header_timeout = 5
keepalive_requests = 10

[[server.location]]
path = "/ws/"
upstream = "ws"
read_timeout = "7d"
upgrade = ["websocket"]
"#;

#[test]
fn fuzz_config_loader() {
    run("config", &[CONFIG.as_bytes()], |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        match Config::parse("fuzz.toml", text) {
            Ok(c) => {
                // What was accepted describes itself without panicking, and routes.
                let _ = c.describe();
                for (i, _) in c.servers.iter().enumerate() {
                    let _ = c.find_location(i, b"/ws/x");
                }
            }
            Err(e) => {
                // Errors point into the file.
                let lines = text.lines().count().max(1);
                assert!(e.line <= lines + 1, "line {} of {lines}: {e}", e.line);
                assert!(e.to_string().starts_with("fuzz.toml:"), "{e}");
            }
        }
    });
}
