//! End-to-end: `ringway run` in front of `ringway echo`, real sockets on loopback, real
//! WebSocket clients (tungstenite) and raw frames.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use ringway_proxy::ws::opcode;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

fn headers_of(json: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

plain_and_tls!(
    websocket_handshake_is_rewritten_like_nginx_and_extensions_pass,
    wss_websocket_handshake_is_rewritten_like_nginx_and_extensions_pass,
    handshake_rewrite
);

fn handshake_rewrite(mode: Mode) {
    let st = stack_mode(mode, "hdrws", "", "", "");
    let mut ws = st.raw_ws(
        "/headers",
        "X-Forwarded-For: 203.0.113.9\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nX-Mixed-Case: Value\r\nKeep-Alive: 300\r\n",
    );
    // The client sees the backend's choices, untouched.
    assert!(ws.head.starts_with("HTTP/1.1 101"), "{}", ws.head);
    assert!(ws.head.contains("Connection: upgrade\r\n"), "{}", ws.head);
    assert!(
        ws.head.contains("Sec-WebSocket-Protocol: chat\r\n"),
        "{}",
        ws.head
    );
    assert!(ws.head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"), "{}", ws.head);
    assert!(
        ws.head
            .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{}",
        ws.head
    );
    // The backend's first message is the request head it received.
    let (_, _, op, json) = ws.read_frame();
    assert_eq!(op, opcode::TEXT);
    let hs = headers_of(std::str::from_utf8(&json).unwrap());
    assert_eq!(header(&hs, "Host"), Some("test.local"));
    assert_eq!(header(&hs, "X-Real-IP"), Some("127.0.0.1"));
    assert_eq!(
        header(&hs, "X-Forwarded-For"),
        Some("203.0.113.9, 127.0.0.1")
    );
    let proto = if mode == Mode::Tls { "https" } else { "http" };
    assert_eq!(header(&hs, "X-Forwarded-Proto"), Some(proto));
    assert_eq!(header(&hs, "Upgrade"), Some("websocket"));
    assert_eq!(header(&hs, "Connection"), Some("upgrade"));
    assert_eq!(
        header(&hs, "Sec-WebSocket-Protocol"),
        Some("chat, superchat")
    );
    assert_eq!(
        header(&hs, "Sec-WebSocket-Extensions"),
        Some("permessage-deflate; client_max_window_bits")
    );
    assert_eq!(
        header(&hs, "Keep-Alive"),
        None,
        "hop-by-hop header forwarded"
    );
    // Names keep their case and order.
    assert!(hs.iter().any(|(n, _)| n == "X-Mixed-Case"));
    let names: Vec<&str> = hs.iter().map(|(n, _)| n.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(
        pos("Host") < pos("Upgrade")
            && pos("Upgrade") < pos("Sec-WebSocket-Key")
            && pos("Sec-WebSocket-Key") < pos("X-Mixed-Case"),
        "{names:?}"
    );

    // permessage-deflate (RFC 7692): a compressed frame (RSV1) goes through and comes back.
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    let text = "hello hello hello compressed world ".repeat(20);
    let mut z = Vec::with_capacity(4096);
    Compress::new(Compression::default(), false)
        .compress_vec(text.as_bytes(), &mut z, FlushCompress::Sync)
        .unwrap();
    assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
    z.truncate(z.len() - 4);
    assert!(z.len() < text.len() / 4);
    ws.send_frame(true, 0x4, opcode::TEXT, &z);
    let (fin, rsv, op, mut back) = ws.read_frame();
    assert!(fin && rsv == 0x4 && op == opcode::TEXT);
    back.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut plain = Vec::with_capacity(text.len() * 2);
    Decompress::new(false)
        .decompress_vec(&back, &mut plain, FlushDecompress::Sync)
        .unwrap();
    let plain = String::from_utf8(plain).unwrap();
    assert_eq!(plain, text);
}

/// Read one HTTP/1.1 response (head + body by its framing) from a keep-alive connection.
fn read_response(s: &mut impl Read, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut tmp = [0u8; 65536];
    let fill = |s: &mut dyn Read, pending: &mut Vec<u8>, tmp: &mut [u8]| {
        let n = s.read(tmp).unwrap();
        assert!(n > 0, "closed early");
        pending.extend_from_slice(&tmp[..n]);
    };
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, pending, &mut tmp);
    };
    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
    pending.drain(..end);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(l) = lower.lines().find(|l| l.starts_with("content-length:")) {
        let n: usize = l[15..].trim().parse().unwrap();
        while pending.len() < n {
            fill(s, pending, &mut tmp);
        }
        body = pending.drain(..n).collect();
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, pending, &mut tmp);
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&pending[..line_end]).unwrap().trim(),
                16,
            )
            .unwrap();
            pending.drain(..line_end + 2);
            while pending.len() < size + 2 {
                fill(s, pending, &mut tmp);
            }
            body.extend(pending.drain(..size));
            pending.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    (head, body)
}

plain_and_tls!(
    plain_http_is_relayed_with_framing_and_keep_alive,
    wss_plain_http_is_relayed_with_framing_and_keep_alive,
    http_relay
);

fn http_relay(mode: Mode) {
    let st = stack_mode(mode, "relay", "", "", "");
    let mut s = st.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pending = Vec::new();
    // Backend sees Connection: close for a plain request (the $connection_upgrade map).
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: relay.test\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, &mut pending);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Connection: keep-alive"), "{head}");
    let hs = headers_of(std::str::from_utf8(&body).unwrap());
    assert_eq!(header(&hs, "Connection"), Some("close"));
    assert_eq!(header(&hs, "Upgrade"), None);
    assert_eq!(header(&hs, "X-Forwarded-For"), Some("127.0.0.1"));
    // Content-Length and chunked bodies arrive intact, on the same client connection.
    for path in ["/bytes/300000", "/chunked/300000", "/bytes/0"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: relay.test\r\n\r\n").as_bytes())
            .unwrap();
        let (head, body) = read_response(&mut s, &mut pending);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let n: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(body.len(), n, "{path}");
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, &b)| b == ringway_echo::pattern(i as u64)),
            "{path} corrupted"
        );
    }
    // A request body (Content-Length, then chunked), pipelined with the next request.
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: relay.test\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    req.extend_from_slice(&payload);
    req.extend_from_slice(b"POST /echo HTTP/1.1\r\nHost: relay.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    s.write_all(&req).unwrap();
    let (head, body) = read_response(&mut s, &mut pending);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body == payload, "POST body differs");
    let (head, body) = read_response(&mut s, &mut pending);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"hello world");
    // HTTP/1.0 without keep-alive: the proxy closes after the response.
    let mut s = st.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(status_of(&out), 200);
    assert!(String::from_utf8_lossy(&out).ends_with("ok\n"));
    st.proxy
        .wait_log("\"GET /chunked/300000\" host=relay.test status=200", 5);
}

plain_and_tls!(
    echo_of_every_size_text_and_binary,
    wss_echo_of_every_size_text_and_binary,
    echo_sizes
);

fn echo_sizes(mode: Mode) {
    let st = stack_mode(mode, "sizes", "", "", "");
    let mut ws = st.ws("/ws/");
    for size in [0usize, 125, 126, 65535, 65536, 1 << 20, 16 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        ws_echo(&mut ws, payload);
        let text: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        ws.send(Message::text(text.clone())).unwrap();
        match ws.read().unwrap() {
            Message::Text(t) => assert!(t.as_str() == text, "text of {size} differs"),
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.close(None).unwrap();
}

plain_and_tls!(
    fragments_pings_and_close_codes,
    wss_fragments_pings_and_close_codes,
    frames_pings_closes
);

fn frames_pings_closes(mode: Mode) {
    let st = stack_mode(mode, "frames", "", "", "");
    let mut ws = st.raw_ws("/", "");
    // A fragmented message with a ping between its fragments: every frame keeps its boundary.
    ws.send_frame(false, 0, opcode::TEXT, b"Hel");
    ws.send_frame(true, 0, opcode::PING, b"ping payload");
    ws.send_frame(false, 0, opcode::CONTINUATION, b"lo, ");
    ws.send_frame(true, 0, opcode::CONTINUATION, b"world");
    assert_eq!(ws.read_frame(), (false, 0, opcode::TEXT, b"Hel".to_vec()));
    assert_eq!(
        ws.read_frame(),
        (true, 0, opcode::PONG, b"ping payload".to_vec())
    );
    assert_eq!(
        ws.read_frame(),
        (false, 0, opcode::CONTINUATION, b"lo, ".to_vec())
    );
    assert_eq!(
        ws.read_frame(),
        (true, 0, opcode::CONTINUATION, b"world".to_vec())
    );
    // Empty ping, then a client close with code and reason: the same Close comes back.
    ws.send_frame(true, 0, opcode::PING, b"");
    assert_eq!(ws.read_frame(), (true, 0, opcode::PONG, vec![]));
    let close = ringway_proxy::ws::close_payload(4001, "client bye");
    ws.send_frame(true, 0, opcode::CLOSE, &close);
    assert_eq!(ws.read_frame(), (true, 0, opcode::CLOSE, close));
    let mut rest = Vec::new();
    ws.s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty() && ws.buf.is_empty());

    // Server-initiated close with a code and reason reaches the client intact (tungstenite).
    let mut t = st.ws("/close/4002");
    match t.read().unwrap() {
        Message::Close(Some(CloseFrame { code, reason })) => {
            assert_eq!(code, CloseCode::from(4002));
            assert_eq!(reason.as_str(), "server closing");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    // tungstenite replies to the close; the connection then ends.
    loop {
        match t.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

plain_and_tls!(
    thousand_connections_checksummed_echo_no_crosstalk,
    wss_thousand_connections_checksummed_echo_no_crosstalk,
    thousand_connections
);

fn thousand_connections(mode: Mode) {
    let st = stack_mode(mode, "thousand", "", "", "");
    let listen = st.listen;
    let threads: Vec<_> = (0..10u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut conns: Vec<Ws> = (0..100)
                    .map(|_| ws_connect_mode(listen, "/ws/", mode))
                    .collect();
                for round in 0..20u32 {
                    // Send on every connection first, then read every echo: 100 in flight.
                    let mut sent = Vec::new();
                    for (i, ws) in conns.iter_mut().enumerate() {
                        let id = t * 1000 + i as u32;
                        let len = 16 + ((id * 31 + round * 17) % 3000) as usize;
                        let mut p: Vec<u8> =
                            (0..len).map(|k| (k as u32 ^ id ^ round) as u8).collect();
                        p[..4].copy_from_slice(&id.to_be_bytes());
                        p[4..8].copy_from_slice(&round.to_be_bytes());
                        let sum: u32 = p[8..].iter().map(|&b| u32::from(b)).sum();
                        p[8..12].copy_from_slice(&sum.to_be_bytes());
                        ws.send(Message::binary(p.clone())).unwrap();
                        sent.push(p);
                    }
                    for (ws, p) in conns.iter_mut().zip(&sent) {
                        match ws.read().unwrap() {
                            Message::Binary(b) => {
                                assert!(b[..] == p[..], "cross-talk or corruption")
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                for mut ws in conns {
                    ws.close(None).unwrap();
                    while ws.read().is_ok() {}
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread failed");
    }
}

plain_and_tls!(
    slow_readers_get_everything_and_memory_stays_bounded,
    wss_slow_readers_get_everything_and_memory_stays_bounded,
    slow_readers
);

fn slow_readers(mode: Mode) {
    // A tiny buffer ring (16 buffers per worker) so ten pushes at once also run the
    // ENOBUFS park/unpark path (counted: `buffer_pool.waits`, checked below). Without splice:
    // the pushes' frames are large enough to be spliced, which holds no buffer
    // (`tests/splice.rs` has its own slow readers).
    let admin = free_addr();
    let st = stack_mode(
        mode,
        "slow",
        "",
        "",
        &format!(
            "buffers = 16\nbuffer_size = \"16k\"\nsplice_min = 0\n[admin]\nlisten = \"{admin}\""
        ),
    );
    let base = st.proxy.rss_kib();
    // Ten pushes: one of the two workers has at least five, whose queues toward their slow
    // readers (4 buffers each, `QUEUE`) and recvs can hold more than its 16 buffers.
    const TOTAL: u64 = 8 << 20;
    let listen = st.listen;
    let readers: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ws = ws_connect_mode(listen, &format!("/push?bytes={TOTAL}"), mode);
                let mut got = 0u64;
                let mut n = 0u32;
                while got < TOTAL {
                    match ws.read().unwrap() {
                        Message::Binary(b) => {
                            assert!(
                                b.iter()
                                    .enumerate()
                                    .all(|(i, &x)| x == ringway_echo::pattern(got + i as u64)),
                                "push corrupted at {got}"
                            );
                            got += b.len() as u64;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                    n += 1;
                    if n.is_multiple_of(8) && got < TOTAL / 2 {
                        std::thread::sleep(Duration::from_millis(5)); // a slow reader
                    }
                }
                got
            })
        })
        .collect();
    let mut peak = 0;
    while !readers.iter().all(|r| r.is_finished()) {
        peak = peak.max(st.proxy.rss_kib());
        std::thread::sleep(Duration::from_millis(20));
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), TOTAL);
    }
    // 80 MiB went through; the proxy held no more than its buffers and bookkeeping.
    assert!(
        peak < base + 16 * 1024,
        "proxy RSS grew from {base} KiB to {peak} KiB"
    );
    // Recvs did find the ring empty and waited (the path this test is for), and the count
    // says so: published once a tick. Over TLS the pushed bytes are sealed into records of
    // their own as they arrive, and their buffers go back at once: nothing waits there.
    if mode == Mode::Tls {
        return;
    }
    let waits = || {
        admin_status(admin)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["buffer_pool"]["waits"].as_u64().unwrap())
            .sum::<u64>()
    };
    let t = std::time::Instant::now();
    let mut n = waits();
    while n == 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        n = waits();
    }
    assert!(
        n > 0,
        "no recv waited for a buffer with 16 of them and ten pushes"
    );
}

#[test]
fn admin_endpoint_reports_health_status_and_metrics() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let st = stack("admin", "", "", &format!("[admin]\nlisten = \"{admin}\""));
    let get = |path: &str| String::from_utf8(admin_get(admin, path)).unwrap();
    let h = get("/healthz");
    assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
    let mut ws = ws_connect(st.listen, "/ws/");
    ws_echo(&mut ws, b"x".to_vec());
    let s = get("/status");
    let json: serde_json::Value =
        serde_json::from_str(&s[s.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(json["state"], "serving");
    assert_eq!(json["active"], 1, "{json}");
    assert!(json["accepted"].as_u64().unwrap() >= 1);
    let m = get("/metrics");
    assert!(m.contains("# TYPE ringway_sessions_active gauge"), "{m}");
    assert!(m.contains("ringway_up 1"), "{m}");
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    // Connections per server, across workers: the tunnel counts against its backend while
    // it is open, and not once it has closed; its end is counted in the metrics.
    let status = || -> serde_json::Value {
        let s = get("/status");
        serde_json::from_str(&s[s.find("\r\n\r\n").unwrap() + 4..]).unwrap()
    };
    let upstream_active = |v: &serde_json::Value| -> u64 {
        v["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|u| u["servers"].as_array().unwrap().iter())
            .map(|p| p["active"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(upstream_active(&json), 1, "{json}");
    drop(ws);
    let t = std::time::Instant::now();
    let mut v = status();
    while v["active"] != 0 && t.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        v = status();
    }
    assert_eq!(v["active"], 0, "{v}");
    assert_eq!(upstream_active(&v), 0, "{v}");
    let m = get("/metrics");
    let sum = |prefix: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(sum("ringway_sessions_ended_total{") >= 1, "{m}");
    assert!(sum("ringway_session_duration_seconds_count{") >= 1, "{m}");
}

#[test]
fn upstream_sockets_bind_the_configured_source_addresses() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("source");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let listen = free_addr();
    let cfg = format!(
        "[[upstream]]\nname = \"b\"\nsource = \"127.0.3.0/29\"\nservers = [{{ addr = \"{backend}\" }}]\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/\"\nupstream = \"b\"\n"
    );
    let _p = proxy(&cfg, listen, &dir);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let out = raw_exchange(
            listen,
            b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            10,
        );
        let body = String::from_utf8_lossy(&out);
        let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let peer: std::net::SocketAddr = v["peer"].as_str().unwrap().parse().unwrap();
        seen.insert(peer.ip().to_string());
    }
    // Six usable addresses in a /29, used in turn.
    let want: std::collections::BTreeSet<String> =
        (1..=6).map(|i| format!("127.0.3.{i}")).collect();
    assert_eq!(seen, want);
}
