//! `auth_request` as a user runs it: a real auth service (`tests/auth/server.py`, Python's
//! http.server, as one would write it behind nginx's auth_request) in front of the echo
//! backend, WebSocket clients that are not ours (tungstenite) carrying their token each way a
//! client can (an Authorization header, a cookie, the query string, a WebSocket subprotocol:
//! all a browser's WebSocket can set), and what the upstream and the auth service saw.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::client::IntoClientRequest;

/// The auth service on `addr`, logging each request it gets to `log`.
struct AuthService {
    child: Child,
    log: std::path::PathBuf,
}

impl AuthService {
    fn start(addr: SocketAddr, dir: &std::path::Path) -> AuthService {
        let log = dir.join("auth.log");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/auth/server.py");
        let child = Command::new("python3")
            .args([script, &addr.port().to_string(), log.to_str().unwrap()])
            .spawn()
            .expect("python3");
        let t = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "auth service never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        AuthService { child, log }
    }

    /// The requests it got, in order.
    fn seen(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stack whose `/` location asks `auth` (at `auth_addr`) with `extra` in its auth_request.
fn auth_stack(name: &str, auth_addr: SocketAddr, extra: &str) -> Stack {
    stack(
        name,
        &format!(
            "auth_request = {{ upstream = \"auth\", uri = \"/check\", set = {{ \"X-User\" = \"X-Auth-User\" }}{extra} }}"
        ),
        "",
        &format!(
            "\n[[upstream]]\nname = \"auth\"\nkeepalive = 8\nservers = [{{ addr = \"{auth_addr}\" }}]"
        ),
    )
}

/// A WebSocket upgrade to `path` with `headers`: its status, and the client when it is 101.
fn upgrade(st: &Stack, path: &str, headers: &[(&str, &str)]) -> (u16, Option<Ws>) {
    let stream = st.connect();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut req = format!("ws://localhost:{}{path}", st.listen.port())
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .append(name, tungstenite::http::HeaderValue::from_str(v).unwrap());
    }
    match tungstenite::client::client(req, stream) {
        Ok((ws, resp)) => (resp.status().as_u16(), Some(ws)),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            (resp.status().as_u16(), None)
        }
        Err(e) => panic!("upgrade: {e}"),
    }
}

/// An upgrade to `/ws` written by hand with `extra` header lines: the first response head
/// that comes back (for what no client library sends, or reads, as such).
fn raw_upgrade(st: &Stack, extra: &str) -> Vec<u8> {
    let mut s = st.connect();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!("GET /ws HTTP/1.1\r\nHost: x\r\n{WS_REQ}{extra}\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    head
}

/// The headers the echo backend got with the upgrade (its first message on `/headers`).
fn upstream_headers(ws: &mut Ws) -> Vec<(String, String)> {
    let m = ws.read().unwrap().into_text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_ascii_lowercase(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn values<'a>(hs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    hs.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn a_token_in_any_place_a_client_can_put_it_lets_the_upgrade_through_and_names_the_user() {
    if !uring_ok() {
        return;
    }
    let auth_addr = free_addr();
    let dir = scratch("auth-ok");
    let auth = AuthService::start(auth_addr, &dir);
    let st = auth_stack("auth-ok", auth_addr, "");
    // A bearer token; the client's own X-User is not what the upstream gets.
    let (status, ws) = upgrade(
        &st,
        "/headers",
        &[("Authorization", "Bearer alice"), ("X-User", "mallory")],
    );
    assert_eq!(status, 101);
    let hs = upstream_headers(&mut ws.unwrap());
    assert_eq!(values(&hs, "x-user"), ["alice"], "{hs:?}");
    assert!(values(&hs, "x-original-uri").is_empty(), "{hs:?}");
    // The query string, a cookie, a subprotocol (the ways a browser's WebSocket can carry
    // one); the echo picks no subprotocol, so this one is checked on the raw 101.
    let (status, ws) = upgrade(&st, "/headers?token=bob", &[]);
    assert_eq!(status, 101);
    assert_eq!(
        values(&upstream_headers(&mut ws.unwrap()), "x-user"),
        ["bob"]
    );
    let (status, ws) = upgrade(&st, "/headers", &[("Cookie", "theme=dark; token=alice")]);
    assert_eq!(status, 101);
    assert_eq!(
        values(&upstream_headers(&mut ws.unwrap()), "x-user"),
        ["alice"]
    );
    let head = raw_upgrade(&st, "Sec-WebSocket-Protocol: token.bob, chat\r\n");
    assert_eq!(status_of(&head), 101, "{}", String::from_utf8_lossy(&head));
    // Messages flow once allowed.
    let (_, ws) = upgrade(&st, "/", &[("Authorization", "Bearer alice")]);
    let mut ws = ws.unwrap();
    ws_echo(&mut ws, b"after the auth".to_vec());
    // A plain request with a body, allowed: the body waited for the answer, then went up
    // whole (the subrequest went without it).
    let out = raw_exchange(
        st.listen,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bob\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
        10,
    );
    assert_eq!(status_of(&out), 200, "{}", String::from_utf8_lossy(&out));
    assert!(
        out.ends_with(b"hello world"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Refused: no token 401, eve 403 (both to the client as they came); an answer that is
    // neither 2xx, 401 nor 403 is 500.
    assert_eq!(upgrade(&st, "/", &[]).0, 401);
    assert_eq!(upgrade(&st, "/", &[("Authorization", "Bearer eve")]).0, 403);
    assert_eq!(
        upgrade(&st, "/", &[("Authorization", "Bearer broken")]).0,
        500
    );
    let log = st.proxy.wait_log("end=auth-failed:status", 10);
    assert!(
        log.contains("status=401") && log.contains("end=auth-denied"),
        "{log}"
    );
    // What the auth service got: the configured target, the client's own in
    // X-Original-URI with its method, the client's headers, no body, no upgrade.
    let seen = auth.seen();
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert!(seen.iter().all(|r| r["path"] == "/check"), "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r["method"] == "GET" || r["method"] == "POST"),
        "{seen:?}"
    );
    assert_eq!(seen[5]["method"], "POST", "the client's method: {seen:?}");
    assert!(seen.iter().all(|r| r["upgrade"].is_null()), "{seen:?}");
    assert!(
        seen.iter().all(|r| r["content_length"].is_null()),
        "{seen:?}"
    );
    assert_eq!(seen[1]["orig"], "/headers?token=bob");
    assert_eq!(seen[1]["token"], "bob");
    assert_eq!(seen[3]["token"], "bob", "the subprotocol's token");
    // Kept-alive connections to the auth service (keepalive = 8): the nine subrequests went
    // over fewer connections (one per worker that served them, and a new one after an answer
    // that closed it).
    let ports: std::collections::HashSet<u64> =
        seen.iter().map(|r| r["port"].as_u64().unwrap()).collect();
    assert!(
        ports.len() <= 4,
        "{} connections for 8 subrequests",
        ports.len()
    );
}

#[test]
fn an_auth_service_that_is_down_or_slow_is_500_and_the_proxy_goes_on() {
    if !uring_ok() {
        return;
    }
    // Nothing listens: 500, end=auth-failed:unreachable.
    let (down, _hold) = refused_addr();
    let st = auth_stack("auth-down", down, ", timeout = \"1s\"");
    assert_eq!(
        upgrade(&st, "/", &[("Authorization", "Bearer alice")]).0,
        500
    );
    st.proxy.wait_log("status=500", 10);
    assert!(
        st.proxy.log_text().contains("end=auth-failed:unreachable"),
        "{}",
        st.proxy.log_text()
    );
    // Slower than the timeout: 500 after it, end=auth-failed:timeout; the next request is
    // served as before.
    let auth_addr = free_addr();
    let dir = scratch("auth-slow");
    let _auth = AuthService::start(auth_addr, &dir);
    let st = auth_stack("auth-slow", auth_addr, ", timeout = \"1s\"");
    let t = Instant::now();
    assert_eq!(
        upgrade(&st, "/", &[("Authorization", "Bearer slow")]).0,
        500
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    st.proxy.wait_log("end=auth-failed:timeout", 10);
    assert_eq!(
        upgrade(&st, "/", &[("Authorization", "Bearer alice")]).0,
        101
    );
    // An answer head past the bound: 500 (bad-answer), nothing held of it. An answer with a
    // body: allowed (the body is not read; that connection is not kept).
    assert_eq!(
        upgrade(&st, "/", &[("Authorization", "Bearer huge")]).0,
        500
    );
    st.proxy.wait_log("end=auth-failed:bad-answer", 10);
    for _ in 0..3 {
        let (status, ws) = upgrade(&st, "/headers", &[("Authorization", "Bearer talker")]);
        assert_eq!(status, 101);
        assert_eq!(
            values(&upstream_headers(&mut ws.unwrap()), "x-user"),
            ["talker"]
        );
    }
    assert_eq!(
        upgrade(&st, "/", &[("Authorization", "Bearer alice")]).0,
        101
    );
    // An interim answer (103) from the auth service does not reach the client: its first
    // response is the 101.
    let head = raw_upgrade(&st, "Authorization: Bearer early\r\n");
    assert_eq!(status_of(&head), 101, "{}", String::from_utf8_lossy(&head));
}

#[test]
fn answers_are_kept_for_the_same_credentials_when_asked_to() {
    if !uring_ok() {
        return;
    }
    let auth_addr = free_addr();
    let dir = scratch("auth-cache");
    let auth = AuthService::start(auth_addr, &dir);
    let st = auth_stack("auth-cache", auth_addr, ", cache = \"30s\"");
    for _ in 0..5 {
        let (status, ws) = upgrade(&st, "/headers", &[("Authorization", "Bearer alice")]);
        assert_eq!(status, 101);
        assert_eq!(
            values(&upstream_headers(&mut ws.unwrap()), "x-user"),
            ["alice"]
        );
    }
    for _ in 0..3 {
        assert_eq!(upgrade(&st, "/", &[("Authorization", "Bearer eve")]).0, 403);
    }
    // Another token is another question.
    assert_eq!(upgrade(&st, "/", &[("Authorization", "Bearer bob")]).0, 101);
    let seen = auth.seen();
    let asked = |t: &str| seen.iter().filter(|r| r["token"] == t).count();
    // Each worker asks once per credentials (two workers: at most two each).
    assert!((1..=2).contains(&asked("alice")), "{seen:?}");
    assert!((1..=2).contains(&asked("eve")), "{seen:?}");
    assert_eq!(asked("bob"), 1, "{seen:?}");
}
