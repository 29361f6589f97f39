use super::*;

const WS: &[u8] = b"GET /chat?x=1 HTTP/1.1\r\nhost: ws.example.com:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits\r\nX-Forwarded-For: 1.2.3.4\r\nKeep-Alive: 300\r\nX-Custom-Case: A\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn fwd() -> Forwarded<'static> {
    Forwarded {
        upgrade: true,
        client_ip: "10.0.0.7".parse().unwrap(),
        proto: "http",
        default_host: "backend",
        keepalive: false,
        target: None,
        set: &[],
        no_body: false,
    }
}

#[test]
fn parses_websocket_request() {
    let r = parse_request(WS, &HeadLimits::flat(16384))
        .unwrap()
        .unwrap();
    assert_eq!(r.head_len, WS.len());
    assert_eq!(r.upgrade.as_deref(), Some("websocket"));
    assert!(r.keep_alive);
    assert_eq!(r.path, "/chat?x=1");
    assert_eq!(r.host_name(), b"ws.example.com");
    assert_eq!(r.body, BodyKind::None);
}

#[test]
fn partial_then_complete_at_every_split() {
    for cut in 0..WS.len() {
        assert_eq!(
            parse_request(&WS[..cut], &HeadLimits::flat(16384)),
            Ok(None),
            "cut {cut}"
        );
    }
}

#[test]
fn rewrites_like_nginx_playbook() {
    let mut out = Vec::new();
    rewrite_request(WS, &fwd(), &mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    let expect = "GET /chat?x=1 HTTP/1.1\r\nhost: ws.example.com:8080\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.7\r\nX-Custom-Case: A\r\nSec-WebSocket-Version: 13\r\nX-Real-IP: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\r\n";
    assert_eq!(s, expect);
}

#[test]
fn plain_get_gets_connection_close_and_default_host() {
    let req = b"GET /health HTTP/1.0\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Real-IP: spoofed\r\n\r\n";
    let r = parse_request(req, &HeadLimits::flat(16384))
        .unwrap()
        .unwrap();
    assert!(r.upgrade.is_none() && r.keep_alive && r.version_minor == 0);
    let mut out = Vec::new();
    let plain = Forwarded {
        upgrade: false,
        ..fwd()
    };
    rewrite_request(req, &plain, &mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert_eq!(
        s,
        "GET /health HTTP/1.1\r\nConnection: close\r\nX-Real-IP: 10.0.0.7\r\nHost: backend\r\nX-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
}

#[test]
fn bad_requests() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "a".repeat(20000)
    );
    assert_eq!(
        parse_request(big.as_bytes(), &HeadLimits::flat(16384)),
        Err(HeadError::TooLarge)
    );
    assert_eq!(
        parse_request(&big.as_bytes()[..17000], &HeadLimits::flat(16384)),
        Err(HeadError::TooLarge)
    );
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(
        parse_request(many.as_bytes(), &HeadLimits::flat(65536)),
        Err(HeadError::TooLarge)
    );
    for bad in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ] {
        assert!(
            matches!(
                parse_request(bad, &HeadLimits::flat(16384)),
                Err(HeadError::Invalid(_))
            ),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn request_bodies() {
    let r = parse_request(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        &HeadLimits::flat(1024),
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.body, BodyKind::Chunked);
    let r = parse_request(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n",
        &HeadLimits::flat(1024),
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.body, BodyKind::Length(12));
}

#[test]
fn response_framing_and_rewrite() {
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        1024,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!((r.status, r.body), (200, BodyKind::Length(5)));
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        1024,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.body, BodyKind::Chunked);
    let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", 1024, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.body, BodyKind::UntilClose);
    let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 1024, true)
        .unwrap()
        .unwrap();
    assert_eq!(r.body, BodyKind::None);
    let r = parse_response(b"HTTP/1.1 304 Not Modified\r\n\r\n", 1024, false)
        .unwrap()
        .unwrap();
    assert_eq!(r.body, BodyKind::None);

    let up = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate\r\nKeep-Alive: 5\r\n\r\n";
    let mut out = Vec::new();
    rewrite_response(up, ClientConnection::Upgrade, false, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    let mut out = Vec::new();
    rewrite_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ClientConnection::KeepAlive,
        false,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    );
    assert!(parse_response(b"garbage\r\n\r\n", 1024, false).is_err());
}

#[test]
fn location_paths_are_normalised_like_nginx() {
    for (raw, want) in [
        ("/ws/chat?x=1", "/ws/chat"),
        ("/a//b///c", "/a/b/c"),
        ("/a/./b/../c/", "/a/c/"),
        ("/%77s/chat", "/ws/chat"),
        ("/%2e%2E/x", ""),
        ("/a/%2e%2e/admin", "/admin"),
        ("/a/%2Fb", "/a/b"),
        ("/lr%2fx", "/lr/x"),
        ("/lr%2F%2E%2E%2Fadmin", "/admin"),
        ("/a%252Fb", "/a%2Fb"),
        ("/a%zz", "/a%zz"),
        ("/a%2", "/a%2"),
        ("/a%00b", ""),
        ("/a/..", "/"),
        ("/", "/"),
    ] {
        match normalize_path(raw) {
            Ok(p) => assert_eq!(p, want, "{raw}"),
            Err(_) => assert_eq!(want, "", "{raw} refused"),
        }
    }
    assert!(normalize_path("/../etc/passwd").is_err());
    assert!(normalize_path("/a/../../b").is_err());
}

#[test]
fn upgrade_rules() {
    let ws = vec!["websocket".to_string()];
    assert!(upgrade_allowed("websocket", &ws));
    assert!(upgrade_allowed("WebSocket", &ws));
    assert!(!upgrade_allowed("h2c", &ws));
    assert!(!upgrade_allowed("websocket, h2c", &ws));
    assert!(!upgrade_allowed(" , ", &ws));
    assert!(upgrade_matches("websocket", "websocket"));
    assert!(upgrade_matches("WebSocket", "websocket"));
    assert!(!upgrade_matches("h2c", "websocket"));
    assert!(!upgrade_matches("", "websocket"));
}

#[test]
fn framing_is_decided_once() {
    let lim = HeadLimits::flat(16384);
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close, transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert!(
            matches!(parse_request(bad, &lim), Err(HeadError::Invalid(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        1024,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.body, BodyKind::Chunked);
    assert!(r.drop_length);
    let mut out = Vec::new();
    rewrite_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ClientConnection::Close,
        r.drop_length,
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        !out.to_ascii_lowercase().contains("content-length"),
        "{out}"
    );
    assert!(
        parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
            1024,
            false
        )
        .is_err()
    );
}

#[test]
fn line_limits() {
    let lim = HeadLimits {
        head_max: 65536,
        request_line_max: 100,
        header_line_max: 200,
    };
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
    assert_eq!(
        parse_request(long_target.as_bytes(), &lim),
        Err(HeadError::UriTooLong)
    );
    // Still streaming the request line: refused as soon as it is too long.
    assert_eq!(
        parse_request(&long_target.as_bytes()[..150], &lim),
        Err(HeadError::UriTooLong)
    );
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(300)
    );
    assert_eq!(
        parse_request(long_header.as_bytes(), &lim),
        Err(HeadError::TooLarge)
    );
    assert_eq!(
        parse_request(&long_header.as_bytes()[..290], &lim),
        Err(HeadError::TooLarge)
    );
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(150)
    );
    assert!(parse_request(ok.as_bytes(), &lim).unwrap().is_some());
}

#[test]
fn error_pages_are_complete() {
    let r = error_response(502);
    let p = parse_response(&r, 1024, false).unwrap().unwrap();
    assert_eq!(p.status, 502);
    assert_eq!(p.body, BodyKind::Length((r.len() - p.head_len) as u64));
}

#[test]
fn headers_a_connection_header_names_are_dropped_from_responses_too_and_empty_tokens_name_none() {
    // A response: the header its Connection names goes, the rest stays, the status line is
    // written back as it came.
    let resp = b"HTTP/1.1 404 Not Found\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n";
    let mut out = Vec::new();
    rewrite_response(resp, ClientConnection::KeepAlive, false, &mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert_eq!(
        s,
        "HTTP/1.1 404 Not Found\r\nConnection: keep-alive\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n"
    );
    // A request whose Connection header is thousands of empty list elements: nothing is named,
    // nothing is dropped for it, and nothing is built per element.
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade{}\r\nUpgrade: websocket\r\nX-Keep: 1\r\n\r\n",
        ",".repeat(8000)
    );
    let r = parse_request(req.as_bytes(), &HeadLimits::flat(16384))
        .unwrap()
        .unwrap();
    assert!(r.upgrade.is_some());
    let mut out = Vec::new();
    rewrite_request(req.as_bytes(), &fwd(), &mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    assert!(
        s.contains("\r\nX-Keep: 1\r\n") && s.contains("\r\nConnection: upgrade\r\n"),
        "{s}"
    );
}

#[test]
fn ip_text_writes_what_display_writes() {
    let mut seen = Vec::new();
    for a in 0..=255u8 {
        let b = a.wrapping_mul(7);
        seen.push(std::net::IpAddr::from([a, b, a / 3, 255 - a]));
    }
    for s in [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.0.7",
        "1.20.100.0",
        "::",
        "::1",
        "2001:db8::8a2e:370:7334",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:255.255.255.255",
        "fe80::1:2:3:4",
    ] {
        seen.push(s.parse().unwrap());
    }
    for ip in seen {
        let mut buf = [0; super::rewrite::IP_TEXT_MAX];
        assert_eq!(
            super::rewrite::ip_text(ip, &mut buf),
            ip.to_string().as_bytes(),
            "{ip}"
        );
    }
}

#[test]
fn a_subrequest_asks_for_its_own_target_without_body_and_sets_what_it_names() {
    let head = b"POST /chat?token=x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-User: mallory\r\nAuthorization: Bearer t\r\nExpect: 100-continue\r\n\r\n";
    let set: [(&str, Option<&[u8]>); 2] =
        [("X-Original-URI", Some(b"/chat?token=x")), ("X-User", None)];
    let f = Forwarded {
        upgrade: false,
        target: Some("/auth"),
        set: &set,
        no_body: true,
        ..fwd()
    };
    let mut out = Vec::new();
    rewrite_request(head, &f, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("POST /auth HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("X-Original-URI: /chat?token=x\r\n"), "{text}");
    assert!(text.contains("Authorization: Bearer t\r\n"), "{text}");
    for gone in ["Content-Length", "Expect", "X-User", "mallory"] {
        assert!(!text.contains(gone), "{gone}: {text}");
    }
    // The proxied request: a set header with its value replaces the client's.
    let set: [(&str, Option<&[u8]>); 1] = [("x-user", Some(b"alice"))];
    let f = Forwarded { set: &set, ..fwd() };
    let mut out = Vec::new();
    rewrite_request(head, &f, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("x-user: alice\r\n") && !text.contains("mallory"),
        "{text}"
    );
    assert!(text.contains("Content-Length: 5\r\n"), "{text}");
}

#[test]
fn a_head_rewritten_from_its_parse_is_the_head_rewritten_from_its_bytes() {
    // The session rewrites from what its parse found (`*_parsed`); tests and the fuzz target
    // from the bytes. The two must write the same, Connection-named headers included.
    let requests: [&[u8]; 4] = [
        WS,
        b"GET /health HTTP/1.0\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Real-IP: spoofed\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, X-Hop\r\nUpgrade: websocket\r\nX-Hop: 1\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\nX-Forwarded-Proto: https\r\n\r\nabc",
    ];
    for head in requests {
        for upgrade in [true, false] {
            let f = Forwarded { upgrade, ..fwd() };
            let mut from_bytes = Vec::new();
            let n = parse_request(head, &HeadLimits::flat(16384))
                .unwrap()
                .unwrap()
                .head_len;
            rewrite_request(&head[..n], &f, &mut from_bytes).unwrap();
            let mut headers = Headers::new();
            let (_, lines) = parse_request_in(head, &HeadLimits::flat(16384), &mut headers)
                .unwrap()
                .unwrap();
            let mut from_parse = Vec::new();
            rewrite_request_parsed(&lines, &f, &mut from_parse);
            assert_eq!(
                String::from_utf8_lossy(&from_parse),
                String::from_utf8_lossy(&from_bytes)
            );
        }
    }
    let responses: [&[u8]; 3] = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    ];
    for head in responses {
        for conn in [
            ClientConnection::Upgrade,
            ClientConnection::KeepAlive,
            ClientConnection::Close,
        ] {
            let mut from_bytes = Vec::new();
            let p = parse_response(head, 1024, false).unwrap().unwrap();
            rewrite_response(&head[..p.head_len], conn, p.drop_length, &mut from_bytes).unwrap();
            let mut headers = Headers::new();
            let (p, lines) = parse_response_in(head, 1024, false, &mut headers)
                .unwrap()
                .unwrap();
            let mut from_parse = Vec::new();
            rewrite_response_parsed(&lines, conn, p.drop_length, &mut from_parse);
            assert_eq!(
                String::from_utf8_lossy(&from_parse),
                String::from_utf8_lossy(&from_bytes)
            );
        }
    }
}

#[test]
fn upgrade_headers_are_joined_in_order_and_invalid_text_is_replaced() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nUpgrade:  \r\nUpgrade: h2c\xff\r\nConnection: upgrade\r\n\r\n";
    let r = parse_request(head, &HeadLimits::flat(16384))
        .unwrap()
        .unwrap();
    assert_eq!(r.upgrade.as_deref(), Some("websocket, h2c\u{fffd}"));
    let one = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade:  websocket \r\n\r\n";
    let r = parse_request(one, &HeadLimits::flat(16384))
        .unwrap()
        .unwrap();
    assert_eq!(r.upgrade.as_deref(), Some("websocket"));
}
