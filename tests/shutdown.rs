//! Shutdown as an operator sees it: SIGTERM stops accepting, `/healthz` turns 503, idle
//! keep-alive connections close, tunnels run on until `shutdown_grace`, then are closed and
//! the process exits 0; a second SIGTERM closes everything at once.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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

fn wait_exit(p: &mut Proc, secs: u64) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "still running {secs}s after shutdown began:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
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
        &format!("shutdown_grace = \"3s\"\n[admin]\nlisten = \"{admin}\""),
    );
    let health = || status_of(&raw_exchange(admin, b"GET /healthz HTTP/1.1\r\n\r\n", 10));
    assert_eq!(health(), 200);
    let mut ws = ws_connect(st.listen, "/ws/");
    ws_echo(&mut ws, b"before".to_vec());
    let mut idle = TcpStream::connect(st.listen).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = keep_alive_get(&mut idle, "/health");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Connection: keep-alive"), "{head}");

    sigterm(&st.proxy);
    st.proxy.wait_log("draining", 10);
    // No new sessions; the load balancer's probe sees it.
    wait_refused(st.listen, 10);
    assert_eq!(health(), 503);
    // The idle keep-alive connection is closed; the tunnel still carries messages.
    wait_closed(&mut idle, 10);
    ws_echo(&mut ws, b"during the drain".to_vec());
    // Past the grace the tunnel is closed and the process exits cleanly.
    ws.get_mut()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    match ws.read() {
        Ok(m) => panic!("expected the tunnel to close, got {m:?}"),
        Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("tunnel not closed 20s into a 3s grace")
        }
        Err(_) => {}
    }
    let status = wait_exit(&mut st.proxy, 20);
    assert!(status.success(), "exit {status}:\n{}", st.proxy.log_text());
    let log = st.proxy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("\"GET /ws/\"") && l.contains("ws end=shutdown")),
        "the tunnel's access-log line says shutdown:\n{log}"
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
    st.proxy.wait_log("draining", 10);
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
