//! Shutdown as an operator sees it: SIGTERM stops accepting, `/healthz` turns 503, idle
//! keep-alive connections close, tunnels get their Close over `drain_spread`, what is left at
//! `shutdown_grace` is closed and the process exits 0; a second SIGTERM closes everything at
//! once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tungstenite::Message;

fn sigterm(p: &Proc) {
    kill(Pid::from_raw(p.pid() as i32), Signal::SIGTERM).unwrap();
}

/// One keep-alive request on `s`; returns the response head once its body has arrived.
fn keep_alive_get(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length response");
            if buf.len() >= end + 4 + len {
                return head;
            }
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed mid-response");
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Wait until the peer closes `s` (EOF or reset), failing after `secs`.
fn wait_closed(s: &mut TcpStream, secs: u64) {
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("not closed within {secs}s: {e}"),
        }
    }
}

/// Wait until connecting to `addr` is refused, failing after `secs`.
fn wait_refused(addr: SocketAddr, secs: u64) {
    let t = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {
                assert!(
                    t.elapsed() < Duration::from_secs(secs),
                    "{addr} still accepts connections {secs}s after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn sigterm_drains_then_closes_after_the_grace() {
    if !uring_ok() {
        return;
    }
    let admin = free_addr();
    let mut st = stack(
        "drain",
        "",
        "",
        &format!("shutdown_grace = \"6s\"\ndrain_spread = \"4s\"\n[admin]\nlisten = \"{admin}\""),
    );
    let health = || status_of(&admin_get(admin, "/healthz"));
    assert_eq!(health(), 200);
    let mut ws = ws_connect(st.listen, "/ws/");
    ws_echo(&mut ws, b"before".to_vec());
    // A client that never answers the proxy's Close.
    let mut deaf = st.raw_ws("/ws/", "");
    let mut idle = TcpStream::connect(st.listen).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = keep_alive_get(&mut idle, "/health");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Connection: keep-alive"), "{head}");

    sigterm(&st.proxy);
    // "SIGTERM: draining", not "draining": the preflight's tcp_migrate_req warning at start
    // says "draining" too.
    st.proxy.wait_log("SIGTERM: draining", 10);
    // The tunnels are told in the middle of their slots of the 4 s spread (1 s and 3 s): the
    // first one still carries messages now.
    ws_echo(&mut ws, b"during the drain".to_vec());
    // No new sessions; the load balancer's probe sees it.
    wait_refused(st.listen, 10);
    assert_eq!(health(), 503);
    // The idle keep-alive connection is closed.
    wait_closed(&mut idle, 10);
    // The tunnels get a Close 1012 "service restart"; tungstenite answers it and the session
    // ends by the close handshake.
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    match ws.read() {
        Ok(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1012);
            assert_eq!(f.reason.as_str(), "service restart");
        }
        other => panic!("expected the Close, got {other:?}"),
    }
    assert!(ws.read().is_err(), "then the end");
    deaf.s
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (_, _, op, payload) = deaf.read_frame();
    assert_eq!((op, &payload[..2]), (0x8, &1012u16.to_be_bytes()[..]));
    // The deaf one is closed at the grace, and the process exits cleanly.
    let mut rest = Vec::new();
    let _ = deaf.s.read_to_end(&mut rest);
    let status = wait_exit(&mut st.proxy, 20);
    assert!(status.success(), "exit {status}:\n{}", st.proxy.log_text());
    let log = st.proxy.log_text();
    let tunnels: Vec<&str> = log.lines().filter(|l| l.contains("\"GET /ws/\"")).collect();
    assert!(
        tunnels.iter().any(|l| l.contains("ws end=drained")),
        "the answered tunnel ended by its close handshake:\n{log}"
    );
    assert!(
        tunnels.iter().any(|l| l.contains("ws end=shutdown")),
        "the deaf one at the grace:\n{log}"
    );
}

#[test]
fn second_sigterm_closes_at_once() {
    if !uring_ok() {
        return;
    }
    let mut st = stack("drain-twice", "", "", "shutdown_grace = \"1h\"");
    let mut ws = ws_connect(st.listen, "/ws/");
    ws_echo(&mut ws, b"x".to_vec());
    sigterm(&st.proxy);
    // The first SIGTERM taken before the second is sent: two pending at once are one (the
    // preflight's warning says "draining" too, which once let the second go out early).
    st.proxy.wait_log("SIGTERM: draining", 10);
    ws_echo(&mut ws, b"still served".to_vec());
    sigterm(&st.proxy);
    st.proxy.wait_log("closing every session now", 10);
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert!(ws.read().is_err(), "the tunnel is closed");
    let status = wait_exit(&mut st.proxy, 20);
    assert!(status.success(), "exit {status}:\n{}", st.proxy.log_text());
}
