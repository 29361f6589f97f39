//! Heartbeats through real processes and a WebSocket client that is not ours (tungstenite):
//! a client behind an idle cutoff (a NAT / L4 balancer that drops connections idle for a few
//! seconds) stays connected through the pings it answers; a client that stops answering is
//! closed with 1001 and `end=heartbeat-timeout`; frames of every size stay byte-exact around
//! the injected pings, and the Pongs that answer our pings go no further.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

fn clock() -> u64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A TCP relay to `target` that drops a connection (both ways) once it has carried nothing for
/// `cutoff`, as NAT tables and L4 balancers do. Returns its address and how many it cut.
fn idle_cutoff(target: SocketAddr, cutoff: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let cut = Arc::new(AtomicU64::new(0));
    let cut2 = cut.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(16) {
            let Ok(c) = c else { return };
            let Ok(u) = TcpStream::connect(target) else {
                continue;
            };
            let last = Arc::new(AtomicU64::new(clock()));
            let done = Arc::new(AtomicBool::new(false));
            for (mut a, mut b) in [
                (c.try_clone().unwrap(), u.try_clone().unwrap()),
                (u.try_clone().unwrap(), c.try_clone().unwrap()),
            ] {
                let (last, done) = (last.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match a.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                last.store(clock(), Ordering::Relaxed);
                                if b.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = b.shutdown(Shutdown::Write);
                    done.store(true, Ordering::Relaxed);
                });
            }
            let cut = cut2.clone();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if clock() - last.load(Ordering::Relaxed) > cutoff.as_millis() as u64 {
                        cut.fetch_add(1, Ordering::Relaxed);
                        let _ = c.shutdown(Shutdown::Both);
                        let _ = u.shutdown(Shutdown::Both);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    (addr, cut)
}

/// A location `/hb/` with a heartbeat beside the default `/` without one.
fn hb_locations(heartbeat: &str) -> String {
    format!(
        "read_timeout = \"10m\"\n\n[[server.location]]\npath = \"/hb/\"\nupstream = \"backend\"\nread_timeout = \"10m\"\nheartbeat = {heartbeat}\n"
    )
}

/// Hold a tungstenite client for `hold`, one echoed message every 10 s, reading in between
/// (tungstenite answers pings as it reads). Returns (messages echoed, pings seen, how long it
/// lasted).
fn hold(addr: SocketAddr, path: &str, hold: Duration) -> (u32, u32, Duration) {
    let mut ws = ws_connect(addr, path);
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = Instant::now();
    let (mut echoed, mut pings) = (0, 0);
    let mut next_send = Duration::ZERO;
    let mut waiting: Option<String> = None;
    while t.elapsed() < hold {
        if waiting.is_none() && t.elapsed() >= next_send {
            let m = format!("message {echoed}");
            if ws.send(Message::text(m.clone())).is_err() {
                break;
            }
            waiting = Some(m);
            next_send += Duration::from_secs(10);
        }
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Text(m)) => {
                assert_eq!(Some(m.as_str()), waiting.as_deref());
                waiting = None;
                echoed += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    (echoed, pings, t.elapsed())
}

#[test]
fn a_client_behind_an_idle_cutoff_stays_connected_through_the_pings_it_answers() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "hb-cutoff",
        &hb_locations("{ interval = \"1s\", timeout = \"5s\" }"),
        "",
        "",
    );
    // The cutoff (3 s) is far shorter than read_timeout (10 min): only pings keep a
    // connection through it.
    let (relay, cut) = idle_cutoff(st.listen, Duration::from_secs(3));
    let hold_for = Duration::from_secs(120);
    let plain = std::thread::spawn(move || hold(relay, "/", Duration::from_secs(40)));
    let (echoed, pings, lasted) = hold(relay, "/hb/", hold_for);
    let (p_echoed, p_pings, p_lasted) = plain.join().unwrap();
    eprintln!(
        "with heartbeat: {echoed} echoed, {pings} pings, {:.1}s; without: {p_echoed} echoed, {p_pings} pings, cut after {:.1}s",
        lasted.as_secs_f64(),
        p_lasted.as_secs_f64()
    );
    assert!(lasted >= hold_for, "the heartbeat client was cut");
    assert_eq!(
        echoed, 12,
        "a message every 10 s for 2 minutes, each echoed"
    );
    assert!(pings >= 60, "pinged while silent: {pings}");
    assert_eq!(
        (p_echoed, p_pings),
        (1, 0),
        "without heartbeat: cut after the first"
    );
    assert!(
        p_lasted < Duration::from_secs(40),
        "the cutoff cuts idle ones"
    );
    assert_eq!(
        cut.load(Ordering::Relaxed),
        1,
        "only the one without heartbeat was cut"
    );
}

// Over ws:// and over wss:// (the ping, the Close and the pongs go through TLS records).
plain_and_tls!(
    a_client_that_stops_answering_is_closed_with_1001,
    a_wss_client_that_stops_answering_is_closed_with_1001,
    silent_client
);

fn silent_client(mode: Mode) {
    let st = stack_mode(
        mode,
        "hb-silent",
        &hb_locations("{ interval = \"1s\", timeout = \"2s\" }"),
        "",
        "",
    );
    let mut ws = st.raw_ws("/hb/", "");
    let t = Instant::now();
    ws.s.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (_, _, op, payload) = ws.read_frame();
    let ping_at = t.elapsed();
    assert_eq!(op, ringway_proxy::ws::opcode::PING);
    assert!(payload.starts_with(b"ringway "), "{payload:?}");
    // Not answered: a Close 1001, then the end of the connection.
    let (_, _, op, payload) = ws.read_frame();
    let closed_at = t.elapsed();
    assert_eq!(op, ringway_proxy::ws::opcode::CLOSE);
    assert_eq!(&payload[..2], &1001u16.to_be_bytes());
    let mut rest = Vec::new();
    let _ = ws.s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the Close: {rest:?}");
    eprintln!(
        "ping after {:.2}s, closed after {:.2}s (interval 1s + timeout 2s)",
        ping_at.as_secs_f64(),
        closed_at.as_secs_f64()
    );
    st.proxy.wait_log("end=heartbeat-timeout", 10);
    // A client answering the pings on the same location stays (its own pong counts).
    let mut ws = st.raw_ws("/hb/", "");
    for _ in 0..3 {
        let (_, _, op, payload) = ws.read_frame();
        assert_eq!(op, ringway_proxy::ws::opcode::PING);
        ws.send_frame(true, 0, ringway_proxy::ws::opcode::PONG, &payload);
    }
    ws.send_frame(true, 0, ringway_proxy::ws::opcode::TEXT, b"still here");
    loop {
        let (_, _, op, payload) = ws.read_frame();
        if op == ringway_proxy::ws::opcode::TEXT {
            assert_eq!(payload, b"still here");
            break;
        }
        assert_eq!(op, ringway_proxy::ws::opcode::PING);
    }
}

/// A tap between the proxy and the echo: passes bytes on both ways and records the frames the
/// proxy sends up (opcode, unmasked payload).
/// Frames seen: (opcode, unmasked payload).
type Frames = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

fn tap(target: SocketAddr) -> (SocketAddr, Frames) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(4) {
            let Ok(mut c) = c else { return };
            let mut u = TcpStream::connect(target).unwrap();
            let (mut c2, mut u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(Shutdown::Write);
            });
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let (mut buf, mut acc) = (vec![0u8; 65536], Vec::new());
                let mut head_done = false;
                loop {
                    let n = match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if u.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    acc.extend_from_slice(&buf[..n]);
                    if !head_done {
                        let Some(i) = acc.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        acc.drain(..i + 4);
                        head_done = true;
                    }
                    while let Ok(Some(h)) = ringway_proxy::ws::parse_header(&acc) {
                        let total = h.header_len + h.len as usize;
                        if acc.len() < total {
                            break;
                        }
                        let mut p = acc[h.header_len..total].to_vec();
                        let mask = h.mask.expect("frames toward an upstream are masked");
                        ringway_proxy::ws::apply_mask(&mut p, mask, 0);
                        seen.lock().unwrap().push((h.opcode, p));
                        acc.drain(..total);
                    }
                }
                let _ = u.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, seen)
}

/// A slow reader: at most 4 KiB per read, 2 ms apart.
struct Slow(TcpStream);

impl Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(2));
        let n = buf.len().min(4096);
        self.0.read(&mut buf[..n])
    }
}

impl Write for Slow {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn frames_stay_byte_exact_around_injected_pings_and_our_pongs_go_no_further() {
    if !uring_ok() {
        return;
    }
    let dir = scratch("hb-exact");
    let backend = free_addr();
    let _echo = echo(&[backend], &dir);
    let (tapped, seen) = tap(backend);
    let listen = free_addr();
    let _proxy = proxy(
        &config(
            listen,
            &[tapped],
            "heartbeat = { interval = \"100ms\", timeout = \"10s\", upstream_interval = \"100ms\" }",
            "",
            "",
        ),
        listen,
        &dir,
    );
    // A small receive buffer: the echoes back up into the proxy, which then holds the stream
    // from the upstream mid-frame most of the time (a ping has to wait for the frame's end).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&listen.into()).unwrap();
    let cfg = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (mut ws, _) = tungstenite::client::client_with_config(
        format!("ws://localhost:{}/", listen.port()),
        Slow(std::net::TcpStream::from(sock)),
        Some(cfg),
    )
    .unwrap();
    let mut sizes = vec![0usize, 1, 2, 124, 125, 126, 127, 1000, 65535, 65536, 65537];
    sizes.extend([300_000, 1 << 20, 3, 126, 70_000, 1 << 20, 5, 1 << 20]);
    let mut sent = Vec::new();
    let mut rng = Rng(0x5eed);
    for (i, &n) in sizes.iter().enumerate() {
        let p: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let m = if i % 3 == 0 {
            Message::text(String::from_utf8_lossy(&p).into_owned())
        } else {
            Message::binary(p)
        };
        sent.push(m.clone());
        ws.send(m).unwrap();
    }
    // Read the echoes slowly: the client says nothing for longer than the interval while
    // they queue toward it, so pings go in between their frames.
    let (mut got, mut pings, mut pongs) = (Vec::new(), 0, 0);
    while got.len() < sent.len() {
        match ws.read().expect("a valid frame stream") {
            Message::Ping(p) => {
                assert!(p.starts_with(b"ringway "));
                pings += 1;
            }
            Message::Pong(_) => pongs += 1,
            m => got.push(m),
        }
    }
    // Silent for a while more: pings both ways, answered.
    let t = Instant::now();
    ws.get_ref()
        .0
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while t.elapsed() < Duration::from_secs(2) {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Pong(_)) => pongs += 1,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(_) => {}
        }
    }
    ws.close(None).unwrap();
    assert!(got == sent, "every message came back byte-exact, in order");
    let seen = seen.lock().unwrap().clone();
    let data: Vec<Message> = seen
        .iter()
        .filter(|(op, _)| *op == 1 || *op == 2)
        .map(|(op, p)| match op {
            1 => Message::text(String::from_utf8(p.clone()).unwrap()),
            _ => Message::binary(p.clone()),
        })
        .collect();
    let count = |want: u8| seen.iter().filter(|(op, _)| *op == want).count();
    eprintln!(
        "client: {pings} pings, {pongs} pongs; upstream saw {} data frames, {} pings, {} pongs",
        data.len(),
        count(9),
        count(10)
    );
    assert!(data == sent, "the backend saw exactly what the client sent");
    assert!(pings >= 5, "pings went in between the echoes: {pings}");
    assert_eq!(pongs, 0, "the backend's Pongs to our pings are ours");
    assert_eq!(count(10), 0, "the client's Pongs to our pings are ours");
    assert!(count(9) >= 3, "the upstream was pinged too");
}

/// A client that sends the header of a huge frame (the echo mirrors it back, so the stream
/// toward the client stops mid-frame and no ping can be put in it) and then goes silent is
/// closed once it and the stream toward it have been still for interval + timeout, not held
/// for `read_timeout` (10 minutes here).
#[test]
fn a_client_silent_mid_frame_is_closed_without_a_ping() {
    if !uring_ok() {
        return;
    }
    let st = stack(
        "hb-midframe",
        &hb_locations("{ interval = \"1s\", timeout = \"1s\" }"),
        "",
        "",
    );
    let mut ws = st.raw_ws("/hb/", "");
    // The header of a 1 MiB binary frame and its first ten bytes; then nothing.
    let mut out = Vec::new();
    let mask = [1, 2, 3, 4];
    ringway_proxy::ws::write_header(
        &mut out,
        true,
        0,
        ringway_proxy::ws::opcode::BINARY,
        Some(mask),
        1 << 20,
    );
    out.extend_from_slice(&[0u8; 10]);
    ws.s.write_all(&out).unwrap();
    let t = Instant::now();
    ws.s.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        match ws.s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) => panic!("not closed after {:?}: {e}", t.elapsed()),
        }
    }
    let closed = t.elapsed();
    eprintln!(
        "closed after {closed:?} (interval 1s + timeout 1s), {} bytes mirrored",
        got.len()
    );
    assert!(closed < Duration::from_secs(15), "held for {closed:?}");
    // What came back is the mirrored frame's start, nothing injected into it.
    let h = ringway_proxy::ws::parse_header(&got).unwrap().unwrap();
    assert_eq!(h.len, 1 << 20);
    assert_eq!(got.len(), h.header_len + 10);
    st.proxy.wait_log("end=heartbeat-timeout", 10);
}
