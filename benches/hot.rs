//! Microbenchmarks of the pieces on the proxy's hot paths, so that a user-space regression
//! shows at the function that caused it (`cargo bench --bench hot`; `scripts/bench.sh
//! --against OLD` measures the whole proxy). Each input is what the proxy sees in the
//! benchmarks of BENCHMARKS.md: a browser's WebSocket upgrade, a 101, 64-byte masked frames.
//! The pieces: head parse and rewrite, frame tracking, the timer wheel, the balancer's pick,
//! TLS record seal and open, the TLS 1.3 key schedule, and a tunnel's own work per echoed message (a session driven by
//! its events, `support/rig.rs`). `cargo test` runs each once.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use ringway_proxy::config::Config;
use ringway_proxy::http::{self, ClientConnection, Forwarded, HeadLimits};
use ringway_proxy::upstream::KeyInput;
use ringway_proxy::upstream::attempt::Attempt;
use ringway_proxy::uring::timer::TimerWheel;
use ringway_proxy::ws::FrameTracker;

#[path = "support/rig.rs"]
mod rig;

/// A browser's upgrade request, as Chromium sends it.
const UPGRADE: &[u8] = b"GET /ws/chat?room=42 HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=0123456789abcdef0123456789abcdef\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// The backend's answer to it.
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
\r\n";

fn limits() -> HeadLimits {
    HeadLimits {
        head_max: 16 * 1024,
        request_line_max: 8 * 1024,
        header_line_max: 8 * 1024,
    }
}

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    let lim = limits();
    g.bench_function("parse_request (upgrade)", |b| {
        b.iter(|| {
            http::parse_request(black_box(UPGRADE), &lim)
                .unwrap()
                .unwrap()
        })
    });
    let fwd = Forwarded {
        upgrade: true,
        client_ip: IpAddr::from([10, 1, 2, 3]),
        proto: "http",
        default_host: "chat",
        keepalive: false,
        target: None,
        set: &[],
        no_body: false,
    };
    let mut out = Vec::with_capacity(1024);
    g.bench_function("rewrite_request (upgrade)", |b| {
        b.iter(|| {
            out.clear();
            http::rewrite_request(black_box(UPGRADE), &fwd, &mut out).unwrap();
        })
    });
    g.bench_function(
        "request head parsed once and rewritten (the session's path)",
        |b| {
            b.iter(|| {
                out.clear();
                let mut headers = http::Headers::new();
                let (_, lines) = http::parse_request_in(black_box(UPGRADE), &lim, &mut headers)
                    .unwrap()
                    .unwrap();
                http::rewrite_request_parsed(&lines, &fwd, &mut out);
            })
        },
    );
    g.bench_function("parse_response (101)", |b| {
        b.iter(|| {
            http::parse_response(black_box(SWITCHING), 64 * 1024, false)
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("rewrite_response (101)", |b| {
        b.iter(|| {
            out.clear();
            http::rewrite_response(
                black_box(SWITCHING),
                ClientConnection::Upgrade,
                false,
                &mut out,
            )
            .unwrap();
        })
    });
    g.bench_function("101 parsed once and rewritten (the session's path)", |b| {
        b.iter(|| {
            out.clear();
            let mut headers = http::Headers::new();
            let (resp, lines) =
                http::parse_response_in(black_box(SWITCHING), 64 * 1024, false, &mut headers)
                    .unwrap()
                    .unwrap();
            http::rewrite_response_parsed(
                &lines,
                ClientConnection::Upgrade,
                resp.drop_length,
                &mut out,
            );
        })
    });
    g.finish();
}

/// `n` masked binary frames of `size` payload bytes, end to end (a client's stream).
fn frames(n: usize, size: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(0x82);
        match size {
            0..=125 => v.push(0x80 | size as u8),
            126..=65535 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(size as u16).to_be_bytes());
            }
            _ => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(size as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&(i as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(0x5a, size));
    }
    v
}

fn frame_tracker(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws");
    for (n, size) in [(1, 64), (64, 64), (1, 4096)] {
        let data = frames(n, size);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("track {n} frame(s) of {size} B"), |b| {
            b.iter(|| {
                let mut t = FrameTracker::default();
                t.track(black_box(&data));
                black_box(t.at_boundary())
            })
        });
    }
    g.finish();
}

/// The worker's pattern: every event of a session moves its deadline (remove, insert); the
/// wheel advances one tick per turn.
fn timer_wheel(c: &mut Criterion) {
    let mut g = c.benchmark_group("timer wheel");
    g.throughput(Throughput::Elements(1));
    const SESSIONS: u32 = 10_000;
    let mut w = TimerWheel::new(10, 4096, 0);
    let mut due = vec![0u64; SESSIONS as usize];
    for s in 0..SESSIONS {
        due[s as usize] = 3_600_000 + u64::from(s);
        w.insert(s, due[s as usize]);
    }
    let mut s = 0u32;
    g.bench_function("move one deadline (10k sessions)", |b| {
        b.iter(|| {
            let i = s as usize;
            w.remove(s, due[i]);
            due[i] += 1;
            w.insert(s, due[i]);
            s = (s + 1) % SESSIONS;
        })
    });
    let mut fired = Vec::new();
    let mut now = 0;
    g.bench_function("advance one tick (nothing due)", |b| {
        b.iter(|| {
            now += 10;
            fired.clear();
            w.advance(black_box(now), &mut fired);
        })
    });
    g.finish();
}

const UPSTREAMS: &str = r#"
[[upstream]]
name = "rr"
servers = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" }, { addr = "127.0.0.1:9004" }]
[[upstream]]
name = "hash"
balance = "ip_hash"
servers = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" }, { addr = "127.0.0.1:9004" }]
[[server]]
listen = ["127.0.0.1:8080"]
[[server.location]]
path = "/"
upstream = "rr"
[[server.location]]
path = "/h/"
upstream = "hash"
"#;

/// A request's choice of server, as `connect_next` makes it: the attempt, then the pick.
fn balancer(c: &mut Criterion) {
    let cfg = std::sync::Arc::new(Config::parse("bench.toml", UPSTREAMS).unwrap());
    let mut balancers = ringway_proxy::upstream::Balancers::new(&cfg);
    let input = KeyInput {
        client: IpAddr::from([10, 1, 2, 3]),
        uri: "/ws/chat",
        head: UPGRADE,
    };
    let mut g = c.benchmark_group("upstream");
    g.throughput(Throughput::Elements(1));
    for (i, name) in [(0, "round robin"), (1, "ip_hash")] {
        let u = &cfg.upstreams[i];
        let next = cfg.servers[0].locations[0].next_upstream;
        g.bench_function(format!("attempt and pick ({name}, 4 servers)"), |b| {
            b.iter(|| {
                let rr = &mut balancers.of(&cfg)[i];
                let mut a = Attempt::new(u, &next, &input);
                black_box(a.pick(rr, u, input.client, 1_000))
            })
        });
    }
    g.finish();
}

/// The proxy's own work for one echoed message of a WebSocket (64 B each way): four events of a
/// session in its tunnel — the client's frame arrives, its send upstream completes, the echo
/// arrives, its send to the client completes — with the ring and the kernel left out.
fn tunnel(c: &mut Criterion) {
    let mut g = c.benchmark_group("tunnel");
    g.throughput(Throughput::Elements(1));
    for size in [64, 4096] {
        let up = frames(1, size);
        // The echo: the same frame, unmasked, as a server sends it.
        let mut down = frames(1, size);
        down[1] &= 0x7f;
        down.drain(if size < 126 { 2..6 } else { 4..8 });
        let mut t = rig::Tunnel::open(UPGRADE, SWITCHING);
        g.bench_function(format!("one echoed message of {size} B (4 events)"), |b| {
            b.iter(|| t.round_trip(black_box(&up), black_box(&down)))
        });
    }
    g.finish();
}

/// TLS 1.3 records as the proxy seals and opens them (AES-256-GCM, the first suite offered),
/// in place where it receives.
fn records(c: &mut Criterion) {
    use ringway_proxy::tls::records::{Records, StandIn};
    let a = ([7u8; 32], [1u8; 12]);
    let b = ([9u8; 32], [2u8; 12]);
    let make = |tx, rx| {
        let k = StandIn {
            version: rustls::ProtocolVersion::TLSv1_3,
            chacha: false,
            tx,
            rx,
        };
        let (t, r) = (k.secrets(tx), k.secrets(rx));
        Records::from_secrets(t, r, k).expect("records on fixed secrets")
    };
    let mut g = c.benchmark_group("tls records");
    g.throughput(Throughput::Elements(1));
    for size in [64, 4096] {
        let plain = vec![0x5au8; size];
        let mut sealer = make(a, b);
        let mut out = Vec::with_capacity(size + 64);
        g.bench_function(format!("seal {size} B"), |bch| {
            bch.iter(|| {
                out.clear();
                sealer.seal(black_box(&plain), &mut out).unwrap();
            })
        });
        // Opening decrypts in place: each record is sealed (in step with the opener's
        // sequence numbers) outside the measured part, and opened inside it.
        let mut opener = make(b, a);
        let mut peer = make(a, b);
        g.bench_function(format!("open {size} B"), |bch| {
            bch.iter_batched(
                || {
                    let mut sealed = Vec::with_capacity(size + 64);
                    peer.seal(&plain, &mut sealed).unwrap();
                    sealed
                },
                |mut record| black_box(opener.open(&mut record).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The HKDF a full TLS 1.3 handshake runs on the server (TLS_AES_256_GCM_SHA384): extract the
/// early and handshake secrets, derive each direction's traffic secret, key, IV and Finished
/// key, and the Finished MAC. The provider's (keyed once per secret) beside aws-lc-rs's own.
fn key_schedule(c: &mut Criterion) {
    use rustls::SupportedCipherSuite;
    use rustls::crypto::tls13::Hkdf;
    let sha384 = |p: &rustls::crypto::CryptoProvider| -> &'static dyn Hkdf {
        p.cipher_suites
            .iter()
            .find_map(|s| match s {
                SupportedCipherSuite::Tls13(t)
                    if t.common.suite == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 =>
                {
                    Some(t.hkdf_provider)
                }
                _ => None,
            })
            .expect("TLS13_AES_256_GCM_SHA384")
    };
    let ours = sha384(&ringway_proxy::tls::setup::provider());
    let theirs = sha384(&rustls::crypto::aws_lc_rs::default_provider());
    let secret = [7u8; 48];
    let schedule = |h: &dyn Hkdf| {
        let early = h.extract_from_zero_ikm(None);
        let derived = early.expand_block(&[b"derived"]);
        let hs = h.extract_from_secret(Some(derived.as_ref()), &secret);
        for label in [&b"c hs traffic"[..], b"s hs traffic"] {
            let traffic = hs.expand_block(&[label]);
            let x = h.expander_for_okm(&traffic);
            let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
            x.expand_slice(&[b"key"], &mut key).unwrap();
            x.expand_slice(&[b"iv"], &mut iv).unwrap();
            let finished = x.expand_block(&[b"finished"]);
            black_box(h.hmac_sign(&finished, b"transcript hash"));
        }
    };
    let mut g = c.benchmark_group("tls 1.3 key schedule (SHA-384)");
    g.bench_function("ringway's provider (HMAC keyed once)", |b| {
        b.iter(|| schedule(ours))
    });
    g.bench_function("aws-lc-rs's HKDF", |b| b.iter(|| schedule(theirs)));
    g.finish();
}

criterion_group!(
    benches,
    heads,
    frame_tracker,
    timer_wheel,
    balancer,
    tunnel,
    records,
    key_schedule
);
criterion_main!(benches);
