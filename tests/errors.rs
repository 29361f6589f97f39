//! Bad input and failing upstreams: each gets its answer (400, 431, 404, 502, 504 or a close),
//! the access log says why, and a WebSocket opened before keeps working.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;

/// A live WebSocket through the proxy, checked before and after each bad case.
fn bystander(listen: SocketAddr) -> Ws {
    bystander_mode(listen, Mode::Plain)
}

fn bystander_mode(listen: SocketAddr, mode: Mode) -> Ws {
    let mut ws = ws_connect_mode(listen, "/ws/", mode);
    ws_echo(&mut ws, b"before".to_vec());
    ws
}

plain_and_tls!(
    garbage_oversized_and_silent_clients,
    wss_garbage_oversized_and_silent_clients,
    bad_clients
);

fn bad_clients(mode: Mode) {
    let st = stack_mode(mode, "badreq", "", "header_timeout = \"1s\"", "");
    let mut ws = bystander_mode(st.listen, mode);
    let raw_exchange = |addr, send: &[u8], secs| raw_exchange_mode(addr, send, secs, mode);

    // Not HTTP at all (a TLS ClientHello to a plain port).
    let out = raw_exchange(
        st.listen,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        10,
    );
    assert_eq!(status_of(&out), 400, "{}", String::from_utf8_lossy(&out));
    // A request line with junk.
    let out = raw_exchange(st.listen, b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 10);
    assert_eq!(status_of(&out), 400);
    // Request smuggling shapes are refused.
    let out = raw_exchange(
        st.listen,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        10,
    );
    assert_eq!(status_of(&out), 400);
    ws_echo(&mut ws, b"after 400".to_vec());

    // 64 KiB of headers: 431.
    let mut big = b"GET /ws/ HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..1024 {
        big.extend_from_slice(format!("X-Filler-{i:04}: {}\r\n", "v".repeat(48)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert!(big.len() >= 64 * 1024);
    let out = raw_exchange(st.listen, &big, 10);
    assert_eq!(status_of(&out), 431, "{}", String::from_utf8_lossy(&out));
    ws_echo(&mut ws, b"after 431".to_vec());

    // A client that sends half a head and goes quiet is closed after header_timeout (1s);
    // one that sends nothing at all (not even a TLS hello), too.
    let mut slow = st.connect();
    slow.write_all(b"GET /ws/ HTTP/1.1\r\nHost: a\r\n").unwrap();
    slow.flush().unwrap();
    let silent = connect(st.listen, Mode::Plain);
    for mut s in [slow, silent] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        assert_eq!(s.read(&mut b).expect("closed, not a read timeout"), 0);
    }
    ws_echo(&mut ws, b"after timeout".to_vec());

    let log = st.proxy.wait_log("end=header-timeout", 5);
    assert!(
        log.contains("status=400") && log.contains("end=bad-request:"),
        "{log}"
    );
    assert!(
        log.contains("status=431") && log.contains("end=head-too-large"),
        "{log}"
    );
}

#[test]
fn no_route_is_404() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("noroute");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let listen = free_addr();
    let cfg = format!(
        "[[upstream]]\nname = \"b\"\nservers = [{{ addr = \"{backend}\" }}]\n[[server]]\nlisten = [\"{listen}\"]\n[[server.location]]\npath = \"/ws/\"\nupstream = \"b\"\n"
    );
    let p = proxy(&cfg, listen, &dir);
    let out = raw_exchange(listen, b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n", 10);
    assert_eq!(status_of(&out), 404);
    let mut ws = ws_connect(listen, "/ws/x");
    ws_echo(&mut ws, b"routed".to_vec());
    p.wait_log("end=no-route", 5);
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    free_addr()
}

#[test]
fn all_upstreams_down_is_502_and_one_down_still_serves_everyone() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("down");
    let live = free_addr();
    let _echo = echo(&[live], &dir);
    // Location / : every server dead. Location /ws/ : one dead, one alive.
    let (d1, d2, d3) = (dead_addr(), dead_addr(), dead_addr());
    let listen = free_addr();
    let cfg = format!(
        "[[upstream]]\nname = \"dead\"\nservers = [{{ addr = \"{d1}\" }}, {{ addr = \"{d2}\" }}]\n\
         [[upstream]]\nname = \"half\"\nservers = [{{ addr = \"{d3}\" }}, {{ addr = \"{live}\" }}]\n\
         [[server]]\nlisten = [\"{listen}\"]\n\
         [[server.location]]\npath = \"/\"\nupstream = \"dead\"\n\
         [[server.location]]\npath = \"/ws/\"\nupstream = \"half\"\n"
    );
    let p = proxy(&cfg, listen, &dir);
    let mut ws = bystander(listen);
    for _ in 0..3 {
        let out = raw_exchange(listen, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 10);
        assert_eq!(status_of(&out), 502, "{}", String::from_utf8_lossy(&out));
    }
    // WebSocket upgrade to a dead upstream: also a clean 502.
    let out = raw_exchange(listen, b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 10);
    assert_eq!(status_of(&out), 502);
    // Half the servers down: the failed connect is retried on the next one, every time.
    for i in 0..20u8 {
        let mut c = ws_connect(listen, "/ws/");
        ws_echo(&mut c, vec![i; 100]);
        c.close(None).unwrap();
    }
    ws_echo(&mut ws, b"after 502".to_vec());
    let log = p.wait_log("end=no-upstream", 5);
    assert!(log.contains("status=502"), "{log}");
    assert!(
        log.contains("ECONNREFUSED"),
        "the failed connects are logged: {log}"
    );
}

#[test]
fn silent_upstream_is_504() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("silent");
    let live = free_addr();
    let _echo = echo(&[live], &dir);
    // A backend that accepts and never answers.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in mute.incoming().take(2) {
            held.push(s.unwrap());
        }
        std::thread::sleep(Duration::from_secs(8));
        drop(held);
    });
    let listen = free_addr();
    let cfg = format!(
        "[[upstream]]\nname = \"mute\"\nservers = [{{ addr = \"{mute_addr}\" }}]\n\
         [[upstream]]\nname = \"live\"\nservers = [{{ addr = \"{live}\" }}]\n\
         [[server]]\nlisten = [\"{listen}\"]\n\
         [[server.location]]\npath = \"/\"\nupstream = \"mute\"\nread_timeout = \"1s\"\n\
         [[server.location]]\npath = \"/ws/\"\nupstream = \"live\"\n"
    );
    let p = proxy(&cfg, listen, &dir);
    let mut ws = bystander(listen);
    let out = raw_exchange(listen, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n", 20);
    assert_eq!(status_of(&out), 504, "{}", String::from_utf8_lossy(&out));
    let out = raw_exchange(listen, b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", 20);
    assert_eq!(status_of(&out), 504);
    ws_echo(&mut ws, b"after 504".to_vec());
    p.wait_log("end=upstream-timeout", 5);
    holder.join().unwrap();
}

plain_and_tls!(
    upstream_closing_mid_tunnel_ends_the_client_cleanly,
    wss_upstream_closing_mid_tunnel_ends_the_client_cleanly,
    upstream_mid_close
);

fn upstream_mid_close(mode: Mode) {
    let dir = scratch("midclose");
    // A backend that completes the handshake, sends one frame and closes the TCP connection.
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let baddr = b.local_addr().unwrap();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = b.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec();
        resp.extend(ringway_proxy::ws::frame(
            ringway_proxy::ws::opcode::TEXT,
            b"bye",
            None,
        ));
        s.write_all(&resp).unwrap();
    });
    let listen = free_addr();
    let tls = if mode == Mode::Tls {
        tls_line()
    } else {
        String::new()
    };
    let p = proxy(&config(listen, &[baddr], "", &tls, ""), listen, &dir);
    let mut ws = RawWs::connect_mode(listen, "/", "", mode);
    assert!(ws.head.starts_with("HTTP/1.1 101"));
    assert_eq!(ws.read_frame().3, b"bye");
    backend.join().unwrap();
    let mut rest = Vec::new();
    ws.s.read_to_end(&mut rest)
        .expect("a clean FIN, not a hang");
    assert!(rest.is_empty());
    // The FIN was passed on as a half-close; when the client closes too, the session ends.
    drop(ws);
    p.wait_log("ws end=done", 5);
}

// Over TLS the half-close is a close_notify then a FIN, each way.
plain_and_tls!(
    client_half_close_reaches_the_backend_and_bytes_still_flow_back,
    wss_client_half_close_reaches_the_backend_and_bytes_still_flow_back,
    half_close
);

fn half_close(mode: Mode) {
    let dir = scratch("halfclose");
    // A backend that completes the handshake, reads until the client's FIN, then answers
    // with what it read and closes.
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let baddr = b.local_addr().unwrap();
    let backend = std::thread::spawn(move || {
        let (mut s, _) = b.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").unwrap();
        let mut after = Vec::new();
        s.read_to_end(&mut after).expect("the client's FIN arrives");
        s.write_all(&after).unwrap();
        after
    });
    let listen = free_addr();
    let tls = if mode == Mode::Tls {
        tls_line()
    } else {
        String::new()
    };
    let p = proxy(&config(listen, &[baddr], "", &tls, ""), listen, &dir);
    let mut ws = RawWs::connect_mode(listen, "/", "", mode);
    assert!(ws.head.starts_with("HTTP/1.1 101"));
    ws.send_frame(true, 0, ringway_proxy::ws::opcode::BINARY, b"last words");
    ws.s.shutdown(std::net::Shutdown::Write).unwrap();
    // The backend only answers once the FIN reached it; the answer still comes back, then
    // the backend's FIN.
    let mut back = std::mem::take(&mut ws.buf);
    ws.s.read_to_end(&mut back)
        .expect("the answer, then a clean FIN");
    let seen = backend.join().unwrap();
    assert_eq!(
        seen.len(),
        2 + 4 + 10,
        "the backend saw the masked frame, then EOF"
    );
    assert_eq!(back, seen);
    p.wait_log("ws end=done", 5);
}

plain_and_tls!(
    idle_tunnel_is_closed_after_read_timeout,
    wss_idle_tunnel_is_closed_after_read_timeout,
    idle_tunnel
);

fn idle_tunnel(mode: Mode) {
    let st = stack_mode(mode, "idle", "read_timeout = \"1s\"", "", "");
    let mut ws = st.ws("/ws/");
    ws_echo(&mut ws, b"active".to_vec());
    // Nothing either way for read_timeout: the proxy closes both sides.
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed)
        | Err(tungstenite::Error::Protocol(_))
        | Err(tungstenite::Error::Io(_)) => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    st.proxy.wait_log("ws end=idle-timeout", 5);
}
