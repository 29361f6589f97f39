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

use ringway_proxy::fuzzing;

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

/// Up to seven sorted places to cut an input of `len` bytes into reads.
fn cuts(r: &mut Rng, len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = (0..r.below(8)).map(|_| r.below(len + 1)).collect();
    c.sort();
    c
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
    run("request-head", REQUESTS, fuzzing::request_head);
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
    run("response-head", RESPONSES, fuzzing::response_head);
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
            for _ in 0..4 {
                fuzzing::chunked(input, &cuts(&mut r, input.len()));
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
        seeds.push(ringway_proxy::ws::frame(
            op,
            &vec![b'x'; len],
            mask.then_some([1, 2, 3, 4]),
        ));
    }
    let joined: Vec<u8> = seeds.concat();
    seeds.push(joined);
    let seed_refs: Vec<&[u8]> = seeds.iter().map(|s| s.as_slice()).collect();
    run("frame-tracker", &seed_refs, |input| {
        let mut r = Rng((input.len() as u64 * 40503) | 1);
        for _ in 0..4 {
            fuzzing::frames(input, &cuts(&mut r, input.len()));
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
    run("config", &[CONFIG.as_bytes()], fuzzing::config);
}

#[test]
fn fuzz_tls_records() {
    // Scripts a peer seals (mode bit 4): data, a KeyUpdate asking for ours, more data, an
    // alert (close_notify), data after it; in each record format.
    let script: &[u8] = &[
        0, 5, b'h', b'e', b'l', b'l', b'o', 3, 1, 1, 0, 3, b'a', b'b', b'c', 2, 5, 4, 0, 0, 1, 9,
        1, 2, 1, 0, 0, 2, b'z', b'z',
    ];
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for mode in [4u8, 5, 6, 7] {
        for cut in [0u8, 3, 77] {
            seeds.push([&[mode, cut][..], script].concat());
        }
    }
    // Raw bytes (mode bit 4 clear): record headers with odd lengths and types.
    seeds.push(vec![
        0, 9, 23, 3, 3, 0, 17, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
    ]);
    seeds.push(vec![1, 200, 21, 3, 3, 0x40, 0x01]);
    seeds.push(vec![2, 1, 22, 3, 1, 0, 0]);
    let seed_refs: Vec<&[u8]> = seeds.iter().map(|s| s.as_slice()).collect();
    run("tls-records", &seed_refs, fuzzing::tls_records);
}
