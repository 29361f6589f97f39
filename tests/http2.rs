//! HTTP/2 toward clients (`http2 = true`), against real peers: curl, nghttp and h2load
//! (Debian's nghttp2-client) for requests and load, Python's h2 for WebSockets over HTTP/2
//! (RFC 8441) and for hostile frames (`tests/h2/*.py`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::h2::*;
use common::*;

fn https(st: &Stack, path: &str) -> String {
    format!("https://localhost:{}{path}", st.listen.port())
}

#[test]
fn requests_over_h2_from_curl_nghttp_and_h2load_and_http1_on_the_same_listener() {
    if !uring_ok() || !have("curl", &["--version"]) || !have("nghttp", &["--version"]) {
        return;
    }
    let st = stack_mode(Mode::Tls, "h2-requests", "", H2_SERVER, "");
    let ca = pki().ca.to_str().unwrap().to_string();
    // ALPN chose h2; the inner session added X-Forwarded-Proto https.
    let (body, err) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "-w",
        "\n%{http_version}",
        &https(&st, "/headers"),
    ]);
    assert!(body.ends_with("\n2"), "{body}\n{err}");
    assert!(body.contains("[\"X-Forwarded-Proto\",\"https\"]"), "{body}");
    // HTTP/1.1 clients on the same listener are served as before.
    let (body, _) = curl(&[
        "--http1.1",
        "--cacert",
        &ca,
        "-w",
        "\n%{http_version}",
        &https(&st, "/headers"),
    ]);
    assert!(body.ends_with("\n1.1"), "{body}");
    // Bodies both ways: with a length, and without one (chunked toward the upstream).
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = st.dir.join("body.bin");
    std::fs::write(&file, &data).unwrap();
    let got = st.dir.join("got.bin");
    let with_length = format!("@{}", file.display());
    let (_, err) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--data-binary",
        &with_length,
        "-o",
        got.to_str().unwrap(),
        &https(&st, "/echo"),
    ]);
    assert_eq!(std::fs::read(&got).unwrap(), data, "{err}");
    std::fs::remove_file(&got).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sS --http2 --cacert {ca} -X POST -H 'Transfer-Encoding:' -T - -o {} {} < {}",
            got.display(),
            https(&st, "/echo"),
            file.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        std::fs::read(&got).unwrap(),
        data,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // HEAD: the head of the GET (the echo backend answers HEAD with its 404), no body.
    let (head, err) = curl(&["--http2", "--cacert", &ca, "-I", &https(&st, "/headers")]);
    assert!(head.starts_with("HTTP/2 404"), "{head}");
    assert!(head.contains("content-length: 10"), "{head}");
    assert!(err.is_empty(), "{err}");
    // nghttp: this side's SETTINGS announce RFC 8441 and the stream limit.
    let out = Command::new("nghttp")
        .args(["-nv", &https(&st, "/headers")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_ENABLE_CONNECT_PROTOCOL(0x08):1"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100"),
        "{text}"
    );
    assert!(text.contains(":status: 200"), "{text}");
    // h2load: 2,000 requests over 10 connections, 10 streams each at once, all answered.
    if have("h2load", &["--version"]) {
        let out = Command::new("h2load")
            .args([
                "-n",
                "2000",
                "-c",
                "10",
                "-m",
                "10",
                &https(&st, "/headers"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored"),
            "{text}"
        );
        assert!(text.contains("status codes: 2000 2xx"), "{text}");
    }
    // Every request was logged by its inner session, marked h2.
    st.proxy.wait_log("\"POST /echo\"", 10);
    let log = st.proxy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("\"POST /echo\"") && l.contains(" h2 ")),
        "{log}"
    );
}

#[test]
fn h2c_with_prior_knowledge_on_a_plain_listener() {
    if !uring_ok() || !have("curl", &["--version"]) {
        return;
    }
    let st = stack("h2c", "", H2_SERVER, "");
    let url = format!("http://127.0.0.1:{}/headers", st.listen.port());
    let (body, err) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]);
    assert!(body.ends_with("\n2"), "{body}\n{err}");
    assert!(body.contains("[\"X-Forwarded-Proto\",\"http\"]"), "{body}");
    let (body, _) = curl(&["--http1.1", "-w", "\n%{http_version}", &url]);
    assert!(body.ends_with("\n1.1"), "{body}");
    // Without http2, the preface is no request: 400, as before.
    let plain = stack("h2c-off", "", "", "");
    let resp = raw_exchange(plain.listen, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 5);
    assert_eq!(status_of(&resp), 400);
}

#[test]
fn websockets_over_h2_are_extended_connects_with_everything_a_tunnel_has() {
    if !uring_ok() || !python_h2() {
        return;
    }
    let heartbeat =
        "heartbeat = { interval = \"1s\", timeout = \"5s\" }\nupgrade = [\"websocket\"]";
    let admin = free_addr();
    let st = stack_mode(
        Mode::Tls,
        "h2-ws",
        heartbeat,
        H2_SERVER,
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let port = st.listen.port().to_string();
    // Five WebSockets on one connection, small and large messages (past the stream window).
    for size in ["10", "70000"] {
        let r = run_py(
            "ws.py",
            &[
                "127.0.0.1".into(),
                port.clone(),
                "--tls".into(),
                "--streams".into(),
                "5".into(),
                "--messages".into(),
                "20".into(),
                "--size".into(),
                size.into(),
            ],
        );
        assert_eq!(r["connect_protocol"], 1, "{r}");
        let streams = r["streams"].as_object().unwrap();
        assert_eq!(streams.len(), 5, "{r}");
        for (id, s) in streams {
            assert_eq!(s["status"], 200, "stream {id}: {r}");
            assert_eq!(s["echoes"], 20, "stream {id}: {r}");
            assert_eq!(s["close_code"], 1000, "stream {id}: {r}");
        }
    }
    // Sixty WebSockets at once on one connection (a browser's tabs of one origin share it).
    let r = run_py(
        "ws.py",
        &[
            "127.0.0.1".into(),
            port.clone(),
            "--tls".into(),
            "--streams".into(),
            "60".into(),
            "--messages".into(),
            "5".into(),
            "--size".into(),
            "100".into(),
        ],
    );
    let streams = r["streams"].as_object().unwrap();
    assert_eq!(streams.len(), 60, "{r}");
    assert!(
        streams
            .values()
            .all(|s| s["status"] == 200 && s["echoes"] == 5),
        "{r}"
    );
    // Held open: the location's heartbeat pings reach the client inside its stream, and
    // its pongs keep the tunnel alive past the heartbeat timeout.
    let args: Vec<String> = [
        "127.0.0.1",
        &port,
        "--tls",
        "--streams",
        "2",
        "--messages",
        "1",
        "--hold",
        "4",
    ]
    .map(String::from)
    .to_vec();
    let held = std::thread::spawn(move || run_py("ws.py", &args));
    // Meanwhile /metrics counts them as any tunnel, and says how they are carried: one
    // HTTP/2 connection, two inner sessions, one client connection.
    let t = std::time::Instant::now();
    loop {
        let m = parse_metrics(&scrape(admin, "").1, "classic");
        let now = |k: &str| total(&m, &format!("ringway_{k}{{"));
        if now("tunnels_active") == 2.0 {
            assert_eq!(now("http2_connections_active"), 1.0, "{m:?}");
            assert_eq!(now("http2_stream_sessions_active"), 2.0, "{m:?}");
            assert_eq!(now("sessions_active"), 1.0, "{m:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "{m:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = held.join().unwrap();
    for (id, s) in r["streams"].as_object().unwrap() {
        assert!(s["pings"].as_u64().unwrap() >= 2, "stream {id}: {r}");
        assert!(s.get("close_code").is_none(), "stream {id}: {r}");
    }
    // The access log: each WebSocket is a 101 of an inner session, marked ws and h2, from
    // the address and port of the HTTP/2 connection (several lines share one port).
    st.proxy.wait_log("\"GET /ws/h2\"", 10);
    let log = st.proxy.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"GET /ws/h2\""))
        .collect();
    assert!(lines.len() >= 12, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("status=101") && l.contains(" ws h2 ")),
        "{log}"
    );
    // Each of the 60 streams echoed five messages: its line counts them, and the location's
    // counters have them all.
    assert_eq!(
        lines.iter().filter(|l| l.contains(" msgs=5/5 ")).count(),
        60,
        "{log}"
    );
    let m = parse_metrics(&scrape(admin, "").1, "classic");
    assert!(
        total(&m, "ringway_location_messages_total{from=client") >= 301.0,
        "{m:?}"
    );
    let client = |l: &str| {
        l.split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .map(str::to_string)
    };
    let first = client(lines[0]);
    assert!(
        lines.iter().filter(|l| client(l) == first).count() >= 5,
        "{log}"
    );
}

#[test]
fn http2_websocket_false_keeps_http2_and_turns_rfc_8441_off() {
    if !uring_ok() || !python_h2() || !have("curl", &["--version"]) {
        return;
    }
    let st = stack("h2-no-ws", "", "http2 = true\nhttp2_websocket = false", "");
    let r = run_py(
        "ws.py",
        &[
            "127.0.0.1".into(),
            st.listen.port().to_string(),
            "--settings-only".into(),
        ],
    );
    assert_eq!(r["connect_protocol"], 0, "{r}");
    let url = format!("http://127.0.0.1:{}/headers", st.listen.port());
    let (body, _) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]);
    assert!(body.ends_with("\n2"), "{body}");
    // A :protocol sent anyway is a malformed request: that stream is reset.
    let r = run_py(
        "hostile.py",
        &[
            "127.0.0.1".into(),
            st.listen.port().to_string(),
            "extended_connect".into(),
        ],
    );
    assert_eq!(r["rst"]["1"], 1, "{r}");
    assert_eq!(r["goaway"], serde_json::Value::Null, "{r}");
}

#[test]
fn keepalive_requests_bounds_the_streams_of_one_connection() {
    if !uring_ok() || !python_h2() {
        return;
    }
    let st = stack("h2-budget", "", "http2 = true\nkeepalive_requests = 50", "");
    let port = st.listen.port().to_string();
    // One request after the other: the 50th is answered, with a GOAWAY NO_ERROR naming it
    // (stream 99); the client opens no more on this connection.
    let r = run_py(
        "hostile.py",
        &["127.0.0.1".into(), port, "sequential_streams".into()],
    );
    assert_eq!(r["answered"], 50, "{r}");
    assert_eq!(r["goaway"], 0, "{r}");
    assert_eq!(r["goaway_last"], 99, "{r}");
}

#[test]
fn hostile_clients_get_rfc_9113s_answers_and_other_connections_go_on() {
    if !uring_ok() || !python_h2() || !have("curl", &["--version"]) {
        return;
    }
    let admin = free_addr();
    let st = stack(
        "h2-hostile",
        "",
        // keepalive_requests far off: the floods meet the glitch bucket, not the GOAWAY
        // after 1,000 streams (both end the connection; the test names which).
        "http2 = true\nhttp2_max_concurrent_streams = 20\nkeepalive_requests = 100000",
        &format!("[admin]\nlisten = \"{admin}\""),
    );
    let port = st.listen.port().to_string();
    let url = format!("http://127.0.0.1:{port}/headers");
    // (case, GOAWAY code expected; None: the connection stays)
    let cases: [(&str, Option<u64>); 16] = [
        ("rapid_reset", Some(0xb)),
        ("continuation_flood", Some(0xb)),
        ("continuation_bytes", Some(0xb)),
        ("ping_flood", Some(0xb)),
        ("settings_flood", Some(0xb)),
        ("priority_flood", Some(0xb)),
        ("empty_data_flood", Some(0xb)),
        ("reset_closed_stream_flood", Some(0xb)),
        ("window_update_on_idle_stream", Some(0x1)),
        ("data_on_stream_0", Some(0x1)),
        ("headers_on_even_stream", Some(0x1)),
        ("window_overflow", Some(0x3)),
        ("oversized_frame", Some(0x6)),
        ("hpack_bomb", None),
        ("too_many_streams", None),
        ("malformed_request", None),
    ];
    for (case, goaway) in cases {
        let r = run_py(
            "hostile.py",
            &["127.0.0.1".into(), port.clone(), case.into()],
        );
        assert_eq!(r["goaway"].as_u64(), goaway, "{case}: {r}");
        match case {
            "hpack_bomb" => {
                assert_eq!(r["status"]["1"], 200, "{r}");
                assert_eq!(r["status"]["3"], 431, "{r}");
            }
            "too_many_streams" => {
                // 20 taken (the server's limit here), the rest refused.
                let refused = r["rst"]
                    .as_object()
                    .unwrap()
                    .values()
                    .filter(|c| *c == 7)
                    .count();
                assert_eq!(refused, 40 - 20, "{r}");
            }
            "malformed_request" => {
                assert_eq!(r["rst"]["1"], 1, "{r}");
                assert_eq!(r["status"]["3"], 200, "{r}");
            }
            _ => assert_eq!(r["closed"], true, "{case}: {r}"),
        }
        // Every other connection goes on.
        let (body, err) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]);
        assert!(body.ends_with("\n2"), "after {case}: {body}\n{err}");
    }
    // A client whose windows are 0 gets nothing until it opens them; then the whole answer.
    let r = run_py(
        "hostile.py",
        &["127.0.0.1".into(), port.clone(), "zero_window".into()],
    );
    assert_eq!(r["data_before_window"], 0, "{r}");
    assert!(r["data"].as_u64().unwrap() > 100, "{r}");
    // One slow stream does not stall another on its connection: stream 3, given room, is
    // answered whole while stream 1 (window 0) waits.
    let r = run_py(
        "hostile.py",
        &["127.0.0.1".into(), port.clone(), "slow_stream".into()],
    );
    assert!(r["data_by_stream"]["3"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["ended"], serde_json::json!([3]), "{r}");
    assert!(r["data_by_stream"].get("1").is_none(), "{r}");
    // No stream is left behind in the proxy: once every connection has gone, no HTTP/2
    // connection, inner session or client session is open; and /metrics tells what happened,
    // in a form promtool accepts.
    let t = std::time::Instant::now();
    let m = loop {
        let (_, classic) = scrape(admin, "");
        let m = parse_metrics(&classic, "classic");
        let open = total(&m, "ringway_http2_connections_active{")
            + total(&m, "ringway_http2_stream_sessions_active{")
            + total(&m, "ringway_sessions_active{");
        if open == 0.0 {
            promtool(&["check", "metrics"], &classic);
            break m;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{classic}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let goaways = |code: &str| {
        total(
            &m,
            &format!("ringway_http2_goaways_sent_total{{code={code},"),
        )
    };
    assert_eq!(goaways("ENHANCE_YOUR_CALM"), 8.0, "the eight floods");
    assert_eq!(goaways("PROTOCOL_ERROR"), 3.0);
    assert_eq!(goaways("FLOW_CONTROL_ERROR"), 1.0);
    assert_eq!(goaways("FRAME_SIZE_ERROR"), 1.0);
    let resets = |side: &str, code: &str| {
        total(
            &m,
            &format!("ringway_http2_resets_{side}_total{{code={code},"),
        )
    };
    assert!(resets("sent", "REFUSED_STREAM") >= 20.0, "too_many_streams");
    assert!(resets("sent", "PROTOCOL_ERROR") >= 1.0, "malformed_request");
    assert!(resets("received", "CANCEL") >= 1.0, "rapid_reset");
    // 18 scripted connections and 16 curls (the floods' streams count too).
    assert!(total(&m, "ringway_http2_connections_total{") >= 34.0);
    assert!(total(&m, "ringway_http2_streams_total{") >= 16.0 + 20.0);
    let log = st.proxy.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn interim_answers_and_an_upstreams_trailers_reach_the_http2_client() {
    if !uring_ok() || !have("nghttp", &["--version"]) {
        return;
    }
    // An upstream of the test's own: 103 Early Hints, then a chunked 200 with a trailer.
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in up.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            let _ = conn.write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nConnection: close\r\n\r\n\
                  5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n",
            );
        }
    });
    let dir = scratch("h2-trailers");
    let listen = free_addr();
    let proxy = proxy(&config(listen, &[up_addr], "", H2_SERVER, ""), listen, &dir);
    let out = Command::new("nghttp")
        .args(["-v", &format!("http://127.0.0.1:{}/t", listen.port())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let statuses: Vec<&str> = text.lines().filter(|l| l.contains(":status:")).collect();
    assert_eq!(statuses.len(), 2, "{text}\n{}", proxy.log_text());
    assert!(
        statuses[0].contains("103") && statuses[1].contains("200"),
        "{text}"
    );
    assert!(text.contains("link: </style.css>; rel=preload"), "{text}");
    // The body de-chunked into DATA, then the trailer as a HEADERS that ends the stream.
    assert!(text.contains("hello world"), "{text}");
    let trailer_at = text
        .find("x-checksum: abc123")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(text[..trailer_at].contains("recv DATA"), "{text}");
    let after = &text[trailer_at..];
    assert!(
        after.contains("recv HEADERS frame") && after.contains("END_STREAM | END_HEADERS"),
        "{text}"
    );
    assert!(!after.contains("recv DATA"), "{text}");
}

#[test]
fn limit_conn_counts_the_websockets_of_an_http2_connection_one_by_one() {
    if !uring_ok() || !python_h2() {
        return;
    }
    let st = stack(
        "h2-limits",
        "upgrade = [\"websocket\"]\nlimit_conn = { zone = \"perip\", max = 3 }",
        H2_SERVER,
        "[[limit_conn_zone]]\nname = \"perip\"\nsize = \"1m\"",
    );
    // Five WebSockets on one connection from one address: three are taken, as three HTTP/1.1
    // connections would be (nginx counts HTTP/2 streams the same way), two are answered 503.
    let r = run_py(
        "ws.py",
        &[
            "127.0.0.1".into(),
            st.listen.port().to_string(),
            "--streams".into(),
            "5".into(),
            "--messages".into(),
            "1".into(),
            "--hold".into(),
            "2".into(),
        ],
    );
    let statuses: Vec<u64> = r["streams"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 3, "{r}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 2, "{r}");
    // Once they have ended, the address's slots are free again: three more, on a new
    // connection, are all taken and echo.
    std::thread::sleep(Duration::from_millis(500));
    let r = run_py(
        "ws.py",
        &[
            "127.0.0.1".into(),
            st.listen.port().to_string(),
            "--streams".into(),
            "3".into(),
            "--messages".into(),
            "2".into(),
        ],
    );
    for (id, s) in r["streams"].as_object().unwrap() {
        assert_eq!(s["status"], 200, "stream {id}: {r}");
        assert_eq!(s["echoes"], 2, "stream {id}: {r}");
    }
}
