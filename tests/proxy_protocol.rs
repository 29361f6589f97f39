//! Whom a connection is really from.
//!
//! - A `proxy_protocol` listener reads PROXY v1 and v2 (also before TLS), only from
//!   `trusted_proxies`; the address carried is the client for X-Real-IP / X-Forwarded-For and
//!   the log; anything else there is refused.
//! - `real_ip_header X-Forwarded-For` from a trusted front end.
//! - `proxy_protocol = "v2"` toward an upstream (a second ringway reading it).
//! - Debian's HAProxy in TCP mode with `send-proxy-v2` spreading clients over two ringway
//!   processes: the backend sees the original addresses; SIGTERM to one moves new connections
//!   to the other with none refused.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The `/headers` JSON the echo answered on `s` (a request already sent).
fn headers_of(s: &mut impl Read) -> serde_json::Value {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 200, "{text}");
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn header<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    v["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .and_then(|h| h[1].as_str())
}

const GET: &[u8] = b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

fn from(ip: &str, to: SocketAddr) -> TcpStream {
    let s = tcp_from(to, Some(ip.parse().unwrap())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn proxy_protocol_listener_takes_v1_and_v2_from_trusted_balancers_only() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(
        Mode::Plain,
        "pp-listener",
        "",
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.0/30\"]",
        "",
    );
    // v1 from a trusted balancer (127.0.0.1).
    let mut s = from("127.0.0.1", st.listen);
    s.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443\r\n")
        .unwrap();
    s.write_all(GET).unwrap();
    let v = headers_of(&mut s);
    assert_eq!(header(&v, "X-Real-IP"), Some("203.0.113.7"));
    assert_eq!(header(&v, "X-Forwarded-For"), Some("203.0.113.7"));
    // v2, in one write with the request, from 127.0.0.2 (also trusted), IPv6 client.
    let mut s = from("127.0.0.2", st.listen);
    let mut b = ringway_proxy::http::proxy::v2_header(
        "[2001:db8::9]:5555".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    );
    b.extend_from_slice(GET);
    s.write_all(&b).unwrap();
    let v = headers_of(&mut s);
    assert_eq!(header(&v, "X-Real-IP"), Some("2001:db8::9"));
    // A LOCAL header (the balancer's own check): the connection's address stands.
    let mut s = from("127.0.0.1", st.listen);
    let mut b = ringway_proxy::http::proxy::v2_local();
    b.extend_from_slice(GET);
    s.write_all(&b).unwrap();
    assert_eq!(header(&headers_of(&mut s), "X-Real-IP"), Some("127.0.0.1"));
    // A WebSocket through a v1 header: the access log has the client.
    let mut s = from("127.0.0.1", st.listen);
    s.write_all(b"PROXY TCP4 198.51.100.20 10.0.0.1 1234 80\r\n")
        .unwrap();
    let (mut ws, _) =
        tungstenite::client(format!("ws://localhost:{}/ws/", st.listen.port()), s).unwrap();
    ws.send(tungstenite::Message::text("through PROXY"))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        tungstenite::Message::text("through PROXY")
    );
    drop(ws);
    st.proxy.wait_log("198.51.100.20:1234 \"GET /ws/\"", 10);
    // Refused: no header, a broken one, an untrusted peer (127.0.0.5).
    for (ip, send) in [
        ("127.0.0.1", GET),
        ("127.0.0.1", &b"PROXY TCP4 1.2.3.4 nonsense\r\n"[..]),
        (
            "127.0.0.5",
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 443\r\n"[..],
        ),
    ] {
        let mut s = from(ip, st.listen);
        let _ = s.write_all(send);
        let _ = s.write_all(GET);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(
            out.is_empty(),
            "{ip} {:?} got {:?}",
            String::from_utf8_lossy(send),
            String::from_utf8_lossy(&out)
        );
    }
}

#[test]
fn proxy_protocol_comes_before_tls() {
    if !uring_ok() {
        return;
    }
    let st = stack_mode(
        Mode::Tls,
        "pp-tls",
        "",
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
        "",
    );
    let mut tcp = from("127.0.0.1", st.listen);
    tcp.write_all(b"PROXY TCP4 192.0.2.44 10.0.0.1 7000 443\r\n")
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let c = rustls::ClientConnection::new(pki().client.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(c, tcp);
    s.write_all(GET).unwrap();
    let v = headers_of(&mut s);
    assert_eq!(header(&v, "X-Real-IP"), Some("192.0.2.44"));
    assert_eq!(header(&v, "X-Forwarded-Proto"), Some("https"));
}

#[test]
fn real_ip_header_is_taken_from_trusted_front_ends_only() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "real-ip",
        "",
        "real_ip_header = \"X-Forwarded-For\"\ntrusted_proxies = [\"127.0.0.1\"]",
        "",
    );
    let ask = |ip: &str, xff: &str| {
        let mut s = from(ip, st.listen);
        s.write_all(
            format!("GET /headers HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let v = headers_of(&mut s);
        (
            header(&v, "X-Real-IP").unwrap().to_string(),
            header(&v, "X-Forwarded-For").unwrap().to_string(),
        )
    };
    assert_eq!(
        ask("127.0.0.1", "10.1.1.1, 192.0.2.9").0,
        "192.0.2.9",
        "the last address, from a trusted front end"
    );
    let (real, xff) = ask("127.0.0.3", "192.0.2.9");
    assert_eq!(
        real, "127.0.0.3",
        "an untrusted peer cannot claim an address"
    );
    assert_eq!(xff, "192.0.2.9, 127.0.0.3");
}

#[test]
fn proxy_protocol_v2_toward_an_upstream() {
    if !uring_ok() {
        return;
    }
    // ringway B reads PROXY from A (127.0.0.1) and proxies to the echo.
    let dir = scratch("pp-upstream");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let b_listen = free_addr();
    let b_dir = dir.join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let _b = proxy(
        &config(
            b_listen,
            &[backend],
            "",
            "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
            "",
        ),
        b_listen,
        &b_dir,
    );
    let a_listen = free_addr();
    let a_cfg = config(a_listen, &[b_listen], "", "", "").replace(
        "name = \"backend\"\n",
        "name = \"backend\"\nproxy_protocol = \"v2\"\nkeepalive = 8\n",
    );
    let _a = proxy(&a_cfg, a_listen, &dir);
    for ip in ["127.0.0.7", "127.0.0.8"] {
        for _ in 0..2 {
            let mut s = from(ip, a_listen);
            s.write_all(GET).unwrap();
            assert_eq!(header(&headers_of(&mut s), "X-Real-IP"), Some(ip));
        }
        let mut ws = ws_connect_from(a_listen, "/ws/", Mode::Plain, Some(ip.parse().unwrap()));
        ws_echo(&mut ws, vec![7; 70_000]);
    }
}

/// HAProxy in TCP mode in front of two ringway processes.
#[test]
fn haproxy_send_proxy_v2_in_front_of_two_instances_and_a_drain_refuses_nothing() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("pp-haproxy");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let all = instances(
        &dir,
        2,
        &[backend],
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
        "shutdown_grace = \"20s\"\ndrain_spread = \"2s\"",
    );
    let mut rings: Vec<Proc> = all
        .iter()
        .map(|i| proxy(&i.cfg, i.listen, &i.dir))
        .collect();
    let addrs: Vec<_> = all.iter().map(|i| (i.listen, i.admin)).collect();
    let front = free_addr();
    let hcfg = format!(
        "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch 1\n\
         frontend f\n  bind {front}\n  default_backend b\n\
         backend b\n  balance roundrobin\n  option httpchk GET /healthz\n\
           server r0 {} send-proxy-v2 check port {} inter 200ms fall 1 rise 2\n\
           server r1 {} send-proxy-v2 check port {} inter 200ms fall 1 rise 2\n",
        addrs[0].0,
        addrs[0].1.port(),
        addrs[1].0,
        addrs[1].1.port()
    );
    let hpath = dir.join("haproxy.cfg");
    std::fs::write(&hpath, hcfg).unwrap();
    let Some(mut hp) = tool(
        "haproxy",
        &["-db", "-f", hpath.to_str().unwrap()],
        &dir,
        "haproxy",
    ) else {
        return;
    };
    wait_port(front, &mut hp);
    std::thread::sleep(Duration::from_millis(600)); // both servers checked up

    // Original client addresses reach the backend, over both instances.
    let mut served_by = [0u32; 2];
    for k in 0..20u8 {
        let ip = format!("127.0.{}.{}", 10 + k / 5, 20 + k);
        let mut s = from(&ip, front);
        s.write_all(GET).unwrap();
        let v = headers_of(&mut s);
        assert_eq!(
            header(&v, "X-Real-IP"),
            Some(ip.as_str()),
            "through HAProxy"
        );
    }
    for (i, r) in rings.iter().enumerate() {
        served_by[i] = r.log_text().matches("\"GET /headers\"").count() as u32;
    }
    let logs = rings[0].log_text() + &rings[1].log_text();
    assert!(
        logs.contains("127.0.13.35:"),
        "the access log names the original client"
    );
    eprintln!("requests per instance: {served_by:?}");
    assert!(
        served_by.iter().all(|n| *n > 0),
        "HAProxy spread them: {served_by:?}"
    );

    // Tunnels on both; then a client loop while instance 0 drains.
    let since: Arc<Mutex<Option<Instant>>> = Default::default();
    let quiet = Arc::new(AtomicBool::new(false));
    let tunnels = chatters(20, front, "/ws/", &quiet, &since);
    let looping = ConnectLoop::start(front, |n| {
        Some(
            format!("127.1.{}.{}", n / 200 % 200, n % 200 + 1)
                .parse()
                .unwrap(),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    *since.lock().unwrap() = Some(Instant::now());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rings[0].pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut rings[0], 30);
    assert!(status.success());
    let after_exit = looping.done();
    std::thread::sleep(Duration::from_secs(1));
    let done = looping.done();
    let failed = looping.stop();
    eprintln!(
        "client loop through HAProxy: {done} exchanges ({} after instance 0 exited), {} failed",
        done - after_exit,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "none refused: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(done > after_exit, "instance 1 took the new ones");
    // The tunnels of instance 0 were told (1012) and ended; those of instance 1 chat on.
    quiet.store(true, Ordering::Relaxed);
    let results: Vec<Chat> = tunnels.into_iter().map(|h| h.join().unwrap()).collect();
    let told = results
        .iter()
        .filter(|c| c.closes == 1 && c.code == Some(1012))
        .count();
    let stayed = results.iter().filter(|c| c.closes == 0).count();
    eprintln!("tunnels: {told} told to reconnect by instance 0, {stayed} stayed on instance 1");
    assert!(results.iter().all(|c| c.error.is_none()), "{results:?}");
    assert_eq!(told + stayed, results.len());
    assert!(told > 0 && stayed > 0);
}

/// What a peer can make a PROXY listener hold: a header that never ends is cut at
/// `header_timeout`, one longer than the protocol allows at once; a bystander is unaffected.
#[test]
fn a_stalled_or_oversized_proxy_header_is_bounded() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "pp-bounds",
        "",
        "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nheader_timeout = \"1s\"",
        "",
    );
    let ends = |send: &[u8]| {
        let mut s = from("127.0.0.1", st.listen);
        s.write_all(send).unwrap();
        let t = Instant::now();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
        t.elapsed()
    };
    // v1 cut short and never finished: closed by header_timeout (read timeout here is 10 s).
    let stalled = ends(b"PROXY TCP4 192.0.2.1 ");
    // v2 announcing 65,535 bytes of addresses: past the 2,064-byte bound, closed at once.
    let mut big = ringway_proxy::http::proxy::V2_SIG.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let oversized = ends(&big);
    // v1 without its CRLF past 107 bytes.
    let long = ends(format!("PROXY TCP4 {}", "1".repeat(200)).as_bytes());
    eprintln!(
        "stalled closed after {stalled:?}, oversized after {oversized:?}, long after {long:?}"
    );
    // Ended by header_timeout (not by this client's 10 s read timeout): the log says so.
    st.proxy.wait_log("end=header-timeout", 5);
    let mut s = from("127.0.0.1", st.listen);
    s.write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 1 2\r\n")
        .unwrap();
    s.write_all(GET).unwrap();
    assert_eq!(
        header(&headers_of(&mut s), "X-Real-IP"),
        Some("203.0.113.9")
    );
}
